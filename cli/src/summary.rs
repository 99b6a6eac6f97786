//! The end of a batch (`run`, `renew`): a table on stdout (or one JSON
//! object per certificate and a summary object), errors on stderr, and the
//! exit code.

use std::collections::BTreeMap;

use certsmith_core::agent::{Job, JobError};
use certsmith_core::error::IssueError;
use certsmith_core::renewal::RenewReason;
use certsmith_core::timefmt::rfc3339;
use serde_json::json;

use crate::failure::Failure;
use crate::output::{outln, print_error, print_json};
use crate::{GlobalArgs, OutputFormat, exit};

/// A job's failure as a batch reports it: the hints of `issue` name its
/// flags, so the ones about the account say where a batch takes them from.
pub(crate) fn batch_failure(e: &JobError) -> Failure {
    let mut f = Failure::from_job(e);
    match e.issue_error() {
        Some(IssueError::TermsNotAgreed { .. }) => {
            f.hint = Some(
                "read the terms, then set agree_tos = true in [defaults] (renew: --agree-tos)"
                    .to_owned(),
            );
        }
        Some(IssueError::EabRequired { .. } | IssueError::Eab(_)) => {
            f.hint = Some(
                "set eab_kid in [defaults] (or CERTSMITH_EAB_KID) and CERTSMITH_EAB_HMAC_KEY (or CERTSMITH_EAB_HMAC_KEY_FILE)"
                    .to_owned(),
            );
        }
        Some(IssueError::Plugin(p)) if p.is_usage() => {
            f.hint = Some(
                "set the option's environment variable (or its *_FILE) or its key in [solvers.<CODE>] of the config file for every scheduled run, or pass --solver-opt CODE:KEY=VALUE for this one; `certsmith solvers info <CODE>` lists them"
                    .to_owned(),
            );
        }
        _ => {}
    }
    f
}

/// A failure to set up a batch's account, as the batch reports it.
pub(crate) fn account_failure(e: IssueError) -> Failure {
    batch_failure(&JobError::from(e))
}

/// Prints the summary of a batch; returns the exit code.
pub(crate) fn summarize(global: &GlobalArgs, jobs: &[Job], interrupted: bool) -> u8 {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failures: Vec<(&str, Failure)> = Vec::new();
    let mut successes = 0usize;
    let mut rows = Vec::new();
    for job in jobs {
        let (action, detail, failure) = job.result();
        let failure = failure.map(batch_failure);
        *counts.entry(action).or_default() += 1;
        match &failure {
            Some(f) => failures.push((&job.name, f.clone())),
            None if action != "failed" => successes += 1,
            None => {}
        }
        rows.push((job, action, detail, failure));
    }

    match global.output {
        OutputFormat::Json => {
            for (job, action, detail, failure) in &rows {
                print_json(&job_json(job, action, detail, failure.as_ref()));
            }
        }
        OutputFormat::Text => {
            outln!(
                "{:<24} {:<8} {:<21} {:<36} DETAIL",
                "NAME",
                "ACTION",
                "NOT AFTER",
                "NEXT RENEWAL"
            );
            for (job, action, detail, failure) in &rows {
                let detail = match failure {
                    Some(f) if *action == "failed" || detail.is_empty() => first_line(&f.message),
                    Some(f) => format!("{detail}: {}", first_line(&f.message)),
                    None => detail.clone(),
                };
                let cert = job.outcome.as_ref().and_then(|o| o.cert.as_ref());
                let not_after = cert
                    .map(|c| c.not_after)
                    .or_else(|| job.facts.as_ref().map(|f| f.not_after));
                outln!(
                    "{:<24} {:<8} {:<21} {:<36} {}",
                    job.name,
                    action,
                    not_after.map_or_else(|| "-".to_owned(), rfc3339),
                    job.next.map_or_else(
                        || "-".to_owned(),
                        |(t, r)| format!("{} {}", rfc3339(t), short_reason(r))
                    ),
                    detail
                );
            }
            let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            outln!("{} certificate(s): {}", jobs.len(), parts.join(", "));
        }
    }
    for (name, f) in &failures {
        print_error(&format!("{name}: {}", f.message), f.hint.as_deref());
    }
    let codes: Vec<u8> = failures.iter().map(|(_, f)| f.code).collect();
    let code = batch_exit_code(&codes, successes, interrupted);
    if global.output == OutputFormat::Json {
        print_json(&json!({
            "summary": {
                "total": jobs.len(),
                "issued": counts.get("issued").copied().unwrap_or(0),
                "renewed": counts.get("renewed").copied().unwrap_or(0),
                "skipped": counts.get("skipped").copied().unwrap_or(0),
                "failed": failures.len(),
                "interrupted": interrupted,
            },
            "exit_code": code,
        }));
    }
    code
}

