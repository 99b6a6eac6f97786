//! What the stand-ins for the catalogue's cloud DNS APIs (DigitalOcean,
//! Hetzner, Google Cloud DNS, Azure DNS) share: an HTTP/1.1 server on
//! 127.0.0.1 with a request log and injected failures, and a record store
//! whose TXT values are mirrored into pebble-challtestsrv, so that
//! Pebble's VA sees exactly what "the provider" serves (the approach of
//! the Cloudflare stand-in).
//!
//! Each provider's module (`digitalocean`, `hetzner`, `gcloud`, `azure`)
//! routes requests in that provider's documented shapes onto the shared
//! [`DnsState`] and starts a [`StandIn`]. These services cannot run here;
//! every other server in the tests is real.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::conn_server::ConnServer;
use crate::{ChallTestSrv, HarnessError, http};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a stand-in.
#[derive(Clone, Debug)]
pub struct CloudOpts {
    /// The zones it hosts, e.g. `do.test`.
    pub zones: Vec<String>,
    /// Private zones (Google Cloud DNS) of the same names as public ones.
    pub private_zones: Vec<String>,
    /// The most items per page it serves, whatever the client asks (set 1
    /// to exercise pagination).
    pub max_per_page: usize,
    mirror: Option<SocketAddr>,
}

impl Default for CloudOpts {
    fn default() -> Self {
        CloudOpts {
            zones: Vec::new(),
            private_zones: Vec::new(),
            max_per_page: 100,
            mirror: None,
        }
    }
}

impl CloudOpts {
    /// Host these zones.
    pub fn zones(mut self, names: &[&str]) -> Self {
        self.zones = names.iter().map(|n| normalize(n)).collect();
        self
    }

    /// Also host a private zone of this name.
    pub fn private_zone(mut self, name: &str) -> Self {
        self.private_zones.push(normalize(name));
        self
    }

    /// Serve at most `n` items per page.
    pub fn max_per_page(mut self, n: usize) -> Self {
        self.max_per_page = n.max(1);
        self
    }

    /// Mirror TXT values into this challtestsrv, for Pebble's VA.
    pub fn mirror_to(mut self, cts: &ChallTestSrv) -> Self {
        self.mirror = cts
            .mgmt_url()
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok());
        self
    }
}

/// A request as the router sees it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, percent-encoded as sent.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The decoded path segments.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect()
    }

    /// The body as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as a form.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_query(&String::from_utf8_lossy(&self.body))
    }
}

/// An answer to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Self {
        Answer {
            status,
            body: body.to_string(),
            headers: vec![("Content-Type".into(), "application/json".into())],
        }
    }

    /// An answer without a body.
    pub fn empty(status: u16) -> Self {
        Answer {
            status,
            body: String::new(),
            headers: Vec::new(),
        }
    }

    /// With one more header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct Logged {
    /// When it arrived.
    pub at: Instant,
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The raw query.
    pub query: String,
    /// The status answered.
    pub status: u16,
    /// Whether an injected answer was served instead of the real one.
    pub injected: bool,
}

impl Logged {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// A zone a stand-in hosts.
#[derive(Clone, Debug)]
pub struct Zone {
    /// Its id in the provider's API.
    pub id: String,
    /// Its name, lower case, no trailing dot.
    pub name: String,
    /// Whether it is a private zone (Google Cloud DNS).
    pub private: bool,
}

/// A TXT record a stand-in holds (one value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its id in the provider's API.
    pub id: String,
    /// The zone's name.
    pub zone: String,
    /// The fully qualified name, lower case, no trailing dot.
    pub fqdn: String,
    /// The value DNS serves.
    pub value: String,
    /// Seconds.
    pub ttl: u64,
    /// Whether the test added it as someone else's.
    pub foreign: bool,
}

/// The records and zones of one stand-in.
#[derive(Debug)]
pub struct DnsState {
    /// The zones.
    pub zones: Vec<Zone>,
    /// The TXT records, in creation order.
    pub records: Vec<Record>,
    /// The page size cap.
    pub max_per_page: usize,
    /// The credential it accepts (a token, a client secret...).
    pub secret: String,
    /// Errors from mirroring into challtestsrv.
    pub mirror_errors: Vec<String>,
    /// Counter for the etag/serial of record sets.
    pub serial: u64,
    /// Access tokens issued by the stand-in's token endpoint.
    pub tokens: Vec<String>,
    mirror: Option<SocketAddr>,
}

