//! Pebble, Let's Encrypt's test ACME server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::ServerProcess;
use crate::tls::TestCa;
use crate::write_file as write;
use crate::{ChallTestSrv, HarnessError, PEBBLE_BIN, find_bin, free_port, http};

const PROGRAM: &str = "pebble";
const ATTEMPTS: u32 = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run Pebble. `PebbleOpts::default()` is ready to use: free ports
/// for everything, its own challtestsrv as DNS.
///
/// ```no_run
/// # use certsmith_tests::{Pebble, PebbleOpts};
/// let pebble = Pebble::start(PebbleOpts {
///     nonce_reject_percent: Some(50),
///     ..PebbleOpts::default()
/// })?;
/// # Ok::<(), certsmith_tests::HarnessError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PebbleOpts {
    /// The port Pebble's VA connects to for http-01 (`httpPort`): where the
    /// solver under test listens. 0 = pick a free one; read it back with
    /// [`Pebble::http_port`].
    pub http_port: u16,
    /// The port Pebble's VA connects to for tls-alpn-01 (`tlsPort`).
    /// 0 = pick a free one ([`Pebble::tls_port`]).
    pub tls_port: u16,
    /// The DNS server Pebble's VA asks (`-dnsserver`). `None`: start a
    /// [`ChallTestSrv`] owned by the [`Pebble`] ([`Pebble::challtestsrv`]).
    pub dns_server: Option<SocketAddr>,
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of valid nonces rejected as
    /// `badNonce`. `None`: not set here, so Pebble's default of 5 % applies
    /// (or whatever the environment of the test run sets).
    pub nonce_reject_percent: Option<u8>,
    /// `certificateValidityPeriod` in seconds. `None`: Pebble's default.
    pub certificate_validity_period: Option<u64>,
    /// Extra environment variables for Pebble (`PEBBLE_AUTHZREUSE`,
    /// `PEBBLE_CHAIN_LENGTH`, ...).
    pub env: Vec<(String, String)>,
    /// External account binding keys, (key id, base64url HMAC key). When
    /// not empty, Pebble requires EAB for every new account
    /// (`externalAccountBindingRequired`).
    pub eab_keys: Vec<(String, String)>,
}

/// A certificate's status from Pebble's management API
/// (`/cert-status-by-serial/<serial>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CertStatus {
    /// `"Valid"` or `"Revoked"`.
    pub status: String,
    /// The serial, hex, as Pebble prints it.
    #[serde(default)]
    pub serial: String,
    /// The certificate, PEM.
    #[serde(default)]
    pub certificate: String,
    /// The RFC 5280 revocation reason code, when revoked.
    #[serde(default)]
    pub reason: Option<i64>,
    /// When it was revoked (RFC 3339), when revoked.
    #[serde(default)]
    pub revoked_at: Option<String>,
}

impl CertStatus {
    /// Whether Pebble says it is revoked.
    pub fn is_revoked(&self) -> bool {
        self.status.eq_ignore_ascii_case("revoked")
    }
}

