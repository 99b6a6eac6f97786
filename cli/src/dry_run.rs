//! `--dry-run` for `issue`, `run` and `renew`: the whole flow against the
//! CA's staging directory, nothing stored, and a report of what a real run
//! would change.
//!
//! Why this module exists: an operator changing a solver, a hook or a
//! config file wants to know it works before the next renewal is due,
//! without spending production rate limits and without touching the state
//! directory a web server reads from. A dry run therefore plans against the
//! real store, read only (what would be ordered, and why), then orders
//! every certificate for real from a staging CA into a temporary store that
//! is thrown away: a new staging account, real challenges (pre- and
//! post-hooks run, they free ports), no deploy hook. The state directory
//! is left byte for byte as it was: no account, no version, no journal, no
//! lease file, no renewal schedule.

use std::path::Path;

use certsmith_core::acme::{self, AcmeClient};
use certsmith_core::agent::{Job, Plan};
use certsmith_core::config::Config;
use certsmith_core::store::Store;
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_error, print_json};
use crate::{GlobalArgs, OutputFormat, exit};

/// The dry-run flags of `issue`, `run` and `renew`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct DryRunArgs {
    /// Try the whole flow against the CA's staging directory
    /// (letsencrypt-staging for letsencrypt; any other CA needs
    /// --dry-run-server): nothing is stored, no deploy hook runs, and the
    /// report says what a real run would change.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The ACME directory URL a dry run orders from [default: the CA's
    /// staging directory, when one is known].
    #[arg(long, value_name = "URL", requires = "dry_run")]
    pub(crate) dry_run_server: Option<String>,
}

/// A throwaway store, removed when dropped.
pub(crate) struct Scratch {
    pub(crate) store: Store,
    _dir: tempfile::TempDir,
}

impl Scratch {
    /// A new, empty store in a temporary directory.
    pub(crate) fn new() -> Result<Scratch, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("certsmith-dry-run-")
            .tempdir()
            .map_err(|e| {
                Failure::usage(
                    format!("cannot create a temporary directory for the dry run: {e}"),
                    Some("set TMPDIR to a writable directory"),
                )
            })?;
        let store = Store::open(dir.path().join("state")).map_err(Failure::from)?;
        Ok(Scratch { store, _dir: dir })
    }
}

impl DryRunArgs {
    /// The client a dry run orders from, for a real run's CA `real`: the
    /// `--dry-run-server`, else the CA's staging directory.
    pub(crate) fn client(
        &self,
        real: &AcmeClient,
        ca_cert: Option<&Path>,
    ) -> Result<AcmeClient, Failure> {
        let server = match (
            &self.dry_run_server,
            acme::staging_directory(real.directory_url()),
        ) {
            (Some(s), _) => s.clone(),
            (None, Some(staging)) => staging.to_owned(),
            (None, None) => {
                return Err(Failure::usage(
                    format!(
                        "no staging directory is known for the CA {}: a dry run does not order from a production CA",
                        real.directory_url()
                    ),
                    Some(
                        "pass --dry-run-server URL with the CA's staging (or test) ACME directory",
                    ),
                ));
            }
        };
        AcmeClient::new(&server, ca_cert).map_err(|e| {
            let mut f = Failure::from_issue(&e);
            f.hint = Some("--dry-run-server takes the https URL of an ACME directory".to_owned());
            f
        })
    }
}

/// The store a dry run plans against: the real state directory, opened
/// read only; a temporary empty one when it does not exist yet (then every
/// certificate would be new). Nothing is created in either case.
pub(crate) fn planning_store(
    global: &GlobalArgs,
    config: Option<&Config>,
) -> Result<(Store, Option<Scratch>), Failure> {
    let root = crate::setup::state_root(global, config)?;
    if root.exists() || crate::setup::store_url(global, config).is_some() {
        return Ok((crate::setup::open_store_read_only(global, config)?, None));
    }
    let scratch = Scratch::new()?;
    Ok((scratch.store.clone(), Some(scratch)))
}

/// What a real run would do with a certificate, as one word and why.
fn would(job: &Job) -> (&'static str, String) {
    match &job.plan {
        Ok(Plan::Issue(why)) => ("issue", why.clone()),
        Ok(Plan::Renew(why)) => ("renew", why.clone()),
        Ok(Plan::Skip(why)) => ("skip", why.clone()),
        Ok(_) => ("skip", String::new()),
        Err(e) => ("fail", e.to_string()),
    }
}

