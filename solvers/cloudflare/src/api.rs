//! The few calls of the Cloudflare API v4 this solver makes, with the
//! retry policy every call shares.
//!
//! Every answer comes in one envelope,
//! `{success, errors: [{code, message, error_chain?}], messages, result, result_info?}`,
//! also on errors (except from the edge, which may answer 502/503 with an
//! HTML page). A call is retried inside the deadline of the plugin request
//! that made it:
//!
//! * 429: after `Retry-After` seconds (Cloudflare sends whole seconds), or
//!   with the back-off below when it is missing; when the wait would pass
//!   the deadline, the call fails at once as `rate_limited` with the wait;
//! * 5xx and transport errors: exponential back-off from 250 ms, doubling,
//!   capped at 5 s, while a try still fits before the deadline;
//! * anything else is the final answer, classified by the caller.
//!
//! The token travels only in the `Authorization` header (marked sensitive,
//! so hyper never logs it) and is scrubbed from every message built from an
//! answer, in case a proxy echoes it back.

use std::fmt;
use std::time::Duration;

use certsmith_plugin_api::{Deadline, PluginError, Secret, log};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// First back-off after a 5xx or a transport error.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest back-off.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Time kept free before the deadline for the try after a wait: no wait is
/// started that would leave less than this.
const RESERVE: Duration = Duration::from_secs(1);
/// Longest single HTTP exchange.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between connection attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on pages walked in one listing, against a server whose
/// `result_info` never ends.
const MAX_PAGES: u32 = 200;

/// Error codes that mean the token was refused: 6003 invalid request
/// headers (6111: malformed `Authorization`), 9103 unknown key, 9106
/// missing credentials, 9109 invalid or IP-restricted token, 10000
/// authentication error (no permission on this resource), 10001 unable to
/// authenticate.
const AUTH_CODES: &[i64] = &[6003, 6111, 9103, 9106, 9109, 10000, 10001];

/// The API token: the SDK's [`Secret`] (redacted `Debug`/`Display`,
/// zeroed on drop).
pub type ApiToken = Secret;

/// Whether waiting `d` before the next try still leaves [`RESERVE`] for it.
fn allows_wait(deadline: Deadline, d: Duration) -> bool {
    d + RESERVE <= deadline.remaining()
}

/// One entry of `errors` or `messages`.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct CfMessage {
    #[serde(default)]
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) error_chain: Vec<CfMessage>,
}

/// The envelope of every answer.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<CfMessage>,
    #[serde(default)]
    result: serde_json::Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

/// Pagination of list answers.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct ResultInfo {
    #[serde(default)]
    pub(crate) total_pages: Option<u32>,
}

/// A zone, as far as this solver cares.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Zone {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) status: String,
}

/// A DNS record, as far as this solver cares.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    #[serde(rename = "type", default)]
    pub(crate) ty: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) content: String,
}

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Cloudflare gave a final answer other than success: retrying the same
    /// request will not change it. The caller decides what it means.
    Refused {
        /// `METHOD /path?query`.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The envelope's `errors` (empty if the body was not an envelope),
        /// with the token scrubbed.
        errors: Vec<CfMessage>,
    },
    /// Already classified: deadline, rate limit, transport, bad answer.
    Failed(PluginError),
}

impl ApiError {
    /// Whether the answer carries one of `codes` (anywhere in the chain).
    pub(crate) fn has_code(&self, codes: &[i64]) -> bool {
        match self {
            ApiError::Refused { errors, .. } => all_codes(errors).any(|c| codes.contains(&c)),
            ApiError::Failed(_) => false,
        }
    }

