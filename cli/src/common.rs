//! What `run`, `renew`, `revoke`, `list`, `account` and `config check`
//! share: loading the config file, opening the store and the plugin host,
//! building certificate requests, running a batch of orders with deploy
//! hooks and renewal bookkeeping, and the summary at the end.
//!
//! Why this module exists: `run` (from `certsmith.toml`) and `renew` (from
//! `lineage.toml`) differ only in where a certificate's description comes
//! from. Everything after that — one engine per CA, bounded concurrency,
//! one failure never stopping the rest, lineage updates, deploy hooks,
//! the table or JSON summary and the exit code — is here, once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use certsmith_core::acme::{AccountOptions, AcmeClient, Eab};
use certsmith_core::config::{self, Config, ConfigErrors};
use certsmith_core::dns::DnsOptions;
use certsmith_core::engine::{CancelToken, CertRequest, Engine, EngineOptions, IssuedCert};
use certsmith_core::error::IssueError;
use certsmith_core::hooks::{self, HookContext};
use certsmith_core::journal::Journal;
use certsmith_core::plugin::{ConfigSources, PluginHost, SearchPath, SolverInstance};
use certsmith_core::renewal::{self, CertFacts, RenewReason};
use certsmith_core::store::{self, Store};
use serde_json::json;
use time::OffsetDateTime;

use crate::dns_args::DnsArgs;
use crate::output::{print_error, print_json};
use crate::{GlobalArgs, OutputFormat, exit, progress};

/// A failure with its exit code, message and hint.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) class: &'static str,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>, hint: Option<&str>) -> Self {
        Failure {
            code: exit::USAGE,
            class: "usage",
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }

    pub(crate) fn from_issue(e: &IssueError) -> Self {
        let class = e.class();
        Failure {
            code: crate::issue::exit_code(class),
            class: class.as_str(),
            message: e.to_string(),
            hint: e.hint(),
        }
    }

    pub(crate) fn hook(e: &hooks::HookError) -> Self {
        Failure {
            code: exit::DEPLOY_HOOK,
            class: "deploy_hook",
            message: e.to_string(),
            hint: Some(e.hint().to_owned()),
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "class": self.class,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.code,
        })
    }

    /// Prints it on stderr (and as JSON on stdout with `--output json`);
    /// returns the exit code.
    pub(crate) fn report(&self, global: &GlobalArgs) -> u8 {
        print_error(&self.message, self.hint.as_deref());
        if global.output == OutputFormat::Json {
            print_json(&json!({ "error": self.json() }));
        }
        self.code
    }
}

impl From<IssueError> for Failure {
    fn from(e: IssueError) -> Self {
        Failure::from_issue(&e)
    }
}

/// Prints every error of a config file; returns the usage exit code.
pub(crate) fn report_config_errors(global: &GlobalArgs, errors: &ConfigErrors) -> u8 {
    for e in &errors.errors {
        print_error(&e.to_string(), e.hint());
    }
    if global.output == OutputFormat::Json {
        print_json(&json!({
            "error": {
                "class": "usage",
                "message": format!("the config file has {} error(s)", errors.errors.len()),
                "exit_code": exit::USAGE,
                "errors": errors.errors.iter().map(config_error_json).collect::<Vec<_>>(),
            }
        }));
    }
    exit::USAGE
}

pub(crate) fn config_error_json(e: &config::ConfigError) -> serde_json::Value {
    json!({
        "line": e.pos().map(|p| p.line),
        "column": e.pos().map(|p| p.column),
        "key": e.key(),
        "message": e.to_string(),
        "hint": e.hint(),
    })
}

/// Loads `--config` when given.
pub(crate) fn load_config(global: &GlobalArgs) -> Result<Option<Config>, ConfigErrors> {
    match &global.config {
        Some(p) => Config::load(p).map(Some),
        None => Ok(None),
    }
}

