//! A real PowerDNS Authoritative server (`pdns_server`, Debian packages
//! `pdns-server` and `pdns-backend-sqlite3`) for the pdns solver: its HTTP
//! API on 127.0.0.1 (api=yes, webserver=yes, a random API key), DNS on
//! 127.0.0.1 and a free port, the gsqlite3 backend in a temporary
//! directory (the database made with the `sqlite3` tool from the schema
//! Debian ships), and the zones asked for created through the API.
//!
//! Packet and query caches are off, so a change is served at once (the
//! API purges them on change anyway; the tests should not depend on it).
//! No syslog, no guardian, no security polling (it would query the
//! internet). Killed on drop, and by the kernel when the test dies.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::mini_http::send;
use crate::process::ServerProcess;
use crate::{HarnessError, dns, free_port, free_udp_tcp_port};

/// Where Debian puts `pdns_server`. Override with `PDNS_SERVER_BIN`.
pub const PDNS_SERVER_BIN: &str = "/usr/sbin/pdns_server";
/// Where Debian puts the gsqlite3 schema. Override with `PDNS_SQLITE_SCHEMA`.
pub const PDNS_SQLITE_SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";

const PROGRAM: &str = "pdns_server";
const ATTEMPTS: u32 = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running PowerDNS Authoritative server; killed on drop.
#[derive(Debug)]
pub struct Pdns {
    child: ServerProcess,
    dns: SocketAddr,
    web: SocketAddr,
    key: String,
    zones: Vec<String>,
    dir: tempfile::TempDir,
}

