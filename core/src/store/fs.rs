//! The filesystem backend of [`Storage`](super::Storage): the state
//! directory, the embedded default.
//!
//! Why this module exists: a web server reads `fullchain.pem` and
//! `privkey.pem` at any moment, and certsmith may be killed at any moment.
//! Everything here is written so that a reader only ever sees a complete,
//! matching set, and a crash leaves the previous set in place. It is the
//! only module that knows the layout (see the parent module's doc).
//!
//! * Files are written to a temporary name, fsynced, renamed, and the
//!   directory fsynced (the rename is what makes them appear atomically).
//! * A version is written completely into `versions/.staging-*`, and the
//!   lineage that will list it into `.lineage.toml.next-*` (outside the
//!   lock: the fsyncs of concurrent saves overlap), then renamed to
//!   `versions/<n>` under the lock, the lineage put in place (or written
//!   anew if another save came in between), and only then does `current`
//!   move, by renaming a new symlink over it. Leftovers of a crash are
//!   never mistaken for versions and are removed by a later writer once
//!   their process is gone or they are old.
//! * The `lock` file is held (`flock`) only while writing, not during an ACME
//!   order, so two `certsmith issue` processes on one store both finish.
//!   `run.lock` is the lease a whole batch holds.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::fsio::{
    FileLock, create_private_dir_all, fsync_dir, is_stale_temp, lock_file, open_locked, parent,
    read_locked, read_optional, remove_stale_temps, sanitize, write_atomic, write_into_empty,
    write_new, write_new_files,
};
use super::{
    AccountKey, AccountSlot, CERT_FILE, CHAIN_FILE, CSR_FILE, CertFiles, FULLCHAIN_FILE,
    JournalEntry, Lease, Lineage, PRIVKEY_FILE, PendingOrder, RateLimitRecord, SavedVersion,
    Storage, StoreError, StoredAccountDoc, VersionFiles, VersionRecord, check_cert_name,
};
use crate::keys::PrivateKeyPem;

/// `rate-limits.json`: the rate limits the CA reported, until they lift.
const RATE_LIMITS_FILE: &str = "rate-limits.json";

/// `certs/<name>/pending-order.json`: an order finalized and not yet
/// stored; empty once its certificate is.
const PENDING_FILE: &str = "pending-order.json";

/// How long a writer waits for the store lock before giving up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The default state directory when none is given: `/var/lib/certsmith` as
/// root, else `$XDG_DATA_HOME/certsmith`, else `~/.local/share/certsmith`
/// ([XDG base directories](https://specifications.freedesktop.org/basedir-spec/latest/)).
pub fn default_root() -> Result<PathBuf, StoreError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return Ok(PathBuf::from("/var/lib/certsmith"));
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from)
        && xdg.is_absolute()
    {
        return Ok(xdg.join("certsmith"));
    }
    match std::env::var_os("HOME").map(PathBuf::from) {
        Some(home) if home.is_absolute() => Ok(home.join(".local/share/certsmith")),
        _ => Err(StoreError::NoDefaultRoot),
    }
}

/// What a preflight (`certsmith doctor`) needs to know about a state
/// directory, read without creating or changing anything in it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateDirReport {
    /// The directory inspected.
    pub root: PathBuf,
    /// Whether it exists (a first run creates it).
    pub exists: bool,
    /// Its owner's uid, when it exists.
    pub owner_uid: Option<u32>,
    /// Its permission bits (`0o700` as certsmith creates it).
    pub mode: Option<u32>,
    /// Whether a file could be created in it (or, when it does not exist,
    /// in the nearest existing parent), with the reason when not.
    pub writable: Result<(), String>,
    /// Files holding private keys (certificate keys, account keys) that
    /// a group or other users may read: (path, mode).
    pub readable_keys: Vec<(PathBuf, u32)>,
}