/// The state directory: `--state-dir`/`CERTSMITH_STATE_DIR`, then the
/// config file's `state_dir`, then the default.
pub(crate) fn open_store(global: &GlobalArgs, config: Option<&Config>) -> Result<Store, Failure> {
    let root = match (
        &global.state_dir,
        config.and_then(|c| c.defaults.state_dir.clone()),
    ) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d,
        (None, None) => store::default_root().map_err(IssueError::from)?,
    };
    Ok(Store::open(root).map_err(IssueError::from)?)
}

/// Discovers the plugins on `--plugin-dir`, the config's `plugin_dirs` and
/// the standard path.
pub(crate) fn plugin_host(global: &GlobalArgs, config: Option<&Config>) -> PluginHost {
    let config_dirs: Vec<PathBuf> = config
        .map(|c| c.defaults.plugin_dirs.clone())
        .unwrap_or_default();
    let host = PluginHost::discover(&SearchPath::standard(&global.plugin_dirs, &config_dirs));
    for p in host.problems() {
        log::info!("plugin {} not loaded: {}", p.path.display(), p.error);
    }
    host
}

/// Solver instances of one run, shared between certificates with the same
/// solver and options: one standalone listener set, one API client and
/// rate limiter per DNS provider, however many certificates use it.
#[derive(Debug, Default)]
pub(crate) struct Solvers {
    made: BTreeMap<String, SolverInstance>,
}

impl Solvers {
    /// The instance for `code` configured with `table` (plus the
    /// environment), created on first use.
    pub(crate) fn get(
        &mut self,
        host: &PluginHost,
        code: &str,
        table: &toml::Table,
    ) -> Result<SolverInstance, Failure> {
        let key = format!("{code}\n{table}");
        if let Some(s) = self.made.get(&key) {
            return Ok(s.clone());
        }
        let plugin = host.get(code).map_err(|e| Failure::from_issue(&e.into()))?;
        let solver = plugin
            .instantiate(&ConfigSources {
                file: Some(table),
                ..Default::default()
            })
            .map_err(|e| Failure::from_issue(&e.into()))?;
        self.made.insert(key, solver.clone());
        Ok(solver)
    }
}

/// Reads `NAME`, else the file named by `NAME_FILE`.
fn env_or_file(name: &str) -> Result<Option<String>, Failure> {
    if let Ok(v) = std::env::var(name) {
        return Ok(Some(v));
    }
    let file_var = format!("{name}_FILE");
    match std::env::var(&file_var) {
        Ok(path) => std::fs::read_to_string(&path)
            .map(|t| Some(t.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| {
                Failure::usage(
                    format!("cannot read {file_var}={path}: {e}"),
                    Some("point it at a readable file holding the value"),
                )
            }),
        Err(_) => Ok(None),
    }
}

/// Account options from the config file's `[defaults]` and the
/// environment (`CERTSMITH_EAB_KID`, `CERTSMITH_EAB_HMAC_KEY`, each also as
/// `*_FILE`), the environment winning.
pub(crate) fn account_options(
    config: Option<&Config>,
    email: Option<String>,
) -> Result<AccountOptions, Failure> {
    let d = config.map(|c| &c.defaults);
    let kid = env_or_file("CERTSMITH_EAB_KID")?.or_else(|| d.and_then(|d| d.eab_kid.clone()));
    let key = env_or_file("CERTSMITH_EAB_HMAC_KEY")?
        .or_else(|| d.and_then(|d| d.eab_hmac_key.as_ref().map(|k| k.expose().to_owned())));
    let eab = match (kid, key) {
        (Some(kid), Some(key)) => Some(Eab::new(&kid, &key)?),
        (None, None) => None,
        _ => {
            return Err(Failure::usage(
                "external account binding needs both a key id and an HMAC key",
                Some(
                    "set eab_kid in [defaults] (or CERTSMITH_EAB_KID) and CERTSMITH_EAB_HMAC_KEY (or CERTSMITH_EAB_HMAC_KEY_FILE)",
                ),
            ));
        }
    };
    let opts = AccountOptions {
        email: email.or_else(|| d.and_then(|d| d.email.clone())),
        agree_tos: d.is_some_and(|d| d.agree_tos),
        eab,
    };
    opts.contact()?;
    Ok(opts)
}

/// DNS options: command-line flags over the config file's `[defaults]`.
pub(crate) fn dns_options(args: &DnsArgs, config: Option<&Config>) -> DnsOptions {
    let mut o = args.options();
    if let Some(d) = config.map(|c| &c.defaults) {
        if o.resolvers.is_empty() {
            o.resolvers = d.dns_resolvers.clone();
        }
        if o.propagation_servers.is_empty() {
            o.propagation_servers = d.propagation_servers.clone();
        }
        if o.propagation_timeout.is_none() {
            o.propagation_timeout = d.propagation_timeout;
        }
        if !args.no_follow_cname
            && let Some(f) = d.follow_cname
        {
            o.follow_cname = f;
        }
    }
    o
}

pub(crate) fn verbosity(global: &GlobalArgs) -> progress::Verbosity {
    if global.quiet {
        progress::Verbosity::Quiet
    } else if global.verbose > 0 {
        progress::Verbosity::Verbose
    } else {
        progress::Verbosity::Normal
    }
}

/// Sleeps a random time up to `secs` (for timers that fire on many hosts
/// at once).
pub(crate) async fn jitter(secs: Option<u64>, quiet: bool) {
    let Some(secs) = secs.filter(|s| *s > 0) else {
        return;
    };
    let wait = renewal::random_below(Duration::from_secs(secs));
    if !quiet {
        eprintln!(
            "[certsmith] waiting {:.1}s (--jitter {secs})",
            wait.as_secs_f64()
        );
    }
    tokio::time::sleep(wait).await;
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    renewal::rfc3339(t)
}

/// What a batch does with one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Order it: it is missing or changed (or revoked).
    Issue(String),
    /// Order it: it is due (or forced).
    Renew(String),
    /// Nothing to do.
    Skip(String),
}

