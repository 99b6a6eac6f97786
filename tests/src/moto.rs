//! moto's server as a stand-in for the Route53 API, behind a fault-injecting
//! proxy.
//!
//! [moto](https://docs.getmoto.org/) is a Python package (`moto[server]` on
//! PyPI). The harness runs it from a virtual environment at
//! `<repo>/.venv-test` (override: `CERTSMITH_TEST_VENV`); scripts/test
//! creates it, and if `bin/moto_server` is missing there the harness creates
//! the venv and pip-installs `moto[server]` itself, once, under a file lock
//! so that parallel test processes do not race. Without `python3` (with its
//! `venv` module) or without access to PyPI, tests fail with a message
//! saying how to fix it; they never skip.
//!
//! Each [`Moto`] is its own `moto_server` on a free loopback port (killed on
//! drop and when the test process dies) and a small HTTP proxy in front of
//! it. Solvers under test talk to [`Moto::endpoint_url`], the proxy, which
//! forwards everything to moto unless told to fail the next requests with
//! one of Route53's real error bodies ([`Fault`]): moto itself never
//! throttles, and by default accepts any credentials.
//!
//! ```no_run
//! # fn demo() -> Result<(), certsmith_tests::HarnessError> {
//! use certsmith_tests::moto::{Fault, Moto, Route53Action};
//! let moto = Moto::start()?;
//! let zone_id = moto.create_zone("example.test", false)?;
//! moto.fail_next(Route53Action::ChangeResourceRecordSets, Fault::Throttling, 2);
//! // ... run the solver against moto.endpoint_url() ...
//! let values = moto.txt_values(&zone_id, "_acme-challenge.example.test")?;
//! # let _ = values; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::HarnessError;
use crate::ServerProcess;

const PROGRAM: &str = "moto_server";
/// What pip installs when the venv has no moto yet (the same as scripts/test).
pub const MOTO_REQUIREMENT: &str = "moto[server]";
const ATTEMPTS: u32 = 5;
/// moto imports a lot of Python at start-up; on a loaded 2-core machine that
/// takes several seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Route53's XML namespace.
const XMLNS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
/// moto routes a request to a service by the credential scope of its
/// `Authorization` header; any signature is accepted unless auth is enforced.
const FAKE_AUTH: &str = "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=0000";

/// The repository root (the parent of the `tests` crate).
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The virtual environment that holds moto: `CERTSMITH_TEST_VENV`, else
/// `<repo>/.venv-test`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("CERTSMITH_TEST_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-test"))
}

fn setup_error(what: &str, detail: String) -> HarnessError {
    HarnessError::Io {
        context: format!(
            "setting up moto (the Route53 stand-in) in {}: {what}. Fix: install python3 with \
             its venv module (Debian: `apt-get install python3 python3-venv`) and make PyPI \
             reachable, then run scripts/test or `python3 -m venv {0} && {0}/bin/pip install \
             '{MOTO_REQUIREMENT}'`",
            venv_dir().display()
        ),
        source: io::Error::other(detail),
    }
}

/// `<venv>/bin/moto_server`, installing moto first if it is missing.
/// Installation happens once per process and under an exclusive lock on
/// `<venv>.lock` across processes.
pub fn ensure_moto() -> Result<PathBuf, HarnessError> {
    static INSTALLED: OnceLock<Result<PathBuf, (String, String)>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| install_moto().map_err(|e| (e.0.to_owned(), e.1)))
        .clone()
        .map_err(|(what, detail)| setup_error(&what, detail))
}