/// Inspects the state directory at `root` for `certsmith doctor`: owner,
/// mode, writability (by creating and removing a probe file) and the
/// permissions of every private key file in it (`privkey.pem` of each
/// certificate version, `account.json` of each account). Creates nothing
/// but the probe.
pub fn inspect_state_dir(root: &Path) -> StateDirReport {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(root).ok();
    let mut report = StateDirReport {
        root: root.to_path_buf(),
        exists: meta.is_some(),
        owner_uid: meta.as_ref().map(|m| m.uid()),
        mode: meta.as_ref().map(|m| m.mode() & 0o7777),
        writable: Ok(()),
        readable_keys: Vec::new(),
    };
    let probe_dir = match &meta {
        Some(m) if !m.is_dir() => {
            report.writable = Err("it is not a directory".to_owned());
            return report;
        }
        Some(_) => root.to_path_buf(),
        None => {
            let mut p = root.to_path_buf();
            while !p.exists() {
                if !p.pop() {
                    break;
                }
            }
            p
        }
    };
    let probe = probe_dir.join(format!(".doctor-probe-{}", std::process::id()));
    report.writable = match File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot create a file in {}: {e}",
            probe_dir.display()
        )),
    };
    if report.exists {
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(m) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if m.is_dir() {
                    todo.push(path);
                } else if m.is_file()
                    // An empty pending-order record (settled) holds nothing.
                    && m.len() > 0
                    && matches!(
                        path.file_name().and_then(|n| n.to_str()),
                        Some(PRIVKEY_FILE | "account.json" | PENDING_FILE)
                    )
                    && m.mode() & 0o077 != 0
                {
                    report.readable_keys.push((path, m.mode() & 0o7777));
                }
            }
        }
        report.readable_keys.sort();
    }
    report
}

/// The state directory, opened and known to be writable.
#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
    lock_timeout: Duration,
}