/// One certificate of a batch as JSON.
pub(crate) fn job_json(
    job: &Job,
    action: &str,
    detail: &str,
    failure: Option<&Failure>,
) -> serde_json::Value {
    let cert = job.outcome.as_ref().and_then(|o| o.cert.as_ref());
    let not_after = cert
        .map(|c| c.not_after)
        .or_else(|| job.facts.as_ref().map(|f| f.not_after));
    let hook_json = |h: &Result<(), JobError>| match h {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "failed", "error": batch_failure(e).json()}),
    };
    let hook = job
        .outcome
        .as_ref()
        .and_then(|o| o.hook.as_ref())
        .map(hook_json);
    let post_hook = job
        .outcome
        .as_ref()
        .and_then(|o| o.post_hook.as_ref())
        .map(hook_json);
    json!({
        "name": job.name,
        "domains": job.domains,
        "action": action,
        "reason": detail,
        "version": cert.map(|c| c.version),
        "serial": cert.map(|c| c.serial.clone()).or_else(|| job.facts.as_ref().map(|f| f.serial.clone())),
        "not_after": not_after.map(rfc3339),
        "next_renewal": job.next.map(|(t, _)| rfc3339(t)),
        "renewal_reason": job.next.map(|(_, r)| r.as_str()),
        "replaces": job.replaces,
        // A certificate skipped (or whose renewal failed) still has its
        // current files.
        "fullchain_path": cert.map(|c| c.fullchain_path.clone()).or_else(|| current_file(job, certsmith_core::store::FULLCHAIN_FILE)),
        // `null` for a certificate of the user's CSR: the key is theirs.
        "privkey_path": match cert {
            Some(c) => c.privkey_path.clone(),
            None => current_file(job, certsmith_core::store::PRIVKEY_FILE).filter(|p| p.exists()),
        },
        "deploy_hook": hook,
        "post_hook": post_hook,
        "error": failure.map(Failure::json),
    })
}

/// A file of the job's current version, when there is one.
fn current_file(job: &Job, file: &str) -> Option<std::path::PathBuf> {
    job.facts.as_ref()?;
    job.current_dir.as_ref().map(|d| d.join(file))
}

/// The exit code of a batch: 0 when nothing failed; the failure class's
/// code when every certificate failed for the same class; otherwise
/// [`exit::PARTIAL`]. Skipped certificates count as successes.
pub(crate) fn batch_exit_code(failure_codes: &[u8], successes: usize, interrupted: bool) -> u8 {
    if interrupted {
        return exit::INTERRUPTED;
    }
    match failure_codes.first() {
        None => exit::OK,
        Some(&first) if successes == 0 && failure_codes.iter().all(|&c| c == first) => first,
        Some(_) => exit::PARTIAL,
    }
}

fn short_reason(r: RenewReason) -> &'static str {
    match r {
        RenewReason::Ari => "(ari)",
        RenewReason::Damaged => "(damaged)",
        RenewReason::RenewBefore => "(renew_before)",
        _ => "(expiry)",
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_exit_codes() {
        assert_eq!(batch_exit_code(&[], 5, false), exit::OK);
        assert_eq!(batch_exit_code(&[], 0, false), exit::OK);
        assert_eq!(batch_exit_code(&[exit::SOLVER], 4, false), exit::PARTIAL);
        assert_eq!(
            batch_exit_code(&[exit::SOLVER, exit::SOLVER], 0, false),
            exit::SOLVER
        );
        assert_eq!(
            batch_exit_code(&[exit::DEPLOY_HOOK], 0, false),
            exit::DEPLOY_HOOK
        );
        assert_eq!(
            batch_exit_code(&[exit::SOLVER, exit::NETWORK], 0, false),
            exit::PARTIAL
        );
        assert_eq!(batch_exit_code(&[], 3, true), exit::INTERRUPTED);
    }
}
