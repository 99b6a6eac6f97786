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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use certsmith_plugin_api::{ChallengeRequest, Presented};

use crate::store::{Store, StoreError};

pub use crate::store::JournalEntry;

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

/// The cleanup journal of a store.
#[derive(Clone, Debug)]
pub struct Journal {
    store: Store,
}

/// Fields 3 and following of `/proc/<pid>/stat` (after the command name,
/// which is in parentheses and may contain spaces); `None` when the process
/// does not exist or this is not Linux.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or 0 where unavailable.
pub(crate) fn start_time(pid: u32) -> u64 {
    stat_fields(pid)
        .and_then(|f| f.get(19).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// This process's start time ([`start_time`]), read once: every journal
/// entry and pending-order record it writes carries it. Kept with the pid
/// it was read for (a forked child reads its own), and only once read: a
/// read that failed (0) is tried again next time.
pub(crate) fn own_start_time() -> u64 {
    static START: std::sync::OnceLock<(u32, u64)> = std::sync::OnceLock::new();
    let pid = std::process::id();
    if let Some(&(read_for, start)) = START.get()
        && read_for == pid
    {
        return start;
    }
    let start = start_time(pid);
    if start != 0 {
        let _ = START.set((pid, start));
    }
    start
}

/// Whether the process that wrote an entry still runs: it exists, is not
/// a zombie (dead, only not yet reaped by its parent), and started when
/// the entry says (so a recycled pid is not mistaken for it).
pub(crate) fn process_alive(pid: u32, recorded_start: u64) -> bool {
    if pid == std::process::id() {
        // This process: running, so only its start time can differ.
        return recorded_start == 0 || recorded_start == own_start_time();
    }
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    let fields = stat_fields(pid);
    if fields
        .as_ref()
        .and_then(|f| f.first())
        .is_some_and(|state| state == "Z" || state == "X")
    {
        return false;
    }
    recorded_start == 0 || start_time(pid) == recorded_start
}

/// After how long an entry written on another machine is taken as
/// abandoned (its process cannot be checked from here).
pub const FOREIGN_ENTRY_HORIZON: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// This machine's boot (`/proc/sys/kernel/random/boot_id`), empty where
/// unavailable.
pub(crate) fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Whether `entry` was left by a process that is gone: one of this
/// machine (and boot) that no longer runs, or one of another machine that
/// is older than [`FOREIGN_ENTRY_HORIZON`].
fn abandoned(entry: &JournalEntry, here: &str, now: u64) -> bool {
    if !entry.boot_id.is_empty() && entry.boot_id != here {
        return now.saturating_sub(entry.created_unix) > FOREIGN_ENTRY_HORIZON.as_secs();
    }
    !process_alive(entry.pid, entry.pid_start)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Journal {
    /// The journal kept in `store`.
    pub fn new(store: Store) -> Journal {
        Journal { store }
    }

    /// The store it is kept in.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Where the entries are, for messages.
    pub fn location(&self) -> String {
        self.store.journal_location()
    }

    fn write(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        self.store.put_journal_entry(entry)
    }

    /// Records a challenge about to be presented; returns the entry.
    pub fn record(
        &self,
        solver: &str,
        options: BTreeMap<String, toml::Value>,
        request: &ChallengeRequest,
    ) -> Result<JournalEntry, StoreError> {
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
            pid_start: own_start_time(),
            boot_id: boot_id().to_owned(),
            solver: solver.to_owned(),
            options,
            request: request.clone(),
            presented: None,
        };
        self.write(&entry)?;
        Ok(entry)
    }

    /// Stores what `present` returned (the handle cleanup needs).
    ///
    /// A `present` that returned nothing (the default: no handle, no TTL,
    /// as the standalone solver does) leaves the entry as recorded: a later
    /// cleanup takes an entry without one as the default
    /// ([`clean_stale`]), so writing it would change nothing it reads and
    /// cost an atomic write per challenge (two syncs, a file created and
    /// one freed).
    pub fn set_presented(
        &self,
        entry: &mut JournalEntry,
        presented: &Presented,
    ) -> Result<(), StoreError> {
        if entry.presented.is_none() && *presented == Presented::default() {
            return Ok(());
        }
        entry.presented = Some(presented.clone());
        self.write(entry)
    }

    /// Removes an entry after a successful cleanup.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.store.remove_journal_entry(id)
    }

    /// Runs `f` on this journal on a blocking thread, for async code (the
    /// store's methods do I/O: docs/design.md §4.2); the error as text.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let j = self.clone();
        tokio::task::spawn_blocking(move || f(&j))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Every entry, oldest first. Unreadable entries are skipped with a
    /// warning, and so is an unreadable journal.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.store.journal_entries().unwrap_or_else(|e| {
            log::warn!("cannot read the cleanup journal: {e}");
            Vec::new()
        })
    }

    /// Entries left by processes that no longer run. An entry of another
    /// machine (a shared store) cannot be checked that way: it is taken as
    /// abandoned once it is older than [`FOREIGN_ENTRY_HORIZON`], long
    /// after any challenge of a live process has been validated.
    pub fn stale(&self) -> Vec<JournalEntry> {
        let now = now_unix();
        self.entries()
            .into_iter()
            .filter(|e| abandoned(e, boot_id(), now))
            .collect()
    }

    /// [`Self::stale`] on a blocking thread, for async code (none, with a
    /// warning, if that thread failed).
    pub(crate) async fn stale_async(&self) -> Vec<JournalEntry> {
        self.blocking(|j| Ok(j.stale())).await.unwrap_or_else(|e| {
            log::warn!("cannot read the cleanup journal: {e}");
            Vec::new()
        })
    }
}

