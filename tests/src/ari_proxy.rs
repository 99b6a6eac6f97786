//! A stand-in for ACME Renewal Information (ARI,
//! [RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)) in front of Pebble.
//!
//! Why this exists: Pebble 2.4.0 (Debian's) has no ARI. This HTTPS proxy
//! forwards every ACME request to a [`Pebble`] and adds what ARI needs:
//!
//! * `GET /dir`: Pebble's directory plus `"renewalInfo"` pointing here;
//! * `GET /renewal-info/<cert-id>`: the window set with
//!   [`AriProxy::set_window`], with `explanationURL` and `Retry-After`
//!   (404 while no window is set); every certificate identifier asked for
//!   is recorded ([`AriProxy::renewal_info_requests`]);
//! * `POST` to Pebble's `newOrder`: the JWS payload is read (not verified)
//!   to record its `replaces` field ([`AriProxy::new_orders`]), and the
//!   CA's answer is given the same `replaces`, as RFC 9773 §5 requires of
//!   a server that accepts it.
//!
//! * ACME profiles (draft-ietf-acme-profiles), which Pebble 2.4.0 ignores:
//!   after [`AriProxy::set_profiles`], the directory's `meta.profiles`
//!   lists them, the `profile` of every new order is recorded
//!   ([`AriProxy::new_order_profiles`]) and reflected in the CA's answer,
//!   and an order for a profile not listed is refused with `invalidProfile`
//!   (as Let's Encrypt's Boulder does).
//!
//! The `Host` header is forwarded unchanged, so Pebble builds every URL it
//! hands out (and checks every JWS `url`) with the proxy's address: the
//! client only ever talks to the proxy. One request per connection
//! (`Connection: close`), which keeps the proxy small.
//!
//! The proxy has its own TLS CA; [`AriProxy::ca_bundle_path`] is a PEM file
//! with it and Pebble's, for `--ca-cert`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::conn_server::ConnServer;
use crate::tls::TestCa;
use crate::{HarnessError, Pebble};

pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// The path of the renewal information resource.
pub const RENEWAL_INFO_PATH: &str = "/renewal-info";

/// A suggested renewal window, as the proxy will answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    window: Option<Window>,
    explanation_url: Option<String>,
    retry_after_secs: u64,
    renewal_info_requests: Vec<String>,
    new_orders: Vec<Option<String>>,
    new_order_profiles: Vec<Option<String>>,
    profiles: Option<serde_json::Map<String, serde_json::Value>>,
    new_order_path: Option<String>,
    errors: Vec<String>,
    /// Seconds added to the `Date` of the directory's answer.
    date_offset_secs: Option<i64>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    upstream: SocketAddr,
    upstream_tls: Arc<rustls::ClientConfig>,
    server_tls: Arc<rustls::ServerConfig>,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running proxy. Stopped on drop.
#[derive(Debug)]
pub struct AriProxy {
    inner: Arc<Inner>,
    _server: ConnServer,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
}

