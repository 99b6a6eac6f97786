//! The cleanup journal: a record of every challenge presented and not yet
//! cleaned up, so that a crash, `kill -9` or power loss never leaves a stray
//! DNS record (or challenge file) behind for good.
//!
//! An entry is written (atomically, fsynced) *before* `present` is called and
//! removed only after `cleanup` succeeded. Every later certsmith run on the
//! same state directory first looks for entries whose process is gone and
//! cleans them up with the same plugin and its non-secret options; secrets
//! come from the environment or config file at that time, as always.
//!
//! Entries of a process that is still running (another `certsmith issue` on
//! the same state directory) are left alone: a process is identified by its
//! pid *and* its start time, so a recycled pid is not mistaken for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use certsmith_plugin_api::{ChallengeRequest, Presented};
use serde::{Deserialize, Serialize};

/// One presented challenge awaiting cleanup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The entry's id (also its file name).
    pub id: String,
    /// When it was written (Unix seconds).
    pub created_unix: u64,
    /// The process that presented it.
    pub pid: u32,
    /// That process's start time (clock ticks since boot), to survive pid reuse.
    pub pid_start: u64,
    /// The solver code.
    pub solver: String,
    /// The solver's non-secret options, as given.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// The challenge.
    pub request: ChallengeRequest,
    /// What `present` returned, once it has.
    #[serde(default)]
    pub presented: Option<Presented>,
}

