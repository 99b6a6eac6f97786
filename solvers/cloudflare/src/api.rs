//! The few calls of the Cloudflare API v4 this solver makes, with the
//! retry policy every call shares.
//!
//! Every answer comes in one envelope,
//! `{success, errors: [{code, message, error_chain?}], messages, result, result_info?}`,
//! also on errors (except from the edge, which may answer 502/503 with an
//! HTML page). An answer is classified by the SDK's
//! [`PluginError::from_http_status`] (a request that got no answer comes
//! back from the host already classified, as `transient`), refined by
//! Cloudflare's error codes (the token-refused codes make any final refusal
//! `auth`), and the call is retried by the SDK's [`retry`] inside the
//! deadline of the plugin request that made it:
//!
//! * 429: after the whole `Retry-After` (Cloudflare sends whole seconds),
//!   or with the back-off below when it is missing; when the wait would pass
//!   the deadline, the call fails at once as `rate_limited` with the wait;
//! * 5xx (and 408, 425) and transport errors: exponential back-off from
//!   250 ms, doubling, capped at 5 s, while a try still fits before the
//!   deadline;
//! * anything else is the final answer, classified by the caller (which
//!   looks at the status and the codes: 404 = gone, 81057/81058 = already
//!   there).
//!
//! No wait starts that would leave less than [`RESERVE`] for the try after
//! it. Requests go out through certsmith's HTTP client ([`HttpRequest`],
//! plugin ABI 1.3), so this plugin carries no HTTP client or TLS stack of its
//! own. The token travels only in the `Authorization` header (the host logs
//! no header) and is scrubbed from every message built from an answer, in
//! case a proxy echoes it back.

use std::fmt;
use std::time::Duration;

use certsmith_plugin_api::sdk::{Backoff, HttpRequest, header_value_ok, retry};
use certsmith_plugin_api::{Deadline, ErrorKind, PluginError, Secret, log};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

/// First back-off after a 5xx or a transport error.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest back-off.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Time kept free before the deadline for the try after a wait: no wait is
/// started that would leave less than this.
pub(crate) const RESERVE: Duration = Duration::from_secs(1);
/// Longest single HTTP exchange (the host's client gives up connecting
/// after 10 s within it).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// What every request says it is.
const USER_AGENT: &str = concat!("certsmith-cloudflare/", env!("CARGO_PKG_VERSION"));
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

/// The HTTP methods this solver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `value` can go in an HTTP header as it is ([`header_value_ok`]:
/// no line break can split the header) and is ASCII, as every Cloudflare
/// token is: anything else in it was pasted by mistake.
fn header_safe(value: &str) -> bool {
    header_value_ok(value) && value.is_ascii()
}

/// The retry policy of every call: as many tries as the deadline allows.
fn backoff() -> Backoff {
    Backoff::new(u32::MAX, BACKOFF_START, BACKOFF_CAP)
        .with_reserve(RESERVE)
        .whole_retry_after()
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

/// The answer of `GET /user/tokens/verify`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct TokenStatus {
    /// "active", "disabled" or "expired".
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

/// What Cloudflare answered when it refused a request for good.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// `METHOD /path?query`.
    request: String,
    /// The HTTP status.
    status: u16,
    /// The envelope's `errors` (empty if the body was not an envelope),
    /// with the token scrubbed.
    errors: Vec<CfMessage>,
}

/// Why a call failed.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The error: the SDK's reading of the answer, refined by Cloudflare's
    /// codes; or, for a failure without a final answer (deadline, rate
    /// limit, transport, bad answer), the finished error for the host.
    error: PluginError,
    /// Cloudflare's final answer other than success, if that is what
    /// failed: retrying the same request will not change it. The caller
    /// decides what it means.
    refusal: Option<Refusal>,
}

impl ApiError {
    /// A failure that is already classified for the host.
    fn failed(error: PluginError) -> Self {
        ApiError {
            error,
            refusal: None,
        }
    }

    /// Whether the answer carries one of `codes` (anywhere in the chain).
    pub(crate) fn has_code(&self, codes: &[i64]) -> bool {
        self.refusal
            .as_ref()
            .is_some_and(|r| all_codes(&r.errors).any(|c| codes.contains(&c)))
    }

    /// Whether Cloudflare answered that the thing is not there (404, 410).
    pub(crate) fn is_not_found(&self) -> bool {
        self.refusal.is_some() && self.error.kind == ErrorKind::NotFound
    }

