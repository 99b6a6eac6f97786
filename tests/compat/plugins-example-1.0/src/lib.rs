//! An example third-party certsmith plugin: a dns-01 solver for
//! [pebble-challtestsrv](https://github.com/letsencrypt/pebble/tree/main/cmd/pebble-challtestsrv),
//! the mock DNS server that ships with Let's Encrypt's Pebble test CA.
//!
//! It depends on one certsmith crate, `certsmith-plugin-api` (feature
//! `sdk`), and is built as a `cdylib` that certsmith loads at run time. The
//! README walks through every part; the short version:
//!
//! * `plugin.toml` declares the code (`challtestsrv`), the challenge type
//!   (`dns-01`) and the one option (`url`); the host validates the
//!   configuration against it before [`ChallTestSrv::new`] sees it.
//! * [`Solver::present`] appends one TXT value at the name the host computed
//!   ([`DnsTarget`]); [`Solver::cleanup`] removes exactly that value.
//! * [`export_solver!`](certsmith_plugin_api::export_solver) at the bottom
//!   exports the one symbol certsmith looks for.
//!
//! # What challtestsrv's API can and cannot do
//!
//! `POST /set-txt {"host", "value"}` *appends* a value (a second identical
//! value is served twice), and `POST /clear-txt {"host"}` removes *every*
//! value at a name; there is no way to list values or delete one. Host names
//! need a trailing dot and are matched case-sensitively, although DNS
//! queries are not case-sensitive: `_acme-challenge.example.test` (no dot)
//! is accepted and never served.
//!
//! The solver contract (docs/design.md §3) asks for "append one value, delete
//! exactly that value": `example.test` and `*.example.test` put two values
//! at `_acme-challenge.example.test` at the same time. So the plugin
//! remembers, per name, the values it added; cleanup clears the name and
//! adds the others back. That memory is per process (a `static`, shared by
//! every instance of the solver, keyed by management URL and name), and one
//! lock per name serializes the clear-and-re-add against concurrent calls at
//! the same name.

use std::collections::{BTreeSet, HashMap};
use std::error::Error as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, Deadline, DnsTarget, PluginError, Presented, Solver,
    async_trait, log,
};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

/// How long one HTTP request may take (the call's deadline may cut it shorter).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per request for answers worth retrying (5xx, 429, timeouts).
const ATTEMPTS: u32 = 3;

/// The configuration, deserialized from the JSON object the host built from
/// `plugin.toml`'s `[config]` keys (already checked: `url` is a string and
/// present).
#[derive(Clone, Debug, Deserialize)]
pub struct ChallTestSrvConfig {
    /// pebble-challtestsrv's management API, e.g. `http://127.0.0.1:8055`.
    pub url: String,
}

/// The solver: one per configuration, shared by all concurrent calls.
#[derive(Debug)]
pub struct ChallTestSrv {
    /// The management API without a trailing slash, e.g. `http://127.0.0.1:8055`.
    base: String,
    client: reqwest::Client,
}

/// What this process has put at one name on one challtestsrv.
#[derive(Debug, Default)]
struct NameState {
    /// The values that should be served at the name.
    values: BTreeSet<String>,
    /// Set when a write failed half way, so the server may not hold exactly
    /// `values`; the next call at this name rewrites the whole name.
    dirty: bool,
}

/// (management URL, host name with trailing dot).
type Key = (String, String);
type NameLock = Arc<tokio::sync::Mutex<NameState>>;

/// Every name this process has values at. A `static` rather than a field, so
/// that two instances pointed at the same challtestsrv (two orders, two
/// configurations) never clear each other's values.
fn names() -> &'static Mutex<HashMap<Key, NameLock>> {
    static NAMES: OnceLock<Mutex<HashMap<Key, NameLock>>> = OnceLock::new();
    NAMES.get_or_init(Mutex::default)
}

/// The lock of one name, created on first use.
fn name_lock(key: &Key) -> NameLock {
    let mut map = names().lock().unwrap_or_else(PoisonError::into_inner);
    map.entry(key.clone()).or_default().clone()
}

