//! Deciding what a batch does with each certificate: order it (new,
//! changed, revoked, due, forced) or leave it (not due, and why).
//!
//! Why this module exists: `run` describes certificates in the config
//! file, `renew` in their stored lineage; after that the decision is the
//! same, and it is made here once.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::Agent;
use super::job::{Job, JobError, Plan, Settings};
use crate::acme::AcmeClient;
use crate::config::{self, CertificateConfig, Config};
use crate::engine::{self, CertRequest, OrderOptions};
use crate::error::IssueError;
use crate::identifiers;
use crate::keys::KeyType;
use crate::plugin::PluginHostError;
use crate::renewal::{self, CertFacts, RenewReason};
use crate::store::{Lineage, RenewalRecord, RetiredRecord, Store};
use crate::timefmt::rfc3339;

/// The words for why a certificate renews when it does.
pub fn reason_words(r: RenewReason) -> &'static str {
    match r {
        RenewReason::Expiry => "1/3 of the lifetime left",
        RenewReason::RenewBefore => "renew_before",
        RenewReason::Ari => "the CA's renewal window (ARI)",
        RenewReason::Damaged => "the current version is damaged",
    }
}

/// The plan replacing a current version that cannot be served (due at
/// once, reason `damaged`); nothing is deleted, the next version takes
/// its place.
fn damaged(job: &mut Job, e: renewal::RenewalError) -> Plan {
    log::warn!("{e}; ordering a replacement");
    let why = match &e {
        renewal::RenewalError::Damaged { reason, .. } => {
            format!("the current version is damaged: {reason}")
        }
        other => format!("the current version is unreadable: {other}"),
    };
    job.next = Some((OffsetDateTime::now_utc(), RenewReason::Damaged));
    Plan::Renew(why)
}

/// The skip of a retired certificate.
fn retired(job: &mut Job, record: &RetiredRecord) {
    job.plan = Ok(Plan::Skip(format!(
        "retired at {} ({}): never renewed",
        record.at, record.reason
    )));
}

/// Plans `plan`: an order of the request `make` builds (the solver is
/// configured only now, for a certificate that is ordered), or a skip.
/// The current version's facts, or the plan that orders a first version
/// (there is none) or a replacement (it is damaged).
fn current_or_plan(store: &Store, job: &mut Job, name: &str) -> Result<CertFacts, Plan> {
    match renewal::read_current(store, name) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(Plan::Issue("no current version".to_owned())),
        Err(e) => Err(damaged(job, e)),
    }
}

fn order_with(
    job: &mut Job,
    plan: Option<Plan>,
    make: impl FnOnce() -> Result<CertRequest, JobError>,
) {
    let Some(plan) = plan else { return };
    match make() {
        Ok(request) => {
            let replaces = job.replaces.clone();
            let hooks = job.settings.order_hooks();
            job.order(
                plan,
                CertRequest {
                    replaces,
                    hooks,
                    ..request
                },
            );
        }
        Err(e) => job.fail(e),
    }
}

/// Where a renewal's order comes from: the whole description of the
/// certificate and its current state.
struct Existing<'a> {
    name: &'a str,
    lineage: &'a Lineage,
    facts: CertFacts,
    renew_before: Option<Duration>,
    force: bool,
}

/// The certificate `issue` asks for, as far as planning needs it (the
/// solver is configured only when an order is planned: see
/// [`Agent::plan_request`]).
#[derive(Clone, Debug)]
pub struct WantedCert {
    /// The certificate name.
    pub name: String,
    /// The identifiers, checked.
    pub domains: Vec<crate::identifiers::Identifier>,
    /// The key type.
    pub key_type: KeyType,
}

/// How `issue` may change a certificate already stored under its name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestMode {
    /// Order even when not due.
    pub force: bool,
    /// Accept a set of names that adds names to the stored one.
    pub expand: bool,
    /// Accept any change of names, key type or CA.
    pub replace: bool,
}

