//! The HTTP transport under the ACME client.
//!
//! Why this module exists: instant-acme's default client leaves Nagle's
//! algorithm on, which costs about 40 ms per request on a keep-alive
//! connection (delayed ACK meets a small second write); an order takes ten
//! requests or so. [`AcmeClient`] hands instant-acme a `reqwest` client
//! instead ([`HttpShim`]), with `TCP_NODELAY`, one keep-alive pool shared by
//! every order, `User-Agent: certsmith/<version>`
//! ([RFC 8555 §6.1](https://www.rfc-editor.org/rfc/rfc8555#section-6.1)) and
//! an optional extra CA bundle (`--ca-cert`, for private CAs and Pebble).
//!
//! The robustness measures that sit on top of instant-acme live here too:
//!
//! * A request that gets no answer within [`ATTEMPT_TIMEOUT`] (or cannot
//!   connect) is sent again on a fresh connection, [`ATTEMPTS`] times in all.
//! * `badNonce` ([RFC 8555 §6.5](https://www.rfc-editor.org/rfc/rfc8555#section-6.5)):
//!   instant-acme retries a rejected nonce three times; a busy CA (or Pebble
//!   with `PEBBLE_WFE_NONCEREJECT`) can reject more, so every operation is
//!   retried a few more times when the final error is still `badNonce`
//!   (`retry_bad_nonce!`). A request refused for its nonce was not
//!   processed, so this is safe.
//! * `Retry-After` ([RFC 8555 §6.6](https://www.rfc-editor.org/rfc/rfc8555#section-6.6)):
//!   polling honours it (instant-acme's `RetryPolicy`), and the value sent
//!   with a rate-limit response is kept for the error message.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body::Body as _;
use instant_acme as ia;
use serde::Deserialize;

use super::{AcmeClient, USER_AGENT};
use crate::error::{CaProblem, IssueError, error_chain};

/// How many more times an operation is retried after instant-acme's own
/// three attempts all met `badNonce`.
pub(super) const NONCE_RETRIES: u32 = 8;

/// How long one attempt of one request may take.
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// How many attempts a request gets when it times out or cannot connect.
const ATTEMPTS: u32 = 3;

/// Retries an instant-acme operation while its error is `badNonce`, at most
/// [`NONCE_RETRIES`] more times.
macro_rules! retry_bad_nonce {
    ($op:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $op {
                Err(e)
                    if $crate::acme::transport::is_bad_nonce(&e)
                        && attempt < $crate::acme::transport::NONCE_RETRIES =>
                {
                    attempt += 1;
                    log::debug!("bad nonce, retrying (attempt {attempt})");
                }
                other => break other,
            }
        }
    }};
}
pub(super) use retry_bad_nonce;

/// Whether instant-acme's error is the CA's `badNonce`.
pub(super) fn is_bad_nonce(e: &ia::Error) -> bool {
    matches!(e, ia::Error::Api(p) if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce"))
}

/// The `reqwest` client of an [`AcmeClient`]: system roots plus the
/// certificates in `ca_cert` (PEM).
pub(super) fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, IssueError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(15))
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_cert {
        let ca_err = |reason: String| IssueError::CaCert {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_err(format!("not a PEM certificate bundle ({e})")))?;
        if certs.is_empty() {
            return Err(ca_err("it contains no PEM certificate".to_owned()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| match ca_cert {
        Some(path) => IssueError::CaCert {
            path: path.display().to_string(),
            reason: error_chain(&e),
        },
        None => IssueError::Internal(format!("cannot set up HTTPS: {}", error_chain(&e))),
    })
}

/// Shared between the client handed to instant-acme and ours.
#[derive(Default)]
pub(super) struct Shared {
    /// Bodies of GET responses fetched already (the directory), so that
    /// instant-acme does not fetch them again.
    cache: Mutex<HashMap<String, Bytes>>,
    /// The last `Retry-After` seen on a 429/503 response.
    retry_after: Mutex<Option<SystemTime>>,
}

impl Shared {
    /// The body of a GET of `url` fetched already.
    pub(super) fn cached(&self, url: &str) -> Option<Bytes> {
        self.cache.lock().ok()?.get(url).cloned()
    }

    /// Keeps the body of a GET of `url` for the next GET.
    pub(super) fn cache(&self, url: &str, body: Bytes) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(url.to_owned(), body);
        }
    }

    /// The last `Retry-After` of a 429/503, once.
    pub(super) fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after.lock().ok()?.take()
    }
}

