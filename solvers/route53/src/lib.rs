//! certsmith's `route53` solver: answers dns-01 challenges with TXT records
//! in an Amazon Route 53 hosted zone.
//!
//! Route53 has no "add one value" operation: a TXT record set is written
//! whole. So `present` reads the set at the challenge name and UPSERTs it
//! with our value added, and `cleanup` UPSERTs it without our value, or
//! DELETEs it (with its exact current TTL and values, as Route53 requires)
//! when ours was the last one. Values that are not ours are always kept.
//!
//! Two things make that read-modify-write safe:
//!
//! * **Inside this process**, calls on one record name are serialized by a
//!   lock per (zone, name): `example.com` and `*.example.com` both write to
//!   `_acme-challenge.example.com`, and the host presents them at once.
//! * **Against other writers**, a change whose assumptions no longer hold
//!   (Route53's `InvalidChangeBatch` "not found" / "values do not match") is
//!   recomputed from a fresh read, a few times. Throttling
//!   (`Throttling`, `PriorRequestNotComplete`) and transient failures are
//!   retried with backoff until the call's deadline (see [`aws`]).
//!
//! With `wait_for_sync` (the default), `present` returns only once Route53
//! reports the change `INSYNC` on all its name servers (`GetChange`), which
//! it usually does within a minute. The per-name lock is released before
//! that wait, so the second value at a name does not queue behind the
//! first one's propagation.
//!
//! Credentials come from explicit options or aws-config's standard chain
//! (environment, shared config/credentials files and `profile`, web
//! identity tokens, ECS/EC2 metadata); see `plugin.toml` and the README.
//! Every request, the credential providers' too, is sent by certsmith's HTTP
//! client (see `http`).

mod aws;
mod http;
mod txt;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use certsmith_plugin_api::{
    Backoff, ChallengeRequest, CredentialsCheck, CredentialsChecked, Deadline, NameLocks,
    PluginError, Presented, Secret, Solver, async_trait, log,
};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::aws::{Aws, Failure, GaveUp, Try, backoff, retry_until};

/// The region used for signing when none is configured. Route53 is a global
/// service whose API lives in us-east-1 for the `aws` partition.
pub const DEFAULT_REGION: &str = "us-east-1";

/// How many times a change is recomputed after Route53 said the record set
/// changed under it.
const MAX_RACES: u32 = 5;

/// How often `GetChange` is asked at most, and at least.
const SYNC_POLL_FIRST: Duration = Duration::from_secs(1);
const SYNC_POLL_MAX: Duration = Duration::from_secs(5);

/// The configuration (see `plugin.toml`). Every field is optional; empty
/// strings count as unset. `Debug` redacts the secret keys.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct Route53Config {
    /// The hosted zone to write to; skips the lookup by name.
    pub hosted_zone_id: Option<String>,
    /// Which of a public and a private zone of one name to use.
    pub private_zone: Option<bool>,
    /// A profile in the shared AWS config/credentials files.
    pub profile: Option<String>,
    /// The signing region (default us-east-1).
    pub region: Option<String>,
    /// Another Route53 endpoint (a proxy, a test server).
    pub endpoint_url: Option<String>,
    /// The TXT record's TTL; default: the TTL certsmith asks for.
    pub ttl: Option<i64>,
    /// Wait for `INSYNC` before `present` returns (default true).
    pub wait_for_sync: Option<bool>,
    /// An access key id, instead of the credential chain.
    pub access_key_id: Option<String>,
    /// Its secret (the SDK's [`Secret`]: redacted, zeroed on drop).
    pub secret_access_key: Option<Secret>,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
}

impl fmt::Debug for Route53Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route53Config")
            .field("hosted_zone_id", &self.hosted_zone_id)
            .field("private_zone", &self.private_zone)
            .field("profile", &self.profile)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("ttl", &self.ttl)
            .field("wait_for_sync", &self.wait_for_sync)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

/// Explicit credentials.
#[derive(Clone)]
pub(crate) struct StaticKeys {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Secret,
    pub(crate) session_token: Option<Secret>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) hosted_zone_id: Option<String>,
    pub(crate) private_zone: Option<bool>,
    pub(crate) profile: Option<String>,
    pub(crate) region: String,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) ttl: Option<u32>,
    pub(crate) wait_for_sync: bool,
    pub(crate) static_keys: Option<StaticKeys>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn non_empty_secret(v: Option<Secret>) -> Option<Secret> {
    v.map(|s| Secret::new(s.expose().trim()))
        .filter(|s| !s.is_empty())
}

