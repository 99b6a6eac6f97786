//! certsmith's `gcloud` solver: answers dns-01 challenges with TXT records
//! in a Google Cloud DNS managed zone, through the Cloud DNS API v1.
//!
//! Cloud DNS keeps all TXT values at a name in one resource record set,
//! changed only by a `Change` that deletes the old set and adds the new
//! one (`POST .../changes` with `deletions` and `additions`). Adding or
//! removing our value is therefore a read-modify-write: read the set
//! (`GET .../rrsets?name=&type=TXT`), add or remove our value, send the
//! change, and poll it (`GET .../changes/{id}`) until it is `done`. Cloud
//! DNS refuses a change whose deletion no longer matches the set (409 or
//! 412: someone changed it in between), and then the cycle starts again;
//! inside the plugin the SDK's [`NameLocks`] serializes the cycles at one
//! name (the host serializes across processes). Other values are kept.
//!
//! * **zone**: `zone_id` from the configuration, else
//!   `GET .../managedZones?dnsName=<zone>.` over every page
//!   (`nextPageToken`), preferring a public zone (a private one only with
//!   `allow_private_zone`); cached per zone name;
//! * **credentials**: a service-account JSON key, exchanged for an access
//!   token by a signed JWT ([`jwt`]) at the key's `token_uri`; the token is
//!   cached until a minute before it expires.
//! * **check_credentials** (`certsmith doctor`): an access token obtained
//!   with the key, then each zone of the check found among the project's
//!   managed zones (or the configured `zone_id` read; with no zone, one
//!   page of managed zones listed). Only GETs reach Cloud DNS.
//!
//! Retries and rate limits are the SDK's, through [`rest`]. The key and the
//! token are never in a message, a log line or a `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use certsmith_plugin_api::sdk::{HttpRequest, NameLocks, Secret};
use certsmith_plugin_api::{
    ChallengeRequest, CredentialsCheck, CredentialsChecked, Deadline, DnsTarget, ErrorKind,
    PluginError, Presented, Solver, async_trait, log,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

mod jwt;
#[path = "../../shared/rest.rs"]
mod rest;

use certsmith_plugin_api::sdk::header_value_ok;
use jwt::ServiceAccount;
use rest::{Reply, Rest, base_url, describe, form, join, normalize};

/// The default API base.
pub const DEFAULT_API_BASE: &str = "https://dns.googleapis.com/dns/v1";
/// The default TTL, seconds.
pub const DEFAULT_TTL: i64 = 120;
/// A cached token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Read-modify-write cycles tried when others keep changing the set.
const MAX_CYCLES: u32 = 5;
/// The first wait before polling a pending change (doubling, at most
/// [`CHANGE_POLL_MAX`]): Cloud DNS usually applies a change within a second.
const CHANGE_POLL: Duration = Duration::from_millis(200);
/// The longest wait between two polls of a pending change.
const CHANGE_POLL_MAX: Duration = Duration::from_secs(2);
/// Upper bound on pages walked.
const MAX_PAGES: u32 = 100;
const PROVIDER: &str = "Google Cloud DNS";

/// The configuration (see `plugin.toml`).
#[derive(Clone, Deserialize)]
pub struct GcloudConfig {
    /// The service account's JSON key (its content).
    pub service_account: Secret,
    /// The project holding the zone; default: the key's `project_id`.
    #[serde(default)]
    pub project: Option<String>,
    /// The managed zone's name; skips the lookup.
    #[serde(default)]
    pub zone_id: Option<String>,
    /// Whether a private zone may be used.
    #[serde(default)]
    pub allow_private_zone: bool,
    /// The TTL of a record set this solver creates, seconds.
    #[serde(default = "default_ttl")]
    pub ttl: i64,
    /// The API's base URL.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The token endpoint; default: the key's `token_uri`.
    #[serde(default)]
    pub token_uri: Option<String>,
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_ttl() -> i64 {
    DEFAULT_TTL
}

impl fmt::Debug for GcloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcloudConfig")
            .field("service_account", &self.service_account)
            .field("project", &self.project)
            .field("zone_id", &self.zone_id)
            .field("allow_private_zone", &self.allow_private_zone)
            .field("ttl", &self.ttl)
            .field("api_base", &self.api_base)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManagedZone {
    name: String,
    #[serde(default)]
    dns_name: String,
    #[serde(default)]
    visibility: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZonePage {
    #[serde(default)]
    managed_zones: Vec<ManagedZone>,
    #[serde(default)]
    next_page_token: Option<String>,
}

/// A resource record set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    ttl: u64,
    rrdatas: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RrSetPage {
    #[serde(default)]
    rrsets: Vec<RrSet>,
}

#[derive(Debug, Deserialize)]
struct Change {
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
}

struct Token {
    value: Secret,
    renew_at: Instant,
}

/// The solver.
pub struct Gcloud {
    rest: Rest,
    base: Url,
    token_url: Url,
    account: ServiceAccount,
    project: String,
    zone_id: Option<String>,
    allow_private_zone: bool,
    ttl: u32,
    token: tokio::sync::Mutex<Option<Token>>,
    zones: Mutex<HashMap<String, String>>,
    locks: NameLocks,
}

impl fmt::Debug for Gcloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcloud")
            .field("base", &self.base.as_str())
            .field("token_url", &self.token_url.as_str())
            .field("account", &self.account)
            .field("project", &self.project)
            .field("zone_id", &self.zone_id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// TXT rdata as Cloud DNS stores it: one quoted string.
fn quoted(value: &str) -> String {
    format!("\"{value}\"")
}

/// The value an rdata holds: its quoted strings concatenated.
fn unquoted(rdata: &str) -> String {
    let r = rdata.trim();
    if !r.starts_with('"') {
        return r.to_owned();
    }
    r.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect()
}

/// Managed zone names and projects go into URL paths.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl Gcloud {
    fn auth_hint(&self) -> String {
        format!(
            "Google Cloud refused the service account {}: give it the DNS Administrator role (roles/dns.admin) in project {}, and check GCE_PROJECT and GCE_SERVICE_ACCOUNT_FILE",
            self.account.client_email, self.project
        )
    }

    /// An access token: cached, or obtained with a signed JWT.
    async fn access_token(&self, deadline: Deadline) -> Result<String, PluginError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.expose().to_owned());
        }
        let assertion = self.account.assertion(self.account.token_uri.as_str())?;
        let body = form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
        ]);
        let request = describe("POST", &self.token_url);
        let reply = self
            .rest
            .send(deadline, &request, |left| {
                HttpRequest::post(self.token_url.as_str())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body.as_bytes())
                    .timeout(left)
            })
            .await?;
        if !reply.is_success() {
            let said = rest::provider_message(&reply.body);
            return Err(PluginError::auth(format!(
                "Google refused the service account key of {} (HTTP {} to {}: {said}): set GCE_SERVICE_ACCOUNT_FILE (or GCE_SERVICE_ACCOUNT) to a current JSON key of that service account; a deleted or rotated key needs a new one (IAM → Service accounts → Keys)",
                self.account.client_email, reply.status, reply.request
            )));
        }
        let t: TokenAnswer = reply.json("Google's token endpoint")?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(300));
        log::debug!("gcloud: got an access token for {} s", lifetime.as_secs());
        let value = t.access_token.clone();
        *cached = Some(Token {
            value: Secret::new(t.access_token),
            renew_at: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
        });
        Ok(value)
    }

    async fn call(
        &self,
        method: &str,
        url: &Url,
        body: Option<&Value>,
        deadline: Deadline,
    ) -> Result<Reply, PluginError> {
        let token = self.access_token(deadline).await?;
        if !header_value_ok(&token) {
            return Err(PluginError::internal(
                "the access token cannot go in an HTTP header",
            ));
        }
        let request = describe(method, url);
        let reply = self
            .rest
            .send(deadline, &request, |left| {
                let mut rb = HttpRequest::new(method, url.as_str())
                    .bearer_auth(&token)
                    .timeout(left);
                if let Some(b) = body {
                    rb = rb.json(b);
                }
                rb
            })
            .await?;
        if reply.status == 401 {
            *self.token.lock().await = None;
        }
        Ok(reply)
    }

    fn refused(&self, reply: &Reply, action: &str) -> PluginError {
        let e = reply.error(&self.auth_hint());
        match e.kind {
            ErrorKind::Auth | ErrorKind::RateLimited => e,
            kind => PluginError::new(
                kind,
                format!("Google Cloud DNS refused to {action}: {}", e.message),
            ),
        }
    }

    fn zone_url(&self, zone_id: &str, rest: &[&str]) -> Url {
        let mut segments = vec!["projects", self.project.as_str(), "managedZones", zone_id];
        segments.extend_from_slice(rest);
        join(&self.base, &segments)
    }

    /// The managed zone serving `zone`.
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
        let mut found: Vec<ManagedZone> = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = join(&self.base, &["projects", &self.project, "managedZones"]);
            url.query_pairs_mut()
                .append_pair("dnsName", &format!("{zone}."));
            if let Some(t) = &page_token {
                url.query_pairs_mut().append_pair("pageToken", t);
            }
            let reply = self.call("GET", &url, None, deadline).await?;
            if !reply.is_success() {
                return Err(self.refused(
                    &reply,
                    &format!("list the managed zones of project {}", self.project),
                ));
            }
            let page: ZonePage = reply.json(PROVIDER)?;
            found.extend(
                page.managed_zones
                    .into_iter()
                    .filter(|z| normalize(&z.dns_name) == zone),
            );
            page_token = page.next_page_token.filter(|t| !t.is_empty());
            if page_token.is_none() {
                break;
            }
        }
        let is_private = |z: &ManagedZone| z.visibility.as_deref() == Some("private");
        let chosen = found.iter().find(|z| !is_private(z)).or_else(|| {
            found
                .iter()
                .find(|z| self.allow_private_zone && is_private(z))
        });
        let Some(chosen) = chosen else {
            let hint = if found.iter().any(is_private) {
                " (only a private zone serves it: set GCE_ALLOW_PRIVATE_ZONE=true to use it)"
            } else {
                ""
            };
            return Err(PluginError::not_found(format!(
                "project {} has no Cloud DNS managed zone for {zone}{hint}; check GCE_PROJECT, or set GCE_ZONE_ID",
                self.project
            )));
        };
        if !valid_segment(&chosen.name) {
            return Err(PluginError::internal(format!(
                "Cloud DNS returned a zone name that is not an identifier: {:?}",
                chosen.name
            )));
        }
        log::debug!("gcloud: {zone} is served by managed zone {}", chosen.name);
        self.zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(zone.to_owned(), chosen.name.clone());
        Ok(chosen.name.clone())
    }

    /// `check_credentials`: the token, then the zones; nothing is changed.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let deadline = req.deadline();
        self.access_token(deadline).await?;
        let mut detail = format!(
            "the service account {} got an access token",
            self.account.client_email
        );
        let mut found = Vec::new();
        if let Some(id) = &self.zone_id {
            let reply = self
                .call("GET", &self.zone_url(id, &[]), None, deadline)
                .await?;
            if reply.status == 404 {
                return Err(PluginError::not_found(format!(
                    "project {} has no Cloud DNS managed zone named {id}; fix GCE_ZONE_ID (the zone's name, not its DNS name) or GCE_PROJECT",
                    self.project
                )));
            }
            if !reply.is_success() {
                return Err(self.refused(&reply, &format!("read the managed zone {id}")));
            }
            found.push(id.clone());
        } else if req.zones.is_empty() {
            let mut url = join(&self.base, &["projects", &self.project, "managedZones"]);
            url.query_pairs_mut().append_pair("maxResults", "1");
            let reply = self.call("GET", &url, None, deadline).await?;
            if !reply.is_success() {
                return Err(self.refused(
                    &reply,
                    &format!("list the managed zones of project {}", self.project),
                ));
            }
            detail.push_str(&format!(
                "; the managed zones of project {} are readable",
                self.project
            ));
        } else {
            for z in &req.zones {
                let zone = normalize(&z.zone);
                let id = self.zone_id(&zone, deadline).await?;
                found.push(format!("{zone} ({id})"));
            }
        }
        if !found.is_empty() {
            detail.push_str(&format!(
                "; managed zones of project {}: {}",
                self.project,
                found.join(", ")
            ));
        }
        Ok(CredentialsChecked::new(detail))
    }

    /// The TXT set at `fqdn`, if any.
    async fn read(
        &self,
        zone_id: &str,
        fqdn: &str,
        deadline: Deadline,
    ) -> Result<Option<RrSet>, PluginError> {
        let mut url = self.zone_url(zone_id, &["rrsets"]);
        url.query_pairs_mut()
            .append_pair("name", &format!("{fqdn}."))
            .append_pair("type", "TXT");
        let reply = self.call("GET", &url, None, deadline).await?;
        if !reply.is_success() {
            return Err(self.refused(&reply, &format!("read the TXT records at {fqdn}")));
        }
        let page: RrSetPage = reply.json(PROVIDER)?;
        Ok(page
            .rrsets
            .into_iter()
            .find(|s| s.ty == "TXT" && normalize(&s.name) == fqdn))
    }

    /// Sends a change and waits until it is done. `false`: the set changed
    /// meanwhile (409/412), read it again.
    async fn apply(
        &self,
        zone_id: &str,
        fqdn: &str,
        deletion: Option<&RrSet>,
        addition: Option<&RrSet>,
        deadline: Deadline,
    ) -> Result<bool, PluginError> {
        let url = self.zone_url(zone_id, &["changes"]);
        let body = json!({
            "kind": "dns#change",
            "additions": addition.into_iter().collect::<Vec<_>>(),
            "deletions": deletion.into_iter().collect::<Vec<_>>(),
        });
        let reply = self.call("POST", &url, Some(&body), deadline).await?;
        if matches!(reply.status, 409 | 412) {
            return Ok(false);
        }
        if !reply.is_success() {
            return Err(self.refused(&reply, &format!("change the TXT records at {fqdn}")));
        }
        let mut change: Change = reply.json(PROVIDER)?;
        let mut wait = CHANGE_POLL;
        while change.status != "done" {
            if !valid_segment(&change.id) {
                return Err(PluginError::internal(format!(
                    "Cloud DNS returned a change id that is not an identifier: {:?}",
                    change.id
                )));
            }
            if deadline.remaining() <= wait {
                return Err(PluginError::transient(format!(
                    "the Cloud DNS change {} at {fqdn} was still {} at the call's deadline",
                    change.id, change.status
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(CHANGE_POLL_MAX);
            let url = self.zone_url(zone_id, &["changes", &change.id]);
            let reply = self.call("GET", &url, None, deadline).await?;
            if !reply.is_success() {
                return Err(self.refused(&reply, &format!("read the change {}", change.id)));
            }
            change = reply.json(PROVIDER)?;
        }
        Ok(true)
    }

    /// Adds (`add`) or removes our value, read-modify-write under the name
    /// lock, again when the set changed in between.
    async fn change(
        &self,
        target: &DnsTarget,
        add: bool,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        let zone = normalize(&target.zone);
        let fqdn = normalize(&target.fqdn);
        let zone_id = self.zone_id(&zone, deadline).await?;
        let _guard = self.locks.lock(&fqdn).await;
        for _ in 0..MAX_CYCLES {
            let current = self.read(&zone_id, &fqdn, deadline).await?;
            let mut rrdatas = current
                .as_ref()
                .map(|s| s.rrdatas.clone())
                .unwrap_or_default();
            let has = rrdatas.iter().any(|r| unquoted(r) == target.value);
            if add == has {
                return Ok(());
            }
            if add {
                rrdatas.push(quoted(&target.value));
            } else {
                rrdatas.retain(|r| unquoted(r) != target.value);
            }
            let addition = (!rrdatas.is_empty()).then(|| RrSet {
                name: format!("{fqdn}."),
                ty: "TXT".into(),
                ttl: current.as_ref().map_or(u64::from(self.ttl), |s| s.ttl),
                rrdatas,
            });
            if self
                .apply(
                    &zone_id,
                    &fqdn,
                    current.as_ref(),
                    addition.as_ref(),
                    deadline,
                )
                .await?
            {
                log::info!(
                    "gcloud: {} a TXT value at {fqdn} in managed zone {zone_id}",
                    if add { "added" } else { "removed" }
                );
                return Ok(());
            }
            log::debug!("gcloud: the TXT set at {fqdn} changed meanwhile; reading it again");
        }
        Err(PluginError::transient(format!(
            "the TXT records at {fqdn} kept changing while certsmith wrote them ({MAX_CYCLES} tries); retry"
        )))
    }
}

#[async_trait]
impl Solver for Gcloud {
    type Config = GcloudConfig;

    fn new(config: GcloudConfig) -> Result<Self, PluginError> {
        let ttl = match config.ttl {
            t @ 1..=2_147_483_647 => t as u32,
            t => {
                return Err(PluginError::config(format!(
                    "ttl {t} is out of range: use 1 second or more"
                )));
            }
        };
        let account = ServiceAccount::parse(config.service_account.expose())?;
        let project = match config.project.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => p.to_owned(),
            _ => account.project_id.clone().ok_or_else(|| {
                PluginError::config(
                    "the service account key names no project_id: set GCE_PROJECT to the project that holds the zone",
                )
            })?,
        };
        if !valid_segment(&project) {
            return Err(PluginError::config(format!(
                "project {project:?} is not a Google Cloud project id: set GCE_PROJECT to it"
            )));
        }
        let zone_id = match config.zone_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(z) if valid_segment(z) => Some(z.to_owned()),
            Some(z) => {
                return Err(PluginError::config(format!(
                    "zone_id {z:?} is not a managed zone name: set GCE_ZONE_ID to the zone's name (not its DNS name)"
                )));
            }
        };
        let base = base_url(&config.api_base, "api_base", DEFAULT_API_BASE)?;
        let token_uri = config
            .token_uri
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| account.token_uri.clone());
        let token_url = Url::parse(token_uri.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                PluginError::config(format!(
                    "the token endpoint {token_uri:?} is not an http(s) URL: fix token_uri in the key, or set token_uri"
                ))
            })?;
        let rest = Rest::new(
            PROVIDER,
            concat!("certsmith-gcloud/", env!("CARGO_PKG_VERSION")),
        );
        log::debug!("gcloud: project {project}, API at {base}, ttl {ttl}");
        Ok(Gcloud {
            rest,
            base,
            token_url,
            account,
            project,
            zone_id,
            allow_private_zone: config.allow_private_zone,
            ttl,
            token: tokio::sync::Mutex::new(None),
            zones: Mutex::new(HashMap::new()),
            locks: NameLocks::new(),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = req.dns01_target("gcloud")?;
        self.change(target, true, req.deadline()).await?;
        Ok(Presented::new(json!({ "fqdn": normalize(&target.fqdn) }))
            .with_ttl((self.ttl != target.ttl).then_some(self.ttl)))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(target) = req.dns01_target("gcloud") else {
            return Ok(());
        };
        match self.change(target, false, req.deadline()).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                log::warn!("gcloud: {}; nothing to clean up", e.message);
                Ok(())
            }
            other => other,
        }
    }

    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(self.verify(req).await)
    }
}

certsmith_plugin_api::export_solver!(Gcloud, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::Manifest;

    #[test]
    fn manifest_parses_and_matches_the_config_defaults() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "gcloud");
        let k = &m.config["service_account"];
        assert!(k.required && k.secret);
        assert_eq!(k.env.as_deref(), Some("GCE_SERVICE_ACCOUNT"));
        assert_eq!(m.config["project"].env.as_deref(), Some("GCE_PROJECT"));
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
    fn rdata_quoting() {
        assert_eq!(unquoted(&quoted("abc")), "abc");
        assert_eq!(unquoted("\"ab\" \"cd\""), "abcd");
        assert_eq!(unquoted("bare"), "bare");
    }

    #[test]
    fn config_never_shows_the_key() {
        let c: GcloudConfig =
            serde_json::from_str(r#"{"service_account":"{\"private_key\":\"secret-value\"}"}"#)
                .expect("parses");
        assert!(!format!("{c:?}").contains("secret-value"));
        let e = Gcloud::new(c).expect_err("not a key");
        assert!(!e.message.contains("secret-value"), "{}", e.message);
    }
}
