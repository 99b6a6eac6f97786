//! The HTTP client the host lends its plugins (ABI 1.3, [`HostApi::http`]).
//!
//! Why in the host: a provider plugin needs HTTPS and nothing else from the
//! network, and an HTTP client with TLS is most of its size. One client here
//! serves every plugin of the process: one connection pool (a second
//! challenge to the same API reuses the connection), one TLS stack and the
//! same trust roots as certsmith's own requests. The requests run on a small
//! runtime of their own, because they arrive on the plugins' threads, which
//! belong to no runtime of the host's.
//!
//! Nothing of a request's headers or body is logged: they carry the
//! provider's credentials. A failure names the method and the URL without
//! its query or user info.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::time::Duration;

use certsmith_plugin_api::abi::{Bytes, Completion, STATUS_ERROR, STATUS_OK};
use certsmith_plugin_api::wire::{
    ErrorBody, HttpRequestHead, HttpResponseHead, encode_http_response,
};

/// The exchange's limit when the plugin names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a plugin may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger answers are refused: no DNS provider's API sends this much, and a
/// plugin must not make the host hold an unbounded body.
const MAX_BODY: usize = 16 << 20;

/// What `User-Agent` says when the plugin sets none.
const USER_AGENT: &str = concat!("certsmith/", env!("CARGO_PKG_VERSION"));

/// The runtime and client, made on the first request.
fn shared() -> Result<&'static (tokio::runtime::Runtime, reqwest::Client), String> {
    static SHARED: OnceLock<Result<(tokio::runtime::Runtime, reqwest::Client), String>> =
        OnceLock::new();
    SHARED
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("certsmith-plugin-http")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the plugin HTTP runtime: {e}"))?;
            let client = reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(30))
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(|e| format!("cannot set up HTTPS for plugins: {e}"))?;
            Ok((rt, client))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Calls a plugin's completion exactly once: with the answer, or, if the
/// code that should have answered unwound, with an internal error.
struct Done(Option<Completion>);

// SAFETY: the ABI lets a completion be called from any thread; `ctx` is the
// plugin's opaque value, only handed back.
unsafe impl Send for Done {}

impl Done {
    fn finish(mut self, status: u32, body: &[u8]) {
        if let Some(c) = self.0.take() {
            // SAFETY: the plugin handed us this completion for exactly one
            // call; `take` makes it at most one and Drop at least one. The
            // body outlives the call, as the ABI requires.
            unsafe { (c.done)(c.ctx, status, Bytes::from_slice(body)) }
        }
    }

    fn fail(self, error: &ErrorBody) {
        let body = serde_json::to_vec(error).unwrap_or_default();
        self.finish(STATUS_ERROR, &body);
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.0.is_some() {
            let e = ErrorBody::internal("the host's HTTP request ended without an answer");
            let body = serde_json::to_vec(&e).unwrap_or_default();
            Done(self.0.take()).finish(STATUS_ERROR, &body);
        }
    }
}

/// [`HostApi::http`](certsmith_plugin_api::abi::HostApi::http).
pub(crate) unsafe extern "C" fn host_http(head: Bytes, body: Bytes, done: Completion) {
    let done = Done(Some(done));
    // SAFETY: the ABI lends both slices for the duration of this call; they
    // are copied before it returns.
    let (head, body) = unsafe { (head.as_slice().to_vec(), body.as_slice().to_vec()) };
    let result = catch_unwind(AssertUnwindSafe(move || {
        let request = match serde_json::from_slice::<HttpRequestHead>(&head) {
            Ok(h) => h,
            Err(e) => {
                return done.fail(&ErrorBody::internal(format!(
                    "the plugin's HTTP request head is not valid JSON: {e}"
                )));
            }
        };
        let (rt, client) = match shared() {
            Ok(s) => s,
            Err(why) => return done.fail(&ErrorBody::internal(why)),
        };
        let built = match build(client, &request, body) {
            Ok(b) => b,
            Err(e) => return done.fail(&e),
        };
        let what = request.label.clone().unwrap_or_else(|| describe(&request));
        let client = client.clone();
        rt.spawn(async move {
            match exchange(&client, built).await {
                Ok((head, body)) => done.finish(STATUS_OK, &encode_http_response(&head, &body)),
                Err(Failure::Transport(e)) => {
                    done.fail(&ErrorBody::from_transport(what.as_str(), &e));
                }
                Err(Failure::TooLarge) => done.fail(&ErrorBody::internal(format!(
                    "{what}: the answer is larger than {} MiB",
                    MAX_BODY >> 20
                ))),
            }
        });
    }));
    // A panic above dropped `done`, whose Drop already answered.
    let _ = result;
}

