//! Orders ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)):
//! placing one, its authorizations and challenges, waiting for validation,
//! finalizing and downloading the certificate.
//!
//! Why this module exists: it turns instant-acme's order types into the
//! certsmith types the engine works with ([`Order`], [`AuthzInfo`],
//! [`ChallengeInfo`]), and adds what the engine relies on: `badNonce`
//! retries on every call, polite polling (docs/design.md §7: starts fast,
//! since a local CA validates in milliseconds, grows with jitter up to a
//! cap, honours `Retry-After`, and ends at the configured timeout, not
//! before), requests that change state settled by reading the resource
//! again when their answer was lost, a retry budget per order, and an
//! error that lists each failed authorization with the CA's problem
//! document.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use certsmith_plugin_api::ChallengeType;
use instant_acme as ia;

use super::transport::{
    NONCE_RETRIES, ORDER_SCOPE, OrderScope, is_bad_nonce, is_unsettled, jitter, retry_bad_nonce,
};
use super::{Account, AcmeClient, convert_problem};
use crate::error::{AuthzFailure, CaProblem, IssueError};

/// The first wait before polling an order for validation that a client
/// starts from ([`FirstPolls`] learns it from the CA); validation on a
/// local CA takes a few milliseconds, on Let's Encrypt a second or two.
pub const POLL_INITIAL_DELAY: Duration = Duration::from_millis(10);
/// The same for polling a finalized order; issuance is usually done by
/// the time the finalize response arrives or very soon after.
pub const FINALIZE_POLL_INITIAL_DELAY: Duration = Duration::from_millis(5);
/// The shortest first wait [`FirstPolls`] learns.
pub const FIRST_POLL_MIN: Duration = Duration::from_millis(2);
/// The longest first wait [`FirstPolls`] learns.
pub const FIRST_POLL_MAX: Duration = Duration::from_secs(5);

/// Which poll loop of an order.
#[derive(Clone, Copy, Debug)]
pub(super) enum PollKind {
    /// Waiting for the CA to validate the challenges.
    Ready,
    /// Waiting for the CA to issue the certificate after finalize.
    Issued,
}

/// The first wait of each kind of poll loop, learned by every order of a
/// client from what its first poll found.
///
/// Why: a fixed first wait is wrong for every CA but one. Too short, the
/// first poll finds the order unfinished and the next comes 3× later, long
/// after the CA was done (at Pebble under load, a 10 ms first wait missed
/// in about a third of orders, and each miss cost a poll and some 30 ms);
/// too long, every order waits for nothing. A first poll that finds the
/// order done shortens the wait by 1/20, one that does not lengthens it by
/// half: in balance about one order in nine polls twice, and the first
/// poll lands just after the CA is usually done, at a few milliseconds for
/// a local CA or at seconds for Let's Encrypt (fewer polls there too).
#[derive(Debug)]
pub(super) struct FirstPolls {
    /// Microseconds, per [`PollKind`].
    ready: AtomicU64,
    issued: AtomicU64,
}

impl Default for FirstPolls {
    fn default() -> FirstPolls {
        FirstPolls {
            ready: AtomicU64::new(micros(POLL_INITIAL_DELAY)),
            issued: AtomicU64::new(micros(FINALIZE_POLL_INITIAL_DELAY)),
        }
    }
}

impl FirstPolls {
    fn slot(&self, kind: PollKind) -> &AtomicU64 {
        match kind {
            PollKind::Ready => &self.ready,
            PollKind::Issued => &self.issued,
        }
    }

    /// The first wait of a poll loop of `kind` now.
    pub(super) fn get(&self, kind: PollKind) -> Duration {
        Duration::from_micros(self.slot(kind).load(Ordering::Relaxed))
    }

