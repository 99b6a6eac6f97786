//! `certsmith list`: what is in the store and when it will be renewed.
//!
//! Why this module exists: an operator (or a monitoring check with
//! `--output json`) needs one place that answers "what do I have, when does
//! it expire, when will certsmith renew it and why, and is anything wrong"
//! without contacting the CA. Everything comes from the store: the current
//! `cert.pem` and the `lineage.toml` next to it, whose `[renewal]` record
//! `run`/`renew` keep up to date (including the CA's ARI window).

use certsmith_core::error::IssueError;
use certsmith_core::renewal::{self, CertState};
use serde_json::json;
use time::OffsetDateTime;

use crate::failure::Failure;
use crate::output::print_json;
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit};

/// List stored certificates.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Only this certificate (repeatable).
    #[arg(long = "cert-name", value_name = "NAME")]
    names: Vec<String>,
}

struct Row {
    name: String,
    domains: Vec<String>,
    issuer: String,
    serial: String,
    not_after: Option<OffsetDateTime>,
    days_left: Option<i64>,
    next: Option<(OffsetDateTime, renewal::RenewReason)>,
    explanation_url: Option<String>,
    solver: String,
    state: String,
    version: Option<u32>,
    path: String,
}

pub(crate) async fn run(global: &GlobalArgs, args: ListArgs) -> u8 {
    let config = match setup::load_config(global) {
        Ok(c) => c,
        Err(e) => return setup::report_config_errors(global, &e),
    };
    let store = match setup::open_store(global, config.as_ref()) {
        Ok(s) => s,
        Err(f) => return f.report(global, None),
    };
    let names = match store.cert_names() {
        Ok(n) => n,
        Err(e) => return Failure::from_issue(&IssueError::from(e)).report(global, None),
    };
    let now = OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    for name in names {
        if !args.names.is_empty() && !args.names.contains(&name) {
            continue;
        }
        let lineage = match store.load_lineage(&name) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("{e}");
                continue;
            }
        };
        let current = store
            .current_dir(&name)
            .map_or_else(|| "-".to_owned(), |d| d.display().to_string());
        let facts = renewal::read_current(&store, &name);
        let row = match facts {
            Ok(Some(f)) => {
                let state = renewal::state(&lineage, &f, now);
                let next = (state != CertState::Revoked && state != CertState::Expired)
                    .then(|| renewal::stored_schedule(&lineage, &f));
                let explanation_url = lineage
                    .renewal
                    .as_ref()
                    .filter(|r| r.serial == f.serial)
                    .and_then(|r| r.explanation_url.clone());
                Row {
                    name: name.clone(),
                    domains: lineage.domains.clone(),
                    issuer: f.issuer.clone(),
                    serial: f.serial.clone(),
                    not_after: Some(f.not_after),
                    days_left: Some((f.not_after - now).whole_days()),
                    next,
                    explanation_url,
                    solver: lineage.solver.clone(),
                    state: state.as_str().to_owned(),
                    version: store.current_version(&name).ok().flatten(),
                    path: current.clone(),
                }
            }
            Ok(None) | Err(_) => {
                // A damaged current version is due (`run`/`renew` replace
                // it); a missing one was never stored.
                let damaged = matches!(&facts, Err(renewal::RenewalError::Damaged { .. }));
                if let Err(e) = &facts {
                    log::warn!("{e}");
                }
                Row {
                    name: name.clone(),
                    domains: lineage.domains.clone(),
                    issuer: String::new(),
                    serial: String::new(),
                    not_after: None,
                    days_left: None,
                    next: None,
                    explanation_url: None,
                    solver: lineage.solver.clone(),
                    state: if damaged { "damaged" } else { "missing" }.to_owned(),
                    version: if damaged {
                        store.current_version(&name).ok().flatten()
                    } else {
                        None
                    },
                    path: current.clone(),
                }
            }
        };
        rows.push(row);
    }
    for n in &args.names {
        if !rows.iter().any(|r| &r.name == n) {
            return Failure::usage(
                format!("no certificate named '{n}' in {}", store.location()),
                None,
            )
            .report(global, None);
        }
    }
    match global.output {
        OutputFormat::Json => {
            for r in &rows {
                print_json(&json!({
                    "name": r.name,
                    "domains": r.domains,
                    "issuer": r.issuer,
                    "serial": r.serial,
                    "not_after": r.not_after.map(renewal::rfc3339),
                    "days_left": r.days_left,
                    "next_renewal": r.next.map(|(t, _)| renewal::rfc3339(t)),
                    "renewal_reason": r.next.map(|(_, why)| why.as_str()),
                    "explanation_url": r.explanation_url,
                    "solver": r.solver,
                    "state": r.state,
                    "version": r.version,
                    "path": r.path,
                }));
            }
        }
        OutputFormat::Text => {
            if rows.is_empty() {
                println!("no certificates in {}", store.location());
                return exit::OK;
            }
            println!(
                "{:<24} {:<8} {:<21} {:>5} {:<34} {:<12} {:<24} DOMAINS",
                "NAME", "STATE", "NOT AFTER", "DAYS", "NEXT RENEWAL (WHY)", "SOLVER", "ISSUER"
            );
            for r in &rows {
                println!(
                    "{:<24} {:<8} {:<21} {:>5} {:<34} {:<12} {:<24} {}",
                    r.name,
                    r.state,
                    r.not_after.map_or_else(|| "-".to_owned(), renewal::rfc3339),
                    r.days_left
                        .map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    r.next.map_or_else(
                        || "-".to_owned(),
                        |(t, why)| format!("{} ({})", renewal::rfc3339(t), why.as_str())
                    ),
                    r.solver,
                    r.issuer,
                    r.domains.join(",")
                );
            }
        }
    }
    exit::OK
}