/// A running Pebble on 127.0.0.1 with a fresh HTTPS CA of its own.
///
/// Its ACME issuing root is regenerated at every start: fetch it with
/// [`Pebble::root_pem`] to verify chains. Killed on drop (with its
/// challtestsrv, if it owns one).
#[derive(Debug)]
pub struct Pebble {
    // Field order is drop order: Pebble first, then its DNS server, then
    // the directory holding their configs and logs.
    child: ServerProcess,
    challtestsrv: Option<ChallTestSrv>,
    listen: SocketAddr,
    mgmt: SocketAddr,
    http_port: u16,
    tls_port: u16,
    dns_server: SocketAddr,
    ca: TestCa,
    ca_cert_path: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

enum Attempt {
    Ready(Box<ServerProcess>, SocketAddr, SocketAddr),
    Collision,
}

impl Pebble {
    /// Start Pebble (and, without `opts.dns_server`, a challtestsrv) and
    /// wait until its directory and management API answer (up to 10 s).
    ///
    /// Blocking: call it from a plain `#[test]` or from inside a tokio test
    /// alike (it blocks that thread for the start-up, typically < 1 s).
    pub fn start(opts: PebbleOpts) -> Result<Pebble, HarnessError> {
        let bin = find_bin(PROGRAM, "PEBBLE_BIN", PEBBLE_BIN)?;
        let dir = crate::temp_dir("certsmith-pebble-")?;
        let ca = TestCa::generate()?;
        let ca_cert_path = dir.path().join("ca.pem");
        let cert_path = dir.path().join("pebble-cert.pem");
        let key_path = dir.path().join("pebble-key.pem");
        write(&ca_cert_path, &ca.ca_cert_pem)?;
        write(&cert_path, &ca.leaf_cert_pem)?;
        write(&key_path, &ca.leaf_key_pem)?;
        let tls = ca.rustls_client_config()?;
        let client = ca.reqwest_client()?;

        let http_port = if opts.http_port == 0 {
            free_port()
        } else {
            opts.http_port
        };
        let tls_port = if opts.tls_port == 0 {
            free_port()
        } else {
            opts.tls_port
        };
        let challtestsrv = match opts.dns_server {
            Some(_) => None,
            None => Some(ChallTestSrv::start_in(dir.path(), Ipv4Addr::LOCALHOST)?),
        };
        let dns_server = match (&opts.dns_server, &challtestsrv) {
            (Some(addr), _) => *addr,
            (None, Some(cts)) => cts.dns_addr(),
            (None, None) => unreachable!("a challtestsrv is started when no DNS server is given"),
        };

        for attempt in 1..=ATTEMPTS {
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let mgmt = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let mut pebble = serde_json::json!({
                "listenAddress": listen.to_string(),
                "managementListenAddress": mgmt.to_string(),
                "certificate": cert_path,
                "privateKey": key_path,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": !opts.eab_keys.is_empty(),
            });
            if !opts.eab_keys.is_empty() {
                pebble["externalAccountMACKeys"] = opts
                    .eab_keys
                    .iter()
                    .map(|(kid, key)| (kid.clone(), serde_json::Value::from(key.clone())))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            if let Some(secs) = opts.certificate_validity_period {
                pebble["certificateValidityPeriod"] = secs.into();
            }
            let config = serde_json::json!({ "pebble": pebble });
            let config_path = dir.path().join(format!("pebble-config-{attempt}.json"));
            write(&config_path, &format!("{config:#}\n"))?;

            let mut cmd = Command::new(&bin);
            cmd.arg("-config")
                .arg(&config_path)
                .arg("-dnsserver")
                .arg(dns_server.to_string())
                .current_dir(dir.path())
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_VA_ALWAYS_VALID", "0");
            if let Some(p) = opts.nonce_reject_percent {
                cmd.env("PEBBLE_WFE_NONCEREJECT", p.to_string());
            }
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            let log = dir.path().join(format!("pebble-{attempt}.log"));
            let child = ServerProcess::spawn(PROGRAM, cmd, &log)?;
            match wait_ready(child, listen, mgmt, &tls)? {
                Attempt::Collision => continue,
                Attempt::Ready(child, listen, mgmt) => {
                    return Ok(Pebble {
                        child: *child,
                        challtestsrv,
                        listen,
                        mgmt,
                        http_port,
                        tls_port,
                        dns_server,
                        ca,
                        ca_cert_path,
                        tls,
                        client,
                        dir,
                    });
                }
            }
        }
        Err(HarnessError::PortsExhausted {
            program: PROGRAM.into(),
            attempts: ATTEMPTS,
        })
    }

    /// The ACME directory, `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The management interface, `https://127.0.0.1:<port>` (same TLS CA).
    pub fn management_url(&self) -> String {
        format!("https://{}", self.mgmt)
    }

    /// The PEM file of the CA that signed Pebble's HTTPS certificate: pass
    /// it as `--ca-cert`.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    /// The same CA, PEM text.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca.ca_cert_pem
    }

    /// The port Pebble's VA uses for http-01.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The port Pebble's VA uses for tls-alpn-01.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The DNS server Pebble's VA asks.
    pub fn dns_server(&self) -> SocketAddr {
        self.dns_server
    }