    /// The plugin error for a failure while doing `action` in `zone`.
    pub(crate) fn into_plugin(self, zone: &str, action: &str) -> PluginError {
        let Some(refusal) = &self.refusal else {
            return self.error;
        };
        let detail = refusal.detail();
        match self.error.kind {
            ErrorKind::Auth => PluginError::auth(format!("{} ({detail})", auth_message(zone))),
            ErrorKind::NotFound => {
                PluginError::not_found(format!("Cloudflare could not {action} ({detail})"))
            }
            ErrorKind::Config => {
                PluginError::config(format!("Cloudflare refused to {action} ({detail})"))
            }
            kind => PluginError::new(
                kind,
                format!("Cloudflare gave an unexpected answer while trying to {action} ({detail})"),
            ),
        }
    }
}

impl Refusal {
    /// "HTTP 403 to GET /zones?..., Cloudflare error 9109: Invalid access token".
    fn detail(&self) -> String {
        let mut s = format!("HTTP {} to {}", self.status, self.request);
        if !self.errors.is_empty() {
            s.push_str(", Cloudflare error ");
            s.push_str(&describe(&self.errors));
        }
        s
    }
}

/// The error for an answer other than success: the SDK's mapping of the
/// status (with `Retry-After`), then Cloudflare's refinement: a final
/// refusal carrying a token-refused code is `auth` whatever its status
/// (6003/6111 come with a 400). 429 and 5xx stay retryable whatever their
/// codes.
fn classify(
    request: &str,
    status: u16,
    errors: &[CfMessage],
    retry_after: Option<&str>,
) -> PluginError {
    let said = if errors.is_empty() {
        // Not an envelope (the edge's HTML page): the status says it all.
        String::new()
    } else {
        format!("Cloudflare error {}", describe(errors))
    };
    let e = PluginError::from_http_status(status, request, &said, retry_after);
    if !e.retryable && all_codes(errors).any(|c| AUTH_CODES.contains(&c)) {
        return PluginError::auth(e.message);
    }
    e
}

