//! The order engine: from a set of certificate requests to stored
//! certificates.
//!
//! Why this module exists: it is the one place that sequences an ACME order
//! ([RFC 8555 §7.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.1)) and
//! guarantees the things an operator relies on:
//!
//! * **Concurrency**: [`Engine::issue_all`] runs orders at once, bounded, on
//!   one account and one HTTP pool; within an order every challenge is
//!   presented in parallel. One failed order never stops the others.
//! * **Cleanup, always**: every challenge is put on a cleanup list *before*
//!   `present` is called, and the list is worked off after validation
//!   whatever happened: success, CA refusal, solver error, timeout, or
//!   cancellation through [`CancelToken`] (the CLI's Ctrl-C). Should the
//!   engine's future be dropped instead, the list hands its entries to a
//!   background task (best effort: the runtime must still be alive).
//! * **Nothing half-written**: the certificate is stored through
//!   [`crate::store`], which switches `current` only after a complete set is
//!   on disk.
//!
//! Per order: new order → fetch authorizations → choose per authorization
//! the challenge type the solver supports (http-01, then tls-alpn-01, then
//! dns-01; a wildcard needs dns-01) → present all → mark them ready → poll
//! (honouring `Retry-After`) → clean up, while finalizing with a CSR whose
//! key was generated in parallel → download the chain → store.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::{ChallengeRequest, ChallengeType, DnsTarget, Manifest, Presented};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::acme::{AccountOptions, AcmeClient, AuthzInfo, AuthzStatus, ChallengeInfo};
use crate::dns::{self, DnsOptions, PropagationTarget, ResolvedName};
use crate::error::{CaProblem, IssueError};
use crate::identifiers::{self, Identifier};
use crate::journal::Journal;
use crate::keys::{self, KeyType};
use crate::plugin::SolverInstance;
use crate::progress::{Progress, ProgressEvent};
use crate::store::{self, CertFiles, Lineage, Store, VersionRecord};

/// The default bound on concurrent orders.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// One certificate to obtain.
#[derive(Clone, Debug)]
pub struct CertRequest {
    /// The certificate name: the directory under `certs/`.
    pub name: String,
    /// The identifiers, checked (see [`crate::identifiers`]).
    pub domains: Vec<Identifier>,
    /// The configured solver that answers the challenges.
    pub solver: SolverInstance,
    /// The key type of the certificate.
    pub key_type: KeyType,
    /// The RFC 9773 identifier of the certificate this one replaces, sent
    /// as `replaces` in the new order when the CA offers ARI.
    pub replaces: Option<String>,
}

/// A certificate obtained and stored.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate name.
    pub name: String,
    /// The identifiers it covers (ASCII).
    pub domains: Vec<String>,
    /// The version number under `versions/`.
    pub version: u32,
    /// `certs/<name>/versions/<n>`.
    pub version_dir: PathBuf,
    /// `certs/<name>/current/cert.pem`.
    pub cert_path: PathBuf,
    /// `certs/<name>/current/chain.pem`.
    pub chain_path: PathBuf,
    /// `certs/<name>/current/fullchain.pem`.
    pub fullchain_path: PathBuf,
    /// `certs/<name>/current/privkey.pem`.
    pub privkey_path: PathBuf,
    /// notBefore of the leaf.
    pub not_before: OffsetDateTime,
    /// notAfter of the leaf.
    pub not_after: OffsetDateTime,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// The key type.
    pub key_type: KeyType,
}

