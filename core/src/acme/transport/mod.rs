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
//! Every request to the CA, instant-acme's and certsmith's own, goes through
//! [`send`], which is where the retry policy of docs/design.md §7 lives:
//!
//! * Each request is classified ([`Kind`]) from its method, its URL (the
//!   directory's endpoints) and its JWS: a POST whose payload is empty is a
//!   POST-as-GET ([RFC 8555 §6.3](https://www.rfc-editor.org/rfc/rfc8555#section-6.3)).
//! * A request that reads (the directory, a nonce, POST-as-GET of an order,
//!   authorization, challenge or certificate, renewal information) is sent
//!   again on HTTP 5xx, 429, a reset connection or a timeout, after a
//!   jittered exponential backoff or the CA's `Retry-After` (at most
//!   [`RETRY_AFTER_CAP`] per wait), within a per-request budget
//!   ([`MAX_ATTEMPTS`], [`REQUEST_BUDGET`]) and the per-order budget of the
//!   order it belongs to ([`OrderScope`]).
//! * A request that changes state is sent again only when the CA cannot
//!   have acted on it: no connection, or HTTP 503/429 (the request was
//!   refused). Any other failure (a 500, a reset or timeout after the
//!   request was sent) may have taken effect; it comes back as an
//!   *unsettled* [`TransportError`] and the caller settles it by reading the
//!   resource again (`order.rs`). The exception is new-account, sent again
//!   as is: the CA answers a repeated account key with the existing account.
//! * `badNonce` ([RFC 8555 §6.5](https://www.rfc-editor.org/rfc/rfc8555#section-6.5)):
//!   instant-acme signs a rejected request again three times; a busy CA (or
//!   Pebble with `PEBBLE_WFE_NONCEREJECT`) can reject more, so every
//!   operation is retried a few more times when the final error is still
//!   `badNonce` (`retry_bad_nonce!`). A request refused for its nonce was
//!   not processed, so this is safe.
//! * A client-side cap on the request rate per CA ([`RequestRate`], a token
//!   bucket shared by every order of a client): Let's Encrypt's published
//!   per-endpoint limits for its directories, [`DEFAULT_REQUEST_RATE`] for
//!   other CAs, none for a CA on a loopback address.
//! * The nonce of an order's certificate download, which nothing would use,
//!   answers the next `HEAD newNonce` instead of the CA (`nonces.rs`).
//! * Counters of requests, retries, polls and reused nonces
//!   ([`TransportStats`]), and the process-wide count of the CA's responses
//!   by status ([`crate::metrics`]).

mod kind;
mod nonces;
mod rate;
mod scope;
#[cfg(test)]
mod tests;

use kind::*;
use nonces::SpareNonces;
pub use rate::*;
pub use scope::*;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::Body as _;
use instant_acme as ia;
use serde::Deserialize;

use super::{AcmeClient, USER_AGENT};
use crate::error::{CaProblem, IssueError, error_chain};

/// How many more times an operation is retried after instant-acme's own
/// three attempts all met `badNonce`.
pub(super) const NONCE_RETRIES: u32 = 8;

