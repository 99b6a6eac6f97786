//! certsmith's `cloudflare` solver: answers dns-01 challenges with TXT
//! records in a zone hosted on Cloudflare, through the Cloudflare API v4.
//!
//! The core has already found the zone and the record name; this plugin
//! only *adds one TXT value* and later *deletes exactly that value*
//! (docs/design.md §3), so `example.com` and `*.example.com` can have their two
//! values at `_acme-challenge.example.com` at once, and any other TXT value
//! there (a site verification, another client's challenge) is never
//! touched:
//!
//! * **zone**: `zone_id` from the configuration, else
//!   `GET /zones?name=<zone>` over every page, keeping exact name matches
//!   (an active zone wins over pending copies in other accounts); cached in
//!   memory per zone name;
//! * **present**: `POST /zones/{id}/dns_records` with
//!   `{type: "TXT", name: <fqdn>, content: "\"<value>\"", ttl}`; the value is
//!   quoted as Cloudflare recommends for TXT content. An "identical record
//!   already exists" answer (81057/81058) is success: the existing record
//!   is looked up for its id. The handle is `{"zone_id", "record_id"}`;
//! * **cleanup**: the record named by the handle is read back and deleted
//!   only if it still is our TXT value at our name (the handle is journal
//!   data, and a stale or damaged one must not delete someone else's
//!   record); then, and when there is no handle, the TXT records at the
//!   name are listed and those holding our value (quoted or not) are
//!   deleted. A record or zone already gone is success.
//!
//! Retries (429 with `Retry-After`, 5xx with back-off: the SDK's `retry`)
//! and the error classes (the SDK's HTTP mapping, refined by Cloudflare's
//! error codes) live in [`api`].
//! Errors: a refused token is `auth` ("Cloudflare rejected the API token:
//! it needs Zone:DNS:Edit on <zone>"), a zone the token cannot see is
//! `not_found`. The token is never in a message, a log line or a `Debug`
//! output.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use certsmith_plugin_api::{
    ChallengeRequest, CredentialsCheck, CredentialsChecked, Deadline, ErrorKind, PluginError,
    Presented, Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::json;

mod api;

pub use api::ApiToken;
use api::{Api, ApiError, Method, Record, TokenStatus, Zone};

/// The default API base.
pub const DEFAULT_API_BASE: &str = "https://api.cloudflare.com/client/v4";
/// The default TTL of the records, seconds (the lowest Cloudflare accepts
/// outside Enterprise plans).
pub const DEFAULT_TTL: i64 = 120;
/// What `ttl = 1` ("automatic") means on Cloudflare, seconds.
const AUTOMATIC_TTL: u32 = 300;
/// Cloudflare's "The record already exists." and "An identical record
/// already exists." codes.
const DUPLICATE_CODES: &[i64] = &[81057, 81058];
/// The comment put on every record, so people know where it came from.
const RECORD_COMMENT: &str = "certsmith ACME dns-01 challenge; deleted automatically";
/// Zones per page in lookups (Cloudflare's maximum for /zones).
const ZONES_PER_PAGE: u32 = 50;
/// Records per page in lookups.
const RECORDS_PER_PAGE: u32 = 100;

/// The configuration (see `plugin.toml`).
#[derive(Clone, Deserialize)]
pub struct CloudflareConfig {
    /// The API token (Zone:DNS:Edit, plus Zone:Zone:Read without `zone_id`).
    pub api_token: ApiToken,
    /// The zone's id; skips the lookup by name.
    #[serde(default)]
    pub zone_id: Option<String>,
    /// The API's base URL.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The TTL of the records: 1 (automatic) or 60..=86400.
    #[serde(default = "default_ttl")]
    pub ttl: i64,
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_ttl() -> i64 {
    DEFAULT_TTL
}

impl CloudflareConfig {
    /// A configuration with the defaults and `api_token`.
    pub fn new(api_token: impl Into<String>) -> Self {
        CloudflareConfig {
            api_token: ApiToken::new(api_token),
            zone_id: None,
            api_base: default_api_base(),
            ttl: DEFAULT_TTL,
        }
    }
}

impl fmt::Debug for CloudflareConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflareConfig")
            .field("api_token", &self.api_token)
            .field("zone_id", &self.zone_id)
            .field("api_base", &self.api_base)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The solver.
pub struct Cloudflare {
    api: Api,
    zone_id: Option<String>,
    ttl: u32,
    /// Zone name → zone id, filled by lookups.
    zones: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for Cloudflare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cloudflare")
            .field("api", &self.api)
            .field("zone_id", &self.zone_id)
            .field("ttl", &self.ttl)
            .field(
                "zones",
                &*self.zones.lock().unwrap_or_else(PoisonError::into_inner),
            )
            .finish()
    }
}