    /// Whether Cloudflare answered 404.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Refused { status: 404, .. })
    }

    /// Whether Cloudflare refused the token.
    pub(crate) fn is_auth(&self) -> bool {
        match self {
            ApiError::Refused { status, .. } => {
                *status == 401 || *status == 403 || self.has_code(AUTH_CODES)
            }
            ApiError::Failed(_) => false,
        }
    }

    /// The plugin error for a failure while doing `action` in `zone`.
    pub(crate) fn into_plugin(self, zone: &str, action: &str) -> PluginError {
        if self.is_auth() {
            return PluginError::auth(format!("{} ({})", auth_message(zone), self.detail()));
        }
        match self {
            ApiError::Failed(e) => e,
            ApiError::Refused { status, .. } => {
                let detail = self.detail();
                match status {
                    404 => {
                        PluginError::not_found(format!("Cloudflare could not {action} ({detail})"))
                    }
                    400..=499 => {
                        PluginError::config(format!("Cloudflare refused to {action} ({detail})"))
                    }
                    _ => PluginError::internal(format!(
                        "Cloudflare gave an unexpected answer while trying to {action} ({detail})"
                    )),
                }
            }
        }
    }

    /// "HTTP 403 to GET /zones?..., Cloudflare error 9109: Invalid access token".
    fn detail(&self) -> String {
        match self {
            ApiError::Refused {
                request,
                status,
                errors,
            } => {
                let mut s = format!("HTTP {status} to {request}");
                if !errors.is_empty() {
                    s.push_str(", Cloudflare error ");
                    s.push_str(&describe(errors));
                }
                s
            }
            ApiError::Failed(e) => e.message.clone(),
        }
    }
}

/// The auth error message, without details.
pub(crate) fn auth_message(zone: &str) -> String {
    format!("Cloudflare rejected the API token: it needs Zone:DNS:Edit on {zone}")
}

fn all_codes(errors: &[CfMessage]) -> impl Iterator<Item = i64> + '_ {
    errors
        .iter()
        .flat_map(|e| std::iter::once(e.code).chain(e.error_chain.iter().map(|c| c.code)))
}

