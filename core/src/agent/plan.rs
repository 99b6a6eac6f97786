//! Deciding what a batch does with each certificate: order it (new,
//! changed, revoked, due, forced) or leave it (not due, and why).
//!
//! Why this module exists: `run` describes certificates in the config
//! file, `renew` in their stored lineage; after that the decision is the
//! same, and it is made here once.

use std::time::Duration;

use time::OffsetDateTime;

use super::Agent;
use super::job::{Job, JobError, Plan, Settings};
use crate::acme::AcmeClient;
use crate::config::{self, CertificateConfig, Config};
use crate::engine::{self, CertRequest};
use crate::identifiers;
use crate::keys::KeyType;
use crate::renewal::{self, CertFacts, RenewReason};
use crate::store::{Lineage, RenewalRecord};
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

/// Plans the replacement of a current version that cannot be served
/// (due at once, reason `damaged`); nothing is deleted, the next version
/// takes its place.
fn damaged(job: &mut Job, e: renewal::RenewalError, request: CertRequest) {
    log::warn!("{e}; ordering a replacement");
    let why = match &e {
        renewal::RenewalError::Damaged { reason, .. } => {
            format!("the current version is damaged: {reason}")
        }
        other => format!("the current version is unreadable: {other}"),
    };
    job.next = Some((OffsetDateTime::now_utc(), RenewReason::Damaged));
    job.order(Plan::Renew(why), request);
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

impl Agent {
    /// Plans a `[[certificate]]` of the config file: ordered when it is
    /// missing, its domains, key type or CA changed, it was revoked, or it
    /// is due; `force` renews it regardless.
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
            config.defaults.deploy_hook_timeout,
            config.renew_before(cert),
        );
        // The solver, configured: secrets come from the environment or the
        // file now, never from the store.
        let solver = match self.solver(&cert.solver, &config.solver_table(cert)) {
            Ok(s) => s,
            Err(e) => {
                let context = format!("{} ({})", cert.key("solver"), cert.solver);
                job.fail(JobError::context(context, e));
                return job;
            }
        };
        let request = CertRequest {
            name: cert.name.clone(),
            domains: cert.domains.clone(),
            solver,
            key_type: cert.key_type,
            replaces: None,
            propagation_check: config.propagation_check(cert),
        };
        if let Err(e) = engine::check_request(&request, self.max_names) {
            job.fail(e.into());
            return job;
        }
        let lineage = match self.store.load_lineage(&cert.name) {
            Ok(l) => l,
            Err(e) => {
                job.fail(JobError::from(crate::error::IssueError::from(e)));
                return job;
            }
        };
        let facts = match renewal::read_current(&self.store, &cert.name) {
            Ok(f) => f,
            Err(e) => {
                damaged(&mut job, e, request);
                return job;
            }
        };
        let (Some(lineage), Some(facts)) = (lineage, facts) else {
            job.order(Plan::Issue("new".to_owned()), request);
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
            job.order(Plan::Issue(why.join("; ")), request);
            return job;
        }
        let existing = Existing {
            name: &cert.name,
            lineage: &lineage,
            facts,
            renew_before: config.renew_before(cert),
            force,
        };
        self.plan_existing(&mut job, client, existing, request)
            .await;
        job
    }

    /// Plans a stored certificate from its lineage (`renew`): `settings`
    /// are what to record after the order; the solver options are the
    /// config file's `[solvers.<code>]` table overlaid with what the
    /// lineage recorded.
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
        let renew_before = match lineage.renew_before.as_deref().map(config::parse_duration) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                log::warn!("{name}: renew_before in the lineage: {e}; using 1/3 of the lifetime");
                None
            }
            None => None,
        };
        settings.renew_before = renew_before;
        job.settings = settings;
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
        let mut table = solver_table;
        for (k, v) in &lineage.solver_options {
            table.insert(k.clone(), v.clone());
        }
        let solver = match self.solver(&lineage.solver, &table) {
            Ok(s) => s,
            Err(e) => {
                job.fail(e.into());
                return job;
            }
        };
        let request = CertRequest {
            name: name.to_owned(),
            domains,
            solver,
            key_type,
            replaces: None,
            propagation_check: None,
        };
        if let Err(e) = engine::check_request(&request, self.max_names) {
            job.fail(e.into());
            return job;
        }
        let facts = match renewal::read_current(&self.store, name) {
            Ok(Some(f)) => f,
            Ok(None) => {
                job.order(Plan::Issue("no current version".to_owned()), request);
                return job;
            }
            Err(e) => {
                damaged(&mut job, e, request);
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
        self.plan_existing(&mut job, client, existing, request)
            .await;
        job
    }

    /// Decides, for a certificate with a current version, whether it is
    /// due (asking the CA's ARI when it offers it), records the schedule
    /// in the lineage, and plans the order naming the certificate it
    /// replaces when the CA offers ARI (RFC 9773 §5).
    async fn plan_existing(
        &self,
        job: &mut Job,
        client: &AcmeClient,
        e: Existing<'_>,
        request: CertRequest,
    ) {
        if e.lineage
            .revoked
            .as_ref()
            .is_some_and(|r| r.serial == e.facts.serial)
        {
            job.order(
                Plan::Issue("the current version is revoked".to_owned()),
                request,
            );
            return;
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
            return;
        };
        if client.offers_renewal_info().await.unwrap_or(false) {
            job.replaces = e.facts.ari_cert_id.clone();
        }
        job.order(
            plan,
            CertRequest {
                replaces: job.replaces.clone(),
                ..request
            },
        );
    }

    /// Records a renewal schedule in the lineage (a failure is only
    /// warned about: the schedule is computed again next time).
    pub(super) async fn persist_schedule(&self, name: &str, record: RenewalRecord) {
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
