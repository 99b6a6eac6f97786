//! The ACME protocol ([RFC 8555](https://www.rfc-editor.org/rfc/rfc8555)):
//! directory, account, order, authorizations, finalization, and the rest
//! of a certificate's life (renewal information, revocation, account
//! deactivation and key rollover).
//!
//! Why this module exists: it is the only place that names `instant-acme`
//! (pinned to 0.8.x). Everything the rest of certsmith needs from the
//! protocol is here as certsmith types, so a future switch of library, or an
//! instant-acme release that changes its API, touches this folder only.
//! Callers use the paths `certsmith_core::acme::X`; the files below are an
//! inner split by concern:
//!
//! * `transport`: the HTTP client handed to instant-acme (`TCP_NODELAY`, one
//!   keep-alive pool, per-attempt timeouts and resends), `badNonce`
//!   retries, `Retry-After`, nonces.
//! * `account`: [`AccountOptions`], [`Eab`], [`Account`]: finding or
//!   creating the account.
//! * `stored`: `account.json`, the one place that reads or writes accounts
//!   in the [`Store`](crate::store::Store).
//! * `order`: [`Order`], [`AuthzInfo`], [`ChallengeInfo`]: authorizations,
//!   validation, finalization.
//! * `lifecycle`: [`RenewalInfo`], [`RevocationReason`], revocation,
//!   deactivation, key rollover.
//! * `jws`: the requests certsmith signs itself, where instant-acme lacks
//!   the call.
//! * `chains`: alternate certificate chains and `--preferred-chain`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use instant_acme as ia;
use serde::Deserialize;

use crate::error::{CaProblem, CaSubproblem, IssueError};

mod account;
mod chains;
mod jws;
mod lifecycle;
mod order;
mod resume;
mod stored;
mod transport;

pub use account::{Account, AccountOptions, Eab};
pub use chains::top_issuer_cn;
pub use lifecycle::{RenewalInfo, RevocationReason};
pub use order::{
    AuthzInfo, AuthzStatus, ChallengeInfo, FINALIZE_POLL_INITIAL_DELAY, FIRST_POLL_MAX,
    FIRST_POLL_MIN, Order, POLL_EARLY_MAX, POLL_EARLY_WINDOW, POLL_GROWTH, POLL_INITIAL_DELAY,
    POLL_MAX_DELAY,
};
pub use resume::Resumable;
pub use stored::{AccountSummary, account_id, legacy_account_id, stored_accounts};
pub use transport::{
    ATTEMPT_TIMEOUT, ATTEMPT_TIMEOUT_ENV, BACKOFF_INITIAL, BACKOFF_MAX, DEFAULT_REQUEST_RATE,
    MAX_ATTEMPTS, ORDER_RETRIES, ORDER_RETRY_WAIT, REQUEST_BUDGET, RETRY_AFTER_CAP, RequestRate,
    TransportStats,
};

/// Let's Encrypt's production directory.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, high limits).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// ZeroSSL's directory (requires EAB).
pub const ZEROSSL: &str = "https://acme.zerossl.com/v2/DV90";

/// The staging directory of the CA whose directory is `directory_url`,
/// where a dry run orders: Let's Encrypt's for Let's Encrypt (production
/// or staging); `None` for a CA whose staging directory is not known.
pub fn staging_directory(directory_url: &str) -> Option<&'static str> {
    match directory_url {
        LETSENCRYPT | LETSENCRYPT_STAGING => Some(LETSENCRYPT_STAGING),
        _ => None,
    }
}

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("certsmith/", env!("CARGO_PKG_VERSION"));

