//! Hooks: the commands run around a certificate's challenges (pre, post)
//! and after it is stored (deploy).
//!
//! Why this module exists: a new certificate on disk is worth nothing until
//! the web server reloads it (the deploy hook), and a web server that holds
//! port 80 must make way for a standalone solver and come back afterwards
//! (the pre- and post-hook). Hooks (`--pre-hook`, `--post-hook`,
//! `--deploy-hook`; `pre_hook`, `post_hook`, `deploy_hook` in the config
//! file) must be dependable in unattended runs: they get the certificate in
//! their environment, they cannot hang the agent (a timeout kills the whole
//! process group), their output reaches the log, and a failure is reported
//! with that output. A failing deploy hook never removes the new
//! certificate: the files are already in place and valid; only the reload
//! failed. A failing pre-hook stops that certificate's order (nothing is
//! presented); its post-hook still runs.
//!
//! Each command runs as `sh -c CMD` with the agent's environment plus:
//!
//! | variable | hooks | value |
//! |---|---|---|
//! | `CERTSMITH_HOOK` | all | `pre`, `post` or `deploy` |
//! | `CERTSMITH_CERT_NAME` | all | the certificate name |
//! | `CERTSMITH_DOMAINS` | all | its domains, separated by spaces |
//! | `CERTSMITH_RESULT` | post | `ok` when every challenge was validated, else `failed` |
//! | `CERTSMITH_CERT_DIR` | deploy | `certs/<name>/current`, the directory of the files |
//! | `CERTSMITH_FULLCHAIN` | deploy | `.../current/fullchain.pem` |
//! | `CERTSMITH_PRIVKEY` | deploy | `.../current/privkey.pem`; empty for a certificate ordered with `--csr` (the key is the user's) |
//! | `CERTSMITH_CSR` | deploy | `.../current/csr.pem` for a certificate ordered with `--csr`, else empty |
//! | `CERTSMITH_CERT` | deploy | `.../current/cert.pem` |
//! | `CERTSMITH_CHAIN` | deploy | `.../current/chain.pem` |
//! | `CERTSMITH_VERSION` | deploy | the version number now current |

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::store;

/// How much of a hook's output is kept for the result and error messages.
const MAX_OUTPUT: usize = 64 * 1024;
/// How many lines of output an error message repeats.
const TAIL_LINES: usize = 10;

/// Every variable a hook may receive, for documentation and for the
/// CLI's list of known `CERTSMITH_*` names.
pub const HOOK_VARIABLES: &[&str] = &[
    "CERTSMITH_HOOK",
    "CERTSMITH_CERT_NAME",
    "CERTSMITH_DOMAINS",
    "CERTSMITH_RESULT",
    "CERTSMITH_CERT_DIR",
    "CERTSMITH_FULLCHAIN",
    "CERTSMITH_PRIVKEY",
    "CERTSMITH_CSR",
    "CERTSMITH_CERT",
    "CERTSMITH_CHAIN",
    "CERTSMITH_VERSION",
];

/// Which hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HookKind {
    /// Before a certificate's challenges are presented.
    Pre,
    /// After its challenges are cleaned up, whatever happened.
    Post,
    /// After the certificate is stored.
    Deploy,
}

impl HookKind {
    /// `pre`, `post` or `deploy` (the value of `CERTSMITH_HOOK`).
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Pre => "pre",
            HookKind::Post => "post",
            HookKind::Deploy => "deploy",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::Pre => "pre-hook",
            HookKind::Post => "post-hook",
            HookKind::Deploy => "deploy hook",
        })
    }
}

/// What a hook is told about the certificate.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// Which hook this is.
    pub kind: HookKind,
    /// The certificate name.
    pub cert_name: String,
    /// Its domains (ASCII).
    pub domains: Vec<String>,
    /// `certs/<name>/current` (deploy hooks).
    pub cert_dir: PathBuf,
    /// The version now current (deploy hooks).
    pub version: u32,
    /// Whether every challenge was validated (post-hooks).
    pub validated: bool,
}

impl HookContext {
    /// The context of a deploy hook for the version `version` stored in `cert_dir`.
    pub fn deploy(cert_name: &str, domains: &[String], cert_dir: PathBuf, version: u32) -> Self {
        HookContext {
            kind: HookKind::Deploy,
            cert_name: cert_name.to_owned(),
            domains: domains.to_vec(),
            cert_dir,
            version,
            validated: true,
        }
    }