impl FsStore {
    /// Opens (creating if needed) the state directory at `root` and checks
    /// that it is writable, so that an unusable directory fails before any
    /// request reaches the CA.
    pub fn open(root: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let root = root.into();
        let unwritable = |source| StoreError::Unwritable {
            path: root.clone(),
            source,
        };
        create_private_dir_all(&root).map_err(unwritable)?;
        for sub in ["accounts", "certs", "journal"] {
            create_private_dir_all(&root.join(sub)).map_err(|source| StoreError::Unwritable {
                path: root.join(sub),
                source,
            })?;
        }
        // Probe: a directory can exist and be unwritable (read-only mount,
        // another user's directory).
        let probe = root.join(format!(".probe-{}", std::process::id()));
        File::create(&probe).map_err(unwritable)?;
        let _ = fs::remove_file(&probe);
        // Paths handed out (to JSON output, to web server configs) must not
        // depend on the current directory.
        let root = fs::canonicalize(&root).unwrap_or(root);
        Ok(FsStore {
            root,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Opens the state directory at `root` only if it exists, creating and
    /// writing nothing (not even the probe file of [`FsStore::open`]): for
    /// commands that only read, so that a mistyped path is an error rather
    /// than a new, empty store. Writing through the result works as with
    /// [`FsStore::open`] but nothing checked beforehand that it can.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Unwritable {
                    source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                    path: root,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing { path: root });
            }
            Err(e) => return Err(StoreError::io("read", &root, e)),
        }
        let root = fs::canonicalize(&root).unwrap_or(root);
        Ok(FsStore {
            root,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Changes how long a writer waits for the store lock.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> FsStore {
        self.lock_timeout = timeout;
        self
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store lock, waiting up to the lock timeout for another
    /// writer to release it.
    pub(super) fn lock(&self) -> Result<FileLock, StoreError> {
        lock_file(self.root.join("lock"), Some(self.lock_timeout))
    }

    /// Takes the store lock however long another writer holds it: for
    /// saving a certificate the CA has issued, which must not be lost to a
    /// slow neighbour.
    fn lock_for_save(&self) -> Result<FileLock, StoreError> {
        lock_file(self.root.join("lock"), None)
    }

    fn account_dir(&self, key: &AccountKey) -> PathBuf {
        self.root
            .join("accounts")
            .join(sanitize(&key.ca_host))
            .join(sanitize(&key.id))
    }

    pub(super) fn cert_dir(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(name)
    }

    fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    fn write_lineage(&self, name: &str, lineage: &Lineage) -> Result<(), StoreError> {
        let path = self.cert_dir(name).join("lineage.toml");
        let text = toml::to_string(lineage).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes(), 0o644)
    }

    fn write_account(&self, key: &AccountKey, json: &[u8]) -> Result<StoredAccountDoc, StoreError> {
        let path = self.account_location(key);
        let dir = parent(&path)?;
        create_private_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        write_atomic(&path, json, 0o600)?;
        Ok(StoredAccountDoc {
            key: key.clone(),
            json: json.to_vec(),
            location: path,
        })
    }

    /// Under the store lock: checks the fence, numbers the version staged
    /// in `staging`, moves it into `versions/`, publishes it and forgets
    /// the pending order it `settles`.
    fn number_and_publish(
        &self,
        name: &str,
        staging: &Path,
        lineage: &Lineage,
        record: VersionRecord,
        (fence, settles): (Option<u64>, Option<&str>),
        prepared: &PreparedLineage,
    ) -> Result<SavedVersion, StoreError> {
        let cert_dir = self.cert_dir(name);
        let versions_dir = cert_dir.join("versions");
        let _lock = self.lock_for_save()?;
        if let Some(token) = fence {
            self.check_fence(name, token)?;
        }
        // We hold the lock: any temp file or directory is a leftover of
        // a crash (a staging directory once it is old).
        remove_stale_temps(&versions_dir);
        remove_stale_temps(&cert_dir);
        let version = next_version(&versions_dir)?;
        let dir = versions_dir.join(version.to_string());
        fs::rename(staging, &dir).map_err(|e| StoreError::io("rename", staging, e))?;
        fsync_dir(&versions_dir)?;
        let current = self.publish_version(&cert_dir, version, lineage, record, prepared)?;
        if let Some(order_url) = settles {
            // After the switch: a crash in between leaves the order pending
            // beside its stored certificate, never forgotten before it.
            self.settle_pending_order(name, order_url)?;
        }
        Ok(SavedVersion {
            version,
            dir,
            current,
        })
    }

    /// Forgets the pending order of `name` if it is the one at
    /// `order_url`. The caller holds the store lock.
    ///
    /// The record is emptied, not removed, and the next one is written
    /// into the empty file ([`write_into_empty`]): a first issuance then
    /// frees no inode at all. ext4 without a journal skips every inode
    /// freed in the last minute (six while its inode table block is dirty)
    /// each time it creates a file in that block group, so one freed per
    /// certificate made every later file of a batch slower to create.
    /// The file is read and emptied under its own `flock`, through one
    /// descriptor: a record renamed over it meanwhile is not touched.
    fn settle_pending_order(&self, name: &str, order_url: &str) -> Result<(), StoreError> {
        let path = self.cert_dir(name).join(PENDING_FILE);
        let mut f = match open_locked(&path) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            // Not writable in place (its mode or owner changed by hand, a
            // link): removed, which needs only the directory.
            Err(_) => return self.remove_pending_file(name, order_url),
        };
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| StoreError::io("read", &path, e))?;
        if !settled_by(&bytes, order_url) {
            return Ok(());
        }
        f.set_len(0)
            .map_err(|e| StoreError::io("truncate", &path, e))
    }

    /// Removes the pending-order record of `name` if a commit of the order
    /// at `order_url` settles it (or it cannot be read).
    fn remove_pending_file(&self, name: &str, order_url: &str) -> Result<(), StoreError> {
        let path = self.cert_dir(name).join(PENDING_FILE);
        match read_locked(&path) {
            Ok(None) => return Ok(()),
            Ok(Some(bytes)) if !settled_by(&bytes, order_url) => return Ok(()),
            _ => {}
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", &path, e)),
        }
    }