/// Lower case, no trailing dot.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Cloudflare ids are 32 hex digits; accept any short alphanumeric string,
/// which is all that may go into a URL path segment here.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// TXT content as sent: one quoted character-string.
fn quoted(value: &str) -> String {
    format!("\"{value}\"")
}

/// TXT content as a value: without one pair of surrounding quotes.
fn unquoted(content: &str) -> &str {
    let c = content.trim();
    c.strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or(c)
}

/// Whether `r` is the TXT record holding `value` at `fqdn`.
fn is_ours(r: &Record, fqdn: &str, value: &str) -> bool {
    r.ty.eq_ignore_ascii_case("TXT") && normalize(&r.name) == fqdn && unquoted(&r.content) == value
}

impl Cloudflare {
    /// The zone id for `zone` (normalized): configured, cached, or looked up.
    async fn zone_id(&self, zone: &str, deadline: Deadline) -> Result<String, PluginError> {
        if let Some(id) = &self.zone_id {
            return Ok(id.clone());
        }
        if let Some(id) = self
            .zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(zone)
        {
            return Ok(id.clone());
        }
        let mut url = self.api.url(&["zones"]);
        url.query_pairs_mut().append_pair("name", zone);
        let zones: Vec<Zone> = self
            .api
            .list_all(url, ZONES_PER_PAGE, deadline)
            .await
            .map_err(|e| e.into_plugin(zone, &format!("look up the zone {zone}")))?;
        let matching: Vec<&Zone> = zones
            .iter()
            .filter(|z| normalize(&z.name) == zone)
            .collect();
        let active: Vec<&Zone> = matching
            .iter()
            .copied()
            .filter(|z| z.status == "active")
            .collect();
        let chosen = match (matching.as_slice(), active.as_slice()) {
            ([], _) => {
                return Err(PluginError::not_found(format!(
                    "no Cloudflare zone named {zone} is visible to this token (is the zone on this Cloudflare account, and among the token's Zone Resources? Or set zone_id)"
                )));
            }
            ([only], _) | (_, [only]) => *only,
            (all, _) => {
                let ids: Vec<String> = all
                    .iter()
                    .map(|z| format!("{} ({})", z.id, z.status))
                    .collect();
                return Err(PluginError::config(format!(
                    "{} Cloudflare zones named {zone} are visible to this token: {}; set zone_id to the one to use",
                    all.len(),
                    ids.join(", ")
                )));
            }
        };
        if !valid_id(&chosen.id) {
            return Err(PluginError::internal(format!(
                "Cloudflare returned a zone id that is not an identifier: {:?}",
                chosen.id
            )));
        }
        log::debug!(
            "cloudflare: zone {zone} is {} ({})",
            chosen.id,
            chosen.status
        );
        self.zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(zone.to_owned(), chosen.id.clone());
        Ok(chosen.id.clone())
    }

