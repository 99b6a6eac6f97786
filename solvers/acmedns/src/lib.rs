//! certsmith's `acmedns` solver: answers dns-01 challenges through an
//! acme-dns server (joohoi/acme-dns). acme-dns exists so that the host
//! asking for certificates holds no credentials for the real zone: the
//! zone gets one CNAME per domain, `_acme-challenge.<domain>` →
//! `<subdomain>.<acme-dns zone>`, and acme-dns serves the TXT values there.
//!
//! How it fits certsmith's DNS handling (docs/design.md §3): the core
//! follows CNAMEs at `_acme-challenge.<domain>` and hands the plugin the
//! name it arrived at (`DnsTarget::fqdn`). The plugin looks up the
//! domain's account in the storage file ([`storage`]) and
//!
//! * when the target is the account's `fulldomain`, sends the value
//!   (`POST /update`, `X-Api-User`/`X-Api-Key`, `{subdomain, txt}`);
//! * when the CNAME is missing or points elsewhere, fails with the CNAME
//!   to create, before touching acme-dns (the CA would not see the value);
//! * when there is no account, registers one (`POST /register`, with the
//!   `allowlist`), stores it and fails once with the CNAME to create — as
//!   lego does, since the operator must add it to the zone.
//!
//! acme-dns keeps the two most recent values of an account and has no
//! delete, so `example.com` and `*.example.com` can be validated together,
//! and cleanup sends a placeholder ([`CLEARED`]) that pushes the older
//! value out: after both cleanups of such a pair, neither value is served;
//! a lone challenge's value goes with the next update. Only one
//! placeholder per cleanup: a second would also push out a value of the
//! same account that may still be under validation
//! (`rotate_on_cleanup = false` keeps lego's "leave them"). Retries: 429
//! and 5xx (with `Retry-After`) and transport errors, inside the call's
//! deadline, by `solvers/shared/rest.rs`, the one HTTP call of the REST
//! plugins (the SDK's `retry` and status mapping).
//!
//! `check_credentials` (`certsmith doctor`) reads the storage file and
//! asks the server `GET /health`; it never registers or updates. acme-dns
//! has no read-only call that takes an account's credentials, so what it
//! can check is that each zone of the check has a stored account: one
//! stored under a domain in the zone (the CNAME not created yet: the zone
//! is the domain's own), or one whose fulldomain is in it (the CNAME
//! followed to the acme-dns zone). Account passwords come from the storage file and
//! never reach a message, a log line or a `Debug` output.

use std::fmt;

use certsmith_plugin_api::sdk::{HttpRequest, NameLocks};
use certsmith_plugin_api::{
    ChallengeRequest, CredentialsCheck, CredentialsChecked, ErrorKind, PluginError, Presented,
    Solver, async_trait, log,
};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

pub mod storage;

#[path = "../../shared/rest.rs"]
mod rest;

use certsmith_plugin_api::sdk::header_value_ok;
use rest::{Rest, base_url, describe, join, normalize};

use storage::{Account, Storage};

/// What cleanup sends: 43 characters, as acme-dns requires, and plainly
/// not a challenge value.
pub const CLEARED: &str = "certsmith_cleared_xxxxxxxxxxxxxxxxxxxxxxxxx";

/// The configuration (see `plugin.toml`).
#[derive(Clone, Debug, Deserialize)]
pub struct AcmednsConfig {
    /// The acme-dns API.
    pub api_base: String,
    /// The accounts file.
    pub storage_path: String,
    /// CIDRs for new registrations.
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// Register missing accounts.
    #[serde(default = "yes")]
    pub register: bool,
    /// Push a placeholder at cleanup.
    #[serde(default = "yes")]
    pub rotate_on_cleanup: bool,
}

fn yes() -> bool {
    true
}

impl AcmednsConfig {
    /// A configuration for the server at `api_base` and the file at `storage_path`.
    pub fn new(api_base: impl Into<String>, storage_path: impl Into<String>) -> Self {
        AcmednsConfig {
            api_base: api_base.into(),
            storage_path: storage_path.into(),
            allowlist: Vec::new(),
            register: true,
            rotate_on_cleanup: true,
        }
    }
}

