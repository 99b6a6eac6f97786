//! A fault-injecting HTTPS proxy in front of Pebble.
//!
//! Why this exists: certsmith must get its certificate from a CA that now
//! and then answers 500, says it is unavailable (503 with `Retry-After`),
//! drops a connection, or never answers (docs/design.md §7). Pebble does
//! none of that on its own. This proxy forwards every ACME request to a
//! [`Pebble`] (like [`crate::ari_proxy::AriProxy`], `Host` unchanged so
//! every URL Pebble hands out points at the proxy) and faults the requests
//! it is told to:
//!
//! * a [`RequestKind`] is recognised from the method and Pebble's paths
//!   (the directory's `newNonce`, `newAccount`, `newOrder`; `/authZ/`,
//!   `/chalZ/`, `/finalize-order/`, `/my-order/`, `/certZ/`);
//! * [`FaultProxy::fault_nth`] faults the n-th request of a kind,
//!   [`FaultProxy::fault_random`] a share of every request;
//! * [`Fault::Status500`] and [`Fault::Reset`] forward the request first
//!   (the CA acted on it; its answer is lost), [`Fault::Status503`] and
//!   [`Fault::Stall`] do not (the CA never saw it), [`Fault::Delay`]
//!   forwards it late (a CA acting on a request long after it came),
//!   [`Fault::ValidatedBeforeAnswer`] answers a challenge's ready request
//!   as a CA that had already failed the validation;
//! * every request is counted per kind ([`FaultProxy::count`]), and every
//!   fault injected is recorded ([`FaultProxy::injected`]).
//!
//! One request per connection (`Connection: close`).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::ari_proxy::{
    IO_TIMEOUT, ProxyTls, Request, Response, forward_to, read_request, write_response,
};
use crate::conn_server::ConnServer;
use crate::{HarnessError, Pebble};

/// What an ACME request is, as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    /// GET of the directory.
    Directory,
    /// HEAD or GET of newNonce.
    NewNonce,
    /// POST to newAccount.
    NewAccount,
    /// POST to newOrder.
    NewOrder,
    /// POST to an authorization (POST-as-GET).
    Authorization,
    /// POST to a challenge (ready, or a POST-as-GET).
    Challenge,
    /// POST to an order's finalize URL.
    Finalize,
    /// POST-as-GET of an order (polling).
    OrderPoll,
    /// POST-as-GET of a certificate (the download).
    Certificate,
    /// Anything else (account, revocation, key change).
    Other,
}

impl RequestKind {
    /// Every kind a certificate order goes through, in order.
    pub const ORDER_STEPS: [RequestKind; 9] = [
        RequestKind::Directory,
        RequestKind::NewNonce,
        RequestKind::NewAccount,
        RequestKind::NewOrder,
        RequestKind::Authorization,
        RequestKind::Challenge,
        RequestKind::OrderPoll,
        RequestKind::Finalize,
        RequestKind::Certificate,
    ];
}

/// What to do to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it, then answer HTTP 500 with a `serverInternal` problem.
    Status500,
    /// Answer HTTP 503 with this `Retry-After` (seconds), without
    /// forwarding.
    Status503 {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// Forward it, then close the connection with a TCP reset, no answer.
    Reset,
    /// Read it and answer nothing for this long (then close), without
    /// forwarding.
    Stall(Duration),
    /// Hold it this long, then forward it and answer what the CA answered.
    Delay(Duration),
    /// Forward it, wait this long (the CA's validation, started by a
    /// challenge's ready request, fails meanwhile), then answer what the CA
    /// answered with the challenge made `invalid` and given an
    /// `unauthorized` problem: the answer of a CA that validated before it
    /// answered. Pebble 2.4 gives it when its VA wins a race against its
    /// own handler (the handler starts the validation, then reads the
    /// challenge to answer); this makes the race's outcome certain. For
    /// [`RequestKind::Challenge`], with a validation bound to fail.
    ValidatedBeforeAnswer(Duration),
    /// Answer HTTP 429 with a `rateLimited` problem saying `detail` and
    /// this `Retry-After` (seconds), without forwarding: the CA's rate
    /// limit.
    RateLimited {
        /// The `Retry-After` value.
        retry_after_secs: u64,
        /// The problem's `detail` (Let's Encrypt's wording names the
        /// registered domain for per-domain limits).
        detail: &'static str,
    },
}