impl RequestMode {
    /// A mode with each choice given.
    pub fn new(force: bool, expand: bool, replace: bool) -> RequestMode {
        RequestMode {
            force,
            expand,
            replace,
        }
    }
}

/// The order options a lineage recorded, with the user's CSR of its
/// current version when it was ordered with one (renewals send it again).
fn stored_order(store: &Store, name: &str, lineage: &Lineage) -> Result<OrderOptions, IssueError> {
    let mut order = OrderOptions::from_lineage(lineage)?;
    if lineage.csr {
        let files = store.read_version(name, None)?;
        let Some(pem) = files.and_then(|v| v.files.csr_pem) else {
            return Err(IssueError::InvalidRequest(format!(
                "'{name}' was ordered with a CSR, but its current version holds no {}; order it again with --csr",
                crate::store::CSR_FILE
            )));
        };
        let csr = crate::keys::read_csr(pem.as_bytes()).map_err(|source| IssueError::Csr {
            path: format!("{name}/current/{}", crate::store::CSR_FILE),
            source,
        })?;
        order.csr = Some(csr);
    }
    Ok(order)
}

/// A renew_before stored in a lineage, if valid.
fn lineage_renew_before(name: &str, lineage: &Lineage) -> Option<Duration> {
    match lineage.renew_before.as_deref().map(config::parse_duration) {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            log::warn!("{name}: renew_before in the lineage: {e}; using 1/3 of the lifetime");
            None
        }
        None => None,
    }
}

/// A hook timeout stored in a lineage, if valid.
pub fn lineage_hook_timeout(name: &str, lineage: &Lineage) -> Option<Duration> {
    match lineage.hook_timeout.as_deref().map(config::parse_duration) {
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(Ok(_)) | Some(Err(_)) => {
            log::warn!("{name}: hook_timeout in the lineage is not a duration; using the default");
            None
        }
        None => None,
    }
}

/// Context for a solver that cannot be configured at renewal: where each
/// option it misses came from at the last order.
fn solver_context(name: &str, lineage: &Lineage, e: &IssueError) -> String {
    let missing = match e {
        IssueError::Plugin(PluginHostError::MissingOption { key, .. }) => Some(key),
        _ => None,
    };
    match missing.and_then(|k| lineage.option_sources.get(k).map(|s| (k, s))) {
        Some((key, from)) if from == "flag" => format!(
            "{name}: option '{key}' was given on the command line at the last order and is not stored"
        ),
        Some((key, from)) => match from.strip_prefix("env:") {
            Some(var) => format!("{name}: option '{key}' came from {var} at the last order"),
            None => format!("{name}: option '{key}' came from the config file at the last order"),
        },
        None => format!("{name}: solver '{}'", lineage.solver),
    }
}

