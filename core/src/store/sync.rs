//! `certsmith sync`: the current certificates of a store, materialised as
//! files in a directory a web server reads.
//!
//! Why this module exists: a fleet of web servers needs the certificates
//! one agent (or a few) obtains, without each node ordering its own and
//! without an account key on every node. A node opens the shared store
//! for reading only and copies each certificate's current version into a
//! directory laid out as the filesystem store lays out its certificates
//! (`certs/<name>/versions/<n>`, `certs/<name>/current -> versions/<n>`),
//! so web server configs and deploy hooks are the same on a node and on
//! the machine that issues. Works through [`Storage`] alone: any backend.
//!
//! What a reader sees is one version's files, never a mix: a version is
//! written complete into a staging directory, fsynced, renamed to
//! `versions/<n>`, and only then does `current` move (a new symlink
//! renamed over it). A reader that resolves `current` once for the pair
//! (opens the directory, or reads the link) gets a matching certificate
//! and key. Accounts, the journal and pending orders are never copied: a
//! web node needs none of them. Certificates whose files are already
//! there are not rewritten, so a deploy hook runs only on a change.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::fsio::{fsync_dir, lock_file, write_new_files};
use super::{
    CERT_FILE, CHAIN_FILE, CSR_FILE, CertFiles, FULLCHAIN_FILE, PRIVKEY_FILE, Store, StoreError,
    VersionFiles,
};
use crate::hooks::{HookContext, HookError, HookOutcome, run_hook};

/// The lock file in the sync directory: one sync writes into it at a time.
const LOCK_FILE: &str = ".sync.lock";

/// How long a sync waits for another sync into the same directory.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Staging directories of versions being written, in `versions/`.
const STAGING_PREFIX: &str = ".sync-staging-";

/// Distinguishes the staging directories and links of one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Why a sync (or one certificate of it) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing into the sync directory failed.
    #[error("cannot {action} {path}: {source}")]
    Write {
        /// "create", "rename", "remove", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The sync directory holds a certsmith store (accounts, a journal or
    /// lineages): syncing into it would mix copies with the originals.
    #[error("{path} is a certsmith state directory ({found}), not a directory to sync into")]
    StateDirectory {
        /// The directory.
        path: PathBuf,
        /// What was found, e.g. `accounts/`.
        found: String,
    },
    /// A certificate asked for by name is not in the store.
    #[error("no certificate named '{name}' in {location}")]
    UnknownName {
        /// The name.
        name: String,
        /// The store.
        location: String,
    },
    /// The certificate has no current version to copy (never issued, or
    /// removed while the sync ran).
    #[error("certificate '{name}' has no current version in {location}")]
    NoCurrentVersion {
        /// The name.
        name: String,
        /// The store.
        location: String,
    },
    /// The blocking task that does the file work ended abnormally.
    #[error("the sync task failed: {0}")]
    Task(String),
}

impl SyncError {
    fn write(action: &'static str, path: &Path, source: io::Error) -> SyncError {
        SyncError::Write {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// What a sync does.
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// The directory to materialise the certificates into (created if
    /// needed).
    pub to: PathBuf,
    /// The certificates to copy; empty: every certificate of the store.
    pub names: Vec<String>,
    /// A shell command run after each certificate that changed, with the
    /// deploy hook's variables ([`HookContext::deploy`]).
    pub deploy_hook: Option<String>,
    /// How long the hook may run.
    pub hook_timeout: Duration,
}

/// What happened to one certificate's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncAction {
    /// A new version was written and `current` switched to it.
    Updated,
    /// The current version's files were already there: nothing written.
    Unchanged,
}

impl SyncAction {
    /// `updated` or `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncAction::Updated => "updated",
            SyncAction::Unchanged => "unchanged",
        }
    }
}

/// One certificate materialised.
#[derive(Debug)]
pub struct SyncedCert {
    /// What was done.
    pub action: SyncAction,
    /// The version now current in the sync directory.
    pub version: u32,
    /// The version that was current there before, if any.
    pub previous: Option<u32>,
    /// `<to>/certs/<name>/current`.
    pub current: PathBuf,
    /// Old versions removed: a sync directory keeps the current version
    /// and the one before (a server may still be reading it).
    pub pruned: Vec<u32>,
    /// The deploy hook's result, when one ran (only for
    /// [`SyncAction::Updated`]).
    pub deploy_hook: Option<Result<HookOutcome, HookError>>,
}

