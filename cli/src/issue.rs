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

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certsmith_core::acme::{AccountOptions, AcmeClient, Eab};
use certsmith_core::engine::{self, CancelToken, CertRequest, Engine, EngineOptions, IssuedCert};
use certsmith_core::error::{ErrorClass, IssueError};
use certsmith_core::identifiers;
use certsmith_core::keys::KeyType;
use certsmith_core::plugin::{ConfigSources, PluginHost, SearchPath, parse_solver_opt};
use certsmith_core::store::{self, Store};
use serde_json::json;

use crate::output::{print_error, print_json};
use crate::progress;
use crate::{GlobalArgs, OutputFormat, exit};

/// Exit code after Ctrl-C (128 + SIGINT), as shells do.
pub(crate) const INTERRUPTED: u8 = 130;

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

/// One `--solver-opt KEY=VALUE`; `Debug` shows the key only (values may be
/// API tokens).
#[derive(Clone)]
pub(crate) struct SolverOpt(String, String);

impl fmt::Debug for SolverOpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=[redacted]", self.0)
    }
}

fn parse_opt(arg: &str) -> Result<SolverOpt, String> {
    parse_solver_opt(arg)
        .map(|(k, v)| SolverOpt(k, v))
        .map_err(|e| e.to_string())
}

/// Obtain a certificate now.
#[derive(Debug, clap::Args)]
pub(crate) struct IssueArgs {
    /// A domain to include (repeatable); `*.example.com` for a wildcard.
    #[arg(short = 'd', long = "domain", value_name = "DOMAIN", required = true)]
    domains: Vec<String>,
    /// The solver plugin that answers the challenges (`certsmith solvers list`).
    #[arg(long, value_name = "CODE")]
    solver: String,
    /// A solver option (repeatable); see `certsmith solvers info CODE`.
    #[arg(long = "solver-opt", value_name = "KEY=VALUE", value_parser = parse_opt)]
    solver_opts: Vec<SolverOpt>,
    /// The certificate's name in the store [default: the first domain].
    #[arg(long, value_name = "NAME")]
    cert_name: Option<String>,
    /// The CA: letsencrypt, letsencrypt-staging, zerossl, or an ACME directory URL.
    #[arg(long, value_name = "NAME|URL", default_value = "letsencrypt")]
    server: String,
    /// Extra CA certificates (PEM) to trust for the ACME server's HTTPS,
    /// e.g. for a private CA or Pebble.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Contact address for the account.
    #[arg(long, value_name = "ADDR")]
    email: Option<String>,
    /// Agree to the CA's terms of service (needed to create an account).
    #[arg(long)]
    agree_tos: bool,
    /// External account binding key id (ZeroSSL, commercial CAs).
    #[arg(
        long,
        value_name = "ID",
        env = "CERTSMITH_EAB_KID",
        requires = "eab_hmac_key"
    )]
    eab_kid: Option<String>,
    /// External account binding HMAC key, base64url.
    #[arg(
        long,
        value_name = "KEY",
        env = "CERTSMITH_EAB_HMAC_KEY",
        hide_env_values = true,
        requires = "eab_kid",
        value_parser = |s: &str| Ok::<_, String>(Secret(s.to_owned()))
    )]
    eab_hmac_key: Option<Secret>,
    /// The certificate's key type.
    #[arg(long, value_enum, value_name = "TYPE", default_value_t = KeyTypeArg::EcP256)]
    key_type: KeyTypeArg,
    /// At most this many orders at once.
    #[arg(long, value_name = "N", default_value_t = engine::DEFAULT_CONCURRENCY as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Run this shell command after the certificate is stored; it gets
    /// CERTSMITH_CERT_NAME, CERTSMITH_DOMAINS, CERTSMITH_CERT_DIR,
    /// CERTSMITH_FULLCHAIN and CERTSMITH_PRIVKEY. Recorded for `renew`.
    #[arg(long, value_name = "CMD")]
    deploy_hook: Option<String>,
    /// Kill the deploy hook after SECS.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    deploy_hook_timeout: u64,
    #[command(flatten)]
    dns: crate::dns_args::DnsArgs,
}

/// A failure before or around the engine, with its exit code.
struct Failure {
    code: u8,
    message: String,
    hint: Option<String>,
    class: &'static str,
}

impl Failure {
    fn usage(message: impl Into<String>, hint: Option<&str>) -> Self {
        Failure {
            code: exit::USAGE,
            message: message.into(),
            hint: hint.map(str::to_owned),
            class: "usage",
        }
    }