impl DnsState {
    /// The zone (public first) with the longest name containing `fqdn`.
    pub fn zone_of(&self, fqdn: &str) -> Option<Zone> {
        let fqdn = normalize(fqdn);
        self.zones
            .iter()
            .filter(|z| fqdn == z.name || fqdn.ends_with(&format!(".{}", z.name)))
            .max_by_key(|z| (z.name.len(), !z.private))
            .cloned()
    }

    /// The values at `fqdn`, in creation order.
    pub fn values(&self, fqdn: &str) -> Vec<String> {
        let fqdn = normalize(fqdn);
        self.records
            .iter()
            .filter(|r| r.fqdn == fqdn)
            .map(|r| r.value.clone())
            .collect()
    }

    /// Adds a record and mirrors the name; returns the record.
    pub fn add(&mut self, zone: &str, fqdn: &str, value: &str, ttl: u64, foreign: bool) -> Record {
        let r = Record {
            id: hex_id(),
            zone: zone.to_owned(),
            fqdn: normalize(fqdn),
            value: value.to_owned(),
            ttl,
            foreign,
        };
        self.records.push(r.clone());
        self.serial += 1;
        self.sync(&r.fqdn);
        r
    }

    /// Removes the record with `id`; `None` if there is none.
    pub fn remove(&mut self, id: &str) -> Option<Record> {
        let pos = self.records.iter().position(|r| r.id == id)?;
        let r = self.records.remove(pos);
        self.serial += 1;
        self.sync(&r.fqdn);
        Some(r)
    }

    /// Makes `values` the whole set at `fqdn` (records holding a kept
    /// value keep their id and origin).
    pub fn set_values(&mut self, zone: &str, fqdn: &str, values: &[String], ttl: u64) {
        let fqdn = normalize(fqdn);
        let mut kept: Vec<Record> = Vec::new();
        for v in values {
            match self
                .records
                .iter()
                .find(|r| r.fqdn == fqdn && &r.value == v && !kept.iter().any(|k| k.id == r.id))
            {
                Some(r) => kept.push(Record { ttl, ..r.clone() }),
                None => kept.push(Record {
                    id: hex_id(),
                    zone: zone.to_owned(),
                    fqdn: fqdn.clone(),
                    value: v.clone(),
                    ttl,
                    foreign: false,
                }),
            }
        }
        self.records.retain(|r| r.fqdn != fqdn);
        self.records.extend(kept);
        self.serial += 1;
        self.sync(&fqdn);
    }

    /// Sets challtestsrv's values at `fqdn` to exactly ours (it can only
    /// clear a whole name, so: clear, then add back).
    fn sync(&mut self, fqdn: &str) {
        let Some(mgmt) = self.mirror else {
            return;
        };
        let values = self.values(fqdn);
        let host = format!("{fqdn}.");
        let result =
            mirror_post(mgmt, "/clear-txt", serde_json::json!({ "host": host })).and_then(|()| {
                values.iter().try_for_each(|v| {
                    mirror_post(
                        mgmt,
                        "/set-txt",
                        serde_json::json!({ "host": host, "value": v }),
                    )
                })
            });
        if let Err(e) = result {
            self.mirror_errors.push(e.to_string());
        }
    }
}

fn mirror_post(mgmt: SocketAddr, path: &str, body: Value) -> Result<(), HarnessError> {
    let bytes = body.to_string().into_bytes();
    let err = |message: String| HarnessError::Http {
        method: "POST",
        url: format!("http://{mgmt}{path}"),
        message: format!("{message} (mirroring a cloud DNS stand-in)"),
        log_path: std::path::PathBuf::from("(pebble-challtestsrv's log)"),
    };
    let resp = http::request(mgmt, None, "POST", path, Some(&bytes), MIRROR_TIMEOUT)
        .map_err(|e| err(e.to_string()))?;
    if resp.status != 200 {
        return Err(err(format!("status {}: {}", resp.status, resp.text())));
    }
    Ok(())
}

/// The router of one provider: the state, the request, the answer.
pub(crate) type Router = dyn Fn(&mut DnsState, &Request) -> Answer + Send + Sync;

struct Inner {
    state: Mutex<DnsState>,
    log: Mutex<Vec<Logged>>,
    injected: Mutex<VecDeque<(Option<String>, String, Answer)>>,
}

