//! certsmith's `digitalocean` solver: answers dns-01 challenges with TXT
//! records in a domain hosted on DigitalOcean, through the API v2
//! (`/v2/domains/{domain}/records`).
//!
//! DigitalOcean keeps each TXT value as a record of its own, so this
//! plugin *adds one record* per challenge and later *deletes exactly that
//! record*; `example.com` and `*.example.com` have their two values at
//! `_acme-challenge.example.com` at once, and other values there (a site
//! verification, another client's challenge) are never touched:
//!
//! * **present**: the TXT records at the name are listed
//!   (`GET ...records?type=TXT&name=<fqdn>`, following `links.pages.next`);
//!   when one holds our value already (a retried call) it is reused, else
//!   `POST ...records` with `{type, name (relative, "@" at the apex),
//!   data, ttl}` creates it. The handle is `{"record_id"}`.
//! * **cleanup**: the same listing, then `DELETE ...records/{id}` for each
//!   record holding our value. Gone already is success.
//!
//! * **check_credentials** (`certsmith doctor`): `GET /v2/account` (the
//!   token is valid, the account not locked; a scoped token without
//!   `account:read` gets 403 there, which is no reason to fail), then
//!   `GET /v2/domains/{zone}` for each zone of the check. Read-only.
//!
//! The domain is the zone the core found (a DigitalOcean "domain" is a
//! zone). Retries, rate limits (`Retry-After`, or `ratelimit-reset`) and
//! the error classes are the SDK's, through [`rest`]. The token travels
//! only in the `Authorization` header and is never in a message, a log
//! line or a `Debug` output.

use std::fmt;