impl JournalEntry {
    /// A one-line description for reports: what was left and where.
    pub fn describe(&self) -> String {
        match &self.request.dns {
            Some(d) => format!(
                "TXT {} = {} (solver {}, left by pid {})",
                d.fqdn, d.value, self.solver, self.pid
            ),
            None => format!(
                "{} challenge for {} token {} (solver {}, left by pid {})",
                self.request.challenge_type,
                self.request.identifier,
                self.request.token,
                self.solver,
                self.pid
            ),
        }
    }
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The `journal/` directory of a state dir.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// This process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or 0 where unavailable.
fn start_time(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) is in parentheses and may contain spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn process_alive(pid: u32, recorded_start: u64) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    recorded_start == 0 || start_time(pid) == recorded_start
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Journal {
    /// Opens (creating, 0700) `<state_dir>/journal`.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("journal");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        Ok(Journal { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn write(&self, entry: &JournalEntry) -> Result<(), JournalError> {
        use std::io::Write;
        let path = self.path(&entry.id);
        let tmp = self.dir.join(format!(".{}.tmp", entry.id));
        let body = serde_json::to_vec_pretty(entry).unwrap_or_default();
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Records a challenge about to be presented; returns the entry.
    pub fn record(
        &self,
        solver: &str,
        options: BTreeMap<String, toml::Value>,
        request: &ChallengeRequest,
    ) -> Result<JournalEntry, JournalError> {
        let mut rnd = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut rnd);
        let id = format!(
            "{}-{}",
            now_unix(),
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let entry = JournalEntry {
            id,
            created_unix: now_unix(),
            pid: std::process::id(),
            pid_start: start_time(std::process::id()),
            solver: solver.to_owned(),
            options,
            request: request.clone(),
            presented: None,
        };
        self.write(&entry)?;
        Ok(entry)
    }

    /// Stores what `present` returned (the handle cleanup needs).
    pub fn set_presented(
        &self,
        entry: &mut JournalEntry,
        presented: &Presented,
    ) -> Result<(), JournalError> {
        entry.presented = Some(presented.clone());
        self.write(entry)
    }

    /// Removes an entry after a successful cleanup (and the temp file of a
    /// write a crash interrupted, if any).
    pub fn remove(&self, id: &str) -> Result<(), JournalError> {
        let _ = std::fs::remove_file(self.dir.join(format!(".{id}.tmp")));
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every entry, oldest first. Unreadable files are skipped with a warning.
    pub fn entries(&self) -> Vec<JournalEntry> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<JournalEntry> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let text = std::fs::read(&p).ok()?;
                match serde_json::from_slice::<JournalEntry>(&text) {
                    Ok(e) => Some(e),
                    Err(err) => {
                        log::warn!("ignoring unreadable journal entry {}: {err}", p.display());
                        None
                    }
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Entries left by processes that no longer run.
    pub fn stale(&self) -> Vec<JournalEntry> {
        self.entries()
            .into_iter()
            .filter(|e| !process_alive(e.pid, e.pid_start))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{ChallengeType, DnsTarget};

    fn req() -> ChallengeRequest {
        ChallengeRequest {
            challenge_type: ChallengeType::Dns01,
            identifier: "a.test".into(),
            wildcard: false,
            token: "tok".into(),
            key_authorization: "tok.x".into(),
            deadline_unix_ms: 1,
            dns: Some(DnsTarget {
                zone: "a.test".into(),
                name: "_acme-challenge".into(),
                fqdn: "_acme-challenge.a.test".into(),
                value: "v".into(),
                ttl: 60,
                primary_ns: None,
            }),
        }
    }

    #[test]
    fn record_update_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let mut e = j
            .record("rfc2136", BTreeMap::new(), &req())
            .expect("record");
        assert_eq!(j.entries().len(), 1);
        // Our own entries are not stale: this process runs.
        assert!(j.stale().is_empty());
        j.set_presented(
            &mut e,
            &Presented {
                handle: serde_json::json!({"id": 7}),
                ttl: None,
            },
        )
        .expect("update");
        let back = &j.entries()[0];
        assert_eq!(
            back.presented.as_ref().map(|p| p.handle.clone()),
            Some(serde_json::json!({"id": 7}))
        );
        assert!(back.describe().contains("TXT _acme-challenge.a.test = v"));
        j.remove(&e.id).expect("remove");
        j.remove(&e.id).expect("removing twice is fine");
        assert!(j.entries().is_empty());
    }

    #[test]
    fn entries_of_dead_processes_are_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let mut e = j.record("x", BTreeMap::new(), &req()).expect("record");
        // A pid that cannot exist, then our own pid with a wrong start time
        // (pid reuse).
        e.pid = u32::MAX - 1;
        j.write(&e).expect("write");
        assert_eq!(j.stale().len(), 1);
        e.pid = std::process::id();
        e.pid_start = 1;
        j.write(&e).expect("write");
        assert_eq!(j.stale().len(), 1);
    }
}

/// The outcome of cleaning one stale entry.
#[derive(Debug)]
pub struct StaleCleanup {
    /// The entry.
    pub entry: JournalEntry,
    /// `Ok` when removed, else why not (the entry is kept for next time).
    pub result: Result<(), String>,
}

/// Cleans every stale entry with its plugin and options; `solver_tables`
/// gives the config file's `[solvers.<code>]` tables (secrets come from the
/// environment or there). Entries that fail stay for the next run.
pub async fn clean_stale(
    journal: &Journal,
    host: &crate::plugin::PluginHost,
    solver_tables: Option<&toml::Table>,
) -> Vec<StaleCleanup> {
    let mut out = Vec::new();
    for entry in journal.stale() {
        let result = clean_one(journal, host, solver_tables, &entry).await;
        match &result {
            Ok(()) => log::warn!("removed a leftover challenge: {}", entry.describe()),
            Err(e) => log::warn!(
                "could not remove a leftover challenge ({}): {e}; it stays in {} for the next run",
                entry.describe(),
                journal.dir().display()
            ),
        }
        out.push(StaleCleanup { entry, result });
    }
    out
}

async fn clean_one(
    journal: &Journal,
    host: &crate::plugin::PluginHost,
    solver_tables: Option<&toml::Table>,
    entry: &JournalEntry,
) -> Result<(), String> {
    let plugin = host.get(&entry.solver).map_err(|e| e.to_string())?;
    let mut table = solver_tables
        .and_then(|t| t.get(&entry.solver))
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    for (k, v) in &entry.options {
        table.insert(k.clone(), v.clone());
    }
    let instance = plugin
        .instantiate(&crate::plugin::ConfigSources {
            cli: &[],
            file: Some(&table),
            env: None,
        })
        .map_err(|e| e.to_string())?;
    let mut req = entry.request.clone();
    req.deadline_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        + instance
            .manifest()
            .defaults
            .call_timeout_s
            .saturating_mul(1000);
    let presented = entry.presented.clone().unwrap_or_default();
    instance
        .cleanup(&req, &presented)
        .await
        .map_err(|e| e.to_string())?;
    journal.remove(&entry.id).map_err(|e| e.to_string())
}
