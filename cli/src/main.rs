//! The `certsmith` command.
//!
//! This binary only parses arguments, wires the engine to a terminal, and maps
//! failures to exit codes ([`exit`]). Everything else lives in
//! `certsmith-core`.

mod account;
mod config_cmd;
mod daemon;
mod dns_args;
mod doctor;
mod dry_run;
mod envvars;
mod exit;
mod failure;
mod gendocs;
mod help;
mod hook_args;
mod issue;
mod list;
mod manage;
mod output;
mod progress;
mod renew;
mod revoke;
mod run;
mod scaffold;
mod setup;
mod solvers;
mod store_cmd;
mod summary;
mod sync;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
};

/// certsmith: obtains and renews TLS certificates from an ACME CA, with
/// challenge solvers loaded as plugins.
#[derive(Debug, Parser)]
#[command(
    name = "certsmith",
    version,
    about,
    propagate_version = true,
    after_help = help::ROOT
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes, each also from a `CERTSMITH_*`
/// variable (the command line wins).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = help::GLOBAL_HEADING)]
pub(crate) struct GlobalArgs {
    /// Config file (TOML) [default: $XDG_CONFIG_HOME/certsmith/certsmith.toml
    /// or ~/.config/certsmith/certsmith.toml, else /etc/certsmith/certsmith.toml]
    #[arg(long, global = true, value_name = "FILE", env = "CERTSMITH_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Where `config` came from, for the message saying which file is used
    /// (set after parsing).
    #[arg(skip)]
    pub(crate) config_from_env: bool,
    /// Where accounts, certificates and the journal live [default: the
    /// config's state_dir, else $XDG_DATA_HOME/certsmith, or /var/lib/certsmith as root]
    #[arg(long, global = true, value_name = "DIR", env = "CERTSMITH_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// A shared store instead of the state directory: `postgres://USER@HOST/DB`
    /// (a fleet's database; private keys encrypted with CERTSMITH_STORE_KEY)
    /// [default: the config's [store] url, else the state directory]
    #[arg(long, global = true, value_name = "URL", env = "CERTSMITH_STORE")]
    pub(crate) store: Option<String>,
    /// A directory searched for solver plugins before the standard ones
    /// (repeatable) [env: CERTSMITH_PLUGIN_PATH: more directories, colon-separated, searched after these]
    // Not `env = ...`: CERTSMITH_PLUGIN_PATH adds to --plugin-dir instead of
    // replacing it, and the plugin host (in core) reads it itself.
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub(crate) plugin_dirs: Vec<PathBuf>,
    /// Result format on stdout.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = OutputFormat::Text,
        env = "CERTSMITH_OUTPUT"
    )]
    pub(crate) output: OutputFormat,
    /// More detail on stderr (-v, -vv; the variable takes the count).
    #[arg(
        short,
        long,
        global = true,
        action = clap::ArgAction::Count,
        env = "CERTSMITH_VERBOSE"
    )]
    pub(crate) verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(
        short,
        long,
        global = true,
        env = "CERTSMITH_QUIET",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) quiet: bool,
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// For people.
    Text,
    /// One JSON object per result, for scripts and CI.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Obtain a certificate now.
    // Boxed: `issue` has by far the most flags (clippy::large_enum_variant).
    #[command(after_help = help::ISSUE)]
    Issue(Box<issue::IssueArgs>),
    /// Issue or renew every certificate of the config file that needs it
    /// (for cron, systemd timers and CI).
    #[command(after_help = help::RUN)]
    Run(run::RunArgs),
    /// Keep every certificate of the config file issued and renewed, for as
    /// long as it runs (SIGHUP reloads the file; optional Prometheus metrics).
    #[command(after_help = help::DAEMON)]
    Daemon(daemon::DaemonArgs),
    /// Renew stored certificates from their lineage.
    #[command(after_help = help::RENEW)]
    Renew(renew::RenewArgs),
    /// Revoke a stored certificate.
    #[command(after_help = help::REVOKE)]
    Revoke(revoke::RevokeArgs),
    /// Retire a stored certificate and remove it (--keep-files keeps its PEMs).
    #[command(after_help = help::DELETE)]
    Delete(manage::DeleteArgs),
    /// Rename a stored certificate.
    #[command(after_help = help::RENAME)]
    Rename(manage::RenameArgs),
    /// List stored certificates: expiry, next renewal and why, state.
    #[command(after_help = help::LIST)]
    List(list::ListArgs),
    /// Copy the store's current certificates into a directory (a web
    /// node's copy; --follow keeps it up to date).
    #[command(after_help = help::SYNC)]
    Sync(sync::SyncArgs),
    /// Operations on a whole store: migrate it into another.
    #[command(subcommand, after_help = help::STORE)]
    Store(store_cmd::StoreCommand),
    /// Show, deactivate or re-key the ACME account.
    #[command(subcommand, after_help = help::ACCOUNT)]
    Account(account::AccountCommand),
    /// Check the config file.
    #[command(subcommand, after_help = help::CONFIG)]
    Config(config_cmd::ConfigCommand),
    /// List and describe the solver plugins found.
    #[command(subcommand, after_help = help::SOLVERS)]
    Solvers(solvers::SolversCommand),
    /// Check plugin libraries.
    #[command(subcommand, after_help = help::PLUGIN)]
    Plugin(solvers::PluginCommand),
    /// Check everything a run needs (config, state directory, plugins,
    /// credentials, DNS, ports, webroots, the CA) without ordering anything.
    #[command(after_help = help::DOCTOR)]
    Doctor(doctor::DoctorArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = help::COMPLETIONS)]
    Completions(gendocs::CompletionsArgs),
    /// Write the manual pages (certsmith.1 and one per subcommand).
    #[command(after_help = help::MAN)]
    Man(gendocs::ManArgs),
}

