//! The ACME protocol ([RFC 8555](https://www.rfc-editor.org/rfc/rfc8555)):
//! directory, account, order, authorizations, finalization.
//!
//! Why this module exists: it is the only place that names `instant-acme`
//! (pinned to 0.8.x). Everything the rest of certsmith needs from the
//! protocol is here as certsmith types, so a future switch of library, or an
//! instant-acme release that changes its API, touches one file.
//!
//! It also owns the HTTP transport. instant-acme's default client leaves
//! Nagle's algorithm on, which costs about 40 ms per request on a keep-alive
//! connection (delayed ACK meets a small second write); an order takes ten
//! requests or so. [`AcmeClient`] hands instant-acme a `reqwest` client
//! instead, with `TCP_NODELAY`, one keep-alive pool shared by every order,
//! `User-Agent: certsmith/<version>`
//! ([RFC 8555 §6.1](https://www.rfc-editor.org/rfc/rfc8555#section-6.1)) and
//! an optional extra CA bundle (`--ca-cert`, for private CAs and Pebble).
//!
//! Two robustness measures sit on top of instant-acme:
//!
//! * `badNonce` ([RFC 8555 §6.5](https://www.rfc-editor.org/rfc/rfc8555#section-6.5)):
//!   instant-acme retries a rejected nonce three times; a busy CA (or Pebble
//!   with `PEBBLE_WFE_NONCEREJECT`) can reject more, so every operation is
//!   retried a few more times when the final error is still `badNonce`.
//!   A request refused for its nonce was not processed, so this is safe.
//! * `Retry-After` ([RFC 8555 §6.6](https://www.rfc-editor.org/rfc/rfc8555#section-6.6)):
//!   polling honours it (instant-acme's `RetryPolicy`), and the value sent
//!   with a rate-limit response is kept for the error message.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use certsmith_plugin_api::ChallengeType;
use http_body::Body as _;
use instant_acme as ia;
use serde::{Deserialize, Serialize};

use crate::error::{AuthzFailure, CaProblem, CaSubproblem, IssueError};
use crate::store::Store;

/// Let's Encrypt's production directory.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, high limits).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// ZeroSSL's directory (requires EAB).
pub const ZEROSSL: &str = "https://acme.zerossl.com/v2/DV90";

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("certsmith/", env!("CARGO_PKG_VERSION"));

/// How many more times an operation is retried after instant-acme's own
/// three attempts all met `badNonce`.
const NONCE_RETRIES: u32 = 8;
/// First wait before polling an order for validation; validation on a
/// local CA takes a few milliseconds, on Let's Encrypt a second or two.
const POLL_INITIAL_DELAY: Duration = Duration::from_millis(10);
/// First wait before polling a finalized order; issuance is usually done
/// by the time the finalize response arrives or very soon after.
const FINALIZE_POLL_INITIAL_DELAY: Duration = Duration::from_millis(5);
/// Growth of the wait between polls (unbounded, but the CA's Retry-After
/// overrides it, and the timeout ends it).
const POLL_BACKOFF: f32 = 1.6;

/// Retries an instant-acme operation while its error is `badNonce`.
macro_rules! retry_bad_nonce {
    ($op:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $op {
                Err(e) if is_bad_nonce(&e) && attempt < NONCE_RETRIES => {
                    attempt += 1;
                    log::debug!("bad nonce, retrying (attempt {attempt})");
                }
                other => break other,
            }
        }
    }};
}

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

/// Shared between the client handed to instant-acme and ours.
#[derive(Default)]
struct Shared {
    /// Bodies of GET responses fetched already (the directory), so that
    /// instant-acme does not fetch them again.
    cache: Mutex<HashMap<String, Bytes>>,
    /// The last `Retry-After` seen on a 429/503 response.
    retry_after: Mutex<Option<SystemTime>>,
}

impl Shared {
    fn cached(&self, url: &str) -> Option<Bytes> {
        self.cache.lock().ok()?.get(url).cloned()
    }

    fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after.lock().ok()?.take()
    }
}