    /// Writes the lineage the next version will have, for the version
    /// number and stored lineage seen now, to a temporary file, and makes it
    /// durable: done outside the store lock, so that under it, if neither
    /// changed meanwhile, only a rename is left (see [`Self::publish_version`]).
    fn prepare_lineage(
        &self,
        cert_dir: &Path,
        versions_dir: &Path,
        lineage: &Lineage,
        record: &VersionRecord,
    ) -> Result<PreparedLineage, StoreError> {
        let path = cert_dir.join("lineage.toml");
        let seen = read_optional(&path)?;
        let version = next_version(versions_dir)?;
        let text = lineage_text(&path, seen.as_deref(), lineage, record.clone(), version)?;
        let tmp = cert_dir.join(format!(
            "{LINEAGE_NEXT_PREFIX}{}-{}",
            std::process::id(),
            STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        write_new(&tmp, text.as_bytes(), 0o644)?;
        Ok(PreparedLineage { version, seen, tmp })
    }

    /// Records `version` (already in `versions/`) in the lineage and points
    /// `current` at it. The caller holds the store lock. `prepared` is put
    /// in place when it was made for this version and the lineage stored
    /// now; otherwise it is removed and the lineage written here.
    fn publish_version(
        &self,
        cert_dir: &Path,
        version: u32,
        lineage: &Lineage,
        record: VersionRecord,
        prepared: &PreparedLineage,
    ) -> Result<PathBuf, StoreError> {
        let path = cert_dir.join("lineage.toml");
        let seen = read_optional(&path)?;
        let placed = if prepared.version == version && prepared.seen == seen {
            match fs::rename(&prepared.tmp, &path) {
                Ok(()) => true,
                // Swept by an older certsmith that does not know the name.
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(StoreError::io("rename", &prepared.tmp, e)),
            }
        } else {
            false
        };
        if placed {
            fsync_dir(cert_dir)?;
        } else {
            let _ = fs::remove_file(&prepared.tmp);
            let text = lineage_text(&path, seen.as_deref(), lineage, record, version)?;
            write_atomic(&path, text.as_bytes(), 0o644)?;
        }
        // The lineage is written first so that a crash in between leaves a
        // stored version the lineage knows, never a `current` it does not.
        switch_current(cert_dir, version)
    }

    /// Writes version `version` of `name` (unless it is already there:
    /// versions never change) and makes it current, without a lineage: a
    /// local copy of a shared store's certificate, where deploy hooks and
    /// web servers read it.
    #[cfg(feature = "postgres")]
    pub(crate) fn place_version(
        &self,
        name: &str,
        version: u32,
        files: &CertFiles,
    ) -> Result<SavedVersion, StoreError> {
        check_cert_name(name)?;
        let cert_dir = self.cert_dir(name);
        let versions_dir = cert_dir.join("versions");
        create_private_dir_all(&versions_dir)
            .map_err(|e| StoreError::io("create", &versions_dir, e))?;
        let dir = versions_dir.join(version.to_string());
        if !dir.is_dir() {
            let staging = versions_dir.join(format!(
                "{STAGING_PREFIX}{}-{}",
                std::process::id(),
                STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let placed = stage_version(&staging, files).and_then(|()| {
                fs::rename(&staging, &dir).map_err(|e| StoreError::io("rename", &staging, e))
            });
            if let Err(e) = placed {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
            fsync_dir(&versions_dir)?;
        }
        let _lock = self.lock_for_save()?;
        let current = switch_current(&cert_dir, version)?;
        Ok(SavedVersion {
            version,
            dir,
            current,
        })
    }

    /// The lock file of the lease on certificate `name`, which also keeps
    /// its fencing token.
    fn cert_lease_path(&self, name: &str) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("cert.{}.lock", sanitize(name)))
    }

    /// Whether `token` is still the token of the lease on `name` (the
    /// last one taken, kept in its lock file).
    fn check_fence(&self, name: &str, token: u64) -> Result<(), StoreError> {
        let path = self.cert_lease_path(name);
        let current = read_optional(&path)?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.trim().parse::<u64>().ok());
        if current == Some(token) {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                name: name.to_owned(),
                token,
            })
        }
    }
}

/// Whether the pending-order record `bytes` is one a commit of the order
/// at `order_url` settles: not empty (settled already), and that order's
/// or not parseable (a damaged record goes all the same).
fn settled_by(bytes: &[u8], order_url: &str) -> bool {
    !bytes.is_empty()
        && serde_json::from_slice::<PendingOrder>(bytes).map_or(true, |p| p.order_url == order_url)
}

/// Points `cert_dir/current` at `versions/<version>`, atomically: a new
/// symlink renamed over the old.
fn switch_current(cert_dir: &Path, version: u32) -> Result<PathBuf, StoreError> {
    let current = cert_dir.join("current");
    let tmp_link = cert_dir.join(format!(".current-{}", std::process::id()));
    let target = Path::new("versions").join(version.to_string());
    let linked = match std::os::unix::fs::symlink(&target, &tmp_link) {
        // The leftover of a killed process that had this pid.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp_link);
            std::os::unix::fs::symlink(&target, &tmp_link)
        }
        linked => linked,
    };
    linked.map_err(|e| StoreError::io("create symlink", &tmp_link, e))?;
    fs::rename(&tmp_link, &current).map_err(|e| StoreError::io("rename", &tmp_link, e))?;
    fsync_dir(cert_dir)?;
    Ok(current)
}

