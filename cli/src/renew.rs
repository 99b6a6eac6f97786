//! `certsmith renew [--cert-name NAME... | --all] [--force]`: renew stored
//! certificates from their `lineage.toml`.
//!
//! Why this module exists: a certificate obtained with `certsmith issue`
//! has no config file entry; its lineage records everything needed to order
//! it again (domains, solver and its non-secret options, key type, CA, CA
//! bundle, account e-mail, deploy hook, renewal margin). Secrets are never
//! stored: the solver reads them again from its environment variables (or
//! `*_FILE`) or from `[solvers.<code>]` of `--config`. A certificate is
//! renewed only when due (expiry rule or ARI) unless `--force`; renewals
//! name the certificate they replace when the CA offers ARI.

use std::collections::BTreeMap;
use std::path::PathBuf;

use certsmith_core::acme::{AccountOptions, AcmeClient};
use certsmith_core::agent::{self, Job, JobError, Settings};
use certsmith_core::config::Config;
use certsmith_core::error::IssueError;
use certsmith_core::store::Lineage;

use crate::dns_args::DnsArgs;
use crate::failure::Failure;
use crate::setup::{self, Session};
use crate::{GlobalArgs, exit, summary};

/// Renew stored certificates that are due (or all, with --force).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["names", "all"])))]
pub(crate) struct RenewArgs {
    /// The certificate to renew (repeatable).
    #[arg(long = "cert-name", value_name = "NAME")]
    names: Vec<String>,
    /// Every certificate in the state directory.
    #[arg(long)]
    all: bool,
    /// Renew even if not due.
    #[arg(long)]
    force: bool,
    /// Sleep a random time of up to SECS first (for scheduled runs).
    #[arg(long, value_name = "SECS")]
    jitter: Option<u64>,
    /// The hooks (each recorded in place of the one recorded at issuance).
    #[command(flatten)]
    hooks: crate::hook_args::HookArgs,
    /// Extra CA certificates (PEM) for the CA's HTTPS [default: the one
    /// recorded at issuance].
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Agree to the CA's terms of service, should the account have to be
    /// created again.
    #[arg(
        long,
        env = "CERTSMITH_AGREE_TOS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    agree_tos: bool,
    /// At most this many orders at once [default: the config's concurrency, else 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: Option<u32>,
    /// A solver option for this run, naming its solver (repeatable): e.g.
    /// a secret that is not stored; wins over the environment and the
    /// config file.
    #[arg(long = "solver-opt", value_name = "CODE:KEY=VALUE", value_parser = setup::parse_coded_opt)]
    solver_opts: Vec<setup::CodedOpt>,
    #[command(flatten)]
    dry_run: crate::dry_run::DryRunArgs,
    #[command(flatten)]
    dns: DnsArgs,
}

/// Certificates that share a CA, CA bundle and account: one engine.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    server: String,
    ca_cert: Option<PathBuf>,
    email: Option<String>,
}