/// Forgets a name that holds nothing and that no call is using.
fn forget_if_idle(key: &Key) {
    let mut map = names().lock().unwrap_or_else(PoisonError::into_inner);
    let idle = map.get(key).is_some_and(|lock| {
        // Locks are handed out only under the map's mutex, which we hold: a
        // count of 1 means nobody else has this one or can get it now.
        Arc::strong_count(lock) == 1
            && lock
                .try_lock()
                .is_ok_and(|s| s.values.is_empty() && !s.dirty)
    });
    if idle {
        map.remove(key);
    }
}

impl ChallTestSrv {
    /// The management API, normalized (no trailing slash).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Adds `value` at `host` (appends).
    async fn set_txt(
        &self,
        host: &str,
        value: &str,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        self.post(
            "/set-txt",
            json!({ "host": host, "value": value }),
            deadline,
        )
        .await
    }

    /// Removes every value at `host`.
    async fn clear_txt(&self, host: &str, deadline: Deadline) -> Result<(), PluginError> {
        self.post("/clear-txt", json!({ "host": host }), deadline)
            .await
    }

    /// Makes the server hold exactly `values` at `host`: clear, then add each.
    async fn rewrite(
        &self,
        host: &str,
        values: &BTreeSet<String>,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        self.clear_txt(host, deadline).await?;
        for v in values {
            self.set_txt(host, v, deadline).await?;
        }
        Ok(())
    }

    /// POSTs `body` as JSON, retrying 5xx, 429 and timeouts a few times
    /// within the deadline.
    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 1;
        loop {
            let left = deadline.remaining();
            if left.is_zero() {
                return Err(PluginError::transient(format!(
                    "the call's deadline passed before POST {url} could be sent"
                )));
            }
            let sent = self
                .client
                .post(&url)
                .json(&body)
                .timeout(left.min(REQUEST_TIMEOUT))
                .send()
                .await;
            let (err, retry) = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after_ms = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| s.saturating_mul(1000));
                    let text = resp.text().await.unwrap_or_default();
                    status_error(&self.base, &url, status, &text, retry_after_ms)
                }
                Err(e) => transport_error(&self.base, &url, &e),
            };
            let wait = err
                .retry_after_ms
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_millis(100 << attempt));
            if !retry || attempt >= ATTEMPTS || deadline.remaining() <= wait {
                return Err(err);
            }
            log::debug!("challtestsrv: {err}; retrying in {} ms", wait.as_millis());
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[async_trait]
impl Solver for ChallTestSrv {
    type Config = ChallTestSrvConfig;

    fn new(config: ChallTestSrvConfig) -> Result<Self, PluginError> {
        let base = normalize_url(&config.url)?;
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            // challtestsrv runs next to the tests: an HTTP(S)_PROXY meant for
            // the outside world must not capture loopback requests.
            .no_proxy()
            .user_agent(concat!(
                "certsmith-challtestsrv/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| {
                PluginError::internal(format!("challtestsrv: cannot build an HTTP client: {e}"))
            })?;
        Ok(ChallTestSrv { base, client })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = dns_target(req)?;
        let host = host_name(&target.fqdn)?;
        let key = (self.base.clone(), host.clone());
        let lock = name_lock(&key);
        let mut state = lock.lock().await;
        let deadline = req.deadline();
        let written = if state.dirty {
            // An earlier write failed half way: rewrite the whole name.
            state.values.insert(target.value.clone());
            self.rewrite(&host, &state.values, deadline).await
        } else if state.values.contains(&target.value) {
            // Idempotent: challtestsrv would serve a second copy.
            log::debug!("challtestsrv: {} already at {host}", target.value);
            Ok(())
        } else {
            let r = self.set_txt(&host, &target.value, deadline).await;
            if r.is_ok() {
                state.values.insert(target.value.clone());
            }
            r
        };
        // After a failure the server's content is unknown (a timed-out
        // request may still have been applied): the next call rewrites it.
        state.dirty = written.is_err();
        drop(state);
        drop(lock);
        if let Err(e) = written {
            forget_if_idle(&key);
            return Err(e);
        }
        log::debug!("challtestsrv: added {} at {host}", target.value);
        Ok(Presented {
            // Stored in the host's journal: data to read, never a secret.
            // Cleanup works from the request, which the journal keeps too.
            handle: json!({ "host": host, "value": target.value }),
            // challtestsrv serves every record with TTL 0 and takes no TTL.
            ttl: (target.ttl != 0).then_some(0),
        })
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        // Present refuses these, so nothing was added: nothing to remove.
        let Ok(target) = dns_target(req) else {
            return Ok(());
        };
        let Ok(host) = host_name(&target.fqdn) else {
            return Ok(());
        };
        let key = (self.base.clone(), host.clone());
        let lock = name_lock(&key);
        let mut state = lock.lock().await;
        if !state.values.remove(&target.value) {
            // Already removed, or added by an earlier process (a crashed run
            // whose journal is being cleaned): challtestsrv cannot tell, and
            // cannot delete one value, so clear the name either way and keep
            // the values this process knows.
            log::debug!(
                "challtestsrv: {} at {host} is not one this process added; clearing the name in case an earlier run left it",
                target.value
            );
        }
        let written = self.rewrite(&host, &state.values, req.deadline()).await;
        if let Err(e) = &written
            && !state.values.is_empty()
        {
            log::warn!(
                "challtestsrv: removing {} from {host} failed half way ({e}); the next call at this name rewrites it",
                target.value
            );
        }
        state.dirty = written.is_err();
        drop(state);
        drop(lock);
        forget_if_idle(&key);
        if written.is_ok() {
            log::debug!("challtestsrv: removed {} from {host}", target.value);
        }
        written
    }
}

