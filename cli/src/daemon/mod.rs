//! `certsmith daemon`: keeps every certificate of the config file issued
//! and renewed, for as long as it runs.
//!
//! Why this module exists: a timer running `certsmith run` suits one
//! machine; a fleet sharing a store wants long-running workers that each
//! take what is due, never two at once on one certificate, and that a
//! supervisor can watch (metrics, a health check) and stop cleanly. The
//! decisions stay the agent's (`Agent::plan_configured`, `execute`); this
//! is the loop around them (docs/design.md §4.3, "The daemon"):
//!
//! 1. plan each certificate of the config (skipping one in backoff);
//! 2. claim those that order with the store's certificate lease (`None`:
//!    another worker has it, try again soon), plan again under the lease
//!    (another worker may just have issued it), fence the job with the
//!    lease, and execute up to `concurrency` of them as one batch, renewing
//!    the leases every third of their time to live;
//! 3. sleep until the earliest next renewal (with jitter), at most
//!    `--check-interval`; a certificate that failed is tried again after
//!    an exponential backoff.
//!
//! SIGTERM or SIGINT stops claiming, lets the orders in flight finish for
//! `--shutdown-grace`, then cancels them (the engine removes what it
//! presented) and exits 0; SIGHUP reloads the config file (a broken one
//! is reported and the old one kept).

mod http;
mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certsmith_core::acme::{AccountOptions, AcmeClient};
use certsmith_core::agent::{self, Agent, Job};
use certsmith_core::config::{CertificateConfig, Config, parse_duration};
use certsmith_core::engine::CancelToken;
use certsmith_core::progress::{Progress, ProgressEvent};
use certsmith_core::renewal;
use certsmith_core::store::{Lease, Store};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::dns_args::DnsArgs;
use crate::failure::Failure;
use crate::output::{print_error, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit, progress, summary};

use metrics::Metrics;

/// Keep the certificates of the config file issued and renewed, for as
/// long as it runs.
#[derive(Debug, clap::Args)]
pub(crate) struct DaemonArgs {
    /// Serve Prometheus metrics on /metrics and a health check on /healthz
    /// over HTTP at this address, e.g. 127.0.0.1:9415.
    #[arg(long, value_name = "ADDR", env = "CERTSMITH_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Look at every certificate at least this often (sooner when one is
    /// due sooner): SECS or a duration such as 30m, 1h.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1h",
        env = "CERTSMITH_CHECK_INTERVAL",
        value_parser = duration_flag("--check-interval")
    )]
    check_interval: Duration,
    /// How long a claim on a certificate lasts unless renewed (it is
    /// renewed every third of this while the order runs; a worker that
    /// dies releases it after this long in a shared store).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10m",
        env = "CERTSMITH_LEASE_TTL",
        value_parser = duration_flag("--lease-ttl")
    )]
    lease_ttl: Duration,
    /// On SIGTERM or SIGINT, how long the orders in flight may take to
    /// finish before they are cancelled (their challenges removed).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        env = "CERTSMITH_SHUTDOWN_GRACE",
        value_parser = duration_flag("--shutdown-grace")
    )]
    shutdown_grace: Duration,
    /// A solver option, naming its solver (repeatable): e.g. a secret that
    /// is not stored; wins over the environment and the config file.
    #[arg(long = "solver-opt", value_name = "CODE:KEY=VALUE", value_parser = setup::parse_coded_opt)]
    solver_opts: Vec<setup::CodedOpt>,
    #[command(flatten)]
    dns: DnsArgs,
}

/// SECS or a duration (`90s`, `5m`, `1h`), not zero.
fn duration_flag(flag: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s: &str| {
        let d = match s.trim().parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => parse_duration(s)
                .map_err(|e| format!("{e}; {flag} takes seconds or e.g. 30s, 5m, 1h"))?,
        };
        if d.is_zero() {
            return Err(format!("{flag} must be longer than zero (e.g. 30s)"));
        }
        Ok(d)
    }
}

/// The longest a failed certificate waits before it is tried again.
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// The first wait after a failure (or `--check-interval`, if shorter).
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
/// A certificate another worker holds is looked at again after this (or
/// `--check-interval`, if shorter).
const CONTENDED_RETRY: Duration = Duration::from_secs(30);
/// The shortest sleep between rounds.
const MIN_SLEEP: Duration = Duration::from_millis(500);