/// A running stand-in. Stopped on drop.
pub struct StandIn {
    provider: &'static str,
    inner: Arc<Inner>,
    addr: SocketAddr,
    _server: ConnServer,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("provider", &self.provider)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Starts `router` for `provider` on a free port of 127.0.0.1.
    pub(crate) fn start(
        provider: &'static str,
        opts: &CloudOpts,
        router: Box<Router>,
    ) -> Result<Self, HarnessError> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: format!("binding the {provider} stand-in to 127.0.0.1"),
                source,
            })?;
        let mut zones: Vec<Zone> = opts
            .zones
            .iter()
            .map(|n| Zone {
                id: hex_id(),
                name: n.clone(),
                private: false,
            })
            .collect();
        zones.extend(opts.private_zones.iter().map(|n| Zone {
            id: hex_id(),
            name: n.clone(),
            private: true,
        }));
        let inner = Arc::new(Inner {
            state: Mutex::new(DnsState {
                zones,
                records: Vec::new(),
                max_per_page: opts.max_per_page.max(1),
                secret: random_token(40),
                mirror_errors: Vec::new(),
                serial: 1,
                tokens: Vec::new(),
                mirror: opts.mirror,
            }),
            log: Mutex::new(Vec::new()),
            injected: Mutex::new(VecDeque::new()),
        });
        let conn_inner = Arc::clone(&inner);
        let server = ConnServer::spawn(listener, provider, move |stream| {
            let _ = serve(stream, &conn_inner, &*router);
        })?;
        Ok(StandIn {
            provider,
            inner,
            addr: server.addr(),
            _server: server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The credential it accepts.
    pub fn secret(&self) -> String {
        self.state().secret.clone()
    }

    /// The state, to inspect or change.
    pub fn state(&self) -> MutexGuard<'_, DnsState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Serve `answer` instead of the real one to the next request whose
    /// path contains `path_part`.
    pub fn inject(&self, path_part: &str, answer: Answer) {
        self.inner
            .injected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((None, path_part.to_owned(), answer));
    }

    /// Like [`inject`](Self::inject), for the next `method` request only.
    pub fn inject_on(&self, method: &str, path_part: &str, answer: Answer) {
        self.inner
            .injected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((Some(method.to_owned()), path_part.to_owned(), answer));
    }

    /// The TXT values at `fqdn`.
    pub fn txt_values(&self, fqdn: &str) -> Vec<String> {
        self.state().values(fqdn)
    }

    /// Adds someone else's TXT value at `fqdn`.
    ///
    /// # Panics
    /// If no zone contains `fqdn`: a mistake in the test.
    pub fn add_foreign_txt(&self, fqdn: &str, value: &str) {
        let mut st = self.state();
        let Some(zone) = st.zone_of(fqdn) else {
            panic!(
                "add_foreign_txt: no zone of the {} stand-in contains {fqdn}",
                self.provider
            );
        };
        st.add(&zone.name, fqdn, value, 3600, true);
    }

    /// Errors from mirroring into challtestsrv.
    pub fn mirror_errors(&self) -> Vec<String> {
        self.state().mirror_errors.clone()
    }
}

fn read_request(stream: &TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        let blank = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        if blank && head.len() > n {
            break;
        }
        if blank {
            head.clear();
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        if name == "content-length" {
            content_length = value.parse().unwrap_or(0);
        }
        headers.push((name, value));
    }
    if content_length > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        body,
    }))
}

fn serve(stream: TcpStream, inner: &Inner, router: &Router) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let at = Instant::now();
    let injected = {
        let mut q = inner
            .injected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pos = q.iter().position(|(method, part, _)| {
            req.path.contains(part.as_str()) && method.as_ref().is_none_or(|m| *m == req.method)
        });
        pos.and_then(|p| q.remove(p)).map(|(_, _, a)| a)
    };
    let was_injected = injected.is_some();
    let answer = match injected {
        Some(a) => a,
        None => {
            let mut st = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            router(&mut st, &req)
        }
    };
    inner
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Logged {
            at,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            status: answer.status,
            injected: was_injected,
        });
    let mut stream = stream;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        reason(answer.status),
        answer.body.len()
    );
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(answer.body.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Lower case, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `a=1&b=x%20y` → pairs, `+` as space.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// 32 lowercase hex digits.
pub fn hex_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// `n` characters of `[A-Za-z0-9]`.
pub fn random_token(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALPHABET[(random_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `items[(page-1)*per_page ..][..per_page]` and the number of pages.
pub fn page_of<T: Clone>(items: &[T], page: usize, per_page: usize) -> (Vec<T>, usize) {
    let per_page = per_page.max(1);
    let pages = items.len().div_ceil(per_page).max(1);
    let slice = items
        .iter()
        .skip(page.saturating_sub(1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    (slice, pages)
}
