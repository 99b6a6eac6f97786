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
use certsmith_core::agent;
use certsmith_core::config::Config;

use crate::dns_args::DnsArgs;
use crate::failure::Failure;
use crate::setup::{self, Session};
use crate::{GlobalArgs, exit, summary};

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
        .report(global, None);
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return setup::report_config_errors(global, &e),
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
            .report(global, None);
        }
    }
    setup::jitter(args.jitter, global.quiet).await;

    let store = match setup::open_store(global, Some(&config)) {
        Ok(s) => s,
        Err(f) => return f.report(global, None),
    };
    let server = config
        .defaults
        .server
        .clone()
        .unwrap_or_else(|| "letsencrypt".to_owned());
    let client = match AcmeClient::new(&server, config.defaults.ca_cert.as_deref()) {
        Ok(c) => c,
        Err(e) => return Failure::from_issue(&e).report(global, None),
    };
    let account = match agent::account_options(Some(&config.defaults), None) {
        Ok(a) => a,
        Err(e) => return summary::account_failure(e).report(global, None),
    };
    let host = setup::plugin_host(global, Some(&config));
    let session = Session::start(
        global,
        setup::agent_options(store, host, Some(&config), &args.dns),
    );
    let agent = &session.agent;
    let _lease = match agent.lease_run().await {
        Ok(l) => l,
        Err(e) => {
            session.finish().await;
            return Failure::from(e).report(global, None);
        }
    };

    let mut jobs = Vec::new();
    for cert in &config.certificates {
        if !args.only.is_empty() && !args.only.contains(&cert.name) {
            continue;
        }
        jobs.push(
            agent
                .plan_configured(&config, cert, &client, args.force)
                .await,
        );
    }
    let interrupted = agent.execute(&client, &account, &mut jobs).await;
    session.finish().await;
    if jobs.is_empty() {
        eprintln!("[certsmith] {} lists no certificate", path.display());
        return exit::OK;
    }
    summary::summarize(global, &jobs, interrupted)
}