/// Prints the report of a dry run: for every certificate, what a real run
/// would do (`real`) and how its test order at `server` went (`trial`,
/// in the same order); with `batch`, a summary line. Returns the exit code.
pub(crate) fn report(
    global: &GlobalArgs,
    server: &str,
    real: &[Job],
    trial: &[Job],
    interrupted: bool,
    batch: bool,
) -> u8 {
    let mut failures: Vec<Failure> = Vec::new();
    let mut successes = 0usize;
    let mut counts = [0usize; 3];
    if global.output == OutputFormat::Text {
        outln!("dry run: test orders from {server}; nothing was stored, no deploy hook ran");
    }
    for (job, test) in real.iter().zip(trial) {
        let (verb, reason) = would(job);
        match verb {
            "issue" => counts[0] += 1,
            "renew" => counts[1] += 1,
            "skip" => counts[2] += 1,
            _ => {}
        }
        let (action, _, failure) = test.result();
        let failure = match (&job.plan, failure) {
            (Err(e), _) => Some(Failure::from_job(e)),
            (_, Some(e)) => Some(Failure::from_job(e)),
            _ => None,
        };
        let result = match (&failure, action) {
            (Some(_), _) => "failed",
            (None, "skipped") => "skipped",
            (None, _) => "ok",
        };
        match &failure {
            Some(f) => failures.push(f.clone()),
            None => successes += 1,
        }
        match global.output {
            OutputFormat::Json => print_json(&json!({
                "name": job.name,
                "domains": job.domains,
                "dry_run": true,
                "server": server,
                "would": verb,
                "reason": reason,
                "test_order": result,
                "error": failure.as_ref().map(Failure::json),
            })),
            OutputFormat::Text => {
                outln!("{}", job.name);
                outln!("  domains:    {}", job.domains.join(", "));
                outln!("  would:      {verb} ({reason})");
                outln!("  test order: {result}");
            }
        }
        if let Some(f) = &failure {
            print_error(&format!("{}: {}", job.name, f.message), f.hint.as_deref());
        }
    }
    let codes: Vec<u8> = failures.iter().map(|f| f.code).collect();
    let code = crate::summary::batch_exit_code(&codes, successes, interrupted);
    if batch && global.output == OutputFormat::Json {
        print_json(&json!({
            "summary": {
                "total": real.len(),
                "issued": counts[0],
                "renewed": counts[1],
                "skipped": counts[2],
                "failed": failures.len(),
                "interrupted": interrupted,
            },
            "exit_code": code,
        }));
    }
    if interrupted {
        return exit::INTERRUPTED;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letsencrypt_dry_runs_go_to_staging_and_other_cas_need_a_server() {
        let args = DryRunArgs {
            dry_run: true,
            dry_run_server: None,
        };
        for real in ["letsencrypt", "letsencrypt-staging"] {
            let real = AcmeClient::new(real, None).expect("client");
            let trial = args.client(&real, None).expect("staging known");
            assert_eq!(trial.directory_url(), acme::LETSENCRYPT_STAGING);
        }
        let zerossl = AcmeClient::new("zerossl", None).expect("client");
        let e = args.client(&zerossl, None).expect_err("no staging known");
        assert_eq!(e.code, exit::USAGE);
        assert!(
            e.hint
                .as_deref()
                .is_some_and(|h| h.contains("--dry-run-server")),
            "{e:?}"
        );
        let args = DryRunArgs {
            dry_run: true,
            dry_run_server: Some("ftp://nope".to_owned()),
        };
        let e = args.client(&zerossl, None).expect_err("not a URL");
        assert!(
            e.hint
                .as_deref()
                .is_some_and(|h| h.contains("--dry-run-server")),
            "{e:?}"
        );
        let args = DryRunArgs {
            dry_run: true,
            dry_run_server: Some("https://ca.test/dir".to_owned()),
        };
        let trial = args.client(&zerossl, None).expect("given");
        assert_eq!(trial.directory_url(), "https://ca.test/dir");
    }
}
