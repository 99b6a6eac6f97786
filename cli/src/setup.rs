//! What every command that touches the store or the CA sets up the same
//! way: the config file, the store, the plugin host, the agent, signal
//! handling, and the progress printer.
//!
//! Why this module exists: each of these reads global flags and the
//! config file's `[defaults]` in one order of precedence (flag, then
//! environment, then file, then default), which must not differ between
//! commands; likewise the config file is found in one order
//! ([`find_config`]) and named, and the commands that only read open the
//! store without creating it ([`open_store_read_only`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use certsmith_core::agent::{Agent, AgentOptions};
use certsmith_core::config::{Config, ConfigError, ConfigErrors};
use certsmith_core::dns::DnsOptions;
use certsmith_core::engine::CancelToken;
use certsmith_core::plugin::{PluginHost, SearchPath};
use certsmith_core::progress::Progress;
use certsmith_core::renewal;
use certsmith_core::store::{self, Lease, Store};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::dns_args::DnsArgs;
use crate::failure::Failure;
use crate::output::{print_error, print_json};
use crate::{GlobalArgs, OutputFormat, exit, progress};

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

pub(crate) fn config_error_json(e: &ConfigError) -> serde_json::Value {
    json!({
        "line": e.pos().map(|p| p.line),
        "column": e.pos().map(|p| p.column),
        "key": e.key(),
        "message": e.to_string(),
        "hint": e.hint(),
    })
}

/// The system-wide config file, the last place looked.
pub(crate) const SYSTEM_CONFIG: &str = "/etc/certsmith/certsmith.toml";

/// Where the config file in use was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfigOrigin {
    /// `--config`.
    Flag,
    /// `CERTSMITH_CONFIG`.
    Env,
    /// `$XDG_CONFIG_HOME/certsmith/certsmith.toml` (or `~/.config/...`).
    User,
    /// [`SYSTEM_CONFIG`].
    System,
}

impl ConfigOrigin {
    fn describe(self) -> &'static str {
        match self {
            ConfigOrigin::Flag => "from --config",
            ConfigOrigin::Env => "from CERTSMITH_CONFIG",
            ConfigOrigin::User => "the user default",
            ConfigOrigin::System => "the system default",
        }
    }
}

/// The user's config file: `$XDG_CONFIG_HOME/certsmith/certsmith.toml`,
/// else `~/.config/certsmith/certsmith.toml` (an unset or relative
/// variable is ignored, as the XDG base directory specification says).
fn user_config() -> Option<PathBuf> {
    let absolute = |v: &str| {
        std::env::var_os(v)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("certsmith/certsmith.toml"))
}

/// The config file to use, in order: `--config`, `CERTSMITH_CONFIG`, the
/// user's, the system's; `Err` lists the files looked for when there is
/// none.
pub(crate) fn find_config(global: &GlobalArgs) -> Result<(PathBuf, ConfigOrigin), Vec<String>> {
    if let Some(p) = &global.config {
        let origin = if global.config_from_env {
            ConfigOrigin::Env
        } else {
            ConfigOrigin::Flag
        };
        return Ok((p.clone(), origin));
    }
    let mut looked = Vec::new();
    let candidates = [
        (user_config(), ConfigOrigin::User),
        (Some(PathBuf::from(SYSTEM_CONFIG)), ConfigOrigin::System),
    ];
    for (path, origin) in candidates {
        let Some(path) = path else { continue };
        // A file that exists but cannot be read is used, so that loading
        // it reports why rather than silently falling through.
        if path.try_exists().unwrap_or(true) {
            return Ok((path, origin));
        }
        looked.push(path.display().to_string());
    }
    Err(looked)
}

/// Says on stderr which config file is used (unless `-q`).
fn announce(global: &GlobalArgs, path: &std::path::Path, origin: ConfigOrigin) {
    if !global.quiet {
        eprintln!(
            "[certsmith] using config {} ({})",
            path.display(),
            origin.describe()
        );
    }
}