fn install_moto() -> Result<PathBuf, (&'static str, String)> {
    let venv = venv_dir();
    let bin = venv.join("bin").join(PROGRAM);
    if bin.is_file() {
        return Ok(bin);
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            (
                "cannot create the venv's directory",
                format!("{}: {e}", parent.display()),
            )
        })?;
    }
    let lock_path = venv.with_extension("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            (
                "cannot create the lock file",
                format!("{}: {e}", lock_path.display()),
            )
        })?;
    lock.lock()
        .map_err(|e| ("cannot lock", format!("{}: {e}", lock_path.display())))?;
    // Another process may have installed it while we waited.
    if bin.is_file() {
        return Ok(bin);
    }
    let log_path = venv.with_extension("install.log");
    eprintln!(
        "certsmith-tests: {} has no moto; creating the venv and installing {MOTO_REQUIREMENT} \
         (log: {})",
        venv.display(),
        log_path.display()
    );
    let python = std::env::var_os("CERTSMITH_TEST_PYTHON").unwrap_or_else(|| "python3".into());
    let mut venv_cmd = Command::new(&python);
    venv_cmd.arg("-m").arg("venv").arg(&venv);
    run_logged(venv_cmd, &log_path).map_err(|e| ("`python3 -m venv` failed", e))?;
    let mut pip = Command::new(venv.join("bin").join("pip"));
    pip.args([
        "install",
        "--disable-pip-version-check",
        "--quiet",
        MOTO_REQUIREMENT,
    ]);
    run_logged(pip, &log_path).map_err(|e| ("`pip install` failed", e))?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err((
            "pip finished but installed no moto_server",
            format!("see {}", log_path.display()),
        ))
    }
    // The lock is released when `lock` is dropped.
}

/// Runs `cmd` to completion, appending its output to `log`; the error
/// carries the end of the log.
fn run_logged(mut cmd: Command, log: &Path) -> Result<(), String> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| format!("could not run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{:?} exited with {status}; {} ends with:\n{}",
        cmd.get_program(),
        log.display(),
        tail.join("\n")
    ))
}

/// How a [`Moto`] is started.
#[derive(Clone, Debug, Default)]
pub struct MotoOpts {
    /// Enforce IAM authentication from the first request on
    /// (`INITIAL_NO_AUTH_ACTION_COUNT=0`): requests signed with an access
    /// key moto's IAM does not know get moto's `InvalidClientTokenId` 403.
    /// The harness's own helpers ([`Moto::create_zone`], ...) are refused
    /// too, so such a server has no zones.
    pub enforce_auth: bool,
}

/// A Route53 API action, as the proxy recognizes it by method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route53Action {
    /// `POST /2013-04-01/hostedzone/{id}/rrset/`
    ChangeResourceRecordSets,
    /// `GET /2013-04-01/hostedzone/{id}/rrset`
    ListResourceRecordSets,
    /// `GET /2013-04-01/hostedzonesbyname`
    ListHostedZonesByName,
    /// `GET /2013-04-01/change/{id}`
    GetChange,
    /// Anything else.
    Other,
}

impl Route53Action {
    fn of(method: &str, target: &str) -> Self {
        let path = target.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("POST", ["2013-04-01", "hostedzone", _, "rrset"]) => Self::ChangeResourceRecordSets,
            ("GET", ["2013-04-01", "hostedzone", _, "rrset"]) => Self::ListResourceRecordSets,
            ("GET", ["2013-04-01", "hostedzonesbyname"]) => Self::ListHostedZonesByName,
            ("GET", ["2013-04-01", "change", _]) => Self::GetChange,
            _ => Self::Other,
        }
    }
}

/// An error the proxy answers with instead of forwarding, in Route53's
/// real wire shape (`<ErrorResponse><Error><Type/><Code/><Message/></Error>
/// <RequestId/></ErrorResponse>`, the status Route53 uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 400 `Throttling`: "Rate exceeded".
    Throttling,
    /// 400 `PriorRequestNotComplete`: a change to the same name is still
    /// being applied.
    PriorRequestNotComplete,
    /// 400 `InvalidChangeBatch`: the values of a DELETE do not match the
    /// current ones (someone else changed the set since it was read).
    InvalidChangeBatchRace,
    /// 503 `ServiceUnavailable`.
    ServiceUnavailable,
    /// 403 `InvalidClientTokenId`: an unknown access key.
    InvalidClientTokenId,
    /// 403 `SignatureDoesNotMatch`: a wrong secret key.
    SignatureDoesNotMatch,
    /// 403 `AccessDenied`: valid credentials without the permission.
    AccessDenied,
}