/// A fault on the n-th request of a kind, or on every one.
#[derive(Debug, Clone)]
struct Rule {
    kind: RequestKind,
    /// 1-based; `None`: every request of the kind.
    nth: Option<usize>,
    fault: Fault,
}

#[derive(Debug)]
struct Random {
    percent: f64,
    faults: Vec<Fault>,
    state: u64,
}

impl Random {
    /// xorshift64*: a fixed sequence per seed.
    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Debug, Default)]
struct State {
    paths: HashMap<String, RequestKind>,
    counts: BTreeMap<RequestKind, usize>,
    rules: Vec<Rule>,
    random: Option<Random>,
    injected: Vec<(RequestKind, Fault)>,
    errors: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    upstream: SocketAddr,
    upstream_tls: Arc<rustls::ClientConfig>,
    server_tls: Arc<rustls::ServerConfig>,
    stop: AtomicBool,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running proxy. Stopped on drop (a stalled connection is let go).
#[derive(Debug)]
pub struct FaultProxy {
    inner: Arc<Inner>,
    tls: ProxyTls,
    _server: ConnServer,
}

impl FaultProxy {
    /// Starts a proxy in front of `pebble` on a free port of 127.0.0.1,
    /// with no fault set.
    pub fn start(pebble: &Pebble) -> Result<FaultProxy, HarnessError> {
        let tls = ProxyTls::new(pebble, "certsmith-fault-proxy-")?;
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: "binding the fault proxy to 127.0.0.1".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| HarnessError::Io {
            context: "reading the fault proxy's address".into(),
            source,
        })?;
        let inner = Arc::new(Inner {
            addr,
            upstream: tls.upstream,
            upstream_tls: Arc::clone(&tls.upstream_tls),
            server_tls: Arc::clone(&tls.server_tls),
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        let conn_inner = Arc::clone(&inner);
        let server = ConnServer::spawn(listener, "fault-proxy", move |stream| {
            if let Err(e) = serve(stream, &conn_inner) {
                conn_inner.state().errors.push(e.to_string());
            }
        })?;
        Ok(FaultProxy {
            inner,
            tls,
            _server: server,
        })
    }

    /// The directory URL to give certsmith: `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.inner.addr)
    }

    /// A PEM file trusting the proxy's and Pebble's HTTPS CAs.
    pub fn ca_bundle_path(&self) -> &Path {
        &self.tls.bundle
    }

    /// Faults the `n`-th request (1-based, counted from the start) of
    /// `kind`.
    pub fn fault_nth(&self, kind: RequestKind, n: usize, fault: Fault) {
        self.inner.state().rules.push(Rule {
            kind,
            nth: Some(n),
            fault,
        });
    }

    /// Faults every request of `kind`.
    pub fn fault_every(&self, kind: RequestKind, fault: Fault) {
        self.inner.state().rules.push(Rule {
            kind,
            nth: None,
            fault,
        });
    }

    /// Faults `percent` % of all requests (not already faulted by a rule),
    /// each with one of `faults` in turn of a pseudo-random sequence fixed
    /// by `seed`.
    pub fn fault_random(&self, percent: f64, faults: &[Fault], seed: u64) {
        self.inner.state().random = Some(Random {
            percent,
            faults: faults.to_vec(),
            state: seed.max(1),
        });
    }

    /// How many requests of `kind` arrived (faulted or not).
    pub fn count(&self, kind: RequestKind) -> usize {
        self.inner.state().counts.get(&kind).copied().unwrap_or(0)
    }

    /// Requests per kind.
    pub fn counts(&self) -> BTreeMap<RequestKind, usize> {
        self.inner.state().counts.clone()
    }