/// A lineage written ahead of the store lock by
/// [`FsStore::prepare_lineage`]: for `version`, over the stored lineage
/// `seen` (its bytes, `None`: there was none), in the file `tmp`.
struct PreparedLineage {
    version: u32,
    seen: Option<Vec<u8>>,
    tmp: PathBuf,
}

/// Lineages written ahead of the store lock, in the certificate's
/// directory: a leftover only once old, like a staging directory.
pub(super) const LINEAGE_NEXT_PREFIX: &str = ".lineage.toml.next-";

/// The text of the lineage after committing `record` as version
/// `version`: the stored history (`seen`, the bytes of `path`) plus this
/// version. Settings the caller leaves unset (account, CA bundle, hook,
/// margin) carry over; renewal state and a revocation belonged to the old
/// version. A stored lineage that does not parse is replaced.
fn lineage_text(
    path: &Path,
    seen: Option<&[u8]>,
    lineage: &Lineage,
    mut record: VersionRecord,
    version: u32,
) -> Result<String, StoreError> {
    let old = seen.and_then(|b| parse_lineage(path, b).ok());
    record.version = version;
    let lineage = super::lineage_for_commit(old, lineage, record);
    toml::to_string(&lineage).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// `lineage.toml`'s contents (`bytes`, read from `path`) parsed.
fn parse_lineage(path: &Path, bytes: &[u8]) -> Result<Lineage, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
    toml::from_str(text).map_err(|e| corrupt(e.to_string()))
}

fn read_pem(path: &Path) -> Result<String, StoreError> {
    fs::read_to_string(path).map_err(|e| StoreError::io("read", path, e))
}

/// Staging directories of versions being written, in `versions/`: written
/// without the store lock, so a leftover only once it is old.
pub(super) const STAGING_PREFIX: &str = ".staging-";

/// Distinguishes the staging directories of one process.
static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes the files of a version into `staging` (a new directory) and
/// makes them durable.
fn stage_version(staging: &Path, files: &CertFiles) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(staging)
        .map_err(|e| StoreError::io("create", staging, e))?;
    write_new_files(staging, &super::sync::files_of(files))
}

/// The next version number: one more than the largest numeric directory.
fn next_version(versions_dir: &Path) -> Result<u32, StoreError> {
    let mut max = 0u32;
    let entries =
        fs::read_dir(versions_dir).map_err(|e| StoreError::io("read", versions_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("read", versions_dir, e))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            max = max.max(n);
        }
    }
    Ok(max.saturating_add(1))
}

/// Removes a temporary file of an atomic write (`.<name>.tmp…`) that a
/// killed process left behind.
fn remove_if_stale_temp(entry: &fs::DirEntry) {
    let name = entry.file_name().to_string_lossy().into_owned();
    if !name.contains(".tmp") {
        return;
    }
    if is_stale_temp(entry) {
        log::debug!("removing leftover {}", entry.path().display());
        let _ = fs::remove_file(entry.path());
    }
}

/// Sorted directory entries of `dir` (empty when it does not exist).
fn list_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("read", dir, e)),
    };
    let mut out = entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::io("read", dir, e))?;
    out.sort_by_key(fs::DirEntry::file_name);
    Ok(out)
}

