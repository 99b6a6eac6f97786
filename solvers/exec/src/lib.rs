//! certsmith's `exec` solver: answers dns-01 challenges by running a
//! program of the operator's, with the arguments lego's `exec` provider
//! passes, so that the hook scripts people already run with lego (an
//! `nsupdate` wrapper, a call to an in-house DNS API) keep working when
//! they move to certsmith.
//!
//! Behaviour copied from lego (providers/dns/exec), because scripts depend
//! on it:
//!
//! * default mode: `PROGRAM present|cleanup FQDN VALUE`, the FQDN with its
//!   trailing dot and already delegated (lego's "effective FQDN": the core
//!   followed the CNAMEs at `_acme-challenge.<domain>`);
//! * `mode = "RAW"`: `PROGRAM present|cleanup -- DOMAIN TOKEN KEYAUTH`, the
//!   domain without `*.` (the `--` because a token may start with `-`);
//! * no shell, the caller's environment, stdout and stderr merged (each
//!   line logged at info, as lego does), one run at a time (lego runs exec
//!   challenges sequentially; scripts that read-modify-write a zone file
//!   rely on it).
//!
//! What certsmith adds: a timeout (`timeout_s`, and never past the call's
//! deadline) after which the program's whole process group is killed, so a
//! hung `nsupdate` under the script dies too; and the program's output in
//! the error when it fails, trimmed and bounded, so the operator sees why
//! without digging in logs.
//!
//! `check_credentials` (`certsmith doctor`) has no credentials to check;
//! it checks what every run needs: that the program exists (found on
//! `PATH` when the path has no `/`, as running it would) and that this user
//! may execute it. It never runs the program: a hook has side effects.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, CredentialsCheck, CredentialsChecked, ErrorKind, PluginError,
    Presented, Solver, async_trait, log,
};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The default of `timeout_s`.
pub const DEFAULT_TIMEOUT_S: u64 = 60;
/// At most this many characters of the program's output go into an error
/// (its end: the last lines say why it failed).
pub const OUTPUT_EXCERPT: usize = 2000;
/// Output kept in memory per run, bytes; the rest is only logged.
const OUTPUT_KEPT: usize = 64 * 1024;

/// How the program is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `present|cleanup FQDN VALUE`.
    Default,
    /// `present|cleanup -- DOMAIN TOKEN KEYAUTH`.
    Raw,
}

/// The configuration (see `plugin.toml`).
#[derive(Clone, Debug, Deserialize)]
pub struct ExecConfig {
    /// The program.
    pub path: String,
    /// "" or "RAW".
    #[serde(default)]
    pub mode: String,
    /// Longest run, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}

impl ExecConfig {
    /// A configuration running `path` in the default mode.
    pub fn new(path: impl Into<String>) -> Self {
        ExecConfig {
            path: path.into(),
            mode: String::new(),
            timeout_s: DEFAULT_TIMEOUT_S,
        }
    }
}

/// The solver.
pub struct Exec {
    program: PathBuf,
    mode: Mode,
    timeout: Duration,
    /// One run at a time, as lego does.
    sequential: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exec")
            .field("program", &self.program)
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a run printed: the last [`OUTPUT_KEPT`] bytes of stdout and stderr,
/// interleaved by line as they came.
#[derive(Default)]
struct Output {
    text: String,
    dropped: bool,
}

impl Output {
    fn push_line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > OUTPUT_KEPT {
            let mut cut = self.text.len() - OUTPUT_KEPT;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
            self.dropped = true;
        }
    }
}

/// `text`, trimmed, at most `max` characters: its end, marked when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let t = text.trim();
    let count = t.chars().count();
    if count <= max {
        return t.to_owned();
    }
    let tail: String = t.chars().skip(count - max).collect();
    format!("…{}", tail.trim_start())
}

/// Kills the program's process group when dropped: on timeout, on error,
/// and when the host cancels the call (the future is dropped).
struct GroupKiller {
    pgid: Option<libc::pid_t>,
}

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) with a negative pid signals the process
            // group we created for the child (process_group(0)); it takes
            // no pointers. A group already gone gives ESRCH, ignored.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn pump(reader: impl AsyncRead + Unpin, out: Arc<Mutex<Output>>, program: String) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log::info!("exec: {program}: {line}");
        out.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_line(&line);
    }
}

impl Exec {
    /// The arguments of one run.
    pub fn args(&self, action: &str, req: &ChallengeRequest) -> Result<Vec<String>, PluginError> {
        match self.mode {
            Mode::Raw => Ok(vec![
                action.to_owned(),
                "--".to_owned(),
                req.identifier.clone(),
                req.token.clone(),
                req.key_authorization.clone(),
            ]),
            Mode::Default => {
                let target = req.dns.as_ref().ok_or_else(|| {
                    PluginError::internal(
                        "a dns-01 request came without its dns target (zone, name, value)",
                    )
                })?;
                let fqdn = target.fqdn.trim_end_matches('.');
                Ok(vec![
                    action.to_owned(),
                    format!("{fqdn}."),
                    target.value.clone(),
                ])
            }
        }
    }

