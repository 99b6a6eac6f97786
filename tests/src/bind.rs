//! BIND9 (`named`) as an authoritative server that accepts TSIG-signed
//! RFC 2136 updates, for the rfc2136 solver and DNS-01 end-to-end tests.
//!
//! Each [`Bind`] runs its own `named` in the foreground (`-g`) on
//! 127.0.0.1 and a free port (UDP and TCP), IPv4 only, with no recursion,
//! no rndc channel, a temporary working directory for its configuration,
//! zone files and update journals, and one TSIG key with a random secret
//! that may update every zone it serves.
//!
//! ```no_run
//! # fn demo() -> Result<(), certsmith_tests::HarnessError> {
//! use certsmith_tests::{Bind, ZoneSpec};
//! let bind = Bind::start(&[ZoneSpec::new("example.test")
//!     .record("_acme-challenge.app IN CNAME _acme-challenge.validation.test.")])?;
//! // hand bind.addr(), bind.tsig_key_name() and bind.tsig_secret_b64() to the solver, then:
//! let values = bind.query_txt("_acme-challenge.example.test")?;
//! # let _ = values; Ok(()) }
//! ```
//!
//! `named` runs as the user running the tests (as root too: no `-u`, so it
//! never drops to the `bind` user, which could not write the temporary
//! directory). A missing `named` is an error that says how to install it.

use std::fmt::Write as _;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::ServerProcess;
use crate::write_file as write;
use crate::{HarnessError, dns, free_udp_tcp_port};

/// Where the Debian package `bind9` puts `named`. Override with `NAMED_BIN`.
pub const NAMED_BIN: &str = "/usr/sbin/named";

/// The TSIG algorithms BIND accepts for a key, as written in `named.conf`.
pub const TSIG_ALGORITHMS: [&str; 5] = [
    "hmac-sha1",
    "hmac-sha224",
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
];

const PROGRAM: &str = "named";
const ATTEMPTS: u32 = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const KEY_NAME: &str = "certsmith-test-key.";
const TYPE_SOA: u16 = 6;

/// One zone for [`Bind`] to serve.
///
/// The zone gets an SOA (MNAME `ns1.<origin>`, serial 1, negative TTL 60),
/// an NS record `ns1.<origin>` and `ns1 IN A 127.0.0.1`; `records` are
/// added after those, one zone-file line each, relative to the origin
/// (e.g. `"_acme-challenge.app IN CNAME _acme-challenge.validation.test."`
/// or `"www 300 IN A 127.0.0.1"`). The default TTL is 60.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSpec {
    /// The zone's apex, e.g. `example.test` (a trailing dot is optional).
    pub origin: String,
    /// Extra zone-file lines.
    pub records: Vec<String>,
}

impl ZoneSpec {
    /// A zone with only its SOA, NS and `ns1` A record.
    pub fn new(origin: impl Into<String>) -> Self {
        ZoneSpec {
            origin: origin.into(),
            records: Vec::new(),
        }
    }

    /// Adds one zone-file line.
    pub fn record(mut self, line: impl Into<String>) -> Self {
        self.records.push(line.into());
        self
    }

    /// The origin, lower case, without the trailing dot.
    fn apex(&self) -> String {
        self.origin.trim_end_matches('.').to_ascii_lowercase()
    }

