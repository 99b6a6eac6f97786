//! Orders ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)):
//! placing one, its authorizations and challenges, waiting for validation,
//! finalizing and downloading the certificate.
//!
//! Why this module exists: it turns instant-acme's order types into the
//! certsmith types the engine works with ([`Order`], [`AuthzInfo`],
//! [`ChallengeInfo`]), and adds what the engine relies on: `badNonce`
//! retries on every call, polling that starts fast (a local CA validates in
//! milliseconds) and honours `Retry-After`, and an error that lists each
//! failed authorization with the CA's problem document.

use std::fmt;
use std::time::Duration;

use certsmith_plugin_api::ChallengeType;
use instant_acme as ia;

use super::transport::{NONCE_RETRIES, is_bad_nonce, retry_bad_nonce};
use super::{Account, AcmeClient, convert_problem};
use crate::error::{AuthzFailure, CaProblem, IssueError};

/// First wait before polling an order for validation; validation on a
/// local CA takes a few milliseconds, on Let's Encrypt a second or two.
const POLL_INITIAL_DELAY: Duration = Duration::from_millis(10);
/// First wait before polling a finalized order; issuance is usually done
/// by the time the finalize response arrives or very soon after.
pub(super) const FINALIZE_POLL_INITIAL_DELAY: Duration = Duration::from_millis(5);
/// Growth of the wait between polls (unbounded, but the CA's Retry-After
/// overrides it, and the timeout ends it).
pub(super) const POLL_BACKOFF: f32 = 1.6;

impl Account {
    /// Places an order for `identifiers` (ASCII, `*.` allowed)
    /// ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)).
    pub async fn new_order(&self, identifiers: &[String]) -> Result<Order, IssueError> {
        let ids = dns_identifiers(identifiers);
        let new = ia::NewOrder::new(&ids);
        let inner = retry_bad_nonce!(self.inner.new_order(&new).await)
            .map_err(|e| self.client.map_error(e, "create the order"))?;
        Ok(self.order(inner))
    }

    pub(super) fn order(&self, inner: ia::Order) -> Order {
        Order {
            inner,
            thumbprint: self.inner.key_thumbprint().to_owned(),
            client: self.client.clone(),
        }
    }

    /// Places an order like [`Account::new_order`], naming the certificate
    /// it replaces (`replaces`, [RFC 9773 §5](https://www.rfc-editor.org/rfc/rfc9773#section-5))
    /// when `replaces` is a certificate identifier and the CA offers ARI.
    pub async fn new_order_replacing(
        &self,
        identifiers: &[String],
        replaces: Option<&str>,
    ) -> Result<Order, IssueError> {
        let Some((aki, serial)) = replaces.and_then(|r| r.split_once('.')) else {
            return self.new_order(identifiers).await;
        };
        let ids = dns_identifiers(identifiers);
        let cert_id = ia::CertificateIdentifier {
            authority_key_identifier: aki.into(),
            serial: serial.into(),
        };
        let new = ia::NewOrder::new(&ids).replaces(cert_id);
        match retry_bad_nonce!(self.inner.new_order(&new).await) {
            Ok(inner) => Ok(self.order(inner)),
            // The CA has no ARI after all, or refuses this replacement
            // (already replaced, unknown): order without it.
            Err(ia::Error::Unsupported(_)) => self.new_order(identifiers).await,
            Err(ia::Error::Other(e)) if e.to_string().contains("replaces field mismatch") => {
                log::info!("the CA ignored `replaces`; ordering without it");
                self.new_order(identifiers).await
            }
            Err(ia::Error::Api(p)) if !is_rate_limit(&p) => {
                log::info!(
                    "the CA refused the order naming the certificate it replaces ({}); ordering without `replaces`",
                    convert_problem(&p)
                );
                self.new_order(identifiers).await
            }
            Err(e) => Err(self.client.map_error(e, "create the order")),
        }
    }
}

fn is_rate_limit(p: &ia::Problem) -> bool {
    p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited")
}

fn dns_identifiers(identifiers: &[String]) -> Vec<ia::Identifier> {
    identifiers
        .iter()
        .map(|d| ia::Identifier::Dns(d.clone()))
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
    pub async fn set_ready(
        &mut self,
        authz_url: &str,
        challenge_type: ChallengeType,
    ) -> Result<(), IssueError> {
        let result = retry_bad_nonce!(
            set_ready_once(
                &mut self.inner,
                authz_url,
                challenge_type_to_ia(challenge_type)
            )
            .await
        );
        result.map_err(|e| self.client.map_error(e, "start the validation"))
    }

    /// Polls the order until the CA has validated every authorization,
    /// honouring `Retry-After`. On failure the error lists each failed
    /// authorization with the CA's problem document.
    pub async fn poll_ready(&mut self, timeout: Duration) -> Result<(), IssueError> {
        let policy = ia::RetryPolicy::new()
            .initial_delay(POLL_INITIAL_DELAY)
            .backoff(POLL_BACKOFF)
            .timeout(timeout);
        let result = retry_bad_nonce!(self.inner.poll_ready(&policy).await);
        match result {
            Ok(ia::OrderStatus::Ready) => Ok(()),
            Ok(ia::OrderStatus::Invalid) => Err(self.validation_failure(None).await),
            Ok(other) => Err(IssueError::Internal(format!(
                "the order is {other:?} while waiting for validation"
            ))),
            Err(ia::Error::Timeout(_)) => Err(IssueError::Timeout {
                what: "validate the challenges".to_owned(),
                after: timeout,
            }),
            Err(ia::Error::Api(p))
                if self.inner.state().error.is_some()
                    || self.inner.state().status == ia::OrderStatus::Invalid =>
            {
                Err(self.validation_failure(Some(convert_problem(&p))).await)
            }
            Err(e) => Err(self.client.map_error(e, "check the order")),
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
    /// ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)).
    pub async fn finalize(
        &mut self,
        csr_der: &[u8],
        timeout: Duration,
    ) -> Result<String, IssueError> {
        retry_bad_nonce!(self.inner.finalize_csr(csr_der).await)
            .map_err(|e| self.client.map_error(e, "finalize the order"))?;
        if self.inner.state().status == ia::OrderStatus::Valid {
            let chain = retry_bad_nonce!(self.inner.certificate().await)
                .map_err(|e| self.client.map_error(e, "download the certificate"))?;
            if let Some(chain) = chain {
                return Ok(chain);
            }
        }
        let policy = ia::RetryPolicy::new()
            .initial_delay(FINALIZE_POLL_INITIAL_DELAY)
            .backoff(POLL_BACKOFF)
            .timeout(timeout);
        match retry_bad_nonce!(self.inner.poll_certificate(&policy).await) {
            Ok(chain) => Ok(chain),
            Err(ia::Error::Timeout(_)) => Err(IssueError::Timeout {
                what: "issue the certificate".to_owned(),
                after: timeout,
            }),
            Err(e) => Err(self.client.map_error(e, "issue the certificate")),
        }
    }
}

async fn set_ready_once(
    order: &mut ia::Order,
    authz_url: &str,
    ty: ia::ChallengeType,
) -> Result<(), ia::Error> {
    let mut stream = order.authorizations();
    while let Some(item) = stream.next().await {
        let mut handle = item?;
        if handle.url() != authz_url {
            continue;
        }
        let Some(mut challenge) = handle.challenge(ty) else {
            return Err(ia::Error::Str(
                "the challenge vanished from the authorization",
            ));
        };
        return challenge.set_ready().await;
    }
    Err(ia::Error::Str("the authorization vanished from the order"))
}