/// The dns-01 target of a request, or a `config` error.
fn dns_target(req: &ChallengeRequest) -> Result<&DnsTarget, PluginError> {
    if req.challenge_type != ChallengeType::Dns01 {
        return Err(PluginError::config(format!(
            "the challtestsrv solver answers dns-01 only, not {}",
            req.challenge_type
        )));
    }
    req.dns.as_ref().ok_or_else(|| {
        PluginError::config(format!(
            "the dns-01 request for {} carries no DNS target (`dns`): the host must say \
             where the TXT record goes; this certsmith may be too old for DNS plugins",
            req.identifier
        ))
    })
}

/// The name as challtestsrv needs it: lower case (it matches names
/// case-sensitively, DNS does not) with exactly one trailing dot (without
/// it the record is accepted and never served).
fn host_name(fqdn: &str) -> Result<String, PluginError> {
    let name = fqdn.trim().trim_end_matches('.');
    if name.is_empty() {
        return Err(PluginError::config(format!(
            "the DNS target's fqdn {fqdn:?} is empty"
        )));
    }
    Ok(format!("{}.", name.to_ascii_lowercase()))
}

/// Checks the `url` option; returns it without a trailing slash.
fn normalize_url(raw: &str) -> Result<String, PluginError> {
    let bad = |why: String| {
        PluginError::config(format!(
            "url {raw:?} {why}; set it to pebble-challtestsrv's management API, e.g. \
             --solver-opt url=http://127.0.0.1:8055 (its -management address)"
        ))
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "has scheme {:?}, not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment".to_owned()));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// An error for a non-2xx answer, and whether to retry it here.
fn status_error(
    base: &str,
    url: &str,
    status: StatusCode,
    body: &str,
    retry_after_ms: Option<u64>,
) -> (PluginError, bool) {
    let body: String = body.trim().chars().take(200).collect();
    let said = if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    };
    match status.as_u16() {
        404 | 405 => (
            PluginError::config(format!(
                "POST {url} answered {status}{said}: {base} does not look like \
                 pebble-challtestsrv's management API; set url to its -management address"
            )),
            false,
        ),
        429 => (
            PluginError::rate_limited(
                format!("POST {url} answered {status}{said}"),
                retry_after_ms,
            ),
            true,
        ),
        500..=599 => (
            PluginError::transient(format!(
                "pebble-challtestsrv at {base} failed: POST {url} answered {status}{said}"
            )),
            true,
        ),
        _ => (
            PluginError::internal(format!(
                "pebble-challtestsrv at {base} rejected POST {url} with {status}{said}; \
                 this is a bug in the challtestsrv plugin"
            )),
            false,
        ),
    }
}

/// An error for a request that got no answer, and whether to retry it here.
fn transport_error(base: &str, url: &str, e: &reqwest::Error) -> (PluginError, bool) {
    let mut chain = e.to_string();
    let mut refused = false;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    if refused {
        // Nothing listens there: retrying within this call will not help.
        return (
            PluginError::transient(format!(
                "cannot reach pebble-challtestsrv's management API at {base}: connection \
                 refused. Is pebble-challtestsrv running? The url option must be its \
                 -management address (default :8055)"
            )),
            false,
        );
    }
    if e.is_timeout() {
        return (
            PluginError::transient(format!(
                "POST {url} got no answer in time; is pebble-challtestsrv at {base} overloaded?"
            )),
            true,
        );
    }
    (
        PluginError::transient(format!(
            "POST {url} failed: {chain}; is pebble-challtestsrv running at {base}?"
        )),
        true,
    )
}

