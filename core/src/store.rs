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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Every version stored, oldest first.
    #[serde(default)]
    pub versions: Vec<VersionRecord>,
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
        let path = self.root.join("lock");
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
            if start.elapsed() >= self.lock_timeout {
                return Err(StoreError::Locked {
                    path,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
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
        // Directories are 0700 like the root: keys are inside, and the
        // operator grants a web server access explicitly (group, ACL).

        // We hold the lock: no other writer is active, so any temp dir is a
        // leftover of a crash.
        remove_stale_temps(&versions_dir);
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

        // Switch `current` atomically: a new symlink renamed over the old.
        let current = cert_dir.join("current");
        let tmp_link = cert_dir.join(format!(".current-{}", std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(Path::new("versions").join(version.to_string()), &tmp_link)
            .map_err(|e| StoreError::io("create symlink", &tmp_link, e))?;
        fs::rename(&tmp_link, &current).map_err(|e| StoreError::io("rename", &tmp_link, e))?;

        // The lineage: the stored history plus this version.
        let mut history = match self.load_lineage(name) {
            Ok(Some(old)) => old.versions,
            _ => Vec::new(),
        };
        record.version = version;
        history.retain(|v| v.version != version);
        history.push(record);
        let mut lineage = lineage.clone();
        lineage.versions = history;
        let text = toml::to_string(&lineage).map_err(|e| StoreError::Corrupt {
            path: cert_dir.join("lineage.toml"),
            reason: e.to_string(),
        })?;
        write_atomic(&cert_dir.join("lineage.toml"), text.as_bytes(), 0o644)?;
        fsync_dir(&cert_dir)?;

        Ok(SavedVersion {
            version,
            dir,
            current,
        })
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
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            log::debug!("removing leftover {}", entry.path().display());
            let _ = fs::remove_dir_all(entry.path());
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