/// The settings written into `lineage.toml` after an order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Settings {
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) email: Option<String>,
    pub(crate) deploy_hook: Option<String>,
    pub(crate) hook_timeout: Option<Duration>,
    pub(crate) renew_before: Option<Duration>,
}

/// One certificate of a batch.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) name: String,
    pub(crate) domains: Vec<String>,
    /// `Err` when it failed before any order (bad solver options...).
    pub(crate) plan: Result<Plan, Failure>,
    pub(crate) request: Option<CertRequest>,
    pub(crate) settings: Settings,
    /// The current version, when there is one.
    pub(crate) facts: Option<CertFacts>,
    /// When it is next due, and why.
    pub(crate) next: Option<(OffsetDateTime, RenewReason)>,
    /// The RFC 9773 identifier of the version a renewal replaces.
    pub(crate) replaces: Option<String>,
    /// Filled in by [`execute`].
    pub(crate) outcome: Option<Outcome>,
}

impl Job {
    pub(crate) fn new(name: String, domains: Vec<String>) -> Job {
        Job {
            name,
            domains,
            plan: Ok(Plan::Skip(String::new())),
            request: None,
            settings: Settings::default(),
            facts: None,
            next: None,
            replaces: None,
            outcome: None,
        }
    }

    pub(crate) fn failed(&mut self, f: Failure) {
        self.plan = Err(f);
        self.request = None;
    }

    /// Records the decision of [`plan_existing`]: when renewing, the order
    /// is `request`, naming the certificate it replaces when the CA offers
    /// ARI (RFC 9773 §5).
    pub(crate) async fn set_plan(
        &mut self,
        (plan, next): (Plan, (OffsetDateTime, RenewReason)),
        client: &AcmeClient,
        facts: &CertFacts,
        request: CertRequest,
    ) {
        self.next = Some(next);
        if matches!(plan, Plan::Renew(_)) {
            if client.offers_renewal_info().await.unwrap_or(false) {
                self.replaces = facts.ari_cert_id.clone();
            }
            self.request = Some(CertRequest {
                replaces: self.replaces.clone(),
                ..request
            });
        }
        self.plan = Ok(plan);
    }
}