/// Loads the config file [`find_config`] finds, if any, saying which.
pub(crate) fn load_config(global: &GlobalArgs) -> Result<Option<Config>, ConfigErrors> {
    match find_config(global) {
        Ok((path, origin)) => {
            announce(global, &path, origin);
            Config::load(&path).map(Some)
        }
        Err(_) => Ok(None),
    }
}

/// The config file for a command that cannot work without one (`run`,
/// `config check`): its path and contents, or the exit code after
/// reporting that there is none (naming where certsmith looked) or its
/// errors.
pub(crate) fn require_config(global: &GlobalArgs, command: &str) -> Result<(PathBuf, Config), u8> {
    let (path, origin) = match find_config(global) {
        Ok(found) => found,
        Err(looked) => {
            return Err(Failure::usage(
                format!(
                    "`certsmith {command}` needs a config file: none was given (--config, CERTSMITH_CONFIG) and none exists at {}",
                    looked.join(" or ")
                ),
                Some(&format!(
                    "pass --config FILE, set CERTSMITH_CONFIG, or create {} (contrib/certsmith.toml is an example)",
                    user_config()
                        .map_or_else(|| SYSTEM_CONFIG.to_owned(), |p| p.display().to_string())
                )),
            )
            .report(global, None));
        }
    };
    announce(global, &path, origin);
    match Config::load(&path) {
        Ok(c) => Ok((path, c)),
        Err(e) => Err(report_config_errors(global, &e)),
    }
}

/// The state directory: `--state-dir`/`CERTSMITH_STATE_DIR`, then the
/// config file's `state_dir`, then the default.
pub(crate) fn state_root(global: &GlobalArgs, config: Option<&Config>) -> Result<PathBuf, Failure> {
    Ok(
        match (
            &global.state_dir,
            config.and_then(|c| c.defaults.state_dir.clone()),
        ) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d,
            (None, None) => store::default_root()?,
        },
    )
}

/// The shared store's URL, when one is chosen: `--store`/`CERTSMITH_STORE`,
/// then the config file's `[store] url`.
pub(crate) fn store_url(global: &GlobalArgs, config: Option<&Config>) -> Option<String> {
    global
        .store
        .clone()
        .or_else(|| config.and_then(|c| c.defaults.store_url.clone()))
}

/// The store, created if needed and checked writable: the shared store of
/// [`store_url`], else the state directory (see [`state_root`]).
pub(crate) fn open_store(global: &GlobalArgs, config: Option<&Config>) -> Result<Store, Failure> {
    if let Some(url) = store_url(global, config) {
        return Ok(Store::open_url(&url, Some(state_root(global, config)?))?);
    }
    Ok(Store::open(state_root(global, config)?)?)
}

/// The store of a command that only reads: it must exist, and nothing is
/// created or written (see [`state_root`]).
pub(crate) fn open_store_read_only(
    global: &GlobalArgs,
    config: Option<&Config>,
) -> Result<Store, Failure> {
    if let Some(url) = store_url(global, config) {
        return Ok(Store::open_url(&url, Some(state_root(global, config)?))?);
    }
    Ok(Store::open_existing(state_root(global, config)?)?)
}