impl Agent {
    /// Plans a `[[certificate]]` of the config file: ordered when it is
    /// missing, its domains, key type or CA changed, it was revoked, or it
    /// is due; `force` renews it regardless. A retired one is skipped. The
    /// solver is configured only when the certificate is ordered.
    pub async fn plan_configured(
        &self,
        config: &Config,
        cert: &CertificateConfig,
        client: &AcmeClient,
        force: bool,
    ) -> Job {
        let mut job = Job::new(cert.name.clone(), cert.domain_names());
        job.settings = Settings::new(
            config.defaults.ca_cert.clone(),
            config.defaults.email.clone(),
            config.deploy_hook(cert),
            config.hook_timeout(cert),
            config.renew_before(cert),
        )
        .with_hooks(config.pre_hook(cert), config.post_hook(cert));
        // The solver, configured: secrets come from the environment or the
        // file now, never from the store.
        let make = || -> Result<CertRequest, JobError> {
            let solver = self
                .solver_named(
                    &cert.solver,
                    &config.plugin_code(&cert.solver),
                    &config.solver_table(cert),
                )
                .map_err(|e| {
                    JobError::context(format!("{} ({})", cert.key("solver"), cert.solver), e)
                })?;
            let mut name_solvers = BTreeMap::new();
            for (id, name, _) in &cert.name_solvers {
                let s = self
                    .solver_named(
                        name,
                        &config.plugin_code(name),
                        &config.instance_table(name),
                    )
                    .map_err(|e| {
                        JobError::context(
                            format!("{} ({name})", cert.key(&format!("solvers.\"{id}\""))),
                            e,
                        )
                    })?;
                name_solvers.insert(id.clone(), s);
            }
            let request = CertRequest {
                name: cert.name.clone(),
                domains: cert.domains.clone(),
                solver,
                key_type: cert.key_type,
                replaces: None,
                propagation_check: config.propagation_check(cert),
                order: cert.order.clone(),
                hooks: Default::default(),
                fence: None,
                name_solvers,
            };
            engine::check_request(&request, self.max_names)?;
            Ok(request)
        };
        let lineage = match self.store.load_lineage(&cert.name) {
            Ok(l) => l,
            Err(e) => {
                job.fail(JobError::from(crate::error::IssueError::from(e)));
                return job;
            }
        };
        if let Some(r) = lineage.as_ref().and_then(|l| l.retired.as_ref()) {
            retired(&mut job, r);
            return job;
        }
        job.current_dir = self.store.current_dir(&cert.name);
        let facts = match renewal::read_current(&self.store, &cert.name) {
            Ok(f) => f,
            Err(e) => {
                let plan = damaged(&mut job, e);
                order_with(&mut job, Some(plan), make);
                return job;
            }
        };
        let (Some(lineage), Some(facts)) = (lineage, facts) else {
            order_with(&mut job, Some(Plan::Issue("new".to_owned())), make);
            return job;
        };
        let changes = renewal::changes(
            &lineage,
            &cert.domain_names(),
            cert.key_type,
            client.directory_url(),
        );
        job.facts = Some(facts.clone());
        if !changes.is_empty() {
            let why: Vec<String> = changes.iter().map(ToString::to_string).collect();
            order_with(&mut job, Some(Plan::Issue(why.join("; "))), make);
            return job;
        }
        let existing = Existing {
            name: &cert.name,
            lineage: &lineage,
            facts,
            renew_before: config.renew_before(cert),
            force,
        };
        let plan = self.plan_existing(&mut job, client, existing).await;
        order_with(&mut job, plan, make);
        job
    }

    /// Plans a stored certificate from its lineage (`renew`): `settings`
    /// are what to record after the order; the solver options are the
    /// config file's `[solvers.<code>]` table overlaid with what the
    /// lineage recorded. A retired one is skipped; the solver is
    /// configured only when the certificate is ordered, so that one
    /// that is not due never fails for a secret missing now.
    pub async fn plan_stored(
        &self,
        name: &str,
        lineage: &Lineage,
        solver_table: toml::Table,
        mut settings: Settings,
        client: &AcmeClient,
        force: bool,
    ) -> Job {
        let mut job = Job::new(name.to_owned(), lineage.domains.clone());
        let renew_before = lineage_renew_before(name, lineage);
        settings.renew_before = renew_before;
        job.settings = settings;
        if let Some(r) = &lineage.retired {
            retired(&mut job, r);
            return job;
        }
        let domains = match identifiers::parse_domains(&lineage.domains) {
            Ok(d) => d,
            Err(e) => {
                job.fail(JobError::context(format!("{name}: domains"), e));
                return job;
            }
        };
        let key_type = match lineage.key_type.parse::<KeyType>() {
            Ok(k) => k,
            Err(e) => {
                job.fail(JobError::Invalid {
                    message: format!("{name}: key_type in the lineage: {e}"),
                });
                return job;
            }
        };
        let order = match stored_order(&self.store, name, lineage) {
            Ok(o) => o,
            Err(e) => {
                job.fail(JobError::context(format!("{name}: lineage"), e));
                return job;
            }
        };
        let make = || -> Result<CertRequest, JobError> {
            let mut table = solver_table;
            for (k, v) in &lineage.solver_options {
                table.insert(k.clone(), v.clone());
            }
            let solver = self
                .solver(&lineage.solver, &table)
                .map_err(|e| JobError::context(solver_context(name, lineage, &e), e))?;
            let mut name_solvers = BTreeMap::new();
            for (id, record) in &lineage.name_solvers {
                let mut table = self
                    .solver_tables
                    .get(&record.solver)
                    .and_then(toml::Value::as_table)
                    .cloned()
                    .unwrap_or_default();
                for (k, v) in &record.solver_options {
                    table.insert(k.clone(), v.clone());
                }
                let s = self.solver(&record.solver, &table).map_err(|e| {
                    JobError::context(
                        format!("{name}: the solver of '{id}' ({})", record.solver),
                        e,
                    )
                })?;
                name_solvers.insert(id.clone(), s);
            }
            let request = CertRequest {
                name: name.to_owned(),
                domains,
                solver,
                key_type,
                replaces: None,
                propagation_check: None,
                order,
                hooks: Default::default(),
                fence: None,
                name_solvers,
            };
            engine::check_request(&request, self.max_names)?;
            Ok(request)
        };
        job.current_dir = self.store.current_dir(name);
        let facts = match current_or_plan(&self.store, &mut job, name) {
            Ok(f) => f,
            Err(plan) => {
                order_with(&mut job, Some(plan), make);
                return job;
            }
        };
        job.facts = Some(facts.clone());
        let existing = Existing {
            name,
            lineage,
            facts,
            renew_before,
            force,
        };
        let plan = self.plan_existing(&mut job, client, existing).await;
        order_with(&mut job, plan, make);
        job
    }