/// What the loop and the HTTP endpoint share.
pub(crate) struct Shared {
    store: Store,
    metrics: Metrics,
    /// When the loop last showed it is alive (a round began or ended).
    heartbeat: Mutex<Instant>,
    /// How old the heartbeat may be before `/healthz` says the loop is stuck.
    stale_after: Duration,
}

impl Shared {
    fn beat(&self) {
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// The certificates of the config as the store says now.
    async fn survey(&self) -> Result<Vec<metrics::CertStatus>, String> {
        let (names, failed) = self.metrics.configured();
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            metrics::survey(&store, &names, &failed, OffsetDateTime::now_utc())
        });
        match tokio::time::timeout(http::STORE_TIMEOUT, read).await {
            Ok(Ok(Ok(certs))) => Ok(certs),
            Ok(Ok(Err(e))) => Err(format!("the store is not readable: {e}")),
            Ok(Err(e)) => Err(format!("the store reader failed: {e}")),
            Err(_) => Err(format!(
                "the store did not answer within {}s",
                http::STORE_TIMEOUT.as_secs()
            )),
        }
    }

    /// The text of `/metrics`.
    async fn scrape(&self) -> Result<String, String> {
        let certs = self.survey().await?;
        let mut text = self.metrics.render(&certs);
        if let Some(n) = self.store.queries() {
            // The database's load per certificate (benchmarks, capacity).
            text.push_str(
                "# HELP certsmith_store_queries_total Statements this process sent to the store's database (BEGIN and COMMIT not counted).\n\
                 # TYPE certsmith_store_queries_total counter\n",
            );
            text.push_str(&format!("certsmith_store_queries_total {n}\n"));
        }
        Ok(text)
    }

    /// `Ok` when the loop ran recently and the store is readable, else why not.
    async fn health(&self) -> Result<(), String> {
        let age = self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed();
        if age > self.stale_after {
            return Err(format!(
                "the loop has not run for {}s (expected at least every {}s)",
                age.as_secs(),
                self.stale_after.as_secs()
            ));
        }
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || store.cert_names());
        match tokio::time::timeout(http::STORE_TIMEOUT, read).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("the store is not readable: {e}")),
            Ok(Err(e)) => Err(format!("the store reader failed: {e}")),
            Err(_) => Err(format!(
                "the store did not answer within {}s",
                http::STORE_TIMEOUT.as_secs()
            )),
        }
    }
}

/// What a config file makes: the agent, the CA client, the account.
struct World {
    config: Config,
    client: AcmeClient,
    account: AccountOptions,
    agent: Agent,
}

impl World {
    fn build(
        global: &GlobalArgs,
        args: &DaemonArgs,
        config: Config,
        store: Store,
        progress: Progress,
        cancel: CancelToken,
    ) -> Result<World, Failure> {
        let server = config
            .defaults
            .server
            .clone()
            .unwrap_or_else(|| "letsencrypt".to_owned());
        let client = AcmeClient::new(&server, config.defaults.ca_cert.as_deref())
            .map_err(|e| Failure::from_issue(&e))?;
        let account =
            agent::account_options(Some(&config.defaults), agent::AccountFlags::default())
                .map_err(summary::account_failure)?;
        let host = setup::plugin_host(global, Some(&config));
        let mut options = setup::agent_options(store, host, Some(&config), &args.dns);
        options.solver_opts = setup::solver_opts_by_code(&args.solver_opts);
        options.progress = progress;
        options.cancel = cancel;
        Ok(World {
            config,
            client,
            account,
            agent: Agent::new(options),
        })
    }

    fn names(&self) -> Vec<String> {
        self.config
            .certificates
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }
}

/// Per certificate: not to be looked at before this, and why.
#[derive(Default)]
struct Schedule {
    /// Failed: (consecutive failures, not before).
    failures: HashMap<String, (u32, Instant)>,
    /// Held by another worker: not before.
    contended: HashMap<String, Instant>,
}

impl Schedule {
    fn not_before(&self, name: &str) -> Option<Instant> {
        let f = self.failures.get(name).map(|(_, t)| *t);
        let c = self.contended.get(name).copied();
        f.max(c)
    }