impl AriProxy {
    /// Starts a proxy in front of `pebble` on a free port of 127.0.0.1,
    /// with no window yet, `Retry-After: 0` and an explanation URL of
    /// `https://ari.example/why`.
    pub fn start(pebble: &Pebble) -> Result<AriProxy, HarnessError> {
        let tls = ProxyTls::new(pebble, "certsmith-ari-proxy-")?;
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: "binding the ARI proxy to 127.0.0.1".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| HarnessError::Io {
            context: "reading the ARI proxy's address".into(),
            source,
        })?;
        let inner = Arc::new(Inner {
            addr,
            upstream: tls.upstream,
            upstream_tls: tls.upstream_tls,
            server_tls: tls.server_tls,
            state: Mutex::new(State {
                explanation_url: Some("https://ari.example/why".into()),
                ..State::default()
            }),
        });
        let conn_inner = Arc::clone(&inner);
        let server = ConnServer::spawn(listener, "ari-proxy", move |stream| {
            if let Err(e) = serve(stream, &conn_inner) {
                conn_inner.state().errors.push(e.to_string());
            }
        })?;
        Ok(AriProxy {
            inner,
            _server: server,
            bundle: tls.bundle,
            _dir: tls.dir,
        })
    }

    /// The directory URL to give certsmith: `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.inner.addr)
    }

    /// A PEM file trusting the proxy's and Pebble's HTTPS CAs.
    pub fn ca_bundle_path(&self) -> &Path {
        &self.bundle
    }

    /// The window answered from now on, for every certificate.
    pub fn set_window(&self, start: SystemTime, end: SystemTime) {
        self.inner.state().window = Some(Window { start, end });
    }

    /// A window from `start_from_now` to `end_from_now` seconds from now
    /// (negative: in the past).
    pub fn set_window_relative(&self, start_from_now: i64, end_from_now: i64) {
        let at = |secs: i64| {
            let now = SystemTime::now();
            if secs >= 0 {
                now + Duration::from_secs(secs.unsigned_abs())
            } else {
                now - Duration::from_secs(secs.unsigned_abs())
            }
        };
        self.set_window(at(start_from_now), at(end_from_now));
    }

    /// The `explanationURL` answered (`None`: left out).
    pub fn set_explanation_url(&self, url: Option<&str>) {
        self.inner.state().explanation_url = url.map(str::to_owned);
    }

    /// The `Retry-After` answered with renewal information, in seconds.
    pub fn set_retry_after(&self, secs: u64) {
        self.inner.state().retry_after_secs = secs;
    }

    /// Every certificate identifier whose renewal information was asked
    /// for, in order.
    pub fn renewal_info_requests(&self) -> Vec<String> {
        self.inner.state().renewal_info_requests.clone()
    }

    /// Every order the CA created through the proxy, in order, with the
    /// `replaces` field of its request (requests refused, e.g. for a bad
    /// nonce, are not counted).
    pub fn new_orders(&self) -> Vec<Option<String>> {
        self.inner.state().new_orders.clone()
    }

    /// Advertises `profiles` (name, description) in the directory's
    /// `meta.profiles` from now on.
    pub fn set_profiles(&self, profiles: &[(&str, &str)]) {
        let map = profiles
            .iter()
            .map(|(n, d)| ((*n).to_owned(), serde_json::Value::from(*d)))
            .collect();
        self.inner.state().profiles = Some(map);
    }

    /// The `profile` field of every new-order request that reached the
    /// proxy (also those it refused), in order.
    pub fn new_order_profiles(&self) -> Vec<Option<String>> {
        self.inner.state().new_order_profiles.clone()
    }

    /// Answers the directory with a `Date` header this many seconds off
    /// the real time (a CA whose clock, or this machine's, is wrong).
    pub fn set_date_offset(&self, secs: i64) {
        self.inner.state().date_offset_secs = Some(secs);
    }

    /// Problems the proxy met (upstream unreachable, bad requests).
    pub fn errors(&self) -> Vec<String> {
        self.inner.state().errors.clone()
    }
}

/// The TLS of a proxy in front of Pebble: a client configuration that
/// trusts Pebble, a server one with a certificate of a fresh test CA, and
/// a PEM bundle trusting both (for `--ca-cert`).
#[derive(Debug)]
pub(crate) struct ProxyTls {
    /// Pebble's ACME address.
    pub(crate) upstream: SocketAddr,
    pub(crate) upstream_tls: Arc<rustls::ClientConfig>,
    pub(crate) server_tls: Arc<rustls::ServerConfig>,
    /// The PEM bundle.
    pub(crate) bundle: PathBuf,
    /// Where the bundle is; removed on drop.
    pub(crate) dir: tempfile::TempDir,
}

impl ProxyTls {
    pub(crate) fn new(pebble: &Pebble, prefix: &str) -> Result<ProxyTls, HarnessError> {
        let upstream: SocketAddr = pebble
            .directory_url()
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .parse()
            .map_err(|e| HarnessError::Tls(format!("Pebble's address: {e}")))?;
        let ca = TestCa::generate()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in pem_certs(pebble.ca_cert_pem()) {
            roots
                .add(rustls::pki_types::CertificateDer::from(der))
                .map_err(|e| HarnessError::Tls(e.to_string()))?;
        }
        let upstream_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| HarnessError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> = pem_certs(&ca.leaf_cert_pem)
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        let key = pem_blocks(&ca.leaf_key_pem, "PRIVATE KEY")
            .into_iter()
            .next()
            .ok_or_else(|| HarnessError::Tls("no key in the generated PEM".into()))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
        let server_tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HarnessError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| HarnessError::Tls(e.to_string()))?;

        let dir = crate::temp_dir(prefix)?;
        let bundle = dir.path().join("ca-bundle.pem");
        std::fs::write(
            &bundle,
            format!("{}{}", pebble.ca_cert_pem(), ca.ca_cert_pem),
        )
        .map_err(|source| HarnessError::Io {
            context: format!("writing {}", bundle.display()),
            source,
        })?;