    /// The context of a pre-hook (`validated` unused) or post-hook.
    pub fn around(kind: HookKind, cert_name: &str, domains: &[String], validated: bool) -> Self {
        HookContext {
            kind,
            cert_name: cert_name.to_owned(),
            domains: domains.to_vec(),
            cert_dir: PathBuf::new(),
            version: 0,
            validated,
        }
    }

    /// `file` of the current version when the version was ordered with the
    /// user's CSR (`csr`) or not (`!csr`), else empty.
    fn own_key_file(&self, file: &str, csr: bool) -> String {
        let with_csr = self.cert_dir.join(store::CSR_FILE).is_file();
        if with_csr == csr {
            self.cert_dir.join(file).display().to_string()
        } else {
            String::new()
        }
    }

    /// The environment variables the hook receives (see the module docs).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let file = |f: &str| self.cert_dir.join(f).display().to_string();
        let mut env = vec![
            ("CERTSMITH_HOOK", self.kind.as_str().to_owned()),
            ("CERTSMITH_CERT_NAME", self.cert_name.clone()),
            ("CERTSMITH_DOMAINS", self.domains.join(" ")),
        ];
        match self.kind {
            HookKind::Pre => {}
            HookKind::Post => env.push((
                "CERTSMITH_RESULT",
                if self.validated { "ok" } else { "failed" }.to_owned(),
            )),
            HookKind::Deploy => env.extend([
                ("CERTSMITH_CERT_DIR", self.cert_dir.display().to_string()),
                ("CERTSMITH_FULLCHAIN", file(store::FULLCHAIN_FILE)),
                // A version ordered with the user's CSR has no key of
                // certsmith's, only the CSR: a path to a missing file
                // would send a hook's `cp` or `chmod` astray.
                (
                    "CERTSMITH_PRIVKEY",
                    self.own_key_file(store::PRIVKEY_FILE, false),
                ),
                ("CERTSMITH_CSR", self.own_key_file(store::CSR_FILE, true)),
                ("CERTSMITH_CERT", file(store::CERT_FILE)),
                ("CERTSMITH_CHAIN", file(store::CHAIN_FILE)),
                ("CERTSMITH_VERSION", self.version.to_string()),
            ]),
        }
        env
    }
}

/// The pre- and post-hook of one order, run by the engine around its
/// challenges. Cheap to clone: clones share where the post-hook's failure
/// is kept, so the agent that made the order reads it afterwards.
#[derive(Clone, Debug, Default)]
pub struct OrderHooks {
    /// Run before the order is placed; its failure stops the order.
    pub pre: Option<String>,
    /// Run after the challenges are cleaned up, whatever happened.
    pub post: Option<String>,
    /// How long each may run.
    pub timeout: Duration,
    post_failure: Arc<Mutex<Option<Arc<HookError>>>>,
}

impl OrderHooks {
    /// Hooks with the given commands and timeout.
    pub fn new(pre: Option<String>, post: Option<String>, timeout: Duration) -> OrderHooks {
        OrderHooks {
            pre,
            post,
            timeout,
            post_failure: Arc::default(),
        }
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.pre.is_none() && self.post.is_none()
    }

