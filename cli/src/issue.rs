//! `certsmith issue`: obtain one certificate now.
//!
//! Why this module exists: it is the operator's front door to the engine.
//! Its job is to check *everything* that can be checked locally before the
//! first request reaches the CA (domain syntax, wildcard versus solver,
//! solver found and configured, state directory writable, server URL,
//! `--ca-cert`, EAB), then run one order, show its progress on stderr, print
//! the result on stdout (text or one JSON object), and exit with the code of
//! the failure class ([`crate::exit`]). Ctrl-C cancels the order, waits for
//! the solver to clean up what it presented, and exits with 130.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use certsmith_core::acme::{AccountOptions, AcmeClient};
use certsmith_core::agent::{
    CERT_LEASE_TTL, Job, JobError, Plan, RUN_LEASE_WAIT, RequestMode, Settings, WantedCert,
};
use certsmith_core::dns::PropagationCheck;
use certsmith_core::engine::{self, CertRequest, IssuedCert, OrderOptions};
use certsmith_core::error::IssueError;
use certsmith_core::identifiers;
use certsmith_core::keys::{self, KeyType};
use certsmith_core::plugin::parse_solver_opt;
use certsmith_core::store;
use certsmith_core::timefmt::rfc3339;
use certsmith_plugin_api::ChallengeType;
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_json};
use crate::setup::{self, Session};
use crate::{GlobalArgs, OutputFormat, exit};

/// `--key-type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KeyTypeArg {
    /// ECDSA P-256 (default).
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// RSA 2048-bit.
    Rsa2048,
    /// RSA 3072-bit.
    Rsa3072,
    /// RSA 4096-bit.
    Rsa4096,
}

impl From<KeyTypeArg> for KeyType {
    fn from(k: KeyTypeArg) -> KeyType {
        match k {
            KeyTypeArg::EcP256 => KeyType::EcP256,
            KeyTypeArg::EcP384 => KeyType::EcP384,
            KeyTypeArg::Rsa2048 => KeyType::Rsa2048,
            KeyTypeArg::Rsa3072 => KeyType::Rsa3072,
            KeyTypeArg::Rsa4096 => KeyType::Rsa4096,
        }
    }
}

/// A value that may be a secret: `Debug` shows only that it is set.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One `--solver-opt [SOLVER:]KEY=VALUE` (the solver: the default
/// `--solver` when left out); `Debug` shows the key only (values may be
/// API tokens).
#[derive(Clone)]
pub(crate) struct SolverOpt(Option<String>, String, String);

impl fmt::Debug for SolverOpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, "{s}:{}=[redacted]", self.1),
            None => write!(f, "{}=[redacted]", self.1),
        }
    }
}

fn parse_opt(arg: &str) -> Result<SolverOpt, String> {
    let (solver, rest) = match arg.split_once('=') {
        Some((k, _)) if k.contains(':') => match arg.split_once(':') {
            Some((s, rest)) if !s.trim().is_empty() => (Some(s.trim().to_owned()), rest),
            _ => return Err(format!("'{arg}': write SOLVER:KEY=VALUE or KEY=VALUE")),
        },
        _ => (None, arg),
    };
    parse_solver_opt(rest)
        .map(|(k, v)| SolverOpt(solver, k, v))
        .map_err(|e| e.to_string())
}

/// One `--solver`: `CODE` (every name without a solver of its own) or
/// `NAME=CODE` (that name); CODE is a plugin code or a `[solvers.<name>]`
/// instance of the config file.
#[derive(Clone, Debug)]
pub(crate) struct SolverArg {
    name: Option<String>,
    solver: String,
}

fn parse_solver_arg(arg: &str) -> Result<SolverArg, String> {
    let (name, solver) = match arg.split_once('=') {
        Some((n, s)) => (Some(n.trim().to_owned()), s.trim()),
        None => (None, arg.trim()),
    };
    if solver.is_empty() || name.as_deref().is_some_and(str::is_empty) {
        return Err(format!(
            "'{arg}': write --solver CODE (every name) or --solver NAME=CODE (one name)"
        ));
    }
    Ok(SolverArg {
        name,
        solver: solver.to_owned(),
    })
}

