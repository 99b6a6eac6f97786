//! The agent: the one place that turns certificate requests into outcomes.
//!
//! Why this module exists: `certsmith issue` (a batch of one), `run` (the
//! config file), `renew` (the stored lineages) and a long-running daemon
//! all do the same things once they know which certificates they look
//! at: plan what is due and why ([`Agent::plan_configured`],
//! [`Agent::plan_stored`]), hold the store's run lease so overlapping
//! timers never order twice ([`Agent::lease_run`]), clean up what a dead
//! run left presented, execute the orders with bounded concurrency, record
//! the renewal schedule and settings, and run deploy hooks
//! ([`Agent::execute`]). A front end parses its input, builds an [`Agent`],
//! renders the [`ProgressEvent`]s it emits and the [`Job`]s it returns, and
//! maps their [`JobError`]s to whatever it reports (the CLI: exit codes).

mod execute;
mod job;
mod plan;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use job::{Job, JobError, Outcome, Plan, Settings};
pub use plan::{RequestMode, WantedCert, lineage_hook_timeout, reason_words};

use crate::dns::DnsOptions;
use crate::engine::{CancelToken, DEFAULT_CONCURRENCY, DEFAULT_MAX_NAMES};
use crate::error::IssueError;
use crate::journal::{self, Journal};
use crate::plugin::{ConfigSources, PluginHost, SolverInstance};
use crate::progress::{Progress, ProgressEvent};
use crate::store::{Lease, Store, StoreError};

/// A certificate lease held by this process ([`Agent::claim_cert`]),
/// renewed in the background until dropped, then released.
#[derive(Debug)]
pub struct HeldCert {
    /// The only strong reference: dropping the `HeldCert` releases the lease
    /// at once (the renewer holds a weak one).
    lease: Arc<Lease>,
    renewer: tokio::task::JoinHandle<()>,
}

impl HeldCert {
    fn hold(lease: Lease, ttl: Duration) -> HeldCert {
        let lease = Arc::new(lease);
        // Weak: an aborted task is dropped only when the runtime next polls
        // it, and a process that exits right after the drop would never
        // release a lease the task kept alive; the next claimant would wait
        // for it to expire.
        let held = Arc::downgrade(&lease);
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let Some(l) = held.upgrade() else { return };
                match tokio::task::spawn_blocking(move || l.renew()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        log::warn!("{e}");
                        return;
                    }
                    Err(e) => log::warn!("the lease renewal failed: {e}"),
                }
            }
        });
        HeldCert { lease, renewer }
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

impl Drop for HeldCert {
    fn drop(&mut self) {
        // The lease itself is released when `self.lease`, its last strong
        // reference (unless a renewal is running this instant), drops.
        self.renewer.abort();
    }
}

/// How long `issue` holds its claim on a certificate between renewals.
pub const CERT_LEASE_TTL: Duration = Duration::from_secs(120);

/// How long a batch waits for another batch's run lease.
pub const RUN_LEASE_WAIT: Duration = Duration::from_secs(30 * 60);

/// What an [`Agent`] is built from.
#[derive(Debug)]
#[non_exhaustive]
pub struct AgentOptions {
    /// The store.
    pub store: Store,
    /// The solver plugins found.
    pub host: Arc<PluginHost>,
    /// The config file's `[solvers.<code>]` tables (where secrets may be),
    /// used for the cleanup of leftovers.
    pub solver_tables: toml::Table,
    /// `--solver-opt` style options per solver code, which win over the
    /// tables and the environment (for `issue`).
    pub solver_opts: BTreeMap<String, Vec<(String, String)>>,
    /// How dns-01 records are located and checked.
    pub dns: DnsOptions,
    /// At most this many orders at once.
    pub concurrency: usize,
    /// The most names one certificate may have (the CA's limit).
    pub max_names: usize,
    /// Cancels the batch (Ctrl-C, SIGTERM).
    pub cancel: CancelToken,
    /// Where progress goes.
    pub progress: Progress,
    /// A dry run: planning writes nothing to the store (no renewal
    /// schedule), and no deploy hook runs. Orders still go wherever the
    /// front end sends them (a staging CA, a temporary store).
    pub dry_run: bool,
}

impl AgentOptions {
    /// Options with the defaults: no solver tables or options, default DNS
    /// handling and concurrency, a fresh cancel token, no progress.
    pub fn new(store: Store, host: Arc<PluginHost>) -> AgentOptions {
        AgentOptions {
            store,
            host,
            solver_tables: toml::Table::new(),
            solver_opts: BTreeMap::new(),
            dns: DnsOptions::default(),
            concurrency: DEFAULT_CONCURRENCY,
            max_names: DEFAULT_MAX_NAMES,
            cancel: CancelToken::new(),
            progress: Progress::none(),
            dry_run: false,
        }
    }
}

