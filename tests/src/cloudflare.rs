//! A stand-in for the Cloudflare API v4, for the `cloudflare` solver.
//!
//! Cloudflare is the one server in the tests that cannot run here, so this
//! module plays it, following the published API shapes closely enough that
//! the plugin cannot tell:
//!
//! - every answer is the envelope
//!   `{"success", "errors": [{"code", "message", "error_chain"?}], "messages", "result", "result_info"?}`;
//! - `Authorization: Bearer <token>` is checked on every call: missing →
//!   400 code 9106, not `Bearer <token>` → 400 code 6003 with 6111 in its
//!   `error_chain`, another token → 403 code 9109 "Invalid access token";
//!   the read-only token may read but writing gets 403 code 10000
//!   "Authentication error" (a token without Zone:DNS:Edit);
//! - `GET /zones?name=&status=&page=&per_page=` (default 20 per page, at
//!   most 50, and at most [`CloudflareOpts::max_per_page`] so that tests
//!   exercise pagination) with `result_info {page, per_page, count,
//!   total_count, total_pages}`;
//! - `GET|POST /zones/{id}/dns_records` (filters `type`, `name`, `content`
//!   and their `.exact` forms, exact and case-insensitive for names;
//!   default 100 per page), `GET|DELETE /zones/{id}/dns_records/{id}`,
//!   with 32-hex ids; creating a record identical to one that exists →
//!   400 code 81058 "An identical record already exists."; an unknown
//!   record → 404 code 81044 "Record does not exist."; an unknown zone →
//!   404 codes 7003/7000; a name outside the zone gets the zone appended,
//!   as Cloudflare does;
//! - `GET /user/tokens/verify`.
//!
//! Tests steer it with [`CloudflareStandIn::inject`] (the next requests
//! fail with a 429 + `Retry-After`, a 5xx, an HTML 502 from "the edge", or
//! a dropped connection), read [`CloudflareStandIn::requests`] (every
//! request, with its arrival time and status) and
//! [`CloudflareStandIn::records`], and add records of someone else with
//! [`CloudflareStandIn::add_foreign_txt`].
//!
//! With [`CloudflareOpts::mirror_to`], every TXT record created or deleted
//! is also set in (or removed from) a pebble-challtestsrv, so Pebble's VA
//! sees exactly the TXT values "Cloudflare" serves. challtestsrv can only
//! clear all values at a name, so a delete clears the name and adds back
//! the values that remain there.
//!
//! It is a plain HTTP/1.1 server on 127.0.0.1 (std threads, one request per
//! connection, `Connection: close`), stopped when dropped.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::conn_server::ConnServer;
use crate::{ChallTestSrv, HarnessError, http};

/// The path prefix of the API, as on `api.cloudflare.com`.
pub const API_PREFIX: &str = "/client/v4";
/// The largest page of `/zones` Cloudflare serves.
const ZONES_MAX_PER_PAGE: usize = 50;
/// The largest page of `/dns_records` served here.
const RECORDS_MAX_PER_PAGE: usize = 5000;
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// A zone the stand-in hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneSpec {
    /// The zone name, e.g. `cf.test`.
    pub name: String,
    /// `active`, `pending`, `initializing`, `moved`...
    pub status: String,
    /// The account name it belongs to (zones of one name may exist in
    /// several accounts, e.g. a pending copy of an active zone).
    pub account: String,
}

impl ZoneSpec {
    /// An active zone in the default account.
    pub fn active(name: &str) -> Self {
        ZoneSpec {
            name: name.to_ascii_lowercase(),
            status: "active".into(),
            account: "certsmith test account".into(),
        }
    }

    /// A pending zone (added but not yet delegated) in account `account`.
    pub fn pending(name: &str, account: &str) -> Self {
        ZoneSpec {
            name: name.to_ascii_lowercase(),
            status: "pending".into(),
            account: account.into(),
        }
    }
}