impl Fault {
    fn status(self) -> (u16, &'static str) {
        match self {
            Fault::Throttling | Fault::PriorRequestNotComplete | Fault::InvalidChangeBatchRace => {
                (400, "Bad Request")
            }
            Fault::ServiceUnavailable => (503, "Service Unavailable"),
            Fault::InvalidClientTokenId | Fault::SignatureDoesNotMatch | Fault::AccessDenied => {
                (403, "Forbidden")
            }
        }
    }

    fn code_and_message(self) -> (&'static str, &'static str) {
        match self {
            Fault::Throttling => ("Throttling", "Rate exceeded"),
            Fault::PriorRequestNotComplete => (
                "PriorRequestNotComplete",
                "The request was rejected because Route 53 was still processing a prior request.",
            ),
            Fault::InvalidChangeBatchRace => (
                "InvalidChangeBatch",
                "[Tried to delete resource record set [name='_acme-challenge.example.test.', type='TXT'] but the values provided do not match the current values]",
            ),
            Fault::ServiceUnavailable => ("ServiceUnavailable", "Service Unavailable"),
            Fault::InvalidClientTokenId => (
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            ),
            Fault::SignatureDoesNotMatch => (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            ),
            Fault::AccessDenied => (
                "AccessDenied",
                "User: arn:aws:iam::123456789012:user/certsmith-test is not authorized to perform: route53:ChangeResourceRecordSets on resource: arn:aws:route53:::hostedzone/ZTEST because no identity-based policy allows the route53:ChangeResourceRecordSets action",
            ),
        }
    }

    fn response(self) -> Vec<u8> {
        let (status, reason) = self.status();
        let (code, message) = self.code_and_message();
        let request_id = format!("certsmith-test-{}", next_id());
        let body = format!(
            "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type>\
             <Code>{code}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId>\
             </ErrorResponse>",
            xml_escape(message)
        );
        format!(
            "HTTP/1.1 {status} {reason}\r\nx-amzn-RequestId: {request_id}\r\n\
             Content-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// A TXT record set as moto stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxtRecordSet {
    /// Its TTL.
    pub ttl: Option<u32>,
    /// Its values as stored, quoted (`"abc"`).
    pub raw_values: Vec<String>,
}

impl TxtRecordSet {
    /// The values without their quotes.
    pub fn values(&self) -> Vec<String> {
        self.raw_values.iter().map(|v| unquote(v)).collect()
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if !inner.contains("\" \"") => {
            inner.replace("\\\"", "\"").replace("\\\\", "\\")
        }
        _ => v.to_owned(),
    }
}

#[derive(Debug)]
struct Rule {
    on: Option<Route53Action>,
    fault: Fault,
    remaining: u32,
}

#[derive(Debug, Default)]
struct ProxyState {
    rules: Vec<Rule>,
    seen: HashMap<Route53Action, u32>,
    faults_served: u32,
}

/// A running moto server and the fault-injecting proxy in front of it.
/// Both stop on drop.
pub struct Moto {
    child: ServerProcess,
    moto: SocketAddr,
    proxy: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl fmt::Debug for Moto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Moto")
            .field("moto", &self.moto)
            .field("proxy", &self.proxy)
            .field("log", &self.child.log_path())
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Ready(ServerProcess),
    Collision,
}

impl Moto {
    /// Start moto (installing it first if needed) and its proxy.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(MotoOpts::default())
    }

    /// Start with options.
    pub fn start_with(opts: MotoOpts) -> Result<Self, HarnessError> {
        let bin = ensure_moto()?;
        let dir = crate::temp_dir("certsmith-moto-")?;
        let mut started = None;
        for attempt in 1..=ATTEMPTS {
            let port = crate::free_port();
            let log = dir.path().join(format!("moto-{attempt}.log"));
            match try_start(&bin, &log, port, &opts)? {
                Attempt::Ready(child) => {
                    started = Some((child, SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
                    break;
                }
                Attempt::Collision => continue,
            }
        }
        let Some((child, moto)) = started else {
            return Err(HarnessError::PortsExhausted {
                program: PROGRAM.into(),
                attempts: ATTEMPTS,
            });
        };
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: "binding the moto proxy on 127.0.0.1".into(),
                source,
            })?;
        let proxy = listener.local_addr().map_err(|source| HarnessError::Io {
            context: "reading the moto proxy's address".into(),
            source,
        })?;
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::Builder::new()
                .name("certsmith-moto-proxy".into())
                .spawn(move || accept_loop(listener, moto, state, stop))
                .map_err(|source| HarnessError::Io {
                    context: "starting the moto proxy thread".into(),
                    source,
                })?
        };
        Ok(Moto {
            child,
            moto,
            proxy,
            state,
            stop,
            acceptor: Some(acceptor),
            _dir: dir,
        })
    }

