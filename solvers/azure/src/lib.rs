//! certsmith's `azure` solver: answers dns-01 challenges with TXT record
//! sets in an Azure DNS zone, through the Azure Resource Manager API
//! (`.../providers/Microsoft.Network/dnsZones/{zone}/TXT/{name}`,
//! api-version 2018-05-01).
//!
//! Azure keeps all TXT values at a name in one *record set*, so adding or
//! removing a value is a read-modify-write: `GET` the set, add (or remove)
//! our value, `PUT` it back (or `DELETE` it when it became empty). Each
//! write carries the set's `ETag` in `If-Match` (`If-None-Match: *` when
//! creating), so a change by someone else in between is answered 412 and
//! the cycle starts again; inside the plugin the SDK's [`NameLocks`]
//! serializes the cycles at one name (the host serializes across
//! processes). Other values at the name are kept as they were.
//!
//! Credentials: a service principal's client id and secret are exchanged
//! for an access token at `{authority}/{tenant}/oauth2/v2.0/token`
//! (client-credentials grant, scope `https://management.azure.com/.default`),
//! cached until a minute before it expires. `check_credentials`
//! (`certsmith doctor`) gets a token and reads each zone of the check
//! (`GET .../dnsZones/{zone}`; the configured `zone_name` instead, when
//! set; the resource group's zones when there is neither): no write.
//! Retries and rate limits (429
//! with `Retry-After`) are the SDK's, through [`rest`]. The secret and the
//! token are never in a message, a log line or a `Debug` output.

use std::fmt;
use std::time::{Duration, Instant};