/// How to start a [`CloudflareStandIn`].
#[derive(Clone, Debug)]
pub struct CloudflareOpts {
    /// The zones it hosts (default: one active zone, `cf.test`).
    pub zones: Vec<ZoneSpec>,
    /// The most results per page it serves, whatever `per_page` asks
    /// (default 50; set 1 or 2 to exercise pagination).
    pub max_per_page: usize,
    /// The API token it accepts (default: a random 40-character token).
    pub token: Option<String>,
    mirror: Option<SocketAddr>,
}

impl Default for CloudflareOpts {
    fn default() -> Self {
        CloudflareOpts {
            zones: vec![ZoneSpec::active("cf.test")],
            max_per_page: ZONES_MAX_PER_PAGE,
            token: None,
            mirror: None,
        }
    }
}

impl CloudflareOpts {
    /// Host exactly these zones (all active).
    pub fn zones(mut self, names: &[&str]) -> Self {
        self.zones = names.iter().map(|n| ZoneSpec::active(n)).collect();
        self
    }

    /// Host one more zone.
    pub fn zone(mut self, zone: ZoneSpec) -> Self {
        self.zones.push(zone);
        self
    }

    /// Serve at most `n` results per page.
    pub fn max_per_page(mut self, n: usize) -> Self {
        self.max_per_page = n.max(1);
        self
    }

    /// Accept this token instead of a random one.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Mirror TXT records into this challtestsrv, for Pebble's VA.
    pub fn mirror_to(mut self, cts: &ChallTestSrv) -> Self {
        self.mirror = cts
            .mgmt_url()
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok());
        self
    }
}

/// A failure to serve instead of the next request's real answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 429 with `Retry-After: <secs>` and Cloudflare's rate-limit envelope
    /// (code 971, "Please wait and consider throttling your request speed").
    RateLimited {
        /// The `Retry-After` value, seconds.
        retry_after_secs: u64,
    },
    /// A 5xx with an error envelope (code 10002, "An unknown error has
    /// occurred").
    ServerError {
        /// The status, e.g. 500 or 503.
        status: u16,
    },
    /// 502 with an HTML body, as Cloudflare's edge answers when the API
    /// behind it is down.
    BadGatewayHtml,
    /// Close the connection without answering.
    Hangup,
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// When it arrived (its head was read).
    pub at: Instant,
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path without the `/client/v4` prefix, e.g. `/zones`.
    pub path: String,
    /// The raw query string, `""` if none.
    pub query: String,
    /// The status answered (0 for a dropped connection).
    pub status: u16,
    /// Whether the request carried the valid (or read-only) token.
    pub authorized: bool,
    /// The injected failure served instead of the real answer, if any.
    pub injected: Option<Failure>,
    /// The request body (JSON for POST), as text.
    pub body: String,
}

impl LoggedRequest {
    /// The decoded value of query parameter `key`, if present.
    pub fn query_param(&self, key: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// A DNS record held by the stand-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRecord {
    /// 32 hex digits.
    pub id: String,
    /// The zone's id.
    pub zone_id: String,
    /// The zone's name.
    pub zone_name: String,
    /// The fully qualified name, lower case, no trailing dot.
    pub name: String,
    /// `TXT`, `A`...
    pub record_type: String,
    /// The content as sent (TXT content may be quoted).
    pub content: String,
    /// Seconds; 1 means automatic.
    pub ttl: u64,
    /// The record's comment.
    pub comment: Option<String>,
    /// Whether it was added by [`CloudflareStandIn::add_foreign_txt`].
    pub foreign: bool,
    created_on: String,
}

impl DnsRecord {
    /// TXT content without one pair of surrounding quotes: the value DNS
    /// serves.
    pub fn txt_value(&self) -> &str {
        unquote(&self.content)
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "zone_id": self.zone_id,
            "zone_name": self.zone_name,
            "name": self.name,
            "type": self.record_type,
            "content": self.content,
            "proxiable": false,
            "proxied": false,
            "ttl": self.ttl,
            "settings": {},
            "meta": {},
            "comment": self.comment,
            "tags": [],
            "created_on": self.created_on,
            "modified_on": self.created_on,
        })
    }
}

