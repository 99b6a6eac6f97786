//! `certsmith sync --to DIR [--name N]… [--deploy-hook CMD] [--follow]`:
//! a web node's copy of the store's current certificates.
//!
//! Why this module exists: to give the sync of `certsmith_core::store::sync`
//! a command line: the store from the global `--store`/`--state-dir`,
//! opened read-only; a result line per certificate; exit codes; and, with
//! `--follow`, a pass every `--interval` until SIGTERM or SIGINT (exit 0).

use std::path::PathBuf;
use std::time::Duration;

use certsmith_core::config::{DEFAULT_HOOK_TIMEOUT, parse_duration};
use certsmith_core::hooks::HookError;
use certsmith_core::store::Store;
use certsmith_core::store::sync::{
    SyncAction, SyncError, SyncOptions, SyncOutcome, SyncReport, sync,
};
use serde_json::json;

use crate::failure::Failure;
use crate::hook_args::{non_empty, parse_timeout};
use crate::output::{outln, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit};

/// The default of `--interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Copy the current certificates of the store into a directory.
#[derive(Debug, clap::Args)]
pub(crate) struct SyncArgs {
    /// The directory to write into (created if needed): DIR/certs/NAME/current
    /// -> versions/N holds cert.pem, chain.pem, fullchain.pem, privkey.pem.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Only this certificate (repeatable) [default: every certificate].
    #[arg(long = "name", alias = "cert-name", value_name = "NAME")]
    names: Vec<String>,
    /// Run this shell command after each certificate that changed. Gets
    /// CERTSMITH_HOOK=deploy, CERTSMITH_CERT_NAME, CERTSMITH_DOMAINS,
    /// CERTSMITH_CERT_DIR (DIR/certs/NAME/current), CERTSMITH_FULLCHAIN,
    /// CERTSMITH_PRIVKEY, CERTSMITH_CSR, CERTSMITH_CERT, CERTSMITH_CHAIN and
    /// CERTSMITH_VERSION.
    #[arg(long, value_name = "CMD", value_parser = non_empty("--deploy-hook"))]
    deploy_hook: Option<String>,
    /// Kill the deploy hook (with its process group) after this long: SECS
    /// or a duration such as 90s, 5m [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    hook_timeout: Option<Duration>,
    /// Keep running: sync again every --interval until SIGTERM or SIGINT
    /// (then exit 0).
    #[arg(long)]
    follow: bool,
    /// With --follow, how long between passes: SECS or a duration such as
    /// 30s, 5m [default: 60s].
    #[arg(long, value_name = "DURATION", requires = "follow", value_parser = parse_interval)]
    interval: Option<Duration>,
}

/// SECS or a duration, at least 1s.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => parse_duration(s)
            .map_err(|e| format!("{e}; --interval takes seconds or e.g. 30s, 5m"))?,
    };
    if d < Duration::from_secs(1) {
        return Err("--interval must be at least 1s (e.g. 60s)".to_owned());
    }
    Ok(d)
}

fn open(global: &GlobalArgs) -> Result<Store, Failure> {
    let config = setup::load_config(global).map_err(|e| {
        Failure::usage(
            e.to_string(),
            e.errors
                .first()
                .and_then(|f| f.hint())
                .or(Some("fix the config file")),
        )
    })?;
    // A shared store is opened without a local copy of its files: the
    // sync directory is the only place this command writes.
    if let Some(url) = setup::store_url(global, config.as_ref()) {
        return Ok(Store::open_url(&url, None)?);
    }
    setup::open_store_read_only(global, config.as_ref())
}

/// A failure of a whole pass, with the flag to fix.
fn failure(e: &SyncError) -> Failure {
    match e {
        SyncError::Store(_) => Failure {
            code: exit::USAGE,
            class: "store",
            message: e.to_string(),
            hint: Some(
                "check that the store (--store, --state-dir) exists and this user can read it"
                    .to_owned(),
            ),
        },
        SyncError::StateDirectory { .. } => Failure::usage(
            e.to_string(),
            Some(
                "give --to a directory of its own (e.g. /etc/ssl/certsmith), not a state directory",
            ),
        ),
        SyncError::UnknownName { .. } => Failure::usage(
            e.to_string(),
            Some("`certsmith list` shows the stored certificates; fix --name"),
        ),
        SyncError::Write { .. } => Failure::usage(
            e.to_string(),
            Some("check that --to is a directory this user can write"),
        ),
        _ => Failure::usage(e.to_string(), None),
    }
}

fn hook_json(
    h: &Option<Result<certsmith_core::hooks::HookOutcome, HookError>>,
) -> serde_json::Value {
    match h {
        None => serde_json::Value::Null,
        Some(Ok(_)) => json!({"status": "ok"}),
        Some(Err(e)) => json!({"status": "failed", "error": hook_failure(e).json()}),
    }
}

fn hook_failure(e: &HookError) -> Failure {
    Failure {
        code: exit::DEPLOY_HOOK,
        class: "deploy_hook",
        message: e.to_string(),
        hint: Some(e.hint().to_owned()),
    }
}