use certsmith_plugin_api::sdk::{HttpRequest, NameLocks, Secret, relative_name};
use certsmith_plugin_api::{
    ChallengeRequest, CredentialsCheck, CredentialsChecked, Deadline, DnsTarget, ErrorKind,
    PluginError, Presented, Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

#[path = "../../shared/rest.rs"]
mod rest;

use certsmith_plugin_api::sdk::header_value_ok;
use rest::{Reply, Rest, base_url, describe, form, join, normalize};

/// The default Resource Manager endpoint.
pub const DEFAULT_API_BASE: &str = "https://management.azure.com";
/// The default Microsoft Entra ID (Azure AD) authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The default TTL, seconds.
pub const DEFAULT_TTL: i64 = 60;
/// The record-set API version.
const API_VERSION: &str = "2018-05-01";
/// What the token is for.
const SCOPE: &str = "https://management.azure.com/.default";
/// A cached token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Read-modify-write cycles tried when others keep changing the set.
const MAX_CYCLES: u32 = 5;
const PROVIDER: &str = "Azure DNS";

/// The configuration (see `plugin.toml`).
#[derive(Clone, Deserialize)]
pub struct AzureConfig {
    /// The directory (tenant) id.
    pub tenant_id: String,
    /// The application (client) id of the service principal.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: Secret,
    /// The subscription holding the zone.
    pub subscription_id: String,
    /// The resource group holding the zone.
    pub resource_group: String,
    /// The zone's name in Azure, when not the zone certsmith found.
    #[serde(default)]
    pub zone_name: Option<String>,
    /// The Resource Manager endpoint.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The token authority.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// The TTL of the record sets, seconds.
    #[serde(default = "default_ttl")]
    pub ttl: i64,
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_authority() -> String {
    DEFAULT_AUTHORITY.to_owned()
}

fn default_ttl() -> i64 {
    DEFAULT_TTL
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("zone_name", &self.zone_name)
            .field("api_base", &self.api_base)
            .field("authority", &self.authority)
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A record set, as far as this solver cares.
#[derive(Debug, Default, Deserialize)]
struct RecordSet {
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    properties: Props,
}

#[derive(Debug, Default, Deserialize)]
struct Props {
    #[serde(rename = "TTL", default)]
    ttl: Option<u64>,
    #[serde(rename = "TXTRecords", default)]
    txt_records: Vec<TxtRecord>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
struct TxtRecord {
    #[serde(default)]
    value: Vec<String>,
}

impl TxtRecord {
    /// The value DNS serves: the strings concatenated.
    fn joined(&self) -> String {
        self.value.concat()
    }
}

/// A cached access token.
struct Token {
    value: Secret,
    renew_at: Instant,
}

/// The solver.
pub struct Azure {
    rest: Rest,
    base: Url,
    token_url: Url,
    tenant_id: String,
    client_id: String,
    client_secret: Secret,
    subscription_id: String,
    resource_group: String,
    zone_name: Option<String>,
    ttl: u32,
    token: tokio::sync::Mutex<Option<Token>>,
    locks: NameLocks,
}

impl fmt::Debug for Azure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Azure")
            .field("base", &self.base.as_str())
            .field("token_url", &self.token_url.as_str())
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("zone_name", &self.zone_name)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Azure's error code in a body: `{"error": {"code"}}` or `{"code"}`.
fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v.get("error")
        .and_then(|e| e.get("code"))
        .or_else(|| v.get("code"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What a record-set write did.
enum Outcome {
    Done,
    /// The set changed under us (412): read it again.
    Changed,
}

impl Azure {
    fn rbac_hint(&self, zone: &str) -> String {
        format!(
            "Azure refused access to the DNS zone {zone} in resource group {} of subscription {}: give the service principal {} the 'DNS Zone Contributor' role on the zone, and check AZURE_SUBSCRIPTION_ID and AZURE_RESOURCE_GROUP",
            self.resource_group, self.subscription_id, self.client_id
        )
    }

    /// An access token: cached, or fetched with the client credentials.
    async fn access_token(&self, deadline: Deadline) -> Result<String, PluginError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.expose().to_owned());
        }
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose()),
            ("scope", SCOPE),
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
                "Microsoft Entra ID refused the client credentials (HTTP {} to {}: {said}): check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_CLIENT_SECRET_FILE); a new secret is made under App registrations → Certificates & secrets",
                reply.status, reply.request
            )));
        }
        let t: TokenAnswer = reply.json("Microsoft Entra ID")?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(300));
        log::debug!("azure: got an access token for {} s", lifetime.as_secs());
        let value = t.access_token.clone();
        *cached = Some(Token {
            value: Secret::new(t.access_token),
            renew_at: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
        });
        Ok(value)
    }

    /// The URL of `tail` under the resource group's DNS zones
    /// (`[zone, "TXT", name]` is a record set, `[zone]` a zone, `[]` all).
    fn zones_url(&self, tail: &[&str]) -> Url {
        let mut segments = vec![
            "subscriptions",
            self.subscription_id.as_str(),
            "resourceGroups",
            self.resource_group.as_str(),
            "providers",
            "Microsoft.Network",
            "dnsZones",
        ];
        segments.extend_from_slice(tail);
        let mut url = join(&self.base, &segments);
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        url
    }

    /// The record set's URL.
    fn set_url(&self, zone: &str, name: &str) -> Url {
        self.zones_url(&[zone, "TXT", name])
    }

    /// `check_credentials`: a token, then GETs of the zones.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let deadline = req.deadline();
        self.access_token(deadline).await?;
        let mut detail = format!(
            "the service principal {} got an access token",
            self.client_id
        );
        let mut zones: Vec<String> = match &self.zone_name {
            Some(z) => vec![z.clone()],
            None => req.zones.iter().map(|z| normalize(&z.zone)).collect(),
        };
        zones.dedup();
        if zones.is_empty() {
            let url = self.zones_url(&[]);
            let reply = self.call("GET", &url, &[], None, deadline).await?;
            if !reply.is_success() {
                // `*`: the hint then reads "the DNS zone * in resource group …".
                return Err(self.refused(&reply, "*", "list the DNS zones"));
            }
            detail.push_str(&format!(
                "; the DNS zones of resource group {} are readable",
                self.resource_group
            ));
            return Ok(CredentialsChecked::new(detail));
        }
        for zone in &zones {
            let url = self.zones_url(&[zone]);
            let reply = self.call("GET", &url, &[], None, deadline).await?;
            if !reply.is_success() {
                return Err(self.refused(&reply, zone, &format!("read the DNS zone {zone}")));
            }
        }
        detail.push_str(&format!(
            "; DNS zones readable in resource group {}: {}",
            self.resource_group,
            zones.join(", ")
        ));
        Ok(CredentialsChecked::new(detail))
    }

    /// One management call with the token.
    async fn call(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&'static str, String)],
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
                for (k, v) in headers {
                    rb = rb.header(*k, v.as_str());
                }
                if let Some(b) = body {
                    rb = rb.json(b);
                }
                rb
            })
            .await?;
        if reply.status == 401 {
            // A token revoked or expired early: fetch a new one next time.
            *self.token.lock().await = None;
        }
        Ok(reply)
    }

    fn refused(&self, reply: &Reply, zone: &str, action: &str) -> PluginError {
        let e = reply.error(&self.rbac_hint(zone));
        match e.kind {
            ErrorKind::Auth | ErrorKind::RateLimited => e,
            ErrorKind::NotFound => PluginError::not_found(format!(
                "Azure DNS could not {action}: {} (is the zone {zone} in resource group {} of subscription {}? Set AZURE_ZONE_NAME, AZURE_RESOURCE_GROUP, AZURE_SUBSCRIPTION_ID)",
                e.message, self.resource_group, self.subscription_id
            )),
            kind => PluginError::new(
                kind,
                format!("Azure DNS refused to {action}: {}", e.message),
            ),
        }
    }

    /// The record set, or `None` when there is none at the name.
    async fn read(
        &self,
        zone: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<Option<RecordSet>, PluginError> {
        let url = self.set_url(zone, name);
        let reply = self.call("GET", &url, &[], None, deadline).await?;
        if reply.status == 404 && error_code(&reply.body) == "NotFound" {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(self.refused(&reply, zone, &format!("read the TXT record set {name}")));
        }
        reply.json(PROVIDER).map(Some)
    }

    /// Writes `values` as the set (deletes it when empty), conditional on
    /// `etag` (`None`: the set must not exist yet).
    async fn write(
        &self,
        zone: &str,
        name: &str,
        etag: Option<&str>,
        current: &RecordSet,
        values: Vec<TxtRecord>,
        deadline: Deadline,
    ) -> Result<Outcome, PluginError> {
        let url = self.set_url(zone, name);
        let condition = match etag {
            Some(e) => ("If-Match", e.to_owned()),
            None => ("If-None-Match", "*".to_owned()),
        };
        let (method, body) = if values.is_empty() {
            ("DELETE", None)
        } else {
            let mut props = json!({
                "TTL": current.properties.ttl.unwrap_or(u64::from(self.ttl)),
                "TXTRecords": values,
            });
            if let Some(m) = &current.properties.metadata {
                props["metadata"] = m.clone();
            }
            ("PUT", Some(json!({ "properties": props })))
        };
        let reply = self
            .call(method, &url, &[condition], body.as_ref(), deadline)
            .await?;
        match reply.status {
            s if (200..300).contains(&s) => Ok(Outcome::Done),
            // DELETE of a set already gone.
            404 if body.is_none() => Ok(Outcome::Done),
            412 => Ok(Outcome::Changed),
            _ => Err(self.refused(&reply, zone, &format!("write the TXT record set {name}"))),
        }
    }

    /// The zone as Azure names it, and our record set's name in it.
    fn names(&self, target: &DnsTarget) -> Result<(String, String), PluginError> {
        let zone = self
            .zone_name
            .clone()
            .unwrap_or_else(|| normalize(&target.zone));
        let fqdn = normalize(&target.fqdn);
        if fqdn != zone && !fqdn.ends_with(&format!(".{zone}")) {
            return Err(PluginError::config(format!(
                "the challenge record {fqdn} is not inside the Azure zone {zone}: set AZURE_ZONE_NAME to the zone that holds it, or leave it unset"
            )));
        }
        let name = relative_name(&fqdn, &zone);
        Ok((zone, name))
    }

    /// Adds (`add`) or removes our value, read-modify-write under the
    /// name lock, again when the set changed in between.
    async fn change(
        &self,
        target: &DnsTarget,
        add: bool,
        deadline: Deadline,
    ) -> Result<(), PluginError> {
        let (zone, name) = self.names(target)?;
        let _guard = self.locks.lock(&format!("{zone}/{name}")).await;
        for _ in 0..MAX_CYCLES {
            let current = self.read(&zone, &name, deadline).await?;
            let exists = current.is_some();
            let current = current.unwrap_or_default();
            let mut values = current.properties.txt_records.clone();
            let has = values.iter().any(|r| r.joined() == target.value);
            if add {
                if has {
                    return Ok(());
                }
                values.push(TxtRecord {
                    value: vec![target.value.clone()],
                });
            } else {
                if !has {
                    return Ok(());
                }
                values.retain(|r| r.joined() != target.value);
            }
            let etag = match (&current.etag, exists) {
                (Some(e), true) => Some(e.as_str()),
                // A set without an ETag: write unconditionally (`*`).
                (None, true) => Some("*"),
                (_, false) => None,
            };
            match self
                .write(&zone, &name, etag, &current, values, deadline)
                .await?
            {
                Outcome::Done => {
                    log::info!(
                        "azure: {} a TXT value at {name} in {zone}",
                        if add { "added" } else { "removed" }
                    );
                    return Ok(());
                }
                Outcome::Changed => {
                    log::debug!(
                        "azure: the TXT record set {name} changed meanwhile; reading it again"
                    );
                }
            }
        }
        Err(PluginError::transient(format!(
            "the TXT record set {name} in {zone} kept changing while certsmith wrote it ({MAX_CYCLES} tries); retry"
        )))
    }
}