use certsmith_plugin_api::sdk::{HttpRequest, Secret, relative_name};
use certsmith_plugin_api::{
    ChallengeRequest, CredentialsCheck, CredentialsChecked, Deadline, PluginError, Presented,
    Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::json;
use url::Url;

#[path = "../../shared/rest.rs"]
mod rest;

use certsmith_plugin_api::sdk::header_value_ok;
use rest::{Reply, Rest, base_url, describe, join, normalize};

/// The default API base.
pub const DEFAULT_API_BASE: &str = "https://api.digitalocean.com";
/// The default TTL, seconds (DigitalOcean's lowest).
pub const DEFAULT_TTL: i64 = 30;
/// Records per page asked for (DigitalOcean's maximum is 200).
const PER_PAGE: u32 = 200;
/// Upper bound on pages walked, against a server whose `next` never ends.
const MAX_PAGES: u32 = 100;
const PROVIDER: &str = "DigitalOcean";

/// The configuration (see `plugin.toml`).
#[derive(Clone, Deserialize)]
pub struct DigitalOceanConfig {
    /// A personal access token with read and write on domains.
    pub auth_token: Secret,
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

impl fmt::Debug for DigitalOceanConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOceanConfig")
            .field("auth_token", &self.auth_token)
            .field("api_base", &self.api_base)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// One record, as far as this solver cares.
#[derive(Clone, Debug, Deserialize)]
struct DomainRecord {
    id: u64,
    #[serde(rename = "type", default)]
    ty: String,
    #[serde(default)]
    data: String,
}

#[derive(Debug, Deserialize)]
struct RecordPage {
    #[serde(default)]
    domain_records: Vec<DomainRecord>,
    #[serde(default)]
    links: Links,
}

#[derive(Debug, Default, Deserialize)]
struct Links {
    #[serde(default)]
    pages: Pages,
}

#[derive(Debug, Default, Deserialize)]
struct Pages {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AccountReply {
    account: Account,
}

#[derive(Debug, Deserialize)]
struct Account {
    #[serde(default)]
    status: String,
    #[serde(default)]
    status_message: String,
}

#[derive(Debug, Deserialize)]
struct Created {
    domain_record: DomainRecord,
}

/// The solver.
pub struct DigitalOcean {
    rest: Rest,
    base: Url,
    token: Secret,
    ttl: u32,
}

impl fmt::Debug for DigitalOcean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOcean")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What to do about a refused token.
fn auth_hint(zone: &str) -> String {
    format!(
        "DigitalOcean rejected the API token: set DO_AUTH_TOKEN (or DO_AUTH_TOKEN_FILE) to a personal access token with read and write access to the domain {zone} (https://cloud.digitalocean.com/account/api/tokens)"
    )
}

/// The error for a domain the token does not see.
fn no_domain(zone: &str) -> PluginError {
    PluginError::not_found(format!(
        "DigitalOcean has no domain {zone} visible to this token: add the domain under Networking → Domains, or set DO_AUTH_TOKEN to a token of the team that holds it"
    ))
}

impl DigitalOcean {
    /// One call with the token; the final answer.
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
                "auth_token cannot go in an HTTP header (a line break?); paste the token alone",
            ));
        }
        self.rest
            .send(deadline, &request, |left| {
                let mut rb = HttpRequest::new(method, url.as_str())
                    .bearer_auth(self.token.expose())
                    .timeout(left);
                if let Some(b) = body {
                    rb = rb.json(b);
                }
                rb
            })
            .await
    }

    /// Every TXT record at `fqdn` in `zone` holding `value`; `None` when
    /// DigitalOcean does not have the domain.
    async fn find_ours(
        &self,
        zone: &str,
        fqdn: &str,
        value: &str,
        deadline: Deadline,
    ) -> Result<Option<Vec<DomainRecord>>, PluginError> {
        let mut url = join(&self.base, &["v2", "domains", zone, "records"]);
        url.query_pairs_mut()
            .append_pair("type", "TXT")
            .append_pair("name", fqdn)
            .append_pair("per_page", &PER_PAGE.to_string());
        let mut ours = Vec::new();
        for _ in 0..MAX_PAGES {
            let reply = self.call("GET", url.clone(), None, deadline).await?;
            if reply.status == 404 {
                return Ok(None);
            }
            if !reply.is_success() {
                return Err(self.refused(&reply, zone, &format!("list the TXT records at {fqdn}")));
            }
            let page: RecordPage = reply.json(PROVIDER)?;
            ours.extend(
                page.domain_records
                    .into_iter()
                    .filter(|r| r.ty.eq_ignore_ascii_case("TXT") && r.data == value),
            );
            let Some(next) = page.links.pages.next else {
                return Ok(Some(ours));
            };
            url = self.same_origin(&next)?;
        }
        Ok(Some(ours))
    }

    /// A `links.pages.next` URL, only if it points at the configured API
    /// (the token must not be sent anywhere else).
    fn same_origin(&self, next: &str) -> Result<Url, PluginError> {
        match Url::parse(next) {
            Ok(u) if u.origin() == self.base.origin() => Ok(u),
            _ => Err(PluginError::internal(format!(
                "DigitalOcean's next page link {next:?} does not point at api_base ({}); is api_base right?",
                self.base
            ))),
        }
    }

    /// `check_credentials`: the account, then each zone's domain; GETs only.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let deadline = req.deadline();
        let zones: Vec<String> = req.zones.iter().map(|z| normalize(&z.zone)).collect();
        let any = zones.first().map_or("your domains", String::as_str);
        let url = join(&self.base, &["v2", "account"]);
        let reply = self.call("GET", url, None, deadline).await?;
        let mut detail = match reply.status {
            s if (200..300).contains(&s) => {
                let account = reply.json::<AccountReply>(PROVIDER)?.account;
                if account.status == "locked" {
                    return Err(PluginError::auth(format!(
                        "the DigitalOcean account of DO_AUTH_TOKEN is locked ({}); resolve it at https://cloud.digitalocean.com/account, or set DO_AUTH_TOKEN to a token of another team",
                        account.status_message
                    )));
                }
                format!("the API token is accepted (account {})", account.status)
            }
            // A custom-scoped token without account:read: it is valid
            // (else 401), and the domains below say whether it suffices.
            403 => "the API token is accepted (account not readable with its scopes)".to_owned(),
            _ => return Err(self.refused(&reply, any, "read the account")),
        };
        let mut found = Vec::new();
        for zone in &zones {
            let url = join(&self.base, &["v2", "domains", zone]);
            let reply = self.call("GET", url, None, deadline).await?;
            if reply.status == 404 {
                return Err(no_domain(zone));
            }
            if !reply.is_success() {
                return Err(self.refused(&reply, zone, &format!("read the domain {zone}")));
            }
            found.push(zone.as_str());
        }
        if !found.is_empty() {
            detail.push_str(&format!("; domains visible to it: {}", found.join(", ")));
        }
        Ok(CredentialsChecked::new(detail))
    }

    /// The error for a final refusal while doing `action`.
    fn refused(&self, reply: &Reply, zone: &str, action: &str) -> PluginError {
        let e = reply.error(&auth_hint(zone));
        match e.kind {
            certsmith_plugin_api::ErrorKind::Auth
            | certsmith_plugin_api::ErrorKind::RateLimited => e,
            kind => PluginError::new(
                kind,
                format!("DigitalOcean refused to {action}: {}", e.message),
            ),
        }
    }
}

#[async_trait]
impl Solver for DigitalOcean {
    type Config = DigitalOceanConfig;

