//! `certsmith doctor`: a preflight of everything a run needs, with one
//! line per check and the fix for each that is not ok.
//!
//! Why this module exists: most failed issuances are set-up problems —
//! a token without the right permission, a TSIG key the server does not
//! know, port 80 taken by a web server, a webroot that the web server does
//! not serve, a state directory another user can read — and each of them
//! otherwise shows up only when a renewal runs, often at night. The doctor
//! finds them in one go, and sends nothing to the CA but a GET of its
//! directory: no account, no order, no challenge.
//!
//! The checks come from core (the config diagnostics of `config check`,
//! `store::inspect_state_dir`, the plugin host and its `check_credentials`
//! call, `dns::resolve_challenge_name` and `dns::serves_zone`, the ACME
//! directory); this module runs them in order, and owns only what is a
//! front end's: binding a port to see whether it is free (and who holds
//! it), and fetching a probe file over HTTP as the CA would.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_core::acme::AcmeClient;
use certsmith_core::config::{CertificateConfig, Config};
use certsmith_core::dns::{self, DnsOptions, PropagationCheck};
use certsmith_core::plugin::{CallError, ConfigSources, LoadedPlugin, PluginHost, SolverInstance};
use certsmith_core::store;
use certsmith_plugin_api::{ChallengeType, CheckZone, CredentialsCheck, ErrorKind};
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::dns_args::DnsArgs;
use crate::output::{outln, print_json};
use crate::{GlobalArgs, OutputFormat, config_cmd, exit, setup};

/// `certsmith doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// The CA whose directory is checked: letsencrypt, letsencrypt-staging,
    /// zerossl, or an ACME directory URL [default: the config's server,
    /// else letsencrypt].
    #[arg(long, value_name = "NAME|URL", env = "CERTSMITH_SERVER")]
    server: Option<String>,
    /// Extra CA certificates (PEM) to trust for the ACME server's HTTPS.
    #[arg(long, value_name = "PEM", env = "CERTSMITH_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The port a webroot's probe file is fetched from, as the CA's http-01
    /// validation would (RFC 8555 §8.3: 80; change it only for a test CA
    /// that validates on another port).
    #[arg(long, value_name = "PORT", default_value_t = 80)]
    http_port: u16,
    #[command(flatten)]
    dns: DnsArgs,
}

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// One line of the report.
#[derive(Debug)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    /// What to do; set for every status but ok.
    fix: Option<String>,
}

#[derive(Debug, Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail, None::<String>);
    }

    fn not_ok(
        &mut self,
        status: Status,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(name, status, detail, Some(fix));
    }

    fn push(
        &mut self,
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: fix.map(Into::into),
        });
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

/// A configured solver: one instance per distinct (code, options).
struct Solver {
    code: String,
    instance: Option<SolverInstance>,
    /// The certificates that use it.
    certs: Vec<CertificateConfig>,
    /// The dns-01 zones found for its names (for `check_credentials`).
    zones: Vec<CheckZone>,
}

pub(crate) async fn run(global: &GlobalArgs, args: DoctorArgs) -> u8 {
    let mut report = Report::default();
    let (config, valid) = check_config(global, &mut report);
    check_state_dir(global, config.as_ref(), &mut report);
    check_store(global, config.as_ref(), &mut report).await;
    if let Some(config) = config.as_ref().filter(|_| valid) {
        let host = setup::plugin_host(global, Some(config));
        let mut solvers = check_plugins(config, &host, &mut report);
        let mut opts = setup::dns_options(&args.dns, Some(config));
        // The nameservers a propagation check would ask are what the
        // doctor checks, whatever mode the run will use.
        opts.propagation_check = Some(PropagationCheck::Authoritative);
        for s in &mut solvers {
            check_dns(s, &opts, &mut report).await;
        }
        for s in &solvers {
            check_credentials(s, &mut report).await;
            check_standalone(s, &mut report);
            check_webroot(s, &opts, args.http_port, &mut report).await;
        }
    }
    if config.is_some() || args.server.is_some() {
        check_ca(&args, config.as_ref(), &mut report).await;
    } else {
        for name in ["ca-directory", "clock", "ari", "profiles"] {
            report.not_ok(
                Status::Skipped,
                name,
                "skipped: the config file could not be read, so which CA it uses is unknown",
                "fix the config file, or pass --server",
            );
        }
    }
    let failed = report.count(Status::Fail) > 0;
    let code = if failed { exit::DOCTOR } else { exit::OK };
    render(global, &report, code);
    code
}

