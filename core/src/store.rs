//! The state directory: accounts, certificates and their history.
//!
//! Why this module exists: a web server reads `fullchain.pem` and
//! `privkey.pem` at any moment, and certsmith may be killed at any moment.
//! Everything here is written so that a reader only ever sees a complete,
//! matching set, and a crash leaves the previous set in place
//! (DESIGN.md §4):
//!
//! ```text
//! <root>/accounts/<ca-host>/<account-id>/account.json     0600
//! <root>/certs/<name>/current -> versions/<n>              switched atomically
//! <root>/certs/<name>/versions/<n>/{cert,chain,fullchain,privkey}.pem
//! <root>/certs/<name>/lineage.toml                         domains, solver, key type, server, versions
//! <root>/lock                                              one writer at a time
//! ```
//!
//! * Files are written to a temporary name, fsynced, renamed, and the
//!   directory fsynced (the rename is what makes them appear atomically).
//! * A version is written completely into `versions/.tmp-*`, then renamed to
//!   `versions/<n>`, and only then does `current` move, by renaming a new
//!   symlink over it. Leftover `.tmp-*` directories from a crash are never
//!   mistaken for versions and are removed by the next writer.
//! * The `lock` file is held (`flock`) only while writing, not during an ACME
//!   order, so two `certsmith issue` processes on one store both finish.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::keys::PrivateKeyPem;

/// How long a writer waits for the store lock before giving up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// File names inside a version directory.
pub const CERT_FILE: &str = "cert.pem";
/// The intermediates, without the leaf.
pub const CHAIN_FILE: &str = "chain.pem";
/// The leaf followed by the intermediates: what most servers want.
pub const FULLCHAIN_FILE: &str = "fullchain.pem";
/// The private key, mode 0600.
pub const PRIVKEY_FILE: &str = "privkey.pem";

/// Why the store could not be read or written. Each message names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No `--state-dir`, no `$XDG_DATA_HOME`, no `$HOME`.
    #[error(
        "cannot choose a state directory: neither XDG_DATA_HOME nor HOME is set; pass --state-dir DIR"
    )]
    NoDefaultRoot,
    /// The state directory (or a directory in it) cannot be created or written.
    #[error("state directory {path} is not usable: {source}")]
    Unwritable {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "write", "read", "rename", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process held the lock for longer than the timeout.
    #[error(
        "another certsmith process holds {path}; wait for it or remove a stale lock (waited {}s)",
        .waited.as_secs()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The certificate name cannot be a directory name.
    #[error(
        "invalid certificate name '{0}': use letters, digits, '.', '-' and '_' (at most 128, not starting with '.')"
    )]
    BadName(String),
    /// A file in the store does not parse.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The state directory, opened and known to be writable.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    lock_timeout: Duration,
}

/// The default state directory when `--state-dir` and `CERTSMITH_STATE_DIR`
/// are absent: `/var/lib/certsmith` as root, else
/// `$XDG_DATA_HOME/certsmith`, else `~/.local/share/certsmith`
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

/// Checks that `name` is usable as a certificate directory name.
pub fn check_cert_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

/// What to write for one new certificate version.
#[derive(Debug)]
pub struct CertFiles {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The intermediates (PEM), possibly empty.
    pub chain_pem: String,
    /// Leaf followed by intermediates (PEM).
    pub fullchain_pem: String,
    /// The private key (PEM), written 0600.
    pub privkey_pem: PrivateKeyPem,
}

/// One issued version, as recorded in `lineage.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version number (the directory name under `versions/`).
    pub version: u32,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// When certsmith stored it, RFC 3339.
    pub issued_at: String,
}

/// `certs/<name>/lineage.toml`: how to obtain this certificate again.
///
/// Never holds a secret: solver credentials and EAB keys are read from the
/// environment or the config file each time (`certsmith renew`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The identifiers, ASCII, in order.
    pub domains: Vec<String>,
    /// The solver code.
    pub solver: String,
    /// The solver options that were set explicitly and are not secret.
    #[serde(default)]
    pub solver_options: BTreeMap<String, toml::Value>,
    /// The key type name, e.g. `ec-p256`.
    pub key_type: String,
    /// The ACME directory URL.
    pub server: String,
    /// The extra CA bundle trusted for the server's HTTPS, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// The account's contact e-mail, which selects the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The command run after the certificate changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_hook: Option<String>,
    /// Renew when less than this is left (e.g. `30d`); default 1/3 of the
    /// lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// When the current version is due for renewal, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalRecord>,
    /// Set when the current version was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<RevocationRecord>,
    /// Every version stored, oldest first.
    #[serde(default)]
    pub versions: Vec<VersionRecord>,
}