/// What happened to a job's order.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) cert: Option<IssuedCert>,
    pub(crate) error: Option<Failure>,
    pub(crate) hook: Option<Result<(), Failure>>,
}

/// Decides, for a certificate with a stored version, whether it is due
/// (asking the CA's ARI when it offers it), and persists the schedule in
/// `lineage.toml`.
pub(crate) async fn plan_existing(
    store: &Store,
    client: &AcmeClient,
    name: &str,
    facts: &CertFacts,
    lineage: &store::Lineage,
    renew_before: Option<Duration>,
    force: bool,
) -> (Plan, (OffsetDateTime, RenewReason)) {
    let now = OffsetDateTime::now_utc();
    let sched = renewal::schedule(
        Some(client),
        facts,
        lineage.renewal.as_ref(),
        renew_before,
        now,
    )
    .await;
    let next = (sched.next, sched.reason);
    // Written only when something but the check time changed: a run with
    // nothing to do leaves the store alone.
    let unchanged = lineage.renewal.as_ref().is_some_and(|old| {
        store::RenewalRecord {
            checked_at: old.checked_at.clone(),
            ..sched.record.clone()
        } == *old
    });
    if !unchanged {
        persist_schedule(store, name, sched.record.clone()).await;
    }
    let plan = if force {
        Plan::Renew("forced".to_owned())
    } else if sched.is_due(now) {
        Plan::Renew(format!(
            "due since {} ({})",
            rfc3339(sched.next),
            reason_words(sched.reason)
        ))
    } else {
        Plan::Skip(format!(
            "not due until {} ({})",
            rfc3339(sched.next),
            reason_words(sched.reason)
        ))
    };
    (plan, next)
}

pub(crate) fn reason_words(r: RenewReason) -> &'static str {
    match r {
        RenewReason::Expiry => "1/3 of the lifetime left",
        RenewReason::RenewBefore => "renew_before",
        RenewReason::Ari => "the CA's renewal window (ARI)",
        _ => "renewal",
    }
}

async fn persist_schedule(store: &Store, name: &str, record: store::RenewalRecord) {
    let (store, name) = (store.clone(), name.to_owned());
    let result = tokio::task::spawn_blocking(move || {
        store.update_lineage(&name, |l| l.renewal = Some(record))
    })
    .await;
    if let Ok(Err(e)) = result {
        log::warn!("could not record the renewal schedule: {e}");
    }
}

/// What [`execute`] needs besides the jobs.
pub(crate) struct Batch<'a> {
    pub(crate) global: &'a GlobalArgs,
    pub(crate) client: AcmeClient,
    pub(crate) store: Store,
    pub(crate) account: AccountOptions,
    pub(crate) journal: Journal,
    pub(crate) host: &'a PluginHost,
    pub(crate) solver_tables: toml::Table,
    pub(crate) dns: DnsOptions,
    pub(crate) concurrency: usize,
    pub(crate) cancel: CancelToken,
}