    /// The URL to give a Route53 client (`endpoint_url`): the proxy.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// moto itself, bypassing the proxy.
    pub fn moto_url(&self) -> String {
        format!("http://{}", self.moto)
    }

    /// moto's log file.
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// The last `lines` lines of moto's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// Answer the next `count` requests of `action` that reach the proxy
    /// with `fault` instead of forwarding them. Rules queue up in order.
    pub fn fail_next(&self, action: Route53Action, fault: Fault, count: u32) {
        self.add_rule(Some(action), fault, count);
    }

    /// Answer the next `count` requests, whatever they are, with `fault`.
    pub fn fail_next_any(&self, fault: Fault, count: u32) {
        self.add_rule(None, fault, count);
    }

    fn add_rule(&self, on: Option<Route53Action>, fault: Fault, remaining: u32) {
        self.lock_state().rules.push(Rule {
            on,
            fault,
            remaining,
        });
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many requests of `action` reached the proxy (faulted or not).
    pub fn requests(&self, action: Route53Action) -> u32 {
        self.lock_state().seen.get(&action).copied().unwrap_or(0)
    }

    /// How many requests were answered with an injected fault.
    pub fn faults_served(&self) -> u32 {
        self.lock_state().faults_served
    }

    /// Injected faults not served yet.
    pub fn faults_pending(&self) -> u32 {
        self.lock_state().rules.iter().map(|r| r.remaining).sum()
    }

    fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&str>,
    ) -> Result<String, HarnessError> {
        let err = |message: String| HarnessError::Http {
            method,
            url: format!("{}{}", self.moto_url(), path),
            message,
            log_path: self.child.log_path().to_path_buf(),
        };
        let (status, text) = http(self.moto, method, path, body.map(str::as_bytes))
            .map_err(|e| err(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(err(format!("status {status}: {text}")));
        }
        Ok(text)
    }

    /// Create a hosted zone (private: without a VPC, which moto allows) and
    /// return its id without the `/hostedzone/` prefix.
    pub fn create_zone(&self, name: &str, private: bool) -> Result<String, HarnessError> {
        let reference = format!("certsmith-test-{}-{}", std::process::id(), next_id());
        let config = if private {
            "<HostedZoneConfig><Comment>certsmith test</Comment><PrivateZone>true</PrivateZone></HostedZoneConfig>"
        } else {
            "<HostedZoneConfig><Comment>certsmith test</Comment><PrivateZone>false</PrivateZone></HostedZoneConfig>"
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CreateHostedZoneRequest xmlns=\"{XMLNS}\">\
             <Name>{}</Name><CallerReference>{reference}</CallerReference>{config}\
             </CreateHostedZoneRequest>",
            xml_escape(name)
        );
        let text = self.request("POST", "/2013-04-01/hostedzone", Some(&body))?;
        let id = tag_texts(&text, "Id")
            .into_iter()
            .find(|id| id.contains("hostedzone/"))
            .map(|id| id.rsplit('/').next().unwrap_or_default().to_owned())
            .filter(|id| !id.is_empty());
        id.ok_or_else(|| HarnessError::Http {
            method: "POST",
            url: format!("{}/2013-04-01/hostedzone", self.moto_url()),
            message: format!("no hosted zone id in the answer: {text}"),
            log_path: self.child.log_path().to_path_buf(),
        })
    }

    /// The TXT record set at `fqdn` in the zone, if any.
    pub fn txt_set(&self, zone_id: &str, fqdn: &str) -> Result<Option<TxtRecordSet>, HarnessError> {
        let want = normalize(fqdn);
        let path = format!(
            "/2013-04-01/hostedzone/{zone_id}/rrset?name={}.&type=TXT&maxitems=100",
            want
        );
        let text = self.request("GET", &path, None)?;
        for set in tag_texts(&text, "ResourceRecordSet") {
            let name = tag_texts(set, "Name")
                .first()
                .map(|n| normalize(&xml_unescape(n)));
            let ty = tag_texts(set, "Type").first().copied();
            if name.as_deref() == Some(want.as_str()) && ty == Some("TXT") {
                return Ok(Some(TxtRecordSet {
                    ttl: tag_texts(set, "TTL").first().and_then(|t| t.parse().ok()),
                    raw_values: tag_texts(set, "Value")
                        .into_iter()
                        .map(xml_unescape)
                        .collect(),
                }));
            }
        }
        Ok(None)
    }

    /// The TXT values at `fqdn` (unquoted), empty when there is no record.
    pub fn txt_values(&self, zone_id: &str, fqdn: &str) -> Result<Vec<String>, HarnessError> {
        Ok(self
            .txt_set(zone_id, fqdn)?
            .map(|s| s.values())
            .unwrap_or_default())
    }

    /// Write the TXT record set at `fqdn` (UPSERT) with these values
    /// (quoted here), e.g. to put a value that is not the solver's.
    pub fn upsert_txt(
        &self,
        zone_id: &str,
        fqdn: &str,
        ttl: u32,
        values: &[&str],
    ) -> Result<(), HarnessError> {
        let records: String = values
            .iter()
            .map(|v| {
                format!(
                    "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                    xml_escape(&format!("\"{v}\""))
                )
            })
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ChangeResourceRecordSetsRequest xmlns=\"{XMLNS}\">\
             <ChangeBatch><Changes><Change><Action>UPSERT</Action><ResourceRecordSet>\
             <Name>{}.</Name><Type>TXT</Type><TTL>{ttl}</TTL><ResourceRecords>{records}\
             </ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch>\
             </ChangeResourceRecordSetsRequest>",
            xml_escape(&normalize(fqdn))
        );
        self.request(
            "POST",
            &format!("/2013-04-01/hostedzone/{zone_id}/rrset/"),
            Some(&body),
        )?;
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.proxy, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        self.child.kill();
    }
}