/// The entry of a challenge in flight, shared by the writes made to it on
/// blocking threads, which may run in any order when the order is
/// cancelled or dropped while `present` returns (what it returned, and the
/// removal by the cleanup that follows): once removed (`None`), it is not
/// written again.
#[derive(Clone, Debug)]
pub(crate) struct LiveEntry(Arc<Mutex<Option<JournalEntry>>>);

impl LiveEntry {
    pub(crate) fn new(entry: JournalEntry) -> Self {
        LiveEntry(Arc::new(Mutex::new(Some(entry))))
    }

    fn lock(&self) -> MutexGuard<'_, Option<JournalEntry>> {
        // An entry stays valid through a panic elsewhere.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Journal {
    /// [`Self::set_presented`] for a live entry; nothing once it was
    /// removed. Blocking.
    pub(crate) fn set_presented_live(
        &self,
        live: &LiveEntry,
        presented: &Presented,
    ) -> Result<(), StoreError> {
        match live.lock().as_mut() {
            Some(entry) => self.set_presented(entry, presented),
            None => Ok(()),
        }
    }

    /// Removes a live entry; later writes to it do nothing. Blocking.
    pub(crate) fn remove_live(&self, live: &LiveEntry) -> Result<(), StoreError> {
        match live.lock().take() {
            Some(entry) => self.remove(&entry.id),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_another_machine_are_left_alone_until_old() {
        let entry = |boot: &str, created: u64, pid: u32| JournalEntry {
            id: "x".into(),
            created_unix: created,
            pid,
            pid_start: 0,
            boot_id: boot.into(),
            solver: "s".into(),
            options: BTreeMap::new(),
            request: req(),
            presented: None,
        };
        let now = 1_000_000;
        // Another machine's, recent, with a pid that is dead here: kept.
        assert!(!abandoned(
            &entry("other-boot", now - 60, u32::MAX - 1),
            "this-boot",
            now
        ));
        // ... and once past the horizon: abandoned.
        assert!(abandoned(
            &entry("other-boot", now - 3 * 3600, 1),
            "this-boot",
            now
        ));
        // This machine's: by its process (pid u32::MAX - 1 does not run).
        assert!(abandoned(
            &entry("this-boot", now, u32::MAX - 1),
            "this-boot",
            now
        ));
        assert!(!abandoned(
            &entry("this-boot", now, std::process::id()),
            "this-boot",
            now
        ));
        // Written before boot ids were recorded: this machine's.
        assert!(abandoned(&entry("", now, u32::MAX - 1), "this-boot", now));
    }
    use certsmith_plugin_api::{ChallengeType, DnsTarget};

    fn req() -> ChallengeRequest {
        ChallengeRequest::new(ChallengeType::Dns01, "a.test", "tok", "tok.x", 1).with_dns(Some(
            DnsTarget::new(
                "a.test",
                "_acme-challenge",
                "_acme-challenge.a.test",
                "v",
                60,
            ),
        ))
    }

    #[test]
    fn a_live_entry_once_removed_is_not_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(Store::open(dir.path()).expect("open"));
        let handle = Presented::new(serde_json::json!({"id": 7}));
        // Written while live: the handle reaches the journal.
        let live = LiveEntry::new(j.record("s", BTreeMap::new(), &req()).expect("record"));
        j.set_presented_live(&live, &handle).expect("write");
        assert_eq!(j.entries()[0].presented.as_ref(), Some(&handle));
        j.remove_live(&live).expect("remove");
        assert!(j.entries().is_empty());
        // A write that runs after the removal (an order dropped while both
        // were on blocking threads) leaves the entry removed.
        j.set_presented_live(&live, &handle).expect("late write");
        assert!(j.entries().is_empty());
        j.remove_live(&live).expect("removed twice");
    }

    #[test]
    fn record_update_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(Store::open(dir.path()).expect("open"));
        let mut e = j
            .record("rfc2136", BTreeMap::new(), &req())
            .expect("record");
        assert_eq!(j.entries().len(), 1);
        // Our own entries are not stale: this process runs.
        assert!(j.stale().is_empty());
        j.set_presented(&mut e, &Presented::new(serde_json::json!({"id": 7})))
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
    fn a_present_that_returned_nothing_leaves_the_entry_as_recorded() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(Store::open(dir.path()).expect("open"));
        let mut e = j
            .record("standalone", BTreeMap::new(), &req())
            .expect("record");
        let path = dir.path().join("journal").join(format!("{}.json", e.id));
        let ino = |p: &std::path::Path| std::fs::metadata(p).expect("entry").ino();
        let (before, bytes) = (ino(&path), std::fs::read(&path).expect("read"));

        j.set_presented(&mut e, &Presented::default())
            .expect("update");
        // Not written again: the same file, the same bytes.
        assert_eq!(ino(&path), before);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        assert_eq!(e.presented, None);
        // What a later cleanup hands the plugin is the same either way.
        let back = j.entries().remove(0);
        assert_eq!(
            back.presented.clone().unwrap_or_default(),
            Presented::default()
        );

        // A handle is written (atomically: a new file).
        j.set_presented(&mut e, &Presented::new(serde_json::json!({"id": 7})))
            .expect("update");
        assert_ne!(ino(&path), before);
        // And once one was stored, even a default one replaces it.
        let with_handle = ino(&path);
        j.set_presented(&mut e, &Presented::default())
            .expect("update");
        assert_ne!(ino(&path), with_handle);
        assert_eq!(
            j.entries()[0].presented,
            Some(Presented::default()),
            "a stored handle is overwritten, not kept"
        );
    }

