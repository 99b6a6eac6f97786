//! Deploy hooks: the command run after a certificate changes.
//!
//! Why this module exists: a new certificate on disk is worth nothing until
//! the web server reloads it. A hook (`--deploy-hook CMD`, `deploy_hook` in
//! the config file) is the bridge, and it must be dependable in unattended
//! runs: it gets the certificate's paths in its environment, it cannot hang
//! the agent (a timeout kills its whole process group), its output reaches
//! the log, and its failure is reported with that output. A failing hook
//! never removes the new certificate: the files are already in place and
//! valid; only the reload failed.
//!
//! The command runs as `sh -c CMD` with the agent's environment plus:
//!
//! | variable | value |
//! |---|---|
//! | `CERTSMITH_CERT_NAME` | the certificate name |
//! | `CERTSMITH_DOMAINS` | its domains, separated by spaces |
//! | `CERTSMITH_CERT_DIR` | `certs/<name>/current`, the directory of the files |
//! | `CERTSMITH_FULLCHAIN` | `.../current/fullchain.pem` |
//! | `CERTSMITH_PRIVKEY` | `.../current/privkey.pem` |
//! | `CERTSMITH_CERT` | `.../current/cert.pem` |
//! | `CERTSMITH_CHAIN` | `.../current/chain.pem` |
//! | `CERTSMITH_VERSION` | the version number now current |

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::store;

/// How much of a hook's output is kept for the result and error messages.
const MAX_OUTPUT: usize = 64 * 1024;
/// How many lines of output an error message repeats.
const TAIL_LINES: usize = 10;

/// What a hook is told about the certificate.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// The certificate name.
    pub cert_name: String,
    /// Its domains (ASCII).
    pub domains: Vec<String>,
    /// `certs/<name>/current`.
    pub cert_dir: PathBuf,
    /// The version now current.
    pub version: u32,
}

impl HookContext {
    /// The environment variables the hook receives.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let file = |f: &str| self.cert_dir.join(f).display().to_string();
        vec![
            ("CERTSMITH_CERT_NAME", self.cert_name.clone()),
            ("CERTSMITH_DOMAINS", self.domains.join(" ")),
            ("CERTSMITH_CERT_DIR", self.cert_dir.display().to_string()),
            ("CERTSMITH_FULLCHAIN", file(store::FULLCHAIN_FILE)),
            ("CERTSMITH_PRIVKEY", file(store::PRIVKEY_FILE)),
            ("CERTSMITH_CERT", file(store::CERT_FILE)),
            ("CERTSMITH_CHAIN", file(store::CHAIN_FILE)),
            ("CERTSMITH_VERSION", self.version.to_string()),
        ]
    }
}

/// A hook that ran and exited 0.
#[derive(Clone, Debug)]
pub struct HookOutcome {
    /// stdout and stderr, interleaved by line, at most 64 KiB.
    pub output: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Why a hook failed. The certificate it was run for stays in place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// `sh` could not be started.
    #[error("cannot start the deploy hook `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hook exited with a non-zero status or was killed by a signal.
    #[error("the deploy hook `{command}` failed ({status}){}", tail(.output))]
    Failed {
        /// The command.
        command: String,
        /// "exit status 3", "killed by signal 9".
        status: String,
        /// What it printed.
        output: String,
    },
    /// The hook ran longer than its timeout and was killed with its
    /// process group.
    #[error("the deploy hook `{command}` did not finish within {}s and was killed{}", .after.as_secs(), tail(.output))]
    TimedOut {
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
        /// What it printed until then.
        output: String,
    },
}