    /// Every fault injected, in order.
    pub fn injected(&self) -> Vec<(RequestKind, Fault)> {
        self.inner.state().injected.clone()
    }

    /// Problems the proxy met (upstream unreachable, bad requests).
    pub fn errors(&self) -> Vec<String> {
        self.inner.state().errors.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
    }
}

/// The path of a URL (`https://host/path` → `/path`).
fn url_path(url: &str) -> Option<String> {
    url.split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
}

fn classify(req: &Request, paths: &HashMap<String, RequestKind>) -> RequestKind {
    let path = req.target.split('?').next().unwrap_or_default();
    if let Some(kind) = paths.get(path) {
        return *kind;
    }
    if req.method == "GET" && path == "/dir" {
        return RequestKind::Directory;
    }
    if req.method != "POST" {
        return RequestKind::Other;
    }
    let prefixes = [
        ("/authZ/", RequestKind::Authorization),
        ("/chalZ/", RequestKind::Challenge),
        ("/finalize-order/", RequestKind::Finalize),
        ("/my-order/", RequestKind::OrderPoll),
        ("/certZ/", RequestKind::Certificate),
    ];
    prefixes
        .iter()
        .find(|(p, _)| path.starts_with(p))
        .map_or(RequestKind::Other, |(_, k)| *k)
}

/// Counts the request and picks its fault, if any.
fn pick(req: &Request, inner: &Inner) -> (RequestKind, Option<Fault>) {
    let mut st = inner.state();
    let kind = classify(req, &st.paths);
    let n = {
        let c = st.counts.entry(kind).or_insert(0);
        *c += 1;
        *c
    };
    let mut fault = st
        .rules
        .iter()
        .find(|r| r.kind == kind && r.nth.is_none_or(|nth| nth == n))
        .map(|r| r.fault);
    if fault.is_none()
        && let Some(random) = st.random.as_mut()
        && !random.faults.is_empty()
    {
        let roll = (random.next() % 10_000) as f64 / 100.0;
        if roll < random.percent {
            let i = (random.next() % random.faults.len() as u64) as usize;
            fault = random.faults.get(i).copied();
        }
    }
    if let Some(f) = fault {
        st.injected.push((kind, f));
    }
    (kind, fault)
}

fn serve(tcp: TcpStream, inner: &Inner) -> io::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = tcp.set_nodelay(true);
    let conn =
        rustls::ServerConnection::new(Arc::clone(&inner.server_tls)).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let Some(req) = read_request(&mut tls)? else {
        return Ok(());
    };
    let (kind, fault) = pick(&req, inner);
    let forward = || forward_to(&req, inner.upstream, &inner.upstream_tls, inner.addr);
    match fault {
        None => {
            let rsp = forward()?;
            if kind == RequestKind::Directory && rsp.status == 200 {
                learn_paths(&rsp.body, inner);
            }
            write_response(&mut tls, &rsp)
        }
        Some(Fault::Status500) => {
            let _ = forward()?;
            write_response(
                &mut tls,
                &problem(500, "Internal Server Error", "serverInternal", &[]),
            )
        }
        Some(Fault::Status503 { retry_after_secs }) => write_response(
            &mut tls,
            &problem(
                503,
                "Service Unavailable",
                "serverInternal",
                &[("Retry-After", retry_after_secs.to_string())],
            ),
        ),
        Some(Fault::Reset) => {
            let _ = forward()?;
            reset(&tls.sock);
            Ok(())
        }
        Some(Fault::RateLimited {
            retry_after_secs,
            detail,
        }) => {
            let mut rsp = problem(
                429,
                "Too Many Requests",
                "rateLimited",
                &[("Retry-After", retry_after_secs.to_string())],
            );
            rsp.body = serde_json::json!({
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": detail,
                "status": 429,
            })
            .to_string()
            .into_bytes();
            write_response(&mut tls, &rsp)
        }
        Some(Fault::Delay(d)) => {
            std::thread::sleep(d);
            write_response(&mut tls, &forward()?)
        }
        Some(Fault::ValidatedBeforeAnswer(d)) => {
            let mut rsp = forward()?;
            std::thread::sleep(d);
            let mut challenge = serde_json::from_slice::<serde_json::Value>(&rsp.body).ok();
            match challenge.as_mut().and_then(|c| c.as_object_mut()) {
                Some(c) if rsp.status == 200 => {
                    c.insert("status".into(), "invalid".into());
                    c.insert(
                        "error".into(),
                        serde_json::json!({
                            "type": "urn:ietf:params:acme:error:unauthorized",
                            "detail": "the validation failed before the CA answered (answer rewritten by the test proxy)",
                            "status": 403,
                        }),
                    );
                    rsp.body = serde_json::Value::Object(c.clone())
                        .to_string()
                        .into_bytes();
                }
                // Nothing to rewrite: the test would not show what it is for.
                _ => inner.state().errors.push(format!(
                    "ValidatedBeforeAnswer: the CA answered HTTP {}, not a challenge",
                    rsp.status
                )),
            }
            write_response(&mut tls, &rsp)
        }
        Some(Fault::Stall(d)) => {
            let until = Instant::now() + d;
            while Instant::now() < until && !inner.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            reset(&tls.sock);
            Ok(())
        }
    }
}

