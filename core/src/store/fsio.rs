//! File operations the filesystem store is built from: atomic replacement,
//! exclusive creation with exact modes, directory fsync, `flock`.
//!
//! Why this module exists: crash safety lives in these few functions (a
//! file appears complete or not at all; a rename is made durable by
//! fsyncing its directory), and `fs.rs` should read as the layout alone.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use super::StoreError;

/// An exclusive `flock` on a file; released when dropped (closing the file
/// releases the lock, then the next writer of this process is woken).
#[derive(Debug)]
pub(super) struct FileLock {
    // Field order is drop order: the kernel lock goes first, then the turn.
    file: File,
    path: PathBuf,
    _turn: Turn,
}

/// The lock files held by this process. Writers of one process queue for a
/// lock file here, on a condition variable, so that only the one whose turn
/// it is asks the kernel; `flock` would refuse the others too (it locks
/// per open file), and they would have to poll.
static HELD: LazyLock<(Mutex<HashSet<PathBuf>>, Condvar)> =
    LazyLock::new(|| (Mutex::new(HashSet::new()), Condvar::new()));

fn held() -> MutexGuard<'static, HashSet<PathBuf>> {
    // The set stays consistent through a panic (insert and remove are
    // single calls), so a poisoned lock is still usable.
    HELD.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's turn at one lock file; the next waiter's when dropped.
#[derive(Debug)]
struct Turn {
    path: PathBuf,
}

