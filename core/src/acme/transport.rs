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
//! * Counters of requests, retries and polls ([`TransportStats`]).

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

/// A client-side cap on the rate of requests to a CA: a token bucket that
/// holds `burst` requests and refills at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestRate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may be sent at once after a quiet time.
    pub burst: u32,
}

/// The cap for a CA that is neither Let's Encrypt nor on a loopback
/// address: 20 requests per second (Let's Encrypt's and Buypass's long
/// standing per-endpoint figure), bursts of 40.
pub const DEFAULT_REQUEST_RATE: RequestRate = RequestRate {
    per_second: 20.0,
    burst: 40,
};

/// Let's Encrypt's published "overall requests" limits per IP address
/// (<https://letsencrypt.org/docs/rate-limits/>), per endpoint.
const LETSENCRYPT_RATES: [(Kind, RequestRate); 7] = [
    (Kind::Directory, rate(40.0, 40)),
    (Kind::NewNonce, rate(20.0, 10)),
    (Kind::NewAccount, rate(5.0, 15)),
    (Kind::NewOrder, rate(300.0, 200)),
    (Kind::Revoke, rate(10.0, 100)),
    (Kind::RenewalInfo, rate(1000.0, 100)),
    // Everything else under /acme/.
    (Kind::Fetch, rate(250.0, 125)),
];

const fn rate(per_second: f64, burst: u32) -> RequestRate {
    RequestRate { per_second, burst }
}

/// What a request is, for the retry policy, the rate cap and the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// GET of the directory.
    Directory,
    /// HEAD (or GET) of newNonce.
    NewNonce,
    /// POST to newAccount.
    NewAccount,
    /// POST to newOrder.
    NewOrder,
    /// POST to revokeCert.
    Revoke,
    /// POST to keyChange.
    KeyChange,
    /// GET of renewal information.
    RenewalInfo,
    /// A POST-as-GET or another GET: reads a resource.
    Fetch,
    /// Any other POST with a payload: changes a resource (challenge ready,
    /// finalize, account update).
    Change,
}

impl Kind {
    /// Whether sending it twice is harmless.
    fn reads(self) -> bool {
        matches!(
            self,
            Kind::Directory | Kind::NewNonce | Kind::RenewalInfo | Kind::Fetch
        )
    }

    /// Whether an answer lost after sending may be recovered by sending the
    /// same request again: reads, and new-account (the same key gets the
    /// existing account).
    fn resend_when_lost(self) -> bool {
        self.reads() || self == Kind::NewAccount
    }

    fn rate_class(self) -> Kind {
        match self {
            Kind::Change | Kind::KeyChange => Kind::Fetch,
            other => other,
        }
    }
}

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

/// How many requests a client sent, how many of them were retries, and how
/// many order polls it made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Requests sent to the CA (every attempt counts).
    pub requests: u64,
    /// Of those, attempts after a failed one.
    pub retries: u64,
    /// Order polls (waiting for validation or issuance).
    pub polls: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    polls: AtomicU64,
}

/// One token bucket, kept as its theoretical arrival time (GCRA): a
/// request may go when the bucket's time is at most `tolerance` ahead of
/// now; each request moves it on by `interval`.
#[derive(Debug)]
pub(super) struct Bucket {
    interval: Duration,
    tolerance: Duration,
    tat: Mutex<Option<Instant>>,
}

impl Bucket {
    fn new(rate: RequestRate) -> Bucket {
        let per_second = if rate.per_second.is_finite() && rate.per_second > 0.0 {
            rate.per_second
        } else {
            1.0
        };
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Bucket {
            interval,
            tolerance: interval.saturating_mul(rate.burst.saturating_sub(1)),
            tat: Mutex::new(None),
        }
    }

    /// Takes a token at `now`: how long to wait before sending.
    fn reserve(&self, now: Instant) -> Duration {
        let Ok(mut tat) = self.tat.lock() else {
            return Duration::ZERO;
        };
        let t = tat.map_or(now, |t| t.max(now));
        let wait = t
            .saturating_duration_since(now)
            .saturating_sub(self.tolerance);
        *tat = Some(t + self.interval);
        wait
    }
}

/// The request-rate cap of one client.
#[derive(Debug)]
pub(super) enum RateCap {
    /// No cap (a CA on a loopback address, or set so).
    None,
    /// One bucket for every request.
    One(Bucket),
    /// A bucket per endpoint (Let's Encrypt); kinds not listed use the
    /// [`Kind::Fetch`] one.
    PerKind(HashMap<Kind, Bucket>),
}

