//! certsmith's `webroot` solver: answers http-01 challenges by writing files
//! into the document root of a web server that is already running.
//!
//! It exists for hosts whose port 80 belongs to a web server that must keep
//! running: the server already serves `<root>/.well-known/acme-challenge/`,
//! so putting the key authorization there is all it takes. The care is in
//! leaving the document root as it was:
//!
//! * the token becomes a file name, so anything but the base64url alphabet
//!   is refused (no `../` path traversal, no hidden files);
//! * the file appears atomically (temp file + rename) with mode 0644 set
//!   explicitly, so a strict umask cannot hide it from the web server's user;
//! * only missing directories are created (mode 0755), and cleanup removes
//!   only those, deepest first, and only once empty, so a pre-existing
//!   `.well-known` (with `security.txt`, say) survives, and so does a
//!   directory another concurrent challenge still uses. Which directories
//!   were created is remembered in memory *and* in the returned handle,
//!   which the host journals, so a cleanup after a crash knows too.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, PluginError, Presented, Solver, async_trait, log,
};
use serde::Deserialize;

/// Mode of the challenge file: readable by the web server's user.
const FILE_MODE: u32 = 0o644;
/// Mode of directories we create: traversable by the web server's user.
const DIR_MODE: u32 = 0o755;

/// The configuration (see `plugin.toml`).
#[derive(Clone, Debug, Deserialize)]
pub struct WebrootConfig {
    /// The web server's document root for the domains being validated.
    pub path: PathBuf,
}

/// The solver.
#[derive(Debug)]
pub struct Webroot(Arc<Inner>);

/// The solver's state, shared with the blocking tasks that do its work.
#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Directories this instance created and has not removed yet, shared by
    /// all concurrent calls. The lock also serializes the file-system work,
    /// so a cleanup cannot remove a directory between a concurrent
    /// present's "it exists" and its write.
    created: Mutex<BTreeSet<PathBuf>>,
}