fn render(global: &GlobalArgs, report: &Report, code: u8) {
    match global.output {
        OutputFormat::Json => print_json(&json!({
            "checks": report.checks.iter().map(|c| json!({
                "check": c.name,
                "status": c.status.as_str(),
                "detail": c.detail,
                "fix": c.fix,
            })).collect::<Vec<_>>(),
            "summary": {
                "ok": report.count(Status::Ok),
                "warn": report.count(Status::Warn),
                "fail": report.count(Status::Fail),
                "skipped": report.count(Status::Skipped),
            },
            "exit_code": code,
        })),
        OutputFormat::Text => {
            for c in &report.checks {
                match &c.fix {
                    Some(fix) => outln!(
                        "{:<8}{}: {} — fix: {fix}",
                        c.status.as_str(),
                        c.name,
                        c.detail
                    ),
                    None => outln!("{:<8}{}: {}", c.status.as_str(), c.name, c.detail),
                }
            }
            outln!(
                "{} ok, {} warning(s), {} failed, {} skipped",
                report.count(Status::Ok),
                report.count(Status::Warn),
                report.count(Status::Fail),
                report.count(Status::Skipped)
            );
        }
    }
}

// ---------------------------------------------------------------- config ---

/// The config file, as `config check` sees it: one line per error. The
/// config when it could be read (its `[defaults]` name the CA and the
/// state directory even when a certificate is wrong), and whether it is
/// valid (the certificate checks need that).
fn check_config(global: &GlobalArgs, report: &mut Report) -> (Option<Config>, bool) {
    let path = match setup::find_config(global) {
        Ok((path, _)) => path,
        Err(looked) => {
            report.not_ok(
                Status::Fail,
                "config",
                format!("no config file: none was given and none exists at {}", looked.join(" or ")),
                "pass --config FILE or set CERTSMITH_CONFIG (contrib/certsmith.toml is an example); the certificate checks need it",
            );
            return (None, false);
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.errors {
                report.not_ok(
                    Status::Fail,
                    "config",
                    e.to_string(),
                    e.hint().unwrap_or(
                        "fix that key in the file (`certsmith config check` shows every error)",
                    ),
                );
            }
            return (None, false);
        }
    };
    let host = setup::plugin_host(global, Some(&config));
    let (errors, warnings) = config_cmd::diagnose(&config, &host);
    for e in &errors {
        report.not_ok(
            Status::Fail,
            "config",
            e.to_string(),
            e.hint()
                .unwrap_or("fix that key in the file (`certsmith config check` shows every error)"),
        );
    }
    for w in &warnings {
        report.not_ok(
            Status::Warn,
            "config",
            w.clone(),
            "remove the table, or add --plugin-dir for the solver it configures",
        );
    }
    if errors.is_empty() {
        report.ok(
            "config",
            format!(
                "{}: {} certificate(s)",
                path.display(),
                config.certificates.len()
            ),
        );
    }
    let valid = errors.is_empty();
    (Some(config), valid)
}

// ----------------------------------------------------------- shared store ---