/// Discovers the plugins on `--plugin-dir`, the config's `plugin_dirs` and
/// the standard path.
pub(crate) fn plugin_host(global: &GlobalArgs, config: Option<&Config>) -> PluginHost {
    let config_dirs: Vec<PathBuf> = config
        .map(|c| c.defaults.plugin_dirs.clone())
        .unwrap_or_default();
    // Lists the files only: a plugin is loaded when a solver of its code is
    // asked for (a refused file is logged then, if it comes to that).
    PluginHost::discover(&SearchPath::standard(&global.plugin_dirs, &config_dirs))
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

/// How much progress to print, from `-q` and `-v`.
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

/// The process's cancel token: cancelled by the first SIGINT or SIGTERM.
static CANCEL: OnceLock<CancelToken> = OnceLock::new();
/// Whether a batch that cleans up on cancellation is running; without one,
/// a signal ends the process at once.
static BATCH: AtomicBool = AtomicBool::new(false);
/// Whether a command that repeats until stopped is running: the first
/// signal cancels the token and the command ends with exit 0.
static FOLLOW: AtomicBool = AtomicBool::new(false);
/// `-q`: the signal handler's notice is not printed.
static QUIET: AtomicBool = AtomicBool::new(false);
/// `certsmith daemon` runs: the first signal stops it gracefully ([`STOP`]).
static DAEMON: AtomicBool = AtomicBool::new(false);
/// Cancelled by the first SIGINT or SIGTERM in a daemon: no new work; the
/// daemon cancels the work in flight ([`CANCEL`]) after its grace period.
static STOP: OnceLock<CancelToken> = OnceLock::new();

/// Records `-q` for the signal handler.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::SeqCst);
}

/// Makes the first SIGINT or SIGTERM cancel [`cancel_token`] instead of
/// ending the process: for a command that repeats until stopped and then
/// exits 0 (`sync --follow`). A second signal ends it at once (130).
pub(crate) fn stop_on_signal() {
    FOLLOW.store(true, Ordering::SeqCst);
}

/// The token the first SIGINT or SIGTERM cancels.
pub(crate) fn cancel_token() -> CancelToken {
    CANCEL.get_or_init(CancelToken::new).clone()
}

/// Makes the first SIGINT or SIGTERM stop a daemon instead of ending the
/// process or cancelling a batch: returns the token it cancels. A second
/// signal still ends the process at once.
pub(crate) fn daemon_stop_token() -> CancelToken {
    DAEMON.store(true, Ordering::SeqCst);
    STOP.get_or_init(CancelToken::new).clone()
}

/// Installs the SIGINT and SIGTERM handlers. Called first thing in the
/// runtime, so that a signal at any moment ends certsmith as an
/// interruption (exit 130), never by the signal's default action: during a
/// batch the first signal cancels it (presented challenges are removed),
/// a second one exits at once; outside a batch the first one exits; in a
/// daemon the first one stops it gracefully ([`daemon_stop_token`]).
pub(crate) fn install_signal_handlers() -> std::io::Result<JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered here, synchronously: from now on the default action is off.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let token = cancel_token();
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        if FOLLOW.load(Ordering::SeqCst) {
            // A command that repeats until stopped (`sync --follow`):
            // stopping is how it ends, not an interruption.
            token.cancel();
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            eprintln!("error: interrupted again");
            std::process::exit(i32::from(exit::INTERRUPTED));
        }
        if DAEMON.load(Ordering::SeqCst) {
            if !QUIET.load(Ordering::SeqCst) {
                eprintln!(
                    "[certsmith] stopping: no new orders; the ones in flight finish (press Ctrl-C again to quit now)"
                );
            }
            STOP.get_or_init(CancelToken::new).cancel();
        } else if !BATCH.load(Ordering::SeqCst) {
            eprintln!("error: interrupted");
            std::process::exit(i32::from(exit::INTERRUPTED));
        } else {
            if !QUIET.load(Ordering::SeqCst) {
                eprintln!(
                    "[certsmith] interrupted: removing presented challenges (press Ctrl-C again to quit now)"
                );
            }
            token.cancel();
        }
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        eprintln!("error: interrupted again; some challenge responses may remain in place");
        std::process::exit(i32::from(exit::INTERRUPTED));
    }))
}

/// An agent with its progress printer, cancelled by the signal handlers:
/// what `issue`, `run` and `renew` drive.
pub(crate) struct Session {
    pub(crate) agent: Agent,
    printer: JoinHandle<()>,
}