    /// Runs the program with `args`, within `left`.
    async fn run(&self, args: &[String], left: Duration) -> Result<(), PluginError> {
        let _one_at_a_time = self.sequential.lock().await;
        let shown = self.program.display().to_string();
        let limit = self.timeout.min(left);
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child: Child = cmd.spawn().map_err(|e| spawn_error(&shown, &e))?;
        let mut killer = GroupKiller {
            pgid: child.id().and_then(|id| libc::pid_t::try_from(id).ok()),
        };
        let out = Arc::new(Mutex::new(Output::default()));
        let pumps = [
            child
                .stdout
                .take()
                .map(|s| tokio::spawn(pump(s, Arc::clone(&out), shown.clone()))),
            child
                .stderr
                .take()
                .map(|s| tokio::spawn(pump(s, Arc::clone(&out), shown.clone()))),
        ];
        let status: Option<std::io::Result<ExitStatus>> =
            tokio::time::timeout(limit, child.wait()).await.ok();
        if status.is_none() {
            killer.kill();
            let _ = child.wait().await;
        } else {
            // The program is done; what it left running in its group (a
            // daemon it started on purpose) is not ours to kill.
            killer.disarm();
        }
        for p in pumps.into_iter().flatten() {
            // Pipes still held open by a grandchild: do not wait for it.
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        let printed = {
            let o = out.lock().unwrap_or_else(PoisonError::into_inner);
            let mut e = excerpt(&o.text, OUTPUT_EXCERPT);
            if o.dropped && !e.starts_with('…') {
                e.insert(0, '…');
            }
            e
        };
        let said = if printed.is_empty() {
            " and printed nothing".to_owned()
        } else {
            format!("; its output:\n{printed}")
        };
        let call = format!("{shown} {}", args.join(" "));
        match status {
            None => Err(PluginError::transient(format!(
                "{call} did not finish within {} s and was killed (with its process group){said}; make it finish sooner or raise timeout_s (at most the call timeout, 120 s)",
                limit.as_secs_f64()
            ))),
            Some(Err(e)) => Err(PluginError::internal(format!(
                "could not wait for {call}: {e}"
            ))),
            Some(Ok(s)) if s.success() => Ok(()),
            Some(Ok(s)) => Err(PluginError::new(
                ErrorKind::Config,
                format!(
                    "{call} failed ({}){said}; run it by hand to see why (EXEC_PATH / the solver option path names the program)",
                    describe_status(s)
                ),
            )),
        }
    }
}

fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

fn spawn_error(program: &str, e: &std::io::Error) -> PluginError {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "there is no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (is it executable? chmod +x)".to_owned()
        }
        _ => e.to_string(),
    };
    PluginError::config(format!(
        "cannot run {program}: {why}; set EXEC_PATH (or --solver-opt path=...) to an executable program"
    ))
}

/// Where running `program` would find it: itself when it has a `/`, else
/// the first executable of that name on `PATH`.
fn locate(program: &Path) -> Result<PathBuf, PluginError> {
    let shown = program.display();
    let fix = "set EXEC_PATH (or --solver-opt path=...) to an executable program";
    if program.as_os_str().as_bytes().contains(&b'/') {
        let meta = std::fs::metadata(program).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "there is no such file".to_owned(),
                _ => e.to_string(),
            };
            PluginError::config(format!("cannot use {shown}: {why}; {fix}"))
        })?;
        if !meta.is_file() {
            return Err(PluginError::config(format!(
                "{shown} is not a regular file; {fix}"
            )));
        }
        if !executable(program) {
            return Err(PluginError::config(format!(
                "{shown} is not executable by this user (mode {:04o}); chmod +x it, or {fix}",
                meta.permissions().mode() & 0o7777
            )));
        }
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file() && executable(p))
        .ok_or_else(|| {
            PluginError::config(format!(
                "there is no executable {shown} on PATH; {fix}, e.g. an absolute path"
            ))
        })
}

/// Whether this process may execute `path` (access(2) with `X_OK`, which
/// knows about the user, its groups and root, as exec(2) will).
fn executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads the NUL-terminated path `c` owns, which
    // lives until after the call; it keeps no pointer.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

fn check_dns01(req: &ChallengeRequest) -> Result<(), PluginError> {
    if req.challenge_type == ChallengeType::Dns01 {
        Ok(())
    } else {
        Err(PluginError::config(format!(
            "the exec solver answers dns-01 only, not {}",
            req.challenge_type
        )))
    }
}

#[async_trait]
impl Solver for Exec {
    type Config = ExecConfig;

