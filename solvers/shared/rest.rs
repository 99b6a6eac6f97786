//! One request to a provider's REST API, retried inside the call's
//! deadline by the SDK's [`retry`]: 429 after its `Retry-After` (or, when
//! the provider only sends `ratelimit-reset`, until that moment), 5xx, 408,
//! 425 and transport failures with exponential back-off from 250 ms, capped
//! at 5 s. Every other answer is final and goes back to the caller, which
//! knows what a 404 or a 422 means for the call it made. Statuses become
//! error kinds through the SDK's [`PluginError::from_http_status`], so every
//! plugin names the same failure the same way.
//!
//! The requests go out through the host (the SDK's [`HttpRequest`], plugin
//! ABI 1.3): certsmith's own HTTP client, connection pool and trust roots,
//! so these plugins carry no HTTP client or TLS stack. What the SDK leaves
//! to each plugin is this policy: the retries, the plugin's `User-Agent`,
//! the provider's message in an error, and `ratelimit-reset`.
//!
//! One source for the catalogue's HTTP plugins (digitalocean, hetzner,
//! gcloud, azure, httpreq, acmedns, pdns), each compiling it in with
//! `#[path]`, because solvers depend on no crate of the workspace but the
//! plugin API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::sdk::{Backoff, HttpRequest, HttpResponse, retry};
use certsmith_plugin_api::{Deadline, ErrorKind, PluginError, log};
use serde::de::DeserializeOwned;
use url::Url;

/// First back-off after a 5xx or a transport error.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest back-off.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Kept free before the deadline for the try after a wait.
const RESERVE: Duration = Duration::from_secs(1);
/// Longest single exchange.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How one solver instance sends: the provider's name for messages, and
/// the plugin's `User-Agent`.
#[derive(Debug)]
pub(crate) struct Rest {
    provider: &'static str,
    agent: &'static str,
}

/// A final answer: success, or a refusal retrying would not change.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The body.
    pub(crate) body: Vec<u8>,
    /// `METHOD /path`, for messages.
    pub(crate) request: String,
}

impl Reply {
    /// 2xx.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as `T`, or an internal error naming the request.
    pub(crate) fn json<T: DeserializeOwned>(&self, provider: &str) -> Result<T, PluginError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            PluginError::internal(format!(
                "{provider} API {}: the answer has an unexpected shape ({e}): {}; is the API base URL right?",
                self.request,
                snippet(&self.body)
            ))
        })
    }

    /// The SDK's error for this answer, with the provider's own message
    /// (`message`, `error.message`, `error_description`, `error`) when the
    /// body has one. An `auth` error gets `auth_hint` (what to set, and
    /// how to fix it) in front.
    pub(crate) fn error(&self, auth_hint: &str) -> PluginError {
        let said = provider_message(&self.body);
        let e = PluginError::from_http_status(self.status, &self.request, &said, None);
        if e.kind == ErrorKind::Auth {
            return PluginError::auth(format!("{auth_hint} ({})", e.message));
        }
        e
    }
}

/// What the provider said in an error body, best effort.
pub(crate) fn provider_message(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return snippet(body);
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let found = v
        .get("error")
        .and_then(|e| e.get("message"))
        .and_then(text)
        .or_else(|| v.get("error_description").and_then(text))
        .or_else(|| v.get("message").and_then(text))
        .or_else(|| v.get("error").and_then(text));
    match found {
        Some(m) => m,
        None => snippet(body),
    }
}

/// The start of a body, printable, for messages.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(160)
        .collect();
    one_line.trim().to_owned()
}

/// The wait a 429 asks for, in whole seconds as text for the SDK:
/// `Retry-After`, else `ratelimit-reset` (a Unix time, as DigitalOcean
/// sends it, or seconds from now, as some providers do).
fn retry_after(answer: &HttpResponse) -> Option<String> {
    if let Some(v) = answer.header("retry-after") {
        return Some(v.trim().to_owned());
    }
    let reset: u64 = answer
        .header("ratelimit-reset")
        .and_then(|v| v.trim().parse().ok())?;
    // Values this large are Unix times, not durations.
    if reset > 1_000_000_000 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(reset.saturating_sub(now).max(1).to_string())
    } else {
        Some(reset.to_string())
    }
}

impl Rest {
    /// For `provider` (named in messages); `agent` is the User-Agent.
    pub(crate) const fn new(provider: &'static str, agent: &'static str) -> Self {
        Rest { provider, agent }
    }