    fn new(config: DigitalOceanConfig) -> Result<Self, PluginError> {
        let ttl = match config.ttl {
            t @ 30..=2_147_483_647 => t as u32,
            t => {
                return Err(PluginError::config(format!(
                    "ttl {t} is out of range: DigitalOcean accepts 30 seconds or more"
                )));
            }
        };
        let base = base_url(&config.api_base, "api_base", DEFAULT_API_BASE)?;
        let token = config.auth_token.expose().trim();
        if token.is_empty() {
            return Err(PluginError::config(
                "auth_token is empty: set DO_AUTH_TOKEN (or DO_AUTH_TOKEN_FILE) to a DigitalOcean personal access token with read and write access to domains",
            ));
        }
        let rest = Rest::new(
            PROVIDER,
            concat!("certsmith-digitalocean/", env!("CARGO_PKG_VERSION")),
        );
        log::debug!("digitalocean: API at {base}, ttl {ttl}");
        Ok(DigitalOcean {
            rest,
            base,
            token: Secret::new(token),
            ttl,
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = req.dns01_target("digitalocean")?;
        let deadline = req.deadline();
        let zone = normalize(&target.zone);
        let fqdn = normalize(&target.fqdn);
        let Some(existing) = self
            .find_ours(&zone, &fqdn, &target.value, deadline)
            .await?
        else {
            return Err(no_domain(&zone));
        };
        let id = match existing.first() {
            Some(r) => {
                log::debug!(
                    "digitalocean: TXT record {} at {fqdn} already existed",
                    r.id
                );
                r.id
            }
            None => {
                let url = join(&self.base, &["v2", "domains", &zone, "records"]);
                let body = json!({
                    "type": "TXT",
                    "name": relative_name(&fqdn, &zone),
                    "data": target.value,
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
                log::info!(
                    "digitalocean: added TXT record {} at {fqdn}",
                    created.domain_record.id
                );
                created.domain_record.id
            }
        };
        Ok(Presented::new(json!({ "record_id": id }))
            .with_ttl((self.ttl != target.ttl).then_some(self.ttl)))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(target) = req.dns01_target("digitalocean") else {
            return Ok(());
        };
        let deadline = req.deadline();
        let zone = normalize(&target.zone);
        let fqdn = normalize(&target.fqdn);
        // The handle's id is not trusted alone (it is journal data): the
        // records holding our value at our name are what gets deleted.
        let Some(ours) = self
            .find_ours(&zone, &fqdn, &target.value, deadline)
            .await?
        else {
            log::warn!("digitalocean: the domain {zone} is gone; nothing to clean up at {fqdn}");
            return Ok(());
        };
        for r in ours {
            let id = r.id.to_string();
            let url = join(&self.base, &["v2", "domains", &zone, "records", &id]);
            let reply = self.call("DELETE", url, None, deadline).await?;
            match reply.status {
                s if (200..300).contains(&s) => {
                    log::info!("digitalocean: deleted TXT record {id} at {fqdn}");
                }
                404 => log::debug!("digitalocean: TXT record {id} at {fqdn} was already gone"),
                _ => {
                    return Err(self.refused(
                        &reply,
                        &zone,
                        &format!("delete the TXT record {id} at {fqdn}"),
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

certsmith_plugin_api::export_solver!(DigitalOcean, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::Manifest;

    #[test]
    fn manifest_parses_and_matches_the_config_defaults() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "digitalocean");
        let token = &m.config["auth_token"];
        assert!(token.required && token.secret);
        assert_eq!(token.env.as_deref(), Some("DO_AUTH_TOKEN"));
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
    fn next_page_links_only_go_to_the_api() {
        let c: DigitalOceanConfig =
            serde_json::from_str(r#"{"auth_token":"t","api_base":"http://127.0.0.1:9"}"#)
                .expect("parses");
        let s = DigitalOcean::new(c).expect("valid");
        assert!(
            s.same_origin("http://127.0.0.1:9/v2/domains/a/records?page=2")
                .is_ok()
        );
        for elsewhere in [
            "http://127.0.0.1:10/v2/domains/a/records?page=2",
            "https://127.0.0.1:9/v2/domains/a/records?page=2",
            "http://evil.example/v2/domains/a/records?page=2",
            "not a url",
        ] {
            assert!(s.same_origin(elsewhere).is_err(), "{elsewhere}");
        }
    }

    #[test]
    fn names_are_relative_to_the_domain() {
        assert_eq!(
            relative_name("_acme-challenge.do.test", "do.test"),
            "_acme-challenge"
        );
        assert_eq!(relative_name("do.test", "do.test"), "@");
    }

    #[test]
    fn config_is_checked_and_never_shows_the_token() {
        let c: DigitalOceanConfig =
            serde_json::from_str(r#"{"auth_token":"secret-value","ttl":10}"#).expect("parses");
        assert!(!format!("{c:?}").contains("secret-value"));
        assert!(DigitalOcean::new(c.clone()).is_err());
        let ok = DigitalOceanConfig { ttl: 30, ..c };
        let s = DigitalOcean::new(ok).expect("valid");
        assert!(!format!("{s:?}").contains("secret-value"));
    }
}