/// The HTTP client handed to instant-acme: our `reqwest` pool.
pub(super) struct HttpShim {
    http: reqwest::Client,
    shared: Arc<Shared>,
    /// [`ATTEMPT_TIMEOUT`], shorter in tests.
    attempt_timeout: Duration,
}

impl AcmeClient {
    /// The [`HttpShim`] over this client's pool, for instant-acme.
    pub(super) fn shim(&self) -> Box<dyn ia::HttpClient> {
        Box::new(HttpShim {
            http: self.http.clone(),
            shared: self.shared.clone(),
            attempt_timeout: ATTEMPT_TIMEOUT,
        })
    }

    /// A fresh nonce from `newNonce` (`new_nonce` is its URL)
    /// ([RFC 8555 §7.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.2)).
    pub(super) async fn fresh_nonce(&self, new_nonce: &str) -> Result<String, IssueError> {
        let action = "get a nonce";
        let rsp = self
            .http
            .head(new_nonce)
            .send()
            .await
            .map_err(|e| IssueError::network(action, new_nonce, e))?;
        nonce_of(rsp.headers()).ok_or_else(|| {
            IssueError::bad_answer(action, new_nonce, "the answer has no Replay-Nonce header")
        })
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<ia::BytesResponse, ia::Error>> + Send>>;

impl ia::HttpClient for HttpShim {
    fn request(&self, req: http::Request<ia::BodyWrapper<Bytes>>) -> ResponseFuture {
        let http = self.http.clone();
        let shared = self.shared.clone();
        let attempt_timeout = self.attempt_timeout;
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let url = parts.uri.to_string();
            if parts.method == http::Method::GET
                && let Some(cached) = shared.cached(&url)
            {
                log::debug!("GET {url} (cached)");
                return Ok(bytes_response(
                    http::StatusCode::OK,
                    http::HeaderMap::new(),
                    cached,
                ));
            }
            let mut data = Vec::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                if let Ok(chunk) = frame.map(|f| f.into_data())
                    && let Ok(chunk) = chunk
                {
                    data.extend_from_slice(&chunk);
                }
            }
            let mut headers = parts.headers;
            // instant-acme sets its own; ours is the client default.
            headers.remove(http::header::USER_AGENT);
            let started = std::time::Instant::now();
            let data = Bytes::from(data);
            // A request that gets no answer is sent again on a fresh
            // connection rather than left to hang the order: seen with a
            // loaded local CA, where one pooled connection stopped answering.
            // Resending the same JWS is safe: if the CA did process it, the
            // nonce is spent and the CA answers badNonce, which instant-acme
            // handles by signing anew.
            let mut attempt = 0;
            let (status, headers, body) = loop {
                attempt += 1;
                let sent = async {
                    let rsp = http
                        .request(parts.method.clone(), &url)
                        .headers(headers.clone())
                        .body(data.clone())
                        .timeout(attempt_timeout)
                        .send()
                        .await?;
                    let status = rsp.status();
                    let headers = rsp.headers().clone();
                    let body = rsp.bytes().await?;
                    Ok::<_, reqwest::Error>((status, headers, body))
                }
                .await;
                match sent {
                    Ok(r) => break r,
                    Err(e) if (e.is_timeout() || e.is_connect()) && attempt < ATTEMPTS => {
                        log::warn!(
                            "{} {url}: {} (attempt {attempt} of {ATTEMPTS}); retrying",
                            parts.method,
                            error_chain(&e)
                        );
                    }
                    Err(e) => return Err(ia::Error::Other(Box::new(e))),
                }
            };
            log::debug!(
                "{} {url} -> {status} in {:.1} ms",
                parts.method,
                started.elapsed().as_secs_f64() * 1000.0
            );
            if (status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::SERVICE_UNAVAILABLE)
                && let Some(at) = retry_after_of(&headers)
                && let Ok(mut slot) = shared.retry_after.lock()
            {
                *slot = Some(at);
            }
            Ok(bytes_response(status, headers, body))
        })
    }
}