impl Turn {
    /// Waits until no other writer of this process holds `path`, until
    /// `deadline` at the latest (`None`: as long as it takes).
    fn take(path: &Path, deadline: Option<Instant>) -> Option<Turn> {
        let mut set = held();
        while set.contains(path) {
            set = match deadline {
                None => HELD.1.wait(set).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    HELD.1
                        .wait_timeout(set, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        set.insert(path.to_path_buf());
        Some(Turn {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        held().remove(&self.path);
        HELD.1.notify_all();
    }
}

impl FileLock {
    /// The lock file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Increments the counter kept in the lock file and returns it: the
    /// fencing token of a lease. Only the holder writes it.
    pub(super) fn next_token(&mut self) -> Result<u64, StoreError> {
        let mut text = String::new();
        self.file
            .rewind()
            .and_then(|()| self.file.read_to_string(&mut text))
            .map_err(|e| StoreError::io("read", &self.path, e))?;
        let token = text.trim().parse::<u64>().unwrap_or(0).saturating_add(1);
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| writeln!(self.file, "{token}"))
            .map_err(|e| StoreError::io("write", &self.path, e))?;
        Ok(token)
    }
}

/// Takes an exclusive `flock` on `path`, waiting up to `timeout` (`None`:
/// as long as it takes) for other holders to release it: first the writers
/// of this process (in memory, in turn), then other processes (in the
/// kernel). Nothing polls.
pub(super) fn lock_file(path: PathBuf, timeout: Option<Duration>) -> Result<FileLock, StoreError> {
    let start = Instant::now();
    let deadline = timeout.map(|t| start + t);
    let locked = |path: PathBuf| StoreError::Locked {
        path,
        waited: start.elapsed(),
    };
    let Some(turn) = Turn::take(&path, deadline) else {
        return Err(locked(path));
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            // Another process holds it.
            let waited = match deadline {
                None => flock(&file, libc::LOCK_EX).map(|()| true),
                Some(d) => flock_until(&file, d),
            };
            match waited {
                Ok(true) => {}
                Ok(false) => return Err(locked(path)),
                Err(e) => return Err(StoreError::io("lock", &path, e)),
            }
        }
        Err(e) => return Err(StoreError::io("lock", &path, e)),
    }
    Ok(FileLock {
        file,
        path,
        _turn: turn,
    })
}

/// `flock(file, op)`, again when a signal interrupts it.
fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the fd is valid for the lifetime of `file`; flock has no
        // memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// A blocking `flock(LOCK_EX)` on `file` that gives up at `deadline`:
/// `Ok(false)` then. The kernel call cannot time out, so a thread makes it
/// on a second descriptor of the same open file (a `flock` belongs to the
/// open file, so the lock it gets is `file`'s). Given up on, the thread
/// keeps waiting and, once it has the lock, closes its descriptor — with
/// `file` gone too, that releases it.
fn flock_until(file: &File, deadline: Instant) -> io::Result<bool> {
    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
        return Ok(false);
    };
    let twin = file.try_clone()?;
    let (tx, rx) = mpsc::channel();
    let abandoned = Arc::new(Mutex::new(false));
    let gave_up = Arc::clone(&abandoned);
    std::thread::Builder::new()
        .name("certsmith-flock".into())
        .spawn(move || {
            let got = flock(&twin, libc::LOCK_EX);
            let abandoned = gave_up.lock().unwrap_or_else(|p| p.into_inner());
            if !*abandoned {
                // The receiver waits until `abandoned` is set, under this
                // mutex: a send that fails has nobody to tell.
                let _ = tx.send(got);
            }
            drop(twin);
        })?;
    match rx.recv_timeout(left) {
        Ok(got) => got.map(|()| true),
        Err(_) => {
            *abandoned.lock().unwrap_or_else(|p| p.into_inner()) = true;
            // The thread may have sent just before the flag was set.
            match rx.try_recv() {
                Ok(got) => got.map(|()| true),
                Err(_) => Ok(false),
            }
        }
    }
}

/// Replaces characters that do not belong in a path component.
pub(super) fn sanitize(s: &str) -> String {
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

pub(super) fn parent(path: &Path) -> Result<&Path, StoreError> {
    path.parent().ok_or_else(|| StoreError::Corrupt {
        path: path.to_owned(),
        reason: "has no parent directory".to_owned(),
    })
}

/// Creates `dir` and its parents with mode 0700.
pub(super) fn create_private_dir_all(dir: &Path) -> io::Result<()> {
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

/// Reads a file; `None` when it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path, e)),
    }
}

/// How old a temporary file written without the store lock must be before
/// it is taken for the leftover of a write that died (a write takes
/// milliseconds).
pub(super) const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// Whether `entry` was last written at least [`STALE_TEMP_AGE`] ago: a
/// temp file of a write not under the store lock that old is a leftover.
pub(super) fn is_stale_temp(entry: &fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= STALE_TEMP_AGE)
}

/// Whether a staging directory or prepared lineage (`rest`: `<pid>-<n>`,
/// after the prefix) is a leftover: its process is gone, or it is old (a
/// recycled pid).
fn staging_is_stale(rest: &str, entry: &fs::DirEntry) -> bool {
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    pid.is_none_or(|pid| !crate::journal::process_alive(pid, 0)) || is_stale_temp(entry)
}

/// Removes leftovers of writes a crash interrupted (`.tmp-*` version
/// directories, `.current-*` links, `.<file>.tmp-*` files) from `dir`.
/// Only for a caller holding the store lock: then no write is in flight.
pub(super) fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // The pending-order record, the files of a version (staged) and the
        // lineage that will list it are written without the store lock (a
        // run must be able to record its order while another holds the
        // lock; fsyncs of concurrent saves should overlap): their temp
        // files are leftovers only once old (or their writer is gone).
        let old_unlocked = (name.starts_with(".pending-order.json.tmp-") && is_stale_temp(&entry))
            || [super::fs::STAGING_PREFIX, super::fs::LINEAGE_NEXT_PREFIX]
                .iter()
                .any(|prefix| {
                    name.strip_prefix(prefix)
                        .is_some_and(|rest| staging_is_stale(rest, &entry))
                });
        if name.starts_with(".tmp-")
            || name.starts_with(".current-")
            || name.starts_with(".lineage.toml.tmp-")
            || old_unlocked
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

/// Creates a file that does not exist yet, with exactly `mode`, and writes
/// `data` to it, not yet durable.
fn create_with(path: &Path, data: &[u8], mode: u32) -> Result<File, StoreError> {
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
    Ok(f)
}

/// Makes a file written by [`create_with`] durable: its data and the size
/// that reads it back (`fdatasync`; a new file has nothing else to lose).
fn sync_new(f: &File, path: &Path) -> Result<(), StoreError> {
    f.sync_data().map_err(|e| StoreError::io("fsync", path, e))
}

/// Starts writing `f`'s data to the disk without waiting (Linux
/// `sync_file_range`); elsewhere nothing, and the sync that follows does it.
fn start_writeback(f: &File) {
    #[cfg(target_os = "linux")]
    // SAFETY: the fd is valid for the lifetime of `f`; sync_file_range only
    // schedules writeback of the page cache and touches no memory of ours.
    // Its result is not needed: the fdatasync after it reports any error.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

/// Writes a file that does not exist yet, with `mode`, and fsyncs it.
pub(super) fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let f = create_with(path, data, mode)?;
    sync_new(&f, path)
}

/// Writes new files (name, contents, mode) into the existing directory
/// `dir` and makes them and their names durable. All are written before
/// any is synced, and the writeback of all is started at once: one sync
/// per file then only waits, and the directory, which holds every new
/// name by then, is written once (a sync of each file as it is written
/// costs a third more CPU on ext4, measured with a version's four PEMs).
pub(super) fn write_new_files(dir: &Path, files: &[(&str, &[u8], u32)]) -> Result<(), StoreError> {
    let mut written = Vec::with_capacity(files.len());
    for &(name, data, mode) in files {
        let path = dir.join(name);
        written.push((create_with(&path, data, mode)?, path));
    }
    for (f, _) in &written {
        start_writeback(f);
    }
    for (f, path) in &written {
        sync_new(f, path)?;
    }
    fsync_dir(dir)
}

/// Opens the existing file `path` for a change in place, holding an
/// exclusive `flock` on it (on the file, not the name). `None` when there
/// is no such file, or when, once locked, the name no longer points at it
/// (renamed over or removed meanwhile: a change to it would be lost).
pub(super) fn open_locked(path: &Path) -> io::Result<Option<File>> {
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    flock(&f, libc::LOCK_EX)?;
    let held = f.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(named) if (named.dev(), named.ino()) == (held.dev(), held.ino()) => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `path` under a shared `flock` (`None`: no such file): never
/// while [`open_locked`]'s holder changes it in place.
pub(super) fn read_locked(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", path, e)),
    };
    flock(&f, libc::LOCK_SH).map_err(|e| StoreError::io("lock", path, e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| StoreError::io("read", path, e))?;
    Ok(Some(bytes))
}

/// Writes `data` into `path` when it is an empty file (a record emptied
/// once done with, see `fs.rs`), in place, and makes it durable: no new
/// file is created and none freed. `Ok(false)` when `path` is missing, not
/// empty or cannot be changed in place; the caller then writes it
/// atomically.
pub(super) fn write_into_empty(path: &Path, data: &[u8], mode: u32) -> Result<bool, StoreError> {
    let Ok(Some(mut f)) = open_locked(path) else {
        return Ok(false);
    };
    let len = f
        .metadata()
        .map_err(|e| StoreError::io("read", path, e))?
        .len();
    if len != 0 {
        return Ok(false);
    }
    // Torn by a crash, the record does not parse and is ordered anew:
    // it is written before the order is finalized, so nothing is lost.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("chmod", path, e))?;
    f.write_all(data)
        .map_err(|e| StoreError::io("write", path, e))?;
    sync_new(&f, path)?;
    Ok(true)
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync dir.
pub(super) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = parent(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per write, also between threads of one process: two writers
    // of one file must not share (and remove) each other's temp file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    match write_new(&tmp, data, mode) {
        // The leftover of a killed process that had this pid.
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            write_new(&tmp, data, mode)?;
        }
        written => written?,
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        StoreError::io("rename", &tmp, e)
    })?;
    fsync_dir(dir)
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync", dir, e))
}