    /// Sends the request `build` makes (given the time this try may take,
    /// for its [`HttpRequest::timeout`]) with the plugin's `User-Agent`,
    /// retried as the module docs say, and returns the final answer.
    pub(crate) async fn send(
        &self,
        deadline: Deadline,
        request: &str,
        build: impl Fn(Duration) -> HttpRequest,
    ) -> Result<Reply, PluginError> {
        let backoff = Backoff::new(u32::MAX, BACKOFF_START, BACKOFF_CAP)
            .with_reserve(RESERVE)
            .whole_retry_after();
        let mut tries = 0u32;
        let outcome = retry(deadline, backoff, |left| {
            tries += 1;
            let sent = build(left.min(ATTEMPT_TIMEOUT))
                .header("user-agent", self.agent)
                .label(request)
                .send();
            async move {
                let answer = sent.await?;
                let status = answer.status();
                let wait = retry_after(&answer);
                let body = answer.into_body();
                log::debug!("{}: {request} → {status}", self.provider);
                if matches!(status, 408 | 425 | 429 | 500..=599) {
                    let said = provider_message(&body);
                    return Err(PluginError::from_http_status(
                        status,
                        request,
                        &said,
                        wait.as_deref(),
                    ));
                }
                Ok(Reply {
                    status,
                    body,
                    request: request.to_owned(),
                })
            }
        })
        .await;
        outcome.map_err(|last| self.gave_up(request, tries, last))
    }

    /// The error for a call given up after `tries` tries.
    fn gave_up(&self, request: &str, tries: u32, last: PluginError) -> PluginError {
        let provider = self.provider;
        match last.kind {
            ErrorKind::RateLimited => {
                let after = last
                    .retry_after_ms
                    .map(|ms| format!(", retry after {} s", ms / 1000))
                    .unwrap_or_default();
                PluginError::rate_limited(
                    format!(
                        "{provider} is rate-limiting these credentials ({}{after}, later than the call's deadline); retry later or spread the requests",
                        last.message
                    ),
                    last.retry_after_ms,
                )
            }
            ErrorKind::Transient if tries > 1 => {
                let mut e = PluginError::transient(format!(
                    "{provider} API {request} failed {tries} time(s) before the call's deadline; last: {}",
                    last.message
                ));
                e.retry_after_ms = last.retry_after_ms;
                e
            }
            _ => last,
        }
    }
}

/// `base` checked and without a trailing slash; `option` and `default`
/// name the setting in messages.
pub(crate) fn base_url(base: &str, option: &str, default: &str) -> Result<Url, PluginError> {
    let err = |why: String| {
        PluginError::config(format!(
            "{option} {base:?} {why}; leave it unset for {default}"
        ))
    };
    let mut url = Url::parse(base.trim()).map_err(|e| err(format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(err("must be an http:// or https:// URL".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err("must not have a query or fragment".into()));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// `base` + `segments`, each percent-encoded.
pub(crate) fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// `METHOD /path?query`, for messages.
pub(crate) fn describe(method: &str, url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{method} {}?{q}", url.path()),
        None => format!("{method} {}", url.path()),
    }
}

/// Lower case, no trailing dot.
pub(crate) fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `application/x-www-form-urlencoded` of `pairs` (the SDK's request has
/// no form body).
#[allow(
    dead_code,
    reason = "only the OAuth plugins (gcloud, azure) post forms"
)]
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::wire::HttpResponseHead;

    /// A 429 with `headers`.
    fn answer(headers: &[(&str, &str)]) -> HttpResponse {
        let mut head = HttpResponseHead::new(429);
        head.headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        HttpResponse::new(head, Vec::new())
    }

    #[test]
    fn rate_limit_waits_come_from_either_header() {
        assert_eq!(retry_after(&answer(&[])), None);
        assert_eq!(
            retry_after(&answer(&[("ratelimit-reset", "7")])).as_deref(),
            Some("7")
        );
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 30;
        let soon = soon.to_string();
        let wait: u64 = retry_after(&answer(&[("ratelimit-reset", &soon)]))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!((28..=30).contains(&wait), "{wait}");
        let both = answer(&[("ratelimit-reset", &soon), ("Retry-After", "2")]);
        assert_eq!(retry_after(&both).as_deref(), Some("2"));
    }

    #[test]
    fn provider_messages_are_found() {
        assert_eq!(
            provider_message(br#"{"id":"unauthorized","message":"Unable to authenticate you"}"#),
            "Unable to authenticate you"
        );
        assert_eq!(
            provider_message(
                br#"{"error":{"code":401,"message":"bad creds","status":"UNAUTHENTICATED"}}"#
            ),
            "bad creds"
        );
        assert_eq!(
            provider_message(
                br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            ),
            "Invalid JWT Signature."
        );
        assert_eq!(provider_message(b"<html>x</html>"), "<html>x</html>");
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            form(&[("a b", "x/y=z"), ("c", "~ok")]),
            "a+b=x%2Fy%3Dz&c=~ok"
        );
    }

    #[test]
    fn base_urls_are_checked() {
        let u = base_url("http://127.0.0.1:9/v2/", "api_base", "x").expect("valid");
        assert_eq!(
            join(&u, &["domains", "a b"]).as_str(),
            "http://127.0.0.1:9/v2/domains/a%20b"
        );
        assert!(base_url("ftp://x", "api_base", "x").is_err());
        assert!(base_url("https://x/?q", "api_base", "x").is_err());
    }
}
