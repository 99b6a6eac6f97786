//! Progress of `certsmith issue` on stderr.
//!
//! Why this module exists: the engine reports [`ProgressEvent`]s and knows
//! nothing of terminals; this turns them into lines on stderr
//! (`[certsmith] order created for a.test (2 authorizations)`), with a live
//! status line on a terminal and plain lines in a CI log, and keeps stdout
//! free for results (`--output json | jq` must see only JSON).

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
///
/// On a terminal (and at normal verbosity) the printer is live: steps that
/// only mark a wait (presented, validating, propagating) replace each other
/// on one status line with a spinner and the time spent, and milestones
/// stay as lines. Anywhere else (CI logs, pipes) every step is a plain line.
pub(crate) fn spawn(verbosity: Verbosity) -> (Progress, JoinHandle<()>) {
    use std::io::IsTerminal;
    let live = verbosity == Verbosity::Normal
        && std::io::stderr().is_terminal()
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
    let (tx, rx) = mpsc::unbounded_channel::<ProgressEvent>();
    let task = if live {
        tokio::spawn(live_printer(rx))
    } else {
        tokio::spawn(plain_printer(rx, verbosity))
    };
    (Progress::new(tx), task)
}

async fn plain_printer(mut rx: mpsc::UnboundedReceiver<ProgressEvent>, verbosity: Verbosity) {
    let started = Instant::now();
    while let Some(event) = rx.recv().await {
        let warning = matches!(
            event,
            ProgressEvent::CleanupFailed { .. } | ProgressEvent::LeftoverKept { .. }
        );
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
}

/// Whether an event only marks a wait, to be replaced by the next one.
fn is_transient(event: &ProgressEvent) -> bool {
    matches!(
        event,
        ProgressEvent::AuthorizationPending { .. }
            | ProgressEvent::ChallengePresented { .. }
            | ProgressEvent::Validating { .. }
            | ProgressEvent::Propagation { .. }
            | ProgressEvent::PropagationWait { .. }
    )
}

/// Erases the status line: carriage return, then ANSI "erase line".
const CLEAR: &str = "\r\x1b[2K";
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

async fn live_printer(mut rx: mpsc::UnboundedReceiver<ProgressEvent>) {
    let mut status: Option<(String, Instant)> = None;
    let mut frame = 0usize;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(120));
    let draw = |status: &Option<(String, Instant)>, frame: usize| {
        let mut err = std::io::stderr().lock();
        match status {
            Some((text, since)) => {
                let _ = write!(
                    err,
                    "{CLEAR}{} {text} ({:.1}s)",
                    SPINNER[frame % SPINNER.len()],
                    since.elapsed().as_secs_f64()
                );
            }
            None => {
                let _ = write!(err, "{CLEAR}");
            }
        }
        let _ = err.flush();
    };
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                let Some(text) = line(&event) else { continue };
                if is_transient(&event) {
                    status = Some((text, Instant::now()));
                } else {
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(err, "{CLEAR}[certsmith] {text}");
                    drop(err);
                    // A milestone ends the wait it follows.
                    status = None;
                }
                draw(&status, frame);
            }
            _ = tick.tick() => {
                frame += 1;
                if status.is_some() {
                    draw(&status, frame);
                }
            }
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{CLEAR}");
    let _ = err.flush();
}

/// The line for an event, if it gets one: the event's own sentence, with
/// `warning:` before the failures that do not stop the run.
pub(crate) fn line(event: &ProgressEvent) -> Option<String> {
    Some(match event {
        // The final error is printed once, with its hint, by the command.
        ProgressEvent::Failed { .. } => return None,
        // So is a pre-hook's or deploy hook's failure (the post-hook's
        // may follow a failed order, whose error is the one printed).
        ProgressEvent::HookFailed {
            hook: certsmith_core::hooks::HookKind::Pre | certsmith_core::hooks::HookKind::Deploy,
            ..
        } => return None,
        ProgressEvent::CleanupFailed { .. }
        | ProgressEvent::LeftoverKept { .. }
        | ProgressEvent::HookFailed {
            hook: certsmith_core::hooks::HookKind::Post,
            ..
        } => {
            format!("warning: {event}")
        }
        _ => event.to_string(),
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