    /// What `check_credentials` does.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let deadline = req.deadline();
        let url = self.api.url(&["user", "tokens", "verify"]);
        let token: TokenStatus = self
            .api
            .call(Method::Get, url, None, deadline)
            .await
            .map_err(|e| {
                let e = e.into_plugin("any zone", "verify the API token");
                if e.kind == ErrorKind::Auth {
                    PluginError::auth(format!(
                        "Cloudflare does not accept the API token ({}); set api_token (or CLOUDFLARE_API_TOKEN) to an active token with Zone:DNS:Edit",
                        e.message
                    ))
                } else {
                    e
                }
            })?
            .result;
        if token.status != "active" {
            return Err(PluginError::auth(format!(
                "the Cloudflare API token is {} (not active); set api_token (or CLOUDFLARE_API_TOKEN) to an active token with Zone:DNS:Edit",
                token.status
            )));
        }
        let mut found = Vec::new();
        for zone in &req.zones {
            let zone = normalize(&zone.zone);
            let id = self.zone_id(&zone, deadline).await?;
            found.push(format!("{zone} ({id})"));
        }
        let mut detail = "the API token is active".to_owned();
        if !found.is_empty() {
            detail.push_str(&format!("; zones visible to it: {}", found.join(", ")));
        }
        Ok(CredentialsChecked::new(detail))
    }

    /// Every TXT record at `fqdn` holding `value`.
    async fn find_ours(
        &self,
        zone_id: &str,
        fqdn: &str,
        value: &str,
        deadline: Deadline,
    ) -> Result<Vec<Record>, ApiError> {
        // Filtered by type and name only: the content filter is exact, and
        // the value may be stored quoted (as we send it) or bare (as older
        // clients did). Few records share a name, so matching here is cheap.
        let mut url = self.api.url(&["zones", zone_id, "dns_records"]);
        url.query_pairs_mut()
            .append_pair("type", "TXT")
            .append_pair("name", fqdn);
        let records: Vec<Record> = self.api.list_all(url, RECORDS_PER_PAGE, deadline).await?;
        Ok(records
            .into_iter()
            .filter(|r| is_ours(r, fqdn, value) && valid_id(&r.id))
            .collect())
    }

    /// Deletes one record; already gone is success.
    async fn delete(
        &self,
        zone: &str,
        zone_id: &str,
        record_id: &str,
        fqdn: &str,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        let url = self.api.url(&["zones", zone_id, "dns_records", record_id]);
        match self
            .api
            .call::<serde_json::Value>(Method::Delete, url, None, deadline)
            .await
        {
            Ok(_) => {
                log::info!("cloudflare: deleted TXT record {record_id} at {fqdn}");
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                log::debug!("cloudflare: TXT record {record_id} at {fqdn} was already gone");
                Ok(())
            }
            Err(e) => Err(e.into_plugin(
                zone,
                &format!("delete the TXT record {record_id} at {fqdn}"),
            )),
        }
    }
}

#[async_trait]
impl Solver for Cloudflare {
    type Config = CloudflareConfig;

    fn new(config: CloudflareConfig) -> Result<Self, PluginError> {
        let ttl = match config.ttl {
            1 => 1,
            t @ 60..=86400 => t as u32,
            t => {
                return Err(PluginError::config(format!(
                    "ttl {t} is out of range: use 1 (Cloudflare's automatic TTL) or 60 to 86400 seconds (below 120 only on Enterprise zones)"
                )));
            }
        };
        let zone_id = match config.zone_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(id) if valid_id(id) => Some(id.to_ascii_lowercase()),
            Some(id) => {
                return Err(PluginError::config(format!(
                    "zone_id {id:?} is not a Cloudflare zone id (32 hex digits, shown on the zone's Overview page)"
                )));
            }
        };
        let api = Api::new(&config.api_base, config.api_token)?;
        log::debug!(
            "cloudflare: API at {}, ttl {ttl}, zone_id {}",
            api.base(),
            zone_id.as_deref().unwrap_or("looked up by name")
        );
        Ok(Cloudflare {
            api,
            zone_id,
            ttl,
            zones: Mutex::new(HashMap::new()),
        })
    }

    /// `GET /user/tokens/verify` (the token is known and active), then the
    /// zone lookup of every zone asked about (the token can see it). Both
    /// only read.
    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(self.verify(req).await)
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = req.dns01_target("cloudflare")?;
        let deadline = req.deadline();
        let zone = normalize(&target.zone);
        let fqdn = normalize(&target.fqdn);
        let zone_id = self.zone_id(&zone, deadline).await?;

        let url = self.api.url(&["zones", &zone_id, "dns_records"]);
        let body = json!({
            "type": "TXT",
            "name": fqdn,
            "content": quoted(&target.value),
            "ttl": self.ttl,
            "comment": RECORD_COMMENT,
        });
        let record_id = match self
            .api
            .call::<Record>(Method::Post, url, Some(&body), deadline)
            .await
        {
            Ok(answer) => {
                log::info!(
                    "cloudflare: added TXT record {} at {fqdn}",
                    answer.result.id
                );
                answer.result.id
            }
            Err(e) if e.has_code(DUPLICATE_CODES) => {
                // Presented before (a retry, or a request whose answer was
                // lost): the record is there; find its id.
                let found = self
                    .find_ours(&zone_id, &fqdn, &target.value, deadline)
                    .await
                    .map_err(|e| {
                        e.into_plugin(&zone, &format!("list the TXT records at {fqdn}"))
                    })?;
                match found.into_iter().next() {
                    Some(r) => {
                        log::debug!("cloudflare: TXT record {} at {fqdn} already existed", r.id);
                        r.id
                    }
                    None => {
                        return Err(PluginError::transient(format!(
                            "Cloudflare says an identical TXT record exists at {fqdn}, but does not list it; retry"
                        )));
                    }
                }
            }
            Err(e) => {
                return Err(e.into_plugin(&zone, &format!("add the TXT record at {fqdn}")));
            }
        };
        if !valid_id(&record_id) {
            return Err(PluginError::internal(format!(
                "Cloudflare returned a record id that is not an identifier: {record_id:?}"
            )));
        }
        let used = if self.ttl == 1 {
            AUTOMATIC_TTL
        } else {
            self.ttl
        };
        Ok(
            Presented::new(json!({ "zone_id": zone_id, "record_id": record_id }))
                .with_ttl((used != target.ttl).then_some(used)),
        )
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(target) = req.dns01_target("cloudflare") else {
            // Never presented (present refuses it), so nothing to remove.
            return Ok(());
        };
        let deadline = req.deadline();
        let zone = normalize(&target.zone);
        let fqdn = normalize(&target.fqdn);
        let handle_str = |key: &str| {
            presented
                .handle
                .get(key)
                .and_then(|v| v.as_str())
                .filter(|s| valid_id(s))
                .map(str::to_owned)
        };
        let zone_id = match handle_str("zone_id") {
            Some(id) => id,
            None => match self.zone_id(&zone, deadline).await {
                Ok(id) => id,
                Err(e) if e.kind == certsmith_plugin_api::ErrorKind::NotFound => {
                    log::warn!(
                        "cloudflare: cannot clean up {fqdn}: {}; nothing this token can see is left to delete",
                        e.message
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            },
        };

        if let Some(record_id) = handle_str("record_id") {
            let url = self
                .api
                .url(&["zones", &zone_id, "dns_records", &record_id]);
            match self
                .api
                .call::<Record>(Method::Get, url, None, deadline)
                .await
            {
                Ok(a) if is_ours(&a.result, &fqdn, &target.value) => {
                    return self
                        .delete(&zone, &zone_id, &record_id, &fqdn, deadline)
                        .await;
                }
                Ok(a) => log::warn!(
                    "cloudflare: record {record_id} is a {} record at {}, not this challenge's TXT value at {fqdn}; leaving it alone and looking ours up by value",
                    a.result.ty,
                    a.result.name
                ),
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(e.into_plugin(
                        &zone,
                        &format!("read the TXT record {record_id} at {fqdn}"),
                    ));
                }
            }
        }

        let ours = match self
            .find_ours(&zone_id, &fqdn, &target.value, deadline)
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                log::warn!(
                    "cloudflare: zone {zone_id} ({zone}) no longer exists; nothing to clean up at {fqdn}"
                );
                return Ok(());
            }
            Err(e) => {
                return Err(e.into_plugin(&zone, &format!("list the TXT records at {fqdn}")));
            }
        };
        for r in ours {
            self.delete(&zone, &zone_id, &r.id, &fqdn, deadline).await?;
        }
        Ok(())
    }
}