/// The error for a call given up: `tries` tries, the last failing with
/// `last` (retryable: the deadline, less the reserve, came first).
fn gave_up(request: &str, tries: u32, last: PluginError) -> PluginError {
    if tries == 0 {
        return PluginError::transient(format!(
            "Cloudflare API {request}: no time left before the call's deadline"
        ));
    }
    match last.kind {
        ErrorKind::RateLimited => {
            let after = last
                .retry_after_ms
                .map(|ms| {
                    format!(
                        ", retry after {} s",
                        Duration::from_millis(ms).as_secs_f64()
                    )
                })
                .unwrap_or_default();
            PluginError::rate_limited(
                format!(
                    "Cloudflare is rate-limiting this token ({}{after}, later than the call's deadline); retry later or spread the requests",
                    last.message
                ),
                last.retry_after_ms,
            )
        }
        ErrorKind::Transient => {
            let mut e = PluginError::transient(format!(
                "Cloudflare API {request} failed {tries} time(s) before the call's deadline; last: {}",
                last.message
            ));
            e.retry_after_ms = last.retry_after_ms;
            e
        }
        _ => last,
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

/// The API client: where the API is and the token for it. The sending is
/// the host's.
pub(crate) struct Api {
    base: Url,
    token: ApiToken,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish()
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
        if !header_safe(token.expose().trim()) {
            return Err(PluginError::config(
                "api_token contains characters that cannot go in an HTTP header (a line break?); paste the token alone",
            ));
        }
        Ok(Api {
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
        let mut tries = 0u32;
        let outcome = retry(deadline, backoff(), |left| {
            tries += 1;
            self.attempt(method, &url, body, &request, left)
        })
        .await;
        match outcome {
            Ok(final_answer) => final_answer,
            Err(last) => Err(ApiError::failed(gave_up(&request, tries, last))),
        }
    }

    /// One try with at most `left` to get the answer: `Err` when it failed
    /// in a way worth retrying, else the final answer (success or refusal).
    async fn attempt<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        request: &str,
        left: Duration,
    ) -> Result<Result<Answer<T>, ApiError>, PluginError> {
        // `Api::new` checked that the token fits in a header.
        let mut http = HttpRequest::new(method.as_str(), url.as_str())
            .header("user-agent", USER_AGENT)
            .bearer_auth(self.token.expose())
            .header("accept", "application/json")
            .timeout(left.min(ATTEMPT_TIMEOUT));
        if let Some(b) = body {
            http = http.json(b);
        }
        // Err: no answer came (transient, with the cause, so retried) or the
        // host refused the request (config or internal: final).
        let resp = http.send().await.map_err(|e| self.scrubbed(e))?;
        let status = resp.status();
        let retry_after = resp.header("retry-after");
        let bytes = resp.body();
        log::debug!("cloudflare: {request} → {status}");
        let envelope: Option<Envelope> = serde_json::from_slice(bytes).ok();
        match envelope {
            Some(env) if (200..300).contains(&status) && env.success => {
                let result = serde_json::from_value(env.result).map_err(|e| {
                    ApiError::failed(PluginError::internal(format!(
                        "Cloudflare API {request}: the answer's result has an unexpected shape: {e}"
                    )))
                });
                Ok(result.map(|result| Answer {
                    result,
                    info: env.result_info,
                }))
            }
            None if (200..300).contains(&status) => {
                Ok(Err(ApiError::failed(PluginError::internal(format!(
                    "Cloudflare API {request}: HTTP {status} with a body that is not a Cloudflare API answer ({}); is api_base ({}) right?",
                    self.scrub(&snippet(bytes)),
                    self.base
                )))))
            }
            env => {
                let mut errors = env.map(|e| e.errors).unwrap_or_default();
                self.scrub_all(&mut errors);
                let error = classify(request, status, &errors, retry_after);
                if error.retryable {
                    return Err(error);
                }
                Ok(Err(ApiError {
                    error,
                    refusal: Some(Refusal {
                        request: request.to_owned(),
                        status,
                        errors,
                    }),
                }))
            }
        }
    }

    /// `e` with the token scrubbed from its message.
    fn scrubbed(&self, mut e: PluginError) -> PluginError {
        e.message = self.scrub(&e.message);
        e
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
            let answer: Answer<Vec<T>> = self.call(Method::Get, u, None, deadline).await?;
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
        let e = ApiError {
            error: classify("GET /zones", 400, &errors, None),
            refusal: Some(Refusal {
                request: "GET /zones".into(),
                status: 400,
                errors,
            }),
        };
        assert!(e.has_code(&[6111]));
        assert_eq!(
            e.into_plugin("z.test", "list").kind,
            ErrorKind::Auth,
            "6003/6111 on a 400 is an auth failure"
        );
    }

    fn envelope_errors(json: &str) -> Vec<CfMessage> {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn answers_are_classified_by_the_sdk_then_by_codes() {
        let auth = envelope_errors(r#"[{"code":10000,"message":"Authentication error"}]"#);
        let dup =
            envelope_errors(r#"[{"code":81058,"message":"An identical record already exists."}]"#);
        let busy = envelope_errors(r#"[{"code":971,"message":"Please wait"}]"#);
        let unknown =
            envelope_errors(r#"[{"code":10002,"message":"An unknown error has occurred"}]"#);
        let cases = [
            (403, &auth[..], None, ErrorKind::Auth, false),
            (400, &auth[..], None, ErrorKind::Auth, false),
            (400, &dup[..], None, ErrorKind::Config, false),
            (404, &[][..], None, ErrorKind::NotFound, false),
            (429, &busy[..], Some("7"), ErrorKind::RateLimited, true),
            (503, &unknown[..], None, ErrorKind::Transient, true),
            (502, &[][..], None, ErrorKind::Transient, true),
            // A 5xx stays retryable even with a token-refused code.
            (500, &auth[..], None, ErrorKind::Transient, true),
            (200, &[][..], None, ErrorKind::Internal, false),
        ];
        for (status, errors, retry_after, kind, retryable) in cases {
            let e = classify("POST /zones/z/dns_records", status, errors, retry_after);
            assert_eq!(
                (e.kind, e.retryable),
                (kind, retryable),
                "{status} {errors:?}"
            );
            assert!(
                e.message
                    .starts_with(&format!("POST /zones/z/dns_records answered HTTP {status}"))
            );
        }
        let e = classify("GET /x", 429, &busy, Some("7"));
        assert_eq!(e.retry_after_ms, Some(7000));
        assert!(
            e.message.contains("Cloudflare error 971: Please wait"),
            "{}",
            e.message
        );
    }

    #[test]
    fn giving_up_says_why() {
        let e = gave_up(
            "GET /x",
            4,
            PluginError::transient("GET /x answered HTTP 503"),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(
            e.message.contains(
                "failed 4 time(s) before the call's deadline; last: GET /x answered HTTP 503"
            ),
            "{}",
            e.message
        );
        let e = gave_up(
            "GET /x",
            1,
            PluginError::rate_limited("GET /x answered HTTP 429", Some(3_600_000)),
        );
        assert_eq!(
            (e.kind, e.retry_after_ms),
            (ErrorKind::RateLimited, Some(3_600_000))
        );
        assert!(
            e.message
                .contains("retry after 3600 s, later than the call's deadline"),
            "{}",
            e.message
        );
        let e = gave_up("GET /x", 0, PluginError::transient("deadline"));
        assert!(e.message.contains("no time left"), "{}", e.message);
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
        assert!(Api::new("https://x", ApiToken::new("tök")).is_err());
        assert!(Api::new("https://x", ApiToken::new("a\u{7f}b")).is_err());
        assert!(Api::new("https://x", ApiToken::new(" a b\tc ")).is_ok());
    }
}