impl Storage for FsStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn load_account(&self, key: &AccountKey) -> Result<Option<StoredAccountDoc>, StoreError> {
        let path = self.account_location(key);
        Ok(read_optional(&path)?.map(|json| StoredAccountDoc {
            key: key.clone(),
            json,
            location: path,
        }))
    }

    fn create_account(&self, key: &AccountKey, json: &[u8]) -> Result<AccountSlot, StoreError> {
        let _lock = self.lock()?;
        // Re-read under the lock: another process may have stored it while
        // this one talked to the CA.
        if let Some(existing) = self.load_account(key)? {
            return Ok(AccountSlot::Existing(existing));
        }
        self.write_account(key, json).map(AccountSlot::Created)
    }

    fn replace_account(
        &self,
        key: &AccountKey,
        json: &[u8],
    ) -> Result<StoredAccountDoc, StoreError> {
        let _lock = self.lock()?;
        self.write_account(key, json)
    }

    fn accounts(&self) -> Result<Vec<StoredAccountDoc>, StoreError> {
        let mut out = Vec::new();
        for host in list_dir(&self.root.join("accounts"))? {
            for id in list_dir(&host.path())? {
                let path = id.path().join("account.json");
                if let Some(json) = read_optional(&path)? {
                    out.push(StoredAccountDoc {
                        key: AccountKey {
                            ca_host: host.file_name().to_string_lossy().into_owned(),
                            id: id.file_name().to_string_lossy().into_owned(),
                        },
                        json,
                        location: path,
                    });
                }
            }
        }
        Ok(out)
    }

    fn account_location(&self, key: &AccountKey) -> PathBuf {
        self.account_dir(key).join("account.json")
    }

    fn cert_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for entry in list_dir(&self.root.join("certs"))? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_cert_name(&name).is_ok() && entry.path().join("lineage.toml").is_file() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn load_lineage(&self, name: &str) -> Result<Option<Lineage>, StoreError> {
        check_cert_name(name)?;
        let path = self.cert_dir(name).join("lineage.toml");
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        parse_lineage(&path, &bytes).map(Some)
    }

    fn update_lineage(
        &self,
        name: &str,
        change: &mut dyn FnMut(&mut Lineage),
    ) -> Result<Option<Lineage>, StoreError> {
        check_cert_name(name)?;
        let _lock = self.lock()?;
        let Some(mut lineage) = self.load_lineage(name)? else {
            return Ok(None);
        };
        change(&mut lineage);
        self.write_lineage(name, &lineage)?;
        Ok(Some(lineage))
    }

    fn commit_version_fenced(
        &self,
        name: &str,
        files: &CertFiles,
        lineage: &Lineage,
        record: VersionRecord,
        fence: Option<u64>,
        settles: Option<&str>,
    ) -> Result<SavedVersion, StoreError> {
        check_cert_name(name)?;
        let cert_dir = self.cert_dir(name);
        let versions_dir = cert_dir.join("versions");
        // `versions/` is 0700 like the root (keys are inside; the operator
        // grants a web server access explicitly, by group or ACL); the
        // version directories within are 0755.
        create_private_dir_all(&versions_dir)
            .map_err(|e| StoreError::io("create", &versions_dir, e))?;

        // The files are written and fsynced before the lock is taken: the
        // fsyncs of concurrent saves then overlap (and share the
        // filesystem's journal commits) instead of queueing behind the lock,
        // which is held only to number, rename and switch.
        let staging = versions_dir.join(format!(
            "{STAGING_PREFIX}{}-{}",
            std::process::id(),
            STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let staged = stage_version(&staging, files);
        let saved = staged
            .and_then(|()| self.prepare_lineage(&cert_dir, &versions_dir, lineage, &record))
            .and_then(|prepared| {
                let saved = self.number_and_publish(
                    name,
                    &staging,
                    lineage,
                    record,
                    (fence, settles),
                    &prepared,
                );
                if saved.is_err() {
                    let _ = fs::remove_file(&prepared.tmp);
                }
                saved
            });
        if saved.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        saved
    }

    fn remove_cert(&self, name: &str, keep_files: bool) -> Result<bool, StoreError> {
        check_cert_name(name)?;
        let _lock = self.lock()?;
        let dir = self.cert_dir(name);
        if !dir.join("lineage.toml").exists() {
            return Ok(false);
        }
        if keep_files {
            for file in ["pending-order.json", "lineage.toml"] {
                let path = dir.join(file);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", &path, e)),
                }
            }
            fsync_dir(&dir)?;
            return Ok(true);
        }
        // Renamed out of certs/ first (one atomic step: a reader sees the
        // certificate or nothing), then removed.
        let trash = self
            .root
            .join(format!(".deleted-{name}-{}", std::process::id()));
        fs::rename(&dir, &trash).map_err(|e| StoreError::io("rename", &dir, e))?;
        if let Some(certs) = dir.parent() {
            fsync_dir(certs)?;
        }
        fs::remove_dir_all(&trash).map_err(|e| StoreError::io("remove", &trash, e))?;
        Ok(true)
    }

    fn rename_cert(&self, from: &str, to: &str) -> Result<(), StoreError> {
        check_cert_name(from)?;
        check_cert_name(to)?;
        let _lock = self.lock()?;
        let (old, new) = (self.cert_dir(from), self.cert_dir(to));
        if new.exists() {
            return Err(StoreError::Exists {
                name: to.to_owned(),
                location: self.location(),
            });
        }
        fs::rename(&old, &new).map_err(|e| StoreError::io("rename", &old, e))?;
        if let Some(certs) = new.parent() {
            fsync_dir(certs)?;
        }
        Ok(())
    }

    fn current_version(&self, name: &str) -> Result<Option<u32>, StoreError> {
        check_cert_name(name)?;
        let link = self.cert_dir(name).join("current");
        match fs::read_link(&link) {
            Ok(target) => Ok(target
                .file_name()
                .and_then(OsStr::to_str)
                .and_then(|s| s.parse().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", &link, e)),
        }
    }

    fn read_version(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<VersionFiles>, StoreError> {
        // The current version is read through its own directory, not the
        // `current` link: a switch between two reads would mix versions.
        let Some(version) = (match version {
            Some(v) => Some(v),
            None => self.current_version(name)?,
        }) else {
            return Ok(None);
        };
        check_cert_name(name)?;
        let dir = self
            .cert_dir(name)
            .join("versions")
            .join(version.to_string());
        if !dir.is_dir() {
            return Ok(None);
        }
        // A version ordered with the user's CSR has it instead of a key;
        // any other misses its key only when damaged (then it is an error).
        let csr_path = dir.join(CSR_FILE);
        let csr_pem = if csr_path.is_file() {
            Some(read_pem(&csr_path)?)
        } else {
            None
        };
        let privkey_pem = match (&csr_pem, read_pem(&dir.join(PRIVKEY_FILE))) {
            (_, Ok(k)) => Some(PrivateKeyPem::new(k)),
            (Some(_), Err(_)) => None,
            (None, Err(e)) => return Err(e),
        };
        let files = CertFiles {
            cert_pem: read_pem(&dir.join(CERT_FILE))?,
            chain_pem: read_pem(&dir.join(CHAIN_FILE))?,
            fullchain_pem: read_pem(&dir.join(FULLCHAIN_FILE))?,
            privkey_pem,
            csr_pem,
        };
        Ok(Some(VersionFiles {
            version,
            files,
            dir: Some(dir),
        }))
    }

    fn current_dir(&self, name: &str) -> Option<PathBuf> {
        check_cert_name(name)
            .ok()
            .map(|()| self.cert_dir(name).join("current"))
    }

    fn put_pending_order(&self, name: &str, order: &PendingOrder) -> Result<(), StoreError> {
        check_cert_name(name)?;
        // Not under the store lock: a run records its order while another
        // may hold the lock for a long write; the sweep of leftovers spares
        // this temp file until it is old (see `fsio::remove_stale_temps`).
        let dir = self.cert_dir(name);
        create_private_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
        let path = dir.join(PENDING_FILE);
        let body = serde_json::to_vec_pretty(order).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Into the record a settled order left empty, else a new file.
        if write_into_empty(&path, &body, 0o600)? {
            return Ok(());
        }
        write_atomic(&path, &body, 0o600)
    }

    fn pending_order(&self, name: &str) -> Result<Option<PendingOrder>, StoreError> {
        check_cert_name(name)?;
        let path = self.cert_dir(name).join(PENDING_FILE);
        let Some(bytes) = read_locked(&path)? else {
            return Ok(None);
        };
        // Empty: settled (see `settle_pending_order`).
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    fn remove_pending_order(&self, name: &str, order_url: &str) -> Result<(), StoreError> {
        check_cert_name(name)?;
        let _lock = self.lock_for_save()?;
        self.settle_pending_order(name, order_url)
    }

    fn record_rate_limit(&self, record: &RateLimitRecord) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let now = time::OffsetDateTime::now_utc();
        let mut all: Vec<RateLimitRecord> = self
            .rate_limits()?
            .into_iter()
            .filter(|r| crate::timefmt::parse_time(&r.until).is_some_and(|t| t > now))
            .filter(|r| r != record)
            .collect();
        all.push(record.clone());
        let path = self.root.join(RATE_LIMITS_FILE);
        let body = serde_json::to_vec_pretty(&all).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &body, 0o644)
    }

    fn rate_limits(&self) -> Result<Vec<RateLimitRecord>, StoreError> {
        let path = self.root.join(RATE_LIMITS_FILE);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(Vec::new());
        };
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    fn put_journal_entry(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        let path = self
            .journal_dir()
            .join(format!("{}.json", sanitize(&entry.id)));
        let body = serde_json::to_vec_pretty(entry).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &body, 0o600)
    }

    fn remove_journal_entry(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.journal_dir();
        let id = sanitize(id);
        // The temp file of a write a crash interrupted, in the naming of
        // releases up to 0.1 (newer ones are swept by age).
        let _ = fs::remove_file(dir.join(format!(".{id}.tmp")));
        let path = dir.join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", &path, e)),
        }
    }

    fn journal_entries(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let mut out = Vec::new();
        for entry in list_dir(&self.journal_dir())? {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                remove_if_stale_temp(&entry);
                continue;
            }
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(bytes) = read_optional(&path)? else {
                continue;
            };
            match serde_json::from_slice::<JournalEntry>(&bytes) {
                Ok(e) => out.push(e),
                Err(err) => {
                    log::warn!(
                        "ignoring unreadable journal entry {}: {err}",
                        path.display()
                    );
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn journal_location(&self) -> String {
        self.journal_dir().display().to_string()
    }

    fn lease(&self, scope: &str, wait: Duration) -> Result<Lease, StoreError> {
        let mut lock = lock_file(
            self.root.join(format!("{}.lock", sanitize(scope))),
            Some(wait),
        )?;
        let token = lock.next_token()?;
        let holder = lock.path().display().to_string();
        Ok(Lease::new(token, holder, Box::new(lock)))
    }

    fn cert_lease(&self, name: &str, _ttl: Duration) -> Result<Option<Lease>, StoreError> {
        check_cert_name(name)?;
        let dir = self.root.join("locks");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| StoreError::io("create", &dir, e))?;
        // Held until dropped: a process that dies releases its flock, so
        // the time to live is not needed here.
        let mut lock = match lock_file(self.cert_lease_path(name), Some(Duration::ZERO)) {
            Ok(lock) => lock,
            Err(StoreError::Locked { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let token = lock.next_token()?;
        let holder = lock.path().display().to_string();
        Ok(Some(Lease::new(token, holder, Box::new(lock))))
    }

    fn restore_cert(
        &self,
        name: &str,
        lineage: &Lineage,
        versions: &[VersionFiles],
        current: Option<u32>,
    ) -> Result<(), StoreError> {
        check_cert_name(name)?;
        let cert_dir = self.cert_dir(name);
        let versions_dir = cert_dir.join("versions");
        let _lock = self.lock_for_save()?;
        if self.load_lineage(name)?.is_some() || versions_dir.exists() {
            return Err(StoreError::Exists {
                name: name.to_owned(),
                location: self.location(),
            });
        }
        create_private_dir_all(&versions_dir)
            .map_err(|e| StoreError::io("create", &versions_dir, e))?;
        for v in versions {
            let staging = versions_dir.join(format!(
                "{STAGING_PREFIX}{}-{}",
                std::process::id(),
                STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let dir = versions_dir.join(v.version.to_string());
            let staged = stage_version(&staging, &v.files).and_then(|()| {
                fs::rename(&staging, &dir).map_err(|e| StoreError::io("rename", &staging, e))
            });
            if let Err(e) = staged {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        fsync_dir(&versions_dir)?;
        self.write_lineage(name, lineage)?;
        if let Some(version) = current {
            switch_current(&cert_dir, version)?;
        }
        Ok(())
    }

    fn name_lease(&self, scope: &str, wait: Duration) -> Result<Lease, StoreError> {
        let dir = self.root.join("locks");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| StoreError::io("create", &dir, e))?;
        let lock = lock_file(dir.join(format!("{}.lock", sanitize(scope))), Some(wait))?;
        let holder = lock.path().display().to_string();
        Ok(Lease::new(0, holder, Box::new(lock)))
    }
}