#[derive(Clone, Debug)]
struct Zone {
    id: String,
    spec: ZoneSpec,
    account_id: String,
    created_on: String,
}

impl Zone {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.spec.name,
            "status": self.spec.status,
            "paused": false,
            "type": "full",
            "development_mode": 0,
            "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
            "original_name_servers": null,
            "original_registrar": null,
            "original_dnshost": null,
            "created_on": self.created_on,
            "modified_on": self.created_on,
            "activated_on": if self.spec.status == "active" { json!(self.created_on) } else { Value::Null },
            "meta": {"step": 2, "custom_certificate_quota": 0, "page_rule_quota": 3, "phishing_detected": false},
            "owner": {"id": null, "type": "user", "email": null},
            "account": {"id": self.account_id, "name": self.spec.account},
            "tenant": {"id": null, "name": null},
            "tenant_unit": {"id": null},
            "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
            "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0,
                     "currency": "USD", "frequency": "", "is_subscribed": false,
                     "can_subscribe": false, "legacy_id": "free", "legacy_discount": false,
                     "externally_managed": false},
        })
    }
}

#[derive(Debug, Default)]
struct State {
    zones: Vec<Zone>,
    records: Vec<DnsRecord>,
    failures: VecDeque<Failure>,
    log: Vec<LoggedRequest>,
    mirror_errors: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    token: String,
    read_only_token: String,
    max_per_page: usize,
    mirror: Option<SocketAddr>,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running stand-in. Stopped on drop.
#[derive(Debug)]
pub struct CloudflareStandIn {
    inner: Arc<Inner>,
    addr: SocketAddr,
    _server: ConnServer,
}

impl CloudflareStandIn {
    /// Starts it on a free port of 127.0.0.1.
    pub fn start(opts: CloudflareOpts) -> Result<Self, HarnessError> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: "binding the Cloudflare stand-in to 127.0.0.1".into(),
                source,
            })?;
        let now = timestamp(SystemTime::now());
        let zones = opts
            .zones
            .iter()
            .map(|spec| Zone {
                id: hex_id(),
                spec: spec.clone(),
                account_id: hex_id(),
                created_on: now.clone(),
            })
            .collect();
        let inner = Arc::new(Inner {
            token: opts.token.clone().unwrap_or_else(random_token),
            read_only_token: random_token(),
            max_per_page: opts.max_per_page.max(1),
            mirror: opts.mirror,
            state: Mutex::new(State {
                zones,
                ..State::default()
            }),
        });
        let conn_inner = Arc::clone(&inner);
        let server = ConnServer::spawn(listener, "cloudflare-standin", move |stream| {
            let _ = serve_connection(stream, &conn_inner);
        })?;
        Ok(CloudflareStandIn {
            inner,
            addr: server.addr(),
            _server: server,
        })
    }

    /// The base URL, `http://127.0.0.1:<port>/client/v4` (the solver's
    /// `api_base`).
    pub fn api_base(&self) -> String {
        format!("http://{}{API_PREFIX}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token with Zone:Read and Zone:DNS:Edit on every zone.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// A token that may read zones and records but not change them (writes
    /// get 403 code 10000).
    pub fn read_only_token(&self) -> &str {
        &self.inner.read_only_token
    }

    /// The id of the zone named `name` (the first, if several).
    pub fn zone_id(&self, name: &str) -> Option<String> {
        let name = normalize(name);
        self.inner
            .state()
            .zones
            .iter()
            .find(|z| z.spec.name == name)
            .map(|z| z.id.clone())
    }

    /// Every record, in creation order.
    pub fn records(&self) -> Vec<DnsRecord> {
        self.inner.state().records.clone()
    }

    /// The TXT values (unquoted) at `fqdn`, in creation order.
    pub fn txt_values(&self, fqdn: &str) -> Vec<String> {
        let fqdn = normalize(fqdn);
        self.inner
            .state()
            .records
            .iter()
            .filter(|r| r.record_type == "TXT" && r.name == fqdn)
            .map(|r| r.txt_value().to_owned())
            .collect()
    }

    /// Serve `failure` instead of the real answer to the next request that
    /// has none queued before it (failures are served in order, one per
    /// request).
    pub fn inject(&self, failure: Failure) {
        self.inner.state().failures.push_back(failure);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.inner.state().log.clone()
    }

    /// Errors from mirroring into challtestsrv (empty when all went well).
    pub fn mirror_errors(&self) -> Vec<String> {
        self.inner.state().mirror_errors.clone()
    }

    /// Adds a TXT record at `fqdn` as someone else would (in the zone with
    /// the longest name that contains it), mirrored like the others.
    /// Returns its id.
    ///
    /// # Panics
    /// If no zone contains `fqdn`: a mistake in the test.
    pub fn add_foreign_txt(&self, fqdn: &str, value: &str) -> Result<String, HarnessError> {
        let fqdn = normalize(fqdn);
        let mut st = self.inner.state();
        let zone = st
            .zones
            .iter()
            .filter(|z| in_zone(&fqdn, &z.spec.name))
            .max_by_key(|z| z.spec.name.len())
            .cloned();
        let Some(zone) = zone else {
            panic!("add_foreign_txt: no zone of the Cloudflare stand-in contains {fqdn}");
        };
        let record = DnsRecord {
            id: hex_id(),
            zone_id: zone.id.clone(),
            zone_name: zone.spec.name.clone(),
            name: fqdn.clone(),
            record_type: "TXT".into(),
            content: format!("\"{value}\""),
            ttl: 3600,
            comment: Some("not certsmith's".into()),
            foreign: true,
            created_on: timestamp(SystemTime::now()),
        };
        let id = record.id.clone();
        st.records.push(record);
        if let Some(mgmt) = self.inner.mirror {
            mirror_set(mgmt, &fqdn, value)?;
        }
        Ok(id)
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            // Closed before a whole head: nothing to answer.
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
            // A stray empty line before the request line.
            head.clear();
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut content_length = 0usize;
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_owned());
        }
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
        authorization,
        body,
    }))
}