impl RateCap {
    /// The default for the directory at `url`.
    pub(super) fn for_directory(url: &str) -> RateCap {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost"
            || bare.ends_with(".localhost")
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return RateCap::None;
        }
        if url == super::LETSENCRYPT || url == super::LETSENCRYPT_STAGING {
            return RateCap::PerKind(
                LETSENCRYPT_RATES
                    .iter()
                    .map(|(k, r)| (*k, Bucket::new(*r)))
                    .collect(),
            );
        }
        RateCap::One(Bucket::new(DEFAULT_REQUEST_RATE))
    }

    /// A cap of `rate` for every request, or none.
    pub(super) fn uniform(rate: Option<RequestRate>) -> RateCap {
        rate.map_or(RateCap::None, |r| RateCap::One(Bucket::new(r)))
    }

    fn reserve(&self, kind: Kind, now: Instant) -> Duration {
        match self {
            RateCap::None => Duration::ZERO,
            RateCap::One(b) => b.reserve(now),
            RateCap::PerKind(map) => map
                .get(&kind.rate_class())
                .or_else(|| map.get(&Kind::Fetch))
                .map_or(Duration::ZERO, |b| b.reserve(now)),
        }
    }
}

/// The endpoints of the directory, to classify requests.
#[derive(Debug, Default)]
struct Endpoints {
    new_nonce: String,
    new_account: String,
    new_order: String,
    revoke_cert: Option<String>,
    key_change: Option<String>,
    renewal_info: Option<String>,
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

/// Whether a POST body is a JWS with an empty payload (POST-as-GET), or no
/// JWS at all (then nothing in it can change state either).
fn jws_payload_is_empty(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Jws<'a> {
        #[serde(borrow, default)]
        payload: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Jws<'_>>(body) {
        Ok(jws) => jws.payload.is_none_or(|p| p.is_empty()),
        Err(_) => body.is_empty(),
    }
}

/// What one order may still spend on retries, and what its requests
/// learned that its polling needs (the last `Retry-After`). Set for the
/// requests of an order with [`ORDER_SCOPE`].
pub(super) struct OrderScope {
    retries_left: AtomicU32,
    wait_left_ms: AtomicU64,
    retry_after: Mutex<Option<SystemTime>>,
    /// When the order was placed.
    pub(super) started: Instant,
    /// Polls made so far.
    pub(super) polls: AtomicU32,
}

impl OrderScope {
    pub(super) fn new() -> Arc<OrderScope> {
        Arc::new(OrderScope {
            retries_left: AtomicU32::new(ORDER_RETRIES),
            wait_left_ms: AtomicU64::new(u64::try_from(ORDER_RETRY_WAIT.as_millis()).unwrap_or(0)),
            retry_after: Mutex::new(None),
            started: Instant::now(),
            polls: AtomicU32::new(0),
        })
    }

    /// Spends one retry and `wait`; false when the budget is spent.
    pub(super) fn take_retry(&self, wait: Duration) -> bool {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let retry = self
            .retries_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        retry
            && self
                .wait_left_ms
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(ms))
                .is_ok()
    }

    /// The `Retry-After` of the last successful answer in this order, once.
    pub(super) fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after.lock().ok()?.take()
    }

    fn set_retry_after(&self, at: Option<SystemTime>) {
        if let Ok(mut slot) = self.retry_after.lock() {
            *slot = at;
        }
    }
}

tokio::task_local! {
    /// The order the requests of the current task belong to.
    pub(super) static ORDER_SCOPE: Arc<OrderScope>;
}