/// The solver of each name from the `--solver` values: the default (for
/// names not listed) and the solver of each name listed, by identifier.
/// A name listed that is not a `-d` domain, a name listed twice, two
/// defaults, or a name left without a solver is an error naming the fix.
fn solvers_by_name(
    args: &[SolverArg],
    domains: &[identifiers::Identifier],
) -> Result<(Option<String>, BTreeMap<String, String>), Failure> {
    let mut default: Option<String> = None;
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for a in args {
        match &a.name {
            None => {
                if let Some(d) = &default {
                    return Err(Failure::usage(
                        format!(
                            "two default solvers: --solver {d} and --solver {}",
                            a.solver
                        ),
                        Some(
                            "give one --solver CODE for every name, and --solver NAME=CODE for the names that need another",
                        ),
                    ));
                }
                default = Some(a.solver.clone());
            }
            Some(name) => {
                let id = identifiers::parse_domains(std::slice::from_ref(name))
                    .ok()
                    .and_then(|mut v| v.pop())
                    .filter(|id| domains.iter().any(|d| d.as_str() == id.as_str()))
                    .ok_or_else(|| {
                        Failure::usage(
                            format!("--solver {name}={}: '{name}' is not one of the -d/--domain names", a.solver),
                            Some("the NAME of --solver NAME=CODE is a -d name, written the same way (\"*.example.com\" for the wildcard)"),
                        )
                    })?;
                if by_name
                    .insert(id.as_str().to_owned(), a.solver.clone())
                    .is_some()
                {
                    return Err(Failure::usage(
                        format!("--solver gives '{name}' two solvers"),
                        Some("give each name one --solver NAME=CODE"),
                    ));
                }
            }
        }
    }
    let missing: Vec<&str> = domains
        .iter()
        .map(|d| d.as_str())
        .filter(|d| !by_name.contains_key(*d))
        .collect();
    if default.is_none() && !missing.is_empty() {
        return Err(Failure::usage(
            format!(
                "no solver for {}",
                missing
                    .iter()
                    .map(|d| format!("'{d}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(&format!(
                "pass --solver {}=CODE, or --solver CODE for every name without its own",
                missing[0]
            )),
        ));
    }
    Ok((default, by_name))
}

/// Obtain a certificate now.
#[derive(Debug, clap::Args)]
pub(crate) struct IssueArgs {
    /// A domain to include (repeatable); `*.example.com` for a wildcard,
    /// an IPv4 or IPv6 address for an IP certificate (RFC 8738).
    #[arg(
        short = 'd',
        long = "domain",
        value_name = "DOMAIN",
        required_unless_present = "csr"
    )]
    domains: Vec<String>,
    /// Order with your own certificate signing request (PEM or DER): the
    /// names come from it (-d, if given too, must be the same), the
    /// private key stays with you (no privkey.pem is written) and the
    /// key type is the CSR's. The CSR is stored and sent again at renewal.
    #[arg(long, value_name = "FILE", conflicts_with = "reuse_key")]
    csr: Option<PathBuf>,
    /// The solver plugin that answers the challenges (`certsmith solvers
    /// list`), or a [solvers.<name>] instance of the config file;
    /// repeatable: `--solver CODE` for every name, `--solver NAME=CODE` for
    /// one name (e.g. `--solver '*.example.com=rfc2136' --solver webroot`).
    #[arg(long, value_name = "[NAME=]CODE", env = "CERTSMITH_SOLVER", required = true,
          value_parser = parse_solver_arg)]
    solver: Vec<SolverArg>,
    /// A solver option (repeatable), for the default --solver;
    /// `SOLVER:KEY=VALUE` for another one; see `certsmith solvers info CODE`.
    #[arg(long = "solver-opt", value_name = "KEY=VALUE", value_parser = parse_opt)]
    solver_opts: Vec<SolverOpt>,
    /// The certificate's name in the store [default: the first domain;
    /// `_.example.com` for a wildcard `*.example.com` without its apex].
    #[arg(long, value_name = "NAME")]
    cert_name: Option<String>,
    /// The CA: letsencrypt, letsencrypt-staging, zerossl, or an ACME
    /// directory URL [default: the config's server, else letsencrypt].
    #[arg(long, value_name = "NAME|URL", env = "CERTSMITH_SERVER")]
    server: Option<String>,
    /// Extra CA certificates (PEM) to trust for the ACME server's HTTPS,
    /// e.g. for a private CA or Pebble.
    #[arg(long, value_name = "PEM", env = "CERTSMITH_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Contact address for the account.
    #[arg(long, value_name = "ADDR", env = "CERTSMITH_EMAIL")]
    email: Option<String>,
    /// Agree to the CA's terms of service (needed to create an account).
    #[arg(
        long,
        env = "CERTSMITH_AGREE_TOS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    agree_tos: bool,
    /// External account binding key id (ZeroSSL, commercial CAs).
    #[arg(long, value_name = "ID", env = "CERTSMITH_EAB_KID")]
    eab_kid: Option<String>,
    /// External account binding HMAC key, base64url.
    #[arg(
        long,
        value_name = "KEY",
        env = "CERTSMITH_EAB_HMAC_KEY",
        hide_env_values = true,
        value_parser = |s: &str| Ok::<_, String>(Secret(s.to_owned()))
    )]
    eab_hmac_key: Option<Secret>,
    /// The certificate's key type.
    #[arg(
        long,
        value_enum,
        value_name = "TYPE",
        default_value_t = KeyTypeArg::EcP256,
        env = "CERTSMITH_KEY_TYPE"
    )]
    key_type: KeyTypeArg,
    /// Order even when the stored certificate of this name is not due.
    #[arg(long)]
    force: bool,
    /// Accept names added to those of the stored certificate of this name.
    #[arg(long, conflicts_with = "replace")]
    expand: bool,
    /// Replace the stored certificate of this name although its names,
    /// key type or CA differ.
    #[arg(long)]
    replace: bool,
    /// At most this many orders at once.
    #[arg(long, value_name = "N", default_value_t = engine::DEFAULT_CONCURRENCY as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// A challenge type to answer: http-01, tls-alpn-01 or dns-01;
    /// repeat it for a preference order (the first the CA offers wins)
    /// [default: http-01, then tls-alpn-01, then dns-01]. Recorded for
    /// `renew`.
    #[arg(long = "challenge", value_name = "TYPE", value_parser = parse_challenge)]
    challenges: Vec<ChallengeType>,
    /// Renewals keep this certificate's private key (for key pinning or
    /// DANE TLSA records) instead of making a new one. Recorded for `renew`.
    #[arg(long)]
    reuse_key: bool,
    /// Among the CA's alternate chains, store the one whose topmost
    /// certificate was issued by this common name (e.g. "ISRG Root X1");
    /// no match keeps the default chain. Recorded for `renew`.
    #[arg(long, value_name = "ISSUER_CN")]
    preferred_chain: Option<String>,
    /// The ACME profile to order (one the CA's directory lists under
    /// meta.profiles, e.g. "shortlived"). Recorded for `renew`.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    #[command(flatten)]
    hooks: crate::hook_args::HookArgs,
    #[command(flatten)]
    dry_run: crate::dry_run::DryRunArgs,
    #[command(flatten)]
    dns: crate::dns_args::DnsArgs,
}