pub(crate) async fn run(global: &GlobalArgs, args: RenewArgs) -> u8 {
    let config = match setup::load_config(global) {
        Ok(c) => c,
        Err(e) => return setup::report_config_errors(global, &e),
    };
    let config = config.as_ref();
    // A dry run reads the state directory and writes nothing to it.
    let dry_run = args.dry_run.dry_run;
    let opened = if dry_run {
        crate::dry_run::planning_store(global, config)
    } else {
        setup::open_store(global, config).map(|s| (s, None))
    };
    let (store, _planned_on) = match opened {
        Ok(s) => s,
        Err(f) => return f.report(global, None),
    };
    let host = setup::plugin_host(global, config);
    let mut options = setup::agent_options(store.clone(), host, config, &args.dns);
    options.solver_opts = setup::solver_opts_by_code(&args.solver_opts);
    if let Some(c) = args.concurrency {
        options.concurrency = c as usize;
    }
    // A stored certificate has no entry of its own in the config file: the
    // file's default check applies to all of them (the flag still wins).
    if options.dns.propagation_check.is_none() {
        options.dns.propagation_check = config.and_then(|c| c.defaults.propagation_check);
    }
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
    // A dry run's test orders: into a store thrown away afterwards.
    let scratch = if dry_run {
        match crate::dry_run::Scratch::new() {
            Ok(s) => Some(s),
            Err(f) => {
                session.finish().await;
                return f.report(global, None);
            }
        }
    } else {
        None
    };
    let trial = scratch.as_ref().map(|s| agent.trial(s.store.clone()));
    let mut tests: Vec<Job> = Vec::new();
    let mut staging_url = String::new();
    let stored = match store.cert_names() {
        Ok(n) => n,
        Err(e) => {
            session.finish().await;
            return Failure::from(e).report(global, None);
        }
    };
    let names = if args.all {
        stored.clone()
    } else {
        for n in &args.names {
            if !stored.contains(n) {
                let hint = if stored.is_empty() {
                    format!("{} holds no certificate yet", store.location())
                } else {
                    format!("stored certificates: {}", stored.join(", "))
                };
                session.finish().await;
                return Failure::usage(
                    format!("no certificate named '{n}' in {}", store.location()),
                    Some(&hint),
                )
                .report(global, None);
            }
        }
        args.names.clone()
    };
    if names.is_empty() {
        session.finish().await;
        if !global.quiet {
            eprintln!("[certsmith] no certificates in {}", store.location());
        }
        return exit::OK;
    }
    setup::jitter(args.jitter, global.quiet).await;

    let mut groups: BTreeMap<GroupKey, Vec<(String, Lineage)>> = BTreeMap::new();
    let mut jobs: Vec<Job> = Vec::new();
    for name in names {
        match store.load_lineage(&name) {
            Ok(Some(l)) => {
                let key = GroupKey {
                    server: l.server.clone(),
                    ca_cert: args
                        .ca_cert
                        .clone()
                        .or_else(|| l.ca_cert.as_ref().map(PathBuf::from)),
                    email: l.email.clone(),
                };
                groups.entry(key).or_default().push((name, l));
            }
            Ok(None) => {
                let mut job = Job::new(name.clone(), Vec::new());
                job.fail(JobError::Invalid {
                    message: format!("'{name}' has no lineage"),
                });
                jobs.push(job);
                tests.push(not_tried(&name));
            }
            Err(e) => {
                let mut job = Job::new(name.clone(), Vec::new());
                job.fail(IssueError::from(e).into());
                jobs.push(job);
                tests.push(not_tried(&name));
            }
        }
    }

    let mut interrupted = false;
    for (key, members) in groups {
        let ready = AcmeClient::new(&key.server, key.ca_cert.as_deref())
            .map_err(JobError::from)
            .and_then(|client| {
                eab_account(config, key.email.clone(), args.agree_tos).map(|a| (client, a))
            });
        let (client, account) = match ready {
            Ok(r) => r,
            Err(e) => {
                for (name, l) in members {
                    tests.push(not_tried(&name));
                    let mut job = Job::new(name, l.domains.clone());
                    job.fail(e.clone());
                    jobs.push(job);
                }
                continue;
            }
        };
        let staging = match &trial {
            Some(_) => match args.dry_run.client(&client, key.ca_cert.as_deref()) {
                Ok(c) => Some(c),
                Err(f) => {
                    drop(trial);
                    session.finish().await;
                    return f.report(global, None);
                }
            },
            None => None,
        };
        let mut group_jobs = Vec::new();
        let mut test_jobs = Vec::new();
        for (name, lineage) in members {
            // Each hook: the flag, else the one recorded at issuance.
            let hooks = &args.hooks;
            let settings = Settings::new(
                key.ca_cert.clone(),
                key.email.clone(),
                hooks
                    .deploy_hook
                    .clone()
                    .or_else(|| lineage.deploy_hook.clone()),
                hooks
                    .hook_timeout
                    .or_else(|| agent::lineage_hook_timeout(&name, &lineage))
                    .or_else(|| config.and_then(|c| c.defaults.deploy_hook_timeout)),
                None,
            )
            .with_hooks(
                hooks.pre_hook.clone().or_else(|| lineage.pre_hook.clone()),
                hooks
                    .post_hook
                    .clone()
                    .or_else(|| lineage.post_hook.clone()),
            );
            // Options: the config file's [solvers.<code>] (where secrets
            // may be), then what was recorded for this certificate.
            let table = config
                .and_then(|c| c.solvers.get(&lineage.solver))
                .map(|t| t.options.clone())
                .unwrap_or_default();
            let job = agent
                .plan_stored(
                    &name,
                    &lineage,
                    table.clone(),
                    settings.clone(),
                    &client,
                    args.force,
                )
                .await;
            group_jobs.push(job);
            if let (Some(trial), Some(staging)) = (&trial, &staging) {
                test_jobs.push(
                    trial
                        .plan_stored(&name, &lineage, table, settings, staging, true)
                        .await,
                );
            }
        }
        match (&trial, &staging) {
            (Some(trial), Some(staging)) => {
                interrupted |= trial.execute(staging, &account, &mut test_jobs).await;
                staging_url = staging.directory_url().to_owned();
                tests.extend(test_jobs);
            }
            _ => interrupted |= agent.execute(&client, &account, &mut group_jobs).await,
        }
        jobs.extend(group_jobs);
        if interrupted {
            break;
        }
    }
    let dry_run = trial.is_some();
    drop(trial);
    session.finish().await;
    if dry_run {
        return crate::dry_run::report(global, &staging_url, &jobs, &tests, interrupted, true);
    }
    summary::summarize(global, &jobs, interrupted)
}

/// The test order of a certificate a dry run could not try (its real
/// plan failed first; the report shows that failure).
fn not_tried(name: &str) -> Job {
    let mut job = Job::new(name.to_owned(), Vec::new());
    job.fail(JobError::NotAttempted);
    job
}

/// Account options for a lineage's contact: EAB from the environment or
/// the config; the contact as recorded, used only if the CA's account must
/// be created (a renewal never changes the contact of the CA's account).
fn eab_account(
    config: Option<&Config>,
    email: Option<String>,
    agree_tos: bool,
) -> Result<AccountOptions, JobError> {
    let mut opts = agent::account_options(
        config.map(|c| &c.defaults),
        agent::AccountFlags::email(email.clone()),
    )?;
    opts.email = email;
    opts.set_contact = false;
    opts.agree_tos |= agree_tos;
    Ok(opts)
}