    fn from_issue(e: &IssueError) -> Self {
        let class = e.class();
        Failure {
            code: exit_code(class),
            message: e.to_string(),
            hint: e.hint(),
            class: class.as_str(),
        }
    }

    fn report(&self, global: &GlobalArgs, name: Option<&str>) -> u8 {
        print_error(&self.message, self.hint.as_deref());
        if global.output == OutputFormat::Json {
            print_json(&json!({
                "name": name,
                "error": {
                    "class": self.class,
                    "message": self.message,
                    "hint": self.hint,
                    "exit_code": self.code,
                }
            }));
        }
        self.code
    }
}

impl From<IssueError> for Failure {
    fn from(e: IssueError) -> Self {
        Failure::from_issue(&e)
    }
}

/// The exit code of a failure class.
pub(crate) fn exit_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Usage | ErrorClass::Store => exit::USAGE,
        ErrorClass::Solver => exit::SOLVER,
        ErrorClass::CaRefused => exit::CA_REFUSED,
        ErrorClass::RateLimited => exit::RATE_LIMITED,
        ErrorClass::Network => exit::NETWORK,
        ErrorClass::Cancelled => INTERRUPTED,
        ErrorClass::PropagationTimeout => exit::PROPAGATION_TIMEOUT,
        _ => exit::INTERNAL,
    }
}

/// What `issue` takes from the config file.
#[derive(Default)]
struct ConfigFile {
    plugin_dirs: Vec<PathBuf>,
    solvers: toml::Table,
    /// The whole file, for the settings `issue` shares with `run`.
    config: Option<certsmith_core::config::Config>,
}

/// Reads `plugin_dirs` and `[solvers.*]` through the one config model
/// (`certsmith_core::config`): the same checks and line/column errors as
/// `run` and `config check`.
fn load_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let config = certsmith_core::config::Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ConfigFile {
        plugin_dirs: config.defaults.plugin_dirs.clone(),
        solvers: config.solvers_table(),
        config: Some(config),
    })
}

/// Everything checked and ready, before any network traffic.
struct Prepared {
    request: CertRequest,
    client: AcmeClient,
    store: Store,
    account: AccountOptions,
    host: PluginHost,
    journal: certsmith_core::journal::Journal,
    solver_tables: toml::Table,
    dns: certsmith_core::dns::DnsOptions,
}

fn prepare(global: &GlobalArgs, args: &IssueArgs) -> Result<Prepared, Failure> {
    // 1. The names.
    let domains = identifiers::parse_domains(&args.domains).map_err(IssueError::from)?;
    let name = match &args.cert_name {
        Some(n) => n.clone(),
        None => identifiers::default_cert_name(&domains)
            .ok_or_else(|| Failure::usage("no domain given", None))?,
    };
    store::check_cert_name(&name).map_err(|e| {
        Failure::usage(
            e.to_string(),
            Some("pass --cert-name with a plain name such as example.com"),
        )
    })?;

    // 2. The config file.
    let config = match &global.config {
        Some(p) => load_config(p).map_err(|e| {
            Failure::usage(
                format!("{e:#}"),
                Some("fix the config file, or leave out --config"),
            )
        })?,
        None => ConfigFile::default(),
    };

    // 3. The state directory, writable.
    let root = match &global.state_dir {
        Some(d) => d.clone(),
        None => store::default_root().map_err(IssueError::from)?,
    };
    let store = Store::open(root).map_err(IssueError::from)?;
    let journal = certsmith_core::journal::Journal::open(store.root()).map_err(|e| {
        Failure::usage(
            e.to_string(),
            Some("the state directory must be writable (--state-dir)"),
        )
    })?;

    // 4. The solver: found, loaded, configured.
    let host = PluginHost::discover(&SearchPath::standard(
        &global.plugin_dirs,
        &config.plugin_dirs,
    ));
    for p in host.problems() {
        log::info!("plugin {} not loaded: {}", p.path.display(), p.error);
    }
    let plugin = host.get(&args.solver).map_err(IssueError::from)?;
    let cli_opts: Vec<(String, String)> = args
        .solver_opts
        .iter()
        .map(|o| (o.0.clone(), o.1.clone()))
        .collect();
    let file_table = config
        .solvers
        .get(&args.solver)
        .and_then(toml::Value::as_table);
    let solver = plugin
        .instantiate(&ConfigSources {
            cli: &cli_opts,
            file: file_table,
            ..Default::default()
        })
        .map_err(IssueError::from)?;

    // 5. The request as a whole (wildcards versus the solver, dns-01).
    let request = CertRequest {
        name,
        domains,
        solver,
        key_type: args.key_type.into(),
        replaces: None,
    };
    engine::check_request(&request)?;

    // 6. The account options and the server.
    let eab = match (&args.eab_kid, &args.eab_hmac_key) {
        (Some(kid), Some(key)) => Some(Eab::new(kid, &key.0)?),
        _ => None,
    };
    let account = AccountOptions {
        email: args.email.clone(),
        agree_tos: args.agree_tos,
        eab,
    };
    account.contact()?;
    let client = AcmeClient::new(&args.server, args.ca_cert.as_deref())?;
    Ok(Prepared {
        request,
        client,
        store,
        account,
        host,
        journal,
        dns: crate::common::dns_options(&args.dns, config.config.as_ref()),
        solver_tables: config.solvers,
    })
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = t.recv() => {},
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Cancels `token` on SIGINT/SIGTERM; a second signal exits at once.
pub(crate) fn watch_signals(token: CancelToken, quiet: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        next_signal(&mut term).await;
        if !quiet {
            eprintln!(
                "[certsmith] interrupted: removing presented challenges (press Ctrl-C again to quit now)"
            );
        }
        token.cancel();
        next_signal(&mut term).await;
        eprintln!("error: interrupted again; some challenge responses may remain in place");
        std::process::exit(i32::from(INTERRUPTED));
    })
}

