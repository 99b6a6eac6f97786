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

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use certsmith_plugin_api::sdk::{Backoff, HttpRequest, NameLocks, retry};
use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, Deadline, DnsTarget, ErrorKind, PluginError, Presented,
    Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::json;

/// How long one HTTP request may take (the call's deadline may cut it shorter).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What the plugin calls itself in `User-Agent`.
const USER_AGENT: &str = concat!("certsmith-challtestsrv/", env!("CARGO_PKG_VERSION"));
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
}

/// What this process has put at one name on one challtestsrv. A name whose
/// state is back to the default (no values, not dirty) is forgotten by
/// [`NameLocks`].
#[derive(Debug, Default, PartialEq)]
struct NameState {
    /// The values that should be served at the name.
    values: BTreeSet<String>,
    /// Set when a write failed half way, so the server may not hold exactly
    /// `values`; the next call at this name rewrites the whole name.
    dirty: bool,
}

/// Every name this process has values at, keyed by management URL and
/// host name, with one lock per name held across the HTTP calls. A
/// `static` rather than a field, so that two instances pointed at the same
/// challtestsrv (two orders, two configurations) never clear each other's
/// values.
fn names() -> &'static NameLocks<NameState> {
    static NAMES: OnceLock<NameLocks<NameState>> = OnceLock::new();
    NAMES.get_or_init(NameLocks::new)
}

/// The lock key of `host` on the server at `base`.
fn key(base: &str, host: &str) -> String {
    format!("{base} {host}")
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

    /// POSTs `body` as JSON, retrying 5xx, 429 and transport failures with
    /// backoff within the deadline (the SDK's `retry`).
    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        let url = format!("{}{path}", self.base);
        let request = format!("POST {url}");
        let backoff = Backoff::new(ATTEMPTS, Duration::from_millis(200), Duration::from_secs(2));
        retry(deadline, backoff, |left| {
            let (url, request, body) = (&url, &request, &body);
            async move {
                // Sent by certsmith's own HTTP client (plugin ABI 1.3): this
                // plugin carries no HTTP or TLS library of its own.
                let resp = HttpRequest::post(url.as_str())
                    .header("user-agent", USER_AGENT)
                    .json(body)
                    .timeout(left.min(REQUEST_TIMEOUT))
                    .send()
                    .await
                    .map_err(|e| transport_error(&self.base, e))?;
                if resp.is_success() {
                    return Ok(());
                }
                Err(status_error(
                    &self.base,
                    request,
                    resp.status(),
                    &resp.text(),
                    resp.header("retry-after"),
                ))
            }
        })
        .await
    }
}

#[async_trait]
impl Solver for ChallTestSrv {
    type Config = ChallTestSrvConfig;

    fn new(config: ChallTestSrvConfig) -> Result<Self, PluginError> {
        let base = normalize_url(&config.url)?;
        Ok(ChallTestSrv { base })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = dns_target(req)?;
        let host = host_name(&target.fqdn)?;
        let mut state = names().lock(&key(&self.base, &host)).await;
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
        // Unlocks; a name left empty and clean is forgotten.
        drop(state);
        written?;
        log::debug!("challtestsrv: added {} at {host}", target.value);
        // The handle is stored in the host's journal: data to read, never a
        // secret. Cleanup works from the request, which the journal keeps
        // too. challtestsrv serves every record with TTL 0 and takes no TTL.
        Ok(
            Presented::new(json!({ "host": host, "value": target.value }))
                .with_ttl((target.ttl != 0).then_some(0)),
        )
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
        let mut state = names().lock(&key(&self.base, &host)).await;
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
    let url = url::Url::parse(raw.trim()).map_err(|e| bad(format!("is not a URL ({e})")))?;
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

/// The error for a non-2xx answer: the SDK's mapping
/// ([`PluginError::from_http_status`]), refined where challtestsrv means
/// something specific.
fn status_error(
    base: &str,
    request: &str,
    status: u16,
    body: &str,
    retry_after: Option<&str>,
) -> PluginError {
    let e = PluginError::from_http_status(status, request, body, retry_after);
    match status {
        // challtestsrv has these two endpoints: anything else answering 404
        // is not challtestsrv.
        404 | 405 => PluginError::config(format!(
            "{}: {base} does not look like pebble-challtestsrv's management API; set url \
             to its -management address",
            e.message
        )),
        // It accepts any JSON we send: a 4xx is a bug here.
        400..=499 if e.kind == ErrorKind::Config => PluginError::internal(format!(
            "pebble-challtestsrv at {base} rejected it: {}; this is a bug in the challtestsrv plugin",
            e.message
        )),
        _ => e,
    }
}

/// The error for a request that got no answer (transient and retryable,
/// naming the cause, as the host reports it), with where to look.
fn transport_error(base: &str, mut err: PluginError) -> PluginError {
    if err.kind != ErrorKind::Transient {
        // A URL or header the host refused: not a reachability problem.
        return err;
    }
    err.message = format!(
        "cannot reach pebble-challtestsrv's management API at {base}: {}. Is \
         pebble-challtestsrv running? The url option must be its -management address \
         (default :8055)",
        err.message
    );
    err
}

certsmith_plugin_api::export_solver!(ChallTestSrv, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{ConfigType, Manifest};

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
        let r = "POST http://127.0.0.1:1/set-txt";
        let e = status_error(b, r, 404, "", None);
        assert_eq!((e.kind, e.retryable), (ErrorKind::Config, false));
        let e = status_error(b, r, 400, "bad json", None);
        assert_eq!((e.kind, e.retryable), (ErrorKind::Internal, false));
        assert!(e.message.contains("400") && e.message.contains("bad json"));
        let e = status_error(b, r, 503, "", None);
        assert_eq!((e.kind, e.retryable), (ErrorKind::Transient, true));
        assert!(e.message.contains("503"), "{e}");
        let e = status_error(b, r, 429, "", Some("2"));
        assert_eq!((e.kind, e.retryable), (ErrorKind::RateLimited, true));
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
