//! `certsmith run --config certsmith.toml`: bring every certificate in the
//! file to the state the file describes.
//!
//! Why this module exists: it is what cron, systemd timers and CI call. It
//! must be safe to run at any time and as often as wanted: a certificate is
//! ordered only when it is missing, when its domains, key type or CA
//! changed, when it was revoked, or when it is due (expiry rule or the CA's
//! ARI window, see `certsmith_core::renewal`); otherwise nothing is sent to
//! the CA. Orders run concurrently (bounded by `concurrency`), one failure
//! never stops the others, and the exit code says whether everything
//! worked (0) or what failed (`crate::exit`; partial failure is 8).

use certsmith_core::acme::AcmeClient;
use certsmith_core::config::Config;
use certsmith_core::engine::{self, CancelToken, CertRequest};
use certsmith_core::error::IssueError;
use certsmith_core::renewal;

use crate::common::{self, Batch, Failure, Job, Plan, Settings};
use crate::dns_args::DnsArgs;
use crate::{GlobalArgs, exit};

/// Issue or renew every certificate of the config file that needs it.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Only this certificate of the file (repeatable).
    #[arg(long = "cert-name", value_name = "NAME")]
    only: Vec<String>,
    /// Renew every certificate now, due or not.
    #[arg(long)]
    force: bool,
    /// Sleep a random time of up to SECS first (spreads fleets of timers).
    #[arg(long, value_name = "SECS")]
    jitter: Option<u64>,
    #[command(flatten)]
    dns: DnsArgs,
}

pub(crate) async fn run(global: &GlobalArgs, args: RunArgs) -> u8 {
    let Some(path) = &global.config else {
        return Failure::usage(
            "`certsmith run` needs a config file",
            Some("pass --config certsmith.toml (see contrib/certsmith.toml for an example)"),
        )
        .report(global);
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return common::report_config_errors(global, &e),
    };
    for name in &args.only {
        if config.certificate(name).is_none() {
            let names: Vec<&str> = config
                .certificates
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Failure::usage(
                format!("{} has no certificate named '{name}'", path.display()),
                Some(&format!("certificates in the file: {}", names.join(", "))),
            )
            .report(global);
        }
    }
    common::jitter(args.jitter, global.quiet).await;

    let (store, _run_lock, journal) = match common::open_batch_state(global, Some(&config)).await {
        Ok(s) => s,
        Err(f) => return f.report(global),
    };
    let server = config
        .defaults
        .server
        .clone()
        .unwrap_or_else(|| "letsencrypt".to_owned());
    let client = match AcmeClient::new(&server, config.defaults.ca_cert.as_deref()) {
        Ok(c) => c,
        Err(e) => return Failure::from_issue(&e).report(global),
    };
    let account = match common::account_options(Some(&config), None) {
        Ok(a) => a,
        Err(f) => return f.report(global),
    };
    let host = common::plugin_host(global, Some(&config));

    let mut jobs = Vec::new();
    let mut solvers = common::Solvers::default();
    for cert in &config.certificates {
        if !args.only.is_empty() && !args.only.contains(&cert.name) {
            continue;
        }
        jobs.push(
            plan(
                &config,
                cert,
                &host,
                &mut solvers,
                &store,
                &client,
                args.force,
            )
            .await,
        );
    }

    let cancel = CancelToken::new();
    let signals = crate::issue::watch_signals(cancel.clone(), global.quiet);
    let interrupted = common::execute(
        Batch {
            global,
            client,
            store,
            account,
            journal,
            host: &host,
            solver_tables: config.solvers_table(),
            dns: common::dns_options(&args.dns, Some(&config)),
            concurrency: config
                .defaults
                .concurrency
                .unwrap_or(engine::DEFAULT_CONCURRENCY),
            cancel,
        },
        &mut jobs,
    )
    .await;
    signals.abort();
    if jobs.is_empty() {
        eprintln!("[certsmith] {} lists no certificate", path.display());
        return exit::OK;
    }
    common::summarize(global, &jobs, interrupted)
}

/// What to do with one `[[certificate]]`.
async fn plan(
    config: &Config,
    cert: &certsmith_core::config::CertificateConfig,
    host: &certsmith_core::plugin::PluginHost,
    solvers: &mut common::Solvers,
    store: &certsmith_core::store::Store,
    client: &AcmeClient,
    force: bool,
) -> Job {
    let mut job = Job::new(cert.name.clone(), cert.domain_names());
    job.settings = Settings {
        ca_cert: config.defaults.ca_cert.clone(),
        email: config.defaults.email.clone(),
        deploy_hook: config.deploy_hook(cert),
        hook_timeout: config.defaults.deploy_hook_timeout,
        renew_before: config.renew_before(cert),
    };
    // The solver, configured: secrets come from the environment or the
    // file now, never from the store.
    let solver = match solvers.get(host, &cert.solver, &config.solver_table(cert)) {
        Ok(s) => s,
        Err(mut f) => {
            f.message = format!("{} ({}): {}", cert.key("solver"), cert.solver, f.message);
            job.failed(f);
            return job;
        }
    };
    let request = CertRequest {
        name: cert.name.clone(),
        domains: cert.domains.clone(),
        solver,
        key_type: cert.key_type,
        replaces: None,
    };
    if let Err(e) = engine::check_request(&request) {
        job.failed(Failure::from_issue(&e));
        return job;
    }

    let lineage = match store.load_lineage(&cert.name) {
        Ok(l) => l,
        Err(e) => {
            job.failed(Failure::from_issue(&IssueError::from(e)));
            return job;
        }
    };
    let facts = match renewal::read_current(store, &cert.name) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("{e}; ordering a new certificate");
            None
        }
    };
    let (Some(lineage), Some(facts)) = (lineage, facts) else {
        job.plan = Ok(Plan::Issue("new".to_owned()));
        job.request = Some(request);
        return job;
    };
    let changes = renewal::changes(
        &lineage,
        &cert.domain_names(),
        cert.key_type,
        client.directory_url(),
    );
    let revoked = lineage
        .revoked
        .as_ref()
        .is_some_and(|r| r.serial == facts.serial);
    job.facts = Some(facts.clone());
    if !changes.is_empty() {
        let why: Vec<String> = changes.iter().map(ToString::to_string).collect();
        job.plan = Ok(Plan::Issue(why.join("; ")));
        job.request = Some(request);
        return job;
    }
    if revoked {
        job.plan = Ok(Plan::Issue("the current version is revoked".to_owned()));
        job.request = Some(request);
        return job;
    }
    let decision = common::plan_existing(
        store,
        client,
        &cert.name,
        &facts,
        &lineage,
        config.renew_before(cert),
        force,
    )
    .await;
    job.set_plan(decision, client, &facts, request).await;
    job
}