    /// Keeps the post-hook's failure for [`OrderHooks::take_post_failure`].
    pub fn record_post_failure(&self, e: HookError) {
        *self
            .post_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(e));
    }

    /// The post-hook's failure, if it failed.
    pub fn take_post_failure(&self) -> Option<Arc<HookError>> {
        self.post_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
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
    #[error("cannot start the {kind} `{command}`: {source}")]
    Spawn {
        /// Which hook.
        kind: HookKind,
        /// The command.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hook exited with a non-zero status or was killed by a signal.
    #[error("the {kind} `{command}` failed ({status}){}", tail(.output))]
    Failed {
        /// Which hook.
        kind: HookKind,
        /// The command.
        command: String,
        /// "exit status 3", "killed by signal 9".
        status: String,
        /// What it printed.
        output: String,
    },
    /// The hook ran longer than its timeout and was killed with its
    /// process group.
    #[error("the {kind} `{command}` did not finish within {}s and was killed with its process group{}", .after.as_secs(), tail(.output))]
    TimedOut {
        /// Which hook.
        kind: HookKind,
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
        /// What it printed until then.
        output: String,
    },
}

impl HookError {
    /// Which hook failed.
    pub fn kind(&self) -> HookKind {
        match self {
            HookError::Spawn { kind, .. }
            | HookError::Failed { kind, .. }
            | HookError::TimedOut { kind, .. } => *kind,
        }
    }

    /// What the operator can do.
    pub fn hint(&self) -> &'static str {
        match (self, self.kind()) {
            (HookError::Spawn { .. }, _) => "check that /bin/sh exists and the command is valid",
            (HookError::Failed { .. }, HookKind::Deploy) => {
                "the new certificate is in place; fix the deploy hook and run it by hand (it takes the CERTSMITH_* variables)"
            }
            (HookError::TimedOut { .. }, HookKind::Deploy) => {
                "the new certificate is in place; make the deploy hook finish sooner or raise hook_timeout (--hook-timeout)"
            }
            (HookError::Failed { .. }, HookKind::Pre) => {
                "nothing was ordered for this certificate and its post-hook ran; fix the pre-hook (pre_hook, --pre-hook)"
            }
            (HookError::TimedOut { .. }, HookKind::Pre) => {
                "nothing was ordered for this certificate and its post-hook ran; make the pre-hook finish sooner or raise hook_timeout (--hook-timeout)"
            }
            (HookError::Failed { .. }, _) => {
                "the challenges were cleaned up; fix the post-hook (post_hook, --post-hook) and run it by hand"
            }
            (HookError::TimedOut { .. }, _) => {
                "the challenges were cleaned up; make the post-hook finish sooner or raise hook_timeout (--hook-timeout)"
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

/// Runs `command` with `sh -c` for `ctx`, waiting at most `timeout`
/// (then the hook's process group is killed).
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
    let kind = ctx.kind;
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind,
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
            log::info!(target: "certsmith::hook", "{kind} for {name}: {line}");
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
            log::warn!("waiting for the {kind} failed: {e}");
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
            kind,
            command: command.to_owned(),
            status: describe(s),
            output,
        }),
        None => Err(HookError::TimedOut {
            kind,
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
        HookContext::deploy(
            "a.example",
            &["a.example".into(), "www.a.example".into()],
            dir.join("current"),
            3,
        )
    }

    #[test]
    fn each_hook_gets_its_variables_and_every_one_is_listed() {
        let dir = std::path::Path::new("/s");
        let names = |c: &HookContext| c.env().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let deploy = names(&ctx(dir));
        let pre = names(&HookContext::around(HookKind::Pre, "a", &[], false));
        let post = HookContext::around(HookKind::Post, "a", &[], false);
        assert_eq!(
            pre,
            ["CERTSMITH_HOOK", "CERTSMITH_CERT_NAME", "CERTSMITH_DOMAINS"]
        );
        assert!(
            post.env()
                .contains(&("CERTSMITH_RESULT", "failed".to_owned()))
        );
        assert!(deploy.contains(&"CERTSMITH_VERSION") && !deploy.contains(&"CERTSMITH_RESULT"));
        let mut all: Vec<&str> = deploy.into_iter().chain(names(&post)).collect();
        all.sort_unstable();
        all.dedup();
        let mut listed = HOOK_VARIABLES.to_vec();
        listed.sort_unstable();
        assert_eq!(all, listed, "HOOK_VARIABLES lists exactly what hooks get");
    }

    #[tokio::test]
    async fn a_failing_pre_hook_is_named_and_says_nothing_was_ordered() {
        let e = run_hook(
            "exit 4",
            &HookContext::around(HookKind::Pre, "a", &[], false),
            Duration::from_secs(10),
        )
        .await
        .expect_err("fails");
        assert!(e.to_string().contains("pre-hook"), "{e}");
        assert_eq!(e.kind(), HookKind::Pre);
        assert!(e.hint().contains("--pre-hook"), "{}", e.hint());
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

    #[test]
    fn a_version_ordered_with_a_csr_has_no_key_path_but_its_csr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let current = dir.path().join("current");
        std::fs::create_dir(&current).expect("mkdir");
        let env = |c: &HookContext| {
            c.env()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let own = env(&ctx(dir.path()));
        assert_eq!(
            own["CERTSMITH_PRIVKEY"],
            current.join("privkey.pem").display().to_string()
        );
        assert_eq!(own["CERTSMITH_CSR"], "");
        std::fs::write(current.join("csr.pem"), "CSR").expect("write");
        let theirs = env(&ctx(dir.path()));
        assert_eq!(theirs["CERTSMITH_PRIVKEY"], "", "the key is the user's");
        assert_eq!(
            theirs["CERTSMITH_CSR"],
            current.join("csr.pem").display().to_string()
        );
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
