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
use certsmith_core::config::{self, Config};
use certsmith_core::engine::{self, CancelToken, CertRequest};
use certsmith_core::error::IssueError;
use certsmith_core::identifiers;
use certsmith_core::keys::KeyType;
use certsmith_core::plugin::PluginHost;
use certsmith_core::renewal;
use certsmith_core::store::{Lineage, Store};

use crate::common::{self, Batch, Failure, Job, Plan, Settings};
use crate::dns_args::DnsArgs;
use crate::{GlobalArgs, exit};

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
    /// Run this command after each renewal, and record it in place of the
    /// hook recorded at issuance.
    #[arg(long, value_name = "CMD")]
    deploy_hook: Option<String>,
    /// Extra CA certificates (PEM) for the CA's HTTPS [default: the one
    /// recorded at issuance].
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Agree to the CA's terms of service, should the account have to be
    /// created again.
    #[arg(long)]
    agree_tos: bool,
    /// At most this many orders at once [default: the config's concurrency, else 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: Option<u32>,
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
    let config = match common::load_config(global) {
        Ok(c) => c,
        Err(e) => return common::report_config_errors(global, &e),
    };
    let config = config.as_ref();
    let (store, _run_lock, journal) = match common::open_batch_state(global, config).await {
        Ok(s) => s,
        Err(f) => return f.report(global),
    };
    let stored = match store.cert_names() {
        Ok(n) => n,
        Err(e) => return Failure::from_issue(&IssueError::from(e)).report(global),
    };
    let names = if args.all {
        stored.clone()
    } else {
        for n in &args.names {
            if !stored.contains(n) {
                let hint = if stored.is_empty() {
                    format!("{} holds no certificate yet", store.root().display())
                } else {
                    format!("stored certificates: {}", stored.join(", "))
                };
                return Failure::usage(
                    format!("no certificate named '{n}' in {}", store.root().display()),
                    Some(&hint),
                )
                .report(global);
            }
        }
        args.names.clone()
    };
    if names.is_empty() {
        if !global.quiet {
            eprintln!("[certsmith] no certificates in {}", store.root().display());
        }
        return exit::OK;
    }
    common::jitter(args.jitter, global.quiet).await;

    let host = common::plugin_host(global, config);
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
                job.failed(Failure::usage(
                    format!("'{name}' has no lineage.toml"),
                    None,
                ));
                jobs.push(job);
            }
            Err(e) => {
                let mut job = Job::new(name, Vec::new());
                job.failed(Failure::from_issue(&IssueError::from(e)));
                jobs.push(job);
            }
        }
    }

    let cancel = CancelToken::new();
    let signals = crate::issue::watch_signals(cancel.clone(), global.quiet);
    let mut interrupted = false;
    let mut solvers = common::Solvers::default();
    for (key, members) in groups {
        let client = match AcmeClient::new(&key.server, key.ca_cert.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                let f = Failure::from_issue(&e);
                for (name, l) in members {
                    let mut job = Job::new(name, l.domains.clone());
                    job.failed(f.clone());
                    jobs.push(job);
                }
                continue;
            }
        };
        let account = match eab_account(config, key.email.clone(), args.agree_tos) {
            Ok(a) => a,
            Err(f) => {
                for (name, l) in members {
                    let mut job = Job::new(name, l.domains.clone());
                    job.failed(f.clone());
                    jobs.push(job);
                }
                continue;
            }
        };
        let mut group_jobs = Vec::new();
        for (name, lineage) in members {
            let job = plan(
                &args,
                config,
                &host,
                &mut solvers,
                &store,
                &client,
                &key,
                name,
                &lineage,
            )
            .await;
            group_jobs.push(job);
        }
        interrupted |= common::execute(
            Batch {
                global,
                client,
                store: store.clone(),
                account,
                journal: journal.clone(),
                host: &host,
                solver_tables: config.map(Config::solvers_table).unwrap_or_default(),
                dns: common::dns_options(&args.dns, config),
                concurrency: args
                    .concurrency
                    .map(|c| c as usize)
                    .or_else(|| config.and_then(|c| c.defaults.concurrency))
                    .unwrap_or(engine::DEFAULT_CONCURRENCY),
                cancel: cancel.clone(),
            },
            &mut group_jobs,
        )
        .await;
        jobs.extend(group_jobs);
        if interrupted {
            break;
        }
    }
    signals.abort();
    common::summarize(global, &jobs, interrupted)
}