/// An ACME server and the HTTP connection pool to it. Cheap to clone; all
/// clones share one pool.
#[derive(Clone)]
pub struct AcmeClient {
    directory_url: String,
    http: reqwest::Client,
    shared: Arc<Shared>,
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
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirectoryDoc {
    new_nonce: String,
    #[allow(dead_code)]
    new_account: String,
    #[allow(dead_code)]
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
}

impl AcmeClient {
    /// A client for `server` (a shortcut or URL, see [`resolve_server`]),
    /// trusting the system roots plus the certificates in `ca_cert` (PEM).
    /// Sends nothing yet.
    pub fn new(server: &str, ca_cert: Option<&Path>) -> Result<AcmeClient, IssueError> {
        let directory_url = resolve_server(server)?;
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
        let http = builder.build().map_err(|e| match ca_cert {
            Some(path) => IssueError::CaCert {
                path: path.display().to_string(),
                reason: error_chain(&e),
            },
            None => IssueError::Internal(format!("cannot set up HTTPS: {}", error_chain(&e))),
        })?;
        Ok(AcmeClient {
            directory_url,
            http,
            shared: Arc::new(Shared::default()),
        })
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

    fn shim(&self) -> Box<dyn ia::HttpClient> {
        Box::new(HttpShim {
            http: self.http.clone(),
            shared: self.shared.clone(),
            attempt_timeout: ATTEMPT_TIMEOUT,
        })
    }

    /// Fetches the directory. The first request to the CA: a wrong URL or
    /// an unreachable CA fails here, before anything else happens.
    pub async fn directory(&self) -> Result<DirectoryInfo, IssueError> {
        let action = "fetch the ACME directory";
        let net = |message: String| IssueError::Network {
            action: action.to_owned(),
            server: self.directory_url.clone(),
            message,
        };
        let rsp = self
            .http
            .get(&self.directory_url)
            .send()
            .await
            .map_err(|e| net(error_chain(&e)))?;
        let status = rsp.status();
        let body = rsp.bytes().await.map_err(|e| net(error_chain(&e)))?;
        if !status.is_success() {
            return Err(net(format!(
                "the server answered HTTP {status}; is this the URL of an ACME directory?"
            )));
        }
        let doc: DirectoryDoc = serde_json::from_slice(&body).map_err(|e| {
            net(format!(
                "the answer is not an ACME directory ({e}); check the URL"
            ))
        })?;
        if let Ok(mut cache) = self.shared.cache.lock() {
            cache.insert(self.directory_url.clone(), body);
        }
        Ok(DirectoryInfo {
            url: self.directory_url.clone(),
            terms_of_service: doc.meta.terms_of_service,
            website: doc.meta.website,
            external_account_required: doc.meta.external_account_required,
            renewal_info: doc.renewal_info.is_some(),
        })
    }

    /// Loads the account for (this directory, `opts` contact) from `store`,
    /// or creates it at the CA and stores it. Returns whether it was created.
    /// Fetches the directory first (see [`AcmeClient::directory`]).
    pub async fn account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<(Account, bool), IssueError> {
        let dir = self.directory().await?;
        let contact = opts.contact()?;
        let id = account_id(&self.directory_url, &contact);
        if let Some(bytes) = store.load_account(&self.ca_host(), &id)? {
            let path = store.account_path(&self.ca_host(), &id);
            let stored: StoredAccount =
                serde_json::from_slice(&bytes).map_err(|e| crate::store::StoreError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            stored.ensure_active(&path)?;
            let creds: ia::AccountCredentials = serde_json::from_value(stored.credentials)
                .map_err(|e| crate::store::StoreError::Corrupt {
                    path,
                    reason: format!("credentials: {e}"),
                })?;
            let inner = ia::Account::builder_with_http(self.shim())
                .from_credentials(creds)
                .await
                .map_err(|e| self.map_error(e, "load the account"))?;
            return Ok((
                Account {
                    url: inner.id().to_owned(),
                    inner,
                    client: self.clone(),
                },
                false,
            ));
        }
        let account = self.create_account(store, &dir, opts).await?;
        Ok((account, true))
    }

    /// Creates a new account at the CA and stores it, replacing any stored
    /// one for the same (directory, contact).
    pub async fn create_account(
        &self,
        store: &Store,
        dir: &DirectoryInfo,
        opts: &AccountOptions,
    ) -> Result<Account, IssueError> {
        if let Some(url) = &dir.terms_of_service
            && !opts.agree_tos
        {
            return Err(IssueError::TermsNotAgreed { url: url.clone() });
        }
        if dir.external_account_required && opts.eab.is_none() {
            return Err(IssueError::EabRequired {
                server: self.directory_url.clone(),
            });
        }
        let contact = opts.contact()?;
        let contact_refs: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = ia::NewAccount {
            contact: &contact_refs,
            terms_of_service_agreed: opts.agree_tos,
            only_return_existing: false,
        };
        let eab = opts
            .eab
            .as_ref()
            .map(|e| ia::ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
        let (inner, creds) = retry_bad_nonce!(
            ia::Account::builder_with_http(self.shim())
                .create(&new, self.directory_url.clone(), eab.as_ref())
                .await
        )
        .map_err(|e| self.map_error(e, "create the account"))?;
        let stored = StoredAccount {
            directory: self.directory_url.clone(),
            contact,
            account_url: inner.id().to_owned(),
            created_at: now_rfc3339(),
            credentials: serde_json::to_value(&creds)
                .map_err(|e| IssueError::Internal(format!("cannot serialize the account: {e}")))?,
            deactivated_at: None,
            key_changed_at: None,
        };
        self.rewrite_account(store, &stored).await?;
        Ok(Account {
            url: inner.id().to_owned(),
            inner,
            client: self.clone(),
        })
    }

    /// Turns an instant-acme error into an [`IssueError`].
    fn map_error(&self, e: ia::Error, action: &str) -> IssueError {
        let net = |message: String| IssueError::Network {
            action: action.to_owned(),
            server: self.directory_url.clone(),
            message,
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
                    net(problem.to_string())
                } else {
                    IssueError::CaRefused {
                        action: action.to_owned(),
                        problem,
                    }
                }
            }
            ia::Error::Other(inner) => net(error_chain(inner.as_ref())),
            ia::Error::Json(e) => net(format!(
                "the CA's answer is not the ACME JSON expected: {e}"
            )),
            ia::Error::Str(s) => net(format!("unexpected answer from the CA: {s}")),
            ia::Error::Http(e) => net(e.to_string()),
            ia::Error::InvalidUri(e) => net(format!("the CA sent an invalid URL: {e}")),
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

fn is_bad_nonce(e: &ia::Error) -> bool {
    matches!(e, ia::Error::Api(p) if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce"))
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

/// An error and its sources, joined with ": ", without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The store's id of an account: a digest of the directory URL and contact.
pub fn account_id(directory_url: &str, contact: &[String]) -> String {
    let mut input = directory_url.as_bytes().to_vec();
    input.push(b'\n');
    input.extend_from_slice(contact.join(",").as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `account.json`. Holds the account's private key: never `Debug`.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    contact: Vec<String>,
    account_url: String,
    created_at: String,
    credentials: serde_json::Value,
    /// Set by `certsmith account deactivate`: the account is unusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deactivated_at: Option<String>,
    /// Set by `certsmith account rollover`: when the key last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_changed_at: Option<String>,
}

impl StoredAccount {
    /// Refuses an account this store has seen deactivated: the CA would
    /// refuse it too, with a less helpful message.
    fn ensure_active(&self, path: &Path) -> Result<(), IssueError> {
        match &self.deactivated_at {
            Some(at) => Err(IssueError::AccountDeactivated {
                url: self.account_url.clone(),
                at: at.clone(),
                path: path.to_path_buf(),
            }),
            None => Ok(()),
        }
    }
}

/// External account binding credentials
/// ([RFC 8555 §7.3.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4)).
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct Eab {
    kid: String,
    hmac_key: Vec<u8>,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"[redacted]")
            .finish()
    }
}

impl Eab {
    /// Builds EAB credentials from the key id and the base64url HMAC key the
    /// CA gave (padding and the standard alphabet are accepted too).
    pub fn new(kid: &str, hmac_key_b64: &str) -> Result<Eab, IssueError> {
        use base64::Engine as _;
        if kid.trim().is_empty() {
            return Err(IssueError::Eab(
                "the key id (--eab-kid) is empty".to_owned(),
            ));
        }
        let trimmed = hmac_key_b64.trim().trim_end_matches('=');
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
            .map_err(|_| {
                IssueError::Eab("the HMAC key (--eab-hmac-key) is not base64url".to_owned())
            })?;
        if key.is_empty() {
            return Err(IssueError::Eab(
                "the HMAC key (--eab-hmac-key) is empty".to_owned(),
            ));
        }
        Ok(Eab {
            kid: kid.trim().to_owned(),
            hmac_key: key,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// How to find or create the account.
#[derive(Clone, Debug, Default)]
pub struct AccountOptions {
    /// Contact e-mail address (without `mailto:`).
    pub email: Option<String>,
    /// Whether the operator agreed to the CA's terms of service.
    pub agree_tos: bool,
    /// External account binding, if the CA needs it.
    pub eab: Option<Eab>,
}

impl AccountOptions {
    /// The contact URLs ([RFC 8555 §7.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.3)).
    pub fn contact(&self) -> Result<Vec<String>, IssueError> {
        let Some(email) = &self.email else {
            return Ok(Vec::new());
        };
        let email = email.trim().trim_start_matches("mailto:");
        let valid = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        }) && !email
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, ',' | '<' | '>' | '?'));
        if !valid {
            return Err(IssueError::InvalidRequest(format!(
                "invalid --email '{email}': give one address like admin@example.com"
            )));
        }
        Ok(vec![format!("mailto:{email}")])
    }
}

/// An ACME account, ready to place orders. Cheap to clone.
#[derive(Clone)]
pub struct Account {
    inner: ia::Account,
    url: String,
    client: AcmeClient,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The account URL at the CA.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Places an order for `identifiers` (ASCII, `*.` allowed)
    /// ([RFC 8555 §7.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.4)).
    pub async fn new_order(&self, identifiers: &[String]) -> Result<Order, IssueError> {
        let ids: Vec<ia::Identifier> = identifiers
            .iter()
            .map(|d| ia::Identifier::Dns(d.clone()))
            .collect();
        let new = ia::NewOrder::new(&ids);
        let inner = retry_bad_nonce!(self.inner.new_order(&new).await)
            .map_err(|e| self.client.map_error(e, "create the order"))?;
        Ok(Order {
            inner,
            thumbprint: self.inner.key_thumbprint().to_owned(),
            client: self.client.clone(),
        })
    }
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
    inner: ia::Order,
    thumbprint: String,
    client: AcmeClient,
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

/// The HTTP client handed to instant-acme: our `reqwest` pool.
struct HttpShim {
    http: reqwest::Client,
    shared: Arc<Shared>,
    /// [`ATTEMPT_TIMEOUT`], shorter in tests.
    attempt_timeout: Duration,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<ia::BytesResponse, ia::Error>> + Send>>;

/// How long one attempt of one request may take, and how many attempts a
/// request gets when it times out or cannot connect.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
const ATTEMPTS: u32 = 3;

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
                && let Some(at) = headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
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

// ---------------------------------------------------------------------------
// Certificate lifecycle: renewal information, revocation, account changes.
//
// instant-acme covers revocation with the account key and key rollover; the
// rest is done here with a small JWS signer (RFC 7515, flattened JSON
// serialization, RFC 8555 §6.2): revocation signed with the certificate's
// own key (RFC 8555 §7.6, for a lost account) and deactivation (§7.3.6),
// whose answer instant-acme does not check.

/// The CA's suggested renewal window for one certificate
/// ([RFC 9773 §4.2](https://www.rfc-editor.org/rfc/rfc9773#section-4.2)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalInfo {
    /// Window start.
    pub start: time::OffsetDateTime,
    /// Window end.
    pub end: time::OffsetDateTime,
    /// `explanationURL`, if the CA gave one.
    pub explanation_url: Option<String>,
    /// When to ask again (`Retry-After`), if the CA said.
    pub retry_after: Option<SystemTime>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenewalInfoDoc {
    suggested_window: WindowDoc,
    #[serde(default, rename = "explanationURL")]
    explanation_url: Option<String>,
}

#[derive(Deserialize)]
struct WindowDoc {
    #[serde(with = "time::serde::rfc3339")]
    start: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    end: time::OffsetDateTime,
}

/// Why a certificate is revoked
/// ([RFC 5280 §5.3.1](https://www.rfc-editor.org/rfc/rfc5280#section-5.3.1));
/// the reasons a subscriber may give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given (code 0).
    Unspecified,
    /// The private key was exposed (code 1).
    KeyCompromise,
    /// The subscriber's affiliation changed (code 3).
    AffiliationChanged,
    /// A newer certificate replaces it (code 4).
    Superseded,
    /// The names are no longer in use (code 5).
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason, as documented.
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::AffiliationChanged,
    ];

    /// The CRL reason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
        }
    }

    /// The name on the command line and in `lineage.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
        }
    }

    fn to_ia(self) -> ia::RevocationReason {
        match self {
            RevocationReason::Unspecified => ia::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => ia::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => ia::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => ia::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => ia::RevocationReason::CessationOfOperation,
        }
    }
}

/// A stored account, as `certsmith account show` describes it. Holds no key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountSummary {
    /// The account URL at the CA.
    pub url: String,
    /// The directory URL.
    pub server: String,
    /// Contact URLs (`mailto:`).
    pub contact: Vec<String>,
    /// The account key's type, e.g. `ec-p256`.
    pub key_type: String,
    /// The account key's JWK thumbprint
    /// ([RFC 7638](https://www.rfc-editor.org/rfc/rfc7638)), base64url.
    pub key_thumbprint: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// When its key last changed, RFC 3339.
    pub key_changed_at: Option<String>,
    /// When it was deactivated, RFC 3339.
    pub deactivated_at: Option<String>,
    /// Its `account.json`.
    pub path: std::path::PathBuf,
}

/// Every account in `store`, sorted by server then contact.
pub fn stored_accounts(store: &Store) -> Result<Vec<AccountSummary>, IssueError> {
    let dir = store.root().join("accounts");
    let mut out = Vec::new();
    let hosts = match std::fs::read_dir(&dir) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(crate::store::StoreError::Io {
                action: "read",
                path: dir,
                source: e,
            }
            .into());
        }
    };
    for host in hosts.flatten() {
        let Ok(ids) = std::fs::read_dir(host.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let path = id.path().join("account.json");
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            out.push(summarize(&bytes, path)?);
        }
    }
    out.sort_by(|a, b| (&a.server, &a.contact).cmp(&(&b.server, &b.contact)));
    Ok(out)
}