impl HookError {
    /// What the operator can do.
    pub fn hint(&self) -> &'static str {
        match self {
            HookError::Spawn { .. } => "check that /bin/sh exists and the command is valid",
            HookError::Failed { .. } => {
                "the new certificate is in place; fix the hook and run it by hand (it takes the CERTSMITH_* variables)"
            }
            HookError::TimedOut { .. } => {
                "the new certificate is in place; make the hook finish sooner or raise deploy_hook_timeout"
            }
        }
    }
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(TAIL_LINES);
    format!("; its output ends with:\n  {}", lines[start..].join("\n  "))
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// Runs `command` with `sh -c` for `ctx`, waiting at most `timeout`.
/// Every line it prints is logged (`log::info!`, target `certsmith::hook`)
/// as it arrives.
pub async fn run_hook(
    command: &str,
    ctx: &HookContext,
    timeout: Duration,
) -> Result<HookOutcome, HookError> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in ctx.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        command: command.to_owned(),
        source,
    })?;
    let pid = child.id();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let readers = [
        child.stdout.take().map(|o| spawn_reader(o, tx.clone())),
        child.stderr.take().map(|e| spawn_reader(e, tx.clone())),
    ];
    drop(tx);

    let name = ctx.cert_name.clone();
    let collect = async move {
        let mut output = String::new();
        while let Some(line) = rx.recv().await {
            log::info!(target: "certsmith::hook", "deploy hook for {name}: {line}");
            if output.len() + line.len() < MAX_OUTPUT {
                output.push_str(&line);
                output.push('\n');
            }
        }
        output
    };
    let collector = tokio::spawn(collect);

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => {
            log::warn!("waiting for the deploy hook failed: {e}");
            None
        }
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill has no memory-safety preconditions; a negative
                // pid addresses the process group the child leads.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            None
        }
    };
    // The pipes close when the group is gone; grandchildren that detached
    // could keep them open, so do not wait for them for long.
    for r in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let output = match tokio::time::timeout(Duration::from_secs(2), collector).await {
        Ok(Ok(o)) => o,
        _ => String::new(),
    };
    match status {
        Some(s) if s.success() => Ok(HookOutcome {
            output,
            elapsed: started.elapsed(),
        }),
        Some(s) => Err(HookError::Failed {
            command: command.to_owned(),
            status: describe(s),
            output,
        }),
        None => Err(HookError::TimedOut {
            command: command.to_owned(),
            after: timeout,
            output,
        }),
    }
}

fn spawn_reader(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &std::path::Path) -> HookContext {
        HookContext {
            cert_name: "a.example".into(),
            domains: vec!["a.example".into(), "www.a.example".into()],
            cert_dir: dir.join("current"),
            version: 3,
        }
    }

    #[tokio::test]
    async fn hook_gets_the_environment_and_its_output_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run_hook(
            "echo \"$CERTSMITH_CERT_NAME|$CERTSMITH_DOMAINS|$CERTSMITH_FULLCHAIN|$CERTSMITH_PRIVKEY|$CERTSMITH_VERSION\"; echo err >&2",
            &ctx(dir.path()),
            Duration::from_secs(10),
        )
        .await
        .expect("runs");
        let fullchain = dir.path().join("current/fullchain.pem");
        let privkey = dir.path().join("current/privkey.pem");
        assert!(
            out.output.contains(&format!(
                "a.example|a.example www.a.example|{}|{}|3",
                fullchain.display(),
                privkey.display()
            )),
            "{}",
            out.output
        );
        assert!(out.output.contains("err"), "{}", out.output);
    }

    #[tokio::test]
    async fn failure_reports_status_and_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = run_hook(
            "echo reloading; echo 'nginx: bad config' >&2; exit 3",
            &ctx(dir.path()),
            Duration::from_secs(10),
        )
        .await
        .expect_err("fails");
        let s = e.to_string();
        assert!(s.contains("exit status 3"), "{s}");
        assert!(s.contains("nginx: bad config"), "{s}");
        assert!(matches!(e, HookError::Failed { .. }));
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survived");
        let cmd = format!(
            "echo started; (sleep 3; touch {}) & sleep 30",
            marker.display()
        );
        let started = Instant::now();
        let e = run_hook(&cmd, &ctx(dir.path()), Duration::from_millis(300))
            .await
            .expect_err("times out");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("started"), "{e}");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(!marker.exists(), "the background child was killed too");
    }
}