/// A shared store (`--store`, `[store] url`): it opens (connection, schema,
/// key) and answers.
async fn check_store(global: &GlobalArgs, config: Option<&Config>, report: &mut Report) {
    let Some(url) = setup::store_url(global, config) else {
        return;
    };
    let shown = store::redact_url(&url);
    let local = setup::state_root(global, config).ok();
    let opened = tokio::task::spawn_blocking(move || {
        let s = store::Store::open_url(&url, local)?;
        s.cert_names().map(|names| names.len())
    })
    .await;
    match opened {
        Ok(Ok(n)) => report.ok(
            "store",
            format!("{shown}: schema current, store key right, {n} certificate(s)"),
        ),
        Ok(Err(e)) => {
            let fix = match &e {
                store::StoreError::NoStoreKey
                | store::StoreError::WrongStoreKey { .. }
                | store::StoreError::StoreKey { .. } => {
                    "set CERTSMITH_STORE_KEY (or CERTSMITH_STORE_KEY_FILE) to the store's key"
                }
                store::StoreError::SchemaTooNew { .. } => "upgrade certsmith on this machine",
                _ => {
                    "check the URL (--store, CERTSMITH_STORE or [store] url), that the server runs and that the role may connect"
                }
            };
            report.not_ok(Status::Fail, "store", e.to_string(), fix);
        }
        Err(e) => report.not_ok(
            Status::Fail,
            "store",
            format!("the check failed: {e}"),
            "report this as a bug",
        ),
    }
}

// ------------------------------------------------------------- state dir ---