fn bytes_response(
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
) -> ia::BytesResponse {
    let mut rsp = http::Response::new(());
    *rsp.status_mut() = status;
    *rsp.headers_mut() = headers;
    let (parts, ()) = rsp.into_parts();
    ia::BytesResponse {
        parts,
        body: Box::new(body),
    }
}

/// The `Retry-After` of an answer, if it has a valid one.
pub(super) fn retry_after_of(headers: &http::HeaderMap) -> Option<SystemTime> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date
/// ([RFC 9110 §10.2.3](https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3)).
fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    let dt =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    Some(SystemTime::from(dt))
}

/// The `Replay-Nonce` of an answer
/// ([RFC 8555 §6.5.1](https://www.rfc-editor.org/rfc/rfc8555#section-6.5.1)).
pub(super) fn nonce_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The error for a non-2xx answer to a request of ours (not instant-acme's)
/// to `url`, with (usually) a problem document
/// ([RFC 8555 §6.7](https://www.rfc-editor.org/rfc/rfc8555#section-6.7)).
pub(super) fn problem_error(
    action: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<SystemTime>,
    url: &str,
) -> IssueError {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default, rename = "type")]
        problem_type: Option<String>,
        #[serde(default)]
        detail: Option<String>,
    }
    match serde_json::from_slice::<Doc>(body) {
        Ok(doc) => {
            let problem = CaProblem {
                problem_type: doc.problem_type,
                detail: doc.detail,
                status: Some(status),
                subproblems: Vec::new(),
            };
            if problem.is("rateLimited") || status == 429 {
                IssueError::RateLimited {
                    action: action.to_owned(),
                    problem,
                    retry_after,
                }
            } else if status >= 500 {
                IssueError::bad_answer(action, url, problem.to_string())
            } else {
                IssueError::CaRefused {
                    action: action.to_owned(),
                    problem,
                }
            }
        }
        Err(_) => IssueError::bad_answer(
            action,
            url,
            format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let t = parse_retry_after("120").expect("seconds");
        assert!(t > SystemTime::now() + Duration::from_secs(100));
        let t = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch")
                .as_secs(),
            1_445_412_480
        );
        assert!(parse_retry_after("soon").is_none());
    }

    /// A connection that never answers is abandoned after the attempt
    /// timeout and the request is sent again on a new one.
    #[tokio::test]
    async fn a_request_that_gets_no_answer_is_retried_on_a_new_connection() {
        use ia::HttpClient as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            // The first connection reads the request and stays silent.
            let (mut silent, _) = listener.accept().await.expect("accept 1");
            let mut buf = [0u8; 4096];
            let _ = silent.read(&mut buf).await;
            // The second one answers.
            let (mut s, _) = listener.accept().await.expect("accept 2");
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .expect("write");
            drop(silent);
        });
        let shim = HttpShim {
            http: reqwest::Client::builder().build().expect("client"),
            shared: Arc::new(Shared::default()),
            attempt_timeout: Duration::from_millis(300),
        };
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{addr}/acme/order"))
            .body(ia::BodyWrapper::from(b"{}".to_vec()))
            .expect("request");
        let rsp = shim
            .request(req)
            .await
            .expect("answered on the second attempt");
        assert_eq!(rsp.parts.status, http::StatusCode::OK);
        server.await.expect("server");
    }

    /// A connection failure keeps its cause as the error's source, and the
    /// message users see still names it.
    #[tokio::test]
    async fn a_nonce_request_that_cannot_connect_keeps_its_cause() {
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let client = AcmeClient::new("https://localhost:14000/dir", None).expect("client");
        let url = format!("http://127.0.0.1:{port}/nonce");
        let e = client.fresh_nonce(&url).await.expect_err("refused");
        assert_eq!(e.class(), crate::error::ErrorClass::Network);
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            source.downcast_ref::<reqwest::Error>().is_some(),
            "{source:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot get a nonce at {url}: ")),
            "{text}"
        );
        assert!(text.contains(&source.to_string()), "{text}");
    }
}