fn parse_stored(bytes: &[u8], path: &Path) -> Result<StoredAccount, IssueError> {
    serde_json::from_slice(bytes).map_err(|e| {
        crate::store::StoreError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}

fn stored_key(stored: &StoredAccount, path: &Path) -> Result<JwsKey, IssueError> {
    let corrupt = |reason: String| -> IssueError {
        crate::store::StoreError::Corrupt {
            path: path.to_owned(),
            reason,
        }
        .into()
    };
    let creds: ia::AccountCredentials = serde_json::from_value(stored.credentials.clone())
        .map_err(|e| corrupt(format!("credentials: {e}")))?;
    JwsKey::from_der(creds.private_key().secret_pkcs8_der())
        .map_err(|e| corrupt(format!("account key: {e}")))
}

fn summarize(bytes: &[u8], path: std::path::PathBuf) -> Result<AccountSummary, IssueError> {
    let stored = parse_stored(bytes, &path)?;
    let key = stored_key(&stored, &path)?;
    Ok(AccountSummary {
        url: stored.account_url,
        server: stored.directory,
        contact: stored.contact,
        key_type: key.key_type().to_owned(),
        key_thumbprint: key.thumbprint(),
        created_at: stored.created_at,
        key_changed_at: stored.key_changed_at,
        deactivated_at: stored.deactivated_at,
        path,
    })
}

impl AcmeClient {
    /// The directory, from the cache when [`AcmeClient::directory`] ran.
    async fn directory_doc(&self) -> Result<DirectoryDoc, IssueError> {
        if self.shared.cached(&self.directory_url).is_none() {
            self.directory().await?;
        }
        let body = self.shared.cached(&self.directory_url).unwrap_or_default();
        serde_json::from_slice(&body).map_err(|e| IssueError::Network {
            action: "read the ACME directory".to_owned(),
            server: self.directory_url.clone(),
            message: e.to_string(),
        })
    }

    /// Whether the CA offers renewal information (RFC 9773).
    pub async fn offers_renewal_info(&self) -> Result<bool, IssueError> {
        Ok(self.directory_doc().await?.renewal_info.is_some())
    }

    /// Fetches the suggested renewal window of the certificate `cert_id`
    /// (`base64url(AKI keyIdentifier).base64url(serial)`,
    /// [RFC 9773 §4.1](https://www.rfc-editor.org/rfc/rfc9773#section-4.1)).
    /// `None` when the CA's directory has no `renewalInfo`. An unsigned GET.
    pub async fn renewal_info(&self, cert_id: &str) -> Result<Option<RenewalInfo>, IssueError> {
        let Some(base) = self.directory_doc().await?.renewal_info else {
            return Ok(None);
        };
        let url = format!("{}/{cert_id}", base.trim_end_matches('/'));
        let action = "fetch the renewal information";
        let net = |message: String| IssueError::Network {
            action: action.to_owned(),
            server: url.clone(),
            message,
        };
        let rsp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| net(error_chain(&e)))?;
        let status = rsp.status();
        let retry_after = rsp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = rsp.bytes().await.map_err(|e| net(error_chain(&e)))?;
        if !status.is_success() {
            return Err(problem_error(
                action,
                status.as_u16(),
                &body,
                retry_after,
                &url,
            ));
        }
        let doc: RenewalInfoDoc = serde_json::from_slice(&body).map_err(|e| {
            net(format!(
                "the answer is not RFC 9773 renewal information: {e}"
            ))
        })?;
        if doc.suggested_window.end < doc.suggested_window.start {
            return Err(net("the suggested window ends before it starts".to_owned()));
        }
        Ok(Some(RenewalInfo {
            start: doc.suggested_window.start,
            end: doc.suggested_window.end,
            explanation_url: doc.explanation_url,
            retry_after,
        }))
    }

    /// The stored account for (this directory, `opts` contact), loaded
    /// without creating one.
    async fn stored_account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<(StoredAccount, std::path::PathBuf), IssueError> {
        let contact = opts.contact()?;
        let id = account_id(&self.directory_url, &contact);
        let path = store.account_path(&self.ca_host(), &id);
        let Some(bytes) = store.load_account(&self.ca_host(), &id)? else {
            let who = if contact.is_empty() {
                "without a contact".to_owned()
            } else {
                format!("for {}", contact.join(", "))
            };
            return Err(IssueError::InvalidRequest(format!(
                "no account is stored for {} {who} (looked for {}); pass the --server and --email the account was created with",
                self.directory_url,
                path.display()
            )));
        };
        Ok((parse_stored(&bytes, &path)?, path))
    }

    /// Describes the stored account for `opts`, without contacting the CA.
    pub fn describe_account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<Option<AccountSummary>, IssueError> {
        let contact = opts.contact()?;
        let id = account_id(&self.directory_url, &contact);
        let path = store.account_path(&self.ca_host(), &id);
        match store.load_account(&self.ca_host(), &id)? {
            Some(bytes) => Ok(Some(summarize(&bytes, path)?)),
            None => Ok(None),
        }
    }

    /// Revokes `cert_der` signed with the account key
    /// ([RFC 8555 §7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)).
    pub async fn revoke(
        &self,
        store: &Store,
        opts: &AccountOptions,
        cert_der: &[u8],
        reason: RevocationReason,
    ) -> Result<(), IssueError> {
        let (stored, path) = self.stored_account(store, opts).await?;
        stored.ensure_active(&path)?;
        let creds: ia::AccountCredentials =
            serde_json::from_value(stored.credentials).map_err(|e| {
                crate::store::StoreError::Corrupt {
                    path: path.clone(),
                    reason: format!("credentials: {e}"),
                }
            })?;
        let account = ia::Account::builder_with_http(self.shim())
            .from_credentials(creds)
            .await
            .map_err(|e| self.map_error(e, "load the account"))?;
        let der = rustls::pki_types::CertificateDer::from(cert_der.to_vec());
        let request = ia::RevocationRequest {
            certificate: &der,
            reason: Some(reason.to_ia()),
        };
        retry_bad_nonce!(account.revoke(&request).await)
            .map_err(|e| self.map_error(e, "revoke the certificate"))
    }

    /// Revokes `cert_der` with a request signed by the certificate's own
    /// private key (`key_pem`), carried as a JWK: no account needed
    /// ([RFC 8555 §7.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.6)).
    pub async fn revoke_with_key(
        &self,
        cert_der: &[u8],
        key_pem: &str,
        reason: RevocationReason,
    ) -> Result<(), IssueError> {
        use base64::Engine as _;
        let key = JwsKey::from_pem(key_pem)
            .map_err(|e| IssueError::InvalidRequest(format!("cannot use the key file: {e}")))?;
        let doc = self.directory_doc().await?;
        let Some(url) = doc.revoke_cert.clone() else {
            return Err(IssueError::InvalidRequest(format!(
                "the CA {} offers no revokeCert endpoint",
                self.directory_url
            )));
        };
        let payload = serde_json::json!({
            "certificate": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert_der),
            "reason": reason.code(),
        });
        self.post_jws(
            &doc,
            &url,
            &key,
            KeyRef::Jwk,
            Some(&payload),
            "revoke the certificate",
        )
        .await
        .map(|_| ())
    }

    /// Deactivates the stored account for `opts` at the CA and marks it
    /// deactivated in the store
    /// ([RFC 8555 §7.3.6](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6)).
    /// Irreversible.
    pub async fn deactivate_account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<AccountSummary, IssueError> {
        let (mut stored, path) = self.stored_account(store, opts).await?;
        stored.ensure_active(&path)?;
        let key = stored_key(&stored, &path)?;
        let doc = self.directory_doc().await?;
        let url = stored.account_url.clone();
        let body = self
            .post_jws(
                &doc,
                &url,
                &key,
                KeyRef::Kid(&url),
                Some(&serde_json::json!({"status": "deactivated"})),
                "deactivate the account",
            )
            .await?;
        let status = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
        if status.as_deref() != Some("deactivated") {
            return Err(IssueError::Network {
                action: "deactivate the account".to_owned(),
                server: url,
                message: format!(
                    "the CA answered status {:?}, not \"deactivated\"",
                    status.unwrap_or_default()
                ),
            });
        }
        stored.deactivated_at = Some(now_rfc3339());
        self.rewrite_account(store, &stored).await?;
        let json = serde_json::to_vec(&stored)
            .map_err(|e| IssueError::Internal(format!("cannot serialize the account: {e}")))?;
        summarize(&json, path)
    }

    /// Replaces the stored account's key with a new one at the CA
    /// ([RFC 8555 §7.3.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.3.5))
    /// and stores it. The account URL stays the same.
    pub async fn rollover_account(
        &self,
        store: &Store,
        opts: &AccountOptions,
    ) -> Result<AccountSummary, IssueError> {
        let (mut stored, path) = self.stored_account(store, opts).await?;
        stored.ensure_active(&path)?;
        if self.directory_doc().await?.key_change.is_none() {
            return Err(IssueError::InvalidRequest(format!(
                "the CA {} offers no keyChange endpoint: it does not support key rollover",
                self.directory_url
            )));
        }
        let creds: ia::AccountCredentials = serde_json::from_value(stored.credentials.clone())
            .map_err(|e| crate::store::StoreError::Corrupt {
                path: path.clone(),
                reason: format!("credentials: {e}"),
            })?;
        let mut account = ia::Account::builder_with_http(self.shim())
            .from_credentials(creds)
            .await
            .map_err(|e| self.map_error(e, "load the account"))?;
        let new_creds = retry_bad_nonce!(account.update_key().await)
            .map_err(|e| self.map_error(e, "change the account key"))?;
        stored.credentials = serde_json::to_value(&new_creds)
            .map_err(|e| IssueError::Internal(format!("cannot serialize the account: {e}")))?;
        stored.key_changed_at = Some(now_rfc3339());
        self.rewrite_account(store, &stored).await?;
        let json = serde_json::to_vec(&stored)
            .map_err(|e| IssueError::Internal(format!("cannot serialize the account: {e}")))?;
        summarize(&json, path)
    }

    /// Writes the stored account (0600, atomically) under its id for this
    /// directory and contact.
    async fn rewrite_account(
        &self,
        store: &Store,
        stored: &StoredAccount,
    ) -> Result<(), IssueError> {
        let json = serde_json::to_vec_pretty(stored)
            .map_err(|e| IssueError::Internal(format!("cannot serialize the account: {e}")))?;
        let (store2, host, id) = (
            store.clone(),
            self.ca_host(),
            account_id(&self.directory_url, &stored.contact),
        );
        tokio::task::spawn_blocking(move || store2.save_account(&host, &id, &json))
            .await
            .map_err(|e| IssueError::Internal(format!("account writer: {e}")))??;
        Ok(())
    }

    /// A fresh nonce from `newNonce`.
    async fn fresh_nonce(&self, doc: &DirectoryDoc) -> Result<String, IssueError> {
        let rsp = self
            .http
            .head(&doc.new_nonce)
            .send()
            .await
            .map_err(|e| IssueError::Network {
                action: "get a nonce".to_owned(),
                server: doc.new_nonce.clone(),
                message: error_chain(&e),
            })?;
        nonce_of(rsp.headers()).ok_or_else(|| IssueError::Network {
            action: "get a nonce".to_owned(),
            server: doc.new_nonce.clone(),
            message: "the answer has no Replay-Nonce header".to_owned(),
        })
    }

    /// POSTs a JWS signed by `key`; retries on `badNonce`. Returns the body
    /// of a successful answer.
    async fn post_jws(
        &self,
        doc: &DirectoryDoc,
        url: &str,
        key: &JwsKey,
        key_ref: KeyRef<'_>,
        payload: Option<&serde_json::Value>,
        action: &str,
    ) -> Result<Bytes, IssueError> {
        let mut nonce = self.fresh_nonce(doc).await?;
        let mut attempt = 0u32;
        loop {
            let body = key.jws(url, &nonce, key_ref, payload).map_err(|e| {
                IssueError::Internal(format!("cannot sign the request to {action}: {e}"))
            })?;
            let rsp = self
                .http
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/jose+json")
                .body(body)
                .send()
                .await
                .map_err(|e| IssueError::Network {
                    action: action.to_owned(),
                    server: url.to_owned(),
                    message: error_chain(&e),
                })?;
            let status = rsp.status();
            let next_nonce = nonce_of(rsp.headers());
            let retry_after = rsp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = rsp.bytes().await.map_err(|e| IssueError::Network {
                action: action.to_owned(),
                server: url.to_owned(),
                message: error_chain(&e),
            })?;
            if status.is_success() {
                return Ok(body);
            }
            let err = problem_error(action, status.as_u16(), &body, retry_after, url);
            let bad_nonce =
                matches!(&err, IssueError::CaRefused { problem, .. } if problem.is("badNonce"));
            if bad_nonce && attempt < NONCE_RETRIES + 3 {
                attempt += 1;
                nonce = match next_nonce {
                    Some(n) => n,
                    None => self.fresh_nonce(doc).await?,
                };
                continue;
            }
            return Err(err);
        }
    }
}

