//! The cleanup list of an order: what was presented and must be removed.

use std::sync::Mutex;

use certsmith_plugin_api::{ChallengeRequest, Presented};

use crate::error::IssueError;
use crate::journal::{Journal, LiveEntry};
use crate::plugin::SolverInstance;
use crate::progress::{Progress, ProgressEvent};

use super::challenge::call_deadline;

/// A challenge that may have been presented and must be cleaned up.
pub(super) struct CleanupEntry {
    /// The solver that presented it (one certificate may use several).
    solver: SolverInstance,
    request: ChallengeRequest,
    domain: String,
    presented: Presented,
    /// The journal entry recording it, removed once cleaned up.
    journal_entry: Option<LiveEntry>,
}

/// The challenges of one order that need `cleanup`. Entries are added before
/// `present` is called (a cancelled `present` may still have created
/// something; solvers treat cleanup of nothing as success).
pub(super) struct CleanupList {
    name: String,
    progress: Progress,
    journal: Option<Journal>,
    entries: Mutex<Vec<Option<CleanupEntry>>>,
}

impl CleanupList {
    pub(super) fn new(name: String, progress: Progress, journal: Option<Journal>) -> Self {
        CleanupList {
            name,
            progress,
            journal,
            entries: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<CleanupEntry>>> {
        // A poisoned list still holds valid entries; cleanup must go on.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a challenge about to be presented and writes its journal entry
    /// (docs/design.md §3.5: before `present`, so a crash during or after it
    /// leaves a trace the next run cleans up); returns its slot. A solver
    /// whose challenges live in this process alone (`in_process`) gets no
    /// entry: a crash ends them with it. The entry is written on a blocking
    /// thread, like every store write of async code (docs/design.md §4.2).
    /// An order cancelled or dropped while it is written leaves it as a
    /// crash would: the next process's sweep cleans it up (a cleanup of
    /// nothing succeeds).
    pub(super) async fn register(
        &self,
        solver: &SolverInstance,
        request: ChallengeRequest,
        domain: String,
    ) -> Result<usize, IssueError> {
        let journal_entry = match &self.journal {
            Some(j) if !solver.manifest().in_process => {
                let (code, options, req) = (
                    solver.code().to_owned(),
                    solver.public_options(),
                    request.clone(),
                );
                let recorded = j
                    .blocking(move |j| j.record(&code, options, &req))
                    .await
                    .map_err(|e| {
                        IssueError::Internal(format!("cannot write the cleanup journal: {e}"))
                    })?;
                Some(LiveEntry::new(recorded))
            }
            _ => None,
        };
        let mut entries = self.lock();
        entries.push(Some(CleanupEntry {
            solver: solver.clone(),
            request,
            domain,
            presented: Presented::default(),
            journal_entry,
        }));
        Ok(entries.len() - 1)
    }

    /// Records what `present` returned for a slot: in the list at once (a
    /// cleanup from here on gets it), then in the journal, on a blocking
    /// thread, as a cleanup after a crash may need the handle. If the
    /// order is cancelled or dropped meanwhile and its cleanup removes the
    /// entry first, nothing is written ([`LiveEntry`]).
    pub(super) async fn presented(&self, slot: usize, presented: Presented) {
        let live = {
            let mut entries = self.lock();
            let Some(Some(entry)) = entries.get_mut(slot) else {
                return;
            };
            entry.presented = presented.clone();
            entry.journal_entry.clone()
        };
        let (Some(j), Some(live)) = (self.journal.as_ref(), live) else {
            return;
        };
        // A `present` that returned nothing leaves the entry as recorded
        // (`Journal::set_presented`): no write, and no hand-off for one.
        if presented == Presented::default() {
            return;
        }
        if let Err(e) = j
            .blocking(move |j| j.set_presented_live(&live, &presented))
            .await
        {
            log::warn!("cannot update the cleanup journal: {e}");
        }
    }

    pub(super) fn take(&self) -> Vec<CleanupEntry> {
        self.lock().drain(..).flatten().collect()
    }

    /// Cleans up every entry, one at a time (docs/design.md §3.7). Failures are
    /// reported as progress events and logged; they do not fail the order.
    pub(super) async fn run(&self) {
        let entries = self.take();
        clean_entries(&self.name, &self.progress, self.journal.as_ref(), entries).await;
    }
}

pub(super) async fn clean_entries(
    name: &str,
    progress: &Progress,
    journal: Option<&Journal>,
    entries: Vec<CleanupEntry>,
) {
    for mut entry in entries {
        let solver = entry.solver.clone();
        // A fresh deadline: the one of `present` may have passed while the
        // CA validated.
        entry.request.deadline_unix_ms = call_deadline(solver.manifest());
        let challenge = entry.request.challenge_type;
        let lease = match journal {
            Some(j) => super::namelock::lock(j.store(), &solver, &entry.request).await,
            None => None,
        };
        let outcome = solver.cleanup(&entry.request, &entry.presented).await;
        drop(lease);
        match outcome {
            Ok(()) => {
                if let (Some(j), Some(live)) = (journal, entry.journal_entry.take())
                    && let Err(e) = j.blocking(move |j| j.remove_live(&live)).await
                {
                    log::warn!("cannot update the cleanup journal: {e}");
                }
                progress.emit(ProgressEvent::CleanedUp {
                    name: name.to_owned(),
                    domain: entry.domain,
                    challenge,
                })
            }
            Err(e) => {
                let error = solver.redact(&e.to_string());
                log::warn!(
                    "solver '{}' could not clean up the {challenge} challenge for '{}': {error}",
                    solver.code(),
                    entry.domain
                );
                progress.emit(ProgressEvent::CleanupFailed {
                    name: name.to_owned(),
                    domain: entry.domain,
                    challenge,
                    error,
                });
            }
        }
    }
}

impl Drop for CleanupList {
    fn drop(&mut self) {
        let entries = self.take();
        if entries.is_empty() {
            return;
        }
        // The order's future was dropped without running the list: hand the
        // entries to a task, if a runtime is still there to run it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let (name, progress, journal) = (
                    self.name.clone(),
                    self.progress.clone(),
                    self.journal.clone(),
                );
                handle.spawn(async move {
                    clean_entries(&name, &progress, journal.as_ref(), entries).await
                });
            }
            Err(_) => log::warn!(
                "{} presented challenge(s) for '{}' could not be cleaned up: no runtime",
                entries.len(),
                self.name
            ),
        }
    }
}