/// `[renewal]` of `lineage.toml`: the next renewal of the current version
/// (see `crate::renewal`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRecord {
    /// When to renew, RFC 3339.
    pub next_renewal: String,
    /// Why then: `expiry` (1/3 of the lifetime left), `renew_before` (the
    /// configured margin) or `ari` (the CA's suggested window).
    pub reason: String,
    /// The serial of the version this is about, hex.
    #[serde(default)]
    pub serial: String,
    /// RFC 9773 certificate identifier (`base64url(AKI).base64url(serial)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_cert_id: Option<String>,
    /// The CA's suggested window start, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_window_start: Option<String>,
    /// The CA's suggested window end, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_window_end: Option<String>,
    /// The time picked at random in the CA's window, RFC 3339 (kept while
    /// the window stays the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_renewal_at: Option<String>,
    /// The CA's `explanationURL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation_url: Option<String>,
    /// Not to ask the CA again before this (its `Retry-After`), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_next_check: Option<String>,
    /// When this was computed, RFC 3339.
    #[serde(default)]
    pub checked_at: String,
}

/// `[revoked]` of `lineage.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// The revoked serial, hex.
    pub serial: String,
    /// The reason given, e.g. `key-compromise`.
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
}

/// Where a stored version lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedVersion {
    /// The version number.
    pub version: u32,
    /// `certs/<name>/versions/<n>`.
    pub dir: PathBuf,
    /// `certs/<name>/current`, the stable path to hand to a web server.
    pub current: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state directory at `root` and checks
    /// that it is writable, so that an unusable directory fails before any
    /// request reaches the CA.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let unwritable = |source| StoreError::Unwritable {
            path: root.clone(),
            source,
        };
        create_private_dir_all(&root).map_err(unwritable)?;
        for sub in ["accounts", "certs"] {
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
        Ok(Store {
            root,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Changes how long [`Store::lock`] waits.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Store {
        self.lock_timeout = timeout;
        self
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store lock, waiting up to the lock timeout for another
    /// process to release it. Blocking: call from a blocking thread.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        lock_file(self.root.join("lock"), self.lock_timeout)
    }

    /// Takes `run.lock`, which `certsmith run` and `renew` hold for a whole
    /// batch so that two overlapping scheduled runs never order the same
    /// certificate twice (the second waits, then finds nothing due). Waits
    /// up to `timeout`. Independent of [`Store::lock`], which writers take
    /// briefly while the batch runs. Blocking: call from a blocking thread.
    pub fn run_lock(&self, timeout: Duration) -> Result<StoreLock, StoreError> {
        lock_file(self.root.join("run.lock"), timeout)
    }

    /// `accounts/<ca-host>/<account-id>/account.json`.
    pub fn account_path(&self, ca_host: &str, account_id: &str) -> PathBuf {
        self.root
            .join("accounts")
            .join(sanitize(ca_host))
            .join(sanitize(account_id))
            .join("account.json")
    }

    /// Reads a stored account, if there is one.
    pub fn load_account(
        &self,
        ca_host: &str,
        account_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.account_path(ca_host, account_id);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", &path, e)),
        }
    }

    /// Stores an account (it holds the account's private key: written 0600,
    /// in 0700 directories). Takes the store lock.
    pub fn save_account(
        &self,
        ca_host: &str,
        account_id: &str,
        json: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let path = self.account_path(ca_host, account_id);
        let dir = parent(&path)?;
        let _lock = self.lock()?;
        create_private_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        write_atomic(&path, json, 0o600)?;
        Ok(path)
    }

    /// Every stored account: the path of its `account.json` and its
    /// contents, in no particular order. Nothing stored yet is an empty
    /// list; an entry that is not an account directory, or whose file
    /// cannot be read, is skipped.
    pub fn account_files(&self) -> Result<Vec<(PathBuf, Vec<u8>)>, StoreError> {
        let dir = self.root.join("accounts");
        let hosts = match fs::read_dir(&dir) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("read", &dir, e)),
        };
        let mut out = Vec::new();
        for host in hosts.flatten() {
            let Ok(ids) = fs::read_dir(host.path()) else {
                continue;
            };
            for id in ids.flatten() {
                let path = id.path().join("account.json");
                if let Ok(bytes) = fs::read(&path) {
                    out.push((path, bytes));
                }
            }
        }
        Ok(out)
    }

    /// `certs/<name>`.
    pub fn cert_dir(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(name)
    }

    /// The version `current` points to, if any.
    pub fn current_version(&self, name: &str) -> Result<Option<u32>, StoreError> {
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

    /// The names of every certificate with a `lineage.toml`, sorted.
    pub fn cert_names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("certs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("read", &dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("read", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_cert_name(&name).is_ok() && entry.path().join("lineage.toml").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Changes `lineage.toml` of `name` under the store lock (renewal
    /// state, revocation, settings) without storing a new version. Returns
    /// the lineage written, or `None` when there is none. Blocking.
    pub fn update_lineage(
        &self,
        name: &str,
        change: impl FnOnce(&mut Lineage),
    ) -> Result<Option<Lineage>, StoreError> {
        check_cert_name(name)?;
        let _lock = self.lock()?;
        let Some(mut lineage) = self.load_lineage(name)? else {
            return Ok(None);
        };
        change(&mut lineage);
        let path = self.cert_dir(name).join("lineage.toml");
        let text = toml::to_string(&lineage).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(Some(lineage))
    }

    /// Reads `lineage.toml`, if there is one.
    pub fn load_lineage(&self, name: &str) -> Result<Option<Lineage>, StoreError> {
        check_cert_name(name)?;
        let path = self.cert_dir(name).join("lineage.toml");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Stores a new version of certificate `name` and switches `current` to
    /// it. `lineage` describes the certificate; its `versions` are replaced
    /// by the stored history plus `record` (whose `version` is set here).
    /// Takes the store lock; blocking.
    pub fn save_certificate(
        &self,
        name: &str,
        files: &CertFiles,
        lineage: &Lineage,
        mut record: VersionRecord,
    ) -> Result<SavedVersion, StoreError> {
        check_cert_name(name)?;
        let cert_dir = self.cert_dir(name);
        let versions_dir = cert_dir.join("versions");
        let _lock = self.lock()?;
        create_private_dir_all(&versions_dir)
            .map_err(|e| StoreError::io("create", &versions_dir, e))?;
        // `versions/` is 0700 like the root (keys are inside; the operator
        // grants a web server access explicitly, by group or ACL); the
        // version directories within are 0755.

        // We hold the lock: no other writer is active, so any temp file or
        // directory is a leftover of a crash.
        remove_stale_temps(&versions_dir);
        remove_stale_temps(&cert_dir);
        let version = next_version(&versions_dir)?;

        let tmp = versions_dir.join(format!(".tmp-{version}-{}", std::process::id()));
        if tmp.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(|e| StoreError::io("create", &tmp, e))?;
        write_new(&tmp.join(CERT_FILE), files.cert_pem.as_bytes(), 0o644)?;
        write_new(&tmp.join(CHAIN_FILE), files.chain_pem.as_bytes(), 0o644)?;
        write_new(
            &tmp.join(FULLCHAIN_FILE),
            files.fullchain_pem.as_bytes(),
            0o644,
        )?;
        write_new(
            &tmp.join(PRIVKEY_FILE),
            files.privkey_pem.expose().as_bytes(),
            0o600,
        )?;
        fsync_dir(&tmp)?;
        let dir = versions_dir.join(version.to_string());
        fs::rename(&tmp, &dir).map_err(|e| StoreError::io("rename", &tmp, e))?;
        fsync_dir(&versions_dir)?;

        // The lineage: the stored history plus this version. Settings the
        // caller leaves unset (account, CA bundle, hook, margin) carry
        // over; renewal state and a revocation belonged to the old version.
        let old = self.load_lineage(name).ok().flatten();
        let mut lineage = lineage.clone();
        let mut history = Vec::new();
        if let Some(old) = old {
            history = old.versions;
            lineage.ca_cert = lineage.ca_cert.or(old.ca_cert);
            lineage.email = lineage.email.or(old.email);
            lineage.deploy_hook = lineage.deploy_hook.or(old.deploy_hook);
            lineage.renew_before = lineage.renew_before.or(old.renew_before);
        }
        record.version = version;
        history.retain(|v| v.version != version);
        history.push(record);
        lineage.versions = history;
        let text = toml::to_string(&lineage).map_err(|e| StoreError::Corrupt {
            path: cert_dir.join("lineage.toml"),
            reason: e.to_string(),
        })?;
        write_atomic(&cert_dir.join("lineage.toml"), text.as_bytes(), 0o644)?;

        // Then switch `current` atomically: a new symlink renamed over the
        // old. The lineage is written first so that a crash in between
        // leaves a stored version the lineage knows, never a `current` it
        // does not.
        let current = cert_dir.join("current");
        let tmp_link = cert_dir.join(format!(".current-{}", std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(Path::new("versions").join(version.to_string()), &tmp_link)
            .map_err(|e| StoreError::io("create symlink", &tmp_link, e))?;
        fs::rename(&tmp_link, &current).map_err(|e| StoreError::io("rename", &tmp_link, e))?;

        fsync_dir(&cert_dir)?;

        Ok(SavedVersion {
            version,
            dir,
            current,
        })
    }
}

/// Takes an exclusive `flock` on `path`, retrying until `timeout`.
fn lock_file(path: PathBuf, timeout: Duration) -> Result<StoreLock, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    let start = Instant::now();
    loop {
        // SAFETY: the fd is valid for the lifetime of `file`; flock has no
        // memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(StoreLock { _file: file, path });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock && err.raw_os_error() != Some(libc::EINTR) {
            return Err(StoreError::io("lock", &path, err));
        }
        if start.elapsed() >= timeout {
            return Err(StoreError::Locked {
                path,
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The store lock; released when dropped (closing the file releases the
/// `flock`).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces characters that do not belong in a path component.
fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        format!("_{out}")
    } else {
        out
    }
}

fn parent(path: &Path) -> Result<&Path, StoreError> {
    path.parent().ok_or_else(|| StoreError::Corrupt {
        path: path.to_owned(),
        reason: "has no parent directory".to_owned(),
    })
}

fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    Ok(())
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

fn remove_stale_temps(versions_dir: &Path) {
    let Ok(entries) = fs::read_dir(versions_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-")
            || name.starts_with(".current-")
            || name.starts_with(".lineage.toml.tmp-")
        {
            log::debug!("removing leftover {}", entry.path().display());
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    let _ = fs::remove_dir_all(&path);
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
}

/// Writes a file that does not exist yet, with `mode`, and fsyncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| StoreError::io("create", path, e))?;
    // The umask may have removed bits from `mode`; the key must be exactly
    // 0600 and the others exactly what was asked.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("chmod", path, e))?;
    f.write_all(data)
        .map_err(|e| StoreError::io("write", path, e))?;
    f.sync_all().map_err(|e| StoreError::io("fsync", path, e))?;
    Ok(())
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = parent(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, data, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        StoreError::io("rename", &tmp, e)
    })?;
    fsync_dir(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn files(tag: &str) -> CertFiles {
        CertFiles {
            cert_pem: format!("CERT {tag}\n"),
            chain_pem: format!("CHAIN {tag}\n"),
            fullchain_pem: format!("CERT {tag}\nCHAIN {tag}\n"),
            privkey_pem: PrivateKeyPem::new(format!("KEY {tag}\n")),
        }
    }

    fn lineage() -> Lineage {
        let mut opts = BTreeMap::new();
        opts.insert("port".to_owned(), toml::Value::Integer(5002));
        Lineage {
            domains: vec!["a.example".into(), "b.example".into()],
            solver: "standalone".into(),
            solver_options: opts,
            key_type: "ec-p256".into(),
            server: "https://localhost:14000/dir".into(),
            versions: vec![],
            ..Lineage::default()
        }
    }

    fn record() -> VersionRecord {
        VersionRecord {
            version: 0,
            serial: "01ab".into(),
            not_before: "2025-01-01T00:00:00Z".into(),
            not_after: "2025-04-01T00:00:00Z".into(),
            issued_at: "2025-01-01T00:00:01Z".into(),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn versions_increment_and_current_switches() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("state")).expect("open");
        assert_eq!(store.current_version("a.example").expect("read"), None);

        let v1 = store
            .save_certificate("a.example", &files("one"), &lineage(), record())
            .expect("save 1");
        assert_eq!(v1.version, 1);
        assert_eq!(store.current_version("a.example").expect("read"), Some(1));
        let cur = store.cert_dir("a.example").join("current");
        assert_eq!(
            fs::read_to_string(cur.join(CERT_FILE)).expect("read"),
            "CERT one\n"
        );

        let v2 = store
            .save_certificate("a.example", &files("two"), &lineage(), record())
            .expect("save 2");
        assert_eq!(v2.version, 2);
        assert_eq!(v2.current, cur);
        assert_eq!(
            fs::read_link(&cur).expect("symlink"),
            PathBuf::from("versions/2"),
            "the link is relative, so the store can move"
        );
        assert_eq!(
            fs::read_to_string(cur.join(PRIVKEY_FILE)).expect("read"),
            "KEY two\n"
        );
        // Version 1 is still there, intact.
        assert_eq!(
            fs::read_to_string(v1.dir.join(FULLCHAIN_FILE)).expect("read"),
            "CERT one\nCHAIN one\n"
        );

        let lin = store
            .load_lineage("a.example")
            .expect("read")
            .expect("exists");
        assert_eq!(lin.domains, ["a.example", "b.example"]);
        assert_eq!(
            lin.solver_options.get("port"),
            Some(&toml::Value::Integer(5002))
        );
        let nums: Vec<u32> = lin.versions.iter().map(|v| v.version).collect();
        assert_eq!(nums, [1, 2]);
    }

    #[test]
    fn lineage_settings_carry_over_and_renewal_state_resets() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("state")).expect("open");
        assert_eq!(store.cert_names().expect("list"), Vec::<String>::new());
        store
            .save_certificate("s.example", &files("one"), &lineage(), record())
            .expect("save 1");
        let updated = store
            .update_lineage("s.example", |l| {
                l.email = Some("a@example.com".into());
                l.deploy_hook = Some("true".into());
                l.renewal = Some(RenewalRecord {
                    next_renewal: "2025-03-01T00:00:00Z".into(),
                    reason: "ari".into(),
                    explanation_url: Some("https://ca/why".into()),
                    ..RenewalRecord::default()
                });
                l.revoked = Some(RevocationRecord {
                    serial: "01ab".into(),
                    reason: "superseded".into(),
                    at: "2025-02-01T00:00:00Z".into(),
                });
            })
            .expect("update")
            .expect("exists");
        assert_eq!(
            store.load_lineage("s.example").expect("read"),
            Some(updated)
        );
        let text =
            fs::read_to_string(store.cert_dir("s.example").join("lineage.toml")).expect("read");
        assert!(
            text.contains("explanation_url = \"https://ca/why\""),
            "{text}"
        );
        assert_eq!(store.update_lineage("nope", |_| {}).expect("ok"), None);

        store
            .save_certificate("s.example", &files("two"), &lineage(), record())
            .expect("save 2");
        let l = store
            .load_lineage("s.example")
            .expect("read")
            .expect("exists");
        assert_eq!(l.email.as_deref(), Some("a@example.com"));
        assert_eq!(l.deploy_hook.as_deref(), Some("true"));
        assert_eq!(l.renewal, None);
        assert_eq!(l.revoked, None);
        assert_eq!(store.cert_names().expect("list"), ["s.example"]);
    }

    #[test]
    fn permissions() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("state")).expect("open");
        let v = store
            .save_certificate("p.example", &files("x"), &lineage(), record())
            .expect("save");
        assert_eq!(mode(&v.dir.join(PRIVKEY_FILE)), 0o600);
        assert_eq!(mode(&v.dir.join(CERT_FILE)), 0o644);
        assert_eq!(mode(&v.dir.join(FULLCHAIN_FILE)), 0o644);
        assert_eq!(mode(store.root()), 0o700);

        let acct = store
            .save_account("localhost_14000", "abcd", b"{\"secret\":1}")
            .expect("save account");
        assert_eq!(mode(&acct), 0o600);
        assert_eq!(mode(acct.parent().expect("dir")), 0o700);
        assert_eq!(
            store
                .load_account("localhost_14000", "abcd")
                .expect("read")
                .as_deref(),
            Some(&b"{\"secret\":1}"[..])
        );
        assert_eq!(
            store.load_account("localhost_14000", "nope").expect("read"),
            None
        );
    }

    #[test]
    fn crashed_temp_version_is_ignored_and_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("state")).expect("open");
        store
            .save_certificate("c.example", &files("one"), &lineage(), record())
            .expect("save 1");
        // Simulate a run killed while writing version 2: a half-written
        // temp dir, `current` untouched.
        let versions = store.cert_dir("c.example").join("versions");
        let crashed = versions.join(".tmp-2-99999");
        fs::create_dir(&crashed).expect("mkdir");
        fs::write(crashed.join(CERT_FILE), "half").expect("write");
        assert_eq!(store.current_version("c.example").expect("read"), Some(1));
        let cur = store.cert_dir("c.example").join("current");
        assert_eq!(
            fs::read_to_string(cur.join(CERT_FILE)).expect("read"),
            "CERT one\n"
        );

        let v = store
            .save_certificate("c.example", &files("two"), &lineage(), record())
            .expect("save 2");
        assert_eq!(v.version, 2);
        assert!(!crashed.exists(), "the leftover is cleaned up");
        assert_eq!(
            fs::read_to_string(cur.join(CERT_FILE)).expect("read"),
            "CERT two\n"
        );
    }

    #[test]
    fn lock_contention_waits_then_fails_clearly() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("state"))
            .expect("open")
            .with_lock_timeout(Duration::from_millis(200));
        let held = store.lock().expect("first lock");
        let err = store.lock().expect_err("second lock must fail");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Locked { .. }));
        assert!(msg.contains("another certsmith process holds"), "{msg}");
        assert!(
            msg.contains(&store.root().join("lock").display().to_string()),
            "{msg}"
        );
        drop(held);
        store.lock().expect("free again");

        // A writer waiting for a lock released within the timeout succeeds.
        let store = store.with_lock_timeout(Duration::from_secs(5));
        let held = store.lock().expect("lock");
        let barrier = Arc::new(Barrier::new(2));
        let (s2, b2) = (store.clone(), barrier.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            s2.save_certificate("l.example", &files("x"), &lineage(), record())
        });
        barrier.wait();
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        let saved = t.join().expect("thread").expect("save after wait");
        assert_eq!(saved.version, 1);
    }

    #[test]
    fn concurrent_writers_get_distinct_versions() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("state")).expect("open");
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = store.clone();
                std::thread::spawn(move || {
                    s.save_certificate("w.example", &files(&i.to_string()), &lineage(), record())
                })
            })
            .collect();
        let mut versions: Vec<u32> = handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("save").version)
            .collect();
        versions.sort_unstable();
        assert_eq!(versions, [1, 2, 3, 4]);
        let lin = store
            .load_lineage("w.example")
            .expect("read")
            .expect("exists");
        assert_eq!(lin.versions.len(), 4);
    }

    #[test]
    fn unwritable_root_is_reported_with_its_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("a-file");
        fs::write(&file, "x").expect("write");
        let err = Store::open(file.join("state")).expect_err("cannot create under a file");
        assert!(matches!(err, StoreError::Unwritable { .. }));
        assert!(err.to_string().contains("a-file"), "{err}");
    }

    #[test]
    fn cert_names() {
        assert!(check_cert_name("example.com").is_ok());
        assert!(check_cert_name("my_cert-1").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "*.x", "a b"] {
            assert!(check_cert_name(bad).is_err(), "{bad}");
        }
        assert_eq!(sanitize("localhost:14000"), "localhost_14000");
        assert_eq!(sanitize(".."), "_..");
    }
}