/// Ids go into URL paths: no separators.
fn check_segment(key: &str, env: &str, value: &str) -> Result<String, PluginError> {
    let v = value.trim();
    if v.is_empty() || v.contains(['/', '?', '#']) {
        return Err(PluginError::config(format!(
            "{key} {v:?} is not valid: set {env} to the value shown in the Azure portal"
        )));
    }
    Ok(v.to_owned())
}

#[async_trait]
impl Solver for Azure {
    type Config = AzureConfig;

    fn new(config: AzureConfig) -> Result<Self, PluginError> {
        let ttl = match config.ttl {
            t @ 1..=2_147_483_647 => t as u32,
            t => {
                return Err(PluginError::config(format!(
                    "ttl {t} is out of range: use 1 second or more"
                )));
            }
        };
        let tenant_id = check_segment("tenant_id", "AZURE_TENANT_ID", &config.tenant_id)?;
        let base = base_url(&config.api_base, "api_base", DEFAULT_API_BASE)?;
        let authority = base_url(&config.authority, "authority", DEFAULT_AUTHORITY)?;
        let token_url = join(&authority, &[&tenant_id, "oauth2", "v2.0", "token"]);
        if config.client_secret.expose().trim().is_empty() {
            return Err(PluginError::config(
                "client_secret is empty: set AZURE_CLIENT_SECRET (or AZURE_CLIENT_SECRET_FILE) to a client secret of the app registration",
            ));
        }
        let zone_name = match config.zone_name.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(z) => Some(normalize(&check_segment(
                "zone_name",
                "AZURE_ZONE_NAME",
                z,
            )?)),
        };
        let rest = Rest::new(
            PROVIDER,
            concat!("certsmith-azure/", env!("CARGO_PKG_VERSION")),
        );
        Ok(Azure {
            rest,
            base,
            token_url,
            tenant_id,
            client_id: check_segment("client_id", "AZURE_CLIENT_ID", &config.client_id)?,
            client_secret: Secret::new(config.client_secret.expose().trim()),
            subscription_id: check_segment(
                "subscription_id",
                "AZURE_SUBSCRIPTION_ID",
                &config.subscription_id,
            )?,
            resource_group: check_segment(
                "resource_group",
                "AZURE_RESOURCE_GROUP",
                &config.resource_group,
            )?,
            zone_name,
            ttl,
            token: tokio::sync::Mutex::new(None),
            locks: NameLocks::new(),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = req.dns01_target("azure")?;
        self.change(target, true, req.deadline()).await?;
        let (zone, name) = self.names(target)?;
        Ok(Presented::new(json!({ "zone": zone, "record_set": name }))
            .with_ttl((self.ttl != target.ttl).then_some(self.ttl)))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(target) = req.dns01_target("azure") else {
            return Ok(());
        };
        match self.change(target, false, req.deadline()).await {
            // The zone (or its group) is gone: so is our value.
            Err(e) if e.kind == ErrorKind::NotFound => {
                log::warn!("azure: {}; nothing to clean up", e.message);
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

certsmith_plugin_api::export_solver!(Azure, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::Manifest;

    fn config() -> AzureConfig {
        serde_json::from_value(json!({
            "tenant_id": "t", "client_id": "c", "client_secret": "secret-value",
            "subscription_id": "s", "resource_group": "rg",
        }))
        .expect("parses")
    }

    #[test]
    fn manifest_parses_and_matches_the_config_defaults() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "azure");
        let s = &m.config["client_secret"];
        assert!(s.required && s.secret);
        assert_eq!(s.env.as_deref(), Some("AZURE_CLIENT_SECRET"));
        let d = |k: &str| m.config[k].default.clone();
        assert_eq!(d("ttl").and_then(|v| v.as_integer()), Some(DEFAULT_TTL));
        assert_eq!(
            d("api_base")
                .and_then(|v| v.as_str().map(str::to_owned))
                .as_deref(),
            Some(DEFAULT_API_BASE)
        );
        assert_eq!(
            d("authority")
                .and_then(|v| v.as_str().map(str::to_owned))
                .as_deref(),
            Some(DEFAULT_AUTHORITY)
        );
    }

    #[test]
    fn urls_are_built_from_the_options() {
        let a = Azure::new(config()).expect("valid");
        assert_eq!(
            a.token_url.as_str(),
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        );
        assert_eq!(
            a.set_url("az.test", "_acme-challenge").as_str(),
            "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/dnsZones/az.test/TXT/_acme-challenge?api-version=2018-05-01"
        );
        assert!(!format!("{a:?}").contains("secret-value"));
        assert!(!format!("{:?}", config()).contains("secret-value"));
        let mut bad = config();
        bad.resource_group = "a/b".into();
        assert!(Azure::new(bad).is_err());
    }

    #[test]
    fn a_record_outside_the_configured_zone_is_refused() {
        let mut c = config();
        c.zone_name = Some("other.test".into());
        let a = Azure::new(c).expect("valid");
        let t: DnsTarget = serde_json::from_value(json!({
            "fqdn": "_acme-challenge.az.test", "name": "_acme-challenge", "zone": "az.test", "value": "v", "ttl": 60
        }))
        .expect("a dns target");
        let e = a.names(&t).expect_err("outside");
        assert!(e.message.contains("AZURE_ZONE_NAME"), "{}", e.message);
        let a = Azure::new(config()).expect("valid");
        assert_eq!(
            a.names(&t).expect("inside"),
            ("az.test".to_owned(), "_acme-challenge".to_owned())
        );
    }

    #[test]
    fn error_codes_are_read_from_both_shapes() {
        assert_eq!(
            error_code(br#"{"code":"NotFound","message":"x"}"#),
            "NotFound"
        );
        assert_eq!(
            error_code(br#"{"error":{"code":"ParentResourceNotFound","message":"x"}}"#),
            "ParentResourceNotFound"
        );
    }
}