/// One certificate of a sync: its name, domains, and what happened.
#[derive(Debug)]
pub struct SyncOutcome {
    /// The certificate name.
    pub name: String,
    /// Its domains (from the lineage; empty when it could not be read).
    pub domains: Vec<String>,
    /// The files written (or found), or why not.
    pub result: Result<SyncedCert, SyncError>,
}

/// A whole sync.
#[derive(Debug)]
pub struct SyncReport {
    /// The sync directory.
    pub to: PathBuf,
    /// Every certificate, in name order.
    pub certs: Vec<SyncOutcome>,
}

/// Materialises the current version of each certificate of `store` (or
/// of `options.names`) into `options.to`, then runs the deploy hook for
/// each one that changed. Only reads the store. A failure of one
/// certificate is reported in its [`SyncOutcome`] and the others go on;
/// an `Err` is a failure of the whole sync (an unusable directory, an
/// unknown name, a store that cannot be listed).
pub async fn sync(store: &Store, options: &SyncOptions) -> Result<SyncReport, SyncError> {
    let (s, to, names) = (store.clone(), options.to.clone(), options.names.clone());
    let mut report = tokio::task::spawn_blocking(move || sync_files(&s, &to, &names))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??;
    if let Some(hook) = &options.deploy_hook {
        for outcome in &mut report.certs {
            let Ok(done) = &mut outcome.result else {
                continue;
            };
            if done.action != SyncAction::Updated {
                continue;
            }
            let ctx = HookContext::deploy(
                &outcome.name,
                &outcome.domains,
                done.current.clone(),
                done.version,
            );
            done.deploy_hook = Some(run_hook(hook, &ctx, options.hook_timeout).await);
        }
    }
    Ok(report)
}

/// The file work of [`sync`], blocking: no hooks.
pub fn sync_files(store: &Store, to: &Path, names: &[String]) -> Result<SyncReport, SyncError> {
    refuse_state_dir(to)?;
    let certs_dir = to.join("certs");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&certs_dir)
        .map_err(|e| SyncError::write("create", &certs_dir, e))?;
    // Hook variables and results name absolute paths.
    let to = &fs::canonicalize(to).map_err(|e| SyncError::write("resolve", to, e))?;
    let _lock = lock_file(to.join(LOCK_FILE), Some(LOCK_WAIT))?;
    let all = store.cert_names()?;
    let names: Vec<String> = if names.is_empty() {
        all
    } else {
        for name in names {
            if !all.contains(name) {
                return Err(SyncError::UnknownName {
                    name: name.clone(),
                    location: store.location(),
                });
            }
        }
        let mut n = names.to_vec();
        n.sort();
        n.dedup();
        n
    };
    let mut certs = Vec::with_capacity(names.len());
    for name in names {
        let mut domains = Vec::new();
        let result = (|| {
            let lineage = store.load_lineage(&name)?;
            domains = lineage.map(|l| l.domains).unwrap_or_default();
            let Some(version) = store.read_version(&name, None)? else {
                return Err(SyncError::NoCurrentVersion {
                    name: name.clone(),
                    location: store.location(),
                });
            };
            sync_one(&certs_dir.join(&name), &version)
        })();
        certs.push(SyncOutcome {
            name,
            domains,
            result,
        });
    }
    Ok(SyncReport {
        to: to.to_owned(),
        certs,
    })
}