/// How long one attempt of one request may take, unless
/// [`ATTEMPT_TIMEOUT_ENV`] or [`AcmeClient::with_attempt_timeout`] says
/// otherwise.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// The environment variable that sets the attempt timeout in milliseconds
/// (a tuning knob, e.g. for a slow CA or a test of a stalled connection).
pub const ATTEMPT_TIMEOUT_ENV: &str = "CERTSMITH_ACME_ATTEMPT_TIMEOUT_MS";
/// How many times one request is sent at most.
pub const MAX_ATTEMPTS: u32 = 6;
/// How long one request may take with all its attempts and waits: no retry
/// starts after this.
pub const REQUEST_BUDGET: Duration = Duration::from_secs(120);
/// The longest single wait for a `Retry-After`; a longer one is waited this
/// long (HTTP 503) or ends the request (HTTP 429: a rate limit to report).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// The first backoff between attempts; it doubles per attempt, jittered to
/// 50-100 %, up to [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// The longest backoff between attempts without a `Retry-After`.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How many retries (of requests and of operations settled by re-reading)
/// one order may spend in all.
pub const ORDER_RETRIES: u32 = 24;
/// How long one order may spend waiting between retries in all.
pub const ORDER_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Why a request failed after the retries it was allowed. The source of an
/// [`IssueError::Network`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TransportError {
    /// The CA answered HTTP 5xx or 429 to every attempt.
    #[error(
        "the CA is unavailable (HTTP {status}{}{}) after {attempts} attempt(s){}",
        fmt_detail(.detail), fmt_retry_after(.retry_after), fmt_unsettled(*.unsettled)
    )]
    Unavailable {
        /// The last status.
        status: u16,
        /// The problem document's detail, if the answer had one.
        detail: Option<String>,
        /// The CA's last `Retry-After`.
        retry_after: Option<SystemTime>,
        /// How many times the request was sent.
        attempts: u32,
        /// Whether the request changes state and may have taken effect.
        unsettled: bool,
    },
    /// No answer: the connection failed, was reset, or timed out.
    #[error("no answer after {attempts} attempt(s){}", fmt_unsettled(*.unsettled))]
    NoAnswer {
        /// How many times the request was sent.
        attempts: u32,
        /// Whether the request changes state and may have taken effect.
        unsettled: bool,
        /// The last failure.
        #[source]
        source: reqwest::Error,
    },
}

fn fmt_detail(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

fn fmt_retry_after(at: &Option<SystemTime>) -> String {
    at.map(|t| {
        format!(
            ", retry after {}",
            crate::timefmt::rfc3339(time::OffsetDateTime::from(t))
        )
    })
    .unwrap_or_default()
}

fn fmt_unsettled(unsettled: bool) -> &'static str {
    if unsettled {
        "; the request may have taken effect"
    } else {
        ""
    }
}

impl TransportError {
    pub(super) fn unsettled(&self) -> bool {
        match self {
            TransportError::Unavailable { unsettled, .. }
            | TransportError::NoAnswer { unsettled, .. } => *unsettled,
        }
    }
}

/// Whether instant-acme's error is a state-changing request whose answer
/// was lost: it may or may not have taken effect, and reading the resource
/// again tells.
pub(super) fn is_unsettled(e: &ia::Error) -> bool {
    match e {
        ia::Error::Other(inner) => inner
            .downcast_ref::<TransportError>()
            .is_some_and(TransportError::unsettled),
        _ => false,
    }
}

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

/// The attempt timeout from [`ATTEMPT_TIMEOUT_ENV`], else [`ATTEMPT_TIMEOUT`].
pub(super) fn attempt_timeout_from_env() -> Duration {
    std::env::var(ATTEMPT_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(ATTEMPT_TIMEOUT, Duration::from_millis)
}

/// The `reqwest` client of an [`AcmeClient`]: system roots plus the
/// certificates in `ca_cert` (PEM).
pub(super) fn http_client(
    ca_cert: Option<&Path>,
    attempt_timeout: Duration,
) -> Result<reqwest::Client, IssueError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .connect_timeout(attempt_timeout.min(Duration::from_secs(15)))
        .timeout(attempt_timeout)
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

/// The retry policy's numbers, fixed per client (shorter in unit tests).
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    pub(super) attempt_timeout: Duration,
    pub(super) max_attempts: u32,
    pub(super) backoff_initial: Duration,
}

/// Shared between the client handed to instant-acme and ours.
pub(super) struct Shared {
    /// Bodies of GET responses fetched already (the directory), so that
    /// instant-acme does not fetch them again.
    cache: Mutex<HashMap<String, Bytes>>,
    /// The last `Retry-After` seen on a 429/503 response.
    retry_after: Mutex<Option<SystemTime>>,
    directory_url: String,
    endpoints: OnceLock<Endpoints>,
    pub(super) cap: RateCap,
    pub(super) policy: Policy,
    counters: Counters,
    /// Nonces of finished orders, for the next order's first request.
    spare_nonces: Mutex<SpareNonces>,
    /// The first wait of order polls, learned from this CA.
    pub(super) first_polls: super::order::FirstPolls,
}

