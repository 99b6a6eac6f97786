//! One order, from creation to the stored certificate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use certsmith_plugin_api::{ChallengeRequest, ChallengeType};
use time::OffsetDateTime;
use tokio::task::JoinSet;

use crate::acme::{AccountOptions, AcmeClient, AuthzStatus};
use crate::dns::{self, DnsOptions, PropagationCheck, PropagationTarget, ResolvedName};
use crate::error::{CaProblem, IssueError};
use crate::keys::{self, KeyType};
use crate::progress::{Progress, ProgressEvent};
use crate::store::{self, CertFiles, Lineage, Store, VersionRecord};
use crate::timefmt::rfc3339;

use super::chain::parse_chain;
use super::challenge::{challenge_request, choose_challenge};
use super::cleanup::CleanupList;
use super::namelock;
use super::{CancelToken, CertRequest, Engine, EngineOptions, Inner, IssuedCert};

impl Engine {
    /// Fetches the directory, then loads or creates the account (checking
    /// the terms of service and EAB first). Reports
    /// [`ProgressEvent::AccountReady`], then
    /// [`ProgressEvent::AccountContactChanged`] if its contact was changed.
    pub async fn connect(
        client: AcmeClient,
        store: Store,
        account_options: AccountOptions,
        progress: Progress,
        options: EngineOptions,
    ) -> Result<Engine, IssueError> {
        let (account, created) = client.account(&store, &account_options).await?;
        progress.emit(ProgressEvent::AccountReady {
            server: client.directory_url().to_owned(),
            account_url: account.url().to_owned(),
            created,
        });
        if let Some(contact) = account.contact_changed() {
            progress.emit(ProgressEvent::AccountContactChanged {
                account_url: account.url().to_owned(),
                contact: contact.to_vec(),
            });
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                client,
                store,
                account_options,
                account: tokio::sync::Mutex::new((0, account)),
                progress,
                options,
            }),
        })
    }

    /// The token that cancels this engine's runs.
    pub fn cancel_token(&self) -> CancelToken {
        self.inner.options.cancel.clone()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The ACME client.
    pub fn client(&self) -> &AcmeClient {
        &self.inner.client
    }

    /// Obtains and stores every requested certificate, at most
    /// `concurrency` orders at a time. Results are in request order; one
    /// failure never stops the others. Holds every result until the last
    /// order ends: for many certificates, [`Engine::issue_each`] hands each
    /// one over as it comes instead.
    pub async fn issue_all(
        &self,
        requests: Vec<CertRequest>,
        concurrency: usize,
    ) -> Vec<Result<IssuedCert, IssueError>> {
        self.issue_all_notify(requests, concurrency, None).await
    }

    /// [`Engine::issue_all`], also sending each certificate (with its index
    /// in `requests`) to `saved` as soon as it is stored, while the other
    /// orders go on: the agent runs its deploy hook then.
    pub async fn issue_all_notify(
        &self,
        requests: Vec<CertRequest>,
        concurrency: usize,
        saved: Option<tokio::sync::mpsc::UnboundedSender<(usize, IssuedCert)>>,
    ) -> Vec<Result<IssuedCert, IssueError>> {
        let mut results: Vec<Option<Result<IssuedCert, IssueError>>> =
            (0..requests.len()).map(|_| None).collect();
        self.issue_each(requests, concurrency, |i, result| {
            if let (Some(tx), Ok(cert)) = (&saved, &result) {
                // The receiver gone means nobody waits for it.
                let _ = tx.send((i, cert.clone()));
            }
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(result);
            }
        })
        .await;
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(IssueError::Internal("an order task vanished".to_owned())))
            })
            .collect()
    }

    /// Obtains and stores every certificate `requests` yields, at most
    /// `concurrency` orders at a time, and hands each result to `done`
    /// (with the request's index) as soon as its order ends. One failure
    /// never stops the others; once the engine is cancelled, the requests
    /// not started end as [`IssueError::Cancelled`].
    ///
    /// Memory stays flat in the number of certificates: a request is taken
    /// from the iterator only when an order slot is free, and nothing of a
    /// finished order is kept (issue #17: 1,000 certificates in the memory
    /// of a few).
    pub async fn issue_each<I>(
        &self,
        requests: I,
        concurrency: usize,
        mut done: impl FnMut(usize, Result<IssuedCert, IssueError>),
    ) where
        I: IntoIterator<Item = CertRequest>,
    {
        let concurrency = concurrency.max(1);
        let cancel = self.inner.options.cancel.clone();
        let mut requests = requests.into_iter().enumerate();
        let mut set = JoinSet::new();
        let mut index_of = HashMap::new();
        let mut end = |i: usize, name: String, result: Result<IssuedCert, IssueError>| {
            if let Err(e) = &result {
                self.inner.progress.emit(ProgressEvent::Failed {
                    name,
                    error: e.to_string(),
                });
            }
            done(i, result);
        };
        loop {
            while set.len() < concurrency && !cancel.is_cancelled() {
                let Some((i, req)) = requests.next() else {
                    break;
                };
                let engine = self.clone();
                let name = req.name.clone();
                let handle = set.spawn(async move { engine.issue(req).await });
                index_of.insert(handle.id(), (i, name));
            }
            if cancel.is_cancelled() {
                for (i, req) in requests.by_ref() {
                    end(i, req.name, Err(IssueError::Cancelled));
                }
            }
            let Some(joined) = set.join_next_with_id().await else {
                break;
            };
            let (id, result) = match joined {
                Ok((id, result)) => (id, result),
                Err(e) => (
                    e.id(),
                    Err(IssueError::Internal(format!("the order task failed: {e}"))),
                ),
            };
            if let Some((i, name)) = index_of.remove(&id) {
                end(i, name, result);
            }
        }
    }

    /// Obtains and stores one certificate (behind the rate-limit gate of
    /// [`Engine::issue`]).
    pub(super) async fn order_and_store(&self, req: CertRequest) -> Result<IssuedCert, IssueError> {
        let inner = &self.inner;
        let cancel = &inner.options.cancel;
        if cancel.is_cancelled() {
            return Err(IssueError::Cancelled);
        }
        let domains: Vec<String> = req.domains.iter().map(|d| d.as_str().to_owned()).collect();
        // An order an earlier run finalized and did not see through: its
        // certificate, rather than a new order.
        if let Some(cert) = self.resume_pending(&req, &domains).await? {
            return Ok(cert);
        }

        // The key is needed only at finalization: make it while the CA
        // works (or, with reuse_key, read the current one).
        let key_type = req.key_type;
        let keygen = {
            let domains = domains.clone();
            let reuse = req
                .order
                .reuse_key
                .then(|| (inner.store.clone(), req.name.clone()));
            let csr = req.order.csr.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(csr) = csr {
                    // The user's CSR: sent as is, the key is theirs.
                    return Ok(keys::KeyAndCsr {
                        key_type,
                        private_key: None,
                        csr_der: csr.der,
                    });
                }
                match reuse.and_then(|(store, name)| reusable_key(&store, &name, key_type)) {
                    Some(key) => keys::csr_with_key(key_type, &key, &domains),
                    None => keys::key_and_csr(key_type, &domains),
                }
            })
        };

        // The pre-hook (e.g. stopping a web server that holds port 80)
        // before anything is presented; its post-hook after the cleanup,
        // whatever happened (docs/design.md §4.5).
        self.pre_hook(&req, &domains).await?;
        let cleanup = CleanupList::new(
            req.name.clone(),
            inner.progress.clone(),
            inner.options.journal.clone(),
        );
        let validated = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(IssueError::Cancelled),
            r = self.validate(&req, &domains, &cleanup) => r,
        };
        let mut order = match validated {
            Ok(order) => order,
            Err(e) => {
                cleanup.run().await;
                self.post_hook(&req, &domains, false).await;
                return Err(e);
            }
        };

        // Clean up while the CA issues.
        let finalize = async {
            let key = keygen
                .await
                .map_err(|e| IssueError::Internal(format!("key generation failed: {e}")))??;
            // From here on the CA may issue whatever happens to this run:
            // record the order first, so a later run downloads the
            // certificate instead of ordering again.
            self.record_pending(&req.name, &order, &domains, &key)
                .await?;
            inner.progress.emit(ProgressEvent::Finalizing {
                name: req.name.clone(),
            });
            let chain = order
                .finalize(&key.csr_der, inner.options.finalize_timeout)
                .await;
            if let Err(e) = &chain {
                self.forget_pending_unless_resumable(&req.name, order.url(), e)
                    .await;
            }
            Ok::<_, IssueError>((key, chain?, order.url().to_owned()))
        };
        let finalize = async {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(IssueError::Cancelled),
                r = finalize => r,
            }
        };
        let after_challenges = async {
            cleanup.run().await;
            self.post_hook(&req, &domains, true).await;
        };
        let (finalized, ()) = tokio::join!(finalize, after_challenges);
        let (key, chain, order_url) = finalized?;
        self.store_issued(&req, domains, key_type, key.private_key, &chain, &order_url)
            .await
    }

    /// Stores an issued chain with its key as the new current version of
    /// `req.name`, and forgets the pending order.
    pub(super) async fn store_issued(
        &self,
        req: &CertRequest,
        domains: Vec<String>,
        key_type: KeyType,
        private_key: Option<keys::PrivateKeyPem>,
        chain: &str,
        order_url: &str,
    ) -> Result<IssuedCert, IssueError> {
        let inner = &self.inner;
        if private_key.is_none() && req.order.csr.is_none() {
            // A pending order recorded without a key, picked up by a
            // request without the CSR it was made for.
            return Err(IssueError::InvalidRequest(format!(
                "the pending order of '{}' was made with a CSR; order with that CSR again",
                req.name
            )));
        }
        let parsed = parse_chain(chain, inner.client.directory_url())?;
        let chain_issuer = crate::acme::top_issuer_cn(&parsed.fullchain_pem);
        // The solver of names without one of their own, and those of the
        // others, so that a renewal answers each name the same way.
        let name_solvers = req
            .name_solvers
            .iter()
            .map(|(id, s)| {
                let record = store::NameSolverRecord {
                    solver: s.code().to_owned(),
                    solver_options: s.public_options(),
                };
                (id.clone(), record)
            })
            .collect();
        let lineage = Lineage {
            domains: domains.clone(),
            solver: req.solver.code().to_owned(),
            solver_options: req.solver.public_options(),
            option_sources: req.solver.option_sources(),
            name_solvers,
            key_type: key_type.as_str().to_owned(),
            server: inner.client.directory_url().to_owned(),
            versions: Vec::new(),
            challenges: req.order.challenge_names(),
            reuse_key: req.order.reuse_key,
            csr: req.order.csr.is_some(),
            preferred_chain: req.order.preferred_chain.clone(),
            profile: req.order.profile.clone(),
            ..Lineage::default()
        };
        let record = VersionRecord {
            version: 0,
            serial: parsed.serial.clone(),
            not_before: rfc3339(parsed.not_before),
            not_after: rfc3339(parsed.not_after),
            issued_at: rfc3339(OffsetDateTime::now_utc()),
        };
        let files = CertFiles {
            cert_pem: parsed.cert_pem,
            chain_pem: parsed.chain_pem,
            fullchain_pem: parsed.fullchain_pem,
            privkey_pem: private_key,
            csr_pem: req.order.csr.as_ref().map(keys::UserCsr::to_pem),
        };
        let store = inner.store.clone();
        let name = req.name.clone();
        let order_url = order_url.to_owned();
        let fence = req.fence;
        let saved = tokio::task::spawn_blocking(move || {
            store.commit_version_fenced(&name, &files, &lineage, record, fence, Some(&order_url))
        })
        .await
        .map_err(|e| IssueError::Internal(format!("the store writer failed: {e}")))??;
        inner.progress.emit(ProgressEvent::Saved {
            name: req.name.clone(),
            version: saved.version,
            path: saved.dir.clone(),
        });
        Ok(IssuedCert {
            name: req.name.clone(),
            domains,
            version: saved.version,
            version_dir: saved.dir,
            cert_path: saved.current.join(store::CERT_FILE),
            chain_path: saved.current.join(store::CHAIN_FILE),
            fullchain_path: saved.current.join(store::FULLCHAIN_FILE),
            privkey_path: req
                .order
                .csr
                .is_none()
                .then(|| saved.current.join(store::PRIVKEY_FILE)),
            csr_path: req
                .order
                .csr
                .is_some()
                .then(|| saved.current.join(store::CSR_FILE)),
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            serial: parsed.serial,
            key_type,
            chain_issuer,
        })
    }

    /// Places an order, re-creating the account once if the CA no longer
    /// knows it (e.g. a test CA restarted).
    async fn new_order(
        &self,
        domains: &[String],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<crate::acme::Order, IssueError> {
        let inner = &self.inner;
        let (generation, account) = {
            let guard = inner.account.lock().await;
            (guard.0, guard.1.clone())
        };
        match account
            .new_order_replacing(domains, replaces, profile)
            .await
        {
            Err(IssueError::CaRefused { problem, .. }) if problem.is("accountDoesNotExist") => {
                log::info!("the CA does not know the stored account; creating a new one");
                let account = {
                    let mut guard = inner.account.lock().await;
                    if guard.0 == generation {
                        let dir = inner.client.directory().await?;
                        let fresh = inner
                            .client
                            .create_account(&inner.store, &dir, &inner.account_options)
                            .await?;
                        inner.progress.emit(ProgressEvent::AccountReady {
                            server: inner.client.directory_url().to_owned(),
                            account_url: fresh.url().to_owned(),
                            created: true,
                        });
                        *guard = (generation + 1, fresh);
                    }
                    guard.1.clone()
                };
                account
                    .new_order_replacing(domains, replaces, profile)
                    .await
            }
            other => other,
        }
    }

    /// The engine's DNS options with `req`'s propagation check in force.
    fn dns_options(&self, req: &CertRequest) -> Cow<'_, DnsOptions> {
        let opts = &self.inner.options.dns;
        let check = req.effective_propagation_check(opts);
        if opts.propagation_check == Some(check) {
            Cow::Borrowed(opts)
        } else {
            Cow::Owned(DnsOptions {
                propagation_check: Some(check),
                ..opts.clone()
            })
        }
    }

    /// Where the record for `identifier` goes; cached per order, since an
    /// identifier and its wildcard share the name.
    async fn resolve_dns(
        &self,
        req: &CertRequest,
        domain: &str,
        identifier: &str,
        cache: &mut HashMap<String, ResolvedName>,
    ) -> Result<ResolvedName, IssueError> {
        if let Some(r) = cache.get(identifier) {
            return Ok(r.clone());
        }
        let name = &req.name;
        let resolved = dns::resolve_challenge_name(&self.dns_options(req), identifier)
            .await
            .map_err(|source| IssueError::Dns {
                domain: domain.to_owned(),
                source,
            })?;
        self.inner.progress.emit(ProgressEvent::DnsRecord {
            name: name.to_owned(),
            domain: domain.to_owned(),
            fqdn: resolved.effective.clone(),
            zone: resolved.zone.clone(),
            cname_chain: if resolved.chain.len() > 1 {
                resolved.chain.clone()
            } else {
                Vec::new()
            },
        });
        cache.insert(identifier.to_owned(), resolved.clone());
        Ok(resolved)
    }

    /// Waits until every dns-01 value of this order can be seen, one check
    /// per record name (docs/design.md §3.6): every authoritative
    /// nameserver or every resolver serves it, or, without a check, a fixed
    /// time has passed.
    async fn wait_for_dns(
        &self,
        req: &CertRequest,
        requests: &[&ChallengeRequest],
        targets: &[(ResolvedName, String)],
    ) -> Result<(), IssueError> {
        if targets.is_empty() {
            return Ok(());
        }
        // The timeout and interval of the dns-01 solver (the first one's,
        // should several answer the names of one certificate).
        let manifest = targets
            .first()
            .map(|(_, domain)| req.solver_for(domain).manifest())
            .unwrap_or_else(|| req.solver.manifest());
        let opts = &self.inner.options.dns;
        let recursive = match req.effective_propagation_check(opts) {
            PropagationCheck::Wait(wait) => {
                self.inner.progress.emit(ProgressEvent::PropagationWait {
                    name: req.name.clone(),
                    wait,
                });
                // Cancellation is handled by the caller's select.
                tokio::time::sleep(wait).await;
                return Ok(());
            }
            PropagationCheck::Recursive => true,
            PropagationCheck::Authoritative => false,
        };
        let timeout = opts
            .propagation_timeout
            .unwrap_or(Duration::from_secs(manifest.defaults.propagation_timeout_s));
        let max_interval = Duration::from_secs(manifest.defaults.polling_interval_s.max(1));
        // One target per record name, with every value expected there.
        let mut by_name: Vec<(PropagationTarget, Vec<String>)> = Vec::new();
        for (resolved, domain) in targets {
            let values: Vec<String> = requests
                .iter()
                .filter_map(|r| r.dns.as_ref())
                .filter(|d| d.fqdn == resolved.effective)
                .map(|d| d.value.clone())
                .collect();
            match by_name
                .iter_mut()
                .find(|(t, _)| t.fqdn == resolved.effective)
            {
                Some((_, domains)) => domains.push(domain.clone()),
                None => {
                    let mut values = values;
                    values.sort();
                    values.dedup();
                    by_name.push((
                        PropagationTarget {
                            fqdn: resolved.effective.clone(),
                            values,
                            nameservers: resolved.nameservers.clone(),
                            recursive,
                        },
                        vec![domain.clone()],
                    ));
                }
            }
        }
        let waits = by_name.iter().map(|(target, domains)| {
            let progress = self.inner.progress.clone();
            let name = req.name.clone();
            async move {
                dns::wait_for_propagation(
                    target,
                    timeout,
                    max_interval,
                    opts.query_timeout,
                    |ready, total| {
                        progress.emit(ProgressEvent::Propagation {
                            name: name.clone(),
                            fqdn: target.fqdn.clone(),
                            ready,
                            total,
                            resolvers: recursive,
                        })
                    },
                )
                .await
                .map_err(|source| IssueError::Propagation {
                    domain: domains.join(", "),
                    source,
                })
            }
        });
        for r in futures_util::future::join_all(waits).await {
            r?;
        }
        Ok(())
    }

    /// Creates the order and gets every authorization validated. Challenges
    /// presented are on `cleanup` when this returns, whatever the outcome.
    async fn validate(
        &self,
        req: &CertRequest,
        domains: &[String],
        cleanup: &CleanupList,
    ) -> Result<crate::acme::Order, IssueError> {
        let inner = &self.inner;
        let progress = &inner.progress;
        let name = &req.name;

        if let Some(p) = &req.order.profile {
            inner.client.check_profile(p).await?;
        }
        let mut order = self
            .new_order(
                domains,
                req.replaces.as_deref(),
                req.order.profile.as_deref(),
            )
            .await?;
        order.prefer_chain(req.order.preferred_chain.clone());
        let authzs = order.authorizations().await?;
        progress.emit(ProgressEvent::OrderCreated {
            name: name.clone(),
            domains: domains.to_vec(),
            authorizations: authzs.len(),
        });

        struct Work<'r> {
            solver: &'r crate::plugin::SolverInstance,
            authz_url: String,
            domain: String,
            challenge_type: ChallengeType,
            request: ChallengeRequest,
        }
        let mut work = Vec::new();
        // `example.com` and `*.example.com` share one TXT name: resolve it
        // once, and wait for both values before marking either ready.
        let mut resolved_names: HashMap<String, ResolvedName> = HashMap::new();
        let mut dns_targets: Vec<(ResolvedName, String)> = Vec::new();
        for authz in &authzs {
            match authz.status {
                AuthzStatus::Pending => {}
                AuthzStatus::Valid => {
                    progress.emit(ProgressEvent::AuthorizationReused {
                        name: name.clone(),
                        domain: authz.domain(),
                    });
                    continue;
                }
                other => {
                    return Err(IssueError::CaRefused {
                        action: format!("authorize '{}'", authz.domain()),
                        problem: CaProblem {
                            detail: Some(format!(
                                "the new authorization is already {}",
                                format!("{other:?}").to_lowercase()
                            )),
                            ..CaProblem::default()
                        },
                    });
                }
            }
            let solver = req.solver_for(&authz.domain());
            let manifest = solver.manifest();
            let (challenge_type, challenge) =
                choose_challenge(authz, manifest, &req.order.challenges)?;
            let resolved = if challenge_type == ChallengeType::Dns01 {
                Some(
                    self.resolve_dns(req, &authz.domain(), &authz.identifier, &mut resolved_names)
                        .await?,
                )
            } else {
                None
            };
            let request = challenge_request(
                authz,
                challenge_type,
                challenge,
                manifest,
                resolved.as_ref(),
            )?;
            if let Some(r) = resolved {
                dns_targets.push((r, authz.domain()));
            }
            progress.emit(ProgressEvent::AuthorizationPending {
                name: name.clone(),
                domain: authz.domain(),
                challenge: challenge_type,
            });
            work.push(Work {
                solver,
                authz_url: authz.url.clone(),
                domain: authz.domain(),
                challenge_type,
                request,
            });
        }

        // Present everything, in parallel, before marking anything ready
        // (docs/design.md §3.4: values sharing a DNS name must all be there).
        let presents = work.iter().map(|w| async move {
            let slot = cleanup
                .register(w.solver, w.request.clone(), w.domain.clone())
                .await?;
            let lease = namelock::lock(&inner.store, w.solver, &w.request).await;
            let outcome = w.solver.present(&w.request).await;
            drop(lease);
            match outcome {
                Ok(presented) => {
                    cleanup.presented(slot, presented).await;
                    progress.emit(ProgressEvent::ChallengePresented {
                        name: name.clone(),
                        domain: w.domain.clone(),
                        challenge: w.challenge_type,
                    });
                    Ok(())
                }
                Err(source) => Err(IssueError::Solver {
                    solver: w.solver.code().to_owned(),
                    operation: "present",
                    challenge: w.challenge_type.to_string(),
                    domain: w.domain.clone(),
                    source: Box::new(source),
                }),
            }
        });
        let results = futures_util::future::join_all(presents).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        self.wait_for_dns(
            req,
            &work.iter().map(|w| &w.request).collect::<Vec<_>>(),
            &dns_targets,
        )
        .await?;

        for w in &work {
            order.set_ready(&w.authz_url, w.challenge_type).await?;
        }
        if !work.is_empty() {
            progress.emit(ProgressEvent::Validating {
                name: name.clone(),
                challenges: work.len(),
            });
        }
        if work.is_empty() && order.is_ready() {
            return Ok(order);
        }
        match order.poll_ready(inner.options.validation_timeout).await {
            Ok(()) => {
                for w in &work {
                    progress.emit(ProgressEvent::Valid {
                        name: name.clone(),
                        domain: w.domain.clone(),
                    });
                }
                Ok(order)
            }
            Err(IssueError::ValidationFailed { failures }) => {
                for f in &failures {
                    progress.emit(ProgressEvent::Invalid {
                        name: name.clone(),
                        domain: f.domain.clone(),
                        problem: f.problem.clone(),
                    });
                }
                Err(IssueError::ValidationFailed { failures })
            }
            Err(e) => Err(e),
        }
    }
}

/// The private key of the current version of `name`, to certify again
/// (`reuse_key`): only when the lineage has the same key type; otherwise
/// (a first version, a key type changed, a damaged version) a new key is
/// made, and said so.
fn reusable_key(store: &Store, name: &str, key_type: KeyType) -> Option<keys::PrivateKeyPem> {
    let lineage = store.load_lineage(name).ok().flatten()?;
    if lineage.key_type != key_type.as_str() {
        log::info!(
            "{name}: reuse_key: the key type changes from {} to {key_type}; making a new key",
            lineage.key_type
        );
        return None;
    }
    match store.read_version(name, None) {
        Ok(Some(v)) => v.files.privkey_pem,
        Ok(None) => None,
        Err(e) => {
            log::warn!("{name}: reuse_key: the current key cannot be read ({e}); making a new key");
            None
        }
    }
}