/// Refuses a directory that is a certsmith store: it has `accounts/` or
/// `journal/`, or a certificate with a lineage.
fn refuse_state_dir(to: &Path) -> Result<(), SyncError> {
    let refuse = |found: String| {
        Err(SyncError::StateDirectory {
            path: to.to_owned(),
            found,
        })
    };
    for sub in ["accounts", "journal"] {
        if to.join(sub).is_dir() {
            return refuse(format!("{sub}/"));
        }
    }
    if let Ok(entries) = fs::read_dir(to.join("certs")) {
        for entry in entries.flatten() {
            if entry.path().join("lineage.toml").exists() {
                return refuse(format!(
                    "certs/{}/lineage.toml",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    Ok(())
}

/// The files a version consists of, with their modes.
pub(super) fn files_of(files: &CertFiles) -> Vec<(&'static str, &[u8], u32)> {
    let mut out = vec![
        (CERT_FILE, files.cert_pem.as_bytes(), 0o644),
        (CHAIN_FILE, files.chain_pem.as_bytes(), 0o644),
        (FULLCHAIN_FILE, files.fullchain_pem.as_bytes(), 0o644),
    ];
    if let Some(key) = &files.privkey_pem {
        out.push((PRIVKEY_FILE, key.expose().as_bytes(), 0o600));
    }
    if let Some(csr) = &files.csr_pem {
        out.push((CSR_FILE, csr.as_bytes(), 0o644));
    }
    out
}

/// Whether `dir` holds exactly the files of `files`, byte for byte.
fn holds(dir: &Path, files: &CertFiles) -> bool {
    let want = files_of(files);
    let optional_absent = [PRIVKEY_FILE, CSR_FILE]
        .into_iter()
        .filter(|f| !want.iter().any(|(w, _, _)| w == f))
        .all(|f| !dir.join(f).exists());
    optional_absent
        && want
            .iter()
            .all(|(file, data, _)| fs::read(dir.join(file)).is_ok_and(|have| have == *data))
}

/// The version `cert_dir/current` points at, if it is a link to
/// `versions/<n>`.
fn current_of(cert_dir: &Path) -> Option<u32> {
    fs::read_link(cert_dir.join("current"))
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// Writes `version` into `cert_dir` unless it is already current there.
fn sync_one(cert_dir: &Path, version: &VersionFiles) -> Result<SyncedCert, SyncError> {
    let versions = cert_dir.join("versions");
    let current = cert_dir.join("current");
    let previous = current_of(cert_dir);
    let n = version.version;
    let target = versions.join(n.to_string());
    if previous == Some(n) && holds(&target, &version.files) {
        return Ok(SyncedCert {
            action: SyncAction::Unchanged,
            version: n,
            previous,
            current,
            pruned: Vec::new(),
            deploy_hook: None,
        });
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&versions)
        .map_err(|e| SyncError::write("create", &versions, e))?;
    remove_leftovers(cert_dir, &versions);
    if !holds(&target, &version.files) {
        let staging = versions.join(format!(
            "{STAGING_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = stage(&staging, &version.files) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        if target.exists() {
            // Different files under the same number (the store was
            // replaced): `versions/<n>` cannot be renamed over. If it is
            // current, readers are first moved to the complete staging
            // directory, so that they never find `current` missing.
            if previous == Some(n) {
                switch_current(cert_dir, &staging)?;
            }
            fs::remove_dir_all(&target).map_err(|e| SyncError::write("remove", &target, e))?;
        }
        fs::rename(&staging, &target).map_err(|e| SyncError::write("rename", &staging, e))?;
        fsync_dir(&versions)?;
    }
    switch_current(cert_dir, &Path::new("versions").join(n.to_string()))?;
    let pruned = prune(&versions, n, previous);
    Ok(SyncedCert {
        action: SyncAction::Updated,
        version: n,
        previous,
        current,
        pruned,
        deploy_hook: None,
    })
}

/// Writes the files of a version into `staging` (a new directory) and
/// makes them durable.
fn stage(staging: &Path, files: &CertFiles) -> Result<(), SyncError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(staging)
        .map_err(|e| SyncError::write("create", staging, e))?;
    write_new_files(staging, &files_of(files))?;
    Ok(())
}

/// Points `cert_dir/current` at `target` (relative to `cert_dir`, or an
/// absolute path inside it), atomically: a new symlink renamed over it.
fn switch_current(cert_dir: &Path, target: &Path) -> Result<(), SyncError> {
    let target = target.strip_prefix(cert_dir).unwrap_or(target);
    let tmp = cert_dir.join(format!(
        ".current-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| SyncError::write("create symlink", &tmp, e))?;
    let current = cert_dir.join("current");
    fs::rename(&tmp, &current).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SyncError::write("rename", &tmp, e)
    })?;
    fsync_dir(cert_dir)?;
    Ok(())
}

/// Removes what a sync killed midway left: staging directories and
/// temporary links. The caller holds the directory's lock, so no other
/// sync is writing them.
fn remove_leftovers(cert_dir: &Path, versions: &Path) {
    for (dir, prefix) in [(versions, STAGING_PREFIX), (cert_dir, ".current-")] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let path = entry.path();
                log::debug!("removing leftover {}", path.display());
                if path.is_dir() && !path.is_symlink() {
                    let _ = fs::remove_dir_all(&path);
                } else {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
}

/// Removes the numbered versions other than `current` and `previous`
/// (the one a server may still be reading); returns their numbers. A
/// failure to remove one only leaves it (logged).
fn prune(versions: &Path, current: u32, previous: Option<u32>) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(versions) else {
        return Vec::new();
    };
    let mut pruned: Vec<u32> = Vec::new();
    for entry in entries.flatten() {
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if n == current || Some(n) == previous {
            continue;
        }
        match fs::remove_dir_all(entry.path()) {
            Ok(()) => pruned.push(n),
            Err(e) => log::warn!("cannot remove old version {}: {e}", entry.path().display()),
        }
    }
    pruned.sort_unstable();
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Lineage, VersionRecord};

    use crate::store::conformance::files;

    fn commit(store: &Store, name: &str, tag: &str) {
        let lineage = Lineage {
            domains: vec![name.to_owned()],
            solver: "standalone".into(),
            key_type: "ec-p256".into(),
            server: "https://ca.test/dir".into(),
            ..Lineage::default()
        };
        let record = VersionRecord {
            version: 0,
            serial: "01".into(),
            not_before: "2025-01-01T00:00:00Z".into(),
            not_after: "2025-04-01T00:00:00Z".into(),
            issued_at: "2025-01-01T00:00:01Z".into(),
        };
        store
            .commit_version(name, &files(tag), &lineage, record)
            .expect("commit");
    }

    fn only(report: &SyncReport) -> &SyncedCert {
        report.certs[0].result.as_ref().expect("synced")
    }

    #[test]
    fn another_store_with_the_same_numbers_replaces_the_files_and_leftovers_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = Store::open(tmp.path().join("a")).expect("open");
        let b = Store::open(tmp.path().join("b")).expect("open");
        commit(&a, "x.test", "from a");
        commit(&b, "x.test", "from b");
        let to = tmp.path().join("web");
        let r = sync_files(&a, &to, &[]).expect("sync a");
        assert_eq!(only(&r).action, SyncAction::Updated);
        // A sync killed midway left a staging directory and a link.
        let versions = to.join("certs/x.test/versions");
        fs::create_dir(versions.join(format!("{STAGING_PREFIX}1-1"))).expect("leftover");
        std::os::unix::fs::symlink("versions/1", to.join("certs/x.test/.current-1-1"))
            .expect("leftover link");
        // Store b: version 1 too, other bytes.
        let r = sync_files(&b, &to, &[]).expect("sync b");
        let done = only(&r);
        assert_eq!(
            (done.action, done.version, done.previous),
            (SyncAction::Updated, 1, Some(1))
        );
        let current = to.join("certs/x.test/current");
        assert_eq!(
            fs::read_to_string(current.join(CERT_FILE)).expect("cert"),
            "CERT from b\n"
        );
        assert_eq!(
            fs::read_link(&current).expect("link"),
            Path::new("versions/1")
        );
        let mut left: Vec<String> = fs::read_dir(to.join("certs/x.test"))
            .expect("dir")
            .chain(fs::read_dir(&versions).expect("versions"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["1", "current", "versions"]);
        // Then nothing changes.
        let r = sync_files(&b, &to, &[]).expect("sync b again");
        assert_eq!(only(&r).action, SyncAction::Unchanged);
    }

    #[test]
    fn a_state_directory_and_unknown_names_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = Store::open(tmp.path().join("a")).expect("open");
        commit(&a, "x.test", "1");
        let e = sync_files(&a, &tmp.path().join("a"), &[]).expect_err("state dir");
        assert!(matches!(e, SyncError::StateDirectory { .. }), "{e}");
        let e =
            sync_files(&a, &tmp.path().join("web"), &["y.test".to_owned()]).expect_err("unknown");
        assert!(e.to_string().contains("'y.test'"), "{e}");
    }
}