    fn failed(&mut self, name: &str, check_interval: Duration) -> Duration {
        let n = self.failures.get(name).map_or(0, |(n, _)| *n) + 1;
        let first = BACKOFF_FIRST.min(check_interval);
        let exp = first
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(BACKOFF_MAX);
        // Jitter: 50 to 100 % of the wait, so that failures of many
        // certificates (or workers) do not retry in step.
        let wait = exp / 2 + renewal::random_below(exp / 2);
        self.failures
            .insert(name.to_owned(), (n, Instant::now() + wait));
        wait
    }

    fn succeeded(&mut self, name: &str) {
        self.failures.remove(name);
        self.contended.remove(name);
    }
}

/// The daemon's tools for one round.
struct Ctl<'a> {
    global: &'a GlobalArgs,
    args: &'a DaemonArgs,
    shared: &'a Arc<Shared>,
    /// Stops claiming (the first SIGTERM or SIGINT).
    stop: &'a CancelToken,
    /// Cancels the orders in flight (after the grace period).
    cancel: &'a CancelToken,
}

pub(crate) async fn run(global: &GlobalArgs, args: DaemonArgs) -> u8 {
    // First: from now on a SIGTERM stops the daemon gracefully.
    let stop = setup::daemon_stop_token();
    // Likewise a SIGHUP, whose default action would end the process.
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install the SIGHUP handler: {e}");
            return exit::INTERNAL;
        }
    };
    let (path, config) = match setup::require_config(global, "daemon") {
        Ok(found) => found,
        Err(code) => return code,
    };
    let store = match setup::open_store(global, Some(&config)) {
        Ok(s) => s,
        Err(f) => return f.report(global, None),
    };
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics: Metrics::default(),
        heartbeat: Mutex::new(Instant::now()),
        stale_after: args.check_interval.saturating_mul(2) + args.lease_ttl,
    });
    // Every progress event passes through the metrics on its way to the
    // printer.
    let (printed, printer) = progress::spawn(setup::verbosity(global));
    let (tx, mut rx) = mpsc::unbounded_channel::<ProgressEvent>();
    let tap = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                shared.metrics.observe(&event);
                printed.emit(event);
            }
        })
    };
    let progress = Progress::new(tx);
    let cancel = setup::cancel_token();
    let mut world = match World::build(
        global,
        &args,
        config,
        store,
        progress.clone(),
        cancel.clone(),
    ) {
        Ok(w) => w,
        Err(f) => return f.report(global, None),
    };
    shared.metrics.set_configured(world.names());
    let server = match args.metrics_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().unwrap_or(addr);
                Some((bound, tokio::spawn(http::serve(listener, shared.clone()))))
            }
            Err(e) => {
                return Failure::usage(
                    format!("--metrics-listen {addr}: cannot listen there: {e}"),
                    Some("give a free address and port, e.g. --metrics-listen 127.0.0.1:9415"),
                )
                .report(global, None);
            }
        },
        None => None,
    };
    announce(
        global,
        json!({
            "daemon": "started",
            "config": path.display().to_string(),
            "certificates": world.config.certificates.len(),
            "metrics": server.as_ref().map(|(a, _)| a.to_string()),
        }),
        &format!(
            "daemon started: {} certificate(s) from {}{}; checking at least every {}",
            world.config.certificates.len(),
            path.display(),
            server.as_ref().map_or_else(String::new, |(a, _)| format!(
                ", metrics on http://{a}/metrics"
            )),
            certsmith_core::config::format_duration(args.check_interval)
        ),
    );

    let ctl = Ctl {
        global,
        args: &args,
        shared: &shared,
        stop: &stop,
        cancel: &cancel,
    };
    let mut schedule = Schedule::default();
    while !stop.is_cancelled() {
        shared.beat();
        let wait = round(&ctl, &world, &mut schedule).await;
        shared.metrics.round_done();
        shared.beat();
        if stop.is_cancelled() {
            break;
        }
        log::info!("next round in {:.1}s", wait.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
            _ = hangup.recv() => {
                if let Some(w) = reload(global, &args, &path, &world, progress.clone(), cancel.clone()) {
                    world = w;
                    shared.metrics.set_configured(world.names());
                    // A certificate of the old config in backoff may be
                    // fixed by the new one: look at everything again.
                    schedule = Schedule::default();
                }
            }
        }
    }
    announce(global, json!({"daemon": "stopped"}), "daemon stopped");
    if let Some((_, task)) = server {
        task.abort();
    }
    drop(world);
    drop(progress);
    let _ = tokio::time::timeout(Duration::from_secs(2), tap).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    exit::OK
}