certsmith_plugin_api::export_solver!(Cloudflare, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{ChallengeType, Manifest};

    #[test]
    fn manifest_parses_and_matches_the_config_defaults() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "cloudflare");
        assert!(m.supports(ChallengeType::Dns01));
        let token = &m.config["api_token"];
        assert!(token.required && token.secret);
        assert_eq!(token.env.as_deref(), Some("CLOUDFLARE_API_TOKEN"));
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
        assert_eq!(m.defaults.propagation_timeout_s, 120);
        assert_eq!(m.defaults.polling_interval_s, 2);
    }

    #[test]
    fn quoting_round_trips() {
        assert_eq!(unquoted(&quoted("abc")), "abc");
        assert_eq!(unquoted("abc"), "abc");
        assert_eq!(unquoted("\"abc"), "\"abc");
    }

    #[test]
    fn config_is_checked() {
        let mut c = CloudflareConfig::new("tok");
        c.ttl = 30;
        assert!(Cloudflare::new(c.clone()).is_err());
        c.ttl = 1;
        assert!(Cloudflare::new(c.clone()).is_ok());
        c.zone_id = Some("../etc".into());
        assert!(Cloudflare::new(c.clone()).is_err());
        c.zone_id = Some(String::new());
        assert!(Cloudflare::new(c).is_ok(), "an empty zone_id means unset");
    }

    #[test]
    fn config_from_host_json() {
        let c: CloudflareConfig =
            serde_json::from_str(r#"{"api_token":"secret-value"}"#).expect("minimal config parses");
        assert_eq!(c.api_base, DEFAULT_API_BASE);
        assert_eq!(c.ttl, DEFAULT_TTL);
        assert!(!format!("{c:?}").contains("secret-value"));
    }
}