impl Settings {
    fn from_config(c: Route53Config) -> Result<Settings, PluginError> {
        let hosted_zone_id =
            non_empty(c.hosted_zone_id).map(|id| txt::bare_zone_id(&id).to_owned());
        if let Some(id) = &hosted_zone_id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(PluginError::config(format!(
                "hosted_zone_id {id:?} is not a Route53 hosted zone id (like Z0123456789ABCDEFGHIJ, \
                 shown by `aws route53 list-hosted-zones-by-name`)"
            )));
        }
        let endpoint_url = non_empty(c.endpoint_url);
        if let Some(u) = &endpoint_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(PluginError::config(format!(
                "endpoint_url {u:?} must be an http:// or https:// URL"
            )));
        }
        let ttl = match c.ttl {
            None => None,
            Some(t) => Some(
                u32::try_from(t)
                    .ok()
                    .filter(|t| *t <= 2_147_483_647)
                    .ok_or_else(|| {
                        PluginError::config(format!(
                            "ttl {t} is out of range (0 to 2147483647 seconds)"
                        ))
                    })?,
            ),
        };
        let static_keys = match (
            non_empty(c.access_key_id),
            non_empty_secret(c.secret_access_key),
        ) {
            (Some(access_key_id), Some(secret_access_key)) => Some(StaticKeys {
                access_key_id,
                secret_access_key,
                session_token: non_empty_secret(c.session_token),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(PluginError::config(
                    "access_key_id is set but secret_access_key is not: give both (options or \
                     AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), or neither to use the AWS \
                     credential chain",
                ));
            }
            (None, Some(_)) => {
                return Err(PluginError::config(
                    "secret_access_key is set but access_key_id is not: give both (options or \
                     AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), or neither to use the AWS \
                     credential chain",
                ));
            }
        };
        Ok(Settings {
            hosted_zone_id,
            private_zone: c.private_zone,
            profile: non_empty(c.profile),
            region: non_empty(c.region).unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            endpoint_url,
            ttl,
            wait_for_sync: c.wait_for_sync.unwrap_or(true),
            static_keys,
        })
    }
}

/// The solver.
pub struct Route53 {
    settings: Settings,
    /// Built on first use: loading the AWS configuration is async.
    aws: OnceCell<Aws>,
    /// Zone name → hosted zone id, from lookups by name.
    zones: Mutex<HashMap<String, String>>,
    locks: NameLocks,
}

impl fmt::Debug for Route53 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route53")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A TXT record set as read: the set itself (for an exact DELETE) and its
/// raw values.
struct CurrentSet {
    set: ResourceRecordSet,
    values: Vec<String>,
}

impl Route53 {
    async fn aws(&self) -> Result<&Aws, PluginError> {
        self.aws
            .get_or_try_init(|| Aws::connect(&self.settings))
            .await
    }