/// The solver.
pub struct Acmedns {
    rest: Rest,
    base: Url,
    storage: Storage,
    allowlist: Vec<String>,
    register: bool,
    rotate_on_cleanup: bool,
    /// One registration or update per domain at a time in this process (and
    /// one writer of the storage file: the key "" guards it).
    locks: NameLocks,
}

impl fmt::Debug for Acmedns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acmedns")
            .field("base", &self.base.as_str())
            .field("storage", &self.storage)
            .field("allowlist", &self.allowlist)
            .field("register", &self.register)
            .finish_non_exhaustive()
    }
}

/// The CNAME the operator must create for `domain`.
fn cname_line(domain: &str, fulldomain: &str) -> String {
    format!(
        "_acme-challenge.{domain}. CNAME {}.",
        fulldomain.trim_end_matches('.')
    )
}

impl Acmedns {
    /// POSTs `body` to `/<segment>` with `headers`, retried as the module
    /// says; the answer's JSON on 2xx (`Null` when empty).
    async fn post(
        &self,
        segment: &str,
        headers: &[(&'static str, &str)],
        body: Option<&Value>,
        req: &ChallengeRequest,
    ) -> Result<Value, PluginError> {
        let url = join(&self.base, &[segment]);
        let request = describe("POST", &url);
        let reply = self
            .rest
            .send(req.deadline(), &request, |left| {
                let mut rb = HttpRequest::post(url.as_str())
                    .header("accept", "application/json")
                    .timeout(left);
                for (k, v) in headers {
                    rb = rb.header(*k, *v);
                }
                match body {
                    Some(b) => rb.json(b),
                    None => rb,
                }
            })
            .await?;
        if !reply.is_success() {
            return Err(reply.error("acme-dns refused the request"));
        }
        if reply.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        reply.json("acme-dns")
    }

    /// `check_credentials`: the storage's accounts cover the zones, and
    /// the server answers `/health`. Nothing is sent but that GET.
    async fn verify(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        let entries = {
            let _file = self.locks.lock("").await;
            self.storage.load()?
        };
        let path = self.storage.path().display();
        let norm = |s: &str| normalize(s.trim_start_matches("*."));
        let within = |name: &str, zone: &str| name == zone || name.ends_with(&format!(".{zone}"));
        let mut covered = Vec::new();
        for z in &req.zones {
            let zone = normalize(&z.zone);
            let found = entries.iter().find(|(domain, entry)| {
                Account::from_entry(entry).is_some_and(|a| {
                    within(&norm(domain), &zone) || within(&norm(&a.fulldomain), &zone)
                })
            });
            let Some((domain, _)) = found else {
                let how = if self.register {
                    "run `certsmith issue` for it once: an account is registered and stored, and the error names the CNAME to create"
                } else {
                    "set register = true and run `certsmith issue` for it once, or copy its entry from the lego or certbot acme-dns storage file"
                };
                return Err(PluginError::not_found(format!(
                    "the acme-dns storage file {path} (ACME_DNS_STORAGE_PATH) has no account for a name in the zone {zone}; {how}"
                )));
            };
            covered.push(format!("{zone} ({})", norm(domain)));
        }
        let url = join(&self.base, &["health"]);
        let request = describe("GET", &url);
        let reply = self
            .rest
            .send(req.deadline(), &request, |left| {
                HttpRequest::get(url.as_str()).timeout(left)
            })
            .await
            .map_err(|mut e| {
                e.message = format!(
                    "the acme-dns server at {} (ACME_DNS_API_BASE) does not answer: {}",
                    self.base, e.message
                );
                e
            })?;
        if !reply.is_success() {
            return Err(PluginError::from_http_status(
                reply.status,
                format!(
                    "{request} at {} (is ACME_DNS_API_BASE the acme-dns API?)",
                    self.base
                ),
                &rest::provider_message(&reply.body),
                None,
            ));
        }
        let mut detail = format!(
            "the acme-dns server answers /health; {} account(s) in {path}",
            entries.len()
        );
        if !covered.is_empty() {
            detail.push_str(&format!(", for zones {}", covered.join(", ")));
        }
        Ok(CredentialsChecked::new(detail))
    }

    /// `POST /update` of `value` for `account`.
    async fn update(
        &self,
        domain: &str,
        account: &Account,
        value: &str,
        req: &ChallengeRequest,
    ) -> Result<(), PluginError> {
        for (what, v) in [
            ("password", account.password.expose()),
            ("username", account.username.as_str()),
        ] {
            if !header_value_ok(v) {
                return Err(PluginError::config(format!(
                    "the acme-dns {what} stored for {domain} cannot go in an HTTP header; fix {}",
                    self.storage.path().display()
                )));
            }
        }
        let body = json!({ "subdomain": account.subdomain, "txt": value });
        let headers = [
            ("X-Api-User", account.username.as_str()),
            ("X-Api-Key", account.password.expose()),
        ];
        self.post("update", &headers, Some(&body), req)
            .await
            .map_err(|mut e| {
                if e.kind == ErrorKind::Auth {
                    e.message = format!(
                        "acme-dns refused the account stored for {domain} in {} ({}); re-register it (remove its entry, run again and update the CNAME), or check the allowlist it was registered with",
                        self.storage.path().display(),
                        e.message
                    );
                }
                e
            })?;
        Ok(())
    }

    /// Registers a new account for `domain` and stores it.
    async fn register(&self, domain: &str, req: &ChallengeRequest) -> Result<Account, PluginError> {
        let body = (!self.allowlist.is_empty()).then(|| json!({ "allowfrom": self.allowlist }));
        let answer = self
            .post("register", &[], body.as_ref(), req)
            .await
            .map_err(|e| {
                let mut e = e;
                e.message = format!(
                    "could not register an acme-dns account for {domain}: {}",
                    e.message
                );
                e
            })?;
        let Value::Object(mut entry) = answer else {
            return Err(PluginError::internal(
                "acme-dns answered /register without a JSON object; is api_base the acme-dns API?",
            ));
        };
        let Some(account) = Account::from_entry(&Value::Object(entry.clone())) else {
            return Err(PluginError::internal(
                "acme-dns answered /register without username, password, fulldomain and subdomain",
            ));
        };
        entry.insert("server_url".into(), Value::String(self.base.to_string()));
        let _file = self.locks.lock("").await;
        self.storage.put(domain, Value::Object(entry))?;
        log::info!(
            "acmedns: registered an account for {domain} (fulldomain {}), stored in {}",
            account.fulldomain,
            self.storage.path().display()
        );
        Ok(account)
    }
}

#[async_trait]
impl Solver for Acmedns {
    type Config = AcmednsConfig;

    fn new(config: AcmednsConfig) -> Result<Self, PluginError> {
        let raw = config.api_base.trim();
        let bad = |why: String| {
            PluginError::config(format!(
                "api_base {raw:?} {why}; set ACME_DNS_API_BASE (or --solver-opt api_base=...) to the acme-dns API, e.g. https://auth.example.org"
            ))
        };
        let base = Url::parse(raw).map_err(|e| bad(format!("is not a URL ({e})")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("must be an http:// or https:// URL".into()));
        }
        // Checked above; base_url also refuses a query and drops a trailing slash.
        let base = base_url(base.as_str(), "api_base", "(required)").map_err(|e| bad(e.message))?;
        if config.storage_path.trim().is_empty() {
            return Err(PluginError::config(
                "storage_path is empty: set ACME_DNS_STORAGE_PATH to the JSON file holding the acme-dns accounts (it is created if missing)",
            ));
        }
        let storage = Storage::new(config.storage_path.trim());
        // Read it now, so a broken file is reported before any challenge.
        storage.load()?;
        let rest = Rest::new(
            "acme-dns",
            concat!("certsmith-acmedns/", env!("CARGO_PKG_VERSION")),
        );
        Ok(Acmedns {
            rest,
            base,
            storage,
            allowlist: config.allowlist,
            register: config.register,
            rotate_on_cleanup: config.rotate_on_cleanup,
            locks: NameLocks::new(),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let t = req.dns01_target("acmedns")?;
        let domain = normalize(&req.identifier);
        let fqdn = normalize(&t.fqdn);
        let own_name = format!("_acme-challenge.{domain}");
        let _domain_lock = self.locks.lock(&domain).await;
        let found = {
            let _file = self.locks.lock("").await;
            Storage::find(&self.storage.load()?, &domain, &fqdn)
        };
        let account = match found {
            Some((_, a)) => a,
            None if !self.register => {
                return Err(PluginError::config(format!(
                    "{} has no acme-dns account for {domain}; add one (or set register = true to register it)",
                    self.storage.path().display()
                )));
            }
            None => {
                let a = self.register(&domain, req).await?;
                if normalize(&a.fulldomain) != fqdn {
                    return Err(PluginError::config(format!(
                        "registered a new acme-dns account for {domain} (stored in {}). Create this CNAME in {domain}'s DNS zone, then run certsmith again: {}",
                        self.storage.path().display(),
                        cname_line(&domain, &a.fulldomain)
                    )));
                }
                a
            }
        };
        let full = normalize(&account.fulldomain);
        if full != fqdn {
            let why = if fqdn == own_name {
                format!("{own_name} is not a CNAME")
            } else {
                format!("{own_name} leads to {fqdn}")
            };
            return Err(PluginError::config(format!(
                "{why}, but {domain}'s acme-dns account (in {}) serves {full}: the CA would not see the value. Create (or fix) the CNAME: {}",
                self.storage.path().display(),
                cname_line(&domain, &full)
            )));
        }
        self.update(&domain, &account, &t.value, req).await?;
        log::info!("acmedns: updated {full} for {domain}");
        Ok(Presented::new(json!({ "subdomain": account.subdomain })))
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        let Ok(t) = req.dns01_target("acmedns") else {
            return Ok(());
        };
        if !self.rotate_on_cleanup {
            return Ok(());
        }
        let domain = normalize(&req.identifier);
        let fqdn = normalize(&t.fqdn);
        let _domain_lock = self.locks.lock(&domain).await;
        let found = {
            let _file = self.locks.lock("").await;
            Storage::find(&self.storage.load()?, &domain, &fqdn)
        };
        let Some((_, account)) = found.filter(|(_, a)| normalize(&a.fulldomain) == fqdn) else {
            // Never presented through an account of ours: nothing to clear.
            return Ok(());
        };
        // acme-dns has no delete; an update replaces the older of its two
        // values. Once every challenge of the order is cleaned up this way,
        // none of their values is served any more.
        self.update(&domain, &account, CLEARED, req).await?;
        log::info!("acmedns: rotated a placeholder into {fqdn} for {domain}");
        Ok(())
    }

    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(self.verify(req).await)
    }
}

certsmith_plugin_api::export_solver!(Acmedns, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::Manifest;

    #[test]
    fn manifest_uses_legos_variables() {
        let m = Manifest::parse(include_str!("../plugin.toml")).expect("valid manifest");
        assert_eq!(m.code, "acmedns");
        assert_eq!(
            m.config["api_base"].env.as_deref(),
            Some("ACME_DNS_API_BASE")
        );
        assert_eq!(
            m.config["storage_path"].env.as_deref(),
            Some("ACME_DNS_STORAGE_PATH")
        );
        assert_eq!(
            m.config["allowlist"].env.as_deref(),
            Some("ACME_DNS_ALLOWLIST")
        );
    }

    #[test]
    fn config_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.json").display().to_string();
        assert!(Acmedns::new(AcmednsConfig::new("http://h", &file)).is_ok());
        assert!(Acmedns::new(AcmednsConfig::new("h:1", &file)).is_err());
        assert!(Acmedns::new(AcmednsConfig::new("http://h", " ")).is_err());
        std::fs::write(&file, "[1]").expect("write");
        assert!(Acmedns::new(AcmednsConfig::new("http://h", &file)).is_err());
    }

    #[test]
    fn the_cname_line_is_zone_file_syntax() {
        assert_eq!(
            cname_line("example.com", "abc.auth.example.org."),
            "_acme-challenge.example.com. CNAME abc.auth.example.org."
        );
    }
}