    #[test]
    fn entries_of_dead_processes_are_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(Store::open(dir.path()).expect("open"));
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

    #[test]
    fn this_process_is_alive_at_its_own_start_time_only() {
        let (pid, start) = (std::process::id(), own_start_time());
        assert_ne!(start, 0, "read from /proc");
        assert_eq!(start, start_time(pid), "the cached start is the real one");
        assert!(process_alive(pid, 0));
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1), "a recycled pid");
    }

    #[test]
    fn entries_of_zombies_are_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(Store::open(dir.path()).expect("open"));
        let mut e = j.record("x", BTreeMap::new(), &req()).expect("record");
        // A child that exits and is not reaped (yet): a zombie, killed
        // while its parent was busy.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        e.pid = child.id();
        e.pid_start = start_time(child.id());
        j.write(&e).expect("write");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stat_fields(child.id()).and_then(|f| f.first().cloned()) != Some("Z".to_owned()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(j.stale().len(), 1, "a zombie is dead");
        child.wait().expect("reap");
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

/// Where the options of a stale entry's solver come from, besides what the
/// entry recorded: the config file's `[solvers.<code>]` tables and this
/// run's own solver options (`--solver-opt`) per code — secrets are never
/// recorded, so they come from these or the environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct CleanupSources<'a> {
    /// `[solvers.<code>]` tables.
    pub solver_tables: Option<&'a toml::Table>,
    /// This run's options per solver code.
    pub solver_opts: Option<&'a BTreeMap<String, Vec<(String, String)>>>,
}

/// Cleans every stale entry with its plugin and options. Entries that fail
/// stay for the next run. The caller reports each result (the agent as
/// progress); it is logged here at debug level only, so that it is said once.
pub async fn clean_stale(
    journal: &Journal,
    host: &crate::plugin::PluginHost,
    sources: CleanupSources<'_>,
) -> Vec<StaleCleanup> {
    let mut out = Vec::new();
    for entry in journal.stale_async().await {
        let result = clean_one(journal, host, sources, &entry).await;
        match &result {
            Ok(()) => log::debug!("removed a leftover challenge: {}", entry.describe()),
            Err(e) => log::debug!(
                "could not remove a leftover challenge ({}): {e}; it stays in {} for the next run",
                entry.describe(),
                journal.location()
            ),
        }
        out.push(StaleCleanup { entry, result });
    }
    out
}

async fn clean_one(
    journal: &Journal,
    host: &crate::plugin::PluginHost,
    sources: CleanupSources<'_>,
    entry: &JournalEntry,
) -> Result<(), String> {
    let plugin = host.get(&entry.solver).map_err(|e| e.to_string())?;
    let mut table = sources
        .solver_tables
        .and_then(|t| t.get(&entry.solver))
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    for (k, v) in &entry.options {
        table.insert(k.clone(), v.clone());
    }
    // This run's options fill in what the entry did not record (secrets);
    // what it recorded (where the record went) wins.
    let cli: Vec<(String, String)> = sources
        .solver_opts
        .and_then(|o| o.get(&entry.solver))
        .into_iter()
        .flatten()
        .filter(|(k, _)| !entry.options.contains_key(k))
        .cloned()
        .collect();
    let instance = plugin
        .instantiate(&crate::plugin::ConfigSources {
            cli: &cli,
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
    let lease = crate::engine::namelock::lock(&journal.store, &instance, &req).await;
    let cleaned = instance.cleanup(&req, &presented).await;
    drop(lease);
    cleaned.map_err(|e| e.to_string())?;
    let id = entry.id.clone();
    journal.blocking(move |j| j.remove(&id)).await
}