/// The request as reqwest's, or the `config` error naming what is wrong
/// (never a header's value: it may be a token).
fn build(
    client: &reqwest::Client,
    head: &HttpRequestHead,
    body: Vec<u8>,
) -> Result<reqwest::Request, ErrorBody> {
    let method = reqwest::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| ErrorBody::config(format!("{:?} is not an HTTP method", head.method)))?;
    let url = reqwest::Url::parse(&head.url)
        .map_err(|e| ErrorBody::config(format!("{:?} is not a URL ({e})", strip(&head.url))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ErrorBody::config(format!(
            "{:?} is not an http:// or https:// URL",
            strip(&head.url)
        )));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &head.headers {
        let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ErrorBody::config(format!("{name:?} is not an HTTP header name")))?;
        let mut v = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
            ErrorBody::config(format!(
                "the value of header {name} cannot be sent (a line break or a control character in it?)"
            ))
        })?;
        v.set_sensitive(true);
        headers.append(n, v);
    }
    let timeout = head
        .timeout_ms
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
        .min(MAX_TIMEOUT);
    client
        .request(method, url)
        .headers(headers)
        .timeout(timeout)
        .body(body)
        .build()
        .map_err(|e| ErrorBody::config(format!("{}: {e}", describe(head))))
}

enum Failure {
    Transport(reqwest::Error),
    TooLarge,
}