impl Shared {
    pub(super) fn new(directory_url: &str, attempt_timeout: Duration, cap: RateCap) -> Shared {
        Shared {
            cache: Mutex::default(),
            retry_after: Mutex::default(),
            directory_url: directory_url.to_owned(),
            endpoints: OnceLock::new(),
            cap,
            policy: Policy {
                attempt_timeout,
                max_attempts: MAX_ATTEMPTS,
                backoff_initial: BACKOFF_INITIAL,
            },
            counters: Counters::default(),
            spare_nonces: Mutex::default(),
            first_polls: super::order::FirstPolls::default(),
        }
    }

    /// A spare nonce, if one is young enough (`nonces.rs`); counted.
    pub(super) fn spare_nonce(&self) -> Option<String> {
        let nonce = self.spare_nonces.lock().ok()?.take(Instant::now())?;
        self.counters.nonces_reused.fetch_add(1, Ordering::Relaxed);
        Some(nonce)
    }

    /// Keeps the nonce of `answer` when it ends an order: a certificate
    /// download (`kind` a read, the body a PEM chain), after which nothing
    /// uses it.
    fn keep_spare_nonce(&self, kind: Kind, answer: &Answer) {
        let ends_order = kind == Kind::Fetch
            && answer.status.is_success()
            && answer
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/pem-certificate-chain"));
        if ends_order
            && let Some(nonce) = nonce_of(&answer.headers)
            && let Ok(mut spare) = self.spare_nonces.lock()
        {
            spare.keep(nonce, Instant::now());
        }
    }

    /// The body of a GET of `url` fetched already.
    pub(super) fn cached(&self, url: &str) -> Option<Bytes> {
        self.cache.lock().ok()?.get(url).cloned()
    }

    /// Keeps the body of a GET of `url` for the next GET; the directory's
    /// endpoints are noted to classify requests.
    pub(super) fn cache(&self, url: &str, body: Bytes) {
        if url == self.directory_url
            && let Ok(doc) = serde_json::from_slice::<super::DirectoryDoc>(&body)
        {
            let _ = self.endpoints.set(Endpoints {
                new_nonce: doc.new_nonce,
                new_account: doc.new_account,
                new_order: doc.new_order,
                revoke_cert: doc.revoke_cert,
                key_change: doc.key_change,
                renewal_info: doc.renewal_info,
            });
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(url.to_owned(), body);
        }
    }

    /// The last `Retry-After` of a 429/503, once.
    pub(super) fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after.lock().ok()?.take()
    }

    fn note_retry_after(&self, at: SystemTime) {
        if let Ok(mut slot) = self.retry_after.lock() {
            *slot = Some(at);
        }
    }

    /// Counts an order poll.
    pub(super) fn count_poll(&self) {
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> TransportStats {
        TransportStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            polls: self.counters.polls.load(Ordering::Relaxed),
            nonces_reused: self.counters.nonces_reused.load(Ordering::Relaxed),
        }
    }

    /// What a request is: from its method, its URL and (for a POST) whether
    /// its JWS payload is empty.
    pub(super) fn classify(&self, method: &http::Method, url: &str, body: &[u8]) -> Kind {
        let ep = self.endpoints.get();
        let is = |u: Option<&str>| u.is_some_and(|u| u == url);
        if *method != http::Method::POST {
            if url == self.directory_url {
                return Kind::Directory;
            }
            if is(ep.map(|e| e.new_nonce.as_str())) {
                return Kind::NewNonce;
            }
            if ep
                .and_then(|e| e.renewal_info.as_deref())
                .is_some_and(|r| url.starts_with(r))
            {
                return Kind::RenewalInfo;
            }
            return Kind::Fetch;
        }
        if jws_payload_is_empty(body) {
            return Kind::Fetch;
        }
        match ep {
            Some(e) if e.new_account == url => Kind::NewAccount,
            Some(e) if e.new_order == url => Kind::NewOrder,
            Some(e) if is(e.revoke_cert.as_deref()) => Kind::Revoke,
            Some(e) if is(e.key_change.as_deref()) => Kind::KeyChange,
            _ => Kind::Change,
        }
    }
}

/// An answer of the CA.
pub(super) struct Answer {
    pub(super) status: http::StatusCode,
    pub(super) headers: http::HeaderMap,
    pub(super) body: Bytes,
}

/// What to do after an attempt.
enum Next {
    Done(Answer),
    Retry {
        wait: Duration,
        why: String,
        give_up: Result<Answer, TransportError>,
    },
    Fail(TransportError),
}

