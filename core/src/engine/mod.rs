//! The order engine: from a set of certificate requests to stored
//! certificates.
//!
//! Why this module exists: it is the one place that sequences an ACME order
//! ([RFC 8555 §7.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.1)) and
//! guarantees the things an operator relies on:
//!
//! * **Concurrency**: [`Engine::issue_each`] (and [`Engine::issue_all`])
//!   runs orders at once, bounded, on one account and one HTTP pool, and
//!   starts an order only when a slot is free, so memory does not grow with
//!   the number of certificates; within an order every challenge is
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
//! Per order: pre-hook → new order → fetch authorizations → choose per
//! authorization its name's solver and the challenge type that solver
//! supports (http-01, then tls-alpn-01, then dns-01; a wildcard needs
//! dns-01) → present all → mark them ready → poll
//! (honouring `Retry-After`) → clean up, while finalizing with a CSR whose
//! key was generated in parallel → post-hook (after the cleanup, whatever
//! happened) → download the chain → store → tell the caller (the agent runs
//! the deploy hook while the other orders go on).

pub use ratelimit::{RateLimits, registered_domain};

mod chain;
mod challenge;
mod cleanup;
pub(crate) mod namelock;
mod order;
mod ratelimit;
mod resume;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certsmith_plugin_api::ChallengeType;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::acme::{AccountOptions, AcmeClient};
use crate::dns::{DnsOptions, PropagationCheck};
use crate::error::IssueError;
use crate::hooks::{self, HookContext, HookError, HookKind, OrderHooks};
use crate::identifiers::{self, Identifier};
use crate::journal::Journal;
use crate::keys::KeyType;
use crate::plugin::SolverInstance;
use crate::progress::{Progress, ProgressEvent};
use crate::store::{self, Store};

/// The default bound on concurrent orders.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// One certificate to obtain.
#[derive(Clone, Debug)]
pub struct CertRequest {
    /// The certificate name: the directory under `certs/`.
    pub name: String,
    /// The identifiers, checked (see [`crate::identifiers`]).
    pub domains: Vec<Identifier>,
    /// The configured solver that answers the challenges (of the names
    /// `name_solvers` leaves out).
    pub solver: SolverInstance,
    /// The solvers of some identifiers, instead of `solver`: by identifier
    /// as ordered ([`Identifier::as_str`], `*.`-prefixed for a wildcard).
    pub name_solvers: std::collections::BTreeMap<String, SolverInstance>,
    /// The key type of the certificate.
    pub key_type: KeyType,
    /// The RFC 9773 identifier of the certificate this one replaces, sent
    /// as `replaces` in the new order when the CA offers ARI.
    pub replaces: Option<String>,
    /// How this certificate's dns-01 records are checked (its
    /// configuration); `None`: the engine's. The engine's
    /// [`DnsOptions::propagation_check`], when set, wins.
    pub propagation_check: Option<PropagationCheck>,
    /// What the order asks of the CA beyond its names (challenge types,
    /// profile, chain, key reuse); recorded in the lineage.
    pub order: OrderOptions,
    /// The pre-hook run before the order, the post-hook after its
    /// challenges are cleaned up (docs/design.md §4.5).
    pub hooks: OrderHooks,
    /// The token of the worker's lease on the certificate
    /// ([`crate::store::Storage::cert_lease`]): the new version is
    /// committed only if the lease is still this worker's. `None`: no
    /// lease is checked (one process owns the store's batch).
    pub fence: Option<u64>,
}

/// What an order asks beyond its names, recorded in the lineage so that
/// `renew` and `run` ask the same again (docs/design.md §4.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrderOptions {
    /// The challenge types to answer, most preferred first, each one the
    /// solver supports; empty: http-01, then tls-alpn-01, then dns-01.
    pub challenges: Vec<ChallengeType>,
    /// Renewals keep the private key of the current version (for key
    /// pinning and DANE TLSA records) instead of making a new one.
    pub reuse_key: bool,
    /// The common name of the issuer of the topmost certificate of the
    /// chain wanted, among the CA's alternate chains; no match keeps the
    /// default chain.
    pub preferred_chain: Option<String>,
    /// The ACME profile to order (draft-ietf-acme-profiles), checked
    /// against the directory's `meta.profiles` before ordering.
    pub profile: Option<String>,
    /// The user's CSR: sent as is, no key made or stored; it is kept in
    /// each version (`csr.pem`) and sent again at renewal.
    pub csr: Option<crate::keys::UserCsr>,
}

impl OrderOptions {
    /// The challenge types asked for, by name, in order.
    pub fn challenge_names(&self) -> Vec<String> {
        self.challenges
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect()
    }