async fn exchange(
    client: &reqwest::Client,
    request: reqwest::Request,
) -> Result<(HttpResponseHead, Vec<u8>), Failure> {
    let mut resp = client.execute(request).await.map_err(Failure::Transport)?;
    let mut head = HttpResponseHead::new(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if let Ok(v) = value.to_str() {
            head.headers.push((name.as_str().to_owned(), v.to_owned()));
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Failure::Transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Failure::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((head, body))
}

/// `METHOD scheme://host/path`: no user info, no query (either may hold a
/// credential).
fn describe(head: &HttpRequestHead) -> String {
    format!("{} {}", head.method, strip(&head.url))
}

fn strip(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_drop_credentials_in_urls() {
        let mut h = HttpRequestHead::new("GET", "https://user:pw@api.example/x?key=s3cret#f");
        h.headers
            .push(("authorization".into(), "Bearer t0k".into()));
        let d = describe(&h);
        assert_eq!(d, "GET https://api.example/x");
        assert_eq!(strip("not a url?key=1"), "not a url");
    }

    #[test]
    fn bad_requests_are_refused_naming_the_part_not_the_secret() {
        let (_, client) = shared().expect("client");
        let mut h = HttpRequestHead::new("GET", "https://api.example/");
        h.headers
            .push(("authorization".into(), "Bearer a\nb-s3cret".into()));
        let e = build(client, &h, Vec::new()).expect_err("line break");
        assert!(e.message.contains("authorization"), "{}", e.message);
        assert!(!e.message.contains("s3cret"), "{}", e.message);
        let e = build(
            client,
            &HttpRequestHead::new("G T", "https://a/"),
            Vec::new(),
        )
        .expect_err("method");
        assert!(e.message.contains("not an HTTP method"), "{}", e.message);
        let e = build(
            client,
            &HttpRequestHead::new("GET", "ftp://a/?k=s3cret"),
            Vec::new(),
        )
        .expect_err("scheme");
        assert!(
            !e.message.contains("s3cret") && e.message.contains("ftp://a/"),
            "{}",
            e.message
        );
    }

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use certsmith_plugin_api::wire::{ErrorKind, decode_http_response};

    unsafe extern "C" fn to_channel(ctx: *mut std::ffi::c_void, status: u32, body: Bytes) {
        // SAFETY: ctx is the box `call` leaked; called once per request.
        let tx = unsafe { Box::from_raw(ctx.cast::<mpsc::Sender<(u32, Vec<u8>)>>()) };
        // SAFETY: lent for this call; copied.
        let _ = tx.send((status, unsafe { body.as_slice() }.to_vec()));
    }

    /// One request through the C entry point, as a plugin makes it.
    fn call(head: &HttpRequestHead, body: &[u8]) -> (u32, Vec<u8>) {
        let (tx, rx) = mpsc::channel();
        let head = serde_json::to_vec(head).expect("head");
        let ctx = Box::into_raw(Box::new(tx)).cast();
        // SAFETY: both slices outlive the call; ctx is reclaimed by to_channel.
        unsafe {
            host_http(
                Bytes::from_slice(&head),
                Bytes::from_slice(body),
                Completion {
                    ctx,
                    done: to_channel,
                },
            );
        }
        rx.recv_timeout(Duration::from_secs(20))
            .expect("one answer")
    }

    #[test]
    fn a_request_crosses_the_boundary_and_its_answer_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n{\"a\":1}") {
                let n = conn.read(&mut buf).expect("read");
                assert!(
                    n > 0,
                    "the request ended early: {}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
            )
            .expect("write");
            String::from_utf8_lossy(&got).into_owned()
        });
        let mut head = HttpRequestHead::new("POST", format!("http://{addr}/zones?page=2"));
        head.headers
            .push(("authorization".into(), "Bearer t0k".into()));
        head.headers
            .push(("content-type".into(), "application/json".into()));
        let (status, frame) = call(&head, br#"{"a":1}"#);
        assert_eq!(status, STATUS_OK, "{}", String::from_utf8_lossy(&frame));
        let (answer, body) = decode_http_response(&frame).expect("frame");
        assert_eq!(answer.status, 429);
        assert!(
            answer.headers.contains(&("retry-after".into(), "3".into())),
            "{answer:?}"
        );
        assert_eq!(body, b"slow");
        let request = server.join().expect("server").to_ascii_lowercase();
        assert!(
            request.starts_with("post /zones?page=2 http/1.1"),
            "{request}"
        );
        assert!(request.contains("authorization: bearer t0k"), "{request}");
        assert!(request.contains(&format!("user-agent: {}", USER_AGENT.to_ascii_lowercase())));
    }

    #[test]
    fn no_answer_is_a_transient_error_that_says_why() {
        // A port nobody listens on: bind, note it, close.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let head = HttpRequestHead::new("GET", format!("http://127.0.0.1:{port}/x?key=s3cret"));
        let (status, body) = call(&head, b"");
        assert_eq!(status, STATUS_ERROR);
        let e: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.message.contains("connection refused"), "{}", e.message);
        assert!(!e.message.contains("s3cret"), "{}", e.message);
        assert!(
            e.message
                .starts_with(&format!("GET http://127.0.0.1:{port}/x failed: ")),
            "{}",
            e.message
        );

        // The plugin's own name for the request, when it gives one.
        let mut head = head;
        head.label = Some("GET /x?page=2".into());
        let (_, body) = call(&head, b"");
        let e: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert!(
            e.message
                .starts_with("GET /x?page=2 failed: connection refused"),
            "{}",
            e.message
        );

        // A server that accepts and never answers: the plugin's timeout.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut head = HttpRequestHead::new(
            "GET",
            format!("http://{}/slow", listener.local_addr().expect("addr")),
        );
        head.timeout_ms = Some(300);
        let (status, body) = call(&head, b"");
        assert_eq!(status, STATUS_ERROR);
        let e: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.message.contains("timed out"), "{}", e.message);
        drop(listener);
    }
}