    fn zone_file(&self) -> String {
        let apex = self.apex();
        let mut text = format!(
            "$ORIGIN {apex}.\n$TTL 60\n\
             @ IN SOA ns1.{apex}. hostmaster.{apex}. 1 3600 600 86400 60\n\
             @ IN NS ns1.{apex}.\n\
             ns1 IN A 127.0.0.1\n"
        );
        for line in &self.records {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// A running `named` serving [`ZoneSpec`]s, updatable with one TSIG key.
/// Killed on drop.
#[derive(Debug)]
pub struct Bind {
    child: ServerProcess,
    addr: SocketAddr,
    zones: Vec<String>,
    key_name: String,
    algorithm: String,
    secret_b64: String,
    dir: tempfile::TempDir,
}

enum Attempt {
    Ready(ServerProcess),
    Collision,
}

impl Bind {
    /// Starts `named` serving `zones`, with an hmac-sha256 key allowed to
    /// update all of them.
    pub fn start(zones: &[ZoneSpec]) -> Result<Bind, HarnessError> {
        Self::start_with_algorithm(zones, "hmac-sha256")
    }

    /// Like [`start`](Self::start), with a key of `algorithm` (one of
    /// [`TSIG_ALGORITHMS`]).
    pub fn start_with_algorithm(zones: &[ZoneSpec], algorithm: &str) -> Result<Bind, HarnessError> {
        Self::start_inner(zones, algorithm, false)
    }

    /// Like [`start`](Self::start), but `named` also answers recursive
    /// queries, from its own zones only: it is made authoritative for the
    /// root too, so nothing ever leaves the machine. A resolver that
    /// validates through it then sees a CNAME from one of its zones into
    /// another followed, as a real recursive resolver would (an
    /// authoritative-only server returns the CNAME alone).
    pub fn start_resolving(zones: &[ZoneSpec]) -> Result<Bind, HarnessError> {
        Self::start_inner(zones, "hmac-sha256", true)
    }

    fn start_inner(
        zones: &[ZoneSpec],
        algorithm: &str,
        resolving: bool,
    ) -> Result<Bind, HarnessError> {
        let bin = named_bin()?;
        let algorithm = algorithm.to_ascii_lowercase();
        let secret_len = match algorithm.as_str() {
            "hmac-sha1" => 20,
            "hmac-sha224" => 28,
            "hmac-sha256" => 32,
            "hmac-sha384" => 48,
            "hmac-sha512" => 64,
            other => {
                return Err(HarnessError::Io {
                    context: format!(
                        "Bind::start_with_algorithm: {other:?} is not one of {TSIG_ALGORITHMS:?}"
                    ),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                });
            }
        };
        let secret_b64 = base64(&random_bytes(secret_len)?);
        let dir = crate::temp_dir("certsmith-bind-")?;
        let mut names = Vec::with_capacity(zones.len());
        for zone in zones {
            let apex = zone.apex();
            let path = dir.path().join(format!("{apex}.zone"));
            write(&path, &zone.zone_file())?;
            names.push(apex);
        }
        if resolving {
            write(
                &dir.path().join("root.zone"),
                "$TTL 60\n@ IN SOA ns1.root.invalid. hostmaster.root.invalid. 1 60 60 600 60\n@ IN NS ns1.root.invalid.\n",
            )?;
        }
        for attempt in 1..=ATTEMPTS {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_tcp_port()));
            let conf = dir.path().join(format!("named-{attempt}.conf"));
            write(
                &conf,
                &named_conf(
                    dir.path(),
                    addr.port(),
                    &names,
                    &algorithm,
                    &secret_b64,
                    resolving,
                ),
            )?;
            let log = dir.path().join(format!("named-{attempt}.log"));
            match try_start(&bin, &conf, &log, addr, &names)? {
                Attempt::Ready(child) => {
                    return Ok(Bind {
                        child,
                        addr,
                        zones: names,
                        key_name: KEY_NAME.to_owned(),
                        algorithm,
                        secret_b64,
                        dir,
                    });
                }
                Attempt::Collision => continue,
            }
        }
        Err(HarnessError::PortsExhausted {
            program: PROGRAM.into(),
            attempts: ATTEMPTS,
        })
    }

    /// Where it listens, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zones it serves, lower case, without trailing dots.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The TSIG key's name, with its trailing dot (`certsmith-test-key.`).
    pub fn tsig_key_name(&self) -> &str {
        &self.key_name
    }

    /// The TSIG key's algorithm as written in `named.conf`, e.g. `hmac-sha256`.
    pub fn tsig_algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The TSIG key's secret, base64 as in a BIND key file.
    pub fn tsig_secret_b64(&self) -> &str {
        &self.secret_b64
    }

    /// Asks it for (`name`, `qtype`) directly (UDP, TCP on truncation).
    pub fn query(&self, name: &str, qtype: u16) -> Result<dns::Response, HarnessError> {
        dns::query(self.addr, name, qtype)
    }

    /// The TXT values it serves at `name` (empty when there are none).
    pub fn query_txt(&self, name: &str) -> Result<Vec<String>, HarnessError> {
        dns::query_txt(self.addr, name)
    }

    /// Its log (stdout and stderr: `-g` logs everything there).
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// The process id, until killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Its working directory: `named.conf`, zone files, journals, log.
    pub fn temp_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kills and reaps it (also done on drop). Idempotent.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

fn named_bin() -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("NAMED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(NAMED_BIN));
    if path.is_file() {
        return Ok(path);
    }
    // Not NotInstalled: its message names the pebble package.
    Err(HarnessError::Io {
        context: "bind9 is not installed: run `apt-get install bind9` (or scripts/test, which \
                  installs it), or point NAMED_BIN at named"
            .to_owned(),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            format!("there is no {}", path.display()),
        ),
    })
}

fn named_conf(
    dir: &Path,
    port: u16,
    zones: &[String],
    algorithm: &str,
    secret: &str,
    resolving: bool,
) -> String {
    let d = dir.display();
    let recursion = if resolving {
        "recursion yes;\n\tallow-recursion { 127.0.0.1; };"
    } else {
        "recursion no;"
    };
    let mut conf = format!(
        "options {{\n\
         \tdirectory \"{d}\";\n\
         \tpid-file none;\n\
         \tsession-keyfile none;\n\
         \tlisten-on port {port} {{ 127.0.0.1; }};\n\
         \tlisten-on-v6 {{ none; }};\n\
         \t{recursion}\n\
         \tallow-query {{ any; }};\n\
         \tdnssec-validation no;\n\
         \tnotify no;\n\
         }};\n\
         controls {{ }};\n\
         key \"{KEY_NAME}\" {{\n\talgorithm {algorithm};\n\tsecret \"{secret}\";\n}};\n"
    );
    for apex in zones {
        let _ = write!(
            conf,
            "zone \"{apex}\" {{\n\
             \ttype primary;\n\
             \tfile \"{d}/{apex}.zone\";\n\
             \tallow-update {{ key \"{KEY_NAME}\"; }};\n\
             }};\n"
        );
    }
    conf
}

fn try_start(
    bin: &Path,
    conf: &Path,
    log: &Path,
    addr: SocketAddr,
    zones: &[String],
) -> Result<Attempt, HarnessError> {
    let mut cmd = Command::new(bin);
    // -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker
    // thread (tests start many servers on few cores).
    cmd.args(["-g", "-4", "-n", "1", "-c"]).arg(conf);
    let mut child = ServerProcess::spawn(PROGRAM, cmd, log)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = child.log();
        if text.contains("address in use") || crate::log_shows_port_collision(&text) {
            child.kill();
            return Ok(Attempt::Collision);
        }
        if let Some(status) = child.exited() {
            return Err(HarnessError::Exited {
                program: PROGRAM.into(),
                status: status.to_string(),
                log_path: child.log_path().to_path_buf(),
                log_tail: child.log_tail(20),
            });
        }
        if text.contains("not loaded due to errors") {
            let e = HarnessError::Io {
                context: format!(
                    "named could not load a zone from its ZoneSpec; its log {} ends with:\n{}",
                    child.log_path().display(),
                    child.log_tail(20)
                ),
                source: io::Error::from(io::ErrorKind::InvalidData),
            };
            child.kill();
            return Err(e);
        }
        // "running" comes after every zone is loaded and every socket is
        // open; the SOA probes prove that this port is ours.
        if text.lines().any(|l| l.ends_with(" running")) {
            let ours = zones.iter().all(|z| {
                dns::query(addr, z, TYPE_SOA)
                    .is_ok_and(|r| r.rcode == 0 && r.authoritative && !r.answers.is_empty())
            });
            if ours {
                return Ok(Attempt::Ready(child));
            }
        }
        if Instant::now() >= deadline {
            return Err(child.not_ready(
                format!("SOA queries for {zones:?} on {addr}"),
                READY_TIMEOUT,
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>, HarnessError> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| HarnessError::Io {
            context: "reading /dev/urandom for a TSIG secret".into(),
            source,
        })?;
    Ok(buf)
}

/// Standard base64 with padding, as BIND writes secrets.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn zone_file_has_soa_ns_and_records() {
        let z = ZoneSpec::new("Example.Test.").record("www IN A 127.0.0.2");
        let text = z.zone_file();
        assert!(text.starts_with("$ORIGIN example.test.\n"));
        assert!(text.contains("@ IN SOA ns1.example.test. "));
        assert!(text.ends_with("www IN A 127.0.0.2\n"));
    }
}