        Ok(ProxyTls {
            upstream,
            upstream_tls: Arc::new(upstream_tls),
            server_tls: Arc::new(server_tls),
            bundle,
            dir,
        })
    }
}

/// A request as read from the client.
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// A response to send back.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
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
    let rsp = handle(req, inner)?;
    write_response(&mut tls, &rsp)
}

/// Writes `rsp` and closes the connection (TLS close_notify, then FIN).
pub(crate) fn write_response(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    rsp: &Response,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", rsp.status, rsp.reason);
    for (k, v) in &rsp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        rsp.body.len()
    ));
    tls.write_all(head.as_bytes())?;
    tls.write_all(&rsp.body)?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Write);
    Ok(())
}

pub(crate) fn read_request(stream: &mut impl Read) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = match reader.read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && head.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(None);
        }
        let blank = line == b"\r\n" || line == b"\n";
        if blank && !head.is_empty() {
            break;
        }
        if !blank {
            head.extend_from_slice(&line);
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.lines();
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    if content_length > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn handle(req: Request, inner: &Inner) -> io::Result<Response> {
    let path = req.target.split('?').next().unwrap_or_default().to_owned();
    if req.method == "GET"
        && let Some(id) = path
            .strip_prefix(RENEWAL_INFO_PATH)
            .and_then(|r| r.strip_prefix('/'))
    {
        return Ok(renewal_info(id, inner));
    }
    let is_new_order = req.method == "POST"
        && inner
            .state()
            .new_order_path
            .as_deref()
            .is_some_and(|p| p == path);
    let replaces = if is_new_order {
        jws_payload(&req.body).and_then(|p| {
            p.get("replaces")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
    } else {
        None
    };
    let profile = if is_new_order {
        jws_payload(&req.body)
            .and_then(|p| p.get("profile").and_then(|v| v.as_str()).map(str::to_owned))
    } else {
        None
    };
    if is_new_order {
        let mut st = inner.state();
        st.new_order_profiles.push(profile.clone());
        let known = st.profiles.as_ref();
        if let Some(p) = &profile
            && !known.is_some_and(|k| k.contains_key(p))
        {
            return Ok(Response {
                status: 400,
                reason: "Bad Request".into(),
                headers: vec![("Content-Type".into(), "application/problem+json".into())],
                body: serde_json::json!({
                    "type": "urn:ietf:params:acme:error:invalidProfile",
                    "detail": format!("profile {p:?} is not offered"),
                    "status": 400,
                })
                .to_string()
                .into_bytes(),
            });
        }
    }
    let mut rsp = forward(&req, inner)?;
    if let Some(p) = &profile
        && (200..300).contains(&rsp.status)
        && let Ok(mut order) = serde_json::from_slice::<serde_json::Value>(&rsp.body)
    {
        order["profile"] = serde_json::Value::from(p.clone());
        rsp.body = serde_json::to_vec(&order).map_err(io::Error::other)?;
    }
    if is_new_order && (200..300).contains(&rsp.status) {
        // Only orders the CA created: one refused for its nonce is retried.
        inner.state().new_orders.push(replaces.clone());
    }
    if req.method == "GET"
        && path == "/dir"
        && rsp.status == 200
        && let Ok(mut dir) = serde_json::from_slice::<serde_json::Value>(&rsp.body)
    {
        if let Some(new_order) = dir.get("newOrder").and_then(|v| v.as_str()) {
            let p = new_order
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()));
            inner.state().new_order_path = p;
        }
        dir["renewalInfo"] =
            serde_json::Value::from(format!("https://{}{RENEWAL_INFO_PATH}", inner.addr));
        let (profiles, offset) = {
            let st = inner.state();
            (st.profiles.clone(), st.date_offset_secs)
        };
        if let Some(profiles) = profiles {
            dir["meta"]["profiles"] = serde_json::Value::Object(profiles);
        }
        if let Some(secs) = offset {
            let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
            let date = at
                .format(&time::format_description::well_known::Rfc2822)
                .map_err(io::Error::other)?;
            rsp.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("date"));
            rsp.headers.push(("Date".into(), date));
        }
        rsp.body = serde_json::to_vec(&dir).map_err(io::Error::other)?;
    }
    if let Some(r) = &replaces
        && (200..300).contains(&rsp.status)
        && let Ok(mut order) = serde_json::from_slice::<serde_json::Value>(&rsp.body)
    {
        order["replaces"] = serde_json::Value::from(r.clone());
        rsp.body = serde_json::to_vec(&order).map_err(io::Error::other)?;
    }
    Ok(rsp)
}