    /// The options a lineage recorded (without its CSR, which is in the
    /// current version: see `store::CSR_FILE`); a challenge type the lineage names
    /// that this version does not know is an error naming it.
    pub fn from_lineage(lineage: &store::Lineage) -> Result<OrderOptions, IssueError> {
        let challenges = lineage
            .challenges
            .iter()
            .map(|c| {
                ChallengeType::parse(c).ok_or_else(|| {
                    IssueError::InvalidRequest(format!(
                        "unknown challenge type '{c}' in the lineage's challenges; use http-01, tls-alpn-01 or dns-01"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OrderOptions {
            challenges,
            reuse_key: lineage.reuse_key,
            preferred_chain: lineage.preferred_chain.clone(),
            profile: lineage.profile.clone(),
            csr: None,
        })
    }

    /// Fills what `self` leaves unset from `stored` (a lineage's options):
    /// an `issue` without the flag keeps what the certificate had.
    pub fn or(mut self, stored: &OrderOptions) -> OrderOptions {
        if self.challenges.is_empty() {
            self.challenges = stored.challenges.clone();
        }
        self.reuse_key = self.reuse_key || stored.reuse_key;
        self.preferred_chain = self.preferred_chain.or(stored.preferred_chain.clone());
        self.profile = self.profile.or(stored.profile.clone());
        self.csr = self.csr.or(stored.csr.clone());
        self
    }
}

impl CertRequest {
    /// A request for `domains` under `name`, answered by `solver`, with a
    /// new key of `key_type`; everything else as a first issuance asks it:
    /// no certificate replaced, the engine's propagation check, default
    /// order options, no hooks, no lease, one solver for every name.
    pub fn new(
        name: String,
        domains: Vec<Identifier>,
        solver: SolverInstance,
        key_type: KeyType,
    ) -> CertRequest {
        CertRequest {
            name,
            domains,
            solver,
            name_solvers: Default::default(),
            key_type,
            replaces: None,
            propagation_check: None,
            order: OrderOptions::default(),
            hooks: OrderHooks::default(),
            fence: None,
        }
    }

    /// The solver that answers the challenge of `identifier` (as ordered,
    /// `*.`-prefixed for a wildcard).
    pub fn solver_for(&self, identifier: &str) -> &SolverInstance {
        self.name_solvers.get(identifier).unwrap_or(&self.solver)
    }

    /// Every solver this request uses, each once (by code and options).
    pub fn solvers(&self) -> Vec<&SolverInstance> {
        let mut out: Vec<&SolverInstance> = Vec::new();
        let used = self.domains.iter().map(|d| self.solver_for(d.as_str()));
        for s in used {
            if !out
                .iter()
                .any(|o| o.code() == s.code() && o.public_options() == s.public_options())
            {
                out.push(s);
            }
        }
        out
    }

    /// The propagation check that applies to this request under `dns`.
    pub fn effective_propagation_check(&self, dns: &DnsOptions) -> PropagationCheck {
        dns.propagation_check
            .or(self.propagation_check)
            .unwrap_or_default()
    }
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
    /// `certs/<name>/current/privkey.pem`; `None` when the certificate was
    /// ordered with the user's CSR (the key is theirs).
    pub privkey_path: Option<PathBuf>,
    /// `certs/<name>/current/csr.pem`, the user's CSR, when one was used.
    pub csr_path: Option<PathBuf>,
    /// notBefore of the leaf.
    pub not_before: OffsetDateTime,
    /// notAfter of the leaf.
    pub not_after: OffsetDateTime,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// The key type.
    pub key_type: KeyType,
    /// The common name of the issuer of the chain's topmost certificate
    /// (what `--preferred-chain` matches), if it has one.
    pub chain_issuer: Option<String>,
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
    /// The most names one certificate may have at this CA.
    pub max_names: usize,
    /// The rate limits in force (shared by the engine's orders).
    pub rate_limits: RateLimits,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            validation_timeout: Duration::from_secs(180),
            finalize_timeout: Duration::from_secs(120),
            cancel: CancelToken::new(),
            dns: DnsOptions::default(),
            journal: None,
            max_names: DEFAULT_MAX_NAMES,
            rate_limits: RateLimits::default(),
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
            .field("store", &self.inner.store.location())
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

/// How many names a certificate may have unless told otherwise: Let's
/// Encrypt's limit, and a common one.
pub const DEFAULT_MAX_NAMES: usize = 100;

/// Checks a request without contacting the CA: certificate name, number
/// of names (at most `max_names`), wildcard versus solver, challenge types
/// the engine can drive. Called by [`Engine::issue_all`] too; front ends
/// call it before connecting.
pub fn check_request(req: &CertRequest, max_names: usize) -> Result<(), IssueError> {
    store::check_cert_name(&req.name).map_err(|e| IssueError::InvalidRequest(e.to_string()))?;
    if req.domains.is_empty() {
        return Err(identifiers::IdentifierError::Empty.into());
    }
    if req.domains.len() > max_names {
        return Err(identifiers::IdentifierError::TooMany {
            count: req.domains.len(),
            max: max_names,
        }
        .into());
    }
    if req.order.reuse_key && req.order.csr.is_some() {
        return Err(IssueError::InvalidRequest(
            "a certificate ordered with its own CSR cannot reuse a key: the key is not certsmith's"
                .to_owned(),
        ));
    }
    if let Some(csr) = &req.order.csr {
        let mut asked: Vec<&str> = csr.names.iter().map(String::as_str).collect();
        let mut ordered: Vec<&str> = req.domains.iter().map(Identifier::as_str).collect();
        asked.sort_unstable();
        ordered.sort_unstable();
        if asked != ordered {
            return Err(IssueError::CsrNames {
                csr: csr.names.clone(),
                domains: req.domains.iter().map(|d| d.as_str().to_owned()).collect(),
            });
        }
    }
    for d in &req.domains {
        let manifest = req.solver_for(d.as_str()).manifest();
        // Of the challenge types asked for, the name's solver must offer
        // one (with one solver per name, each may answer a different one).
        if !req.order.challenges.is_empty()
            && !req.order.challenges.iter().any(|&c| manifest.supports(c))
        {
            return Err(IssueError::UnsupportedChallenge {
                challenge: req.order.challenge_names().join(", "),
                solver: manifest.code.clone(),
                supported: manifest
                    .challenge_types
                    .iter()
                    .map(|t| t.as_str().to_owned())
                    .collect(),
            });
        }
        identifiers::check_solver(std::slice::from_ref(d), manifest)?;
    }
    if !req.order.challenges.is_empty()
        && !req.order.challenges.contains(&ChallengeType::Dns01)
        && let Some(w) = req.domains.iter().find(|d| d.is_wildcard())
    {
        return Err(IssueError::WildcardChallenge {
            domain: w.as_str().to_owned(),
            asked: req.order.challenge_names(),
        });
    }
    Ok(())
}

/// Runs the hook `command` for `ctx` (killed with its process group after
/// `timeout`), reporting its start, every line it prints and its end as
/// progress.
pub(crate) async fn run_hook_reported(
    progress: &Progress,
    command: &str,
    ctx: &HookContext,
    timeout: Duration,
) -> Result<(), HookError> {
    let (name, hook) = (ctx.cert_name.clone(), ctx.kind);
    progress.emit(ProgressEvent::HookStarted {
        name: name.clone(),
        hook,
    });
    match hooks::run_hook(command, ctx, timeout).await {
        Ok(out) => {
            for line in out.output.lines() {
                progress.emit(ProgressEvent::HookOutput {
                    name: name.clone(),
                    hook,
                    line: line.to_owned(),
                });
            }
            progress.emit(ProgressEvent::HookFinished {
                name,
                hook,
                elapsed: out.elapsed,
            });
            Ok(())
        }
        Err(e) => {
            progress.emit(ProgressEvent::HookFailed {
                name,
                hook,
                error: e.to_string(),
            });
            Err(e)
        }
    }
}

impl Engine {
    /// Runs `req`'s pre-hook, if any; on failure, runs its post-hook too
    /// (a post-hook always follows) and returns the failure.
    async fn pre_hook(&self, req: &CertRequest, domains: &[String]) -> Result<(), IssueError> {
        let Some(cmd) = &req.hooks.pre else {
            return Ok(());
        };
        let ctx = HookContext::around(HookKind::Pre, &req.name, domains, false);
        let progress = &self.inner.progress;
        match run_hook_reported(progress, cmd, &ctx, req.hooks.timeout).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.post_hook(req, domains, false).await;
                Err(IssueError::PreHook(e))
            }
        }
    }

    /// Runs `req`'s post-hook, if any, telling it whether the challenges
    /// were validated; its failure is kept in `req.hooks` for the caller.
    async fn post_hook(&self, req: &CertRequest, domains: &[String], validated: bool) {
        let Some(cmd) = &req.hooks.post else {
            return;
        };
        let ctx = HookContext::around(HookKind::Post, &req.name, domains, validated);
        if let Err(e) = run_hook_reported(&self.inner.progress, cmd, &ctx, req.hooks.timeout).await
        {
            log::warn!("{e}");
            req.hooks.record_post_failure(e);
        }
    }
}