/// Account options for a lineage's contact: EAB from the environment or
/// the config; the contact exactly as recorded (it selects the account).
fn eab_account(
    config: Option<&Config>,
    email: Option<String>,
    agree_tos: bool,
) -> Result<AccountOptions, Failure> {
    let mut opts = common::account_options(config, email.clone())?;
    opts.email = email;
    opts.agree_tos |= agree_tos;
    Ok(opts)
}

#[allow(clippy::too_many_arguments)]
async fn plan(
    args: &RenewArgs,
    config: Option<&Config>,
    host: &PluginHost,
    solvers: &mut common::Solvers,
    store: &Store,
    client: &AcmeClient,
    key: &GroupKey,
    name: String,
    lineage: &Lineage,
) -> Job {
    let mut job = Job::new(name.clone(), lineage.domains.clone());
    let renew_before = match lineage.renew_before.as_deref().map(config::parse_duration) {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            log::warn!("{name}: renew_before in lineage.toml: {e}; using 1/3 of the lifetime");
            None
        }
        None => None,
    };
    job.settings = Settings {
        ca_cert: key.ca_cert.clone(),
        email: key.email.clone(),
        deploy_hook: args
            .deploy_hook
            .clone()
            .or_else(|| lineage.deploy_hook.clone()),
        hook_timeout: config.and_then(|c| c.defaults.deploy_hook_timeout),
        renew_before,
    };
    let domains = match identifiers::parse_domains(&lineage.domains) {
        Ok(d) => d,
        Err(e) => {
            job.failed(Failure::from_issue(&e.into()));
            return job;
        }
    };
    let key_type = match lineage.key_type.parse::<KeyType>() {
        Ok(k) => k,
        Err(e) => {
            job.failed(Failure::usage(
                format!("{name}: lineage.toml: {e}"),
                Some("fix key_type in lineage.toml"),
            ));
            return job;
        }
    };
    // Options: the config file's [solvers.<code>] (where secrets may be),
    // then what was recorded for this certificate.
    let mut table = config
        .and_then(|c| c.solvers.get(&lineage.solver))
        .map(|t| t.options.clone())
        .unwrap_or_default();
    for (k, v) in &lineage.solver_options {
        table.insert(k.clone(), v.clone());
    }
    let solver = match solvers.get(host, &lineage.solver, &table) {
        Ok(s) => s,
        Err(f) => {
            job.failed(f);
            return job;
        }
    };
    let request = CertRequest {
        name: name.clone(),
        domains,
        solver,
        key_type,
        replaces: None,
    };
    if let Err(e) = engine::check_request(&request) {
        job.failed(Failure::from_issue(&e));
        return job;
    }
    let facts = match renewal::read_current(store, &name) {
        Ok(Some(f)) => f,
        Ok(None) => {
            job.plan = Ok(Plan::Issue("no current version".to_owned()));
            job.request = Some(request);
            return job;
        }
        Err(e) => {
            log::warn!("{e}; ordering a new certificate");
            job.plan = Ok(Plan::Issue("the current version is unreadable".to_owned()));
            job.request = Some(request);
            return job;
        }
    };
    job.facts = Some(facts.clone());
    if lineage
        .revoked
        .as_ref()
        .is_some_and(|r| r.serial == facts.serial)
    {
        job.plan = Ok(Plan::Issue("the current version is revoked".to_owned()));
        job.request = Some(request);
        return job;
    }
    let decision = common::plan_existing(
        store,
        client,
        &name,
        &facts,
        lineage,
        renew_before,
        args.force,
    )
    .await;
    job.set_plan(decision, client, &facts, request).await;
    job
}
