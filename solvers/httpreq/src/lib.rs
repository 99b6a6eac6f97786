//! certsmith's `httpreq` solver: answers dns-01 challenges by POSTing the
//! record to an HTTP server of the operator's, with the requests lego's
//! `httpreq` provider sends. It exists so that any DNS that certsmith has
//! no plugin for can be reached through a small web hook, and so that hooks
//! already written for lego keep working.
//!
//! Wire behaviour copied from lego (providers/dns/httpreq), because servers
//! depend on it:
//!
//! * `POST <endpoint>/present` and `POST <endpoint>/cleanup` (the endpoint's
//!   own path is kept: `https://h/acme` → `https://h/acme/present`);
//! * body `{"fqdn": "<name>.", "value": "<txt>"}`, the FQDN with its
//!   trailing dot and after CNAME delegation; mode `RAW`:
//!   `{"domain", "token", "keyAuth"}`;
//! * `Accept` and `Content-Type: application/json`; basic auth when both
//!   user name and password are set; any 2xx is success.
//!
//! What certsmith adds: 429 (with `Retry-After`) and 5xx answers and
//! connection failures are retried inside the call's deadline, every other
//! answer fails with the server's status and body — both through
//! `solvers/shared/rest.rs`, the one HTTP call of the REST plugins (the
//! SDK's `retry` and `PluginError::from_http_status`) — and the password
//! never reaches a message, a log line or a `Debug` output.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use certsmith_plugin_api::sdk::HttpRequest;
use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, PluginError, Presented, Secret, Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::json;
use url::Url;

#[path = "../../shared/rest.rs"]
#[allow(
    dead_code,
    reason = "shared by the REST plugins; httpreq parses no answer body and no DNS name"
)]
mod rest;

use rest::{Rest, base_url, describe, join};

/// The default of `http_timeout_s` (lego's `HTTPREQ_HTTP_TIMEOUT`).
pub const DEFAULT_HTTP_TIMEOUT_S: u64 = 30;

/// How the body is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `{"fqdn", "value"}`.
    Default,
    /// `{"domain", "token", "keyAuth"}`.
    Raw,
}

/// The configuration (see `plugin.toml`).
#[derive(Clone, Debug, Deserialize)]
pub struct HttpreqConfig {
    /// The server's base URL.
    pub endpoint: String,
    /// "" or "RAW".
    #[serde(default)]
    pub mode: String,
    /// Basic-auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Longest request, seconds.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_s: u64,
}

fn default_http_timeout() -> u64 {
    DEFAULT_HTTP_TIMEOUT_S
}

impl HttpreqConfig {
    /// A configuration for `endpoint`, default mode, no authentication.
    pub fn new(endpoint: impl Into<String>) -> Self {
        HttpreqConfig {
            endpoint: endpoint.into(),
            mode: String::new(),
            username: None,
            password: None,
            http_timeout_s: DEFAULT_HTTP_TIMEOUT_S,
        }
    }
}

/// The solver.
pub struct Httpreq {
    rest: Rest,
    endpoint: Url,
    mode: Mode,
    /// The user name, and the whole `Authorization: Basic …` value.
    auth: Option<(String, Secret)>,
    attempt_timeout: Duration,
}

impl fmt::Debug for Httpreq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Httpreq")
            .field("endpoint", &self.endpoint.as_str())
            .field("mode", &self.mode)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .field("attempt_timeout", &self.attempt_timeout)
            .finish_non_exhaustive()
    }
}

impl Httpreq {
    /// The JSON body for `req`.
    pub fn body(&self, req: &ChallengeRequest) -> Result<serde_json::Value, PluginError> {
        match self.mode {
            Mode::Raw => Ok(json!({
                "domain": req.identifier,
                "token": req.token,
                "keyAuth": req.key_authorization,
            })),
            Mode::Default => {
                let target = req.dns.as_ref().ok_or_else(|| {
                    PluginError::internal(
                        "a dns-01 request came without its dns target (zone, name, value)",
                    )
                })?;
                Ok(json!({
                    "fqdn": format!("{}.", target.fqdn.trim_end_matches('.')),
                    "value": target.value,
                }))
            }
        }
    }

    /// POSTs `body` to `<endpoint>/<action>`, retried as the module says.
    async fn post(
        &self,
        action: &str,
        body: &serde_json::Value,
        req: &ChallengeRequest,
    ) -> Result<(), PluginError> {
        let url = join(&self.endpoint, &[action]);
        let request = describe("POST", &url);
        let text = body.to_string();
        let reply = self
            .rest
            .send(req.deadline(), &request, |left| {
                let rb = HttpRequest::post(url.as_str())
                    .header("accept", "application/json")
                    .header("content-type", "application/json")
                    .body(text.as_bytes())
                    .timeout(left.min(self.attempt_timeout));
                match &self.auth {
                    Some((_, basic)) => rb.header("authorization", basic.expose()),
                    None => rb,
                }
            })
            .await?;
        if reply.is_success() {
            return Ok(());
        }
        Err(reply.error(
            "the httpreq endpoint refused the credentials: set HTTPREQ_USERNAME and HTTPREQ_PASSWORD to the ones it expects",
        ))
    }
}

fn check_dns01(req: &ChallengeRequest) -> Result<(), PluginError> {
    if req.challenge_type == ChallengeType::Dns01 {
        Ok(())
    } else {
        Err(PluginError::config(format!(
            "the httpreq solver answers dns-01 only, not {}",
            req.challenge_type
        )))
    }
}

#[async_trait]
impl Solver for Httpreq {
    type Config = HttpreqConfig;