fn try_start(bin: &Path, log: &Path, port: u16, opts: &MotoOpts) -> Result<Attempt, HarnessError> {
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    if opts.enforce_auth {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
    } else {
        cmd.env_remove("INITIAL_NO_AUTH_ACTION_COUNT");
    }
    let mut child = ServerProcess::spawn(PROGRAM, cmd, log)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = child.log();
        if crate::log_shows_port_collision(&text) || text.contains("Address already in use") {
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
        // moto's own API answers without credentials even when auth is
        // enforced; the log line proves it is our process that answered.
        if let Ok((200, _)) = http(addr, "GET", "/moto-api/data.json", None)
            && child.log().contains("/moto-api/data.json")
        {
            return Ok(Attempt::Ready(child));
        }
        if Instant::now() >= deadline {
            return Err(child.not_ready(
                format!("GET http://{addr}/moto-api/data.json"),
                READY_TIMEOUT,
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (N.fetch_add(1, Ordering::Relaxed) << 32) | u64::from(nanos)
}

/// One HTTP/1.0 request to moto, as Route53 (see [`FAKE_AUTH`]).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    tcp.set_read_timeout(Some(HTTP_TIMEOUT))?;
    tcp.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {FAKE_AUTH}\r\n"
    );
    if let Some(body) = body {
        req.push_str("Content-Type: application/xml\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    tcp.write_all(&bytes)?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let split = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok((
        status,
        String::from_utf8_lossy(&raw[split + 4..]).into_owned(),
    ))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad HTTP message: {what}"),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    stop: Arc<AtomicBool>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let state = state.clone();
        // One thread per connection; every response closes its connection.
        let _ = thread::Builder::new()
            .name("certsmith-moto-proxy-conn".into())
            .spawn(move || {
                if let Err(e) = handle(stream, upstream, &state) {
                    eprintln!("certsmith-tests: moto proxy: {e}");
                }
            });
    }
}

/// Proxies one request (the response closes the connection).
fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: &Mutex<ProxyState>,
) -> io::Result<()> {
    client.set_read_timeout(Some(HTTP_TIMEOUT))?;
    client.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let Some((head, body)) = read_request(&mut client)? else {
        return Ok(()); // closed without a request (e.g. the wake-up on drop)
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let action = Route53Action::of(method, target);
    let fault = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        *s.seen.entry(action).or_default() += 1;
        let fault = s
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && r.on.is_none_or(|a| a == action))
            .map(|r| {
                r.remaining -= 1;
                r.fault
            });
        s.rules.retain(|r| r.remaining > 0);
        if fault.is_some() {
            s.faults_served += 1;
        }
        fault
    };
    if let Some(fault) = fault {
        client.write_all(&fault.response())?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }

    let mut up = TcpStream::connect_timeout(&upstream, HTTP_TIMEOUT)?;
    up.set_read_timeout(Some(HTTP_TIMEOUT))?;
    up.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut fwd = format!("{request_line}\r\n");
    for line in lines {
        if !is_header(line, "connection") && !is_header(line, "keep-alive") {
            fwd.push_str(line);
            fwd.push_str("\r\n");
        }
    }
    fwd.push_str("Connection: close\r\n\r\n");
    up.write_all(fwd.as_bytes())?;
    up.write_all(&body)?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    let split =
        find(&raw, b"\r\n\r\n").ok_or_else(|| bad("moto's answer has no end of headers"))?;
    let resp_head = String::from_utf8_lossy(&raw[..split]);
    let mut out = String::new();
    for line in resp_head.split("\r\n") {
        if !is_header(line, "connection") && !is_header(line, "keep-alive") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes())?;
    client.write_all(&raw[split + 4..])?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