/// A uniformly random fraction in [0, 1).
fn random_fraction() -> f64 {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// `d` scaled by a random factor in [lo, hi).
pub(super) fn jitter(d: Duration, lo: f64, hi: f64) -> Duration {
    d.mul_f64(lo + (hi - lo) * random_fraction())
}

/// The backoff before attempt `attempt + 1`: `initial` doubled per attempt,
/// at most [`BACKOFF_MAX`], jittered to 50-100 %.
fn backoff(initial: Duration, attempt: u32) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    jitter(base, 0.5, 1.0)
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

    /// A fresh nonce from `newNonce` (`new_nonce` is its URL)
    /// ([RFC 8555 §7.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.2)).
    pub(super) async fn fresh_nonce(&self, new_nonce: &str) -> Result<String, IssueError> {
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

    /// A `Shared` for a test server at `base`, with short waits.
    fn test_shared(base: &str, max_attempts: u32) -> Arc<Shared> {
        let mut shared = Shared::new(
            &format!("{base}/dir"),
            Duration::from_millis(300),
            RateCap::None,
        );
        shared.policy.max_attempts = max_attempts;
        shared.policy.backoff_initial = Duration::from_millis(1);
        shared.cache(
            &format!("{base}/dir"),
            Bytes::from(format!(
                r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/acct","newOrder":"{base}/order","revokeCert":"{base}/revoke"}}"#
            )),
        );
        Arc::new(shared)
    }

    fn jws(payload: &str) -> Vec<u8> {
        format!(r#"{{"protected":"e30","payload":"{payload}","signature":"c2ln"}}"#).into_bytes()
    }

    /// A server that answers each connection with the next of `answers`
    /// (raw HTTP/1.1 after the request is read; `None`: close without an
    /// answer), then stops; returns how many connections it took.
    async fn serve(answers: Vec<Option<&'static str>>) -> (String, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut n = 0;
            for answer in answers {
                let Ok((mut s, _)) = listener.accept().await else {
                    break;
                };
                n += 1;
                let mut buf = [0u8; 8192];
                let _ = s.read(&mut buf).await;
                if let Some(a) = answer {
                    let _ = s.write_all(a.as_bytes()).await;
                }
            }
            n
        });
        (format!("http://{addr}"), server)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const INTERNAL: &str = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/problem+json\r\ncontent-length: 58\r\nconnection: close\r\n\r\n{\"type\":\"urn:ietf:params:acme:error:serverInternal\",\"x\":1}";

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
            s.write_all(OK.as_bytes()).await.expect("write");
            drop(silent);
        });
        let shared = test_shared(&format!("http://{addr}"), 3);
        let shim = HttpShim {
            http: reqwest::Client::builder().build().expect("client"),
            shared: shared.clone(),
        };
        // A POST-as-GET: reads, so it is sent again.
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{addr}/acme/order/1"))
            .body(ia::BodyWrapper::from(jws("")))
            .expect("request");
        let rsp = shim
            .request(req)
            .await
            .expect("answered on the second attempt");
        assert_eq!(rsp.parts.status, http::StatusCode::OK);
        assert_eq!(shared.stats().requests, 2);
        assert_eq!(shared.stats().retries, 1);
        server.await.expect("server");
    }

    /// 503 with Retry-After is waited out and sent again; a reset
    /// connection too; both count as retries.
    #[tokio::test]
    async fn reads_are_retried_on_503_and_resets() {
        let (base, server) = serve(vec![Some(UNAVAILABLE), None, Some(OK)]).await;
        let shared = test_shared(&base, 6);
        let http = reqwest::Client::new();
        let a = send(
            &http,
            &shared,
            http::Method::HEAD,
            &format!("{base}/nonce"),
            http::HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .expect("answered on the third attempt");
        assert_eq!(a.status, http::StatusCode::OK);
        assert_eq!(server.await.expect("server"), 3);
        assert_eq!(shared.stats().retries, 2);
    }

    /// A 500 to a request that changes state is not sent again: it may
    /// have taken effect. The error says so, and `is_unsettled` sees it.
    #[tokio::test]
    async fn a_change_answered_500_is_unsettled_and_not_resent() {
        let (base, server) = serve(vec![Some(INTERNAL), Some(OK)]).await;
        let shared = test_shared(&base, 6);
        let http = reqwest::Client::new();
        let e = send(
            &http,
            &shared,
            http::Method::POST,
            &format!("{base}/finalize/1"),
            http::HeaderMap::new(),
            Bytes::from(jws("eyJjc3IiOiJ4In0")),
        )
        .await
        .err()
        .expect("no retry");
        assert!(e.unsettled(), "{e}");
        assert!(
            e.to_string().contains("HTTP 500") && e.to_string().contains("may have taken effect"),
            "{e}"
        );
        assert!(is_unsettled(&ia::Error::Other(Box::new(e))));
        assert_eq!(shared.stats().requests, 1);
        server.abort();
    }

    /// A 503 to a request that changes state was refused, not processed:
    /// it is sent again. When every attempt gets 503, the error names the
    /// status and says the CA is unavailable.
    #[tokio::test]
    async fn a_change_answered_503_is_resent_and_gives_up_naming_the_status() {
        let (base, server) = serve(vec![Some(UNAVAILABLE), Some(UNAVAILABLE)]).await;
        let shared = test_shared(&base, 2);
        let http = reqwest::Client::new();
        let e = send(
            &http,
            &shared,
            http::Method::POST,
            &format!("{base}/order"),
            http::HeaderMap::new(),
            Bytes::from(jws("eyJ4IjoxfQ")),
        )
        .await
        .err()
        .expect("gives up");
        assert!(!e.unsettled());
        assert!(
            e.to_string()
                .starts_with("the CA is unavailable (HTTP 503, retry after "),
            "{e}"
        );
        assert_eq!(server.await.expect("server"), 2);
    }

    #[test]
    fn requests_are_classified_by_url_and_payload() {
        let shared = test_shared("https://ca", 6);
        let post = http::Method::POST;
        let c = |m: &http::Method, u: &str, b: &[u8]| shared.classify(m, u, b);
        assert_eq!(
            c(&http::Method::GET, "https://ca/dir", b""),
            Kind::Directory
        );
        assert_eq!(
            c(&http::Method::HEAD, "https://ca/nonce", b""),
            Kind::NewNonce
        );
        assert_eq!(c(&post, "https://ca/acct", &jws("e30")), Kind::NewAccount);
        assert_eq!(c(&post, "https://ca/order", &jws("e30")), Kind::NewOrder);
        assert_eq!(c(&post, "https://ca/revoke", &jws("e30")), Kind::Revoke);
        assert_eq!(c(&post, "https://ca/chal/1", &jws("e30")), Kind::Change);
        assert_eq!(c(&post, "https://ca/order/1", &jws("")), Kind::Fetch);
        assert_eq!(c(&post, "https://ca/cert/1", &jws("")), Kind::Fetch);
        assert!(Kind::Fetch.reads() && !Kind::Change.reads());
        assert!(Kind::NewAccount.resend_when_lost() && !Kind::NewOrder.resend_when_lost());
    }

    #[test]
    fn token_bucket_allows_its_burst_then_spaces_requests() {
        let b = Bucket::new(RequestRate {
            per_second: 10.0,
            burst: 3,
        });
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..5).map(|_| b.reserve(t0)).collect();
        assert_eq!(waits[..3], [Duration::ZERO; 3]);
        assert_eq!(waits[3], Duration::from_millis(100));
        assert_eq!(waits[4], Duration::from_millis(200));
        // After a quiet second the burst is back.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.reserve(t1), Duration::ZERO);
    }

    #[test]
    fn default_caps_per_ca() {
        assert!(matches!(
            RateCap::for_directory("https://127.0.0.1:14000/dir"),
            RateCap::None
        ));
        assert!(matches!(
            RateCap::for_directory("https://localhost:14000/dir"),
            RateCap::None
        ));
        assert!(matches!(
            RateCap::for_directory("https://[::1]:14000/dir"),
            RateCap::None
        ));
        assert!(matches!(
            RateCap::for_directory(super::super::LETSENCRYPT),
            RateCap::PerKind(_)
        ));
        assert!(matches!(
            RateCap::for_directory(super::super::ZEROSSL),
            RateCap::One(_)
        ));
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        for attempt in 1..20 {
            let base = BACKOFF_INITIAL
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            let d = backoff(BACKOFF_INITIAL, attempt);
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn an_order_budget_runs_out() {
        let scope = OrderScope::new();
        for _ in 0..ORDER_RETRIES {
            assert!(scope.take_retry(Duration::ZERO));
        }
        assert!(!scope.take_retry(Duration::ZERO));
        let scope = OrderScope::new();
        assert!(scope.take_retry(ORDER_RETRY_WAIT));
        assert!(!scope.take_retry(Duration::from_secs(1)));
    }

    /// A connection failure keeps its cause in the error's sources, and the
    /// message users see still names it.
    #[tokio::test]
    async fn a_nonce_request_that_cannot_connect_keeps_its_cause() {
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mut client = AcmeClient::new("https://localhost:14000/dir", None).expect("client");
        client.shared = test_shared("https://localhost:14000", 2);
        let url = format!("http://127.0.0.1:{port}/nonce");
        let e = client.fresh_nonce(&url).await.expect_err("refused");
        assert_eq!(e.class(), crate::error::ErrorClass::Network);
        let mut source = std::error::Error::source(&e);
        let mut found = false;
        while let Some(s) = source {
            found |= s.downcast_ref::<reqwest::Error>().is_some();
            source = s.source();
        }
        assert!(found, "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot get a nonce at {url}: no answer after 2 attempt(s): "
            )),
            "{text}"
        );
    }
}
