//! What every command that touches the store or the CA sets up the same
//! way: the config file, the store, the plugin host, the agent, signal
//! handling, and the progress printer.
//!
//! Why this module exists: each of these reads global flags and the
//! config file's `[defaults]` in one order of precedence (flag, then
//! environment, then file, then default), which must not differ between
//! commands.

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
use certsmith_core::store::{self, Store};
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

/// Loads `--config` when given.
pub(crate) fn load_config(global: &GlobalArgs) -> Result<Option<Config>, ConfigErrors> {
    match &global.config {
        Some(p) => Config::load(p).map(Some),
        None => Ok(None),
    }
}

/// The state directory: `--state-dir`/`CERTSMITH_STATE_DIR`, then the
/// config file's `state_dir`, then the default.
pub(crate) fn open_store(global: &GlobalArgs, config: Option<&Config>) -> Result<Store, Failure> {
    let root = match (
        &global.state_dir,
        config.and_then(|c| c.defaults.state_dir.clone()),
    ) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d,
        (None, None) => store::default_root()?,
    };
    Ok(Store::open(root)?)
}

/// Discovers the plugins on `--plugin-dir`, the config's `plugin_dirs` and
/// the standard path.
pub(crate) fn plugin_host(global: &GlobalArgs, config: Option<&Config>) -> PluginHost {
    let config_dirs: Vec<PathBuf> = config
        .map(|c| c.defaults.plugin_dirs.clone())
        .unwrap_or_default();
    let host = PluginHost::discover(&SearchPath::standard(&global.plugin_dirs, &config_dirs));
    for p in host.problems() {
        log::info!("plugin {} not loaded: {}", p.path.display(), p.error);
    }
    host
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
/// `-q`: the signal handler's notice is not printed.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Records `-q` for the signal handler.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::SeqCst);
}

/// The token the first SIGINT or SIGTERM cancels.
pub(crate) fn cancel_token() -> CancelToken {
    CANCEL.get_or_init(CancelToken::new).clone()
}

/// Installs the SIGINT and SIGTERM handlers. Called first thing in the
/// runtime, so that a signal at any moment ends certsmith as an
/// interruption (exit 130), never by the signal's default action: during a
/// batch the first signal cancels it (presented challenges are removed),
/// a second one exits at once; outside a batch the first one exits.
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
        if !BATCH.load(Ordering::SeqCst) {
            eprintln!("error: interrupted");
            std::process::exit(i32::from(exit::INTERRUPTED));
        }
        if !QUIET.load(Ordering::SeqCst) {
            eprintln!(
                "[certsmith] interrupted: removing presented challenges (press Ctrl-C again to quit now)"
            );
        }
        token.cancel();
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

    /// Lets the printer drain the last events (it ends when the agent, the
    /// last sender, is gone); a signal from now on ends the process.
    pub(crate) async fn finish(self) {
        BATCH.store(false, Ordering::SeqCst);
        drop(self.agent);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.printer).await;
    }
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