/// Sends one request with the retry policy of the module documentation.
pub(super) async fn send(
    http: &reqwest::Client,
    shared: &Shared,
    method: http::Method,
    url: &str,
    headers: http::HeaderMap,
    body: Bytes,
) -> Result<Answer, TransportError> {
    let kind = shared.classify(&method, url, &body);
    let scope = ORDER_SCOPE.try_with(Arc::clone).ok();
    let policy = shared.policy;
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let wait = shared.cap.reserve(kind, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        if attempt > 1 {
            shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let sent_at = Instant::now();
        let sent = async {
            let rsp = http
                .request(method.clone(), url)
                .headers(headers.clone())
                .body(body.clone())
                .timeout(policy.attempt_timeout)
                .send()
                .await?;
            let status = rsp.status();
            let headers = rsp.headers().clone();
            let body = rsp.bytes().await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                headers,
                body,
            })
        }
        .await;
        match &sent {
            Ok(a) => crate::metrics::count_ca_response(a.status.as_u16()),
            Err(_) => crate::metrics::count_ca_failure(),
        }
        if let Ok(a) = &sent {
            log::debug!(
                "{method} {url} -> {} in {:.1} ms",
                a.status,
                sent_at.elapsed().as_secs_f64() * 1000.0
            );
        }
        let next = decide(sent, kind, attempt, policy);
        let (wait, why, give_up) = match next {
            Next::Done(answer) => {
                shared.keep_spare_nonce(kind, &answer);
                if matches!(answer.status.as_u16(), 429 | 503)
                    && let Some(at) = retry_after_of(&answer.headers)
                {
                    shared.note_retry_after(at);
                }
                if let Some(scope) = &scope {
                    scope.set_retry_after(retry_after_of(&answer.headers));
                }
                return Ok(answer);
            }
            Next::Fail(e) => return Err(e),
            Next::Retry { wait, why, give_up } => (wait, why, give_up),
        };
        let over_budget = attempt >= policy.max_attempts
            || started.elapsed() + wait > REQUEST_BUDGET
            || scope.as_ref().is_some_and(|s| !s.take_retry(wait));
        if over_budget {
            log::warn!("{method} {url}: {why}; giving up after {attempt} attempt(s)");
            if let Ok(a) = &give_up
                && let Some(at) = retry_after_of(&a.headers)
            {
                shared.note_retry_after(at);
            }
            return give_up;
        }
        log::warn!(
            "{why}, retrying after {:.1} s: {method} {url} (attempt {attempt} of {})",
            wait.as_secs_f64(),
            policy.max_attempts
        );
        tokio::time::sleep(wait).await;
    }
}

/// The policy for one attempt's outcome.
fn decide(sent: Result<Answer, reqwest::Error>, kind: Kind, attempt: u32, policy: Policy) -> Next {
    let backoff = backoff(policy.backoff_initial, attempt);
    let answer = match sent {
        Ok(a) => a,
        Err(e) => {
            // Not connected: the request never left, so it can go again.
            let unsent = e.is_connect();
            let what = if e.is_timeout() {
                "no answer in time"
            } else if unsent {
                "cannot connect to the CA"
            } else {
                "the connection failed"
            };
            let why = format!("{what} ({})", error_chain(&e));
            let unsettled = !unsent && !kind.resend_when_lost();
            let failed = TransportError::NoAnswer {
                attempts: attempt,
                unsettled,
                source: e,
            };
            if unsettled {
                return Next::Fail(failed);
            }
            return Next::Retry {
                wait: backoff,
                why,
                give_up: Err(failed),
            };
        }
    };
    let status = answer.status;
    if !(status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS) {
        return Next::Done(answer);
    }
    let retry_after = retry_after_of(&answer.headers);
    let refused = status == http::StatusCode::SERVICE_UNAVAILABLE
        || status == http::StatusCode::TOO_MANY_REQUESTS;
    let unavailable = |unsettled: bool| TransportError::Unavailable {
        status: status.as_u16(),
        detail: problem_detail(&answer.body),
        retry_after,
        attempts: attempt,
        unsettled,
    };
    if !refused && !kind.resend_when_lost() {
        // A 500 to a request that changes state: it may have been done.
        return Next::Fail(unavailable(true));
    }
    let until = retry_after.map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
    if status == http::StatusCode::TOO_MANY_REQUESTS {
        // A rate limit with a long wait is reported, not waited out.
        if until.is_some_and(|u| u > RETRY_AFTER_CAP) {
            return Next::Done(answer);
        }
    }
    let wait = until.map_or(backoff, |u| u.min(RETRY_AFTER_CAP));
    let why = format!(
        "the CA is unavailable (HTTP {}{})",
        status.as_u16(),
        problem_detail(&answer.body)
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    let give_up = if status == http::StatusCode::TOO_MANY_REQUESTS {
        Ok(answer)
    } else {
        Err(unavailable(false))
    };
    Next::Retry { wait, why, give_up }
}

/// The `detail` of a problem document, if `body` is one.
fn problem_detail(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        detail: Option<String>,
    }
    serde_json::from_slice::<Doc>(body)
        .ok()
        .and_then(|d| d.detail)
        .map(|d| d.chars().take(200).collect())
}