pub(crate) async fn run(global: &GlobalArgs, args: IssueArgs) -> u8 {
    let prepared = match prepare(global, &args) {
        Ok(p) => p,
        Err(f) => return f.report(global, args.cert_name.as_deref()),
    };
    let name = prepared.request.name.clone();
    let store = prepared.store.clone();

    let verbosity = if global.quiet {
        progress::Verbosity::Quiet
    } else if global.verbose > 0 {
        progress::Verbosity::Verbose
    } else {
        progress::Verbosity::Normal
    };
    let (progress, printer) = progress::spawn(verbosity);
    let cancel = CancelToken::new();
    let signals = watch_signals(cancel.clone(), global.quiet);

    crate::dns_args::sweep_journal(&prepared.journal, &prepared.host, &prepared.solver_tables)
        .await;
    let options = EngineOptions {
        cancel: cancel.clone(),
        dns: prepared.dns.clone(),
        journal: Some(prepared.journal.clone()),
        ..EngineOptions::default()
    };
    let connected = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(IssueError::Cancelled),
        r = Engine::connect(prepared.client, prepared.store, prepared.account, progress, options) => r,
    };
    let results = match connected {
        Ok(engine) => {
            let r = engine
                .issue_all(vec![prepared.request], args.concurrency as usize)
                .await;
            drop(engine);
            r
        }
        Err(e) => vec![Err(e)],
    };
    // Let the printer drain the last events (it ends when the engine's
    // senders are gone).
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    signals.abort();

    if cancel.is_cancelled() {
        print_error("interrupted", None);
        return INTERRUPTED;
    }
    let mut code = exit::OK;
    let total = results.len();
    let mut failed = 0;
    for result in results {
        match result {
            Ok(cert) => {
                print_cert(global, &cert);
                crate::common::record_issue(
                    &store,
                    &cert,
                    args.ca_cert.as_deref(),
                    args.email.as_deref(),
                    args.deploy_hook.as_deref(),
                )
                .await;
                if let Some(cmd) = &args.deploy_hook
                    && let Err(f) = crate::common::run_hook(
                        cmd,
                        &cert,
                        Duration::from_secs(args.deploy_hook_timeout),
                        global.quiet,
                    )
                    .await
                {
                    failed += 1;
                    code = f.report(global);
                }
            }
            Err(e) => {
                failed += 1;
                code = Failure::from_issue(&e).report(global, Some(&name));
            }
        }
    }
    if failed > 0 && failed < total {
        code = exit::PARTIAL;
    }
    code
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn print_cert(global: &GlobalArgs, cert: &IssuedCert) {
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "name": cert.name,
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
        })),
        OutputFormat::Text => {
            println!("certificate '{}' (version {})", cert.name, cert.version);
            println!("  domains:   {}", cert.domains.join(", "));
            println!("  fullchain: {}", cert.fullchain_path.display());
            println!("  privkey:   {}", cert.privkey_path.display());
            println!("  cert:      {}", cert.cert_path.display());
            println!("  chain:     {}", cert.chain_path.display());
            println!(
                "  valid:     {} to {}",
                rfc3339(cert.not_before),
                rfc3339(cert.not_after)
            );
            println!("  serial:    {}", cert.serial);
            println!("  key type:  {}", cert.key_type);
        }
    }
}