/// Cancels an engine run; cheap to clone. Cancelling makes every order stop
/// at its next step, clean up what it presented, and fail with
/// [`IssueError::Cancelled`].
#[derive(Clone, Debug)]
pub struct CancelToken {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken::new()
    }
}

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        CancelToken {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Cancels. Idempotent.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`: wait_for cannot fail.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Timeouts and cancellation of an engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How long the CA may take to validate an order's challenges.
    pub validation_timeout: Duration,
    /// How long the CA may take to issue after finalization.
    pub finalize_timeout: Duration,
    /// Cancels the engine's runs.
    pub cancel: CancelToken,
    /// How dns-01 records are located and checked.
    pub dns: DnsOptions,
    /// Where presented challenges are recorded until cleaned up; `None`
    /// keeps no journal (tests of the engine alone).
    pub journal: Option<Journal>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            validation_timeout: Duration::from_secs(180),
            finalize_timeout: Duration::from_secs(120),
            cancel: CancelToken::new(),
            dns: DnsOptions::default(),
            journal: None,
        }
    }
}

/// A connected engine: one CA, one account, one store. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    client: AcmeClient,
    store: Store,
    account_options: AccountOptions,
    /// The account and a generation number, bumped when it is re-created.
    account: tokio::sync::Mutex<(u64, crate::acme::Account)>,
    progress: Progress,
    options: EngineOptions,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("server", &self.inner.client.directory_url())
            .field("store", &self.inner.store.root())
            .finish_non_exhaustive()
    }
}

/// Runs `requests` on `engine`; see [`Engine::issue_all`].
pub async fn issue_all(
    engine: &Engine,
    requests: Vec<CertRequest>,
    concurrency: usize,
) -> Vec<Result<IssuedCert, IssueError>> {
    engine.issue_all(requests, concurrency).await
}

/// Checks a request without contacting the CA: certificate name, wildcard
/// versus solver, challenge types the engine can drive. Called by
/// [`Engine::issue_all`] too; the CLI calls it before connecting.
pub fn check_request(req: &CertRequest) -> Result<(), IssueError> {
    store::check_cert_name(&req.name).map_err(|e| IssueError::InvalidRequest(e.to_string()))?;
    if req.domains.is_empty() {
        return Err(identifiers::IdentifierError::Empty.into());
    }
    let manifest = req.solver.manifest();
    identifiers::check_solver(&req.domains, manifest)?;
    Ok(())
}

/// The challenge type the engine will pick for an identifier, if the CA
/// offers every type: http-01, then tls-alpn-01, then dns-01; only dns-01
/// for a wildcard ([RFC 8555 §8.4](https://www.rfc-editor.org/rfc/rfc8555#section-8.4)).
fn preference(wildcard: bool) -> &'static [ChallengeType] {
    if wildcard {
        &[ChallengeType::Dns01]
    } else {
        &[
            ChallengeType::Http01,
            ChallengeType::TlsAlpn01,
            ChallengeType::Dns01,
        ]
    }
}

/// The one place a dns-01 [`DnsTarget`] is computed (DESIGN.md §3 steps
/// 1-3): the value from the key authorization, the name after CNAMEs, the
/// zone and its primary from the SOA walk.
fn dns_target(
    resolved: &ResolvedName,
    challenge: &ChallengeInfo,
    manifest: &Manifest,
) -> DnsTarget {
    DnsTarget {
        zone: resolved.zone.clone(),
        name: resolved.relative.clone(),
        fqdn: resolved.effective.clone(),
        value: dns::txt_value(&challenge.key_authorization),
        ttl: manifest.defaults.ttl,
        primary_ns: resolved.primary_ns.clone(),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The deadline of one solver call, from the manifest's call timeout.
fn call_deadline(manifest: &Manifest) -> u64 {
    now_unix_ms().saturating_add(manifest.defaults.call_timeout_s.saturating_mul(1000))
}

/// Picks the challenge to answer for `authz` among those the CA offers.
fn choose_challenge<'a>(
    authz: &'a AuthzInfo,
    manifest: &Manifest,
) -> Result<(ChallengeType, &'a ChallengeInfo), IssueError> {
    for &t in preference(authz.wildcard) {
        if !manifest.supports(t) {
            continue;
        }
        if let Some(c) = authz
            .challenges
            .iter()
            .find(|c| c.challenge_type == Some(t))
        {
            return Ok((t, c));
        }
    }
    Err(IssueError::NoUsableChallenge {
        domain: authz.domain(),
        offered: authz
            .challenges
            .iter()
            .map(|c| c.type_name.clone())
            .collect(),
        solver: manifest.code.clone(),
        supported: manifest
            .challenge_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect(),
    })
}

/// Builds what the solver receives for one challenge; `resolved` is where
/// the dns-01 record goes (required for dns-01).
fn challenge_request(
    authz: &AuthzInfo,
    challenge_type: ChallengeType,
    challenge: &ChallengeInfo,
    manifest: &Manifest,
    resolved: Option<&ResolvedName>,
) -> Result<ChallengeRequest, IssueError> {
    let dns = match (challenge_type, resolved) {
        (ChallengeType::Dns01, Some(r)) => Some(dns_target(r, challenge, manifest)),
        (ChallengeType::Dns01, None) => {
            return Err(IssueError::Internal(format!(
                "no DNS target resolved for '{}'",
                authz.domain()
            )));
        }
        (ChallengeType::Http01 | ChallengeType::TlsAlpn01, _) => None,
    };
    Ok(ChallengeRequest {
        challenge_type,
        identifier: authz.identifier.clone(),
        wildcard: authz.wildcard,
        token: challenge.token.clone(),
        key_authorization: challenge.key_authorization.clone(),
        deadline_unix_ms: call_deadline(manifest),
        dns,
    })
}

impl Engine {
    /// Fetches the directory, then loads or creates the account (checking
    /// the terms of service and EAB first). Reports
    /// [`ProgressEvent::AccountReady`].
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
    /// failure never stops the others.
    pub async fn issue_all(
        &self,
        requests: Vec<CertRequest>,
        concurrency: usize,
    ) -> Vec<Result<IssuedCert, IssueError>> {
        let n = requests.len();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut set = JoinSet::new();
        let mut index_of = HashMap::new();
        for (i, req) in requests.into_iter().enumerate() {
            let engine = self.clone();
            let permits = permits.clone();
            let handle = set.spawn(async move {
                let name = req.name.clone();
                let cancel = engine.inner.options.cancel.clone();
                let permit = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    p = permits.acquire_owned() => p.ok(),
                };
                let result = match permit {
                    Some(_permit) => engine.issue(req).await,
                    None => Err(IssueError::Cancelled),
                };
                if let Err(e) = &result {
                    engine.inner.progress.emit(ProgressEvent::Failed {
                        name,
                        error: e.to_string(),
                    });
                }
                result
            });
            index_of.insert(handle.id(), i);
        }
        let mut results: Vec<Option<Result<IssuedCert, IssueError>>> =
            (0..n).map(|_| None).collect();
        while let Some(joined) = set.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, r)) => (id, r),
                Err(e) => (
                    e.id(),
                    Err(IssueError::Internal(format!("the order task failed: {e}"))),
                ),
            };
            if let Some(slot) = index_of.get(&id).and_then(|&i| results.get_mut(i)) {
                *slot = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(IssueError::Internal("an order task vanished".to_owned())))
            })
            .collect()
    }

    /// Obtains and stores one certificate.
    pub async fn issue(&self, req: CertRequest) -> Result<IssuedCert, IssueError> {
        check_request(&req)?;
        let inner = &self.inner;
        let cancel = &inner.options.cancel;
        if cancel.is_cancelled() {
            return Err(IssueError::Cancelled);
        }
        let domains: Vec<String> = req.domains.iter().map(|d| d.as_str().to_owned()).collect();

        // The key is needed only at finalization: make it while the CA works.
        let key_type = req.key_type;
        let keygen = {
            let domains = domains.clone();
            tokio::task::spawn_blocking(move || keys::key_and_csr(key_type, &domains))
        };

        let cleanup = CleanupList::new(
            req.solver.clone(),
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
                return Err(e);
            }
        };

        // Clean up while the CA issues.
        let finalize = async {
            let key = keygen
                .await
                .map_err(|e| IssueError::Internal(format!("key generation failed: {e}")))??;
            inner.progress.emit(ProgressEvent::Finalizing {
                name: req.name.clone(),
            });
            let chain = order
                .finalize(&key.csr_der, inner.options.finalize_timeout)
                .await?;
            Ok::<_, IssueError>((key, chain))
        };
        let finalize = async {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(IssueError::Cancelled),
                r = finalize => r,
            }
        };
        let (finalized, ()) = tokio::join!(finalize, cleanup.run());
        let (key, chain) = finalized?;

        let parsed = parse_chain(&chain, inner.client.directory_url())?;
        let lineage = Lineage {
            domains: domains.clone(),
            solver: req.solver.code().to_owned(),
            solver_options: req.solver.public_options(),
            key_type: key_type.as_str().to_owned(),
            server: inner.client.directory_url().to_owned(),
            versions: Vec::new(),
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
            privkey_pem: key.private_key,
        };
        let store = inner.store.clone();
        let name = req.name.clone();
        let saved = tokio::task::spawn_blocking(move || {
            store.save_certificate(&name, &files, &lineage, record)
        })
        .await
        .map_err(|e| IssueError::Internal(format!("the store writer failed: {e}")))??;
        inner.progress.emit(ProgressEvent::Saved {
            name: req.name.clone(),
            version: saved.version,
            path: saved.dir.clone(),
        });
        Ok(IssuedCert {
            name: req.name,
            domains,
            version: saved.version,
            version_dir: saved.dir,
            cert_path: saved.current.join(store::CERT_FILE),
            chain_path: saved.current.join(store::CHAIN_FILE),
            fullchain_path: saved.current.join(store::FULLCHAIN_FILE),
            privkey_path: saved.current.join(store::PRIVKEY_FILE),
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            serial: parsed.serial,
            key_type,
        })
    }

    /// Places an order, re-creating the account once if the CA no longer
    /// knows it (e.g. a test CA restarted).
    async fn new_order(
        &self,
        domains: &[String],
        replaces: Option<&str>,
    ) -> Result<crate::acme::Order, IssueError> {
        let inner = &self.inner;
        let (generation, account) = {
            let guard = inner.account.lock().await;
            (guard.0, guard.1.clone())
        };
        match account.new_order_replacing(domains, replaces).await {
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
                account.new_order_replacing(domains, replaces).await
            }
            other => other,
        }
    }

    /// Where the record for `identifier` goes; cached per order, since an
    /// identifier and its wildcard share the name.
    async fn resolve_dns(
        &self,
        name: &str,
        domain: &str,
        identifier: &str,
        cache: &mut HashMap<String, ResolvedName>,
    ) -> Result<ResolvedName, IssueError> {
        if let Some(r) = cache.get(identifier) {
            return Ok(r.clone());
        }
        let resolved = dns::resolve_challenge_name(&self.inner.options.dns, identifier)
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

    /// Waits until every authoritative nameserver serves every dns-01 value
    /// of this order (DESIGN.md §3.6), one check per record name.
    async fn wait_for_dns(
        &self,
        req: &CertRequest,
        requests: &[&ChallengeRequest],
        targets: &[(ResolvedName, String)],
    ) -> Result<(), IssueError> {
        if targets.is_empty() {
            return Ok(());
        }
        let manifest = req.solver.manifest();
        let opts = &self.inner.options.dns;
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
        let manifest = req.solver.manifest();

        let mut order = self.new_order(domains, req.replaces.as_deref()).await?;
        let authzs = order.authorizations().await?;
        progress.emit(ProgressEvent::OrderCreated {
            name: name.clone(),
            domains: domains.to_vec(),
            authorizations: authzs.len(),
        });

        struct Work {
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
            let (challenge_type, challenge) = choose_challenge(authz, manifest)?;
            let resolved = if challenge_type == ChallengeType::Dns01 {
                Some(
                    self.resolve_dns(
                        name,
                        &authz.domain(),
                        &authz.identifier,
                        &mut resolved_names,
                    )
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
                authz_url: authz.url.clone(),
                domain: authz.domain(),
                challenge_type,
                request,
            });
        }

        // Present everything, in parallel, before marking anything ready
        // (DESIGN.md §3.4: values sharing a DNS name must all be there).
        let presents = work.iter().map(|w| async move {
            let slot = cleanup.register(w.request.clone(), w.domain.clone())?;
            match req.solver.present(&w.request).await {
                Ok(presented) => {
                    cleanup.presented(slot, presented);
                    progress.emit(ProgressEvent::ChallengePresented {
                        name: name.clone(),
                        domain: w.domain.clone(),
                        challenge: w.challenge_type,
                    });
                    Ok(())
                }
                Err(source) => Err(IssueError::Solver {
                    solver: req.solver.code().to_owned(),
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

/// A challenge that may have been presented and must be cleaned up.
struct CleanupEntry {
    request: ChallengeRequest,
    domain: String,
    presented: Presented,
    /// The journal entry recording it, removed once cleaned up.
    journal_entry: Option<crate::journal::JournalEntry>,
}

/// The challenges of one order that need `cleanup`. Entries are added before
/// `present` is called (a cancelled `present` may still have created
/// something; solvers treat cleanup of nothing as success).
struct CleanupList {
    solver: SolverInstance,
    name: String,
    progress: Progress,
    journal: Option<Journal>,
    entries: Mutex<Vec<Option<CleanupEntry>>>,
}

impl CleanupList {
    fn new(
        solver: SolverInstance,
        name: String,
        progress: Progress,
        journal: Option<Journal>,
    ) -> Self {
        CleanupList {
            solver,
            name,
            progress,
            journal,
            entries: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<CleanupEntry>>> {
        // A poisoned list still holds valid entries; cleanup must go on.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a challenge about to be presented and writes its journal entry
    /// (DESIGN.md §3.5: before `present`, so a crash during or after it
    /// leaves a trace the next run cleans up); returns its slot.
    fn register(&self, request: ChallengeRequest, domain: String) -> Result<usize, IssueError> {
        let journal_entry = match &self.journal {
            Some(j) => Some(
                j.record(self.solver.code(), self.solver.public_options(), &request)
                    .map_err(|e| {
                        IssueError::Internal(format!("cannot write the cleanup journal: {e}"))
                    })?,
            ),
            None => None,
        };
        let mut entries = self.lock();
        entries.push(Some(CleanupEntry {
            request,
            domain,
            presented: Presented::default(),
            journal_entry,
        }));
        Ok(entries.len() - 1)
    }

    /// Records what `present` returned for a slot (also in the journal, as
    /// cleanup may need the handle).
    fn presented(&self, slot: usize, presented: Presented) {
        let mut entries = self.lock();
        if let Some(Some(entry)) = entries.get_mut(slot) {
            if let (Some(j), Some(je)) = (&self.journal, entry.journal_entry.as_mut())
                && let Err(e) = j.set_presented(je, &presented)
            {
                log::warn!("cannot update the cleanup journal: {e}");
            }
            entry.presented = presented;
        }
    }

    fn take(&self) -> Vec<CleanupEntry> {
        self.lock().drain(..).flatten().collect()
    }

    /// Cleans up every entry, one at a time (DESIGN.md §3.7). Failures are
    /// reported as progress events and logged; they do not fail the order.
    async fn run(&self) {
        let entries = self.take();
        clean_entries(
            &self.solver,
            &self.name,
            &self.progress,
            self.journal.as_ref(),
            entries,
        )
        .await;
    }
}

async fn clean_entries(
    solver: &SolverInstance,
    name: &str,
    progress: &Progress,
    journal: Option<&Journal>,
    entries: Vec<CleanupEntry>,
) {
    for mut entry in entries {
        // A fresh deadline: the one of `present` may have passed while the
        // CA validated.
        entry.request.deadline_unix_ms = call_deadline(solver.manifest());
        let challenge = entry.request.challenge_type;
        match solver.cleanup(&entry.request, &entry.presented).await {
            Ok(()) => {
                if let (Some(j), Some(je)) = (journal, &entry.journal_entry)
                    && let Err(e) = j.remove(&je.id)
                {
                    log::warn!("cannot update the cleanup journal: {e}");
                }
                progress.emit(ProgressEvent::CleanedUp {
                    name: name.to_owned(),
                    domain: entry.domain,
                    challenge,
                })
            }
            Err(e) => {
                let error = solver.redact(&e.to_string());
                log::warn!(
                    "solver '{}' could not clean up the {challenge} challenge for '{}': {error}",
                    solver.code(),
                    entry.domain
                );
                progress.emit(ProgressEvent::CleanupFailed {
                    name: name.to_owned(),
                    domain: entry.domain,
                    challenge,
                    error,
                });
            }
        }
    }
}

impl Drop for CleanupList {
    fn drop(&mut self) {
        let entries = self.take();
        if entries.is_empty() {
            return;
        }
        // The order's future was dropped without running the list: hand the
        // entries to a task, if a runtime is still there to run it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let (solver, name, progress, journal) = (
                    self.solver.clone(),
                    self.name.clone(),
                    self.progress.clone(),
                    self.journal.clone(),
                );
                handle.spawn(async move {
                    clean_entries(&solver, &name, &progress, journal.as_ref(), entries).await
                });
            }
            Err(_) => log::warn!(
                "{} presented challenge(s) for '{}' could not be cleaned up: no runtime",
                entries.len(),
                self.name
            ),
        }
    }
}

/// A downloaded chain, split and inspected.
#[derive(Debug)]
struct ParsedChain {
    cert_pem: String,
    chain_pem: String,
    fullchain_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: String,
}

/// Splits a PEM chain (leaf first,
/// [RFC 8555 §7.4.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2))
/// and reads the leaf's validity and serial.
fn parse_chain(pem: &str, server: &str) -> Result<ParsedChain, IssueError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    const ACTION: &str = "download the certificate";
    let bad = |message: String| IssueError::bad_answer(ACTION, server, message);
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else {
            return Err(bad(
                "the certificate chain has an unterminated PEM block".to_owned()
            ));
        };
        let block = &after[..end + END.len()];
        blocks.push(format!("{}\n", block.trim_end()));
        rest = &after[end + END.len()..];
    }
    let Some(leaf) = blocks.first() else {
        return Err(bad("the CA sent no PEM certificate".to_owned()));
    };
    let facts = crate::renewal::read_cert_pem(leaf, "the leaf certificate")
        .map_err(|e| IssueError::network(ACTION, server, e))?;
    Ok(ParsedChain {
        cert_pem: leaf.clone(),
        chain_pem: blocks[1..].concat(),
        fullchain_pem: blocks.concat(),
        not_before: facts.not_before,
        not_after: facts.not_after,
        serial: facts.serial,
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(types: &str) -> Manifest {
        Manifest::parse(&format!(
            "code = \"t\"\nname = \"T\"\nversion = \"0.1.0\"\nchallenge_types = [{types}]\n"
        ))
        .expect("manifest")
    }

    fn authz(wildcard: bool, offered: &[ChallengeType]) -> AuthzInfo {
        AuthzInfo {
            url: "https://ca/authz/1".into(),
            identifier: "a.example".into(),
            wildcard,
            status: AuthzStatus::Pending,
            challenges: offered
                .iter()
                .map(|t| ChallengeInfo {
                    challenge_type: Some(*t),
                    type_name: t.as_str().into(),
                    url: format!("https://ca/chall/{t}"),
                    token: "tok".into(),
                    key_authorization: "tok.thumb".into(),
                })
                .collect(),
        }
    }

    const ALL: [ChallengeType; 3] = [
        ChallengeType::Dns01,
        ChallengeType::TlsAlpn01,
        ChallengeType::Http01,
    ];

    #[test]
    fn challenge_preference() {
        let m = manifest("\"tls-alpn-01\", \"http-01\"");
        let a = authz(false, &ALL);
        let (t, c) = choose_challenge(&a, &m).expect("choice");
        assert_eq!(t, ChallengeType::Http01);
        assert_eq!(c.url, "https://ca/chall/http-01");
        let (t, _) = choose_challenge(&authz(false, &[ChallengeType::TlsAlpn01]), &m).expect("c");
        assert_eq!(t, ChallengeType::TlsAlpn01);

        let e = choose_challenge(&authz(false, &[ChallengeType::Dns01]), &m).expect_err("none");
        assert_eq!(
            e.to_string(),
            "the CA offers dns-01 for 'a.example', but solver 't' answers only tls-alpn-01, http-01"
        );
        // A wildcard only ever uses dns-01.
        let dns = manifest("\"http-01\", \"dns-01\"");
        let (t, _) = choose_challenge(&authz(true, &ALL), &dns).expect("choice");
        assert_eq!(t, ChallengeType::Dns01);
    }

    #[test]
    fn challenge_request_fields() {
        let m = manifest("\"http-01\"");
        let a = authz(false, &ALL);
        let (t, c) = choose_challenge(&a, &m).expect("choice");
        let before = now_unix_ms();
        let r = challenge_request(&a, t, c, &m, None).expect("request");
        assert_eq!(r.challenge_type, ChallengeType::Http01);
        assert_eq!(r.identifier, "a.example");
        assert_eq!(r.key_authorization, "tok.thumb");
        assert!(r.dns.is_none());
        let timeout_ms = m.defaults.call_timeout_s * 1000;
        assert!(
            r.deadline_unix_ms >= before + timeout_ms
                && r.deadline_unix_ms <= now_unix_ms() + timeout_ms
        );

        // dns-01: the target comes from the resolved name, the value from
        // the key authorization.
        let d = manifest("\"dns-01\"");
        let resolved = ResolvedName {
            requested: "_acme-challenge.a.example".into(),
            effective: "_acme-challenge.v.example.net".into(),
            chain: vec![
                "_acme-challenge.a.example".into(),
                "_acme-challenge.v.example.net".into(),
            ],
            zone: "example.net".into(),
            relative: "_acme-challenge.v".into(),
            primary_ns: Some("ns1.example.net".into()),
            nameservers: Vec::new(),
        };
        let r = challenge_request(&a, ChallengeType::Dns01, c, &d, Some(&resolved)).expect("dns");
        let target = r.dns.expect("dns target");
        assert_eq!(target.fqdn, "_acme-challenge.v.example.net");
        assert_eq!(target.zone, "example.net");
        assert_eq!(target.name, "_acme-challenge.v");
        assert_eq!(target.value, dns::txt_value("tok.thumb"));
        assert_eq!(target.primary_ns.as_deref(), Some("ns1.example.net"));
        assert!(challenge_request(&a, ChallengeType::Dns01, c, &d, None).is_err());
    }

    #[test]
    fn chain_is_split_and_read() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        leaf_params.serial_number = Some(rcgen::SerialNumber::from(vec![0x00, 0x9a, 0x01]));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        let chain = format!("{}\n{}", leaf.pem(), ca.pem());
        let p = parse_chain(&chain, "https://ca/dir").expect("parses");
        assert_eq!(p.cert_pem, leaf.pem().trim_end().to_owned() + "\n");
        assert_eq!(p.chain_pem, ca.pem().trim_end().to_owned() + "\n");
        assert_eq!(p.fullchain_pem, format!("{}{}", p.cert_pem, p.chain_pem));
        assert_eq!(p.serial, "9a01");
        assert!(p.not_after > p.not_before);

        assert!(parse_chain("garbage", "https://ca/dir").is_err());
    }

    #[tokio::test]
    async fn cancel_token() {
        let t = CancelToken::new();
        assert!(!t.is_cancelled());
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.cancelled().await });
        t.cancel();
        waiter.await.expect("woken");
        assert!(t.is_cancelled());
        // Completes at once when already cancelled.
        t.cancelled().await;
    }
}