fn not_installed(what: &str, path: &Path) -> HarnessError {
    HarnessError::Io {
        context: format!(
            "{what} is missing ({}): run `apt-get install pdns-server pdns-backend-sqlite3 sqlite3` (scripts/test installs them)",
            path.display()
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

impl Pdns {
    /// Starts `pdns_server` and creates `zones` (Native, NS `ns1.<zone>`).
    pub fn start(zones: &[&str]) -> Result<Pdns, HarnessError> {
        let bin = PathBuf::from(
            std::env::var("PDNS_SERVER_BIN").unwrap_or_else(|_| PDNS_SERVER_BIN.to_owned()),
        );
        if !bin.is_file() {
            return Err(not_installed("pdns_server (pdns-server)", &bin));
        }
        let schema = PathBuf::from(
            std::env::var("PDNS_SQLITE_SCHEMA").unwrap_or_else(|_| PDNS_SQLITE_SCHEMA.to_owned()),
        );
        if !schema.is_file() {
            return Err(not_installed(
                "the gsqlite3 schema (pdns-backend-sqlite3)",
                &schema,
            ));
        }
        let dir = crate::temp_dir("certsmith-pdns-")?;
        let db = dir.path().join("pdns.sqlite3");
        let sql = std::fs::File::open(&schema).map_err(|source| HarnessError::Io {
            context: format!("opening {}", schema.display()),
            source,
        })?;
        let made = Command::new("sqlite3")
            .arg(&db)
            .stdin(sql)
            .output()
            .map_err(|_| not_installed("sqlite3", Path::new("sqlite3")))?;
        if !made.status.success() {
            return Err(HarnessError::Io {
                context: format!(
                    "sqlite3 could not create {}: {}",
                    db.display(),
                    String::from_utf8_lossy(&made.stderr)
                ),
                source: std::io::Error::other("sqlite3 failed"),
            });
        }
        let key =
            crate::bind::base64(&crate::bind::random_bytes(24)?).replace(['+', '/', '='], "x");
        for attempt in 1..=ATTEMPTS {
            let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_tcp_port()));
            let web = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--no-config",
                "--daemon=no",
                "--guardian=no",
                "--disable-syslog",
                "--write-pid=no",
                "--loglevel=5",
                "--launch=gsqlite3",
                "--local-address=127.0.0.1",
                "--api=yes",
                "--webserver=yes",
                "--webserver-address=127.0.0.1",
                "--webserver-allow-from=127.0.0.0/8",
                "--security-poll-suffix=",
                "--cache-ttl=0",
                "--negquery-cache-ttl=0",
                "--query-cache-ttl=0",
                "--zone-cache-refresh-interval=0",
                "--receiver-threads=1",
                "--distributor-threads=1",
            ])
            .arg(format!("--gsqlite3-database={}", db.display()))
            .arg(format!("--socket-dir={}", dir.path().display()))
            .arg(format!("--local-port={}", dns.port()))
            .arg(format!("--webserver-port={}", web.port()))
            .arg(format!("--api-key={key}"));
            let log = dir.path().join(format!("pdns-{attempt}.log"));
            let mut child = ServerProcess::spawn(PROGRAM, cmd, &log)?;
            let deadline = Instant::now() + READY_TIMEOUT;
            let ready = loop {
                let text = child.log();
                if text.contains("Address already in use") || crate::log_shows_port_collision(&text)
                {
                    child.kill();
                    break false;
                }
                if let Some(status) = child.exited() {
                    return Err(HarnessError::Exited {
                        program: PROGRAM.into(),
                        status: status.to_string(),
                        log_path: child.log_path().to_path_buf(),
                        log_tail: child.log_tail(20),
                    });
                }
                if text.contains("Listening for HTTP requests")
                    && send(
                        web,
                        "GET",
                        "/api/v1/servers/localhost",
                        &[("X-API-Key", &key)],
                        None,
                    )
                    .is_ok_and(|(s, b)| s == 200 && b.contains("authoritative"))
                {
                    break true;
                }
                if Instant::now() >= deadline {
                    return Err(child.not_ready(
                        format!("GET http://{web}/api/v1/servers/localhost"),
                        READY_TIMEOUT,
                    ));
                }
                thread::sleep(Duration::from_millis(30));
            };
            if !ready {
                continue;
            }
            let pdns = Pdns {
                child,
                dns,
                web,
                key: key.clone(),
                zones: zones
                    .iter()
                    .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
                dir,
            };
            for z in &pdns.zones {
                pdns.api(
                    "POST",
                    "/api/v1/servers/localhost/zones",
                    Some(json!({"name": format!("{z}."), "kind": "Native", "nameservers": [format!("ns1.{z}.")]})),
                    201,
                )?;
            }
            return Ok(pdns);
        }
        Err(HarnessError::PortsExhausted {
            program: PROGRAM.into(),
            attempts: ATTEMPTS,
        })
    }

    /// One API call that must answer `want`; its JSON (`Null` if empty).
    pub fn api(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value, HarnessError> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let fail = |message: String| HarnessError::Http {
            method,
            url: format!("http://{}{path}", self.web),
            message,
            log_path: self.child.log_path().to_path_buf(),
        };
        let (status, text) = send(
            self.web,
            method,
            path,
            &[("X-API-Key", &self.key)],
            bytes.as_deref(),
        )
        .map_err(|e| fail(e.to_string()))?;
        if status != want {
            return Err(fail(format!("status {status} (wanted {want}): {text}")));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| fail(format!("{e}: {text}")))
    }

    /// The webserver's URL (`PDNS_API_URL`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.web)
    }

    /// Where its webserver (the API) listens.
    pub fn web_addr(&self) -> SocketAddr {
        self.web
    }

    /// The API key (`PDNS_API_KEY`).
    pub fn api_key(&self) -> &str {
        &self.key
    }

    /// Where it answers DNS (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// The zones created at start.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The TXT values it serves at `name`.
    pub fn query_txt(&self, name: &str) -> Result<Vec<String>, HarnessError> {
        dns::query_txt(self.dns, name)
    }

    /// The TXT records at `fqdn` in `zone` as the API shows them, with
    /// their `disabled` flags: `(content, disabled)`.
    pub fn txt_records(&self, zone: &str, fqdn: &str) -> Result<Vec<(String, bool)>, HarnessError> {
        let z = self.api(
            "GET",
            &format!("/api/v1/servers/localhost/zones/{zone}."),
            None,
            200,
        )?;
        let want = format!("{}.", fqdn.trim_end_matches('.'));
        Ok(z["rrsets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["type"] == "TXT" && s["name"].as_str() == Some(want.as_str()))
            .flat_map(|s| s["records"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["content"].as_str().unwrap_or_default().to_owned(),
                    r["disabled"].as_bool().unwrap_or(false),
                )
            })
            .collect())
    }

    /// Makes the TXT set at `fqdn` hold `records` `(content, disabled)`,
    /// as another tool would (content in presentation format, quoted).
    pub fn put_txt(
        &self,
        zone: &str,
        fqdn: &str,
        records: &[(&str, bool)],
    ) -> Result<(), HarnessError> {
        let recs: Vec<Value> = records
            .iter()
            .map(|(c, d)| json!({"content": c, "disabled": d}))
            .collect();
        self.api(
            "PATCH",
            &format!("/api/v1/servers/localhost/zones/{zone}."),
            Some(json!({"rrsets": [{"name": format!("{}.", fqdn.trim_end_matches('.')), "type": "TXT", "ttl": 60, "changetype": "REPLACE", "records": recs}]})),
            204,
        )
        .map(|_| ())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// Its temporary directory (database, control socket, logs).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, until killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Kills it (also done on drop).
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