/// Reads the config file again; `None` (after reporting why) keeps the
/// old one.
fn reload(
    global: &GlobalArgs,
    args: &DaemonArgs,
    path: &Path,
    old: &World,
    progress: Progress,
    cancel: CancelToken,
) -> Option<World> {
    let keep = |errors: Vec<serde_json::Value>| {
        announce(
            global,
            json!({"daemon": "reload_failed", "config": path.display().to_string(), "errors": errors}),
            &format!(
                "SIGHUP: {} not reloaded; still using the config loaded before",
                path.display()
            ),
        );
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.errors {
                print_error(&e.to_string(), e.hint());
            }
            keep(errors.errors.iter().map(setup::config_error_json).collect());
            return None;
        }
    };
    match World::build(
        global,
        args,
        config,
        old.agent.store().clone(),
        progress,
        cancel,
    ) {
        Ok(world) => {
            announce(
                global,
                json!({
                    "daemon": "reloaded",
                    "config": path.display().to_string(),
                    "certificates": world.config.certificates.len(),
                }),
                &format!(
                    "SIGHUP: reloaded {}: {} certificate(s)",
                    path.display(),
                    world.config.certificates.len()
                ),
            );
            Some(world)
        }
        Err(f) => {
            print_error(&f.message, f.hint.as_deref());
            keep(vec![json!({
                "line": null, "column": null, "key": null,
                "message": f.message, "hint": f.hint,
            })]);
            None
        }
    }
}

/// A daemon event: a JSON object on stdout with `--output json`, else a
/// line on stderr (unless `-q`).
fn announce(global: &GlobalArgs, value: serde_json::Value, text: &str) {
    match global.output {
        OutputFormat::Json => print_json(&value),
        OutputFormat::Text if !global.quiet => eprintln!("[certsmith] {text}"),
        OutputFormat::Text => {}
    }
}

/// One round: plan, claim, execute; returns how long to sleep.
async fn round(ctl: &Ctl<'_>, world: &World, schedule: &mut Schedule) -> Duration {
    let agent = &world.agent;
    let mut due: Vec<&CertificateConfig> = Vec::new();
    let now = Instant::now();
    for cert in &world.config.certificates {
        if ctl.stop.is_cancelled() {
            return Duration::ZERO;
        }
        if schedule.not_before(&cert.name).is_some_and(|t| t > now) {
            continue;
        }
        let job = agent
            .plan_configured(&world.config, cert, &world.client, false)
            .await;
        match &job.plan {
            Ok(plan) if plan.orders() => due.push(cert),
            Ok(_) => schedule.succeeded(&cert.name),
            Err(_) => {
                ctl.shared.metrics.plan_failed(&cert.name);
                report(ctl, &job, schedule);
            }
        }
    }
    let concurrency = world
        .config
        .defaults
        .concurrency
        .unwrap_or(certsmith_core::engine::DEFAULT_CONCURRENCY)
        .max(1);
    // Workers sharing a store start their claims at different places of
    // the list, so that they do not all contend for the same certificates.
    if !due.is_empty() {
        let start = usize::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                ^ std::process::id(),
        )
        .unwrap_or(0)
            % due.len();
        due.rotate_left(start);
    }
    let mut queue = due.into_iter();
    loop {
        if ctl.stop.is_cancelled() {
            break;
        }
        let mut jobs: Vec<Job> = Vec::new();
        let mut leases: Vec<(String, Lease)> = Vec::new();
        for cert in queue.by_ref() {
            if let Some((job, lease)) = claim(ctl, world, cert, schedule).await {
                jobs.push(job);
                leases.push((cert.name.clone(), lease));
                if jobs.len() >= concurrency {
                    break;
                }
            }
        }
        if jobs.is_empty() {
            break;
        }
        execute(ctl, world, &mut jobs, leases).await;
        for job in &jobs {
            report(ctl, job, schedule);
        }
    }
    next_wake(ctl, world, schedule).await
}

