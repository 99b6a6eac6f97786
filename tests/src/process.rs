//! Child processes that never outlive the test run.
//!
//! Every server is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel
//! kills it when the test process dies, even by `SIGKILL` or a panic in
//! another thread. The death signal fires when the *thread* that forked
//! exits, not the process, so all spawns go through one long-lived spawner
//! thread: a server started inside one test thread and shared with others
//! (a `OnceLock`) stays up until the process exits.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;

use crate::HarnessError;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn spawner() -> Option<&'static mpsc::Sender<SpawnRequest>> {
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            thread::Builder::new()
                .name("certsmith-tests-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        // The requester may have given up; nothing to do then
                        // (the child is dropped, and killed by its owner's
                        // death signal at worst).
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Spawn `cmd` so that the kernel kills it (SIGKILL) when this test process
/// dies, however it dies. Use it for any long-running child a test starts;
/// [`ServerProcess`] adds a log file and kill-on-drop.
pub fn spawn_guarded(mut cmd: Command) -> io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        let parent = libc::pid_t::try_from(std::process::id())
            .map_err(|_| io::Error::other("process id does not fit in pid_t"))?;
        // SAFETY: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (prctl, getppid, errno access);
        // it does not allocate or take locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died between fork and prctl: the signal will
                // never come, so do not start at all.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    match spawner() {
        Some(tx) => {
            let (reply_tx, reply_rx) = mpsc::channel();
            tx.send((cmd, reply_tx))
                .map_err(|_| io::Error::other("the spawner thread is gone"))?;
            reply_rx
                .recv()
                .map_err(|_| io::Error::other("the spawner thread is gone"))?
        }
        // Could not start the spawner thread: spawn from this thread; the
        // child then dies when this thread exits, which is still no leak.
        None => cmd.spawn(),
    }
}

/// A server process started with [`spawn_guarded`], its stdout and stderr
/// going to a log file. Killed (SIGKILL) and reaped on drop. For servers
/// the harness has no type for yet (BIND9's `named`, `moto_server`, ...).
#[derive(Debug)]
pub struct ServerProcess {
    program: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ServerProcess {
    /// The error for a server that did not become ready within `waited`:
    /// what was waited for, and the end of its log.
    pub(crate) fn not_ready(&self, what: String, waited: std::time::Duration) -> HarnessError {
        HarnessError::NotReady {
            program: self.program().to_owned(),
            what,
            secs: waited.as_secs(),
            log_path: self.log_path().to_path_buf(),
            log_tail: self.log_tail(20),
        }
    }

    /// Start `cmd` (stdin from /dev/null, stdout and stderr to `log_path`,
    /// created or truncated); `program` names it in errors.
    pub fn spawn(
        program: impl Into<String>,
        mut cmd: Command,
        log_path: &Path,
    ) -> Result<Self, HarnessError> {
        let program = program.into();
        let log = File::create(log_path).map_err(|source| HarnessError::Io {
            context: format!("creating log file {}", log_path.display()),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| HarnessError::Io {
            context: format!("duplicating log file {}", log_path.display()),
            source,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = match spawn_guarded(cmd) {
            Ok(child) => child,
            Err(source) => return Err(HarnessError::Spawn { program, source }),
        };
        Ok(Self {
            program,
            child: Some(child),
            log_path: log_path.to_path_buf(),
        })
    }

    /// The name given at spawn.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id; `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten(),
            None => None,
        }
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path, usize::MAX)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = read_lossy(&self.log_path, 64 * 1024);
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        all[start..].join("\n")
    }

    /// Kill and reap the process. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Read at most the last `max` bytes of a file as lossy UTF-8.
fn read_lossy(path: &Path, max: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    if let Ok(meta) = f.metadata() {
        let len = meta.len();
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        if len > max {
            let _ = f.seek(SeekFrom::Start(len - max));
        }
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