/// An answer to write.
struct Answer {
    status: u16,
    body: String,
    content_type: &'static str,
    retry_after: Option<u64>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Self {
        Answer {
            status,
            body: body.to_string(),
            content_type: "application/json",
            retry_after: None,
        }
    }

    fn ok(result: Value) -> Self {
        Self::json(
            200,
            json!({"result": result, "success": true, "errors": [], "messages": []}),
        )
    }

    fn error(status: u16, code: u32, message: &str) -> Self {
        Self::json(
            status,
            json!({"result": null, "success": false,
                   "errors": [{"code": code, "message": message}], "messages": []}),
        )
    }
}

fn serve_connection(stream: TcpStream, inner: &Inner) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let at = Instant::now();
    let api_path = req.path.strip_prefix(API_PREFIX).map(str::to_owned);
    let token = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    let authorized = token.is_some_and(|t| t == inner.token || t == inner.read_only_token);

    let mut st = inner.state();
    let injected = st.failures.pop_front();
    let answer = match &injected {
        Some(f) => failure_answer(f),
        None => Some(route(inner, &mut st, &req, api_path.as_deref(), token)),
    };
    st.log.push(LoggedRequest {
        at,
        method: req.method.clone(),
        path: api_path.unwrap_or_else(|| req.path.clone()),
        query: req.query.clone(),
        status: answer.as_ref().map_or(0, |a| a.status),
        authorized,
        injected,
        body: String::from_utf8_lossy(&req.body).into_owned(),
    });
    drop(st);

    let mut stream = stream;
    match answer {
        None => {
            let _ = stream.shutdown(Shutdown::Both);
            Ok(())
        }
        Some(a) => {
            let mut head = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCF-RAY: {}-TST\r\n",
                a.status,
                reason(a.status),
                a.content_type,
                a.body.len(),
                &hex_id()[..16],
            );
            if let Some(s) = a.retry_after {
                head.push_str(&format!("Retry-After: {s}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(a.body.as_bytes())?;
            stream.flush()?;
            let _ = stream.shutdown(Shutdown::Write);
            Ok(())
        }
    }
}

fn failure_answer(f: &Failure) -> Option<Answer> {
    match f {
        Failure::RateLimited { retry_after_secs } => {
            let mut a = Answer::error(
                429,
                971,
                "Please wait and consider throttling your request speed",
            );
            a.retry_after = Some(*retry_after_secs);
            Some(a)
        }
        Failure::ServerError { status } => {
            Some(Answer::error(*status, 10002, "An unknown error has occurred"))
        }
        Failure::BadGatewayHtml => Some(Answer {
            status: 502,
            body: "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n".into(),
            content_type: "text/html",
            retry_after: None,
        }),
        Failure::Hangup => None,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn no_route() -> Answer {
    Answer::error(404, 7000, "No route for that URI")
}

fn route(
    inner: &Inner,
    st: &mut State,
    req: &Request,
    api_path: Option<&str>,
    token: Option<&str>,
) -> Answer {
    let Some(path) = api_path else {
        return no_route();
    };
    // Authentication, as Cloudflare checks it before routing.
    match (&req.authorization, token) {
        (None, _) => {
            return Answer::error(
                400,
                9106,
                "Missing X-Auth-Key, X-Auth-Email or Authorization headers",
            );
        }
        (Some(_), None) | (Some(_), Some("")) => {
            return Answer::json(
                400,
                json!({"result": null, "success": false, "messages": [],
                       "errors": [{"code": 6003, "message": "Invalid request headers",
                                   "error_chain": [{"code": 6111, "message": "Invalid format for Authorization header"}]}]}),
            );
        }
        (Some(_), Some(t)) if t != inner.token && t != inner.read_only_token => {
            return Answer::error(403, 9109, "Invalid access token");
        }
        _ => {}
    }
    let may_write = token == Some(inner.token.as_str());
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let query = parse_query(&req.query);
    let param = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["user", "tokens", "verify"]) => Answer::json(
            200,
            json!({"result": {"id": hex_id(), "status": "active"}, "success": true, "errors": [],
                   "messages": [{"code": 10000, "message": "This API Token is valid and active", "type": null}]}),
        ),
        ("GET", ["zones"]) => {
            let name = param("name").map(|n| normalize(&n));
            let status = param("status");
            let zones: Vec<Value> = st
                .zones
                .iter()
                .filter(|z| name.as_ref().is_none_or(|n| &z.spec.name == n))
                .filter(|z| status.as_ref().is_none_or(|s| &z.spec.status == s))
                .map(Zone::to_json)
                .collect();
            paginate(
                zones,
                param("page"),
                param("per_page"),
                20,
                ZONES_MAX_PER_PAGE.min(inner.max_per_page),
            )
        }
        ("GET", ["zones", zone_id]) => match st.zones.iter().find(|z| z.id == *zone_id) {
            Some(z) => Answer::ok(z.to_json()),
            None => unknown_zone(path),
        },
        (method, ["zones", zone_id, "dns_records", rest @ ..]) => {
            let Some(zone) = st.zones.iter().find(|z| z.id == *zone_id).cloned() else {
                return unknown_zone(path);
            };
            match (method, rest) {
                ("GET", []) => {
                    let ty = param("type").or_else(|| param("type.exact"));
                    let name = param("name")
                        .or_else(|| param("name.exact"))
                        .map(|n| normalize(&n));
                    let content = param("content").or_else(|| param("content.exact"));
                    let records: Vec<Value> = st
                        .records
                        .iter()
                        .filter(|r| r.zone_id == zone.id)
                        .filter(|r| {
                            ty.as_ref()
                                .is_none_or(|t| r.record_type.eq_ignore_ascii_case(t))
                        })
                        .filter(|r| name.as_ref().is_none_or(|n| &r.name == n))
                        .filter(|r| content.as_ref().is_none_or(|c| &r.content == c))
                        .map(DnsRecord::to_json)
                        .collect();
                    paginate(
                        records,
                        param("page"),
                        param("per_page"),
                        100,
                        RECORDS_MAX_PER_PAGE.min(inner.max_per_page),
                    )
                }
                ("POST", []) => {
                    if !may_write {
                        return Answer::error(403, 10000, "Authentication error");
                    }
                    create_record(inner, st, &zone, &req.body)
                }
                ("GET", [record_id]) => match st
                    .records
                    .iter()
                    .find(|r| r.zone_id == zone.id && r.id == *record_id)
                {
                    Some(r) => Answer::ok(r.to_json()),
                    None => Answer::error(404, 81044, "Record does not exist."),
                },
                ("DELETE", [record_id]) => {
                    if !may_write {
                        return Answer::error(403, 10000, "Authentication error");
                    }
                    delete_record(inner, st, &zone, record_id)
                }
                _ => no_route(),
            }
        }
        _ => no_route(),
    }
}

fn unknown_zone(path: &str) -> Answer {
    Answer::json(
        404,
        json!({"result": null, "success": false, "messages": [],
               "errors": [{"code": 7003, "message": format!("Could not route to {path}, perhaps your object identifier is invalid?")},
                          {"code": 7000, "message": "No route for that URI"}]}),
    )
}

fn paginate(
    items: Vec<Value>,
    page: Option<String>,
    per_page: Option<String>,
    default_per_page: usize,
    max_per_page: usize,
) -> Answer {
    let per_page = per_page
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(default_per_page)
        .clamp(1, max_per_page.max(1));
    let page = page
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let total = items.len();
    let total_pages = total.div_ceil(per_page);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Answer::json(
        200,
        json!({
            "result": slice,
            "result_info": {"page": page, "per_page": per_page, "count": slice.len(),
                            "total_count": total, "total_pages": total_pages},
            "success": true, "errors": [], "messages": [],
        }),
    )
}

fn create_record(inner: &Inner, st: &mut State, zone: &Zone, body: &[u8]) -> Answer {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Answer::error(400, 9207, "Request body is invalid.");
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(record_type) = field("type").map(|t| t.to_ascii_uppercase()) else {
        return Answer::error(400, 9101, "DNS record type is invalid or missing.");
    };
    let Some(name) = field("name").filter(|n| !n.trim().is_empty()) else {
        return Answer::error(400, 9007, "DNS record name is missing.");
    };
    let Some(content) = field("content").filter(|c| !c.is_empty()) else {
        return Answer::error(400, 9005, "Content for the record is missing.");
    };
    let ttl = match v.get("ttl") {
        None | Some(Value::Null) => 1,
        Some(t) => match t.as_u64() {
            Some(t) if t == 1 || (60..=86400).contains(&t) => t,
            _ => {
                return Answer::error(
                    400,
                    9021,
                    "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for automatic.",
                );
            }
        },
    };
    // Cloudflare treats a name outside the zone as relative to it.
    let name = match normalize(&name) {
        n if n == "@" => zone.spec.name.clone(),
        n if in_zone(&n, &zone.spec.name) => n,
        n => format!("{n}.{}", zone.spec.name),
    };
    let same_content = |a: &str, b: &str| {
        if record_type == "TXT" {
            unquote(a) == unquote(b)
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    if st.records.iter().any(|r| {
        r.zone_id == zone.id
            && r.record_type == record_type
            && r.name == name
            && same_content(&r.content, &content)
    }) {
        return Answer::error(400, 81058, "An identical record already exists.");
    }
    let record = DnsRecord {
        id: hex_id(),
        zone_id: zone.id.clone(),
        zone_name: zone.spec.name.clone(),
        name: name.clone(),
        record_type: record_type.clone(),
        content: content.clone(),
        ttl,
        comment: field("comment"),
        foreign: false,
        created_on: timestamp(SystemTime::now()),
    };
    let json = record.to_json();
    st.records.push(record);
    if record_type == "TXT"
        && let Some(mgmt) = inner.mirror
        && let Err(e) = mirror_set(mgmt, &name, unquote(&content))
    {
        st.mirror_errors.push(e.to_string());
    }
    Answer::ok(json)
}

fn delete_record(inner: &Inner, st: &mut State, zone: &Zone, record_id: &str) -> Answer {
    let Some(pos) = st
        .records
        .iter()
        .position(|r| r.zone_id == zone.id && r.id == record_id)
    else {
        return Answer::error(404, 81044, "Record does not exist.");
    };
    let gone = st.records.remove(pos);
    if gone.record_type == "TXT"
        && let Some(mgmt) = inner.mirror
    {
        // challtestsrv clears all values at a name: clear, then add back
        // the ones that remain.
        let remaining: Vec<String> = st
            .records
            .iter()
            .filter(|r| r.record_type == "TXT" && r.name == gone.name)
            .map(|r| r.txt_value().to_owned())
            .collect();
        let result = mirror_clear(mgmt, &gone.name).and_then(|()| {
            remaining
                .iter()
                .try_for_each(|v| mirror_set(mgmt, &gone.name, v))
        });
        if let Err(e) = result {
            st.mirror_errors.push(e.to_string());
        }
    }
    Answer::ok(json!({ "id": gone.id }))
}

fn mirror_post(mgmt: SocketAddr, path: &str, body: Value) -> Result<(), HarnessError> {
    let bytes = body.to_string().into_bytes();
    let err = |message: String| HarnessError::Http {
        method: "POST",
        url: format!("http://{mgmt}{path}"),
        message: format!("{message} (request body {body}; mirroring the Cloudflare stand-in)"),
        log_path: std::path::PathBuf::from("(pebble-challtestsrv's log)"),
    };
    let resp = http::request(mgmt, None, "POST", path, Some(&bytes), MIRROR_TIMEOUT)
        .map_err(|e| err(e.to_string()))?;
    if resp.status != 200 {
        return Err(err(format!("status {}: {}", resp.status, resp.text())));
    }
    Ok(())
}

fn mirror_set(mgmt: SocketAddr, name: &str, value: &str) -> Result<(), HarnessError> {
    mirror_post(
        mgmt,
        "/set-txt",
        json!({"host": format!("{}.", normalize(name)), "value": value}),
    )
}

fn mirror_clear(mgmt: SocketAddr, name: &str) -> Result<(), HarnessError> {
    mirror_post(
        mgmt,
        "/clear-txt",
        json!({"host": format!("{}.", normalize(name))}),
    )
}

/// Lower case, no trailing dot.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is `zone` or below it.
fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// TXT content without one pair of surrounding quotes.
fn unquote(content: &str) -> &str {
    content
        .strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or(content)
}

/// `a=1&b=x%20y` → `[("a","1"), ("b","x y")]`, `+` as space.
fn parse_query(q: &str) -> Vec<(String, String)> {
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

/// A Cloudflare-style id: 32 lowercase hex digits.
fn hex_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// A Cloudflare-style API token: 40 characters of `[A-Za-z0-9_-]`.
fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..40)
        .map(|_| ALPHABET[(random_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// RFC 3339 in UTC with microseconds, as Cloudflare writes timestamps.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("name=_acme-challenge.cf.test&content=%22v%22&x=a+b&e"),
            [
                ("name".to_owned(), "_acme-challenge.cf.test".to_owned()),
                ("content".to_owned(), "\"v\"".to_owned()),
                ("x".to_owned(), "a b".to_owned()),
                ("e".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn ids_tokens_and_timestamps_look_right() {
        let id = hex_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(hex_id(), hex_id());
        assert_eq!(random_token().len(), 40);
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123000Z"
        );
    }
}