/// Claims `cert` and plans it again under the lease: the job to execute,
/// fenced by the lease, or `None` (held by another worker, or no longer
/// due).
async fn claim(
    ctl: &Ctl<'_>,
    world: &World,
    cert: &CertificateConfig,
    schedule: &mut Schedule,
) -> Option<(Job, Lease)> {
    let store = world.agent.store().clone();
    let (name, ttl) = (cert.name.clone(), ctl.args.lease_ttl);
    let claimed = tokio::task::spawn_blocking(move || store.cert_lease(&name, ttl)).await;
    let lease = match claimed {
        Ok(Ok(Some(lease))) => lease,
        Ok(Ok(None)) => {
            log::info!(
                "{}: another worker holds it; looking again later",
                cert.name
            );
            let wait = CONTENDED_RETRY.min(ctl.args.check_interval);
            schedule
                .contended
                .insert(cert.name.clone(), Instant::now() + wait);
            return None;
        }
        Ok(Err(e)) => {
            log::warn!("{}: cannot claim it: {e}", cert.name);
            let wait = schedule.failed(&cert.name, ctl.args.check_interval);
            log::warn!("{}: trying again in {}s", cert.name, wait.as_secs());
            return None;
        }
        Err(e) => {
            log::warn!("{}: the claim failed: {e}", cert.name);
            return None;
        }
    };
    // Planned again under the lease: another worker may have issued it
    // between the first plan and the claim.
    let mut job = world
        .agent
        .plan_configured(&world.config, cert, &world.client, false)
        .await;
    match &job.plan {
        Ok(plan) if plan.orders() => {}
        Ok(_) => {
            schedule.succeeded(&cert.name);
            return None;
        }
        Err(_) => {
            ctl.shared.metrics.plan_failed(&cert.name);
            report(ctl, &job, schedule);
            return None;
        }
    }
    job.fence_with(&lease);
    if let Some(request) = &job.request {
        for d in &request.domains {
            let solver = request.solver_for(d.as_str()).code();
            for key in [d.as_str(), d.as_str().trim_start_matches("*.")] {
                ctl.shared.metrics.solver_of(&cert.name, key, solver);
            }
        }
    }
    Some((job, lease))
}

/// Executes the claimed jobs as one batch, renewing their leases while it
/// runs; on a stop, lets it finish for the grace period, then cancels it.
async fn execute(ctl: &Ctl<'_>, world: &World, jobs: &mut [Job], leases: Vec<(String, Lease)>) {
    let leases = Arc::new(leases);
    let renewer = {
        let leases = leases.clone();
        let shared = ctl.shared.clone();
        let every = (ctl.args.lease_ttl / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A long batch is the loop at work, not a stuck one.
                shared.beat();
                let held = leases.clone();
                let renewed = tokio::task::spawn_blocking(move || {
                    held.iter()
                        .filter_map(|(name, l)| l.renew().err().map(|e| (name.clone(), e)))
                        .collect::<Vec<_>>()
                })
                .await;
                for (name, e) in renewed.unwrap_or_default() {
                    log::warn!(
                        "{name}: cannot renew the claim on it: {e}; if another worker took it over, this order's certificate will not be published"
                    );
                }
            }
        })
    };
    let run = world.agent.execute(&world.client, &world.account, jobs);
    tokio::pin!(run);
    tokio::select! {
        _ = &mut run => {}
        _ = ctl.stop.cancelled() => {
            let grace = ctl.args.shutdown_grace;
            if tokio::time::timeout(grace, &mut run).await.is_err() {
                log::warn!(
                    "the orders in flight did not finish within {} (--shutdown-grace): cancelling them",
                    certsmith_core::config::format_duration(grace)
                );
                ctl.cancel.cancel();
                run.await;
            }
        }
    }
    renewer.abort();
    let _ = renewer.await;
    // The leases are released here (the renewer's copy is gone).
    drop(leases);
}

