//! pebble-challtestsrv as a mock DNS server for Pebble's validation
//! authority and for dns-01 tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ServerProcess;
use crate::{CHALLTESTSRV_BIN, HarnessError, dns, find_bin, free_port, free_udp_tcp_port, http};

const PROGRAM: &str = "pebble-challtestsrv";
const ATTEMPTS: u32 = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `pebble-challtestsrv` with only its DNS server and management
/// API enabled (no HTTP-01/TLS-ALPN-01 responders: solvers under test
/// answer those), both on 127.0.0.1. Every A query without a record of its
/// own is answered with the default IPv4 (127.0.0.1 unless told otherwise)
/// and AAAA queries get no answer, so Pebble's VA connects to loopback.
///
/// Killed on drop.
#[derive(Debug)]
pub struct ChallTestSrv {
    child: ServerProcess,
    dns: SocketAddr,
    mgmt: SocketAddr,
    dir: Option<tempfile::TempDir>,
}

enum Attempt {
    Ready(ChallTestSrv),
    Collision,
}

impl ChallTestSrv {
    /// Start one on free ports, answering A queries with 127.0.0.1.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with_default_ipv4(Ipv4Addr::LOCALHOST)
    }

    /// Start one whose default answer to A queries is `ip`.
    pub fn start_with_default_ipv4(ip: Ipv4Addr) -> Result<Self, HarnessError> {
        let dir = crate::temp_dir("certsmith-challtestsrv-")?;
        Self::start_in(dir.path(), ip).map(|mut srv| {
            srv.dir = Some(dir);
            srv
        })
    }

    /// Start with the log file in `dir` (which the caller keeps alive).
    pub(crate) fn start_in(dir: &Path, ip: Ipv4Addr) -> Result<Self, HarnessError> {
        let bin = find_bin(PROGRAM, "PEBBLE_CHALLTESTSRV_BIN", CHALLTESTSRV_BIN)?;
        for attempt in 1..=ATTEMPTS {
            let log = dir.join(format!("challtestsrv-{attempt}.log"));
            match Self::try_start(&bin, dir, &log, ip)? {
                Attempt::Ready(srv) => return Ok(srv),
                Attempt::Collision => continue,
            }
        }
        Err(HarnessError::PortsExhausted {
            program: PROGRAM.into(),
            attempts: ATTEMPTS,
        })
    }

    fn try_start(
        bin: &Path,
        dir: &Path,
        log: &Path,
        ip: Ipv4Addr,
    ) -> Result<Attempt, HarnessError> {
        let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_tcp_port()));
        let mgmt = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut cmd = Command::new(bin);
        cmd.arg("-dns01")
            .arg(dns.to_string())
            .arg("-management")
            .arg(mgmt.to_string())
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-defaultIPv4")
            .arg(ip.to_string())
            .args(["-defaultIPv6", ""])
            // Its working directory marks it as ours (scripts/test looks for
            // leftovers by their temporary directory).
            .current_dir(dir);
        let child = ServerProcess::spawn(PROGRAM, cmd, log)?;
        let mut srv = ChallTestSrv {
            child,
            dns,
            mgmt,
            dir: None,
        };
        // Ready when a record set through *this* management port resolves
        // through *this* DNS port: proves both belong to our process.
        let probe_host = format!("_probe.{}-{}.harness.test", std::process::id(), mgmt.port());
        let probe_value = format!("ready-{}-{}", dns.port(), mgmt.port());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log_text = srv.child.log();
            if crate::log_shows_port_collision(&log_text) {
                return Ok(Attempt::Collision);
            }
            if let Some(status) = srv.child.exited() {
                return Err(HarnessError::Exited {
                    program: PROGRAM.into(),
                    status: status.to_string(),
                    log_path: srv.child.log_path().to_path_buf(),
                    log_tail: srv.child.log_tail(20),
                });
            }
            if srv.set_txt(&probe_host, &probe_value).is_ok()
                && dns::query_txt(dns, &probe_host).is_ok_and(|v| v.contains(&probe_value))
            {
                srv.clear_txt(&probe_host)?;
                return Ok(Attempt::Ready(srv));
            }
            if Instant::now() >= deadline {
                return Err(srv.child.not_ready(
                    format!("a probe TXT record on DNS {dns} set through {mgmt}"),
                    READY_TIMEOUT,
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The DNS server (UDP and TCP), for Pebble's `-dnsserver` or queries.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// The management API, `http://127.0.0.1:<port>`.
    pub fn mgmt_url(&self) -> String {
        format!("http://{}", self.mgmt)
    }

    /// The server's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// The temporary directory holding the log, when this value owns one.
    pub fn temp_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_path_buf())
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<(), HarnessError> {
        let bytes = body.to_string().into_bytes();
        let err = |message: String| HarnessError::Http {
            method: "POST",
            url: format!("{}{}", self.mgmt_url(), path),
            message: format!("{message} (request body {body})"),
            log_path: self.child.log_path().to_path_buf(),
        };
        let resp = http::request(self.mgmt, None, "POST", path, Some(&bytes), HTTP_TIMEOUT)
            .map_err(|e| err(e.to_string()))?;
        if resp.status != 200 {
            return Err(err(format!("status {}: {}", resp.status, resp.text())));
        }
        Ok(())
    }

    /// Add a TXT value at `host` (appended: several values can coexist, as
    /// for `example.com` + `*.example.com`). The trailing dot challtestsrv
    /// needs is added here (without it the record never resolves), and the
    /// name is lower-cased: challtestsrv matches query names
    /// case-sensitively, so query it in lower case too. Its answers carry
    /// TTL 0 and no AA flag.
    pub fn set_txt(&self, host: &str, value: &str) -> Result<(), HarnessError> {
        self.post("/set-txt", json!({ "host": fqdn(host), "value": value }))
    }

    /// Remove every TXT value at `host`.
    pub fn clear_txt(&self, host: &str) -> Result<(), HarnessError> {
        self.post("/clear-txt", json!({ "host": fqdn(host) }))
    }

    /// Answer A queries for `host` with `ip` instead of the default.
    pub fn add_a(&self, host: &str, ip: Ipv4Addr) -> Result<(), HarnessError> {
        self.post(
            "/add-a",
            json!({ "host": fqdn(host), "addresses": [ip.to_string()] }),
        )
    }

    /// Remove the A records of `host` (back to the default IPv4).
    pub fn clear_a(&self, host: &str) -> Result<(), HarnessError> {
        self.post("/clear-a", json!({ "host": fqdn(host) }))
    }

    /// Make `host` a CNAME to `target`.
    pub fn set_cname(&self, host: &str, target: &str) -> Result<(), HarnessError> {
        self.post(
            "/set-cname",
            json!({ "host": fqdn(host), "target": fqdn(target) }),
        )
    }

    /// Remove the CNAME at `host`.
    pub fn clear_cname(&self, host: &str) -> Result<(), HarnessError> {
        self.post("/clear-cname", json!({ "host": fqdn(host) }))
    }

    /// Answer every query for `host` with SERVFAIL.
    pub fn set_servfail(&self, host: &str) -> Result<(), HarnessError> {
        self.post("/set-servfail", json!({ "host": fqdn(host) }))
    }

    /// Stop answering SERVFAIL for `host`.
    pub fn clear_servfail(&self, host: &str) -> Result<(), HarnessError> {
        self.post("/clear-servfail", json!({ "host": fqdn(host) }))
    }

    /// Change the default answer to A queries.
    pub fn set_default_ipv4(&self, ip: Ipv4Addr) -> Result<(), HarnessError> {
        self.post("/set-default-ipv4", json!({ "ip": ip.to_string() }))
    }
}

/// Lower-case, with exactly one trailing dot.
fn fqdn(host: &str) -> String {
    let mut h = host.trim_end_matches('.').to_ascii_lowercase();
    h.push('.');
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn fqdn_adds_one_trailing_dot() {
        assert_eq!(super::fqdn("A.Test"), "a.test.");
        assert_eq!(super::fqdn("a.test."), "a.test.");
    }
}