/// Distinguishes temp files of concurrent writes within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Inner {
    /// `<root>/.well-known` and `<root>/.well-known/acme-challenge`, parent
    /// first: the only directories this solver ever creates or removes.
    fn dirs(&self) -> [PathBuf; 2] {
        let well_known = self.root.join(".well-known");
        let challenge = well_known.join("acme-challenge");
        [well_known, challenge]
    }

    fn check_root(&self) -> Result<(), PluginError> {
        check_root(&self.root)
    }

    fn present_blocking(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<Presented, PluginError> {
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        self.check_root()?;
        let dirs = self.dirs();
        for dir in &dirs {
            if ensure_dir(dir)? {
                created.insert(dir.clone());
            }
        }
        let [_, challenge_dir] = &dirs;
        let file = challenge_dir.join(token);
        write_atomically(challenge_dir, &file, key_authorization.as_bytes())?;
        log::debug!("webroot: wrote {}", file.display());
        let created_dirs: Vec<String> = dirs
            .iter()
            .filter(|d| created.contains(*d))
            .map(|d| d.display().to_string())
            .collect();
        Ok(Presented::new(serde_json::json!({
            "file": file.display().to_string(),
            "created_dirs": created_dirs,
        })))
    }

    fn cleanup_blocking(&self, token: &str, presented: &Presented) -> Result<(), PluginError> {
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        let dirs = self.dirs();
        let [_, challenge_dir] = &dirs;
        // The path comes from the token and the configuration, never from the
        // handle: the handle is data, and it must not be able to point at an
        // arbitrary file.
        let file = challenge_dir.join(token);
        match fs::remove_file(&file) {
            Ok(()) => log::debug!("webroot: removed {}", file.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &file, &e)),
        }
        // Ours: what this instance created, plus what the handle says an
        // earlier instance (e.g. before a crash) created; but only ever the
        // two known directories. Deepest first.
        let from_handle: BTreeSet<PathBuf> = presented
            .handle
            .get("created_dirs")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .map(PathBuf::from)
            .collect();
        for dir in dirs.iter().rev() {
            if !created.contains(dir) && !from_handle.contains(dir) {
                continue;
            }
            match fs::remove_dir(dir) {
                Ok(()) => {
                    log::debug!("webroot: removed {}", dir.display());
                    created.remove(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    created.remove(dir);
                }
                // Another challenge's file, or content that is not ours: the
                // last cleanup removes it, or it stays.
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
                Err(e) => {
                    log::warn!("webroot: could not remove {}: {e}", dir.display());
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Solver for Webroot {
    type Config = WebrootConfig;

    fn new(config: WebrootConfig) -> Result<Self, PluginError> {
        check_root(&config.path)?;
        Ok(Webroot(Arc::new(Inner {
            root: config.path,
            created: Mutex::new(BTreeSet::new()),
        })))
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        if req.challenge_type != ChallengeType::Http01 {
            return Err(PluginError::config(format!(
                "the webroot solver answers http-01 only, not {}",
                req.challenge_type
            )));
        }
        check_token(&req.token)?;
        let this = self.0.clone();
        let token = req.token.clone();
        let key_authorization = req.key_authorization.clone();
        blocking(move || this.present_blocking(&token, &key_authorization)).await
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        presented: &Presented,
    ) -> Result<(), PluginError> {
        if req.challenge_type != ChallengeType::Http01 || check_token(&req.token).is_err() {
            // Never presented (present refuses both), so nothing to remove.
            return Ok(());
        }
        let this = self.0.clone();
        let token = req.token.clone();
        let presented = presented.clone();
        blocking(move || this.cleanup_blocking(&token, &presented)).await
    }
}

/// Runs file-system work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(PluginError::internal(format!("webroot: task failed: {e}"))))
}

fn check_root(root: &Path) -> Result<(), PluginError> {
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(PluginError::config(format!(
            "webroot path {} is not a directory; set --solver-opt path=<the document \
             root your web server serves for these domains>",
            root.display()
        ))),
        Err(e) => Err(PluginError::config(format!(
            "webroot path {} is unusable ({e}); set --solver-opt path=<the document \
             root your web server serves for these domains>",
            root.display()
        ))),
    }
}

/// Refuses tokens that are not base64url (RFC 8555 §8.3): the token becomes
/// a file name, and `..`, `/` or a leading `.` must never reach the path.
fn check_token(token: &str) -> Result<(), PluginError> {
    let ok = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PluginError::internal(format!(
            "refusing challenge token {token:?}: not base64url, so it cannot be a \
             file name under .well-known/acme-challenge"
        )))
    }
}

/// Creates `dir` if missing (mode 0755 regardless of umask). Returns whether
/// it was created by this call.
fn ensure_dir(dir: &Path) -> Result<bool, PluginError> {
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            // The umask applied to mkdir; set the mode it must have.
            fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
                .map_err(|e| io_error("set the mode of", dir, &e))?;
            log::debug!("webroot: created {}", dir.display());
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
                Ok(false)
            } else {
                Err(PluginError::config(format!(
                    "{} exists but is not a directory; remove or rename it so the \
                     challenge files can go there",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(io_error("create", dir, &e)),
    }
}

/// Writes `content` to `file` so that readers see either no file or the whole
/// content: a temp file in the same directory, renamed over `file`.
fn write_atomically(dir: &Path, file: &Path, content: &[u8]) -> Result<(), PluginError> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp)?;
        // The umask applied to open; set the mode it must have.
        f.set_permissions(Permissions::from_mode(FILE_MODE))?;
        f.write_all(content)?;
        f.flush()?;
        drop(f);
        fs::rename(&temp, file)
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_error("write", file, &e)
    })
}

fn io_error(action: &str, path: &Path, e: &io::Error) -> PluginError {
    let message = format!("webroot: cannot {action} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => PluginError::config(
            format!("{message}; run certsmith as a user that may write to the document root"),
        ),
        _ => PluginError::internal(message),
    }
}

certsmith_plugin_api::export_solver!(Webroot, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_alphabet() {
        assert!(check_token("aZ09-_").is_ok());
        for bad in [
            "", "..", "../x", "a/b", ".hidden", "a b", "a\0b", "é", "a.b",
        ] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
    }
}