/// Reports a job that ordered (or could not be planned), counts it, and
/// schedules its retry when it failed.
fn report(ctl: &Ctl<'_>, job: &Job, schedule: &mut Schedule) {
    let (action, detail, failure) = job.result();
    let planned = job.outcome.is_some();
    if planned {
        ctl.shared.metrics.order(&job.name, action);
    }
    let failure = failure.map(summary::batch_failure);
    let retry = if action == "failed" {
        Some(schedule.failed(&job.name, ctl.args.check_interval))
    } else {
        schedule.succeeded(&job.name);
        None
    };
    match ctl.global.output {
        OutputFormat::Json => {
            print_json(&summary::job_json(job, action, &detail, failure.as_ref()));
        }
        OutputFormat::Text => {
            if !ctl.global.quiet && action != "failed" {
                let next = job.next.map_or_else(String::new, |(t, _)| {
                    format!("; next renewal {}", renewal::rfc3339(t))
                });
                eprintln!("[certsmith] {}: {action} ({detail}){next}", job.name);
            }
        }
    }
    if let Some(f) = &failure {
        print_error(&format!("{}: {}", job.name, f.message), f.hint.as_deref());
    }
    // A daemon that is stopping retries nothing.
    if let Some(wait) = retry
        && !ctl.global.quiet
        && !ctl.stop.is_cancelled()
    {
        eprintln!(
            "[certsmith] {}: trying again in {}",
            job.name,
            certsmith_core::config::format_duration(Duration::from_secs(wait.as_secs().max(1)))
        );
    }
}

/// How long to sleep: until the earliest next renewal or retry, with a
/// little jitter, at most `--check-interval`.
async fn next_wake(ctl: &Ctl<'_>, world: &World, schedule: &Schedule) -> Duration {
    let store = world.agent.store().clone();
    let names = world.names();
    let stored = tokio::task::spawn_blocking(move || {
        let now = OffsetDateTime::now_utc();
        let mut out: BTreeMap<String, Duration> = BTreeMap::new();
        for name in names {
            let Ok(Some(lineage)) = store.load_lineage(&name) else {
                continue;
            };
            if let Ok(Some(facts)) = renewal::read_current(&store, &name) {
                let (next, _) = renewal::stored_schedule(&lineage, &facts);
                // One already due was claimed this round, or is in
                // backoff, or is never ordered (retired): no reason to
                // wake early for it.
                if let Ok(left) = Duration::try_from(next - now)
                    && !left.is_zero()
                {
                    out.insert(name, left);
                }
            }
        }
        out
    })
    .await
    .unwrap_or_default();
    let now = Instant::now();
    let mut wait = ctl.args.check_interval;
    for cert in &world.config.certificates {
        let until = match schedule.not_before(&cert.name) {
            Some(t) => t.saturating_duration_since(now),
            // A certificate the store has no schedule for is looked at
            // every --check-interval.
            None => stored
                .get(&cert.name)
                .copied()
                .unwrap_or(ctl.args.check_interval),
        };
        wait = wait.min(until);
    }
    // Up to 5 % (at most 30 s) later, so that workers sharing a store
    // wake apart.
    let jitter = renewal::random_below((wait / 20).min(Duration::from_secs(30)));
    (wait + jitter).max(MIN_SLEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_with_jitter_up_to_the_cap() {
        let mut s = Schedule::default();
        let check = Duration::from_secs(3600);
        let waits: Vec<Duration> = (0..20).map(|_| s.failed("a", check)).collect();
        for (i, w) in waits.iter().take(5).enumerate() {
            let full = BACKOFF_FIRST * (1 << i);
            assert!(*w >= full / 2 && *w <= full, "failure {i}: {w:?}");
        }
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(waits.last().is_some_and(|w| *w >= BACKOFF_MAX / 2));
        assert!(s.not_before("a").is_some());
        s.succeeded("a");
        assert!(s.not_before("a").is_none());
        // A short check interval makes the first wait short too (tests).
        let w = s.failed("b", Duration::from_secs(1));
        assert!(w <= Duration::from_secs(1), "{w:?}");
    }

    #[tokio::test]
    async fn health_says_when_the_loop_is_stuck() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Shared {
            store: Store::open(dir.path().join("state")).expect("store"),
            metrics: Metrics::default(),
            heartbeat: Mutex::new(Instant::now()),
            stale_after: Duration::from_millis(200),
        };
        assert_eq!(shared.health().await, Ok(()));
        assert!(
            shared
                .scrape()
                .await
                .is_ok_and(|t| t.contains("certsmith_orders_total"))
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let why = shared.health().await.expect_err("stale");
        assert!(why.contains("the loop has not run"), "{why}");
        shared.beat();
        assert_eq!(shared.health().await, Ok(()));
    }
}