    /// The hosted zone id for `zone`: configured, cached, or looked up.
    async fn zone_id(
        &self,
        aws: &Aws,
        zone: &str,
        deadline: &Deadline,
    ) -> Result<String, PluginError> {
        if let Some(id) = &self.settings.hosted_zone_id {
            return Ok(id.clone());
        }
        let key = txt::normalize_name(zone);
        if let Some(id) = self
            .zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(id.clone());
        }
        let id = self.find_zone(aws, &key, deadline).await?;
        self.zones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, id.clone());
        Ok(id)
    }

    /// What `check_credentials` does: reads only. `GetHostedZone` of the
    /// configured `hosted_zone_id`, else the lookup by name of every zone
    /// asked about, else one `ListHostedZonesByName` (any zone): each needs
    /// the credentials to be accepted and allowed to read Route53.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let deadline = req.deadline();
        let aws = self.aws().await?;
        if let Some(id) = &self.settings.hosted_zone_id {
            let out = aws
                .call(&deadline, "GetHostedZone", || {
                    aws.client.get_hosted_zone().id(id.clone()).send()
                })
                .await?;
            let name = out
                .hosted_zone()
                .map(|z| txt::normalize_name(z.name()))
                .unwrap_or_default();
            return Ok(CredentialsChecked::new(format!(
                "the credentials can read hosted zone {name} ({id})"
            )));
        }
        if req.zones.is_empty() {
            aws.call(&deadline, "ListHostedZonesByName", || {
                aws.client.list_hosted_zones_by_name().max_items(1).send()
            })
            .await?;
            return Ok(CredentialsChecked::new(
                "the credentials can list hosted zones",
            ));
        }
        let mut found = Vec::new();
        for zone in &req.zones {
            let id = self.zone_id(aws, &zone.zone, &deadline).await?;
            found.push(format!("{} ({id})", txt::normalize_name(&zone.zone)));
        }
        Ok(CredentialsChecked::new(format!(
            "the credentials can read hosted zone(s) {}",
            found.join(", ")
        )))
    }

    /// `ListHostedZonesByName` from `zone`: every zone with exactly that
    /// name, then the choice among them.
    async fn find_zone(
        &self,
        aws: &Aws,
        zone: &str,
        deadline: &Deadline,
    ) -> Result<String, PluginError> {
        // (id, private)
        let mut found: Vec<(String, bool)> = Vec::new();
        let mut dns_name = txt::absolute(zone);
        let mut start_id: Option<String> = None;
        loop {
            let out = aws
                .call(deadline, "ListHostedZonesByName", || {
                    aws.client
                        .list_hosted_zones_by_name()
                        .dns_name(dns_name.clone())
                        .set_hosted_zone_id(start_id.clone())
                        .max_items(100)
                        .send()
                })
                .await?;
            let mut past = false;
            for z in out.hosted_zones() {
                if txt::normalize_name(z.name()) == zone {
                    let private = z.config().is_some_and(|c| c.private_zone());
                    found.push((txt::bare_zone_id(z.id()).to_owned(), private));
                } else {
                    // Zones come sorted by name from `zone` on: the first
                    // other name ends the zones of ours.
                    past = true;
                }
            }
            match (
                out.is_truncated(),
                out.next_dns_name(),
                out.next_hosted_zone_id(),
            ) {
                (true, Some(name), Some(id)) if !past && txt::normalize_name(name) == zone => {
                    dns_name = name.to_owned();
                    start_id = Some(id.to_owned());
                }
                _ => break,
            }
        }
        choose_zone(zone, &found, self.settings.private_zone)
    }

    /// The TXT record set at `fqdn` (a plain one: no routing policy).
    async fn read_set(
        &self,
        aws: &Aws,
        zone_id: &str,
        fqdn: &str,
        deadline: &Deadline,
    ) -> Result<Option<CurrentSet>, Failure> {
        let out = aws
            .call(deadline, "ListResourceRecordSets", || {
                aws.client
                    .list_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .start_record_name(txt::absolute(fqdn))
                    .start_record_type(RrType::Txt)
                    .max_items(10)
                    .send()
            })
            .await?;
        let set = out.resource_record_sets().iter().find(|s| {
            *s.r#type() == RrType::Txt
                && s.set_identifier().is_none()
                && txt::normalize_name(s.name()) == fqdn
        });
        Ok(set.map(|s| CurrentSet {
            values: s
                .resource_records()
                .iter()
                .map(|r| r.value().to_owned())
                .collect(),
            set: s.clone(),
        }))
    }

    /// Sends one change; returns its change id.
    async fn change(
        &self,
        aws: &Aws,
        zone_id: &str,
        action: ChangeAction,
        set: ResourceRecordSet,
        deadline: &Deadline,
    ) -> Result<String, Failure> {
        let batch = ChangeBatch::builder()
            .comment("certsmith dns-01 challenge")
            .changes(
                Change::builder()
                    .action(action)
                    .resource_record_set(set)
                    .build()
                    .map_err(build_error)?,
            )
            .build()
            .map_err(build_error)?;
        let out = aws
            .call(deadline, "ChangeResourceRecordSets", || {
                aws.client
                    .change_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .change_batch(batch.clone())
                    .send()
            })
            .await?;
        Ok(out
            .change_info()
            .map(|c| c.id().to_owned())
            .unwrap_or_default())
    }

    /// Adds `value` to the set at `fqdn`. Returns the change id, or `None`
    /// when the value was there already.
    async fn add_value(
        &self,
        aws: &Aws,
        zone_id: &str,
        fqdn: &str,
        value: &str,
        ttl: u32,
        deadline: &Deadline,
    ) -> Result<Option<String>, PluginError> {
        // A race (the set changed between our read and our change) means
        // another writer is at work on this name: let it finish, read again.
        let added = retry_until(deadline, backoff(MAX_RACES + 1), |_| async move {
            let mut values = match self.read_set(aws, zone_id, fqdn, deadline).await {
                Ok(Some(cur)) => cur.values,
                Ok(None) => Vec::new(),
                Err(e) => return Err(Try::Stop(e)),
            };
            if values.iter().any(|v| txt::is_value(v, value)) {
                log::debug!("route53: {fqdn} already has our TXT value");
                return Ok(None);
            }
            values.push(txt::quote(value));
            let n = values.len();
            let set = txt_set(fqdn, ttl, values).map_err(Try::Stop)?;
            match self
                .change(aws, zone_id, ChangeAction::Upsert, set, deadline)
                .await
            {
                Ok(id) => {
                    log::info!(
                        "route53: added a TXT value at {fqdn} in zone {zone_id} ({n} now, change {id})"
                    );
                    Ok(Some(id))
                }
                Err(Failure::Race(msg)) => Err(Try::Again(race(msg, fqdn))),
                Err(e) => Err(Try::Stop(e)),
            }
        })
        .await;
        added.map_err(gave_up)
    }

    /// Removes `value` from the set at `fqdn`, deleting the set when no
    /// other value remains. Missing value or set: nothing to do.
    async fn remove_value(
        &self,
        aws: &Aws,
        zone_id: &str,
        fqdn: &str,
        value: &str,
        deadline: &Deadline,
    ) -> Result<(), PluginError> {
        let removed = retry_until(deadline, backoff(MAX_RACES + 1), |_| async move {
            let Some(cur) = self
                .read_set(aws, zone_id, fqdn, deadline)
                .await
                .map_err(Try::Stop)?
            else {
                log::debug!("route53: no TXT record at {fqdn}; nothing to clean up");
                return Ok(());
            };
            let others: Vec<String> = cur
                .values
                .iter()
                .filter(|v| !txt::is_value(v, value))
                .cloned()
                .collect();
            if others.len() == cur.values.len() {
                log::debug!("route53: our TXT value is not at {fqdn}; nothing to clean up");
                return Ok(());
            }
            let n = others.len();
            let (action, set) = if others.is_empty() {
                // Route53 deletes only a set given exactly as it is.
                (ChangeAction::Delete, cur.set)
            } else {
                let ttl = cur
                    .set
                    .ttl()
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(60);
                (
                    ChangeAction::Upsert,
                    txt_set(fqdn, ttl, others).map_err(Try::Stop)?,
                )
            };
            match self.change(aws, zone_id, action, set, deadline).await {
                Ok(id) => {
                    log::info!(
                        "route53: removed our TXT value at {fqdn} in zone {zone_id} ({n} left, change {id})"
                    );
                    Ok(())
                }
                Err(Failure::Race(msg)) => Err(Try::Again(race(msg, fqdn))),
                Err(e) => Err(Try::Stop(e)),
            }
        })
        .await;
        removed.map_err(gave_up)
    }

    /// Polls `GetChange` until `INSYNC`.
    async fn wait_insync(
        &self,
        aws: &Aws,
        change_id: &str,
        deadline: &Deadline,
    ) -> Result<(), PluginError> {
        // Polling, not retrying: "still PENDING" is the answer to wait on.
        let polls = Backoff::new(u32::MAX, SYNC_POLL_FIRST, SYNC_POLL_MAX)
            .with_reserve(aws::DEADLINE_MARGIN);
        let synced = retry_until(deadline, polls, |_| async move {
            let out = aws
                .call(deadline, "GetChange", || {
                    aws.client.get_change().id(change_id).send()
                })
                .await
                .map_err(Try::Stop)?;
            let status = out.change_info().map(|c| c.status().clone());
            if status == Some(ChangeStatus::Insync) {
                log::debug!("route53: change {change_id} is INSYNC");
                return Ok(());
            }
            Err(Try::Again(PluginError::transient(format!(
                "Route53 change {change_id} was still {} when the call's deadline came; \
                 Route53 usually syncs within a minute: raise the call timeout, or set \
                 wait_for_sync=false to rely on certsmith's own propagation check",
                status.as_ref().map_or("unknown", |s| s.as_str())
            ))))
        })
        .await;
        synced.map_err(gave_up)
    }
}