/// Plans and executes batches of certificates on one store.
#[derive(Debug)]
pub struct Agent {
    store: Store,
    journal: Journal,
    host: Arc<PluginHost>,
    solver_tables: toml::Table,
    solver_opts: BTreeMap<String, Vec<(String, String)>>,
    dns: DnsOptions,
    concurrency: usize,
    max_names: usize,
    cancel: CancelToken,
    progress: Progress,
    dry_run: bool,
    /// Solver instances shared between certificates with the same solver
    /// and options: one standalone listener set, one API client and rate
    /// limiter per DNS provider, however many certificates use it.
    solvers: Mutex<BTreeMap<String, SolverInstance>>,
}

impl Agent {
    /// An agent on `options.store`.
    pub fn new(options: AgentOptions) -> Agent {
        Agent {
            journal: Journal::new(options.store.clone()),
            store: options.store,
            host: options.host,
            solver_tables: options.solver_tables,
            solver_opts: options.solver_opts,
            dns: options.dns,
            concurrency: options.concurrency.max(1),
            max_names: options.max_names,
            cancel: options.cancel,
            progress: options.progress,
            dry_run: options.dry_run,
            solvers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// An agent like this one (plugins, solver options, DNS, concurrency,
    /// cancel token, progress) working on `store` as a dry run: what a
    /// dry run orders goes into a throwaway store, never this one's, and
    /// no deploy hook runs.
    pub fn trial(&self, store: Store) -> Agent {
        Agent {
            journal: Journal::new(store.clone()),
            store,
            host: self.host.clone(),
            solver_tables: self.solver_tables.clone(),
            solver_opts: self.solver_opts.clone(),
            dns: self.dns.clone(),
            concurrency: self.concurrency,
            max_names: self.max_names,
            cancel: self.cancel.clone(),
            progress: self.progress.clone(),
            dry_run: true,
            solvers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The token that cancels this agent's work.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Takes the store's run lease for a whole batch: two overlapping runs
    /// (a timer and an operator, two cron lines) would otherwise both order
    /// a due certificate. The second waits (up to [`RUN_LEASE_WAIT`],
    /// reporting [`ProgressEvent::WaitingForRun`]), then finds nothing to do.
    pub async fn lease_run(&self) -> Result<Lease, StoreError> {
        let store = self.store.clone();
        let first = tokio::task::spawn_blocking(move || store.lease("run", Duration::ZERO)).await;
        match first {
            Ok(Ok(lease)) => return Ok(lease),
            Ok(Err(StoreError::Locked { path, .. })) => {
                self.progress.emit(ProgressEvent::WaitingForRun {
                    holder: path.display().to_string(),
                });
            }
            Ok(Err(e)) => return Err(e),
            // The blocking task panicked: try once more, waiting.
            Err(e) => log::warn!("the lease task failed: {e}"),
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.lease("run", RUN_LEASE_WAIT))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io {
                    action: "lock",
                    path: "run".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// Claims the work on certificate `name` ([`crate::store::Storage::cert_lease`]),
    /// waiting up to `wait` for another worker (a daemon, another CI
    /// runner) to finish with it, reporting [`ProgressEvent::WaitingForRun`]
    /// once. The lease is renewed every third of `ttl` until the
    /// [`HeldCert`] is dropped; plan again once it is held (the other
    /// worker may have just stored the certificate) and fence the job with
    /// it ([`Job::fence_with`]).
    pub async fn claim_cert(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<HeldCert, StoreError> {
        let start = std::time::Instant::now();
        let mut reported = false;
        loop {
            let (store, n) = (self.store.clone(), name.to_owned());
            let claimed = tokio::task::spawn_blocking(move || store.cert_lease(&n, ttl))
                .await
                .map_err(|e| StoreError::Io {
                    action: "lock",
                    path: name.into(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            if let Some(lease) = claimed {
                return Ok(HeldCert::hold(lease, ttl));
            }
            if start.elapsed() >= wait || self.cancel.is_cancelled() {
                return Err(StoreError::Locked {
                    path: format!("{} (certificate '{name}')", self.store.location()).into(),
                    waited: start.elapsed(),
                });
            }
            if !reported {
                reported = true;
                self.progress.emit(ProgressEvent::WaitingForRun {
                    holder: format!(
                        "another worker's claim on '{name}' in {}",
                        self.store.location()
                    ),
                });
            }
            tokio::select! {
                _ = self.cancel.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The instance of solver `code` configured with `table` (plus this
    /// agent's options for it and the environment), created on first use.
    pub fn solver(&self, code: &str, table: &toml::Table) -> Result<SolverInstance, IssueError> {
        self.solver_named(code, code, table)
    }

    /// The instance of solver `name` (a `[solvers.<name>]` instance of
    /// plugin `code`, or the plugin itself when `name` is its code)
    /// configured with `table`, plus this agent's options for `name` and
    /// the environment; created on first use.
    pub fn solver_named(
        &self,
        name: &str,
        code: &str,
        table: &toml::Table,
    ) -> Result<SolverInstance, IssueError> {
        let key = format!("{name}\n{code}\n{table}");
        let mut made = self
            .solvers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = made.get(&key) {
            return Ok(s.clone());
        }
        let plugin = self.host.get(code)?;
        let cli = self.solver_opts.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let solver = plugin.instantiate(&ConfigSources {
            cli,
            file: Some(table),
            ..Default::default()
        })?;
        made.insert(key, solver.clone());
        Ok(solver)
    }

    /// Cleans up what an earlier run that died left presented, reporting
    /// each removal (or why not) as progress.
    pub async fn sweep_journal(&self) {
        let stale = self.journal.stale_async().await;
        if stale.is_empty() {
            return;
        }
        self.progress
            .emit(ProgressEvent::LeftoversFound { count: stale.len() });
        let sources = journal::CleanupSources {
            solver_tables: Some(&self.solver_tables),
            solver_opts: Some(&self.solver_opts),
        };
        for done in journal::clean_stale(&self.journal, &self.host, sources).await {
            let description = done.entry.describe();
            self.progress.emit(match done.result {
                Ok(()) => ProgressEvent::LeftoverRemoved { description },
                Err(error) => ProgressEvent::LeftoverKept { description, error },
            });
        }
    }
}

/// Account settings given on the command line; each wins over the
/// environment and the config file. `Debug` never shows the HMAC key.
#[derive(Clone, Default)]
pub struct AccountFlags {
    /// The contact e-mail.
    pub email: Option<String>,
    /// Agreement to the CA's terms of service.
    pub agree_tos: bool,
    /// The EAB key id.
    pub eab_kid: Option<String>,
    /// The EAB HMAC key (base64url).
    pub eab_hmac_key: Option<String>,
}

impl AccountFlags {
    /// Settings with only the contact e-mail given.
    pub fn email(email: Option<String>) -> AccountFlags {
        AccountFlags {
            email,
            ..AccountFlags::default()
        }
    }
}

impl std::fmt::Debug for AccountFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountFlags")
            .field("email", &self.email)
            .field("agree_tos", &self.agree_tos)
            .field("eab_kid", &self.eab_kid)
            .field(
                "eab_hmac_key",
                &self.eab_hmac_key.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Account options from `given` (command-line values, which win), the
/// environment (`CERTSMITH_EAB_KID`, `CERTSMITH_EAB_HMAC_KEY`, each also as
/// `*_FILE`) and the config file's `[defaults]`, in that order.
pub fn account_options(
    defaults: Option<&crate::config::Defaults>,
    given: AccountFlags,
) -> Result<crate::acme::AccountOptions, IssueError> {
    use crate::envfile::{process_env, var_or_file};
    let env = |name: &str| -> Result<Option<String>, IssueError> {
        var_or_file(name, &process_env)
            .map(|v| v.map(|(_, value)| value))
            .map_err(|e| IssueError::Eab(e.to_string()))
    };
    let kid = match given.eab_kid {
        Some(k) => Some(k),
        None => env("CERTSMITH_EAB_KID")?,
    }
    .or_else(|| defaults.and_then(|d| d.eab_kid.clone()));
    let key = match given.eab_hmac_key {
        Some(k) => Some(k),
        None => env("CERTSMITH_EAB_HMAC_KEY")?,
    }
    .or_else(|| defaults.and_then(|d| d.eab_hmac_key.as_ref().map(|k| k.expose().to_owned())));
    let eab = match (kid, key) {
        (Some(kid), Some(key)) => Some(crate::acme::Eab::new(&kid, &key)?),
        (None, None) => None,
        _ => {
            return Err(IssueError::Eab(
                "it needs both a key id and an HMAC key".to_owned(),
            ));
        }
    };
    let opts = crate::acme::AccountOptions {
        email: given
            .email
            .or_else(|| defaults.and_then(|d| d.email.clone())),
        agree_tos: given.agree_tos || defaults.is_some_and(|d| d.agree_tos),
        eab,
        set_contact: true,
    };
    opts.contact()?;
    Ok(opts)
}