    /// Plans the certificate `wanted` (`issue`): a new certificate is
    /// ordered; one stored under the same name with the same names, key
    /// type and CA is ordered only when due (or `mode.force`), like
    /// `renew`; one with other names, key type or CA fails with
    /// [`JobError::Conflict`] unless `mode` accepts the change (`expand` for
    /// added names, `replace` for any). `make` builds the request (it
    /// configures the solver) only when an order is planned: a stored
    /// certificate that is not due is skipped even if its solver cannot be
    /// set up. Settings `settings` leaves unset (deploy hook, account
    /// contact, CA bundle) are those of the stored certificate.
    pub async fn plan_request(
        &self,
        wanted: WantedCert,
        mut settings: Settings,
        client: &AcmeClient,
        mode: RequestMode,
        make: impl FnOnce() -> Result<CertRequest, JobError>,
    ) -> Job {
        let name = wanted.name.clone();
        let domains: Vec<String> = wanted
            .domains
            .iter()
            .map(|d| d.as_str().to_owned())
            .collect();
        let mut job = Job::new(name.clone(), domains.clone());
        let lineage = match self.store.load_lineage(&name) {
            Ok(l) => l,
            Err(e) => {
                job.fail(JobError::from(crate::error::IssueError::from(e)));
                return job;
            }
        };
        let lineage = match lineage {
            Some(l) if l.retired.is_none() => l,
            other => {
                job.settings = settings;
                let why = if other.is_some() {
                    "new (the name was retired)"
                } else {
                    "new"
                };
                order_with(&mut job, Some(Plan::Issue(why.to_owned())), make);
                return job;
            }
        };
        // Order options the request leaves unset keep the stored ones.
        let stored_order = match stored_order(&self.store, &name, &lineage) {
            Ok(o) => o,
            Err(e) => {
                job.fail(JobError::context(format!("{name}: lineage"), e));
                return job;
            }
        };
        let make = move || {
            make().map(|r| CertRequest {
                order: r.order.clone().or(&stored_order),
                ..r
            })
        };
        settings.deploy_hook = settings.deploy_hook.or(lineage.deploy_hook.clone());
        settings.pre_hook = settings.pre_hook.or(lineage.pre_hook.clone());
        settings.post_hook = settings.post_hook.or(lineage.post_hook.clone());
        settings.hook_timeout = settings
            .hook_timeout
            .or_else(|| lineage_hook_timeout(&name, &lineage));
        settings.email = settings.email.or(lineage.email.clone());
        settings.ca_cert = settings
            .ca_cert
            .or(lineage.ca_cert.as_ref().map(std::path::PathBuf::from));
        settings.renew_before = settings
            .renew_before
            .or(lineage_renew_before(&name, &lineage));
        let renew_before = settings.renew_before;
        job.settings = settings;
        job.current_dir = self.store.current_dir(&name);
        let changes = renewal::changes(&lineage, &domains, wanted.key_type, client.directory_url());
        if !changes.is_empty() {
            let superset = changes.iter().all(|c| {
                matches!(c, renewal::Change::Domains { from, to } if from.iter().all(|d| to.contains(d)))
            });
            let why: Vec<String> = changes.iter().map(ToString::to_string).collect();
            if mode.replace || (mode.expand && superset) {
                order_with(&mut job, Some(Plan::Issue(why.join("; "))), make);
            } else {
                job.fail(JobError::Conflict {
                    name,
                    changes: why,
                    superset,
                });
            }
            return job;
        }
        let facts = match current_or_plan(&self.store, &mut job, &name) {
            Ok(f) => f,
            Err(plan) => {
                order_with(&mut job, Some(plan), make);
                return job;
            }
        };
        job.facts = Some(facts.clone());
        let existing = Existing {
            name: &name,
            lineage: &lineage,
            facts,
            renew_before,
            force: mode.force,
        };
        let plan = self.plan_existing(&mut job, client, existing).await;
        order_with(&mut job, plan, make);
        job
    }

