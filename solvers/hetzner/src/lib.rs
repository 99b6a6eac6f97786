//! certsmith's `hetzner` solver: answers dns-01 challenges with TXT records
//! in a zone hosted on Hetzner DNS, through the DNS API
//! (`https://dns.hetzner.com/api/v1`).
//!
//! Hetzner keeps each TXT value as a record of its own, so this plugin
//! *adds one record* per challenge and later *deletes exactly that record*;
//! other values at the name (a site verification, another client's
//! challenge, the other half of a wildcard + apex pair) are never touched:
//!
//! * **zone**: `GET /zones?name=<zone>` (exact name), cached per zone;
//! * **present**: the zone's records are listed (`GET /records?zone_id=`,
//!   every page of `meta.pagination`: the API filters by zone only) and a
//!   TXT record at our name with our value is reused (a retried call),
//!   else `POST /records` with `{zone_id, type, name (relative, "@" at the
//!   apex), value, ttl}`. The handle is `{"zone_id", "record_id"}`;
//! * **cleanup**: the same listing, then `DELETE /records/{id}` for each
//!   record holding our value at our name. Gone already is success.
//!
//! * **check_credentials** (`certsmith doctor`): `GET /zones?name=<zone>`
//!   for each zone of the check, or `GET /zones?per_page=1` when there is
//!   none, which proves the token without changing anything.
//!
//! Retries and rate limits (Hetzner's gateway answers 429 with
//! `Retry-After` and `RateLimit-Reset`) are the SDK's, through [`rest`].
//! The token travels only in the `Auth-API-Token` header and is never in a
//! message, a log line or a `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use certsmith_plugin_api::sdk::{HttpRequest, Secret, relative_name};
use certsmith_plugin_api::{
    ChallengeRequest, CredentialsCheck, CredentialsChecked, Deadline, ErrorKind, PluginError,
    Presented, Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::json;
use url::Url;

#[path = "../../shared/rest.rs"]
mod rest;

use certsmith_plugin_api::sdk::header_value_ok;
use rest::{Reply, Rest, base_url, describe, join, normalize};

/// The default API base.
pub const DEFAULT_API_BASE: &str = "https://dns.hetzner.com/api/v1";
/// The default TTL, seconds.
pub const DEFAULT_TTL: i64 = 120;
/// Records per page asked for.
const PER_PAGE: u32 = 100;
/// Upper bound on pages walked.
const MAX_PAGES: u32 = 500;
const PROVIDER: &str = "Hetzner DNS";

/// The configuration (see `plugin.toml`).
#[derive(Clone, Deserialize)]
pub struct HetznerConfig {
    /// A DNS API token.
    pub api_key: Secret,
    /// The API's base URL.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The TTL of the records, seconds.
    #[serde(default = "default_ttl")]
    pub ttl: i64,
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_ttl() -> i64 {
    DEFAULT_TTL
}

impl fmt::Debug for HetznerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HetznerConfig")
            .field("api_key", &self.api_key)
            .field("api_base", &self.api_base)
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Zone {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Zones {
    #[serde(default)]
    zones: Vec<Zone>,
}

#[derive(Clone, Debug, Deserialize)]
struct Record {
    id: String,
    #[serde(rename = "type", default)]
    ty: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct Records {
    #[serde(default)]
    records: Vec<Record>,
    #[serde(default)]
    meta: Meta,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    #[serde(default)]
    last_page: u32,
}

#[derive(Debug, Deserialize)]
struct Created {
    record: Record,
}

/// The solver.
pub struct Hetzner {
    rest: Rest,
    base: Url,
    token: Secret,
    ttl: u32,
    /// Zone name → zone id.
    zones: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for Hetzner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hetzner")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn auth_hint(zone: &str) -> String {
    format!(
        "Hetzner DNS rejected the API token: set HETZNER_API_KEY (or HETZNER_API_KEY_FILE) to a DNS API token of the account that holds {zone} (https://dns.hetzner.com/settings/api-token)"
    )
}

/// The error for a zone the token does not see.
fn no_zone(zone: &str) -> PluginError {
    PluginError::not_found(format!(
        "Hetzner DNS has no zone named {zone} for this token: add the zone at https://dns.hetzner.com, or set HETZNER_API_KEY to the token of the account that holds it"
    ))
}

/// TXT content without one pair of surrounding quotes (the console stores
/// values quoted, the API takes them bare).
fn unquoted(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Ids go into URL paths: keep them to what Hetzner issues.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Hetzner {
    async fn call(
        &self,
        method: &str,
        url: Url,
        body: Option<&serde_json::Value>,
        deadline: Deadline,
    ) -> Result<Reply, PluginError> {
        let request = describe(method, &url);
        if !header_value_ok(self.token.expose()) {
            return Err(PluginError::config(
                "api_key cannot go in an HTTP header (a line break?); paste the token alone",
            ));
        }
        self.rest
            .send(deadline, &request, |left| {
                let mut rb = HttpRequest::new(method, url.as_str())
                    .header("Auth-API-Token", self.token.expose())
                    .timeout(left);
                if let Some(b) = body {
                    rb = rb.json(b);
                }
                rb
            })
            .await
    }

    fn refused(&self, reply: &Reply, zone: &str, action: &str) -> PluginError {
        let e = reply.error(&auth_hint(zone));
        match e.kind {
            ErrorKind::Auth | ErrorKind::RateLimited => e,
            kind => PluginError::new(
                kind,
                format!("Hetzner DNS refused to {action}: {}", e.message),
            ),
        }
    }

    /// The zone's id: cached or looked up. `None`: Hetzner has no such zone.
    async fn zone_id(&self, zone: &str, deadline: Deadline) -> Result<Option<String>, PluginError> {
        if let Some(id) = self
            .zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(zone)
        {
            return Ok(Some(id.clone()));
        }
        let mut url = join(&self.base, &["zones"]);
        url.query_pairs_mut().append_pair("name", zone);
        let reply = self.call("GET", url, None, deadline).await?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(self.refused(&reply, zone, &format!("look up the zone {zone}")));
        }
        let zones: Zones = reply.json(PROVIDER)?;
        let Some(found) = zones.zones.into_iter().find(|z| normalize(&z.name) == zone) else {
            return Ok(None);
        };
        if !valid_id(&found.id) {
            return Err(PluginError::internal(format!(
                "Hetzner DNS returned a zone id that is not an identifier: {:?}",
                found.id
            )));
        }
        self.zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(zone.to_owned(), found.id.clone());
        Ok(Some(found.id))
    }

    /// The TXT records at `fqdn` holding `value`, over every page.
    /// `check_credentials`: each zone of the check found, or (with none)
    /// the first page of zones listed; nothing is written.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let deadline = req.deadline();
        if req.zones.is_empty() {
            let mut url = join(&self.base, &["zones"]);
            url.query_pairs_mut()
                .append_pair("page", "1")
                .append_pair("per_page", "1");
            let reply = self.call("GET", url, None, deadline).await?;
            if !reply.is_success() {
                return Err(self.refused(&reply, "your zones", "list the zones"));
            }
            return Ok(CredentialsChecked::new(
                "the API token is accepted (zones listed)",
            ));
        }
        let mut found = Vec::new();
        for zone in &req.zones {
            let zone = normalize(&zone.zone);
            let Some(id) = self.zone_id(&zone, deadline).await? else {
                return Err(no_zone(&zone));
            };
            found.push(format!("{zone} ({id})"));
        }
        Ok(CredentialsChecked::new(format!(
            "the API token is accepted; zones visible to it: {}",
            found.join(", ")
        )))
    }

    async fn find_ours(
        &self,
        zone: &str,
        zone_id: &str,
        fqdn: &str,
        value: &str,
        deadline: Deadline,
    ) -> Result<Vec<Record>, PluginError> {
        let name = relative_name(fqdn, zone);
        let mut ours = Vec::new();
        let mut page = 1u32;
        loop {
            let mut url = join(&self.base, &["records"]);
            url.query_pairs_mut()
                .append_pair("zone_id", zone_id)
                .append_pair("page", &page.to_string())
                .append_pair("per_page", &PER_PAGE.to_string());
            let reply = self.call("GET", url, None, deadline).await?;
            if reply.status == 404 {
                return Ok(ours);
            }
            if !reply.is_success() {
                return Err(self.refused(&reply, zone, &format!("list the records of {zone}")));
            }
            let got: Records = reply.json(PROVIDER)?;
            let n = got.records.len();
            ours.extend(got.records.into_iter().filter(|r| {
                r.ty.eq_ignore_ascii_case("TXT")
                    && normalize(&r.name) == name.to_ascii_lowercase()
                    && unquoted(&r.value) == value
                    && valid_id(&r.id)
            }));
            let last = got.meta.pagination.map_or(1, |p| p.last_page);
            if n == 0 || page >= last || page >= MAX_PAGES {
                return Ok(ours);
            }
            page += 1;
        }
    }
}

#[async_trait]
impl Solver for Hetzner {
    type Config = HetznerConfig;

    fn new(config: HetznerConfig) -> Result<Self, PluginError> {
        let ttl = match config.ttl {
            t @ 60..=2_147_483_647 => t as u32,
            t => {
                return Err(PluginError::config(format!(
                    "ttl {t} is out of range: use 60 seconds or more"
                )));
            }
        };
        let base = base_url(&config.api_base, "api_base", DEFAULT_API_BASE)?;
        let token = config.api_key.expose().trim();
        if token.is_empty() {
            return Err(PluginError::config(
                "api_key is empty: set HETZNER_API_KEY (or HETZNER_API_KEY_FILE) to a Hetzner DNS API token",
            ));
        }
        let rest = Rest::new(
            PROVIDER,
            concat!("certsmith-hetzner/", env!("CARGO_PKG_VERSION")),
        );
        log::debug!("hetzner: API at {base}, ttl {ttl}");
        Ok(Hetzner {
            rest,
            base,
            token: Secret::new(token),
            ttl,
            zones: Mutex::new(HashMap::new()),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = req.dns01_target("hetzner")?;
        let deadline = req.deadline();
        let zone = normalize(&target.zone);
        let fqdn = normalize(&target.fqdn);
        let Some(zone_id) = self.zone_id(&zone, deadline).await? else {
            return Err(no_zone(&zone));
        };
        let existing = self
            .find_ours(&zone, &zone_id, &fqdn, &target.value, deadline)
            .await?;
        let id = match existing.into_iter().next() {
            Some(r) => r.id,
            None => {
                let url = join(&self.base, &["records"]);
                let body = json!({
                    "zone_id": zone_id,
                    "type": "TXT",
                    "name": relative_name(&fqdn, &zone),
                    "value": target.value,
                    "ttl": self.ttl,
                });
                let reply = self.call("POST", url, Some(&body), deadline).await?;
                if !reply.is_success() {
                    return Err(self.refused(
                        &reply,
                        &zone,
                        &format!("add the TXT record at {fqdn}"),
                    ));
                }
                let created: Created = reply.json(PROVIDER)?;
                log::info!("hetzner: added TXT record {} at {fqdn}", created.record.id);
                created.record.id
            }
        };
        Ok(
            Presented::new(json!({ "zone_id": zone_id, "record_id": id }))
                .with_ttl((self.ttl != target.ttl).then_some(self.ttl)),
        )
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(target) = req.dns01_target("hetzner") else {
            return Ok(());
        };
        let deadline = req.deadline();
        let zone = normalize(&target.zone);
        let fqdn = normalize(&target.fqdn);
        let Some(zone_id) = self.zone_id(&zone, deadline).await? else {
            log::warn!("hetzner: the zone {zone} is gone; nothing to clean up at {fqdn}");
            return Ok(());
        };
        for r in self
            .find_ours(&zone, &zone_id, &fqdn, &target.value, deadline)
            .await?
        {
            let url = join(&self.base, &["records", &r.id]);
            let reply = self.call("DELETE", url, None, deadline).await?;
            match reply.status {
                s if (200..300).contains(&s) => {
                    log::info!("hetzner: deleted TXT record {} at {fqdn}", r.id);
                }
                404 => log::debug!("hetzner: TXT record {} at {fqdn} was already gone", r.id),
                _ => {
                    return Err(self.refused(
                        &reply,
                        &zone,
                        &format!("delete the TXT record {} at {fqdn}", r.id),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(self.verify(req).await)
    }
}

certsmith_plugin_api::export_solver!(Hetzner, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::Manifest;

    #[test]
    fn manifest_parses_and_matches_the_config_defaults() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "hetzner");
        let key = &m.config["api_key"];
        assert!(key.required && key.secret);
        assert_eq!(key.env.as_deref(), Some("HETZNER_API_KEY"));
        assert_eq!(
            m.config["ttl"]
                .default
                .as_ref()
                .and_then(|v| v.as_integer()),
            Some(DEFAULT_TTL)
        );
        assert_eq!(
            m.config["api_base"]
                .default
                .as_ref()
                .and_then(|v| v.as_str()),
            Some(DEFAULT_API_BASE)
        );
    }

    #[test]
    fn values_and_names() {
        assert_eq!(unquoted("\"abc\""), "abc");
        assert_eq!(unquoted("abc"), "abc");
        assert_eq!(relative_name("hz.test", "hz.test"), "@");
        assert_eq!(
            relative_name("_acme-challenge.a.hz.test", "hz.test"),
            "_acme-challenge.a"
        );
    }

    #[test]
    fn config_is_checked_and_never_shows_the_key() {
        let c: HetznerConfig =
            serde_json::from_str(r#"{"api_key":"secret-value","ttl":5}"#).expect("parses");
        assert!(!format!("{c:?}").contains("secret-value"));
        assert!(Hetzner::new(c.clone()).is_err());
        let s = Hetzner::new(HetznerConfig { ttl: 60, ..c }).expect("valid");
        assert!(!format!("{s:?}").contains("secret-value"));
    }
}