/// Reads `--csr FILE`.
fn read_user_csr(path: &std::path::Path) -> Result<keys::UserCsr, Failure> {
    let bytes = std::fs::read(path).map_err(|e| {
        Failure::usage(
            format!("cannot read --csr {}: {e}", path.display()),
            Some("give the path of a certificate signing request (PEM or DER)"),
        )
    })?;
    keys::read_csr(&bytes).map_err(|e| {
        Failure::usage(
            format!("--csr {}: {e}", path.display()),
            Some("make one with e.g. `openssl req -new -key KEY -subj /CN=example.com -addext subjectAltName=DNS:example.com -out csr.pem`"),
        )
    })
}

/// The names of `csr`, checked like -d names; `domains` (-d), when given,
/// must be the same set.
fn csr_names(
    csr: &keys::UserCsr,
    path: &std::path::Path,
    domains: &[String],
) -> Result<Vec<identifiers::Identifier>, Failure> {
    let names = identifiers::parse_domains(&csr.names).map_err(|e| {
        Failure::usage(
            format!("--csr {}: {e}", path.display()),
            Some("the CSR's subjectAltNames must be DNS names or IP addresses the CA can validate"),
        )
    })?;
    if domains.is_empty() {
        return Ok(names);
    }
    let given = identifiers::parse_domains(domains).map_err(IssueError::from)?;
    let set = |ids: &[identifiers::Identifier]| {
        ids.iter()
            .map(|i| i.as_str().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    if set(&names) != set(&given) {
        return Err(Failure::usage(
            format!(
                "the names of --csr {} ({}) differ from those of -d ({})",
                path.display(),
                set(&names).into_iter().collect::<Vec<_>>().join(", "),
                set(&given).into_iter().collect::<Vec<_>>().join(", ")
            ),
            Some(
                "leave out -d (the names come from the CSR), or make a CSR for exactly the -d names",
            ),
        ));
    }
    Ok(names)
}

/// One `--challenge` value.
fn parse_challenge(s: &str) -> Result<ChallengeType, String> {
    ChallengeType::parse(s)
        .ok_or_else(|| format!("unknown challenge type '{s}'; use http-01, tls-alpn-01 or dns-01"))
}

/// The order options of the flags, checked: no challenge type twice, no
/// empty name.
fn order_options(args: &IssueArgs) -> Result<OrderOptions, Failure> {
    let mut order = OrderOptions::default();
    for &c in &args.challenges {
        if order.challenges.contains(&c) {
            return Err(Failure::usage(
                format!("--challenge {c} is given twice"),
                Some("give each challenge type once, most preferred first"),
            ));
        }
        order.challenges.push(c);
    }
    order.reuse_key = args.reuse_key;
    let named =
        |flag: &str, v: &Option<String>, hint: &'static str| match v.as_deref().map(str::trim) {
            Some("") => Err(Failure::usage(format!("{flag} is empty"), Some(hint))),
            other => Ok(other.map(str::to_owned)),
        };
    order.preferred_chain = named(
        "--preferred-chain",
        &args.preferred_chain,
        "give the issuer common name of the chain wanted, e.g. --preferred-chain \"ISRG Root X1\"",
    )?;
    order.profile = named(
        "--profile",
        &args.profile,
        "name one of the CA's profiles, e.g. --profile shortlived",
    )?;
    Ok(order)
}

/// Everything checked and ready, before any network traffic.
struct Prepared {
    wanted: WantedCert,
    /// The default solver's (name, plugin code, `[solvers.<name>]` table),
    /// and those of each name with its own, by identifier: configured only
    /// when an order is planned.
    solver: Option<(String, String, toml::Table)>,
    name_solvers: BTreeMap<String, (String, String, toml::Table)>,
    propagation_check: Option<PropagationCheck>,
    order: OrderOptions,
    max_names: usize,
    client: AcmeClient,
    account: AccountOptions,
    session: Session,
    ca_cert: Option<PathBuf>,
    /// The hooks: the flags, else the config's `[defaults]`.
    hooks: crate::hook_args::HookArgs,
    /// A dry run's client (the staging CA), and the empty store it plans
    /// against when the state directory does not exist.
    dry_run: Option<(AcmeClient, Option<crate::dry_run::Scratch>)>,
}

fn prepare(global: &GlobalArgs, args: &IssueArgs) -> Result<Prepared, Failure> {
    // 1. The names: from -d, or from --csr (then -d must agree).
    let mut order = order_options(args)?;
    let (domains, key_type) = match &args.csr {
        Some(path) => {
            let csr = read_user_csr(path)?;
            let domains = csr_names(&csr, path, &args.domains)?;
            let key_type = csr.key_type;
            order.csr = Some(csr);
            (domains, key_type)
        }
        None => (
            identifiers::parse_domains(&args.domains).map_err(IssueError::from)?,
            args.key_type.into(),
        ),
    };
    let name = match &args.cert_name {
        Some(n) => n.clone(),
        None => identifiers::default_cert_name(&domains).ok_or_else(|| {
            Failure::usage("no domain given", Some("pass at least one -d/--domain"))
        })?,
    };
    store::check_cert_name(&name).map_err(|e| {
        Failure::usage(
            e.to_string(),
            Some("pass --cert-name with a plain name such as example.com"),
        )
    })?;

    // 2. The config file: its plugin_dirs and [solvers.*] (through the one
    // config model, with the same checks and line/column errors as `run`).
    let config = setup::load_config(global).map_err(|e| {
        Failure::usage(
            e.to_string(),
            Some("fix the config file, or leave out --config"),
        )
    })?;

    // 3. The state directory, writable: --state-dir, else the config's
    // state_dir, else the default.
    // A dry run reads it and writes nothing to it.
    let (store, scratch) = if args.dry_run.dry_run {
        let (store, scratch) = crate::dry_run::planning_store(global, config.as_ref())?;
        (store, Some(scratch))
    } else {
        (setup::open_store(global, config.as_ref())?, None)
    };
    let defaults = config.as_ref().map(|c| &c.defaults);

    // 4. The solver: found, loaded, configured (by the agent, with the
    // --solver-opt values over the environment and the config file).
    let host = setup::plugin_host(global, config.as_ref());
    let mut options = setup::agent_options(store, host, config.as_ref(), &args.dns);
    options.concurrency = args.concurrency as usize;
    options.dry_run = args.dry_run.dry_run;
    let max_names = options.max_names;
    let (default, by_name) = solvers_by_name(&args.solver, &domains)?;
    // --solver-opt KEY=VALUE: the default solver's (the only one's when
    // every name has its own); SOLVER:KEY=VALUE: that solver's.
    let distinct: std::collections::BTreeSet<&String> = by_name.values().collect();
    let only = (distinct.len() == 1)
        .then(|| by_name.values().next().cloned())
        .flatten();
    let plain_to = default.clone().or(only);
    let mut cli_opts: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for o in &args.solver_opts {
        let Some(solver) = o.0.clone().or_else(|| plain_to.clone()) else {
            return Err(Failure::usage(
                format!(
                    "--solver-opt {}=...: which solver? no default --solver, and the names use several",
                    o.1
                ),
                Some("write --solver-opt SOLVER:KEY=VALUE with a SOLVER given to --solver"),
            ));
        };
        let used =
            default.as_deref() == Some(solver.as_str()) || by_name.values().any(|s| *s == solver);
        if !used {
            return Err(Failure::usage(
                format!(
                    "--solver-opt {solver}:{}=...: no --solver uses '{solver}'",
                    o.1
                ),
                Some("write --solver-opt SOLVER:KEY=VALUE with a SOLVER given to --solver"),
            ));
        }
        cli_opts
            .entry(solver)
            .or_default()
            .push((o.1.clone(), o.2.clone()));
    }
    options.solver_opts = cli_opts;
    let instance = |name: &str| {
        let code = config
            .as_ref()
            .map_or_else(|| name.to_owned(), |c| c.plugin_code(name));
        let table = options
            .solver_tables
            .get(name)
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        (name.to_owned(), code, table)
    };
    let solver = default.as_deref().map(instance);
    let name_solvers: BTreeMap<String, (String, String, toml::Table)> = by_name
        .iter()
        .map(|(id, name)| (id.clone(), instance(name)))
        .collect();
    let session = Session::start(global, options);

    // 5. The certificate asked for; the request as a whole (the solver,
    // wildcards versus the solver) is made once an order is planned, so
    // that a certificate that is not due needs no working solver.
    let wanted = WantedCert {
        name,
        domains,
        key_type,
    };

    // 6. The account options and the server.
    // The flags win; the environment (and `*_FILE`) and the config's
    // [defaults] fill in what they leave out.
    let account = certsmith_core::agent::account_options(
        defaults,
        certsmith_core::agent::AccountFlags {
            email: args.email.clone(),
            agree_tos: args.agree_tos,
            eab_kid: args.eab_kid.clone(),
            eab_hmac_key: args.eab_hmac_key.as_ref().map(|k| k.0.clone()),
        },
    )?;
    let server = args
        .server
        .clone()
        .or_else(|| defaults.and_then(|d| d.server.clone()))
        .unwrap_or_else(|| "letsencrypt".to_owned());
    let ca_cert = args
        .ca_cert
        .clone()
        .or_else(|| defaults.and_then(|d| d.ca_cert.clone()));
    let client = AcmeClient::new(&server, ca_cert.as_deref())?;
    let dry_run = match scratch {
        Some(scratch) => Some((args.dry_run.client(&client, ca_cert.as_deref())?, scratch)),
        None => None,
    };
    Ok(Prepared {
        wanted,
        solver,
        name_solvers,
        // --propagation-check is in the engine's options and wins.
        propagation_check: config.as_ref().and_then(|c| c.defaults.propagation_check),
        order,
        max_names,
        client,
        account,
        session,
        ca_cert,
        hooks: crate::hook_args::HookArgs {
            pre_hook: args
                .hooks
                .pre_hook
                .clone()
                .or_else(|| defaults.and_then(|d| d.pre_hook.clone())),
            post_hook: args
                .hooks
                .post_hook
                .clone()
                .or_else(|| defaults.and_then(|d| d.post_hook.clone())),
            deploy_hook: args
                .hooks
                .deploy_hook
                .clone()
                .or_else(|| defaults.and_then(|d| d.deploy_hook.clone())),
            hook_timeout: args
                .hooks
                .hook_timeout
                .or_else(|| defaults.and_then(|d| d.deploy_hook_timeout)),
        },
        dry_run,
    })
}

pub(crate) async fn run(global: &GlobalArgs, args: IssueArgs) -> u8 {
    let prepared = match prepare(global, &args) {
        Ok(p) => p,
        Err(f) => return f.report(global, args.cert_name.as_deref()),
    };
    let Prepared {
        wanted,
        solver,
        name_solvers,
        propagation_check,
        order,
        max_names,
        client,
        account,
        session,
        ca_cert,
        hooks,
        dry_run,
    } = prepared;
    let name = wanted.name.clone();
    // What `renew` needs besides the request: recorded in the lineage
    // (what is left out is kept from the stored certificate of the name).
    let ca_cert = ca_cert.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let settings = Settings::new(
        ca_cert,
        account
            .email
            .as_ref()
            .map(|e| e.trim().trim_start_matches("mailto:").to_owned()),
        hooks.deploy_hook,
        hooks.hook_timeout,
        None,
    )
    .with_hooks(hooks.pre_hook, hooks.post_hook);
    let mode = RequestMode::new(args.force, args.expand, args.replace);
    let make = || -> Result<CertRequest, JobError> {
        let agent = &session.agent;
        let mut per_name = BTreeMap::new();
        for (id, (name, code, table)) in &name_solvers {
            per_name.insert(id.clone(), agent.solver_named(name, code, table)?);
        }
        // Without a default every name has its own: the first one's
        // stands for the certificate.
        let default = match &solver {
            Some((name, code, table)) => agent.solver_named(name, code, table)?,
            None => per_name
                .values()
                .next()
                .cloned()
                .ok_or_else(|| JobError::Invalid {
                    message: "no solver: pass --solver CODE".to_owned(),
                })?,
        };
        let request = CertRequest {
            name: wanted.name.clone(),
            domains: wanted.domains.clone(),
            solver: default,
            key_type: wanted.key_type,
            replaces: None,
            propagation_check,
            order: order.clone(),
            hooks: Default::default(),
            fence: None,
            name_solvers: per_name,
        };
        engine::check_request(&request, max_names)?;
        Ok(request)
    };
    let job = session
        .agent
        .plan_request(wanted.clone(), settings.clone(), &client, mode, &make)
        .await;
    if let Some((staging, _planned_on)) = dry_run {
        // What a real run would do is `job`; the test order goes to the
        // staging CA, into a store thrown away afterwards.
        let scratch = match crate::dry_run::Scratch::new() {
            Ok(s) => s,
            Err(f) => {
                session.finish().await;
                return f.report(global, Some(&name));
            }
        };
        let trial = session.agent.trial(scratch.store.clone());
        let mut tests = [trial
            .plan_request(wanted.clone(), settings, &staging, mode, &make)
            .await];
        let interrupted = trial.execute(&staging, &account, &mut tests).await;
        drop(trial);
        session.finish().await;
        let server = staging.directory_url().to_owned();
        return crate::dry_run::report(global, &server, &[job], &tests, interrupted, false);
    }
    // Another worker on a shared store (a daemon, a concurrent CI runner)
    // may be ordering the same certificate: claim it, then decide again
    // under the claim, so that one of them orders and the other finds it.
    let mut job = job;
    let mut _held = None;
    if job.plan.as_ref().is_ok_and(|p| p.orders()) {
        match session
            .agent
            .claim_cert(&name, CERT_LEASE_TTL, RUN_LEASE_WAIT)
            .await
        {
            Ok(held) => {
                job = session
                    .agent
                    .plan_request(wanted.clone(), settings.clone(), &client, mode, &make)
                    .await;
                job.fence_with(held.lease());
                _held = Some(held);
            }
            Err(e) => {
                session.finish().await;
                return Failure::from(e).report(global, Some(&name));
            }
        }
    }
    let mut jobs = [job];
    let interrupted = session.agent.execute(&client, &account, &mut jobs).await;
    drop(_held);
    session.finish().await;
    let [job] = jobs;

    if interrupted {
        crate::output::print_error("interrupted", None);
        return exit::INTERRUPTED;
    }
    if let Err(e) = &job.plan {
        return Failure::from_job(e).report(global, Some(&name));
    }
    if let Ok(Plan::Skip(why)) = &job.plan {
        print_skipped(global, &job, why);
        return exit::OK;
    }
    let Some(outcome) = &job.outcome else {
        return Failure::from_job(&certsmith_core::agent::JobError::NotAttempted)
            .report(global, Some(&name));
    };
    if let Some(e) = &outcome.error {
        return Failure::from_job(e).report(global, Some(&name));
    }
    // A deploy hook's failure first; else the post-hook's.
    let hook_failure = match (&outcome.hook, &outcome.post_hook) {
        (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Failure::from_job(e)),
        _ => None,
    };
    if let Some(cert) = &outcome.cert {
        print_cert(global, cert, &job, hook_failure.as_ref());
    }
    match hook_failure {
        // Said on stderr; the JSON object above carries it.
        Some(f) => {
            crate::output::print_error(&f.message, f.hint.as_deref());
            f.code
        }
        None => exit::OK,
    }
}

/// The result of an `issue` that ordered nothing: the certificate is
/// stored and not due.
fn print_skipped(global: &GlobalArgs, job: &Job, why: &str) {
    let dir = job.current_dir.as_ref();
    let path = |f: &str| dir.map(|d| d.join(f));
    let next = job.next.map(|(t, _)| rfc3339(t));
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "name": job.name,
            "domains": job.domains,
            "action": "skipped",
            "reason": why,
            "next_renewal": next,
            "renewal_reason": job.next.map(|(_, r)| r.as_str()),
            "serial": job.facts.as_ref().map(|f| f.serial.clone()),
            "not_after": job.facts.as_ref().map(|f| rfc3339(f.not_after)),
            "fullchain_path": path(store::FULLCHAIN_FILE),
            // `null` for a certificate of the user's CSR: the key is theirs.
            "privkey_path": path(store::PRIVKEY_FILE).filter(|p| p.exists()),
            "cert_path": path(store::CERT_FILE),
            "chain_path": path(store::CHAIN_FILE),
            "deploy_hook": null,
            "post_hook": null,
            "error": null,
        })),
        OutputFormat::Text => {
            outln!(
                "certificate '{}' not due (renews at {}); nothing ordered (--force orders anyway)",
                job.name,
                next.as_deref().unwrap_or("-")
            );
            outln!("  domains:   {}", job.domains.join(", "));
            if let Some(p) = path(store::FULLCHAIN_FILE) {
                outln!("  fullchain: {}", p.display());
            }
            match path(store::PRIVKEY_FILE).filter(|p| p.exists()) {
                Some(p) => outln!("  privkey:   {}", p.display()),
                None => outln!("  privkey:   kept by you (ordered with your CSR; none is stored)"),
            }
        }
    }
}