    fn new(config: ExecConfig) -> Result<Self, PluginError> {
        let path = config.path.trim();
        if path.is_empty() {
            return Err(PluginError::config(
                "path is empty: set EXEC_PATH (or --solver-opt path=...) to the program to run",
            ));
        }
        let mode = match config.mode.trim() {
            "" => Mode::Default,
            "RAW" => Mode::Raw,
            other => {
                return Err(PluginError::config(format!(
                    "mode {other:?} is not known: leave EXEC_MODE unset for `present FQDN VALUE`, or set it to RAW (upper case, as lego) for `present -- DOMAIN TOKEN KEYAUTH`"
                )));
            }
        };
        if config.timeout_s == 0 {
            return Err(PluginError::config("timeout_s must be at least 1"));
        }
        log::debug!(
            "exec: program {path}, mode {mode:?}, timeout {} s",
            config.timeout_s
        );
        Ok(Exec {
            program: PathBuf::from(path),
            mode,
            timeout: Duration::from_secs(config.timeout_s),
            sequential: tokio::sync::Mutex::new(()),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        check_dns01(req)?;
        let args = self.args("present", req)?;
        self.run(&args, req.deadline().remaining()).await?;
        Ok(Presented::new(serde_json::Value::Null))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        if check_dns01(req).is_err() {
            // Never presented (present refuses it), so nothing to remove.
            return Ok(());
        }
        let args = self.args("cleanup", req)?;
        self.run(&args, req.deadline().remaining()).await
    }

    async fn check_credentials(
        &self,
        _req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(locate(&self.program).map(|found| {
            CredentialsChecked::new(format!(
                "{} is executable by this user (not run: a hook has side effects)",
                found.display()
            ))
        }))
    }
}

certsmith_plugin_api::export_solver!(Exec, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{DnsTarget, Manifest};

    #[test]
    fn manifest_parses_with_lego_names_and_defaults() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "exec");
        assert_eq!(m.config["path"].env.as_deref(), Some("EXEC_PATH"));
        assert!(m.config["path"].required);
        assert_eq!(m.config["mode"].env.as_deref(), Some("EXEC_MODE"));
        assert_eq!(
            m.config["timeout_s"]
                .default
                .as_ref()
                .and_then(|v| v.as_integer()),
            Some(DEFAULT_TIMEOUT_S as i64)
        );
        // lego's exec defaults: 60 s propagation timeout, 3 s interval.
        assert_eq!(m.defaults.propagation_timeout_s, 60);
        assert_eq!(m.defaults.polling_interval_s, 3);
    }

    fn req() -> ChallengeRequest {
        ChallengeRequest::new(ChallengeType::Dns01, "example.com", "-tok", "-tok.thumb", 0)
            .with_wildcard(true)
            .with_dns(Some(DnsTarget::new(
                "validation.test",
                "_acme-challenge.x",
                "_acme-challenge.x.validation.test",
                "VALUE",
                60,
            )))
    }

    #[test]
    fn arguments_are_legos() {
        let e = Exec::new(ExecConfig::new("/bin/true")).expect("config");
        assert_eq!(
            e.args("present", &req()).expect("args"),
            ["present", "_acme-challenge.x.validation.test.", "VALUE"]
        );
        let mut c = ExecConfig::new("/bin/true");
        c.mode = "RAW".into();
        let e = Exec::new(c).expect("config");
        assert_eq!(
            e.args("cleanup", &req()).expect("args"),
            ["cleanup", "--", "example.com", "-tok", "-tok.thumb"]
        );
    }

    #[test]
    fn config_is_checked() {
        assert!(Exec::new(ExecConfig::new(" ")).is_err());
        let mut c = ExecConfig::new("/bin/true");
        c.mode = "raw-ish".into();
        let e = Exec::new(c).expect_err("unknown mode");
        assert!(e.message.contains("RAW"), "{}", e.message);
    }

    #[test]
    fn the_program_is_located_as_running_it_would() {
        // A bare name is looked up on PATH (sh is on every Debian PATH).
        let sh = locate(Path::new("sh")).expect("sh on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        let e = locate(Path::new("no-such-program-certsmith")).expect_err("absent");
        assert!(e.message.contains("on PATH"), "{}", e.message);
        // A directory, a file without the execute bit: refused, named.
        let dir = tempfile::tempdir().expect("temp dir");
        let e = locate(dir.path()).expect_err("a directory");
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        let plain = dir.path().join("hook");
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = locate(&plain).expect_err("not executable");
        assert!(e.message.contains("mode 0644"), "{}", e.message);
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(locate(&plain).expect("executable"), plain);
    }

    #[test]
    fn excerpts_keep_the_end() {
        assert_eq!(excerpt("  short \n", 10), "short");
        let long = format!("{}END", "x".repeat(50));
        let e = excerpt(&long, 10);
        assert!(e.starts_with('…') && e.ends_with("END"), "{e}");
        assert_eq!(e.chars().count(), 11);
        let mut o = Output::default();
        for i in 0..20_000 {
            o.push_line(&format!("line {i}"));
        }
        assert!(o.dropped && o.text.len() <= OUTPUT_KEPT);
        assert!(o.text.ends_with("line 19999\n"));
    }
}