/// "9109: Invalid access token; 6003: Invalid request headers (6111: ...)".
fn describe(errors: &[CfMessage]) -> String {
    errors
        .iter()
        .map(|e| {
            let mut s = format!("{}: {}", e.code, e.message.trim_end_matches('.'));
            if !e.error_chain.is_empty() {
                s.push_str(" (");
                s.push_str(&describe(&e.error_chain));
                s.push(')');
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A successful answer: `result` and, for lists, `result_info`.
#[derive(Debug)]
pub(crate) struct Answer<T> {
    pub(crate) result: T,
    pub(crate) info: Option<ResultInfo>,
}

/// The API client. Cheap to share: one connection pool.
pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
    token: ApiToken,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client for the API at `base` (e.g. `https://api.cloudflare.com/client/v4`).
    pub(crate) fn new(base: &str, token: ApiToken) -> Result<Self, PluginError> {
        let base_err = |why: &str| {
            PluginError::config(format!(
                "api_base {base:?} {why}; leave it unset for https://api.cloudflare.com/client/v4"
            ))
        };
        let mut url =
            Url::parse(base.trim()).map_err(|e| base_err(&format!("is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(base_err("must be an http:// or https:// URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(base_err("must not have a query or fragment"));
        }
        // Normalize: no trailing slash, so segments are appended after it.
        let path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&path);
        if token.expose().trim().is_empty() {
            return Err(PluginError::config(
                "api_token is empty: set CLOUDFLARE_API_TOKEN (or CLOUDFLARE_API_TOKEN_FILE) to an API token with Zone:DNS:Edit",
            ));
        }
        if HeaderValue::from_str(&format!("Bearer {}", token.expose().trim())).is_err() {
            return Err(PluginError::config(
                "api_token contains characters that cannot go in an HTTP header (a line break?); paste the token alone",
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("certsmith-cloudflare/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| PluginError::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Api {
            http,
            base: url,
            token: ApiToken::new(token.expose().trim()),
        })
    }

    /// `<base>/<segments...>`, each segment percent-encoded.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The base URL, for messages.
    pub(crate) fn base(&self) -> &str {
        self.base.as_str()
    }

    /// Replaces the token wherever it appears in `text`.
    fn scrub(&self, text: &str) -> String {
        let t = self.token.expose();
        if t.is_empty() {
            text.to_owned()
        } else {
            text.replace(t, "[redacted]")
        }
    }

    fn scrub_all(&self, errors: &mut [CfMessage]) {
        for e in errors {
            e.message = self.scrub(&e.message);
            self.scrub_all(&mut e.error_chain);
        }
    }

    /// Sends one request, retried as the module docs say, and returns the
    /// envelope's `result` as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        deadline: Deadline,
    ) -> Result<Answer<T>, ApiError> {
        let request = match url.query() {
            Some(q) => format!("{method} {}?{q}", url.path()),
            None => format!("{method} {}", url.path()),
        };
        let mut backoff = BACKOFF_START;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(ApiError::Failed(PluginError::transient(format!(
                    "Cloudflare API {request}: no time left before the call's deadline"
                ))));
            }
            let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
                .map_err(|_| {
                    ApiError::Failed(PluginError::config("api_token cannot go in an HTTP header"))
                })?;
            auth.set_sensitive(true);
            let mut rb = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, auth)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(remaining.min(ATTEMPT_TIMEOUT));
            if let Some(b) = body {
                rb = rb.json(b);
            }
            // What to do when this try failed in a retryable way.
            let (why, wait) = match rb.send().await {
                Err(e) => (self.scrub(&error_chain(&e)), None),
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(|s| Duration::from_millis((s * 1000.0) as u64));
                    let bytes = match resp.bytes().await {
                        Ok(b) => b,
                        Err(e) => {
                            let why = format!(
                                "HTTP {} but the body could not be read: {}",
                                status.as_u16(),
                                self.scrub(&error_chain(&e))
                            );
                            self.backoff_or_fail(&request, &why, &mut backoff, deadline, tries)
                                .await?;
                            continue;
                        }
                    };
                    let envelope: Option<Envelope> = serde_json::from_slice(&bytes).ok();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let why = format!("HTTP 429{}", codes_suffix(envelope.as_ref()));
                        match retry_after {
                            Some(wait) if !allows_wait(deadline, wait) => {
                                return Err(ApiError::Failed(PluginError::rate_limited(
                                    format!(
                                        "Cloudflare is rate-limiting this token ({request} answered {why}, retry after {} s, later than the call's deadline); retry later or spread the requests",
                                        wait.as_secs_f64()
                                    ),
                                    Some(wait.as_millis() as u64),
                                )));
                            }
                            _ => (why, retry_after),
                        }
                    } else if status.is_server_error() {
                        (
                            format!(
                                "HTTP {}{}",
                                status.as_u16(),
                                codes_suffix(envelope.as_ref())
                            ),
                            None,
                        )
                    } else {
                        return self.finish(&request, status, envelope, &bytes);
                    }
                }
            };
            match wait {
                Some(wait) => {
                    log::debug!(
                        "cloudflare: {request}: {why}; retrying in {} ms as Retry-After asks",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                }
                None => {
                    self.backoff_or_fail(&request, &why, &mut backoff, deadline, tries)
                        .await?
                }
            }
        }
    }

    /// Sleeps the current back-off and doubles it, or fails as transient if
    /// that would pass the deadline.
    async fn backoff_or_fail(
        &self,
        request: &str,
        why: &str,
        backoff: &mut Duration,
        deadline: Deadline,
        tries: u32,
    ) -> Result<(), ApiError> {
        if !allows_wait(deadline, *backoff) {
            return Err(ApiError::Failed(PluginError::transient(format!(
                "Cloudflare API {request} failed {tries} time(s) before the call's deadline; last: {why}"
            ))));
        }
        log::debug!(
            "cloudflare: {request}: {why}; retrying in {} ms",
            backoff.as_millis()
        );
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(BACKOFF_CAP);
        Ok(())
    }

    /// Turns a final (non-429, non-5xx) answer into a result.
    fn finish<T: DeserializeOwned>(
        &self,
        request: &str,
        status: StatusCode,
        envelope: Option<Envelope>,
        bytes: &[u8],
    ) -> Result<Answer<T>, ApiError> {
        let code = status.as_u16();
        log::debug!("cloudflare: {request} → {code}");
        match envelope {
            Some(env) if status.is_success() && env.success => {
                let result = serde_json::from_value(env.result).map_err(|e| {
                    ApiError::Failed(PluginError::internal(format!(
                        "Cloudflare API {request}: the answer's result has an unexpected shape: {e}"
                    )))
                })?;
                Ok(Answer {
                    result,
                    info: env.result_info,
                })
            }
            Some(mut env) => {
                self.scrub_all(&mut env.errors);
                Err(ApiError::Refused {
                    request: request.to_owned(),
                    status: code,
                    errors: env.errors,
                })
            }
            None if status.is_success() => Err(ApiError::Failed(PluginError::internal(format!(
                "Cloudflare API {request}: HTTP {code} with a body that is not a Cloudflare API answer ({}); is api_base ({}) right?",
                self.scrub(&snippet(bytes)),
                self.base
            )))),
            None => Err(ApiError::Refused {
                request: request.to_owned(),
                status: code,
                errors: Vec::new(),
            }),
        }
    }

    /// Every page of a list call, concatenated. `url` carries the filters;
    /// `page` and `per_page` are added here.
    pub(crate) async fn list_all<T: DeserializeOwned>(
        &self,
        url: Url,
        per_page: u32,
        deadline: Deadline,
    ) -> Result<Vec<T>, ApiError> {
        let mut all = Vec::new();
        let mut page = 1u32;
        loop {
            let mut u = url.clone();
            u.query_pairs_mut()
                .append_pair("per_page", &per_page.to_string())
                .append_pair("page", &page.to_string());
            let answer: Answer<Vec<T>> = self.call(Method::GET, u, None, deadline).await?;
            let got = answer.result.len();
            all.extend(answer.result);
            let total_pages = answer.info.and_then(|i| i.total_pages).unwrap_or(1);
            if got == 0 || page >= total_pages || page >= MAX_PAGES {
                return Ok(all);
            }
            page += 1;
        }
    }
}

/// ": 10000: Authentication error" when the body was an envelope with errors.
fn codes_suffix(envelope: Option<&Envelope>) -> String {
    match envelope {
        Some(env) if !env.errors.is_empty() => {
            format!(", Cloudflare error {}", describe(&env.errors))
        }
        _ => String::new(),
    }
}

/// An error with its sources, which is where reqwest puts the useful part
/// ("connection refused", "dns error", the TLS alert).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// The start of a body, printable, for messages.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    if one_line.trim().is_empty() {
        "empty".to_owned()
    } else {
        format!("{:?}", one_line.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_flattens_the_chain() {
        let errors: Vec<CfMessage> = serde_json::from_str(
            r#"[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6111,"message":"Invalid format for Authorization header"}]}]"#,
        )
        .expect("parses");
        assert_eq!(
            describe(&errors),
            "6003: Invalid request headers (6111: Invalid format for Authorization header)"
        );
        let e = ApiError::Refused {
            request: "GET /zones".into(),
            status: 400,
            errors,
        };
        assert!(e.has_code(&[6111]));
        assert!(e.is_auth(), "6003/6111 on a 400 is an auth failure");
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = ApiToken::new("s3cr3t-token-value");
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn base_url_is_normalized_and_checked() {
        let t = ApiToken::new("t");
        let api = Api::new("http://127.0.0.1:9/client/v4/", t.clone()).expect("valid");
        assert_eq!(
            api.url(&["zones", "abc", "dns_records"]).as_str(),
            "http://127.0.0.1:9/client/v4/zones/abc/dns_records"
        );
        let api = Api::new("http://127.0.0.1:9", t.clone()).expect("valid");
        assert_eq!(api.url(&["zones"]).as_str(), "http://127.0.0.1:9/zones");
        assert!(Api::new("ftp://x", t.clone()).is_err());
        assert!(Api::new("not a url", t.clone()).is_err());
        assert!(Api::new("https://x/?a=b", t).is_err());
        assert!(Api::new("https://x", ApiToken::new(" ")).is_err());
        assert!(Api::new("https://x", ApiToken::new("a\nb")).is_err());
    }
}
