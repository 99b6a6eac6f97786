//! Progress of `certsmith issue` on stderr.
//!
//! Why this module exists: the engine reports [`ProgressEvent`]s and knows
//! nothing of terminals; this turns them into one plain line each on stderr
//! (`[certsmith] order created for a.test (2 authorizations)`), which reads
//! well on a terminal and in a CI log alike, and keeps stdout free for
//! results (`--output json | jq` must see only JSON).

use std::io::Write;
use std::time::Instant;

use certsmith_core::progress::{Progress, ProgressEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How much to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verbosity {
    /// Nothing but warnings about failed cleanups.
    Quiet,
    /// One line per step.
    Normal,
    /// Also timings.
    Verbose,
}

/// Starts the printer; returns the engine's side of the channel and the
/// task, which ends once every sender is gone.
pub(crate) fn spawn(verbosity: Verbosity) -> (Progress, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<ProgressEvent>();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let warning = matches!(event, ProgressEvent::CleanupFailed { .. });
            if verbosity == Verbosity::Quiet && !warning {
                continue;
            }
            let Some(text) = line(&event) else { continue };
            let mut err = std::io::stderr().lock();
            let _ = if verbosity == Verbosity::Verbose {
                writeln!(
                    err,
                    "[certsmith {:>7.3}s] {text}",
                    started.elapsed().as_secs_f64()
                )
            } else {
                writeln!(err, "[certsmith] {text}")
            };
        }
    });
    (Progress::new(tx), task)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The line for an event, if it gets one.
pub(crate) fn line(event: &ProgressEvent) -> Option<String> {
    Some(match event {
        ProgressEvent::AccountReady {
            server,
            account_url,
            created,
        } => {
            if *created {
                format!("account created at {server} ({account_url})")
            } else {
                format!("using account {account_url}")
            }
        }
        ProgressEvent::OrderCreated {
            domains,
            authorizations,
            ..
        } => format!(
            "order created for {} ({})",
            domains.join(", "),
            plural(*authorizations, "authorization")
        ),
        ProgressEvent::AuthorizationPending {
            domain, challenge, ..
        } => format!("{domain}: answering the {challenge} challenge"),
        ProgressEvent::AuthorizationReused { domain, .. } => {
            format!("{domain}: already authorized")
        }
        ProgressEvent::ChallengePresented {
            domain, challenge, ..
        } => format!("{domain}: {challenge} response in place"),
        ProgressEvent::Validating { name, challenges } => format!(
            "{name}: the CA is validating {}",
            plural(*challenges, "challenge")
        ),
        ProgressEvent::Valid { domain, .. } => format!("{domain}: valid"),
        ProgressEvent::Invalid {
            domain, problem, ..
        } => match problem {
            Some(p) => format!("{domain}: invalid: {p}"),
            None => format!("{domain}: invalid"),
        },
        ProgressEvent::CleanedUp {
            domain, challenge, ..
        } => format!("{domain}: {challenge} response removed"),
        ProgressEvent::CleanupFailed {
            domain,
            challenge,
            error,
            ..
        } => format!("warning: {domain}: could not remove the {challenge} response: {error}"),
        ProgressEvent::Finalizing { name } => {
            format!("{name}: validated; requesting the certificate")
        }
        ProgressEvent::Saved {
            name,
            version,
            path,
        } => format!("{name}: saved version {version} in {}", path.display()),
        ProgressEvent::DnsRecord {
            domain,
            fqdn,
            zone,
            cname_chain,
            ..
        } => {
            if cname_chain.len() > 1 {
                format!(
                    "{domain}: TXT record goes to {fqdn} in zone {zone} (via CNAME {})",
                    cname_chain.join(" → ")
                )
            } else {
                format!("{domain}: TXT record {fqdn} in zone {zone}")
            }
        }
        ProgressEvent::Propagation {
            fqdn, ready, total, ..
        } => format!("{fqdn}: {ready}/{total} nameservers serve the record"),
        // The final error is printed once, with its hint, by the command.
        ProgressEvent::Failed { .. } => return None,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let e = ProgressEvent::OrderCreated {
            name: "a.test".into(),
            domains: vec!["a.test".into(), "b.test".into()],
            authorizations: 2,
        };
        assert_eq!(
            line(&e).as_deref(),
            Some("order created for a.test, b.test (2 authorizations)")
        );
        let e = ProgressEvent::Validating {
            name: "a.test".into(),
            challenges: 1,
        };
        assert_eq!(
            line(&e).as_deref(),
            Some("a.test: the CA is validating 1 challenge")
        );
        assert!(
            line(&ProgressEvent::Failed {
                name: "x".into(),
                error: "e".into()
            })
            .is_none()
        );
    }
}