/// Orders every job planned to be issued or renewed (on one engine:
/// one CA, one account), then records the results in the lineages and
/// runs the deploy hooks. Jobs that are skipped or failed are left as
/// they are. Returns whether the run was interrupted.
pub(crate) async fn execute(batch: Batch<'_>, jobs: &mut [Job]) -> bool {
    let pending: Vec<usize> = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| {
            matches!(j.plan, Ok(Plan::Issue(_) | Plan::Renew(_))) && j.request.is_some()
        })
        .map(|(i, _)| i)
        .collect();
    if pending.is_empty() {
        return false;
    }
    let global = batch.global;
    let (progress, printer) = progress::spawn(verbosity(global));
    crate::dns_args::sweep_journal(&batch.journal, batch.host, &batch.solver_tables).await;
    let options = EngineOptions {
        cancel: batch.cancel.clone(),
        dns: batch.dns.clone(),
        journal: Some(batch.journal.clone()),
        ..EngineOptions::default()
    };
    let cancel = batch.cancel.clone();
    let connected = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(IssueError::Cancelled),
        r = Engine::connect(batch.client.clone(), batch.store.clone(), batch.account.clone(), progress, options) => r,
    };
    let requests: Vec<CertRequest> = pending
        .iter()
        .filter_map(|&i| jobs[i].request.take())
        .collect();
    let results: Vec<Result<IssuedCert, IssueError>> = match connected {
        Ok(engine) => {
            let r = engine.issue_all(requests, batch.concurrency).await;
            drop(engine);
            r
        }
        Err(e) => {
            // No account, no CA: every order of the batch fails alike.
            let mut f = Failure::from_issue(&e);
            // The generic hints name `issue`'s flags; say where it goes here.
            match e {
                IssueError::TermsNotAgreed { .. } => {
                    f.hint = Some(
                        "read the terms, then set agree_tos = true in [defaults] (renew: --agree-tos)"
                            .to_owned(),
                    );
                }
                IssueError::EabRequired { .. } | IssueError::Eab(_) => {
                    f.hint = Some(
                        "set eab_kid in [defaults] (or CERTSMITH_EAB_KID) and CERTSMITH_EAB_HMAC_KEY (or CERTSMITH_EAB_HMAC_KEY_FILE)"
                            .to_owned(),
                    );
                }
                _ => {}
            }
            for &i in &pending {
                jobs[i].outcome = Some(Outcome {
                    cert: None,
                    error: Some(f.clone()),
                    hook: None,
                });
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
            return cancel.is_cancelled();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;

    for (&i, result) in pending.iter().zip(results) {
        let job = &mut jobs[i];
        match result {
            Ok(cert) => {
                after_issue(&batch.store, &batch.client, job, &cert).await;
                let hook = match &job.settings.deploy_hook {
                    Some(cmd) if !cancel.is_cancelled() => Some(
                        run_hook(
                            cmd,
                            &cert,
                            job.settings
                                .hook_timeout
                                .unwrap_or(config::DEFAULT_HOOK_TIMEOUT),
                            global.quiet,
                        )
                        .await,
                    ),
                    _ => None,
                };
                job.outcome = Some(Outcome {
                    cert: Some(cert),
                    error: None,
                    hook,
                });
            }
            Err(e) => {
                job.outcome = Some(Outcome {
                    cert: None,
                    error: Some(Failure::from_issue(&e)),
                    hook: None,
                });
            }
        }
    }
    cancel.is_cancelled()
}

/// Records settings and the next renewal in `lineage.toml` after an order.
async fn after_issue(store: &Store, client: &AcmeClient, job: &mut Job, cert: &IssuedCert) {
    let settings = job.settings.clone();
    let (s, name) = (store.clone(), cert.name.clone());
    let _ = tokio::task::spawn_blocking(move || {
        s.update_lineage(&name, |l| {
            l.ca_cert = settings.ca_cert.as_ref().map(|p| p.display().to_string());
            l.email = settings.email.clone();
            l.deploy_hook = settings.deploy_hook.clone();
            l.renew_before = settings.renew_before.map(config::format_duration);
        })
    })
    .await;
    match renewal::read_current(store, &cert.name) {
        Ok(Some(facts)) => {
            let lineage = store.load_lineage(&cert.name).ok().flatten();
            let previous = lineage.as_ref().and_then(|l| l.renewal.clone());
            let sched = renewal::schedule(
                Some(client),
                &facts,
                previous.as_ref(),
                job.settings.renew_before,
                OffsetDateTime::now_utc(),
            )
            .await;
            job.next = Some((sched.next, sched.reason));
            persist_schedule(store, &cert.name, sched.record).await;
            job.facts = Some(facts);
        }
        Ok(None) => {}
        Err(e) => log::warn!("cannot read the new certificate of '{}': {e}", cert.name),
    }
}

/// Runs a deploy hook for `cert`, printing its output on stderr.
pub(crate) async fn run_hook(
    command: &str,
    cert: &IssuedCert,
    timeout: Duration,
    quiet: bool,
) -> Result<(), Failure> {
    let ctx = HookContext {
        cert_name: cert.name.clone(),
        domains: cert.domains.clone(),
        cert_dir: cert
            .fullchain_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        version: cert.version,
    };
    if !quiet {
        eprintln!("[certsmith] {}: running the deploy hook", cert.name);
    }
    match hooks::run_hook(command, &ctx, timeout).await {
        Ok(out) => {
            if !quiet {
                for line in out.output.lines() {
                    eprintln!("[certsmith] {} hook: {line}", cert.name);
                }
                eprintln!(
                    "[certsmith] {}: deploy hook done in {:.1}s",
                    cert.name,
                    out.elapsed.as_secs_f64()
                );
            }
            Ok(())
        }
        Err(e) => Err(Failure::hook(&e)),
    }
}

/// The summary of a batch: a table on stdout (or one JSON object per
/// certificate and a summary object), errors on stderr. Returns the exit
/// code.
pub(crate) fn summarize(global: &GlobalArgs, jobs: &[Job], interrupted: bool) -> u8 {
    let not_attempted = Failure {
        code: crate::issue::INTERRUPTED,
        class: "cancelled",
        message: "not attempted: the run was interrupted".to_owned(),
        hint: None,
    };
    let mut rows = Vec::new();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failures: Vec<(&str, &Failure)> = Vec::new();
    let mut successes = 0usize;
    for job in jobs {
        let (action, detail, failure): (&'static str, String, Option<&Failure>) =
            match (&job.plan, &job.outcome) {
                (Err(f), _) => ("failed", String::new(), Some(f)),
                (Ok(Plan::Skip(why)), _) => ("skipped", why.clone(), None),
                (Ok(plan), Some(o)) => {
                    let (verb, why) = match plan {
                        Plan::Issue(w) => ("issued", w),
                        Plan::Renew(w) => ("renewed", w),
                        Plan::Skip(w) => ("skipped", w),
                    };
                    match (&o.error, &o.hook) {
                        (Some(f), _) => ("failed", why.clone(), Some(f)),
                        (None, Some(Err(f))) => {
                            (verb, format!("{why}; deploy hook failed"), Some(f))
                        }
                        _ => (verb, why.clone(), None),
                    }
                }
                (Ok(_), None) => ("failed", String::new(), Some(&not_attempted)),
            };
        *counts.entry(action).or_default() += 1;
        match failure {
            Some(f) => failures.push((&job.name, f)),
            None if action != "failed" => successes += 1,
            None => {}
        }
        let cert = job.outcome.as_ref().and_then(|o| o.cert.as_ref());
        let not_after = cert
            .map(|c| c.not_after)
            .or_else(|| job.facts.as_ref().map(|f| f.not_after));
        rows.push((job, action, detail, failure, cert, not_after));
    }

    match global.output {
        OutputFormat::Json => {
            for (job, action, detail, failure, cert, not_after) in &rows {
                let hook = job
                    .outcome
                    .as_ref()
                    .and_then(|o| o.hook.as_ref())
                    .map(|h| match h {
                        Ok(()) => json!({"status": "ok"}),
                        Err(f) => json!({"status": "failed", "error": f.json()}),
                    });
                print_json(&json!({
                    "name": job.name,
                    "domains": job.domains,
                    "action": action,
                    "reason": detail,
                    "version": cert.map(|c| c.version),
                    "serial": cert.map(|c| c.serial.clone()).or_else(|| job.facts.as_ref().map(|f| f.serial.clone())),
                    "not_after": not_after.map(rfc3339),
                    "next_renewal": job.next.map(|(t, _)| rfc3339(t)),
                    "renewal_reason": job.next.map(|(_, r)| r.as_str()),
                    "replaces": job.replaces,
                    "fullchain_path": cert.map(|c| c.fullchain_path.clone()),
                    "privkey_path": cert.map(|c| c.privkey_path.clone()),
                    "deploy_hook": hook,
                    "error": failure.map(|f| f.json()),
                }));
            }
        }
        OutputFormat::Text => {
            println!(
                "{:<24} {:<8} {:<21} {:<36} DETAIL",
                "NAME", "ACTION", "NOT AFTER", "NEXT RENEWAL"
            );
            for (job, action, detail, failure, _, not_after) in &rows {
                let detail = match failure {
                    Some(f) if *action == "failed" || detail.is_empty() => first_line(&f.message),
                    Some(f) => format!("{detail}: {}", first_line(&f.message)),
                    None => detail.clone(),
                };
                println!(
                    "{:<24} {:<8} {:<21} {:<36} {}",
                    job.name,
                    action,
                    not_after.map_or_else(|| "-".to_owned(), rfc3339),
                    job.next.map_or_else(
                        || "-".to_owned(),
                        |(t, r)| format!("{} {}", rfc3339(t), short_reason(r))
                    ),
                    detail
                );
            }
            let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            println!("{} certificate(s): {}", jobs.len(), parts.join(", "));
        }
    }
    for (name, f) in &failures {
        print_error(&format!("{name}: {}", f.message), f.hint.as_deref());
    }
    let codes: Vec<u8> = failures.iter().map(|(_, f)| f.code).collect();
    let code = batch_exit_code(&codes, successes, interrupted);
    if global.output == OutputFormat::Json {
        print_json(&json!({
            "summary": {
                "total": jobs.len(),
                "issued": counts.get("issued").copied().unwrap_or(0),
                "renewed": counts.get("renewed").copied().unwrap_or(0),
                "skipped": counts.get("skipped").copied().unwrap_or(0),
                "failed": failures.len(),
                "interrupted": interrupted,
            },
            "exit_code": code,
        }));
    }
    code
}

/// The exit code of a batch: 0 when nothing failed; the failure class's
/// code when every certificate failed for the same class; otherwise
/// [`exit::PARTIAL`]. Skipped certificates count as successes.
fn batch_exit_code(failure_codes: &[u8], successes: usize, interrupted: bool) -> u8 {
    if interrupted {
        return crate::issue::INTERRUPTED;
    }
    match failure_codes.first() {
        None => exit::OK,
        Some(&first) if successes == 0 && failure_codes.iter().all(|&c| c == first) => first,
        Some(_) => exit::PARTIAL,
    }
}

fn short_reason(r: RenewReason) -> &'static str {
    match r {
        RenewReason::Ari => "(ari)",
        RenewReason::RenewBefore => "(renew_before)",
        _ => "(expiry)",
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// After `certsmith issue`: records in `lineage.toml` what `renew` needs
/// besides the request (CA bundle, account e-mail, deploy hook) and the
/// first renewal schedule (asking the CA's ARI when it offers it).
pub(crate) async fn record_issue(
    store: &Store,
    cert: &IssuedCert,
    ca_cert: Option<&std::path::Path>,
    email: Option<&str>,
    deploy_hook: Option<&str>,
) {
    let ca_cert = ca_cert.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()));
    let mut job = Job::new(cert.name.clone(), cert.domains.clone());
    job.settings = Settings {
        ca_cert: ca_cert.clone(),
        email: email.map(|e| e.trim().trim_start_matches("mailto:").to_owned()),
        deploy_hook: deploy_hook.map(str::to_owned),
        hook_timeout: None,
        renew_before: None,
    };
    let server = store
        .load_lineage(&cert.name)
        .ok()
        .flatten()
        .map(|l| l.server);
    let Some(server) = server else { return };
    match AcmeClient::new(&server, ca_cert.as_deref()) {
        Ok(client) => after_issue(store, &client, &mut job, cert).await,
        Err(e) => log::warn!("cannot record the renewal schedule of '{}': {e}", cert.name),
    }
}

/// How long `run`/`renew` wait for another batch on the same store.
const RUN_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// What a batch command (`run`, `renew`) holds while it works: the store,
/// the run lock (so overlapping timers never order twice), the journal.
pub(crate) async fn open_batch_state(
    global: &GlobalArgs,
    config: Option<&Config>,
) -> Result<(Store, store::StoreLock, certsmith_core::journal::Journal), Failure> {
    let store = open_store(global, config)?;
    let lock = run_lock(&store, global.quiet).await?;
    let journal = certsmith_core::journal::Journal::open(store.root()).map_err(|e| {
        Failure::usage(
            e.to_string(),
            Some("the state directory must be writable (--state-dir)"),
        )
    })?;
    Ok((store, lock, journal))
}

/// Takes the store's run lock for a whole batch: two overlapping runs
/// (a timer and an operator, two cron lines) would otherwise both order a
/// due certificate. The second waits, then finds nothing to do.
pub(crate) async fn run_lock(store: &Store, quiet: bool) -> Result<store::StoreLock, Failure> {
    let s = store.clone();
    let first = tokio::task::spawn_blocking(move || s.run_lock(Duration::ZERO))
        .await
        .map_err(|e| Failure::usage(format!("the lock task failed: {e}"), None))?;
    let err = match first {
        Ok(lock) => return Ok(lock),
        Err(e) => e,
    };
    if !matches!(err, store::StoreError::Locked { .. }) {
        return Err(Failure::from_issue(&err.into()));
    }
    if !quiet {
        eprintln!(
            "[certsmith] another certsmith run or renew is working on {}; waiting for it",
            store.root().display()
        );
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.run_lock(RUN_LOCK_WAIT))
        .await
        .map_err(|e| Failure::usage(format!("the lock task failed: {e}"), None))?
        .map_err(|e| Failure {
            code: exit::USAGE,
            class: "store",
            message: e.to_string(),
            hint: Some(
                "a run that takes this long is probably stuck: look for it with `ps -C certsmith`"
                    .to_owned(),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_exit_codes() {
        assert_eq!(batch_exit_code(&[], 5, false), exit::OK);
        assert_eq!(batch_exit_code(&[], 0, false), exit::OK);
        assert_eq!(batch_exit_code(&[exit::SOLVER], 4, false), exit::PARTIAL);
        assert_eq!(
            batch_exit_code(&[exit::SOLVER, exit::SOLVER], 0, false),
            exit::SOLVER
        );
        assert_eq!(
            batch_exit_code(&[exit::DEPLOY_HOOK], 0, false),
            exit::DEPLOY_HOOK
        );
        assert_eq!(
            batch_exit_code(&[exit::SOLVER, exit::NETWORK], 0, false),
            exit::PARTIAL
        );
        assert_eq!(batch_exit_code(&[], 3, true), crate::issue::INTERRUPTED);
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        dns: DnsArgs,
    }

    fn flags(args: &[&str]) -> DnsArgs {
        use clap::Parser as _;
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        Flags::parse_from(argv).dns
    }

    #[test]
    fn dns_flags_win_over_the_config() {
        let text = "[defaults]\ndns_resolvers = [\"192.0.2.53\"]\npropagation_servers = [\"127.0.0.1:8053\"]\npropagation_timeout = \"90s\"\nfollow_cname = false\n";
        let config = Config::parse(text, std::path::Path::new("/c/certsmith.toml")).expect("valid");
        let o = dns_options(&flags(&[]), Some(&config));
        assert_eq!(o.resolvers, ["192.0.2.53:53".parse().expect("addr")]);
        assert_eq!(
            o.propagation_servers,
            ["127.0.0.1:8053".parse().expect("addr")]
        );
        assert_eq!(o.propagation_timeout, Some(Duration::from_secs(90)));
        assert!(!o.follow_cname);
        let o = dns_options(
            &flags(&[
                "--dns-resolver",
                "198.51.100.1",
                "--propagation-timeout",
                "5",
            ]),
            Some(&config),
        );
        assert_eq!(o.resolvers, ["198.51.100.1:53".parse().expect("addr")]);
        assert_eq!(o.propagation_timeout, Some(Duration::from_secs(5)));
        assert!(dns_options(&flags(&[]), None).follow_cname);
    }
}