fn renewal_info(id: &str, inner: &Inner) -> Response {
    let mut st = inner.state();
    st.renewal_info_requests.push(id.to_owned());
    let Some(w) = st.window.clone() else {
        return Response {
            status: 404,
            reason: "Not Found".into(),
            headers: vec![("Content-Type".into(), "application/problem+json".into())],
            body: br#"{"type":"urn:ietf:params:acme:error:malformed","detail":"no window set in the test proxy"}"#.to_vec(),
        };
    };
    let mut doc = serde_json::json!({
        "suggestedWindow": {"start": rfc3339(w.start), "end": rfc3339(w.end)},
    });
    if let Some(u) = &st.explanation_url {
        doc["explanationURL"] = serde_json::Value::from(u.clone());
    }
    Response {
        status: 200,
        reason: "OK".into(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Retry-After".into(), st.retry_after_secs.to_string()),
        ],
        body: doc.to_string().into_bytes(),
    }
}

/// Sends `req` to Pebble (HTTP/1.0, so the answer is never chunked) with
/// the client's `Host`, and reads the whole answer.
fn forward(req: &Request, inner: &Inner) -> io::Result<Response> {
    forward_to(req, inner.upstream, &inner.upstream_tls, inner.addr)
}

/// Sends `req` to `upstream` over TLS (HTTP/1.0) with the client's `Host`
/// (`own` when it sent none), and reads the whole answer.
pub(crate) fn forward_to(
    req: &Request,
    upstream: SocketAddr,
    upstream_tls: &Arc<rustls::ClientConfig>,
    own: SocketAddr,
) -> io::Result<Response> {
    let tcp = TcpStream::connect_timeout(&upstream, IO_TIMEOUT)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(upstream.ip().into());
    let conn =
        rustls::ClientConnection::new(Arc::clone(upstream_tls), name).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!("{} {} HTTP/1.0\r\n", req.method, req.target);
    let host = header(&req.headers, "host").map_or_else(|| own.to_string(), str::to_owned);
    head.push_str(&format!("Host: {host}\r\n"));
    for (k, v) in &req.headers {
        let skip = [
            "host",
            "connection",
            "content-length",
            "transfer-encoding",
            "accept-encoding",
        ];
        if !skip.iter().any(|s| k.eq_ignore_ascii_case(s)) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    tls.write_all(head.as_bytes())?;
    tls.write_all(&req.body)?;
    tls.flush()?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad upstream answer: {what}"),
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let reason = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    let mut body = raw[split + 4..].to_vec();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            if let Ok(n) = v.parse::<usize>() {
                body.truncate(n);
            }
            continue;
        }
        if k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        headers.push((k.to_owned(), v.to_owned()));
    }
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

/// The decoded payload of a flattened JWS, if it is JSON.
pub(crate) fn jws_payload(body: &[u8]) -> Option<serde_json::Value> {
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = jws.get("payload")?.as_str()?;
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The base64 bodies of every PEM block labelled `label`, decoded.
fn pem_blocks(pem: &str, label: &str) -> Vec<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(i) = rest.find(&begin) {
        let after = &rest[i + begin.len()..];
        let Some(j) = after.find(&end) else { break };
        let b64: String = after[..j].chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(der) = base64url_decode(&b64) {
            out.push(der);
        }
        rest = &after[j + end.len()..];
    }
    out
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    pem_blocks(pem, "CERTIFICATE")
}

/// RFC 3339 in UTC, whole seconds: formatted by the `time` crate, not by
/// certsmith's own helper, so that a stand-in CA does not share a bug with
/// the client it tests.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn time_and_base64() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(base64url_decode("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(
            base64url_decode("AIdlQyE"),
            Some(vec![0, 0x87, 0x65, 0x43, 0x21])
        );
        let body = br#"{"protected":"x","payload":"eyJyZXBsYWNlcyI6ImEuYiJ9","signature":"y"}"#;
        assert_eq!(
            jws_payload(body).and_then(|p| p["replaces"].as_str().map(str::to_owned)),
            Some("a.b".to_owned())
        );
    }
}