/// Counts of one pass.
#[derive(Default)]
struct Counts {
    updated: usize,
    unchanged: usize,
    failed: usize,
    hook_failed: usize,
}

/// Prints one pass; `all` prints unchanged certificates too. Returns the
/// counts.
fn render(global: &GlobalArgs, report: &SyncReport, all: bool) -> Counts {
    let mut counts = Counts::default();
    for c in &report.certs {
        match &c.result {
            Ok(done) if done.action == SyncAction::Unchanged => counts.unchanged += 1,
            Ok(done) => {
                counts.updated += 1;
                if matches!(done.deploy_hook, Some(Err(_))) {
                    counts.hook_failed += 1;
                }
            }
            Err(_) => counts.failed += 1,
        }
        let unchanged = matches!(&c.result, Ok(d) if d.action == SyncAction::Unchanged);
        if unchanged && !all {
            continue;
        }
        match global.output {
            OutputFormat::Json => print_json(&cert_json(c)),
            OutputFormat::Text => text_line(c),
        }
    }
    let printed = all || counts.updated + counts.failed > 0;
    if printed {
        let total = report.certs.len();
        match global.output {
            OutputFormat::Json => print_json(&json!({
                "sync_summary": {
                    "to": report.to.display().to_string(),
                    "total": total,
                    "updated": counts.updated,
                    "unchanged": counts.unchanged,
                    "failed": counts.failed,
                },
                "exit_code": pass_code(&counts),
            })),
            OutputFormat::Text => outln!(
                "{total} certificate(s) in {}: {} updated, {} unchanged, {} failed",
                report.to.display(),
                counts.updated,
                counts.unchanged,
                counts.failed
            ),
        }
    }
    counts
}

fn cert_json(c: &SyncOutcome) -> serde_json::Value {
    match &c.result {
        Ok(done) => json!({
            "name": c.name,
            "domains": c.domains,
            "action": done.action.as_str(),
            "version": done.version,
            "previous_version": done.previous,
            "path": done.current.display().to_string(),
            "pruned": done.pruned,
            "deploy_hook": hook_json(&done.deploy_hook),
            "error": match &done.deploy_hook {
                Some(Err(e)) => hook_failure(e).json(),
                _ => serde_json::Value::Null,
            },
        }),
        Err(e) => json!({
            "name": c.name,
            "domains": c.domains,
            "action": "failed",
            "version": null,
            "previous_version": null,
            "path": null,
            "pruned": [],
            "deploy_hook": null,
            "error": failure(e).json(),
        }),
    }
}

fn text_line(c: &SyncOutcome) {
    match &c.result {
        Ok(done) if done.action == SyncAction::Unchanged => {
            outln!("{}: unchanged (version {})", c.name, done.version);
        }
        Ok(done) => {
            let was = done
                .previous
                .map(|p| format!(", was {p}"))
                .unwrap_or_default();
            outln!(
                "{}: updated to version {}{was} -> {}",
                c.name,
                done.version,
                done.current.display()
            );
            match &done.deploy_hook {
                Some(Ok(_)) => outln!("{}: deploy hook ok", c.name),
                Some(Err(e)) => {
                    let f = hook_failure(e);
                    crate::output::print_error(&f.message, f.hint.as_deref());
                }
                None => {}
            }
        }
        Err(e) => {
            let f = failure(e);
            crate::output::print_error(&format!("{}: {}", c.name, f.message), f.hint.as_deref());
        }
    }
}

/// The exit code of a pass: 0; 9 when only deploy hooks failed; the
/// failure's code when certificates failed; 8 for both.
fn pass_code(c: &Counts) -> u8 {
    match (c.failed > 0, c.hook_failed > 0) {
        (false, false) => exit::OK,
        (false, true) => exit::DEPLOY_HOOK,
        (true, false) => exit::USAGE,
        (true, true) => exit::PARTIAL,
    }
}

pub(crate) async fn run(global: &GlobalArgs, args: SyncArgs) -> u8 {
    let store = match open(global) {
        Ok(s) => s,
        Err(f) => return f.report(global, None),
    };
    let options = SyncOptions {
        to: args.to.clone(),
        names: args.names.clone(),
        deploy_hook: args.deploy_hook.clone(),
        hook_timeout: args.hook_timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT),
    };
    if args.follow {
        setup::stop_on_signal();
    }
    // The first pass: a failure of the whole pass ends the command (an
    // unusable --to, an unknown --name), also with --follow.
    let report = match sync(&store, &options).await {
        Ok(r) => r,
        Err(e) => return failure(&e).report(global, None),
    };
    let counts = render(global, &report, true);
    if !args.follow {
        return pass_code(&counts);
    }
    let interval = args.interval.unwrap_or(DEFAULT_INTERVAL);
    let cancel = setup::cancel_token();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        // A pass that fails (the store unreachable for a while) is
        // reported, and the next one tried: a web node keeps its files.
        match sync(&store, &options).await {
            Ok(r) => {
                render(global, &r, false);
            }
            Err(e) => {
                let f = failure(&e);
                crate::output::print_error(&f.message, f.hint.as_deref());
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    exit::OK
}
