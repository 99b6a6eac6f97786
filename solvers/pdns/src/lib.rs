//! certsmith's `pdns` solver: answers dns-01 challenges through the HTTP
//! API of a PowerDNS Authoritative server.
//!
//! PowerDNS's API has no "add one record" call: a PATCH replaces a whole
//! record set (`changetype: REPLACE`) or deletes it (`DELETE`). So both
//! calls read, modify and write back, under the SDK's [`NameLocks`] for the
//! record's name (the host serializes other certsmith processes):
//!
//! * **present**: the zone's id from `GET /servers/{server}/zones?zone=<zone>`
//!   (cached), then `GET /servers/{server}/zones/{id}` and the TXT set at the
//!   name; if our value is missing, the set is written back with it added.
//!   The set is read from the whole zone, not with the API's `rrset_name`
//!   filter: the filtered answer leaves out disabled records (PowerDNS
//!   4.7), and writing that back would delete them;
//! * **cleanup**: the same read, then the set without our value (`REPLACE`),
//!   or `DELETE` when ours was the last; a zone or value already gone is
//!   success;
//! * after a change to a primary zone, `PUT .../notify` (a failure is
//!   logged, not fatal: secondaries also poll).
//! * **check_credentials** (`certsmith doctor`): `GET /servers/{server}`
//!   (the key is accepted, the server name exists), then each zone of the
//!   check looked up as present does (`GET .../zones?zone=`). Read-only.
//!
//! The API has no pagination (a zone comes whole) and no rate limits of its
//! own; 429 and 5xx from a proxy in front of it, and transport errors, are
//! retried inside the call's deadline by `solvers/shared/rest.rs`, the one
//! HTTP call of the REST plugins (the SDK's `retry` and status mapping). The API
//! key is a [`Secret`] sent as `X-API-Key` (the host marks every header of a
//! plugin's request sensitive) and never in a message, a log line or a
//! `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use certsmith_plugin_api::sdk::{HttpRequest, NameLocks};
use certsmith_plugin_api::{
    ChallengeRequest, CredentialsCheck, CredentialsChecked, Deadline, ErrorKind, PluginError,
    Presented, Secret, Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

#[path = "../../shared/rest.rs"]
mod rest;

use certsmith_plugin_api::sdk::header_value_ok;
use rest::{Rest, base_url, describe, join, normalize};

/// The default of `ttl` (lego's).
pub const DEFAULT_TTL: u32 = 120;

/// The configuration (see `plugin.toml`).
#[derive(Clone, Debug, Deserialize)]
pub struct PdnsConfig {
    /// The webserver's URL.
    pub api_url: String,
    /// `X-API-Key`.
    pub api_key: Secret,
    /// The server id.
    #[serde(default = "default_server")]
    pub server_name: String,
    /// TTL of new sets.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_server() -> String {
    "localhost".to_owned()
}

fn default_ttl() -> u32 {
    DEFAULT_TTL
}

impl PdnsConfig {
    /// A configuration with the defaults.
    pub fn new(api_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        PdnsConfig {
            api_url: api_url.into(),
            api_key: Secret::new(api_key),
            server_name: default_server(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// One record of a set, as the API shows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ApiRecord {
    /// Presentation format: a TXT value quoted.
    pub content: String,
    /// Whether PowerDNS serves it.
    #[serde(default)]
    pub disabled: bool,
}

/// One record set.
#[derive(Clone, Debug, Deserialize)]
pub struct RrSet {
    /// Its name, with the trailing dot.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its TTL.
    #[serde(default)]
    pub ttl: Option<u32>,
    /// Its records.
    #[serde(default)]
    pub records: Vec<ApiRecord>,
}

/// A zone as far as this solver cares.
#[derive(Clone, Debug, Deserialize)]
struct Zone {
    id: String,
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rrsets: Vec<RrSet>,
}

/// The solver.
pub struct Pdns {
    rest: Rest,
    /// `<api_url>/api/v1/servers/<server>`.
    server: Url,
    key: Secret,
    ttl: u32,
    locks: NameLocks,
    /// Zone name → (id, kind).
    zones: Mutex<HashMap<String, (String, String)>>,
}

impl fmt::Debug for Pdns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pdns")
            .field("server", &self.server.as_str())
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// TXT content as PowerDNS wants it: one quoted string (our values are
/// base64url: nothing to escape).
pub fn quoted(value: &str) -> String {
    format!("\"{value}\"")
}

/// A TXT content's text: its quoted strings joined (`"a" "b"` → `ab`).
pub fn unquoted(content: &str) -> String {
    let c = content.trim();
    if !c.starts_with('"') {
        return c.to_owned();
    }
    c.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect()
}

/// The set of TXT records at `fqdn` (normalized) in `rrsets`.
pub fn txt_set<'a>(rrsets: &'a [RrSet], fqdn: &str) -> Option<&'a RrSet> {
    rrsets
        .iter()
        .find(|s| s.ty.eq_ignore_ascii_case("TXT") && normalize(&s.name) == fqdn)
}

/// The PATCH body that makes the TXT set at `fqdn` hold `records` (a
/// DELETE when there are none).
pub fn patch_body(fqdn: &str, ttl: u32, records: &[ApiRecord]) -> Value {
    let name = format!("{fqdn}.");
    if records.is_empty() {
        return json!({"rrsets": [{"name": name, "type": "TXT", "changetype": "DELETE"}]});
    }
    let recs: Vec<Value> = records
        .iter()
        .map(|r| json!({"content": r.content, "disabled": r.disabled}))
        .collect();
    json!({"rrsets": [{"name": name, "type": "TXT", "ttl": ttl, "changetype": "REPLACE", "records": recs}]})
}

impl Pdns {
    fn url(&self, segments: &[&str]) -> Url {
        join(&self.server, segments)
    }

    /// One API call, retried as the module says; the answer's JSON (`Null`
    /// for an empty body).
    async fn call(
        &self,
        method: &str,
        url: Url,
        body: Option<&Value>,
        deadline: Deadline,
    ) -> Result<Value, PluginError> {
        let request = describe(method, &url);
        if !header_value_ok(self.key.expose()) {
            return Err(PluginError::config(
                "api_key cannot go in an HTTP header (a line break?); set PDNS_API_KEY to the key alone",
            ));
        }
        let reply = self
            .rest
            .send(deadline, &request, |left| {
                let rb = HttpRequest::new(method, url.as_str())
                    .header("X-API-Key", self.key.expose())
                    .header("accept", "application/json")
                    .timeout(left);
                match body {
                    Some(b) => rb.json(b),
                    None => rb,
                }
            })
            .await?;
        if !reply.is_success() {
            // PowerDNS says why in {"error": "..."}; the shared code reads it.
            return Err(reply
                .error("PowerDNS refused the API key: set PDNS_API_KEY to the server's api-key"));
        }
        if reply.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        reply.json("PowerDNS")
    }

    /// The id and kind of `zone` (normalized).
    async fn zone(&self, zone: &str, deadline: Deadline) -> Result<(String, String), PluginError> {
        if let Some(z) = self
            .zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(zone)
        {
            return Ok(z.clone());
        }
        let mut url = self.url(&["zones"]);
        url.query_pairs_mut()
            .append_pair("zone", &format!("{zone}."));
        let list = self.call("GET", url, None, deadline).await?;
        let zones: Vec<Zone> = serde_json::from_value(list).map_err(|e| {
            PluginError::internal(format!(
                "PowerDNS's zone list is not what the API documents: {e}"
            ))
        })?;
        let Some(z) = zones.into_iter().find(|z| normalize(&z.name) == zone) else {
            return Err(PluginError::not_found(format!(
                "PowerDNS has no zone {zone} on server {} (the zone certsmith found by SOA); create it there, or check api_url and server_name",
                self.server
            )));
        };
        let found = (z.id, z.kind);
        self.zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(zone.to_owned(), found.clone());
        Ok(found)
    }

    /// `check_credentials`: the server, then the zones; GETs only.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let deadline = req.deadline();
        let server = match self.call("GET", self.url(&[]), None, deadline).await {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(PluginError::not_found(format!(
                    "PowerDNS has no server {}: set server_name (PDNS_SERVER_NAME) to the server's name, usually localhost ({})",
                    self.server, e.message
                )));
            }
            Err(e) => return Err(e),
        };
        let version = server["version"].as_str().unwrap_or("unknown version");
        let mut detail = format!("the API key is accepted by PowerDNS {version}");
        let mut found = Vec::new();
        for z in &req.zones {
            let zone = normalize(&z.zone);
            let (_, kind) = self.zone(&zone, deadline).await?;
            found.push(format!("{zone} ({kind})"));
        }
        if !found.is_empty() {
            detail.push_str(&format!("; zones: {}", found.join(", ")));
        }
        Ok(CredentialsChecked::new(detail))
    }

    /// The TXT set at `fqdn` in zone `id`, read from the whole zone.
    async fn read_set(
        &self,
        id: &str,
        fqdn: &str,
        deadline: Deadline,
    ) -> Result<Option<RrSet>, PluginError> {
        let z = self
            .call("GET", self.url(&["zones", id]), None, deadline)
            .await?;
        let zone: Zone = serde_json::from_value(z).map_err(|e| {
            PluginError::internal(format!(
                "PowerDNS's zone is not what the API documents: {e}"
            ))
        })?;
        Ok(txt_set(&zone.rrsets, fqdn).cloned())
    }

    async fn write_set(
        &self,
        id: &str,
        kind: &str,
        body: &Value,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        self.call("PATCH", self.url(&["zones", id]), Some(body), deadline)
            .await?;
        if kind.eq_ignore_ascii_case("Master") || kind.eq_ignore_ascii_case("Primary") {
            let notify = self.url(&["zones", id, "notify"]);
            if let Err(e) = self.call("PUT", notify, None, deadline).await {
                log::warn!(
                    "pdns: NOTIFY for zone {id} failed ({e}); secondaries will see the change at their next refresh"
                );
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Solver for Pdns {
    type Config = PdnsConfig;

    fn new(config: PdnsConfig) -> Result<Self, PluginError> {
        let raw = config.api_url.trim();
        let bad = |why: String| {
            PluginError::config(format!(
                "api_url {raw:?} {why}; set PDNS_API_URL to the PowerDNS webserver, e.g. http://127.0.0.1:8081"
            ))
        };
        let parsed = Url::parse(raw).map_err(|e| bad(format!("is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(bad("must be an http:// or https:// URL".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("must not have a query or fragment".into()));
        }
        // Checked above; base_url only drops a trailing slash now.
        let mut url = base_url(raw, "api_url", "(required)").map_err(|e| bad(e.message))?;
        if config.api_key.expose().trim().is_empty() {
            return Err(PluginError::config(
                "api_key is empty: set PDNS_API_KEY (or PDNS_API_KEY_FILE) to the server's api-key",
            ));
        }
        let server_name = config.server_name.trim();
        if server_name.is_empty() || server_name.contains('/') {
            return Err(PluginError::config(format!(
                "server_name {server_name:?} is not a server id; leave it unset for localhost"
            )));
        }
        if !(1..=86400).contains(&config.ttl) {
            return Err(PluginError::config("ttl must be 1 to 86400 seconds"));
        }
        let path = url.path().trim_end_matches('/').to_owned();
        let path = if path.ends_with("/api/v1") {
            path
        } else {
            format!("{path}/api/v1")
        };
        url.set_path(&path);
        if let Ok(mut p) = url.path_segments_mut() {
            p.push("servers").push(server_name);
        }
        let rest = Rest::new(
            "PowerDNS",
            concat!("certsmith-pdns/", env!("CARGO_PKG_VERSION")),
        );
        Ok(Pdns {
            rest,
            server: url,
            key: Secret::new(config.api_key.expose().trim()),
            ttl: config.ttl,
            locks: NameLocks::new(),
            zones: Mutex::new(HashMap::new()),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let t = req.dns01_target("pdns")?;
        let deadline = req.deadline();
        let zone = normalize(&t.zone);
        let fqdn = normalize(&t.fqdn);
        let (id, kind) = self.zone(&zone, deadline).await?;
        let _name = self.locks.lock(&fqdn).await;
        let set = self.read_set(&id, &fqdn, deadline).await?;
        let mut records = set.as_ref().map(|s| s.records.clone()).unwrap_or_default();
        if records
            .iter()
            .any(|r| unquoted(&r.content) == t.value && !r.disabled)
        {
            log::debug!("pdns: {fqdn} already holds the value");
        } else {
            records.retain(|r| unquoted(&r.content) != t.value);
            records.push(ApiRecord {
                content: quoted(&t.value),
                disabled: false,
            });
            let ttl = set.as_ref().and_then(|s| s.ttl).unwrap_or(self.ttl);
            self.write_set(&id, &kind, &patch_body(&fqdn, ttl, &records), deadline)
                .await
                .map_err(|mut e| {
                    e.message = format!("could not add the TXT value at {fqdn}: {}", e.message);
                    e
                })?;
            log::info!(
                "pdns: added a TXT value at {fqdn} ({} in the set)",
                records.len()
            );
        }
        Ok(Presented::new(json!({ "zone_id": id })))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(t) = req.dns01_target("pdns") else {
            return Ok(());
        };
        let deadline = req.deadline();
        let zone = normalize(&t.zone);
        let fqdn = normalize(&t.fqdn);
        let (id, kind) = match self.zone(&zone, deadline).await {
            Ok(z) => z,
            Err(e) if e.kind == ErrorKind::NotFound => {
                log::warn!("pdns: {}; nothing to clean up at {fqdn}", e.message);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let _name = self.locks.lock(&fqdn).await;
        let set = match self.read_set(&id, &fqdn, deadline).await {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(set) = set else { return Ok(()) };
        let before = set.records.len();
        let kept: Vec<ApiRecord> = set
            .records
            .iter()
            .filter(|r| unquoted(&r.content) != t.value)
            .cloned()
            .collect();
        if kept.len() == before {
            return Ok(());
        }
        let ttl = set.ttl.unwrap_or(self.ttl);
        self.write_set(&id, &kind, &patch_body(&fqdn, ttl, &kept), deadline)
            .await
            .map_err(|mut e| {
                e.message = format!("could not remove the TXT value at {fqdn}: {}", e.message);
                e
            })?;
        log::info!("pdns: removed a TXT value at {fqdn} ({} left)", kept.len());
        Ok(())
    }

    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(self.verify(req).await)
    }
}

certsmith_plugin_api::export_solver!(Pdns, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::Manifest;

    #[test]
    fn manifest_uses_legos_variables() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "pdns");
        assert_eq!(m.config["api_url"].env.as_deref(), Some("PDNS_API_URL"));
        assert_eq!(m.config["api_key"].env.as_deref(), Some("PDNS_API_KEY"));
        assert!(m.config["api_key"].secret);
        assert_eq!(
            m.config["server_name"].env.as_deref(),
            Some("PDNS_SERVER_NAME")
        );
    }

    #[test]
    fn txt_content_round_trips() {
        assert_eq!(unquoted(&quoted("abc")), "abc");
        assert_eq!(unquoted("\"ab\" \"c\""), "abc");
        assert_eq!(unquoted("bare"), "bare");
    }

    #[test]
    fn patch_keeps_other_records_and_deletes_an_empty_set() {
        let recs = vec![
            ApiRecord {
                content: quoted("other"),
                disabled: true,
            },
            ApiRecord {
                content: quoted("ours"),
                disabled: false,
            },
        ];
        let b = patch_body("_acme-challenge.example.test", 60, &recs);
        assert_eq!(b["rrsets"][0]["changetype"], "REPLACE");
        assert_eq!(b["rrsets"][0]["name"], "_acme-challenge.example.test.");
        assert_eq!(b["rrsets"][0]["records"][0]["disabled"], true);
        let d = patch_body("_acme-challenge.example.test", 60, &[]);
        assert_eq!(d["rrsets"][0]["changetype"], "DELETE");
    }

    #[test]
    fn the_api_url_gets_its_path_once() {
        for (given, want) in [
            ("http://h:8081", "http://h:8081/api/v1/servers/localhost"),
            ("http://h:8081/", "http://h:8081/api/v1/servers/localhost"),
            (
                "http://h/pdns/api/v1",
                "http://h/pdns/api/v1/servers/localhost",
            ),
        ] {
            let p = Pdns::new(PdnsConfig::new(given, "k")).expect("config");
            assert_eq!(p.server.as_str(), want);
        }
        assert!(Pdns::new(PdnsConfig::new("http://h", " ")).is_err());
        let p = Pdns::new(PdnsConfig::new("http://h", "very-secret-key")).expect("config");
        assert!(!format!("{p:?}").contains("very-secret-key"));
    }
}