/// The HTTP client handed to instant-acme: our `reqwest` pool.
pub(super) struct HttpShim {
    http: reqwest::Client,
    shared: Arc<Shared>,
}

impl AcmeClient {
    /// The [`HttpShim`] over this client's pool, for instant-acme.
    pub(super) fn shim(&self) -> Box<dyn ia::HttpClient> {
        Box::new(HttpShim {
            http: self.http.clone(),
            shared: self.shared.clone(),
        })
    }

    /// Sends a request of ours (not instant-acme's) with the retry policy.
    pub(super) async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<Answer, TransportError> {
        send(&self.http, &self.shared, method, url, headers, body).await
    }

    /// A fresh nonce: a spare one (`nonces.rs`), else from `newNonce`
    /// (`new_nonce` is its URL)
    /// ([RFC 8555 §7.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.2)).
    pub(super) async fn fresh_nonce(&self, new_nonce: &str) -> Result<String, IssueError> {
        if let Some(nonce) = self.shared.spare_nonce() {
            return Ok(nonce);
        }
        let action = "get a nonce";
        let rsp = self
            .send(
                http::Method::HEAD,
                new_nonce,
                http::HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .map_err(|e| IssueError::network(action, new_nonce, e))?;
        nonce_of(&rsp.headers).ok_or_else(|| {
            IssueError::bad_answer(action, new_nonce, "the answer has no Replay-Nonce header")
        })
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<ia::BytesResponse, ia::Error>> + Send>>;

impl ia::HttpClient for HttpShim {
    fn request(&self, req: http::Request<ia::BodyWrapper<Bytes>>) -> ResponseFuture {
        let http = self.http.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let url = parts.uri.to_string();
            if parts.method != http::Method::POST
                && shared.classify(&parts.method, &url, &[]) == Kind::NewNonce
                && let Some(nonce) = shared.spare_nonce()
                && let Ok(value) = http::HeaderValue::from_str(&nonce)
            {
                log::debug!("{} {url} (a spare nonce)", parts.method);
                let mut headers = http::HeaderMap::new();
                headers.insert("replay-nonce", value);
                return Ok(bytes_response(http::StatusCode::OK, headers, Bytes::new()));
            }
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
            // A resent JWS is safe: if the CA did process it, the nonce is
            // spent and the CA answers badNonce, which instant-acme handles
            // by signing anew; requests that change state are resent only
            // when the CA cannot have acted on them (see `send`).
            let answer = send(
                &http,
                &shared,
                parts.method,
                &url,
                headers,
                Bytes::from(data),
            )
            .await
            .map_err(|e| ia::Error::Other(Box::new(e)))?;
            if answer.status.is_success() && url == shared.directory_url {
                shared.cache(&url, answer.body.clone());
            }
            Ok(bytes_response(answer.status, answer.headers, answer.body))
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
    http_date(value)
}

/// Parses an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`,
/// [RFC 9110 §5.6.7](https://www.rfc-editor.org/rfc/rfc9110#section-5.6.7)).
pub(super) fn http_date(value: &str) -> Option<SystemTime> {
    let dt =
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822)
            .ok()?;
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