    /// The challtestsrv this Pebble owns (when started without
    /// `dns_server`).
    pub fn challtestsrv(&self) -> Option<&ChallTestSrv> {
        self.challtestsrv.as_ref()
    }

    /// A reqwest client that trusts Pebble's HTTPS CA (and nothing else).
    pub fn http_client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The temporary directory with Pebble's config, certificates and logs.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pebble's log file (it logs every request).
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// The last `lines` lines of Pebble's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// Pebble's process id (`None` after [`Pebble::stop`]).
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Whether Pebble, silent while orders wait on it, is in Pebble 2.4's
    /// deadlock (read from its source, v2.4.0, and seen in its goroutine
    /// dumps here): the authorization handler write-locks an authorization
    /// and then looks the account up under the in-memory store's read lock;
    /// a new order's `FindValidAuthorization` holds that read lock while it
    /// read-locks every authorization in turn; and a store writer queued
    /// between them (a certificate being added) keeps the first from
    /// getting the read lock. It is likelier the more orders are in flight
    /// and the more authorizations Pebble holds. Asks Pebble for its
    /// goroutine dump (SIGQUIT: a Go program prints every goroutine's stack
    /// and exits), which ends it either way: call it only once Pebble is
    /// taken for stuck.
    pub fn deadlocked(&self) -> bool {
        let Some(pid) = self.pid().and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return false;
        };
        // SAFETY: kill has no memory-safety preconditions. `pid` names
        // Pebble and no other process: it is the harness's own child, which
        // nothing reaps before the harness kills it (on drop), so its pid
        // is not reused.
        if unsafe { libc::kill(pid, libc::SIGQUIT) } != 0 {
            return false;
        }
        let dumped = Instant::now();
        loop {
            let log = String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default())
                .into_owned();
            let dump = log.rsplit_once("SIGQUIT").map_or("", |(_, d)| d);
            if dump.contains("(*MemoryStore).FindValidAuthorization")
                && dump.contains("(*WebFrontEndImpl).Authz")
            {
                return true;
            }
            if dumped.elapsed() > Duration::from_secs(2) {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill Pebble now (its challtestsrv keeps running), e.g. to test a CA
    /// that has become unreachable.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// The current ACME issuing root, PEM (`GET <management>/roots/0`).
    pub async fn root_pem(&self) -> Result<String, HarnessError> {
        self.mgmt_get_pem("/roots/0").await
    }

    /// The current intermediate, PEM (`GET <management>/intermediates/0`).
    pub async fn intermediate_pem(&self) -> Result<String, HarnessError> {
        self.mgmt_get_pem("/intermediates/0").await
    }

    /// [`Pebble::root_pem`] without an async runtime.
    pub fn root_pem_blocking(&self) -> Result<String, HarnessError> {
        let (status, body) = self.mgmt_get_blocking("/roots/0")?;
        self.expect_pem("/roots/0", status, body)
    }

    /// Root `index` of Pebble's chains, PEM (`GET <management>/roots/<index>`):
    /// 0 is the default chain's; with `PEBBLE_ALTERNATE_ROOTS=N`, 1..=N
    /// are the alternate chains' roots.
    pub fn root_pem_at_blocking(&self, index: usize) -> Result<String, HarnessError> {
        let path = format!("/roots/{index}");
        let (status, body) = self.mgmt_get_blocking(&path)?;
        self.expect_pem(&path, status, body)
    }

    /// [`Pebble::intermediate_pem`] without an async runtime.
    pub fn intermediate_pem_blocking(&self) -> Result<String, HarnessError> {
        let (status, body) = self.mgmt_get_blocking("/intermediates/0")?;
        self.expect_pem("/intermediates/0", status, body)
    }

    /// The status of the certificate with serial `serial_hex` (as printed by
    /// `openssl x509 -serial`: any case, colons and `0x` allowed), or `None`
    /// when Pebble never issued it.
    pub async fn cert_status_by_serial(
        &self,
        serial_hex: &str,
    ) -> Result<Option<CertStatus>, HarnessError> {
        let path = format!("/cert-status-by-serial/{}", normalize_serial(serial_hex));
        let url = format!("{}{}", self.management_url(), path);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| self.http_err(&path, format!("{e:#}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| self.http_err(&path, format!("reading the body: {e:#}")))?;
        self.parse_cert_status(&path, status, &body)
    }

    /// [`Pebble::cert_status_by_serial`] without an async runtime.
    pub fn cert_status_by_serial_blocking(
        &self,
        serial_hex: &str,
    ) -> Result<Option<CertStatus>, HarnessError> {
        let path = format!("/cert-status-by-serial/{}", normalize_serial(serial_hex));
        let (status, body) = self.mgmt_get_blocking(&path)?;
        self.parse_cert_status(&path, status, &body)
    }

    fn parse_cert_status(
        &self,
        path: &str,
        status: u16,
        body: &str,
    ) -> Result<Option<CertStatus>, HarnessError> {
        match status {
            200 => serde_json::from_str(body)
                .map(Some)
                .map_err(|e| self.http_err(path, format!("unexpected JSON ({e}): {body}"))),
            404 => Ok(None),
            s => Err(self.http_err(path, format!("status {s}: {body}"))),
        }
    }

    async fn mgmt_get_pem(&self, path: &str) -> Result<String, HarnessError> {
        let url = format!("{}{}", self.management_url(), path);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| self.http_err(path, format!("{e:#}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| self.http_err(path, format!("reading the body: {e:#}")))?;
        self.expect_pem(path, status, body)
    }

    fn mgmt_get_blocking(&self, path: &str) -> Result<(u16, String), HarnessError> {
        let resp = http::request(self.mgmt, Some(&self.tls), "GET", path, None, HTTP_TIMEOUT)
            .map_err(|e| self.http_err(path, e.to_string()))?;
        Ok((resp.status, resp.text()))
    }

    fn expect_pem(&self, path: &str, status: u16, body: String) -> Result<String, HarnessError> {
        if status == 200 && body.contains("-----BEGIN CERTIFICATE-----") {
            Ok(body)
        } else {
            Err(self.http_err(
                path,
                format!("status {status}, expected a PEM certificate: {body}"),
            ))
        }
    }

    fn http_err(&self, path: &str, message: String) -> HarnessError {
        HarnessError::Http {
            method: "GET",
            url: format!("{}{}", self.management_url(), path),
            message,
            log_path: self.child.log_path().to_path_buf(),
        }
    }
}

/// Poll until the directory and the management API answer over TLS with
/// our CA: that proves both listeners belong to this process, not to
/// another test's Pebble that took the port.
fn wait_ready(
    mut child: ServerProcess,
    listen: SocketAddr,
    mgmt: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Attempt, HarnessError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let poll = Duration::from_secs(2);
    loop {
        if crate::log_shows_port_collision(&child.log()) {
            return Ok(Attempt::Collision);
        }
        if let Some(status) = child.exited() {
            return Err(HarnessError::Exited {
                program: child.program().to_owned(),
                status: status.to_string(),
                log_path: child.log_path().to_path_buf(),
                log_tail: child.log_tail(20),
            });
        }
        let dir_ok = http::request(listen, Some(tls), "GET", "/dir", None, poll)
            .is_ok_and(|r| r.status == 200 && r.text().contains("newNonce"));
        if dir_ok
            && http::request(mgmt, Some(tls), "GET", "/roots/0", None, poll)
                .is_ok_and(|r| r.status == 200 && r.text().contains("BEGIN CERTIFICATE"))
        {
            return Ok(Attempt::Ready(Box::new(child), listen, mgmt));
        }
        if Instant::now() >= deadline {
            return Err(child.not_ready(
                format!("https://{listen}/dir and https://{mgmt}/roots/0"),
                READY_TIMEOUT,
            ));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Lower-case hex without `0x`, colons or leading zeros, as Pebble keys its
/// certificates.
fn normalize_serial(serial: &str) -> String {
    let s: String = serial
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let s = s.trim_start_matches('0');
    if s.is_empty() {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn serials_are_normalized() {
        assert_eq!(super::normalize_serial("0x00AB:CD"), "abcd");
        assert_eq!(
            super::normalize_serial("66317D2E02F5D3D6\n"),
            "66317d2e02f5d3d6"
        );
        assert_eq!(super::normalize_serial("00"), "0");
    }
}