fn check_state_dir(global: &GlobalArgs, config: Option<&Config>, report: &mut Report) {
    let root = match setup::state_root(global, config) {
        Ok(r) => r,
        Err(e) => {
            report.not_ok(
                Status::Fail,
                "state-dir",
                e.message.clone(),
                "pass --state-dir DIR (or set state_dir in the config file)",
            );
            return;
        }
    };
    let r = store::inspect_state_dir(&root);
    let shown = root.display();
    if let Err(why) = &r.writable {
        report.not_ok(
            Status::Fail,
            "state-dir",
            format!("{shown} is not writable: {why}"),
            format!("run as the user that owns {shown}, or pass --state-dir a directory you can write to"),
        );
        return;
    }
    if !r.exists {
        report.ok(
            "state-dir",
            format!("{shown} does not exist yet; the first run creates it (mode 0700)"),
        );
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mode = r.mode.unwrap_or(0);
    if let Some(owner) = r.owner_uid.filter(|&o| o != euid) {
        report.not_ok(
            Status::Fail,
            "state-dir",
            format!("{shown} belongs to uid {owner}, and certsmith runs as uid {euid}"),
            format!("run certsmith as its owner, or `chown -R {euid} {shown}`"),
        );
    } else if mode & 0o022 != 0 {
        report.not_ok(
            Status::Fail,
            "state-dir",
            format!("{shown} is writable by group or others (mode {mode:04o})"),
            format!(
                "`chmod 700 {shown}`: anyone who can write there can swap certificates and keys"
            ),
        );
    } else if mode & 0o077 != 0 {
        report.not_ok(
            Status::Warn,
            "state-dir",
            format!("{shown} is readable by group or others (mode {mode:04o})"),
            format!("`chmod 700 {shown}` (certsmith creates it 0700)"),
        );
    } else {
        report.ok(
            "state-dir",
            format!("{shown}: owned by uid {euid}, mode {mode:04o}, writable"),
        );
    }
    if r.readable_keys.is_empty() {
        report.ok(
            "private-keys",
            "no private key file is readable by group or others",
        );
    } else {
        let list: Vec<String> = r
            .readable_keys
            .iter()
            .map(|(p, m)| format!("{} ({m:04o})", p.display()))
            .collect();
        report.not_ok(
            Status::Fail,
            "private-keys",
            format!(
                "{} private key file(s) readable by group or others: {}",
                list.len(),
                list.join(", ")
            ),
            "`chmod 600` each of them (certsmith writes them 0600; a deploy step that needs a copy should copy, not chmod)",
        );
    }
}

// --------------------------------------------------------------- plugins ---

/// Loads each solver the certificates use and creates an instance with
/// its options (config file, environment), as a run would.
fn check_plugins(config: &Config, host: &PluginHost, report: &mut Report) -> Vec<Solver> {
    let mut by_key: BTreeMap<(String, String), Solver> = BTreeMap::new();
    for cert in &config.certificates {
        let table = config.solver_table(cert);
        let key = (
            cert.solver.clone(),
            toml::to_string(&table).unwrap_or_default(),
        );
        by_key
            .entry(key)
            .or_insert_with(|| Solver {
                code: cert.solver.clone(),
                instance: None,
                certs: Vec::new(),
                zones: Vec::new(),
            })
            .certs
            .push(cert.clone());
    }
    let mut out = Vec::new();
    for (_, mut s) in by_key {
        let name = format!("plugin {}", s.code);
        let users = cert_names(&s.certs);
        let plugin: Arc<LoadedPlugin> = match host.get(&s.code) {
            Ok(p) => p,
            Err(e) => {
                report.not_ok(
                    Status::Fail,
                    name,
                    format!("{e} (used by {users})"),
                    "`certsmith solvers list` shows the solvers found; --plugin-dir adds a directory",
                );
                out.push(s);
                continue;
            }
        };
        let table = s
            .certs
            .first()
            .map(|c| config.solver_table(c))
            .unwrap_or_default();
        match plugin.instantiate(&ConfigSources {
            file: Some(&table),
            ..Default::default()
        }) {
            Ok(instance) => {
                let m = plugin.manifest();
                report.ok(
                    name,
                    format!(
                        "'{}' {} (ABI {}), {}: manifest and options valid (used by {users})",
                        m.name,
                        m.version,
                        plugin.abi_version(),
                        plugin.path().display()
                    ),
                );
                s.instance = Some(instance);
            }
            Err(e) => report.not_ok(
                Status::Fail,
                name,
                format!("{e} (used by {users})"),
                format!(
                    "set the option in [solvers.{}] or the certificate's solver_options, or its environment variable (`certsmith solvers info {}` lists them)",
                    s.code, s.code
                ),
            ),
        }
        out.push(s);
    }
    out
}

fn cert_names(certs: &[CertificateConfig]) -> String {
    certs
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn uses_dns(s: &Solver) -> bool {
    s.instance
        .as_ref()
        .is_some_and(|i| i.manifest().supports(ChallengeType::Dns01))
}

// ----------------------------------------------------------- credentials ---

/// Milliseconds since the epoch, `after` from now.
fn unix_ms_in(after: Duration) -> u64 {
    (SystemTime::now() + after)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn check_credentials(s: &Solver, report: &mut Report) {
    let Some(instance) = &s.instance else {
        return;
    };
    let name = format!("credentials {}", s.code);
    let has_secret = instance.manifest().config.values().any(|k| k.secret);
    let req = CredentialsCheck::new(unix_ms_in(Duration::from_secs(30)), s.zones.clone());
    match instance.check_credentials(&req).await {
        Ok(Some(checked)) => report.ok(name, checked.detail),
        Ok(None) => {
            let (why, fix) = if has_secret {
                (
                    "",
                    format!(
                        "check {}'s credentials by hand, or use a version of the plugin built for ABI 1.2 or later, which can check them",
                        s.code
                    ),
                )
            } else {
                (
                    "; it declares no secret option",
                    "nothing to do if this solver needs no credentials".to_owned(),
                )
            };
            report.not_ok(
                Status::Skipped,
                name,
                format!(
                    "not supported by this plugin (built for ABI {}), skipped{why}",
                    instance.plugin().abi_version()
                ),
                fix,
            );
        }
        Err(e) => {
            let fix = match &e {
                CallError::Plugin(b) if b.kind == ErrorKind::Auth => format!(
                    "fix the credential options of {} (`certsmith solvers info {}` names them and their variables)",
                    s.code, s.code
                ),
                CallError::Plugin(b) if b.kind == ErrorKind::NotFound => format!(
                    "make the zone visible to these credentials, or set the zone option of {} (`certsmith solvers info {}`)",
                    s.code, s.code
                ),
                _ => format!(
                    "check the provider is reachable and the options of {} are right, then run doctor again",
                    s.code
                ),
            };
            report.not_ok(Status::Fail, name, e.to_string(), fix);
        }
    }
}

// ------------------------------------------------------------------- dns ---

/// Zone detection and nameserver reachability for every dns-01 name.
async fn check_dns(s: &mut Solver, opts: &DnsOptions, report: &mut Report) {
    if !uses_dns(s) {
        return;
    }
    let mut names: Vec<String> = s
        .certs
        .iter()
        .flat_map(|c| c.domains.iter().map(|d| d.base().to_owned()))
        .collect();
    names.sort();
    names.dedup();
    for domain in names {
        let name = format!("dns {domain}");
        let resolved = match dns::resolve_challenge_name(opts, &domain).await {
            Ok(r) => r,
            Err(e) => {
                report.not_ok(
                    Status::Fail,
                    name,
                    format!("no zone found for _acme-challenge.{domain}: {e}"),
                    "check that the domain is registered and delegated (`dig SOA` it), or point --dns-resolver at a resolver that sees the zone",
                );
                continue;
            }
        };
        if !s.zones.iter().any(|z| z.zone == resolved.zone) {
            s.zones
                .push(CheckZone::new(&resolved.zone, resolved.primary_ns.clone()));
        }
        let via = if resolved.chain.len() > 1 {
            format!(" (via CNAME {})", resolved.chain.join(" -> "))
        } else {
            String::new()
        };
        let primary = resolved.primary_ns.as_deref().unwrap_or("none");
        if resolved.nameservers.is_empty() {
            report.not_ok(
                Status::Warn,
                name,
                format!(
                    "zone {}{via}, primary {primary}; no nameserver address found to check",
                    resolved.zone
                ),
                "check the zone's NS records and their addresses, or set --propagation-server",
            );
            continue;
        }
        let mut bad = Vec::new();
        for (label, addr) in &resolved.nameservers {
            if let Err(why) = dns::serves_zone(*addr, &resolved.zone, opts.query_timeout).await {
                bad.push(format!("{label} ({addr}): {why}"));
            }
        }
        let servers: Vec<String> = resolved
            .nameservers
            .iter()
            .map(|(l, a)| format!("{l} ({a})"))
            .collect();
        if bad.is_empty() {
            report.ok(
                name,
                format!(
                    "zone {}{via}, primary {primary}; {} nameserver(s) answer for it: {}",
                    resolved.zone,
                    servers.len(),
                    servers.join(", ")
                ),
            );
        } else {
            report.not_ok(
                Status::Fail,
                name,
                format!(
                    "zone {}{via}: {} of {} nameserver(s) do not serve it: {}",
                    resolved.zone,
                    bad.len(),
                    servers.len(),
                    bad.join("; ")
                ),
                "fix the zone's NS records or those servers (a propagation check waits for every one of them), or set --propagation-server",
            );
        }
    }
}

// ------------------------------------------------------------ standalone ---

/// The string list option `key` of an instance.
fn string_list(instance: &SolverInstance, key: &str) -> Vec<String> {
    match instance.config().get(key) {
        Some(serde_json::Value::Array(v)) => v
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn check_standalone(s: &Solver, report: &mut Report) {
    let Some(instance) = &s.instance else {
        return;
    };
    if s.code != "standalone" {
        return;
    }
    for (key, status, what) in [
        ("listen", Status::Fail, "http-01"),
        ("tls_listen", Status::Warn, "tls-alpn-01"),
    ] {
        for addr in string_list(instance, key) {
            let name = format!("port {addr}");
            let Ok(sock) = addr.parse::<SocketAddr>() else {
                report.not_ok(
                    Status::Fail,
                    name,
                    format!("{key} {addr:?} is not an address"),
                    format!("set {key} to IP:PORT, e.g. 0.0.0.0:80"),
                );
                continue;
            };
            match TcpListener::bind(sock) {
                Ok(l) => {
                    drop(l);
                    report.ok(
                        name,
                        format!("free: the standalone solver can listen there for {what} ({key})"),
                    );
                }
                Err(e) => {
                    let holder = holder_of(sock.port())
                        .map(|h| format!(", held by {h}"))
                        .unwrap_or_default();
                    let fix = if e.kind() == std::io::ErrorKind::AddrInUse {
                        format!(
                            "stop what holds port {} during issuance (a pre hook can), use the webroot solver with the web server there, or set {key} to another address the CA reaches",
                            sock.port()
                        )
                    } else if e.kind() == std::io::ErrorKind::PermissionDenied {
                        "run as root, or give the binary CAP_NET_BIND_SERVICE (`setcap cap_net_bind_service=+ep $(command -v certsmith)`)".to_owned()
                    } else {
                        format!("set {key} to an address of this machine")
                    };
                    report.not_ok(
                        status,
                        name,
                        format!("cannot listen for {what} ({key}): {e}{holder}"),
                        fix,
                    );
                }
            }
        }
    }
}

/// The process listening on TCP `port`, as "name (pid N)", when
/// `/proc` shows it (it does not for another user's process without root).
fn holder_of(port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let lport = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A: TCP_LISTEN.
            if lport == Some(port) && *state == "0A" && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = proc.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| Path::new(i) == target) {
                let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

// --------------------------------------------------------------- webroot ---

async fn check_webroot(s: &Solver, opts: &DnsOptions, port: u16, report: &mut Report) {
    let Some(instance) = &s.instance else {
        return;
    };
    if s.code != "webroot" {
        return;
    }
    let Some(root) = instance.config().get("path").and_then(|v| v.as_str()) else {
        return;
    };
    let dir = Path::new(root).join(".well-known/acme-challenge");
    let token = format!(
        "certsmith-doctor-{}-{}",
        std::process::id(),
        unix_ms_in(Duration::ZERO)
    );
    let file = dir.join(&token);
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &token));
    if let Err(e) = written {
        report.not_ok(
            Status::Fail,
            format!("webroot {root}"),
            format!("cannot write {}: {e}", file.display()),
            "set path to the directory the web server serves, and let certsmith's user write to its .well-known/acme-challenge",
        );
        return;
    }
    let mut names: Vec<String> = s
        .certs
        .iter()
        .flat_map(|c| c.domains.iter())
        .filter(|d| !d.is_wildcard())
        .map(|d| d.as_str().to_owned())
        .collect();
    names.sort();
    names.dedup();
    for host in names {
        let name = format!("webroot {host}");
        let url = format!("http://{host}:{port}/.well-known/acme-challenge/{token}");
        match fetch(opts, &host, port, &token).await {
            Ok((200, body)) if body.trim() == token => report.ok(
                name,
                format!("{root} is writable and served: {url} returned the probe file"),
            ),
            Ok((status, body)) => report.not_ok(
                Status::Fail,
                name,
                format!(
                    "{url} did not return the probe file written to {} (HTTP {status}, {} bytes of something else)",
                    file.display(),
                    body.len()
                ),
                format!("set path to the document root the web server uses for {host} (or make it serve /.well-known/acme-challenge/ from {root})"),
            ),
            Err(e) => report.not_ok(
                Status::Fail,
                name,
                format!("{url}: {e}"),
                format!("make {host} resolve to this web server and serve {root} on port {port}"),
            ),
        }
    }
    let _ = std::fs::remove_file(&file);
}

/// GET `/.well-known/acme-challenge/<token>` from `host`:`port` over plain
/// HTTP, as a CA's validation does: the status and the body.
async fn fetch(
    opts: &DnsOptions,
    host: &str,
    port: u16,
    token: &str,
) -> Result<(u16, String), String> {
    let addrs = dns::lookup_addresses(opts, host)
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let Some(ip) = addrs.first() else {
        return Err(format!("{host} has no A or AAAA record"));
    };
    let request = format!(
        "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certsmith-doctor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect((*ip, port))
            .await
            .map_err(|e| format!("cannot connect to {ip}:{port}: {e}"))?;
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.take(64 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Vec<u8>, String>(buf)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("no answer from {ip}:{port} within 10 s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let line = head.lines().next().unwrap_or_default();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{ip}:{port} did not answer HTTP ({line:?})"))?;
    Ok((status, body.to_owned()))
}

// -------------------------------------------------------------------- CA ---

/// The CA's directory: reachable, its clock, ARI and profiles.
async fn check_ca(args: &DoctorArgs, config: Option<&Config>, report: &mut Report) {
    let server = args
        .server
        .clone()
        .or_else(|| config.and_then(|c| c.defaults.server.clone()))
        .unwrap_or_else(|| "letsencrypt".to_owned());
    let ca_cert = args
        .ca_cert
        .clone()
        .or_else(|| config.and_then(|c| c.defaults.ca_cert.clone()));
    let skip = |report: &mut Report, why: &str| {
        for name in ["clock", "ari", "profiles"] {
            report.not_ok(
                Status::Skipped,
                name,
                format!("skipped: {why}"),
                "fix the ca-directory check first",
            );
        }
    };
    let client = match AcmeClient::new(&server, ca_cert.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            report.not_ok(
                Status::Fail,
                "ca-directory",
                e.to_string(),
                "set --server (or server in [defaults]) to letsencrypt, letsencrypt-staging, zerossl or an https:// ACME directory URL; --ca-cert for a private CA",
            );
            skip(report, "the CA could not be set up");
            return;
        }
    };
    let dir = match client.directory().await {
        Ok(d) => d,
        Err(e) => {
            report.not_ok(
                Status::Fail,
                "ca-directory",
                e.to_string(),
                "check --server and that this machine reaches it (proxy, firewall, DNS); --ca-cert if its HTTPS certificate is from a private CA",
            );
            skip(report, "the CA's directory did not answer");
            return;
        }
    };
    report.ok("ca-directory", format!("{} answers", dir.url));
    match dir.server_date {
        None => report.not_ok(
            Status::Warn,
            "clock",
            "the CA's answer has no Date header: the clock could not be compared",
            "make sure this machine's clock is synchronized (NTP, e.g. `timedatectl set-ntp true`)",
        ),
        Some(date) => {
            let (ahead, d) = match dir.received_at.duration_since(date) {
                Ok(d) => (true, d),
                Err(e) => (false, e.duration()),
            };
            let secs = d.as_secs();
            let detail = format!(
                "this machine's clock is {secs} s {} the CA's (HTTP Date)",
                if ahead { "ahead of" } else { "behind" }
            );
            let fix = "synchronize the clock (NTP, e.g. `timedatectl set-ntp true`): TSIG and AWS signatures are refused past 300 s, and renewal times drift";
            if secs <= CLOCK_OK_S {
                report.ok("clock", detail);
            } else if secs <= CLOCK_WARN_S {
                report.not_ok(Status::Warn, "clock", detail, fix);
            } else {
                report.not_ok(Status::Fail, "clock", detail, fix);
            }
        }
    }
    if dir.renewal_info {
        report.ok(
            "ari",
            "the CA offers ACME Renewal Information (renewalInfo): renewals follow its window",
        );
    } else {
        report.not_ok(
            Status::Warn,
            "ari",
            "the CA offers no ACME Renewal Information (no renewalInfo in its directory)",
            "nothing to set: renewals use the 1/3-of-lifetime rule or renew_before; a CA that revokes early (mass revocation) cannot move them",
        );
    }
    if dir.profiles.is_empty() {
        report.not_ok(
            Status::Warn,
            "profiles",
            "the CA advertises no certificate profiles (no meta.profiles)",
            "nothing to set: certificates get the CA's default profile; do not configure a profile for this CA",
        );
    } else {
        report.ok(
            "profiles",
            format!(
                "the CA offers profiles: {}",
                dir.profiles
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
}

/// Clock skew up to this is ok (the `Date` header has 1 s resolution and
/// the request takes time).
const CLOCK_OK_S: u64 = 30;
/// Up to this a warning; past it TSIG (RFC 8945 fudge 300 s) and AWS
/// SigV4 (5 minutes) refuse requests: a failure.
const CLOCK_WARN_S: u64 = 300;