fn print_cert(global: &GlobalArgs, cert: &IssuedCert, job: &Job, hook: Option<&Failure>) {
    let (action, reason, _) = job.result();
    let status = |h: &Result<(), JobError>| match h {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "failed", "error": Failure::from_job(e).json()}),
    };
    let outcome = job.outcome.as_ref();
    let hook_json = outcome.and_then(|o| o.hook.as_ref()).map(status);
    let post_hook_json = outcome.and_then(|o| o.post_hook.as_ref()).map(status);
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "name": cert.name,
            "action": action,
            "reason": reason,
            "next_renewal": job.next.map(|(t, _)| rfc3339(t)),
            "renewal_reason": job.next.map(|(_, r)| r.as_str()),
            "deploy_hook": hook_json,
            "post_hook": post_hook_json,
            "error": hook.map(Failure::json),
            "domains": cert.domains,
            "cert_path": cert.cert_path,
            "chain_path": cert.chain_path,
            "fullchain_path": cert.fullchain_path,
            "privkey_path": cert.privkey_path,
            "version_dir": cert.version_dir,
            "not_before": rfc3339(cert.not_before),
            "not_after": rfc3339(cert.not_after),
            "serial": cert.serial,
            "version": cert.version,
            "key_type": cert.key_type.as_str(),
            "chain_issuer": cert.chain_issuer,
            "csr_path": cert.csr_path,
        })),
        OutputFormat::Text => {
            outln!("certificate '{}' (version {})", cert.name, cert.version);
            outln!("  domains:   {}", cert.domains.join(", "));
            outln!("  fullchain: {}", cert.fullchain_path.display());
            match (&cert.privkey_path, &cert.csr_path) {
                (Some(p), _) => outln!("  privkey:   {}", p.display()),
                (None, csr) => {
                    outln!(
                        "  privkey:   kept by you: ordered with your CSR, no private key is stored"
                    );
                    if let Some(c) = csr {
                        outln!("  csr:       {} (sent again at renewal)", c.display());
                    }
                }
            }
            outln!("  cert:      {}", cert.cert_path.display());
            outln!("  chain:     {}", cert.chain_path.display());
            outln!(
                "  valid:     {} to {}",
                rfc3339(cert.not_before),
                rfc3339(cert.not_after)
            );
            outln!("  serial:    {}", cert.serial);
            outln!("  key type:  {}", cert.key_type);
            if let Some(issuer) = &cert.chain_issuer {
                outln!("  root CA:   {issuer} (issuer of the topmost chain certificate)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<identifiers::Identifier> {
        identifiers::parse_domains(&names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("valid names")
    }

    fn args(values: &[&str]) -> Vec<SolverArg> {
        values
            .iter()
            .map(|v| parse_solver_arg(v).expect("parses"))
            .collect()
    }

    #[test]
    fn solvers_by_name_from_the_flags() {
        let d = ids(&["a.ex.test", "*.ex.test"]);
        let (default, by) =
            solvers_by_name(&args(&["webroot", "*.ex.test=rfc2136"]), &d).expect("ok");
        assert_eq!(default.as_deref(), Some("webroot"));
        assert_eq!(by.get("*.ex.test").map(String::as_str), Some("rfc2136"));

        let e = solvers_by_name(&args(&["a.ex.test=webroot"]), &d).expect_err("one left");
        assert!(e.message.contains("no solver for '*.ex.test'"), "{e:?}");
        assert!(
            e.hint
                .as_deref()
                .is_some_and(|h| h.contains("--solver *.ex.test=CODE")),
            "{e:?}"
        );
        let e = solvers_by_name(&args(&["x", "y"]), &d).expect_err("two defaults");
        assert!(e.message.contains("two default solvers"), "{e:?}");
        let e = solvers_by_name(&args(&["x", "b.ex.test=y"]), &d).expect_err("not a domain");
        assert!(e.message.contains("--solver b.ex.test=y"), "{e:?}");
        assert!(parse_solver_arg("a.ex.test=").is_err());
        assert!(parse_solver_arg("=x").is_err());
    }

    #[test]
    fn solver_options_name_their_solver_or_the_default() {
        let o = parse_opt("rfc2136:server=127.0.0.1:53").expect("coded");
        assert_eq!(
            (o.0.as_deref(), o.1.as_str(), o.2.as_str()),
            (Some("rfc2136"), "server", "127.0.0.1:53")
        );
        let o = parse_opt("url=http://x:1/").expect("plain");
        assert_eq!(
            (o.0.as_deref(), o.1.as_str(), o.2.as_str()),
            (None, "url", "http://x:1/")
        );
        assert_eq!(format!("{o:?}"), "url=[redacted]");
    }
}