impl Session {
    /// Builds the agent from `options` (its progress and cancel token are
    /// set here) and starts printing its progress.
    pub(crate) fn start(global: &GlobalArgs, mut options: AgentOptions) -> Session {
        let (progress, printer): (Progress, _) = progress::spawn(verbosity(global));
        options.progress = progress;
        options.cancel = cancel_token();
        BATCH.store(true, Ordering::SeqCst);
        Session {
            agent: Agent::new(options),
            printer,
        }
    }

    /// Starts a session for a batch (`run`, `renew`) holding the store's
    /// run lease, waiting for another batch to finish first; a failure is
    /// reported and its exit code returned.
    pub(crate) async fn start_batch(
        global: &GlobalArgs,
        options: AgentOptions,
    ) -> Result<(Session, Lease), u8> {
        let session = Session::start(global, options);
        match session.agent.lease_run().await {
            Ok(lease) => Ok((session, lease)),
            Err(e) => {
                session.finish().await;
                Err(Failure::from(e).report(global, None))
            }
        }
    }

    /// Lets the printer drain the last events (it ends when the agent, the
    /// last sender, is gone); a signal from now on ends the process.
    pub(crate) async fn finish(self) {
        BATCH.store(false, Ordering::SeqCst);
        drop(self.agent);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.printer).await;
    }
}

/// One `--solver-opt CODE:KEY=VALUE` of `run` and `renew` (a batch has
/// several solvers, so the option names its solver); `Debug` shows no
/// value (it may be an API token).
#[derive(Clone)]
pub(crate) struct CodedOpt {
    code: String,
    key: String,
    value: String,
}

impl std::fmt::Debug for CodedOpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}=[redacted]", self.code, self.key)
    }
}

/// Parses `CODE:KEY=VALUE`.
pub(crate) fn parse_coded_opt(arg: &str) -> Result<CodedOpt, String> {
    let (left, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("'{arg}' is not CODE:KEY=VALUE"))?;
    match left.split_once(':') {
        Some((code, key)) if !code.trim().is_empty() && !key.trim().is_empty() => Ok(CodedOpt {
            code: code.trim().to_owned(),
            key: key.trim().to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(format!(
            "'{left}' names no solver: give CODE:KEY=VALUE, e.g. cloudflare:api_token=..."
        )),
    }
}

/// `--solver-opt CODE:KEY=VALUE` options grouped by solver code.
pub(crate) fn solver_opts_by_code(
    opts: &[CodedOpt],
) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let mut by = std::collections::BTreeMap::<String, Vec<(String, String)>>::new();
    for o in opts {
        by.entry(o.code.clone())
            .or_default()
            .push((o.key.clone(), o.value.clone()));
    }
    by
}

/// The options of an agent on `store` with the config file's solver
/// tables and DNS defaults under the command line's DNS flags.
pub(crate) fn agent_options(
    store: Store,
    host: PluginHost,
    config: Option<&Config>,
    dns: &DnsArgs,
) -> AgentOptions {
    let mut o = AgentOptions::new(store, Arc::new(host));
    o.solver_tables = config.map(Config::solvers_table).unwrap_or_default();
    o.dns = dns_options(dns, config);
    if let Some(c) = config.and_then(|c| c.defaults.concurrency) {
        o.concurrency = c;
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn hints_name_the_flags() {
        use certsmith_core::error::IssueError;
        let e = IssueError::TermsNotAgreed {
            url: "https://x/tos".into(),
        };
        let f = Failure::from_issue(&e);
        assert_eq!(f.code, exit::USAGE);
        assert!(f.hint.is_some_and(|h| h.contains("--agree-tos")));
        let e = IssueError::Store(certsmith_core::store::StoreError::NoDefaultRoot);
        let f = Failure::from_issue(&e);
        assert!(
            !f.message.contains("--"),
            "core names no flag: {}",
            f.message
        );
        assert!(f.hint.is_some_and(|h| h.contains("--state-dir")));
    }
}