fn nonce_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The error for a non-2xx answer with (usually) a problem document.
fn problem_error(
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
                IssueError::Network {
                    action: action.to_owned(),
                    server: url.to_owned(),
                    message: problem.to_string(),
                }
            } else {
                IssueError::CaRefused {
                    action: action.to_owned(),
                    problem,
                }
            }
        }
        Err(_) => IssueError::Network {
            action: action.to_owned(),
            server: url.to_owned(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        },
    }
}

/// The RFC 7638 thumbprint of a JWK holding only its required members:
/// SHA-256 of its JSON with members sorted and no whitespace (serde_json
/// objects are sorted maps), base64url.
fn jwk_thumbprint(jwk: &serde_json::Value) -> String {
    use base64::Engine as _;
    let canonical = serde_json::to_vec(jwk).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// How a JWS names its key: the account URL, or the key itself.
#[derive(Clone, Copy)]
enum KeyRef<'a> {
    Kid(&'a str),
    Jwk,
}

/// A private key that signs JWS: ES256, ES384 or RS256.
enum JwsKey {
    Ec {
        pair: aws_lc_rs::signature::EcdsaKeyPair,
        alg: &'static str,
        crv: &'static str,
    },
    Rsa(aws_lc_rs::signature::RsaKeyPair),
}

impl JwsKey {
    /// From PEM: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`).
    fn from_pem(pem: &str) -> Result<JwsKey, String> {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| format!("not PEM: {e}"))?;
            if block.label.contains("PRIVATE KEY") {
                return JwsKey::from_der(&block.contents);
            }
        }
        Err("it holds no PEM private key (-----BEGIN PRIVATE KEY-----)".to_owned())
    }

    fn from_der(der: &[u8]) -> Result<JwsKey, String> {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
            RsaKeyPair,
        };
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
        {
            return Ok(JwsKey::Ec {
                pair,
                alg: "ES256",
                crv: "P-256",
            });
        }
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
        {
            return Ok(JwsKey::Ec {
                pair,
                alg: "ES384",
                crv: "P-384",
            });
        }
        if let Ok(pair) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
            return Ok(JwsKey::Rsa(pair));
        }
        Err("not an ECDSA P-256/P-384 or RSA private key".to_owned())
    }

    fn key_type(&self) -> &'static str {
        match self {
            JwsKey::Ec { crv: "P-384", .. } => "ec-p384",
            JwsKey::Ec { .. } => "ec-p256",
            JwsKey::Rsa(p) => match p.public_modulus_len() * 8 {
                2048 => "rsa2048",
                3072 => "rsa3072",
                4096 => "rsa4096",
                _ => "rsa",
            },
        }
    }

    /// The public JWK with its members in lexicographic order, as RFC 7638
    /// hashes it.
    fn jwk(&self) -> serde_json::Value {
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        match self {
            JwsKey::Ec { pair, crv, .. } => {
                // Uncompressed point: 0x04 || X || Y.
                let point = pair.public_key().as_ref();
                let n = (point.len().saturating_sub(1)) / 2;
                let (x, y) = point.get(1..).unwrap_or_default().split_at(n);
                serde_json::json!({"crv": crv, "kty": "EC", "x": b64(x), "y": b64(y)})
            }
            JwsKey::Rsa(pair) => {
                let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                serde_json::json!({"e": b64(&c.e), "kty": "RSA", "n": b64(&c.n)})
            }
        }
    }

    fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.jwk())
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            JwsKey::Ec { pair, .. } => pair
                .sign(&rng, data)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_owned()),
            JwsKey::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    data,
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_owned())?;
                Ok(sig)
            }
        }
    }

    /// A flattened JWS (RFC 8555 §6.2); `payload: None` is POST-as-GET.
    fn jws(
        &self,
        url: &str,
        nonce: &str,
        key_ref: KeyRef<'_>,
        payload: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let alg = match self {
            JwsKey::Ec { alg, .. } => *alg,
            JwsKey::Rsa(_) => "RS256",
        };
        let mut header = serde_json::json!({"alg": alg, "nonce": nonce, "url": url});
        match key_ref {
            KeyRef::Kid(kid) => header["kid"] = serde_json::Value::from(kid),
            KeyRef::Jwk => header["jwk"] = self.jwk(),
        }
        let protected = b64(&serde_json::to_vec(&header).map_err(|e| e.to_string())?);
        let payload = match payload {
            Some(p) => b64(&serde_json::to_vec(p).map_err(|e| e.to_string())?),
            None => String::new(),
        };
        let signature = self.sign(format!("{protected}.{payload}").as_bytes())?;
        serde_json::to_vec(&serde_json::json!({
            "protected": protected,
            "payload": payload,
            "signature": b64(&signature),
        }))
        .map_err(|e| e.to_string())
    }
}