fn is_header(line: &str, name: &str) -> bool {
    line.split_once(':')
        .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
}

/// Reads one request: the head (without the blank line) and a
/// `Content-Length` body. `None` when the peer closed before sending one.
fn read_request(stream: &mut TcpStream) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let split = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return Err(bad("request head over 1 MiB"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("connection closed inside the request head"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut body = buf[split + 4..].to_vec();
    let mut length = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| bad("bad Content-Length"))?;
            }
            if name.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked requests are not supported by the moto proxy"));
            }
        }
    }
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed inside the request body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some((head, body)))
}

/// The inner text of every `<tag>...</tag>` (not nested in itself).
fn tag_texts<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Lower case, no trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_actions() {
        use Route53Action as A;
        assert_eq!(
            A::of("POST", "/2013-04-01/hostedzone/Z1/rrset/"),
            A::ChangeResourceRecordSets
        );
        assert_eq!(
            A::of("GET", "/2013-04-01/hostedzone/Z1/rrset?name=a.&type=TXT"),
            A::ListResourceRecordSets
        );
        assert_eq!(
            A::of("GET", "/2013-04-01/hostedzonesbyname?dnsname=a."),
            A::ListHostedZonesByName
        );
        assert_eq!(A::of("GET", "/2013-04-01/change/C1"), A::GetChange);
        assert_eq!(A::of("POST", "/2013-04-01/hostedzone"), A::Other);
    }

    #[test]
    fn xml_helpers() {
        let xml = "<a><Value>&quot;x&quot;</Value><Value>y</Value></a>";
        assert_eq!(tag_texts(xml, "Value"), ["&quot;x&quot;", "y"]);
        assert_eq!(xml_unescape("&quot;x&amp;y&quot;"), "\"x&y\"");
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("\"a\" \"b\""), "\"a\" \"b\"");
        let fault = String::from_utf8(Fault::Throttling.response()).expect("utf-8");
        assert!(fault.starts_with("HTTP/1.1 400 "));
        assert!(fault.contains("<Code>Throttling</Code>"));
    }
}