    /// Decides, for a certificate with a current version, whether it is
    /// due (asking the CA's ARI when it offers it), records the schedule
    /// in the lineage, and returns the plan of the order (naming the
    /// certificate it replaces in `job.replaces` when the CA offers ARI,
    /// RFC 9773 §5), or `None` with the job skipped.
    async fn plan_existing(
        &self,
        job: &mut Job,
        client: &AcmeClient,
        e: Existing<'_>,
    ) -> Option<Plan> {
        if e.lineage
            .revoked
            .as_ref()
            .is_some_and(|r| r.serial == e.facts.serial)
        {
            return Some(Plan::Issue("the current version is revoked".to_owned()));
        }
        let now = OffsetDateTime::now_utc();
        let sched = renewal::schedule(
            Some(client),
            &e.facts,
            e.lineage.renewal.as_ref(),
            e.renew_before,
            now,
        )
        .await;
        job.warn_renew_before(&sched, &e.facts, e.renew_before);
        job.next = Some((sched.next, sched.reason));
        // Written only when something but the check time changed: a run with
        // nothing to do leaves the store alone.
        let unchanged = e.lineage.renewal.as_ref().is_some_and(|old| {
            RenewalRecord {
                checked_at: old.checked_at.clone(),
                ..sched.record.clone()
            } == *old
        });
        if !unchanged {
            self.persist_schedule(e.name, sched.record.clone()).await;
        }
        let plan = if e.force {
            Plan::Renew("forced".to_owned())
        } else if sched.is_due(now) {
            Plan::Renew(format!(
                "due since {} ({})",
                rfc3339(sched.next),
                reason_words(sched.reason)
            ))
        } else {
            job.plan = Ok(Plan::Skip(format!(
                "not due until {} ({})",
                rfc3339(sched.next),
                reason_words(sched.reason)
            )));
            return None;
        };
        if client.offers_renewal_info().await.unwrap_or(false) {
            job.replaces = e.facts.ari_cert_id.clone();
        }
        Some(plan)
    }

    /// Records a renewal schedule in the lineage (a failure is only
    /// warned about: the schedule is computed again next time).
    pub(super) async fn persist_schedule(&self, name: &str, record: RenewalRecord) {
        if self.dry_run {
            return;
        }
        let (store, name) = (self.store.clone(), name.to_owned());
        let result = tokio::task::spawn_blocking(move || {
            let mut record = Some(record);
            store.update_lineage(&name, &mut |l| l.renewal = record.take())
        })
        .await;
        if let Ok(Err(e)) = result {
            log::warn!("could not record the renewal schedule: {e}");
        }
    }
}
