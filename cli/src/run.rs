//! `certsmith run`: bring every certificate in the config file (see
//! `setup::find_config` for where it is found) to the state the file
//! describes.
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
    /// A solver option for this run, naming its solver (repeatable): e.g.
    /// a secret that is not stored; wins over the environment and the
    /// config file.
    #[arg(long = "solver-opt", value_name = "CODE:KEY=VALUE", value_parser = setup::parse_coded_opt)]
    solver_opts: Vec<setup::CodedOpt>,
    #[command(flatten)]
    hooks: crate::hook_args::HookArgs,
    #[command(flatten)]
    dry_run: crate::dry_run::DryRunArgs,
    #[command(flatten)]
    dns: DnsArgs,
}

pub(crate) async fn run(global: &GlobalArgs, args: RunArgs) -> u8 {
    let (path, mut config) = match setup::require_config(global, "run") {
        Ok(found) => found,
        Err(code) => return code,
    };
    // The hook flags win over every certificate's hooks and [defaults].
    for cert in &mut config.certificates {
        args.hooks.apply(cert);
    }
    let path = &path;
    if !global.quiet {
        for w in issue_only_variables(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty())) {
            eprintln!("{w}");
        }
    }
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

    // A dry run reads the state directory and writes nothing to it.
    let dry_run = args.dry_run.dry_run;
    let opened = if dry_run {
        crate::dry_run::planning_store(global, Some(&config))
    } else {
        setup::open_store(global, Some(&config)).map(|s| (s, None))
    };
    let (store, _planned_on) = match opened {
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
    let staging = if dry_run {
        match args
            .dry_run
            .client(&client, config.defaults.ca_cert.as_deref())
        {
            Ok(c) => Some(c),
            Err(f) => return f.report(global, None),
        }
    } else {
        None
    };
    let account =
        match agent::account_options(Some(&config.defaults), agent::AccountFlags::default()) {
            Ok(a) => a,
            Err(e) => return summary::account_failure(e).report(global, None),
        };
    let host = setup::plugin_host(global, Some(&config));
    let mut options = setup::agent_options(store, host, Some(&config), &args.dns);
    options.solver_opts = setup::solver_opts_by_code(&args.solver_opts);
    options.dry_run = dry_run;
    // A dry run takes no lease: it writes nothing a batch could race with.
    let (session, _lease) = if dry_run {
        (Session::start(global, options), None)
    } else {
        match Session::start_batch(global, options).await {
            Ok((s, lease)) => (s, Some(lease)),
            Err(code) => return code,
        }
    };
    let agent = &session.agent;

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
    if let Some(staging) = staging {
        // What a real run would do is `jobs`; the test orders go to the
        // staging CA, into a store thrown away afterwards.
        let scratch = match crate::dry_run::Scratch::new() {
            Ok(s) => s,
            Err(f) => {
                session.finish().await;
                return f.report(global, None);
            }
        };
        let trial = agent.trial(scratch.store.clone());
        let mut tests = Vec::new();
        for cert in &config.certificates {
            if args.only.is_empty() || args.only.contains(&cert.name) {
                tests.push(trial.plan_configured(&config, cert, &staging, true).await);
            }
        }
        let interrupted = trial.execute(&staging, &account, &mut tests).await;
        drop(trial);
        session.finish().await;
        let server = staging.directory_url().to_owned();
        return crate::dry_run::report(global, &server, &jobs, &tests, interrupted, true);
    }
    let interrupted = agent.execute(&client, &account, &mut jobs).await;
    session.finish().await;
    if jobs.is_empty() {
        eprintln!("[certsmith] {} lists no certificate", path.display());
        return exit::OK;
    }
    summary::summarize(global, &jobs, interrupted)
}

/// Warnings for the variables of `issue` options that are set (`is_set`)
/// although `run` takes those settings from the config file only: a
/// variable that changed the CA or the account of every certificate in
/// the file would reissue them all, so it is not applied, but neither is
/// it ignored silently.
fn issue_only_variables(is_set: impl Fn(&str) -> bool) -> Vec<String> {
    [
        ("CERTSMITH_SERVER", "server"),
        ("CERTSMITH_EMAIL", "email"),
        ("CERTSMITH_AGREE_TOS", "agree_tos"),
        ("CERTSMITH_CA_CERT", "ca_cert"),
        ("CERTSMITH_KEY_TYPE", "key_type"),
        ("CERTSMITH_SOLVER", "solver"),
    ]
    .into_iter()
    .filter(|(var, _)| is_set(var))
    .map(|(var, key)| {
        format!(
            "warning: {var} is not used by `certsmith run`, which takes `{key}` from the config file"
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn issue_variables_set_for_run_are_named() {
        let w = super::issue_only_variables(|k| k == "CERTSMITH_SERVER");
        assert_eq!(
            w,
            [
                "warning: CERTSMITH_SERVER is not used by `certsmith run`, which takes `server` from the config file"
            ]
        );
        assert!(super::issue_only_variables(|_| false).is_empty());
    }
}
