//! A static file server over a directory, as the web server in front of a
//! webroot would be: Python's `http.server` (threaded), on 127.0.0.1.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::{HarnessError, ServerProcess};

const PROGRAM: &str = "python3 -m http.server";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `python3 -m http.server PORT --bind 127.0.0.1 --directory DIR`, killed on
/// drop (and when the test process dies). Its log (one line per request)
/// goes to a temporary file.
#[derive(Debug)]
pub struct StaticServer {
    // Drop order: the process first, then the directory with its log.
    child: ServerProcess,
    port: u16,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl StaticServer {
    /// Serve `root` on `127.0.0.1:port` and wait until it accepts
    /// connections. `port` must be free (e.g. [`crate::free_port`] or
    /// Pebble's `http_port()`, which nothing else listens on).
    pub fn start(root: &Path, port: u16) -> Result<StaticServer, HarnessError> {
        StaticServer::start_on(root, Ipv4Addr::LOCALHOST, port)
    }

    /// Serve `root` on `ip:port` (a loopback address: 127.0.0.2 lets two
    /// servers share a port, as two web servers of two names do).
    pub fn start_on(root: &Path, ip: Ipv4Addr, port: u16) -> Result<StaticServer, HarnessError> {
        let dir = crate::temp_dir("certsmith-static-")?;
        let log = dir.path().join("http-server.log");
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            &ip.to_string(),
        ])
        .arg("--directory")
        .arg(root)
        .current_dir(dir.path())
        .env("PYTHONUNBUFFERED", "1");
        let mut child = ServerProcess::spawn(PROGRAM, cmd, &log).map_err(|e| match e {
            HarnessError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                HarnessError::NotInstalled {
                    program: "python3 (for the static file server; apt-get install python3)".into(),
                    path: PathBuf::from("python3"),
                }
            }
            other => other,
        })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.exited() {
                return Err(HarnessError::Exited {
                    program: PROGRAM.into(),
                    status: status.to_string(),
                    log_path: log.clone(),
                    log_tail: child.log_tail(20),
                });
            }
            if TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).is_ok() {
                return Ok(StaticServer {
                    child,
                    port,
                    root: root.to_path_buf(),
                    _dir: dir,
                });
            }
            if Instant::now() >= deadline {
                return Err(
                    child.not_ready(format!("TCP connections on {ip}:{port}"), READY_TIMEOUT)
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory it serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its request log so far.
    pub fn log(&self) -> String {
        self.child.log()
    }
}
