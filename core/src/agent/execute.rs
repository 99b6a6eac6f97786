//! Running a planned batch: every order on one engine (one CA, one
//! account) with bounded concurrency, then the records and deploy hooks of
//! each certificate obtained.
//!
//! Why this module exists: `issue`, `run`, `renew` and a daemon differ in
//! where their certificates come from, not in what happens once an order
//! is decided. One failure never stops the others; a cancelled batch
//! still cleans up what it presented.

use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

use std::time::Duration;

use super::job::{Job, JobError, Outcome, Plan};
use super::{Agent, CERT_LEASE_TTL, HeldCert};
use crate::acme::{AccountOptions, AcmeClient};
use crate::config;
use crate::engine::{self, CertRequest, Engine, EngineOptions, IssuedCert, RateLimits};
use crate::error::IssueError;
use crate::hooks::{HookContext, OrderHooks};
use crate::renewal;
use crate::store::StoreError;

impl Agent {
    /// Orders every job planned to be issued or renewed (on one engine:
    /// `client`'s CA, the account `account` selects), then records the
    /// results in the lineages and runs the deploy hooks. Jobs that are
    /// skipped or failed are left as they are. Returns whether the batch
    /// was interrupted.
    pub async fn execute(
        &self,
        client: &AcmeClient,
        account: &AccountOptions,
        jobs: &mut [Job],
    ) -> bool {
        // Every order runs under its certificate's lease, so that a daemon
        // or another runner sharing the store never orders it at the same
        // time. A job fenced by its caller (the daemon, `issue`) holds one.
        let _held = self.claim_unfenced(jobs).await;
        let pending: Vec<usize> = jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| j.plan.as_ref().is_ok_and(|p| p.orders()) && j.request.is_some())
            .map(|(i, _)| i)
            .collect();
        if pending.is_empty() {
            return false;
        }
        self.sweep_journal().await;
        let store = self.store.clone();
        let limits = match tokio::task::spawn_blocking(move || store.rate_limits()).await {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                log::warn!("cannot read the rate limits remembered: {e}");
                Vec::new()
            }
            Err(e) => {
                log::warn!("the store reader failed: {e}");
                Vec::new()
            }
        };
        let options = EngineOptions {
            rate_limits: RateLimits::new(limits),
            cancel: self.cancel.clone(),
            dns: self.dns.clone(),
            journal: Some(self.journal.clone()),
            max_names: self.max_names,
            ..EngineOptions::default()
        };
        let connected = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(IssueError::Cancelled),
            r = Engine::connect(
                client.clone(),
                self.store.clone(),
                account.clone(),
                self.progress.clone(),
                options,
            ) => r,
        };
        let requests: Vec<CertRequest> = pending
            .iter()
            .filter_map(|&i| jobs[i].request.take())
            .collect();
        // Each request's hooks share where its post-hook's failure is kept.
        let order_hooks: Vec<OrderHooks> = requests.iter().map(|r| r.hooks.clone()).collect();
        let engine = match connected {
            Ok(engine) => engine,
            Err(e) => {
                // No account, no CA: every order of the batch fails alike.
                let failure = JobError::from(e);
                for &i in &pending {
                    jobs[i].outcome = Some(Outcome {
                        cert: None,
                        error: Some(failure.clone()),
                        hook: None,
                        post_hook: None,
                    });
                }
                return self.cancel.is_cancelled();
            }
        };
        // Each certificate's record and deploy hook as soon as it is
        // stored, while the other orders go on (docs/design.md §4.5).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, IssuedCert)>();
        let orders = engine.issue_all_notify(requests, self.concurrency, Some(tx));
        let mut deploys: Vec<Option<Result<(), JobError>>> = pending.iter().map(|_| None).collect();
        let after = async {
            while let Some((k, cert)) = rx.recv().await {
                let Some(&i) = pending.get(k) else { continue };
                let job = &mut jobs[i];
                self.after_issue(client, job, &cert).await;
                let hook = match &job.settings.deploy_hook {
                    Some(cmd) if !self.cancel.is_cancelled() && !self.dry_run => {
                        Some(self.run_hook(cmd, &cert, job.settings.hook_timeout()).await)
                    }
                    _ => None,
                };
                if let Some(slot) = deploys.get_mut(k) {
                    *slot = hook;
                }
            }
        };
        let (results, ()) = tokio::join!(orders, after);
        for (k, (&i, result)) in pending.iter().zip(results).enumerate() {
            let job = &mut jobs[i];
            let post_hook = order_hooks.get(k).and_then(|h| {
                let ran = h.post.is_some();
                match h.take_post_failure() {
                    Some(e) => Some(Err(JobError::Hook(e))),
                    None => ran.then_some(Ok(())),
                }
            });
            job.outcome = Some(match result {
                Ok(cert) => Outcome {
                    cert: Some(cert),
                    error: None,
                    hook: deploys.get_mut(k).and_then(Option::take),
                    post_hook,
                },
                Err(e) => Outcome {
                    cert: None,
                    error: Some(e.into()),
                    hook: None,
                    post_hook,
                },
            });
        }
        self.cancel.is_cancelled()
    }

    /// Claims the certificate of each job that orders and is not fenced
    /// yet, without waiting: one another worker holds is skipped (it is
    /// ordering it now), and so is one stored since it was planned.
    async fn claim_unfenced(&self, jobs: &mut [Job]) -> Vec<HeldCert> {
        let mut held = Vec::new();
        for job in jobs.iter_mut() {
            let unfenced = job.plan.as_ref().is_ok_and(|p| p.orders())
                && job.request.as_ref().is_some_and(|r| r.fence.is_none());
            if !unfenced || self.dry_run {
                continue;
            }
            match self
                .claim_cert(&job.name, CERT_LEASE_TTL, Duration::ZERO)
                .await
            {
                Ok(claim) => {
                    let (store, name) = (self.store.clone(), job.name.clone());
                    let now =
                        tokio::task::spawn_blocking(move || renewal::read_current(&store, &name))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten()
                            .map(|f| f.serial);
                    if now != job.facts.as_ref().map(|f| f.serial.clone()) {
                        job.plan = Ok(Plan::Skip(
                            "another worker stored it since it was planned".to_owned(),
                        ));
                        job.request = None;
                        continue;
                    }
                    job.fence_with(claim.lease());
                    held.push(claim);
                }
                Err(StoreError::Locked { .. }) => {
                    job.plan = Ok(Plan::Skip(
                        "another worker (a daemon, another run) is ordering it now".to_owned(),
                    ));
                    job.request = None;
                }
                Err(e) => job.fail(JobError::context(format!("{}: claim", job.name), e)),
            }
        }
        held
    }

    /// Records the settings and the next renewal in the lineage after an
    /// order (asking the CA's ARI when it offers it), in one write: each
    /// rewrite of `lineage.toml` is a new file, two fsyncs and a freed
    /// inode (issue #17).
    async fn after_issue(&self, client: &AcmeClient, job: &mut Job, cert: &IssuedCert) {
        let mut record = None;
        match renewal::read_current(&self.store, &cert.name) {
            Ok(Some(facts)) => {
                let lineage = self.store.load_lineage(&cert.name).ok().flatten();
                let previous = lineage.as_ref().and_then(|l| l.renewal.clone());
                let sched = renewal::schedule(
                    Some(client),
                    &facts,
                    previous.as_ref(),
                    job.settings.renew_before,
                    OffsetDateTime::now_utc(),
                )
                .await;
                job.warn_renew_before(&sched, &facts, job.settings.renew_before);
                job.next = Some((sched.next, sched.reason));
                // A dry run records no schedule (as `persist_schedule`).
                record = (!self.dry_run).then_some(sched.record);
                job.facts = Some(facts);
            }
            Ok(None) => {}
            Err(e) => log::warn!("cannot read the new certificate of '{}': {e}", cert.name),
        }
        let settings = job.settings.clone();
        let (store, name) = (self.store.clone(), cert.name.clone());
        let recorded = tokio::task::spawn_blocking(move || {
            store.update_lineage(&name, &mut |l| {
                l.ca_cert = settings.ca_cert.as_ref().map(|p| p.display().to_string());
                l.email = settings.email.clone();
                l.deploy_hook = settings.deploy_hook.clone();
                l.pre_hook = settings.pre_hook.clone();
                l.post_hook = settings.post_hook.clone();
                l.hook_timeout = settings.hook_timeout.map(config::format_duration);
                l.renew_before = settings.renew_before.map(config::format_duration);
                if let Some(r) = record.take() {
                    l.renewal = Some(r);
                }
            })
        })
        .await;
        if let Ok(Err(e)) = recorded {
            log::warn!(
                "could not record the settings and renewal schedule of '{}': {e}",
                cert.name
            );
        }
    }

    /// Runs a deploy hook for `cert`, reporting its output as progress.
    async fn run_hook(
        &self,
        command: &str,
        cert: &IssuedCert,
        timeout: std::time::Duration,
    ) -> Result<(), JobError> {
        let ctx = HookContext::deploy(
            &cert.name,
            &cert.domains,
            cert.fullchain_path
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
            cert.version,
        );
        engine::run_hook_reported(&self.progress, command, &ctx, timeout)
            .await
            .map_err(|e| JobError::Hook(Arc::new(e)))
    }
}