/// A lost race on `fqdn`, as the error given if it is the last.
fn race(msg: String, fqdn: &str) -> PluginError {
    log::debug!("route53: {fqdn} changed meanwhile ({msg}); reading it again");
    Failure::Race(msg).into()
}

/// The error of a [`retry_until`] that ended without a value.
fn gave_up(g: GaveUp<Failure>) -> PluginError {
    match g {
        GaveUp::Again(e) => e,
        GaveUp::Stop(f) => f.into(),
    }
}

fn build_error(e: aws_sdk_route53::error::BuildError) -> Failure {
    Failure::Fatal(PluginError::internal(format!(
        "could not build a Route53 change: {e}"
    )))
}

fn txt_set(fqdn: &str, ttl: u32, values: Vec<String>) -> Result<ResourceRecordSet, Failure> {
    let records = values
        .into_iter()
        .map(|v| {
            ResourceRecord::builder()
                .value(v)
                .build()
                .map_err(build_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    ResourceRecordSet::builder()
        .name(txt::absolute(fqdn))
        .r#type(RrType::Txt)
        .ttl(i64::from(ttl))
        .set_resource_records(Some(records))
        .build()
        .map_err(build_error)
}

/// Picks the zone among those named `zone` (`(id, private)` pairs).
fn choose_zone(
    zone: &str,
    found: &[(String, bool)],
    private_zone: Option<bool>,
) -> Result<String, PluginError> {
    let describe = |zs: &[&(String, bool)]| {
        zs.iter()
            .map(|(id, private)| format!("{id} ({})", if *private { "private" } else { "public" }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<&(String, bool)> = found.iter().collect();
    let matching: Vec<&(String, bool)> = found
        .iter()
        .filter(|(_, private)| private_zone.is_none_or(|want| *private == want))
        .collect();
    match (matching.as_slice(), private_zone) {
        ([(id, _)], _) => Ok(id.clone()),
        ([], None) => Err(PluginError::not_found(format!(
            "no Route53 hosted zone named {zone} is visible to these credentials; create it, \
             or set hosted_zone_id"
        ))),
        ([], Some(want)) => Err(PluginError::not_found(if all.is_empty() {
            format!(
                "no Route53 hosted zone named {zone} is visible to these credentials; create \
                 it, or set hosted_zone_id"
            )
        } else {
            format!(
                "no {} Route53 hosted zone named {zone}, only {}; set private_zone={} or \
                 hosted_zone_id",
                if want { "private" } else { "public" },
                describe(&all),
                !want
            )
        })),
        (many, None) if many.iter().any(|z| z.1) && many.iter().any(|z| !z.1) => {
            Err(PluginError::config(format!(
                "{} Route53 hosted zones are named {zone}: {}; set private_zone=false for the \
                 public one (the one an ACME CA sees) or private_zone=true, or hosted_zone_id",
                many.len(),
                describe(many)
            )))
        }
        (many, _) => Err(PluginError::config(format!(
            "{} Route53 hosted zones are named {zone}: {}; set hosted_zone_id to the one \
             delegated from the parent zone",
            many.len(),
            describe(many)
        ))),
    }
}

#[async_trait]
impl Solver for Route53 {
    type Config = Route53Config;

    fn new(config: Route53Config) -> Result<Self, PluginError> {
        Ok(Route53 {
            settings: Settings::from_config(config)?,
            aws: OnceCell::new(),
            zones: Mutex::new(HashMap::new()),
            locks: NameLocks::default(),
        })
    }

    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(self.verify(req).await)
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = req.dns01_target("route53")?;
        let deadline = req.deadline();
        let aws = self.aws().await?;
        let zone_id = self.zone_id(aws, &target.zone, &deadline).await?;
        let fqdn = txt::normalize_name(&target.fqdn);
        let ttl = self.settings.ttl.unwrap_or(target.ttl);
        let change_id = {
            let _guard = self.locks.lock(&format!("{zone_id}/{fqdn}")).await;
            self.add_value(aws, &zone_id, &fqdn, &target.value, ttl, &deadline)
                .await?
        };
        if self.settings.wait_for_sync
            && let Some(id) = &change_id
        {
            self.wait_insync(aws, id, &deadline).await?;
        }
        Ok(Presented::new(serde_json::json!({
            "hosted_zone_id": zone_id,
            "fqdn": fqdn,
            "change_id": change_id,
        }))
        .with_ttl((ttl != target.ttl).then_some(ttl)))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(target) = req.dns01_target("route53") else {
            // present refuses these, so nothing was created.
            return Ok(());
        };
        let deadline = req.deadline();
        let aws = self.aws().await?;
        // The zone present used (it survives a restart in the host's
        // journal), else the same resolution present does.
        let from_handle = presented
            .handle
            .get("hosted_zone_id")
            .and_then(|v| v.as_str())
            .map(|id| txt::bare_zone_id(id).to_owned())
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let zone_id = match from_handle {
            Some(id) => id,
            None => match self.zone_id(aws, &target.zone, &deadline).await {
                Ok(id) => id,
                Err(e) if e.kind == certsmith_plugin_api::ErrorKind::NotFound => {
                    log::warn!("route53: cleanup: {}; nothing to remove", e.message);
                    return Ok(());
                }
                Err(e) => return Err(e),
            },
        };
        let fqdn = txt::normalize_name(&target.fqdn);
        let _guard = self.locks.lock(&format!("{zone_id}/{fqdn}")).await;
        match self
            .remove_value(aws, &zone_id, &fqdn, &target.value, &deadline)
            .await
        {
            Err(e) if e.kind == certsmith_plugin_api::ErrorKind::NotFound => {
                // The hosted zone is gone, and the record with it.
                log::warn!("route53: cleanup: {}; nothing to remove", e.message);
                Ok(())
            }
            other => other,
        }
    }
}

certsmith_plugin_api::export_solver!(Route53, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Route53Config {
        Route53Config::default()
    }

    #[test]
    fn settings_defaults_and_validation() {
        let s = Settings::from_config(cfg()).expect("valid");
        assert_eq!(s.region, "us-east-1");
        assert!(s.wait_for_sync);
        assert!(s.static_keys.is_none());

        let s = Settings::from_config(Route53Config {
            hosted_zone_id: Some("/hostedzone/Z123ABC".into()),
            region: Some(" ".into()),
            ..cfg()
        })
        .expect("valid");
        assert_eq!(s.hosted_zone_id.as_deref(), Some("Z123ABC"));
        assert_eq!(s.region, "us-east-1", "blank counts as unset");

        for bad in [
            Route53Config {
                hosted_zone_id: Some("Z12/../x".into()),
                ..cfg()
            },
            Route53Config {
                endpoint_url: Some("localhost:5000".into()),
                ..cfg()
            },
            Route53Config {
                ttl: Some(-1),
                ..cfg()
            },
            Route53Config {
                access_key_id: Some("AKIA".into()),
                ..cfg()
            },
            Route53Config {
                secret_access_key: Some("s".into()),
                ..cfg()
            },
        ] {
            let e = Settings::from_config(bad).expect_err("invalid");
            assert_eq!(e.kind, certsmith_plugin_api::ErrorKind::Config, "{e}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Route53Config {
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("TOPSECRETKEY".into()),
            session_token: Some("TOPSECRETTOKEN".into()),
            ..cfg()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        let s = Route53::new(c).expect("valid");
        let shown = format!("{s:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(shown.contains("AKIDEXAMPLE"), "the key id is not a secret");
    }

    #[test]
    fn zone_choice() {
        let public = ("ZPUB".to_owned(), false);
        let private = ("ZPRIV".to_owned(), true);
        let both = [public.clone(), private.clone()];
        assert_eq!(
            choose_zone("a.test", std::slice::from_ref(&public), None)
                .ok()
                .as_deref(),
            Some("ZPUB")
        );
        assert_eq!(
            choose_zone("a.test", &both, Some(false)).ok().as_deref(),
            Some("ZPUB")
        );
        assert_eq!(
            choose_zone("a.test", &both, Some(true)).ok().as_deref(),
            Some("ZPRIV")
        );
        let e = choose_zone("a.test", &both, None).expect_err("ambiguous");
        assert_eq!(e.kind, certsmith_plugin_api::ErrorKind::Config);
        assert!(e.message.contains("private_zone"), "{}", e.message);
        let e = choose_zone("a.test", &[], None).expect_err("none");
        assert_eq!(e.kind, certsmith_plugin_api::ErrorKind::NotFound);
        let e = choose_zone("a.test", std::slice::from_ref(&public), Some(true))
            .expect_err("no private");
        assert_eq!(e.kind, certsmith_plugin_api::ErrorKind::NotFound);
        assert!(e.message.contains("ZPUB (public)"), "{}", e.message);
        let e = choose_zone(
            "a.test",
            &[public.clone(), ("ZPUB2".into(), false)],
            Some(false),
        )
        .expect_err("two public");
        assert!(e.message.contains("hosted_zone_id"), "{}", e.message);
    }
}