/// Notes the directory's newNonce, newAccount and newOrder paths.
fn learn_paths(body: &[u8], inner: &Inner) {
    let Ok(dir) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let mut st = inner.state();
    for (key, kind) in [
        ("newNonce", RequestKind::NewNonce),
        ("newAccount", RequestKind::NewAccount),
        ("newOrder", RequestKind::NewOrder),
    ] {
        if let Some(path) = dir.get(key).and_then(|v| v.as_str()).and_then(url_path) {
            st.paths.insert(path, kind);
        }
    }
}

/// Closes `sock` with a TCP reset (SO_LINGER 0), not a FIN.
fn reset(sock: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a pointer to a live `linger`
    // of the size passed.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

fn problem(status: u16, reason: &str, problem_type: &str, extra: &[(&str, String)]) -> Response {
    let mut headers = vec![(
        "Content-Type".to_owned(),
        "application/problem+json".to_owned(),
    )];
    headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    Response {
        status,
        reason: reason.to_owned(),
        headers,
        body: serde_json::json!({
            "type": format!("urn:ietf:params:acme:error:{problem_type}"),
            "detail": format!("fault injected by the test proxy (HTTP {status})"),
            "status": status,
        })
        .to_string()
        .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    #[test]
    fn kinds_from_pebble_paths() {
        let mut paths = HashMap::new();
        paths.insert("/nonce-plz".to_owned(), RequestKind::NewNonce);
        paths.insert("/order-plz".to_owned(), RequestKind::NewOrder);
        let k = |m: &str, t: &str| classify(&req(m, t), &paths);
        assert_eq!(k("GET", "/dir"), RequestKind::Directory);
        assert_eq!(k("HEAD", "/nonce-plz"), RequestKind::NewNonce);
        assert_eq!(k("POST", "/order-plz"), RequestKind::NewOrder);
        assert_eq!(k("POST", "/authZ/abc"), RequestKind::Authorization);
        assert_eq!(k("POST", "/chalZ/abc"), RequestKind::Challenge);
        assert_eq!(k("POST", "/finalize-order/abc"), RequestKind::Finalize);
        assert_eq!(k("POST", "/my-order/abc"), RequestKind::OrderPoll);
        assert_eq!(k("POST", "/certZ/abc"), RequestKind::Certificate);
        assert_eq!(k("POST", "/my-account/1"), RequestKind::Other);
        assert_eq!(
            url_path("https://127.0.0.1:1/nonce-plz").as_deref(),
            Some("/nonce-plz")
        );
    }

    #[test]
    fn random_sequence_is_fixed_by_its_seed() {
        let mut a = Random {
            percent: 5.0,
            faults: vec![Fault::Status500],
            state: 42,
        };
        let mut b = Random {
            percent: 5.0,
            faults: vec![Fault::Status500],
            state: 42,
        };
        let xs: Vec<u64> = (0..5).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
    }
}