    /// Learns from a poll loop of `kind` that started with the first wait
    /// `used` and whose first poll found the order `done` (or not). Only
    /// while the wait is still `used`: orders in flight together that all
    /// waited the same time say one thing, not one each (a dozen misses
    /// on one slow moment would otherwise lengthen it 1.5¹²-fold).
    pub(super) fn learn(&self, kind: PollKind, used: Duration, done: bool) {
        let used = micros(used);
        let _ = self.slot(kind).compare_exchange(
            used,
            next_first_poll(used, done),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The first wait (microseconds) after one whose poll found the order
/// `done` or not, within [`FIRST_POLL_MIN`]..=[`FIRST_POLL_MAX`].
fn next_first_poll(us: u64, done: bool) -> u64 {
    let next = if done { us - us / 20 } else { us + us / 2 };
    next.clamp(micros(FIRST_POLL_MIN), micros(FIRST_POLL_MAX))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
/// Growth of the wait between polls.
pub const POLL_GROWTH: u32 = 3;
/// The longest wait between polls without a `Retry-After`.
pub const POLL_MAX_DELAY: Duration = Duration::from_secs(10);
/// At most this many polls of one order in its first [`POLL_EARLY_WINDOW`].
pub const POLL_EARLY_MAX: u32 = 5;
/// See [`POLL_EARLY_MAX`].
pub const POLL_EARLY_WINDOW: Duration = Duration::from_secs(3);

/// The waits between the polls of one poll loop.
struct PollSchedule {
    /// The next wait without a `Retry-After` (before jitter).
    delay: Duration,
    /// The end of the loop's timeout.
    deadline: Instant,
    /// When the order was placed.
    started: Instant,
}

impl PollSchedule {
    /// The wait before the next poll at `now`, after `polls` polls of the
    /// order, given the CA's `retry_after` (from now), and whether that
    /// poll is the last (at the deadline).
    fn next(
        &mut self,
        now: Instant,
        polls: u32,
        retry_after: Option<Duration>,
    ) -> (Duration, bool) {
        let mut wait = match retry_after {
            Some(d) => d,
            None => {
                let d = jitter(self.delay, 0.75, 1.25);
                self.delay = self.delay.saturating_mul(POLL_GROWTH).min(POLL_MAX_DELAY);
                d
            }
        };
        if polls >= POLL_EARLY_MAX {
            let early_end = self.started + POLL_EARLY_WINDOW;
            wait = wait.max(jitter(early_end.saturating_duration_since(now), 1.0, 1.1));
        }
        let last = now + wait >= self.deadline;
        if last {
            wait = self.deadline.saturating_duration_since(now);
        }
        (wait, last)
    }
}

/// How a poll loop ended without its final state.
enum PollEnd {
    /// The timeout passed.
    Timeout,
    /// A request failed.
    Failed(ia::Error),
}

impl Account {
    /// Places an order for `identifiers` (ASCII, `*.` allowed)
    /// ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)).
    pub async fn new_order(&self, identifiers: &[String]) -> Result<Order, IssueError> {
        self.new_order_in(identifiers, None, OrderScope::new())
            .await
    }

    async fn new_order_in(
        &self,
        identifiers: &[String],
        profile: Option<&str>,
        scope: Arc<OrderScope>,
    ) -> Result<Order, IssueError> {
        let ids = acme_identifiers(identifiers);
        let mut new = ia::NewOrder::new(&ids);
        if let Some(p) = profile {
            new = new.profile(p);
        }
        let inner = ORDER_SCOPE
            .scope(scope.clone(), self.place(&new, &scope))
            .await
            .map_err(|e| self.client.map_error(e, "create the order"))?;
        Ok(self.order(inner, scope))
    }

    /// Sends a new order. One whose answer was lost is sent again: at
    /// worst the CA keeps an unused pending order, which expires.
    async fn place(
        &self,
        new: &ia::NewOrder<'_>,
        scope: &OrderScope,
    ) -> Result<ia::Order, ia::Error> {
        loop {
            match retry_bad_nonce!(self.inner.new_order(new).await) {
                Err(e) if is_unsettled(&e) && scope.take_retry(Duration::ZERO) => {
                    log::warn!("the answer to the new order was lost; ordering again");
                }
                other => return other,
            }
        }
    }

    pub(super) fn order(&self, inner: ia::Order, scope: Arc<OrderScope>) -> Order {
        Order {
            inner,
            thumbprint: self.inner.key_thumbprint().to_owned(),
            client: self.client.clone(),
            scope,
            signer: self.key.clone().map(|k| (k, self.url().to_owned())),
            preferred_chain: None,
        }
    }

    /// Places an order like [`Account::new_order`], naming the certificate
    /// it replaces (`replaces`, [RFC 9773 §5](https://www.rfc-editor.org/rfc/rfc9773#section-5))
    /// when `replaces` is a certificate identifier and the CA offers ARI.
    /// With `profile`, the order asks for that ACME profile
    /// (draft-ietf-acme-profiles; check it first with
    /// [`AcmeClient::check_profile`]).
    pub async fn new_order_replacing(
        &self,
        identifiers: &[String],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<Order, IssueError> {
        let scope = OrderScope::new();
        let Some((aki, serial)) = replaces.and_then(|r| r.split_once('.')) else {
            return self.new_order_in(identifiers, profile, scope).await;
        };
        let ids = acme_identifiers(identifiers);
        let cert_id = ia::CertificateIdentifier {
            authority_key_identifier: aki.into(),
            serial: serial.into(),
        };
        let mut new = ia::NewOrder::new(&ids).replaces(cert_id);
        if let Some(p) = profile {
            new = new.profile(p);
        }
        match ORDER_SCOPE
            .scope(scope.clone(), self.place(&new, &scope))
            .await
        {
            Ok(inner) => Ok(self.order(inner, scope)),
            // The CA has no ARI after all, or refuses this replacement
            // (already replaced, unknown): order without it.
            Err(ia::Error::Unsupported(_)) => self.new_order_in(identifiers, profile, scope).await,
            Err(ia::Error::Other(e)) if e.to_string().contains("replaces field mismatch") => {
                log::info!("the CA ignored `replaces`; ordering without it");
                self.new_order_in(identifiers, profile, scope).await
            }
            Err(ia::Error::Api(p)) if !is_rate_limit(&p) => {
                log::info!(
                    "the CA refused the order naming the certificate it replaces ({}); ordering without `replaces`",
                    convert_problem(&p)
                );
                self.new_order_in(identifiers, profile, scope).await
            }
            Err(e) => Err(self.client.map_error(e, "create the order")),
        }
    }
}

fn is_rate_limit(p: &ia::Problem) -> bool {
    p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited")
}

/// The identifiers of a new order: an IP address is an `ip` identifier
/// ([RFC 8738](https://www.rfc-editor.org/rfc/rfc8738)), anything else a
/// `dns` one.
fn acme_identifiers(identifiers: &[String]) -> Vec<ia::Identifier> {
    identifiers
        .iter()
        .map(|d| match d.parse::<std::net::IpAddr>() {
            Ok(ip) => ia::Identifier::Ip(ip),
            Err(_) => ia::Identifier::Dns(d.clone()),
        })
        .collect()
}

/// The state of an authorization
/// ([RFC 8555 §7.1.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.6)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthzStatus {
    /// A challenge must be answered.
    Pending,
    /// Already validated (e.g. reused from an earlier order).
    Valid,
    /// Validation failed.
    Invalid,
    /// Revoked by the CA.
    Revoked,
    /// Expired.
    Expired,
    /// Deactivated by the client.
    Deactivated,
}

impl AuthzStatus {
    fn from_ia(s: ia::AuthorizationStatus) -> Self {
        match s {
            ia::AuthorizationStatus::Pending => AuthzStatus::Pending,
            ia::AuthorizationStatus::Valid => AuthzStatus::Valid,
            ia::AuthorizationStatus::Invalid => AuthzStatus::Invalid,
            ia::AuthorizationStatus::Revoked => AuthzStatus::Revoked,
            ia::AuthorizationStatus::Expired => AuthzStatus::Expired,
            ia::AuthorizationStatus::Deactivated => AuthzStatus::Deactivated,
        }
    }
}

/// One challenge the CA offers for an authorization.
#[derive(Clone)]
pub struct ChallengeInfo {
    /// The type, if it is one certsmith knows.
    pub challenge_type: Option<ChallengeType>,
    /// The type as the CA wrote it.
    pub type_name: String,
    /// The challenge URL.
    pub url: String,
    /// The token.
    pub token: String,
    /// `token.thumbprint` ([RFC 8555 §8.1](https://www.rfc-editor.org/rfc/rfc8555#section-8.1)).
    pub key_authorization: String,
}

impl fmt::Debug for ChallengeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeInfo")
            .field("type", &self.type_name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One authorization of an order.
#[derive(Clone, Debug)]
pub struct AuthzInfo {
    /// The authorization URL.
    pub url: String,
    /// The identifier without `*.`.
    pub identifier: String,
    /// Whether the order asked for `*.<identifier>`.
    pub wildcard: bool,
    /// Its state.
    pub status: AuthzStatus,
    /// The challenges offered.
    pub challenges: Vec<ChallengeInfo>,
}

impl AuthzInfo {
    /// The identifier as ordered (`*.`-prefixed for a wildcard).
    pub fn domain(&self) -> String {
        if self.wildcard {
            format!("*.{}", self.identifier)
        } else {
            self.identifier.clone()
        }
    }
}

fn challenge_type_from_ia(t: &ia::ChallengeType) -> (Option<ChallengeType>, String) {
    match t {
        ia::ChallengeType::Http01 => (Some(ChallengeType::Http01), "http-01".to_owned()),
        ia::ChallengeType::Dns01 => (Some(ChallengeType::Dns01), "dns-01".to_owned()),
        ia::ChallengeType::TlsAlpn01 => (Some(ChallengeType::TlsAlpn01), "tls-alpn-01".to_owned()),
        ia::ChallengeType::DeviceAttest01 => (None, "device-attest-01".to_owned()),
        ia::ChallengeType::Unknown(s) => (None, s.clone()),
        other => (None, format!("{other:?}")),
    }
}

fn challenge_type_to_ia(t: ChallengeType) -> ia::ChallengeType {
    match t {
        ChallengeType::Http01 => ia::ChallengeType::Http01,
        ChallengeType::Dns01 => ia::ChallengeType::Dns01,
        ChallengeType::TlsAlpn01 => ia::ChallengeType::TlsAlpn01,
        other => ia::ChallengeType::Unknown(other.as_str().to_owned()),
    }
}

fn identifier_name(id: &ia::Identifier) -> String {
    match id {
        ia::Identifier::Dns(d) => d.clone(),
        other => other.authorized(false).to_string(),
    }
}

/// An order in progress.
pub struct Order {
    pub(super) inner: ia::Order,
    thumbprint: String,
    pub(super) client: AcmeClient,
    /// This order's retry budget, its polls, the last `Retry-After`.
    pub(super) scope: Arc<OrderScope>,
    /// The account key and URL, for the downloads certsmith signs itself.
    pub(super) signer: Option<(Arc<super::jws::JwsKey>, String)>,
    /// The issuer CN of the chain wanted among the alternates.
    pub(super) preferred_chain: Option<String>,
}

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Order")
            .field("url", &self.inner.url())
            .finish_non_exhaustive()
    }
}

impl Order {
    /// The order URL.
    pub fn url(&self) -> &str {
        self.inner.url()
    }

    /// Asks for the chain whose topmost certificate was issued by `cn`
    /// (its issuer's common name) among the CA's alternate chains
    /// ([RFC 8555 §7.4.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2));
    /// `None`: the CA's default chain.
    pub fn prefer_chain(&mut self, cn: Option<String>) {
        self.preferred_chain = cn;
    }

    /// Whether the CA considers every authorization done.
    pub fn is_ready(&mut self) -> bool {
        matches!(
            self.inner.state().status,
            ia::OrderStatus::Ready | ia::OrderStatus::Processing | ia::OrderStatus::Valid
        )
    }

    /// Fetches every authorization of the order
    /// ([RFC 8555 §7.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.5)).
    pub async fn authorizations(&mut self) -> Result<Vec<AuthzInfo>, IssueError> {
        let scope = self.scope.clone();
        ORDER_SCOPE.scope(scope, self.authorizations_in()).await
    }

    async fn authorizations_in(&mut self) -> Result<Vec<AuthzInfo>, IssueError> {
        let mut attempt = 0u32;
        'retry: loop {
            let mut out = Vec::new();
            let mut stream = self.inner.authorizations();
            while let Some(item) = stream.next().await {
                let handle = match item {
                    Ok(h) => h,
                    Err(e) if is_bad_nonce(&e) && attempt < NONCE_RETRIES => {
                        attempt += 1;
                        continue 'retry;
                    }
                    Err(e) => return Err(self.client.map_error(e, "fetch an authorization")),
                };
                let challenges = handle
                    .challenges
                    .iter()
                    .map(|c| {
                        let (challenge_type, type_name) = challenge_type_from_ia(&c.r#type);
                        ChallengeInfo {
                            challenge_type,
                            type_name,
                            url: c.url.clone(),
                            token: c.token.clone(),
                            key_authorization: format!("{}.{}", c.token, self.thumbprint),
                        }
                    })
                    .collect();
                let id = handle.identifier();
                out.push(AuthzInfo {
                    url: handle.url().to_owned(),
                    identifier: identifier_name(id.identifier),
                    wildcard: id.wildcard,
                    status: AuthzStatus::from_ia(handle.status),
                    challenges,
                });
            }
            return Ok(out);
        }
    }

    /// Tells the CA that the challenge of `challenge_type` in the
    /// authorization at `authz_url` is ready to be validated
    /// ([RFC 8555 §7.5.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.5.1)).
    /// When the answer is lost, the authorization is read again: a
    /// challenge no longer pending was taken; a pending one is sent again.
    /// A CA may still show the challenge pending while it validates (Pebble
    /// does), so a resent request can find it done and be refused as no
    /// longer pending; and a CA may validate before it answers, and answer
    /// with the challenge already `invalid` and its problem (Pebble does
    /// when its validation wins a race against its own handler), which
    /// instant-acme reports as an error. So any refusal is checked against
    /// the challenge's status before it counts as one: a challenge no
    /// longer pending was taken, and how its validation ended is the
    /// authorization's to say ([`Self::poll_ready`]).
    pub async fn set_ready(
        &mut self,
        authz_url: &str,
        challenge_type: ChallengeType,
    ) -> Result<(), IssueError> {
        let scope = self.scope.clone();
        let ty = challenge_type_to_ia(challenge_type);
        let result = ORDER_SCOPE
            .scope(scope.clone(), async {
                let mut resent = false;
                loop {
                    match retry_bad_nonce!(set_ready_once(&mut self.inner, authz_url, &ty).await) {
                        Err(e) if is_unsettled(&e) && scope.take_retry(Duration::ZERO) => {
                            log::warn!(
                                "the answer to the challenge ready request was lost; reading the authorization again"
                            );
                            let status = retry_bad_nonce!(
                                challenge_status(&mut self.inner, authz_url, &ty).await
                            )?;
                            if status != ia::ChallengeStatus::Pending {
                                return Ok(());
                            }
                            resent = true;
                        }
                        Err(e) if matches!(e, ia::Error::Api(_)) => {
                            // A read that fails leaves the refusal as it was.
                            let status = match retry_bad_nonce!(
                                challenge_status(&mut self.inner, authz_url, &ty).await
                            ) {
                                Ok(ia::ChallengeStatus::Pending) | Err(_) => return Err(e),
                                Ok(status) => status,
                            };
                            // A Retry-After the refusal came with is not
                            // the next error's.
                            let _ = self.client.shared.take_retry_after();
                            if resent {
                                log::info!(
                                    "the resent challenge ready request was refused because the first one had been taken ({status:?})"
                                );
                            } else {
                                log::info!(
                                    "the CA refused the challenge ready request, but the challenge is already {status:?}, so the request was taken: {e}"
                                );
                            }
                            return Ok(());
                        }
                        other => return other,
                    }
                }
            })
            .await;
        result.map_err(|e| self.client.map_error(e, "start the validation"))
    }

    /// Polls the order until the CA has validated every authorization,
    /// honouring `Retry-After`, for `timeout` (docs/design.md §7). On
    /// failure the error lists each failed authorization with the CA's
    /// problem document.
    pub async fn poll_ready(&mut self, timeout: Duration) -> Result<(), IssueError> {
        let scope = self.scope.clone();
        ORDER_SCOPE.scope(scope, self.poll_ready_in(timeout)).await
    }

    async fn poll_ready_in(&mut self, timeout: Duration) -> Result<(), IssueError> {
        let result = self
            .poll(PollKind::Ready, timeout, |s| {
                matches!(s, ia::OrderStatus::Ready | ia::OrderStatus::Invalid)
            })
            .await;
        match result {
            Ok(ia::OrderStatus::Ready) if self.inner.state().error.is_none() => Ok(()),
            Ok(_) => {
                let problem = self.inner.state().error.as_ref().map(convert_problem);
                Err(self.validation_failure(problem).await)
            }
            Err(PollEnd::Timeout) => Err(IssueError::Timeout {
                what: "validate the challenges".to_owned(),
                after: timeout,
            }),
            Err(PollEnd::Failed(e)) => Err(self.client.map_error(e, "check the order")),
        }
    }

    /// Polls the order until `done(status)`, the order is invalid or has
    /// an error, or `timeout` passes (with one last poll at the deadline).
    /// Waits: the CA's `Retry-After` if it sent one, else the client's
    /// first wait for `kind` ([`FirstPolls`]) growing [`POLL_GROWTH`]× per
    /// poll up to [`POLL_MAX_DELAY`], jittered by ±25 %; at most
    /// [`POLL_EARLY_MAX`] polls in the order's first [`POLL_EARLY_WINDOW`].
    /// What a first poll made after that first wait finds is learned.
    async fn poll(
        &mut self,
        kind: PollKind,
        timeout: Duration,
        done: impl Fn(ia::OrderStatus) -> bool,
    ) -> Result<ia::OrderStatus, PollEnd> {
        let first_polls = &self.client.shared.first_polls;
        let first = first_polls.get(kind);
        let mut schedule = PollSchedule {
            delay: first,
            deadline: Instant::now() + timeout,
            started: self.scope.started,
        };
        let mut first_poll = true;
        loop {
            let polls = self.scope.polls.load(Ordering::Relaxed);
            let retry_after = self
                .scope
                .take_retry_after()
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
            let (wait, last) = schedule.next(Instant::now(), polls, retry_after);
            // Only a first poll after the learned wait (not a `Retry-After`,
            // nor one stretched to the early window's end or cut to the
            // deadline) says something about that wait.
            let learn = first_poll && retry_after.is_none() && wait <= first.mul_f64(1.25) && !last;
            first_poll = false;
            tokio::time::sleep(wait).await;
            self.scope.polls.fetch_add(1, Ordering::Relaxed);
            self.client.shared.count_poll();
            let status = retry_bad_nonce!(self.inner.refresh().await.map(|s| s.status))
                .map_err(PollEnd::Failed)?;
            let finished = done(status)
                || status == ia::OrderStatus::Invalid
                || self.inner.state().error.is_some();
            if learn {
                first_polls.learn(kind, first, finished);
            }
            if finished {
                return Ok(status);
            }
            if last {
                return Err(PollEnd::Timeout);
            }
        }
    }

    /// Builds the error for a failed validation from the authorizations'
    /// challenge errors.
    async fn validation_failure(&mut self, order_problem: Option<CaProblem>) -> IssueError {
        let mut failures = Vec::new();
        let mut stream = self.inner.authorizations();
        while let Some(item) = stream.next().await {
            let Ok(mut handle) = item else { continue };
            // The cached state predates validation: fetch it again.
            let mut attempt = 0u32;
            let state = loop {
                match handle.refresh().await {
                    Err(e) if is_bad_nonce(&e) && attempt < NONCE_RETRIES => attempt += 1,
                    other => break other,
                }
            };
            let Ok(state) = state else { continue };
            if state.status == ia::AuthorizationStatus::Valid {
                continue;
            }
            let id = state.identifier();
            let domain = id.to_string();
            let failed = state
                .challenges
                .iter()
                .find(|c| c.error.is_some())
                .or_else(|| {
                    state
                        .challenges
                        .iter()
                        .find(|c| c.status == ia::ChallengeStatus::Invalid)
                });
            failures.push(AuthzFailure {
                domain,
                challenge: failed.map(|c| challenge_type_from_ia(&c.r#type).1),
                problem: failed.and_then(|c| c.error.as_ref()).map(convert_problem),
            });
        }
        match (failures.is_empty(), order_problem) {
            (true, Some(problem)) => IssueError::CaRefused {
                action: "validate the order".to_owned(),
                problem,
            },
            _ => IssueError::ValidationFailed { failures },
        }
    }

    /// Sends the CSR and waits for the certificate chain (PEM, leaf first)
    /// ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)),
    /// for `timeout` after the finalize request. When the answer to
    /// finalize is lost, the order is read again: still `ready`, finalize
    /// is sent again; `processing` or `valid`, it was taken. The download
    /// is retried like every read.
    pub async fn finalize(
        &mut self,
        csr_der: &[u8],
        timeout: Duration,
    ) -> Result<String, IssueError> {
        let scope = self.scope.clone();
        ORDER_SCOPE
            .scope(scope, self.finalize_in(csr_der, timeout))
            .await
    }

    async fn finalize_in(
        &mut self,
        csr_der: &[u8],
        timeout: Duration,
    ) -> Result<String, IssueError> {
        loop {
            match retry_bad_nonce!(self.inner.finalize_csr(csr_der).await) {
                Ok(()) => break,
                Err(e) if is_unsettled(&e) && self.scope.take_retry(Duration::ZERO) => {
                    log::warn!(
                        "the answer to finalize was lost; reading the order {} again",
                        self.inner.url()
                    );
                    let status = retry_bad_nonce!(self.inner.refresh().await.map(|s| s.status))
                        .map_err(|e| self.client.map_error(e, "check the order"))?;
                    match status {
                        ia::OrderStatus::Ready => {}
                        ia::OrderStatus::Processing | ia::OrderStatus::Valid => break,
                        other => return Err(self.not_issued(other)),
                    }
                }
                Err(e) => return Err(self.client.map_error(e, "finalize the order")),
            }
        }
        self.certificate_in(timeout).await
    }

    /// The certificate of a finalized order: polled until the CA has
    /// issued it (up to `timeout`), then downloaded.
    pub(super) async fn certificate_in(&mut self, timeout: Duration) -> Result<String, IssueError> {
        let status = self.inner.state().status;
        if status != ia::OrderStatus::Valid || self.inner.state().error.is_some() {
            let result = self
                .poll(PollKind::Issued, timeout, |s| s == ia::OrderStatus::Valid)
                .await;
            match result {
                Ok(ia::OrderStatus::Valid) if self.inner.state().error.is_none() => {}
                Ok(other) => return Err(self.not_issued(other)),
                Err(PollEnd::Timeout) => {
                    return Err(IssueError::Timeout {
                        what: "issue the certificate".to_owned(),
                        after: timeout,
                    });
                }
                Err(PollEnd::Failed(e)) => {
                    return Err(self.client.map_error(e, "issue the certificate"));
                }
            }
        }
        if let Some(cn) = self.preferred_chain.clone() {
            return self.download_preferred(&cn).await;
        }
        self.default_chain().await
    }

    /// Downloads the certificate of a valid order with the CA's default
    /// chain.
    pub(super) async fn default_chain(&mut self) -> Result<String, IssueError> {
        match retry_bad_nonce!(self.inner.certificate().await) {
            Ok(Some(chain)) => Ok(chain),
            Ok(None) => Err(IssueError::Internal(
                "the order is valid but has no certificate".to_owned(),
            )),
            Err(e) => Err(self.client.map_error(e, "download the certificate")),
        }
    }

    /// The error for an order that ended in `status` instead of `valid`.
    fn not_issued(&mut self, status: ia::OrderStatus) -> IssueError {
        let problem = self.inner.state().error.as_ref().map_or_else(
            || CaProblem {
                detail: Some(format!(
                    "the order is {} instead of valid",
                    format!("{status:?}").to_lowercase()
                )),
                ..CaProblem::default()
            },
            convert_problem,
        );
        IssueError::CaRefused {
            action: "issue the certificate".to_owned(),
            problem,
        }
    }
}

async fn set_ready_once(
    order: &mut ia::Order,
    authz_url: &str,
    ty: &ia::ChallengeType,
) -> Result<(), ia::Error> {
    let mut stream = order.authorizations();
    while let Some(item) = stream.next().await {
        let mut handle = item?;
        if handle.url() != authz_url {
            continue;
        }
        let Some(mut challenge) = handle.challenge(ty.clone()) else {
            return Err(ia::Error::Str(
                "the challenge vanished from the authorization",
            ));
        };
        return challenge.set_ready().await;
    }
    Err(ia::Error::Str("the authorization vanished from the order"))
}

/// The status of the challenge of type `ty` in the authorization at
/// `authz_url`, read from the CA.
async fn challenge_status(
    order: &mut ia::Order,
    authz_url: &str,
    ty: &ia::ChallengeType,
) -> Result<ia::ChallengeStatus, ia::Error> {
    let mut stream = order.authorizations();
    while let Some(item) = stream.next().await {
        let mut handle = item?;
        if handle.url() != authz_url {
            continue;
        }
        let state = handle.refresh().await?;
        return state
            .challenges
            .iter()
            .find(|c| c.r#type == *ty)
            .map(|c| c.status)
            .ok_or(ia::Error::Str(
                "the challenge vanished from the authorization",
            ));
    }
    Err(ia::Error::Str("the authorization vanished from the order"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Orders of a CA that is done `latency()` after the request: the
    /// first wait each one starts with, learned as `poll` learns it
    /// (jitter included), and whether its first poll found it done.
    fn learn_from(ca: impl Fn(u64) -> Duration, orders: u64) -> (Duration, Vec<bool>) {
        let polls = FirstPolls::default();
        let mut hits = Vec::new();
        for i in 0..orders {
            let first = polls.get(PollKind::Ready);
            // The ±25 % jitter `poll` adds, from a fixed sequence.
            let u = (i.wrapping_mul(0xD1B5_4A32_D192_ED03) >> 44) as f64 / f64::from(1u32 << 20);
            let done = first.mul_f64(0.75 + 0.5 * u) >= ca(i);
            polls.learn(PollKind::Ready, first, done);
            hits.push(done);
        }
        (polls.get(PollKind::Ready), hits)
    }

    /// A pseudo-random latency between `lo` and `hi` ms, fixed per order.
    fn spread(i: u64, lo: u64, hi: u64) -> Duration {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        Duration::from_millis(lo + x % (hi - lo + 1))
    }

    /// The first wait settles just past when the CA is usually done,
    /// whatever the CA: most first polls find the order done, and few
    /// orders wait much longer than needed.
    #[test]
    fn the_first_wait_is_learned_from_the_ca() {
        // Pebble under load: 15-30 ms, where a fixed 10 ms always misses.
        let (learned, hits) = learn_from(|i| spread(i, 15, 30), 400);
        let late = &hits[200..];
        let missed = late.iter().filter(|h| !**h).count();
        assert!(missed <= 40, "{missed} of 200 first polls too early");
        assert!(
            (Duration::from_millis(20)..=Duration::from_millis(60)).contains(&learned),
            "{learned:?}"
        );
        // Let's Encrypt: 1-3 s. From 10 ms the wait grows to seconds
        // within a few dozen orders (each miss costs one poll).
        let (learned, hits) = learn_from(|i| spread(i, 1000, 3000), 300);
        assert!(hits.iter().take(20).filter(|h| !**h).count() >= 10);
        assert!(
            (Duration::from_secs(2)..=FIRST_POLL_MAX).contains(&learned),
            "{learned:?}"
        );
        assert!(hits[100..].iter().filter(|h| !**h).count() <= 40);
        // A CA done at once: the wait shrinks to the floor, no further.
        let (learned, _) = learn_from(|_| Duration::ZERO, 400);
        assert_eq!(learned, FIRST_POLL_MIN);
        // A CA that never finishes in time: capped.
        let (learned, _) = learn_from(|_| Duration::from_secs(60), 100);
        assert_eq!(learned, FIRST_POLL_MAX);
    }

    /// Orders in flight together that started with the same first wait
    /// move it once, not once each.
    #[test]
    fn concurrent_orders_that_waited_alike_teach_the_first_wait_once() {
        let polls = FirstPolls::default();
        let first = polls.get(PollKind::Ready);
        for _ in 0..12 {
            polls.learn(PollKind::Ready, first, false);
        }
        assert_eq!(polls.get(PollKind::Ready), first.mul_f64(1.5));
        let issued = polls.get(PollKind::Issued);
        assert_eq!(issued, FINALIZE_POLL_INITIAL_DELAY, "the kinds are apart");
    }

    /// Simulates a poll loop that never sees its final state: the waits
    /// add up to the timeout exactly (the last poll is at the deadline),
    /// each is at most the cap (with jitter), and no more than
    /// `POLL_EARLY_MAX` polls fall in the order's first `POLL_EARLY_WINDOW`
    /// — but for the one last poll at a deadline inside that window, which
    /// is always made. Jitter makes each run different, so each timeout is
    /// simulated many times (a 1 s timeout takes the deadline poll as the
    /// sixth early one in about a third of runs).
    #[test]
    fn polls_end_at_the_real_timeout_capped_and_sparse_at_first() {
        for timeout in [180u64, 120, 1].repeat(200) {
            let t0 = Instant::now();
            let timeout = Duration::from_secs(timeout);
            let mut s = PollSchedule {
                delay: POLL_INITIAL_DELAY,
                deadline: t0 + timeout,
                started: t0,
            };
            let (mut now, mut polls, mut early) = (t0, 0u32, 0u32);
            loop {
                let (wait, last) = s.next(now, polls, None);
                assert!(wait <= POLL_MAX_DELAY.mul_f64(1.25), "{wait:?}");
                now += wait;
                polls += 1;
                if now - t0 < POLL_EARLY_WINDOW {
                    early += 1;
                }
                if last {
                    break;
                }
            }
            assert_eq!(now - t0, timeout, "the timeout is the real one");
            let allowed = if timeout < POLL_EARLY_WINDOW {
                POLL_EARLY_MAX + 1
            } else {
                POLL_EARLY_MAX
            };
            assert!(
                early <= allowed,
                "{early} polls in the first 3 s with a {timeout:?} timeout"
            );
        }
    }

    /// A `Retry-After` is the wait, except past the deadline, where the
    /// last poll is made at the deadline.
    #[test]
    fn retry_after_is_honoured_up_to_the_deadline() {
        let t0 = Instant::now();
        let mut s = PollSchedule {
            delay: POLL_INITIAL_DELAY,
            deadline: t0 + Duration::from_secs(60),
            started: t0,
        };
        assert_eq!(
            s.next(t0, 0, Some(Duration::from_secs(7))),
            (Duration::from_secs(7), false)
        );
        assert_eq!(
            s.next(
                t0 + Duration::from_secs(7),
                1,
                Some(Duration::from_secs(3600))
            ),
            (Duration::from_secs(53), true)
        );
    }
}