    fn new(config: HttpreqConfig) -> Result<Self, PluginError> {
        let raw = config.endpoint.trim();
        let bad = |why: String| {
            PluginError::config(format!(
                "endpoint {raw:?} {why}; set HTTPREQ_ENDPOINT (or --solver-opt endpoint=...) to the server's base URL, e.g. https://dns-hook.example.com:9090"
            ))
        };
        let endpoint = Url::parse(raw).map_err(|e| bad(format!("is not a URL ({e})")))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.cannot_be_a_base() {
            return Err(bad("must be an http:// or https:// URL".into()));
        }
        if endpoint.query().is_some() || endpoint.fragment().is_some() {
            return Err(bad("must not have a query or fragment".into()));
        }
        let mode = match config.mode.trim() {
            "" => Mode::Default,
            "RAW" => Mode::Raw,
            other => {
                return Err(PluginError::config(format!(
                    "mode {other:?} is not known: leave HTTPREQ_MODE unset for {{\"fqdn\", \"value\"}} bodies, or set it to RAW (upper case, as lego) for {{\"domain\", \"token\", \"keyAuth\"}}"
                )));
            }
        };
        let user = config.username.filter(|u| !u.is_empty());
        let password = config.password.filter(|p| !p.is_empty());
        let auth = match (user, password) {
            (Some(u), Some(p)) => {
                // RFC 7617, as lego (Go's SetBasicAuth) sends it.
                let pair = Secret::new(format!("{u}:{}", p.expose()));
                let basic = Secret::new(format!("Basic {}", BASE64.encode(pair.expose())));
                Some((u, basic))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(PluginError::config(
                    "username is set but password is not: set HTTPREQ_PASSWORD (or HTTPREQ_PASSWORD_FILE) too, or unset HTTPREQ_USERNAME",
                ));
            }
            (None, Some(_)) => {
                return Err(PluginError::config(
                    "password is set but username is not: set HTTPREQ_USERNAME too, or unset HTTPREQ_PASSWORD",
                ));
            }
        };
        if config.http_timeout_s == 0 {
            return Err(PluginError::config("http_timeout_s must be at least 1"));
        }
        // Checked above; base_url only drops a trailing slash now.
        let endpoint =
            base_url(endpoint.as_str(), "endpoint", "(required)").map_err(|e| bad(e.message))?;
        let rest = Rest::new(
            "the httpreq endpoint",
            concat!("certsmith-httpreq/", env!("CARGO_PKG_VERSION")),
        );
        log::debug!("httpreq: endpoint {endpoint}, mode {mode:?}");
        Ok(Httpreq {
            rest,
            endpoint,
            mode,
            auth,
            attempt_timeout: Duration::from_secs(config.http_timeout_s),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        check_dns01(req)?;
        let body = self.body(req)?;
        self.post("present", &body, req).await?;
        Ok(Presented::new(serde_json::Value::Null))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        if check_dns01(req).is_err() {
            return Ok(());
        }
        let body = self.body(req)?;
        self.post("cleanup", &body, req).await
    }
}

certsmith_plugin_api::export_solver!(Httpreq, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{DnsTarget, Manifest};

    #[test]
    fn manifest_uses_legos_variables() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "httpreq");
        for (key, var) in [
            ("endpoint", "HTTPREQ_ENDPOINT"),
            ("mode", "HTTPREQ_MODE"),
            ("username", "HTTPREQ_USERNAME"),
            ("password", "HTTPREQ_PASSWORD"),
            ("http_timeout_s", "HTTPREQ_HTTP_TIMEOUT"),
        ] {
            assert_eq!(m.config[key].env.as_deref(), Some(var), "{key}");
        }
        assert!(m.config["password"].secret);
        assert!(m.config["endpoint"].required);
    }

    #[test]
    fn endpoint_paths_are_kept() {
        for (endpoint, action, want) in [
            (
                "https://h:9090/acme",
                "present",
                "https://h:9090/acme/present",
            ),
            ("https://h/acme/", "cleanup", "https://h/acme/cleanup"),
            ("http://h", "present", "http://h/present"),
        ] {
            let s = Httpreq::new(HttpreqConfig::new(endpoint)).expect("config");
            assert_eq!(join(&s.endpoint, &[action]).as_str(), want);
        }
    }

    #[test]
    fn bodies_are_legos() {
        let req = ChallengeRequest::new(ChallengeType::Dns01, "example.com", "t", "t.k", 0)
            .with_dns(Some(DnsTarget::new(
                "example.com",
                "_acme-challenge",
                "_acme-challenge.example.com",
                "VAL",
                60,
            )));
        let s = Httpreq::new(HttpreqConfig::new("http://h")).expect("config");
        assert_eq!(
            s.body(&req).expect("body"),
            json!({"fqdn": "_acme-challenge.example.com.", "value": "VAL"})
        );
        let mut c = HttpreqConfig::new("http://h");
        c.mode = "RAW".into();
        let s = Httpreq::new(c).expect("config");
        assert_eq!(
            s.body(&req).expect("body"),
            json!({"domain": "example.com", "token": "t", "keyAuth": "t.k"})
        );
    }

    #[test]
    fn config_is_checked_and_the_password_stays_hidden() {
        assert!(Httpreq::new(HttpreqConfig::new("ftp://h")).is_err());
        assert!(Httpreq::new(HttpreqConfig::new("http://h?x=1")).is_err());
        let mut c = HttpreqConfig::new("http://h");
        c.username = Some("u".into());
        assert!(Httpreq::new(c.clone()).is_err());
        c.password = Some(Secret::new("hunter2-secret"));
        let s = Httpreq::new(c.clone()).expect("both set");
        assert!(!format!("{s:?}{c:?}").contains("hunter2-secret"));
    }
}
