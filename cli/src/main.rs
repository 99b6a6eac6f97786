//! The `certsmith` command.
//!
//! This binary only parses arguments, wires the engine to a terminal, and maps
//! failures to exit codes ([`exit`]). Everything else lives in
//! `certsmith-core`.

mod account;
mod config_cmd;
mod dns_args;
mod exit;
mod failure;
mod issue;
mod list;
mod output;
mod progress;
mod renew;
mod revoke;
mod run;
mod setup;
mod solvers;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// certsmith: obtains and renews TLS certificates from an ACME CA, with
/// challenge solvers loaded as plugins.
#[derive(Debug, Parser)]
#[command(name = "certsmith", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalArgs {
    /// Config file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Where accounts, certificates and the journal live
    /// [default: $XDG_DATA_HOME/certsmith, or /var/lib/certsmith as root].
    #[arg(long, global = true, value_name = "DIR", env = "CERTSMITH_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// A directory searched for solver plugins before the standard ones
    /// (repeatable).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub(crate) plugin_dirs: Vec<PathBuf>,
    /// Result format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub(crate) output: OutputFormat,
    /// More detail on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
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
    Issue(issue::IssueArgs),
    /// Issue or renew every certificate of the config file that needs it
    /// (for cron, systemd timers and CI).
    Run(run::RunArgs),
    /// Renew stored certificates from their lineage.
    Renew(renew::RenewArgs),
    /// Revoke a stored certificate.
    Revoke(revoke::RevokeArgs),
    /// List stored certificates: expiry, next renewal and why, state.
    List(list::ListArgs),
    /// Show, deactivate or re-key the ACME account.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Check the config file.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// List and describe the solver plugins found.
    #[command(subcommand)]
    Solvers(solvers::SolversCommand),
    /// Check plugin libraries.
    #[command(subcommand)]
    Plugin(solvers::PluginCommand),
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
    let cli = Cli::parse();
    setup::set_quiet(cli.global.quiet);
    output::init_logging(&cli.global);
    let code = runtime.block_on(async {
        match cli.command {
            Command::Issue(args) => issue::run(&cli.global, args).await,
            Command::Run(args) => run::run(&cli.global, args).await,
            Command::Renew(args) => renew::run(&cli.global, args).await,
            Command::Revoke(args) => revoke::run(&cli.global, args).await,
            Command::List(args) => list::run(&cli.global, args).await,
            Command::Account(cmd) => account::run(&cli.global, cmd).await,
            Command::Config(cmd) => config_cmd::run(&cli.global, cmd).await,
            Command::Solvers(cmd) => solvers::run_solvers(&cli.global, cmd).await,
            Command::Plugin(cmd) => solvers::run_plugin(&cli.global, cmd).await,
        }
    });
    // Plugins may hold runtime threads of their own; leaving without waiting
    // for background tasks keeps a stuck plugin from hanging the exit.
    runtime.shutdown_background();
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