/// Maps a `--server` value to a directory URL: a shortcut
/// (`letsencrypt`, `letsencrypt-staging`, `zerossl`) or an https URL.
pub fn resolve_server(server: &str) -> Result<String, IssueError> {
    let bad = |reason: &str| IssueError::BadServer {
        server: server.to_owned(),
        reason: reason.to_owned(),
    };
    match server {
        "letsencrypt" | "le" => return Ok(LETSENCRYPT.to_owned()),
        "letsencrypt-staging" | "le-staging" => return Ok(LETSENCRYPT_STAGING.to_owned()),
        "zerossl" => return Ok(ZEROSSL.to_owned()),
        _ => {}
    }
    let url = reqwest::Url::parse(server).map_err(|_| bad("not a known shortcut and not a URL"))?;
    if url.scheme() != "https" {
        return Err(bad(
            "an ACME directory must be an https URL (RFC 8555 §6.1)",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    Ok(url.to_string())
}

/// An ACME server and the HTTP connection pool to it. Cheap to clone; all
/// clones share one pool.
#[derive(Clone)]
pub struct AcmeClient {
    directory_url: String,
    http: reqwest::Client,
    shared: Arc<transport::Shared>,
    ca_cert: Option<std::path::PathBuf>,
}

impl fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory_url", &self.directory_url)
            .finish_non_exhaustive()
    }
}

/// What the directory says about the CA
/// ([RFC 8555 §7.1.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryInfo {
    /// The directory URL.
    pub url: String,
    /// `meta.termsOfService`: must be agreed to before creating an account.
    pub terms_of_service: Option<String>,
    /// `meta.website`.
    pub website: Option<String>,
    /// `meta.externalAccountRequired`.
    pub external_account_required: bool,
    /// Whether the CA offers ACME Renewal Information
    /// ([RFC 9773](https://www.rfc-editor.org/rfc/rfc9773)).
    pub renewal_info: bool,
    /// `meta.profiles`: the certificate profiles the CA offers, by name,
    /// with their descriptions (draft-ietf-acme-profiles); empty when it
    /// offers none.
    pub profiles: std::collections::BTreeMap<String, String>,
    /// The CA's clock: the `Date` header of the directory's answer, if any.
    pub server_date: Option<std::time::SystemTime>,
    /// This machine's clock when that answer arrived (to compare with
    /// [`server_date`](DirectoryInfo::server_date)).
    pub received_at: std::time::SystemTime,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirectoryDoc {
    new_nonce: String,
    new_account: String,
    new_order: String,
    #[serde(default)]
    renewal_info: Option<String>,
    #[serde(default)]
    revoke_cert: Option<String>,
    #[serde(default)]
    key_change: Option<String>,
    #[serde(default)]
    meta: DirectoryMeta,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirectoryMeta {
    #[serde(default)]
    terms_of_service: Option<String>,
    #[serde(default)]
    website: Option<String>,
    #[serde(default)]
    external_account_required: bool,
    #[serde(default)]
    profiles: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `meta.profiles` as name → description. The draft makes each value a
/// human-readable string; a CA that sends something else still has its
/// profile names kept (with the value as JSON).
fn profile_descriptions(
    profiles: std::collections::BTreeMap<String, serde_json::Value>,
) -> std::collections::BTreeMap<String, String> {
    profiles
        .into_iter()
        .map(|(name, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (name, text)
        })
        .collect()
}

impl AcmeClient {
    /// A client for `server` (a shortcut or URL, see [`resolve_server`]),
    /// trusting the system roots plus the certificates in `ca_cert` (PEM).
    /// Sends nothing yet.
    ///
    /// Requests follow the retry policy of docs/design.md §7: one attempt
    /// may take [`ATTEMPT_TIMEOUT`] (or the milliseconds in the environment
    /// variable [`ATTEMPT_TIMEOUT_ENV`]); requests are capped to Let's
    /// Encrypt's published rates for its directories, to
    /// [`DEFAULT_REQUEST_RATE`] for other CAs, and not at all for a CA on a
    /// loopback address.
    pub fn new(server: &str, ca_cert: Option<&Path>) -> Result<AcmeClient, IssueError> {
        let directory_url = resolve_server(server)?;
        let timeout = transport::attempt_timeout_from_env();
        let http = transport::http_client(ca_cert, timeout)?;
        Ok(AcmeClient {
            shared: Arc::new(transport::Shared::new(
                &directory_url,
                timeout,
                transport::RateCap::for_directory(&directory_url),
            )),
            directory_url,
            http,
            ca_cert: ca_cert.map(Path::to_path_buf),
        })
    }

    /// This client with `timeout` for one attempt of one request (the
    /// default is [`ATTEMPT_TIMEOUT`]). Call before the first request: the
    /// client starts afresh (new connection pool, directory not fetched).
    pub fn with_attempt_timeout(self, timeout: Duration) -> Result<AcmeClient, IssueError> {
        let timeout = timeout.max(Duration::from_millis(1));
        let http = transport::http_client(self.ca_cert.as_deref(), timeout)?;
        Ok(AcmeClient {
            shared: Arc::new(transport::Shared::new(
                &self.directory_url,
                timeout,
                transport::RateCap::for_directory(&self.directory_url),
            )),
            http,
            ..self
        })
    }

    /// This client with one cap of `rate` on every request to the CA
    /// (`None`: no cap), instead of the default for its directory. Call
    /// before the first request: the client starts afresh.
    pub fn with_request_rate(self, rate: Option<RequestRate>) -> AcmeClient {
        let timeout = self.shared.policy.attempt_timeout;
        AcmeClient {
            shared: Arc::new(transport::Shared::new(
                &self.directory_url,
                timeout,
                transport::RateCap::uniform(rate),
            )),
            ..self
        }
    }

    /// How many requests, retries and order polls this client (and its
    /// clones) made so far.
    pub fn stats(&self) -> TransportStats {
        self.shared.stats()
    }

    /// The directory URL.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// The CA's host (and port, if not 443), as used for the accounts
    /// directory of the store, e.g. `acme-v02.api.letsencrypt.org` or
    /// `localhost_14000`.
    pub fn ca_host(&self) -> String {
        match reqwest::Url::parse(&self.directory_url) {
            Ok(u) => {
                let host = u.host_str().unwrap_or("unknown");
                match u.port() {
                    Some(p) => format!("{host}_{p}"),
                    None => host.to_owned(),
                }
            }
            Err(_) => "unknown".to_owned(),
        }
    }

    /// Fetches the directory. The first request to the CA: a wrong URL or
    /// an unreachable CA fails here, before anything else happens.
    pub async fn directory(&self) -> Result<DirectoryInfo, IssueError> {
        let action = "fetch the ACME directory";
        let server = self.directory_url.as_str();
        // A CA that answers 5xx or 429 is retried, and when it never
        // recovers the error says it is unavailable (with the status): that
        // is not the same as a URL that is no ACME directory.
        let rsp = self
            .send(
                http::Method::GET,
                server,
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| IssueError::network(action, server, e))?;
        let received_at = std::time::SystemTime::now();
        let server_date = rsp
            .headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(transport::http_date);
        let (status, body) = (rsp.status, rsp.body);
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(transport::problem_error(
                action,
                status.as_u16(),
                &body,
                self.shared.take_retry_after(),
                server,
            ));
        }
        if !status.is_success() {
            return Err(IssueError::bad_answer(
                action,
                server,
                format!("the server answered HTTP {status}; is this the URL of an ACME directory?"),
            ));
        }
        let doc: DirectoryDoc = serde_json::from_slice(&body).map_err(|e| IssueError::Network {
            action: action.to_owned(),
            server: server.to_owned(),
            message: format!("the answer is not an ACME directory ({e}); check the URL"),
            source: Some(Box::new(e)),
        })?;
        self.shared.cache(server, body);
        Ok(DirectoryInfo {
            url: self.directory_url.clone(),
            terms_of_service: doc.meta.terms_of_service,
            website: doc.meta.website,
            external_account_required: doc.meta.external_account_required,
            renewal_info: doc.renewal_info.is_some(),
            profiles: profile_descriptions(doc.meta.profiles),
            server_date,
            received_at,
        })
    }

    /// Checks that the CA offers the profile `profile` (its directory's
    /// `meta.profiles`, from the cache when it was fetched): the error
    /// lists those it offers, or says it offers none.
    pub async fn check_profile(&self, profile: &str) -> Result<(), IssueError> {
        let doc = self.directory_doc().await?;
        if doc.meta.profiles.contains_key(profile) {
            return Ok(());
        }
        Err(IssueError::UnknownProfile {
            profile: profile.to_owned(),
            server: self.directory_url.clone(),
            available: doc.meta.profiles.into_keys().collect(),
        })
    }

    /// The directory, from the cache when [`AcmeClient::directory`] ran.
    async fn directory_doc(&self) -> Result<DirectoryDoc, IssueError> {
        if self.shared.cached(&self.directory_url).is_none() {
            self.directory().await?;
        }
        let body = self.shared.cached(&self.directory_url).unwrap_or_default();
        serde_json::from_slice(&body)
            .map_err(|e| IssueError::network("read the ACME directory", &self.directory_url, e))
    }

    /// Turns an instant-acme error into an [`IssueError`], keeping the
    /// underlying error of a network failure as its source.
    fn map_error(&self, e: ia::Error, action: &str) -> IssueError {
        let server = self.directory_url.as_str();
        let with_source = |message: String, source: Box<dyn std::error::Error + Send + Sync>| {
            IssueError::Network {
                action: action.to_owned(),
                server: server.to_owned(),
                message,
                source: Some(source),
            }
        };
        match e {
            ia::Error::Api(p) => {
                let problem = convert_problem(&p);
                if problem.is("rateLimited") {
                    IssueError::RateLimited {
                        action: action.to_owned(),
                        problem,
                        retry_after: self.shared.take_retry_after(),
                    }
                } else if problem.is("serverInternal") {
                    IssueError::bad_answer(action, server, problem.to_string())
                } else {
                    IssueError::CaRefused {
                        action: action.to_owned(),
                        problem,
                    }
                }
            }
            ia::Error::Other(inner) => IssueError::network(action, server, inner),
            ia::Error::Json(e) => with_source(
                format!("the CA's answer is not the ACME JSON expected: {e}"),
                Box::new(e),
            ),
            ia::Error::Str(s) => IssueError::bad_answer(
                action,
                server,
                format!("unexpected answer from the CA: {s}"),
            ),
            ia::Error::Http(e) => with_source(e.to_string(), Box::new(e)),
            ia::Error::InvalidUri(e) => {
                with_source(format!("the CA sent an invalid URL: {e}"), Box::new(e))
            }
            ia::Error::Timeout(_) => IssueError::Timeout {
                what: action.to_owned(),
                after: Duration::ZERO,
            },
            ia::Error::Unsupported(what) => {
                IssueError::InvalidRequest(format!("the CA does not support {what}"))
            }
            ia::Error::Crypto | ia::Error::KeyRejected => IssueError::Internal(format!(
                "account key operation failed while trying to {action}"
            )),
            other => IssueError::Internal(format!("{action}: {other}")),
        }
    }
}

fn convert_problem(p: &ia::Problem) -> CaProblem {
    CaProblem {
        problem_type: p.r#type.clone(),
        detail: p.detail.clone(),
        status: p.status,
        subproblems: p
            .subproblems
            .iter()
            .map(|s| CaSubproblem {
                identifier: s
                    .identifier
                    .as_ref()
                    .map(|i| i.authorized(false).to_string()),
                problem_type: s.r#type.clone(),
                detail: s.detail.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_lets_encrypt_has_a_known_staging_directory() {
        assert_eq!(
            super::staging_directory(LETSENCRYPT),
            Some(LETSENCRYPT_STAGING)
        );
        assert_eq!(
            super::staging_directory(LETSENCRYPT_STAGING),
            Some(LETSENCRYPT_STAGING)
        );
        assert_eq!(super::staging_directory(ZEROSSL), None);
    }

    use super::*;

    #[test]
    fn server_shortcuts_and_urls() {
        assert_eq!(resolve_server("letsencrypt").expect("ok"), LETSENCRYPT);
        assert_eq!(
            resolve_server("letsencrypt-staging").expect("ok"),
            LETSENCRYPT_STAGING
        );
        assert_eq!(resolve_server("zerossl").expect("ok"), ZEROSSL);
        assert_eq!(
            resolve_server("https://localhost:14000/dir").expect("ok"),
            "https://localhost:14000/dir"
        );
        let e = resolve_server("http://localhost:14000/dir").expect_err("http");
        assert!(e.to_string().contains("https"), "{e}");
        assert!(resolve_server("letsencrypt-prod").is_err());
    }

    #[test]
    fn ca_host_includes_port() {
        let c = AcmeClient::new("https://localhost:14000/dir", None).expect("client");
        assert_eq!(c.ca_host(), "localhost_14000");
        let c = AcmeClient::new("letsencrypt", None).expect("client");
        assert_eq!(c.ca_host(), "acme-v02.api.letsencrypt.org");
    }

    #[test]
    fn bad_ca_cert_is_a_usage_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").expect("write");
        let e = AcmeClient::new("letsencrypt", Some(&p)).expect_err("no cert");
        assert_eq!(e.class(), crate::error::ErrorClass::Usage);
        assert!(e.to_string().contains("ca.pem"), "{e}");
        let e = AcmeClient::new("letsencrypt", Some(&dir.path().join("missing.pem")))
            .expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