impl Account {
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
        let ids: Vec<ia::Identifier> = identifiers
            .iter()
            .map(|d| ia::Identifier::Dns(d.clone()))
            .collect();
        let cert_id = ia::CertificateIdentifier {
            authority_key_identifier: aki.into(),
            serial: serial.into(),
        };
        let new = ia::NewOrder::new(&ids).replaces(cert_id);
        match retry_bad_nonce!(self.inner.new_order(&new).await) {
            Ok(inner) => Ok(Order {
                inner,
                thumbprint: self.inner.key_thumbprint().to_owned(),
                client: self.client.clone(),
            }),
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

#[cfg(test)]
mod tests {
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
    fn account_ids_differ_by_contact() {
        let a = account_id(LETSENCRYPT, &[]);
        let b = account_id(LETSENCRYPT, &["mailto:a@example.com".to_owned()]);
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(a, account_id(LETSENCRYPT, &[]));
    }

    #[test]
    fn eab_key_never_in_debug() {
        let e = Eab::new("kid-1", "c2VjcmV0LWhtYWMta2V5").expect("valid");
        let dbg = format!("{e:?}");
        assert!(dbg.contains("kid-1") && dbg.contains("[redacted]"), "{dbg}");
        assert!(
            !dbg.contains("c2VjcmV0") && !dbg.contains("secret"),
            "{dbg}"
        );
        let err = Eab::new("kid", "not base64 !!").expect_err("bad key");
        assert!(!err.to_string().contains("!!"), "{err}");
    }

    #[test]
    fn contact_validation() {
        let o = AccountOptions {
            email: Some("admin@example.com".into()),
            ..Default::default()
        };
        assert_eq!(o.contact().expect("ok"), ["mailto:admin@example.com"]);
        let o = AccountOptions {
            email: Some("not an email".into()),
            ..Default::default()
        };
        assert!(o.contact().is_err());
        assert!(AccountOptions::default().contact().expect("ok").is_empty());
    }

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

    #[test]
    fn jwk_thumbprint_matches_rfc7638() {
        // RFC 7638 §3.1.
        let jwk = serde_json::json!({
            "e": "AQAB",
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        });
        assert_eq!(
            jwk_thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// Every key type certsmith issues can sign a revocation: the JWS
    /// verifies with the public key carried in its own JWK.
    #[test]
    fn jws_signed_with_a_certificate_key_verifies() {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, KeyPair as _,
            RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
        };
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for kt in [
            crate::keys::KeyType::EcP256,
            crate::keys::KeyType::EcP384,
            crate::keys::KeyType::Rsa2048,
        ] {
            let pem = crate::keys::generate_key(kt).expect("key").serialize_pem();
            let key = JwsKey::from_pem(&pem).expect("usable");
            assert_eq!(key.key_type(), kt.as_str());
            let payload = serde_json::json!({"certificate": "AAEC", "reason": 1});
            let body = key
                .jws("https://ca/revoke", "nonce-1", KeyRef::Jwk, Some(&payload))
                .expect("signs");
            let jws: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let protected = jws["protected"].as_str().expect("protected");
            let header: serde_json::Value =
                serde_json::from_slice(&b64.decode(protected).expect("b64")).expect("json");
            assert_eq!(header["url"], "https://ca/revoke");
            assert_eq!(header["nonce"], "nonce-1");
            assert!(header.get("kid").is_none());
            assert_eq!(header["jwk"], key.jwk());
            let signed = format!("{protected}.{}", jws["payload"].as_str().expect("payload"));
            let sig = b64
                .decode(jws["signature"].as_str().expect("sig"))
                .expect("b64");
            let ok = match &key {
                JwsKey::Ec { pair, crv, .. } => {
                    assert_eq!(
                        header["alg"],
                        if *crv == "P-256" { "ES256" } else { "ES384" }
                    );
                    let alg = if *crv == "P-256" {
                        &ECDSA_P256_SHA256_FIXED
                    } else {
                        &ECDSA_P384_SHA384_FIXED
                    };
                    UnparsedPublicKey::new(alg, pair.public_key().as_ref())
                        .verify(signed.as_bytes(), &sig)
                }
                JwsKey::Rsa(pair) => {
                    assert_eq!(header["alg"], "RS256");
                    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref())
                        .verify(signed.as_bytes(), &sig)
                }
            };
            assert!(ok.is_ok(), "{kt}: signature does not verify");
            assert_eq!(key.thumbprint().len(), 43);
        }
        // An account-key JWS names the account instead.
        let pem = crate::keys::generate_key(crate::keys::KeyType::EcP256)
            .expect("key")
            .serialize_pem();
        let key = JwsKey::from_pem(&pem).expect("usable");
        let body = key
            .jws(
                "https://ca/acct/1",
                "n",
                KeyRef::Kid("https://ca/acct/1"),
                None,
            )
            .expect("signs");
        let jws: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(jws["payload"], "", "POST-as-GET has an empty payload");
        let header: serde_json::Value = serde_json::from_slice(
            &b64.decode(jws["protected"].as_str().expect("p"))
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(header["kid"], "https://ca/acct/1");
        assert!(header.get("jwk").is_none());
        assert!(
            JwsKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }

    #[test]
    fn revocation_reasons_have_their_crl_codes() {
        let codes: Vec<(&str, u8)> = RevocationReason::ALL
            .iter()
            .map(|r| (r.as_str(), r.code()))
            .collect();
        assert_eq!(
            codes,
            [
                ("unspecified", 0),
                ("key-compromise", 1),
                ("superseded", 4),
                ("cessation-of-operation", 5),
                ("affiliation-changed", 3),
            ]
        );
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
}
