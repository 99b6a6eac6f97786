//! A fleet of `certsmith daemon` processes sharing one PostgreSQL store,
//! against one Pebble: what the fleet test (tests/tests/fleet.rs) and the
//! fleet benchmark (benches/fleet.rs) run.
//!
//! Each daemon is a real process of the built binary with its own state
//! directory (as on its own machine), its stderr in a log file, its
//! `/metrics` on a free port; it dies with the test (PR_SET_PDEATHSIG) and
//! on drop. The certificates are one name each, answered with dns-01
//! through Pebble's challtestsrv (the example plugin), so that any number
//! of daemons can answer at once.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::Postgres;
use crate::process::spawn_guarded;
use crate::{HarnessError, Pebble, certsmith_bin, free_port};

/// The store key every daemon of a fleet is given.
pub const STORE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The name of certificate `i` of a fleet.
pub fn cert_name(i: usize) -> String {
    format!("c{i}.fleet.test")
}

/// Writes a config for `n` certificates (one name each) issued through
/// `pebble`'s challtestsrv, at most `concurrency` orders at once per
/// daemon; returns its path.
pub fn write_config(
    pebble: &Pebble,
    dir: &Path,
    n: usize,
    concurrency: usize,
) -> Result<PathBuf, HarnessError> {
    let cts = pebble.challtestsrv().ok_or_else(|| HarnessError::Io {
        context: "the fleet needs Pebble's challtestsrv".to_owned(),
        source: std::io::Error::other("no challtestsrv"),
    })?;
    let mut text = format!(
        r#"[defaults]
server = "{server}"
ca_cert = "{ca}"
email = "fleet@example.com"
agree_tos = true
solver = "challtestsrv"
concurrency = {concurrency}
dns_resolvers = ["{dns}"]
propagation_servers = ["{dns}"]
propagation_timeout = "60s"

[solvers.challtestsrv]
url = "{mgmt}"
"#,
        server = pebble.directory_url(),
        ca = pebble.ca_cert_path().display(),
        dns = cts.dns_addr(),
        mgmt = cts.mgmt_url(),
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[certificate]]\ndomains = [\"{}\"]\n",
            cert_name(i)
        ));
    }
    let path = dir.join("fleet.toml");
    fs::write(&path, text).map_err(|source| HarnessError::Io {
        context: format!("writing {}", path.display()),
        source,
    })?;
    Ok(path)
}

/// One daemon of the fleet.
#[derive(Debug)]
pub struct FleetDaemon {
    child: Option<Child>,
    /// Its stderr.
    pub log: PathBuf,
    /// Its stdout (JSON lines: each certificate ordered).
    pub out: PathBuf,
    port: u16,
}

impl FleetDaemon {
    /// Starts `certsmith daemon` on `config` and the store at `url`, with
    /// its own state directory `state`, and `extra` arguments.
    pub fn start(
        config: &Path,
        url: &str,
        state: &Path,
        extra: &[&str],
    ) -> Result<FleetDaemon, HarnessError> {
        fs::create_dir_all(state).map_err(|source| HarnessError::Io {
            context: format!("creating {}", state.display()),
            source,
        })?;
        let port = free_port();
        let log = state.with_extension("stderr");
        let out = state.with_extension("stdout");
        let file = |p: &Path| {
            fs::File::create(p).map_err(|source| HarnessError::Io {
                context: format!("creating {}", p.display()),
                source,
            })
        };
        let mut cmd = Command::new(certsmith_bin());
        cmd.arg("daemon")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .args([
                "--output",
                "json",
                "--check-interval",
                "1s",
                "--metrics-listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("CERTSMITH_STORE", url)
            .env("CERTSMITH_STORE_KEY", STORE_KEY)
            .env_remove("CERTSMITH_STATE_DIR")
            .env_remove("CERTSMITH_CONFIG")
            .env_remove("CERTSMITH_PLUGIN_PATH")
            .stdin(Stdio::null())
            .stdout(file(&out)?)
            .stderr(file(&log)?);
        let child = spawn_guarded(cmd).map_err(|source| HarnessError::Spawn {
            program: "certsmith daemon".to_owned(),
            source,
        })?;
        Ok(FleetDaemon {
            child: Some(child),
            log,
            out,
            port,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `/metrics`, if it answers.
    pub fn metrics(&self) -> Option<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        crate::mini_http::send(addr, "GET", "/metrics", &[], None)
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    }

    /// The value of series `series` (exact name and labels) in `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()?.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// CPU seconds (user + system) it has used so far, and its peak RSS in
    /// KiB, from `/proc` (read before it exits).
    pub fn usage(&self) -> Option<(f64, u64)> {
        let pid = self.pid()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime), counted from the state (field 3).
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Some((crate::clock_ticks(ticks).as_secs_f64(), hwm))
    }

    /// Kills it with SIGKILL, as a machine that dies (no cleanup at all).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it with SIGTERM and waits (at most `wait`) for it to exit.
    pub fn terminate(&mut self, wait: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid, which it still is
            // (not reaped).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > wait {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its stderr so far, the last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for FleetDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How many certificates of the store at `db` have a current version.
pub fn issued(pg: &Postgres, db: &str) -> Result<usize, HarnessError> {
    let text = pg.psql(
        db,
        "SELECT count(*) FROM certsmith_certs WHERE current_version IS NOT NULL",
    )?;
    text.trim().parse().map_err(|_| HarnessError::Io {
        context: format!("psql answered {text:?}"),
        source: std::io::Error::other("not a number"),
    })
}