certsmith_plugin_api::export_solver!(ChallTestSrv, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{ConfigType, ErrorKind, Manifest};

    #[test]
    fn host_names_get_one_trailing_dot_and_lower_case() {
        assert_eq!(
            host_name("_acme-challenge.Example.TEST").ok().as_deref(),
            Some("_acme-challenge.example.test.")
        );
        assert_eq!(host_name("a.test.").ok().as_deref(), Some("a.test."));
        assert_eq!(host_name(" a.test.. ").ok().as_deref(), Some("a.test."));
        assert!(host_name(".").is_err());
        assert!(host_name("").is_err());
    }

    #[test]
    fn urls_are_checked_and_normalized() {
        assert_eq!(
            normalize_url("http://127.0.0.1:8055").ok().as_deref(),
            Some("http://127.0.0.1:8055")
        );
        assert_eq!(
            normalize_url(" http://localhost:8055/ ").ok().as_deref(),
            Some("http://localhost:8055")
        );
        assert_eq!(
            normalize_url("https://cts.internal/api/").ok().as_deref(),
            Some("https://cts.internal/api")
        );
        for bad in [
            "",
            "127.0.0.1:8055",
            "ftp://127.0.0.1",
            "http://",
            "http://h/?a=b",
        ] {
            let e = normalize_url(bad).expect_err(bad);
            assert_eq!(e.kind, ErrorKind::Config, "{bad}");
            assert!(e.message.contains("--solver-opt url="), "{}", e.message);
        }
    }

    #[test]
    fn status_codes_map_to_error_kinds() {
        let b = "http://127.0.0.1:1";
        let u = "http://127.0.0.1:1/set-txt";
        let (e, retry) = status_error(b, u, StatusCode::NOT_FOUND, "", None);
        assert_eq!((e.kind, retry), (ErrorKind::Config, false));
        let (e, retry) = status_error(b, u, StatusCode::BAD_REQUEST, "bad json", None);
        assert_eq!((e.kind, retry), (ErrorKind::Internal, false));
        assert!(e.message.contains("400") && e.message.contains("bad json"));
        let (e, retry) = status_error(b, u, StatusCode::SERVICE_UNAVAILABLE, "", None);
        assert_eq!((e.kind, retry), (ErrorKind::Transient, true));
        assert!(e.retryable && e.message.contains("503"), "{e}");
        let (e, retry) = status_error(b, u, StatusCode::TOO_MANY_REQUESTS, "", Some(2000));
        assert_eq!((e.kind, retry), (ErrorKind::RateLimited, true));
        assert_eq!(e.retry_after_ms, Some(2000));
    }

    #[test]
    fn manifest_declares_what_the_readme_says() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("plugin.toml is valid");
        assert_eq!(m.code, "challtestsrv");
        assert_eq!(m.challenge_types, [ChallengeType::Dns01]);
        let url = &m.config["url"];
        assert_eq!(url.ty, ConfigType::String);
        assert!(url.required && !url.secret);
        assert_eq!(url.env.as_deref(), Some("CHALLTESTSRV_URL"));
        assert_eq!(m.config.len(), 1);
        assert_eq!(
            (
                m.defaults.ttl,
                m.defaults.propagation_timeout_s,
                m.defaults.polling_interval_s
            ),
            (60, 30, 1)
        );
    }

    #[test]
    fn the_entry_point_hands_out_a_v1_header_with_the_manifest() {
        // SAFETY: a null HostApi is allowed (no log forwarding); the header
        // and what it points to are 'static data of this library.
        let (magic, major, manifest) = unsafe {
            let h = &*certsmith_solver_plugin_v1(std::ptr::null());
            (h.magic, h.abi_major, h.manifest_toml.as_slice().to_vec())
        };
        assert_eq!(magic, certsmith_plugin_api::abi::MAGIC);
        assert_eq!(major, certsmith_plugin_api::abi::ABI_MAJOR);
        assert_eq!(manifest, include_bytes!("../plugin.toml"));
    }
}