/// The whole command line, as parsed and as `--help` shows it.
pub(crate) fn command() -> clap::Command {
    help::same_help_for_short_and_long(Cli::command())
}

/// Parses the command line; warns about unknown `CERTSMITH_*` variables
/// (unless quiet), also when the command line is wrong.
fn parse() -> Cli {
    let mut cmd = command();
    let warnings =
        envvars::unknown_variable_warnings(std::env::vars_os(), &envvars::known_names(&cmd));
    let matches = match cmd.try_get_matches_from_mut(std::env::args_os()) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            if !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                for w in &warnings {
                    eprintln!("{w}");
                }
                if json_requested(std::env::args(), std::env::var("CERTSMITH_OUTPUT").ok()) {
                    usage_error_json(&e);
                }
            }
            e.exit()
        }
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            if json_requested(std::env::args(), std::env::var("CERTSMITH_OUTPUT").ok()) {
                usage_error_json(&e);
            }
            e.with_cmd(&cmd).exit()
        }
    };
    cli.global.config_from_env = value_source(&matches, "config") == Some(ValueSource::EnvVariable);
    // -q and -v conflict on the command line; a variable gives way to the
    // command line instead, so that `CERTSMITH_QUIET=1 certsmith -v ...`
    // shows detail.
    if cli.global.quiet && cli.global.verbose > 0 {
        let from_env = |id| value_source(&matches, id) == Some(ValueSource::EnvVariable);
        match (from_env("quiet"), from_env("verbose")) {
            (true, false) => cli.global.quiet = false,
            (false, true) => cli.global.verbose = 0,
            _ => {
                let e = clap::Error::raw(
                    clap::error::ErrorKind::ArgumentConflict,
                    "-q/--quiet cannot be used with -v/--verbose\n",
                )
                .with_cmd(&cmd);
                if cli.global.output == OutputFormat::Json {
                    usage_error_json(&e);
                }
                e.exit()
            }
        }
    }
    // Warnings, shown with -q too.
    for w in &warnings {
        eprintln!("{w}");
    }
    cli
}

/// Whether `--output json` was asked for, on a command line clap could
/// not parse (or by `CERTSMITH_OUTPUT`).
fn json_requested(args: impl Iterator<Item = String>, env: Option<String>) -> bool {
    let args: Vec<String> = args.collect();
    let mut asked = env.map(|v| v == "json");
    for (i, a) in args.iter().enumerate() {
        if a == "--output" {
            asked = Some(args.get(i + 1).is_some_and(|v| v == "json"));
        } else if let Some(v) = a.strip_prefix("--output=") {
            asked = Some(v == "json");
        }
    }
    asked.unwrap_or(false)
}

/// A command-line error as the JSON object every usage error is, on stdout.
fn usage_error_json(e: &clap::Error) {
    let text = e.to_string();
    let message = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    output::print_json(&serde_json::json!({
        "error": {
            "class": "usage",
            "message": message,
            "hint": "see --help",
            "exit_code": exit::USAGE,
        }
    }));
}

/// Where the value of the global argument `id` came from (clap records
/// it in the matches of the subcommand that was used).
fn value_source(matches: &ArgMatches, id: &str) -> Option<ValueSource> {
    let mut m = matches;
    let mut source = m.value_source(id);
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
        source = m.value_source(id).or(source);
    }
    source
}

fn main() -> ExitCode {
    // The runtime and the signal handlers come first: a SIGTERM at any
    // moment from here on ends certsmith as an interruption (exit 130).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    if let Err(e) = runtime.block_on(async { setup::install_signal_handlers() }) {
        eprintln!("error: cannot install the signal handlers: {e}");
        return ExitCode::from(exit::INTERNAL);
    }
    let cli = parse();
    setup::set_quiet(cli.global.quiet);
    output::init_logging(&cli.global);
    let code = runtime.block_on(async {
        match cli.command {
            Command::Issue(args) => issue::run(&cli.global, *args).await,
            Command::Run(args) => run::run(&cli.global, args).await,
            Command::Daemon(args) => daemon::run(&cli.global, args).await,
            Command::Renew(args) => renew::run(&cli.global, args).await,
            Command::Revoke(args) => revoke::run(&cli.global, args).await,
            Command::List(args) => list::run(&cli.global, args).await,
            Command::Delete(args) => manage::delete(&cli.global, args).await,
            Command::Rename(args) => manage::rename(&cli.global, args).await,
            Command::Sync(args) => sync::run(&cli.global, args).await,
            Command::Store(cmd) => store_cmd::run(&cli.global, cmd).await,
            Command::Account(cmd) => account::run(&cli.global, cmd).await,
            Command::Config(cmd) => config_cmd::run(&cli.global, cmd).await,
            Command::Solvers(cmd) => solvers::run_solvers(&cli.global, cmd).await,
            Command::Plugin(cmd) => solvers::run_plugin(&cli.global, cmd).await,
            Command::Doctor(args) => doctor::run(&cli.global, args).await,
            Command::Completions(args) => gendocs::completions(&args),
            Command::Man(args) => gendocs::man(&cli.global, &args),
        }
    });
    // Plugins may hold runtime threads of their own; leaving without waiting
    // for background tasks keeps a stuck plugin from hanging the exit.
    runtime.shutdown_background();
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        super::command().debug_assert();
    }
}
