//! Progress events of the engine, for whoever shows them.
//!
//! Why this module exists: the engine must not know whether it talks to a
//! terminal, a CI log or a JSON consumer. It only reports what happened, as
//! [`ProgressEvent`]s on a channel; the CLI turns them into lines on stderr
//! (or JSON), a library user into whatever it likes. Sending never blocks
//! and never fails the run: a dropped receiver just silences the events.

use std::fmt;
use std::path::PathBuf;

use certsmith_plugin_api::ChallengeType;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::CaProblem;

/// Something the engine did or saw. `name` is the certificate name.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProgressEvent {
    /// Where a dns-01 record goes, after CNAMEs and zone discovery.
    DnsRecord {
        /// The certificate name.
        name: String,
        /// The identifier.
        domain: String,
        /// The record name written (after following CNAMEs).
        fqdn: String,
        /// The zone it is written in.
        zone: String,
        /// The CNAME chain followed, when there was one (first is the
        /// `_acme-challenge` name).
        cname_chain: Vec<String>,
    },
    /// How many nameservers serve a dns-01 record so far.
    Propagation {
        /// The certificate name.
        name: String,
        /// The record name.
        fqdn: String,
        /// Servers serving every expected value.
        ready: usize,
        /// Servers asked.
        total: usize,
        /// Whether the servers are resolvers (the recursive check), not
        /// authoritative nameservers.
        resolvers: bool,
    },
    /// No propagation check: waiting a fixed time after the dns-01 records
    /// were written.
    PropagationWait {
        /// The certificate name.
        name: String,
        /// How long.
        wait: std::time::Duration,
    },
    /// The ACME account is ready to use.
    AccountReady {
        /// The directory URL.
        server: String,
        /// The account URL at the CA.
        account_url: String,
        /// Whether it was created now (else loaded from the store).
        created: bool,
    },
    /// The account's contact was changed at the CA and in the store (the
    /// operator gave another e-mail address).
    AccountContactChanged {
        /// The account URL at the CA.
        account_url: String,
        /// The contact URLs now.
        contact: Vec<String>,
    },
    /// An order was created at the CA.
    OrderCreated {
        /// Certificate name.
        name: String,
        /// The identifiers ordered.
        domains: Vec<String>,
        /// How many authorizations the CA asks for.
        authorizations: usize,
    },
    /// An authorization needs a challenge answered.
    AuthorizationPending {
        /// Certificate name.
        name: String,
        /// The identifier.
        domain: String,
        /// The challenge type chosen.
        challenge: ChallengeType,
    },
    /// An authorization was already valid (the CA reused a recent one).
    AuthorizationReused {
        /// Certificate name.
        name: String,
        /// The identifier.
        domain: String,
    },
    /// The solver presented the challenge response.
    ChallengePresented {
        /// Certificate name.
        name: String,
        /// The identifier.
        domain: String,
        /// The challenge type.
        challenge: ChallengeType,
    },
    /// The CA was told the challenges are ready and is validating.
    Validating {
        /// Certificate name.
        name: String,
        /// How many challenges it is validating.
        challenges: usize,
    },
    /// The CA validated an identifier.
    Valid {
        /// Certificate name.
        name: String,
        /// The identifier.
        domain: String,
    },
    /// The CA did not validate an identifier.
    Invalid {
        /// Certificate name.
        name: String,
        /// The identifier.
        domain: String,
        /// Its problem document, if any.
        problem: Option<CaProblem>,
    },
    /// A presented challenge was removed.
    CleanedUp {
        /// Certificate name.
        name: String,
        /// The identifier.
        domain: String,
        /// The challenge type.
        challenge: ChallengeType,
    },
    /// Removing a presented challenge failed (the run goes on).
    CleanupFailed {
        /// Certificate name.
        name: String,
        /// The identifier.
        domain: String,
        /// The challenge type.
        challenge: ChallengeType,
        /// What went wrong (redacted).
        error: String,
    },
    /// An order an earlier run finalized was picked up instead of ordering
    /// again.
    OrderResumed {
        /// Certificate name.
        name: String,
        /// The order's URL.
        order_url: String,
    },
    /// The CSR was sent; the CA is issuing.
    Finalizing {
        /// Certificate name.
        name: String,
    },
    /// The certificate was stored.
    Saved {
        /// Certificate name.
        name: String,
        /// The version number.
        version: u32,
        /// The directory of this version.
        path: PathBuf,
    },
    /// Another batch holds the store's run lease; this one waits for it.
    WaitingForRun {
        /// What holds it (the lock file in the filesystem store).
        holder: String,
    },
    /// Challenges left presented by an earlier run that did not finish
    /// are being removed.
    LeftoversFound {
        /// How many.
        count: usize,
    },
    /// A challenge left by an earlier run was removed.
    LeftoverRemoved {
        /// What it was (record, solver, process).
        description: String,
    },
    /// A challenge left by an earlier run could not be removed; it stays
    /// in the journal for the next run.
    LeftoverKept {
        /// What it was.
        description: String,
        /// Why it could not be removed (redacted).
        error: String,
    },
    /// A certificate's hook started (pre, post or deploy).
    HookStarted {
        /// Certificate name.
        name: String,
        /// Which hook.
        hook: crate::hooks::HookKind,
    },
    /// A line a hook printed.
    HookOutput {
        /// Certificate name.
        name: String,
        /// Which hook.
        hook: crate::hooks::HookKind,
        /// The line.
        line: String,
    },
    /// A certificate's hook finished successfully.
    HookFinished {
        /// Certificate name.
        name: String,
        /// Which hook.
        hook: crate::hooks::HookKind,
        /// How long it ran.
        elapsed: std::time::Duration,
    },
    /// A certificate's hook failed (the error says what follows from it).
    HookFailed {
        /// Certificate name.
        name: String,
        /// Which hook.
        hook: crate::hooks::HookKind,
        /// The error.
        error: String,
    },
    /// This certificate failed; others go on.
    Failed {
        /// Certificate name.
        name: String,
        /// The error message.
        error: String,
    },
}

impl ProgressEvent {
    /// The certificate name the event is about, if any.
    pub fn cert_name(&self) -> Option<&str> {
        match self {
            ProgressEvent::AccountReady { .. }
            | ProgressEvent::AccountContactChanged { .. }
            | ProgressEvent::WaitingForRun { .. }
            | ProgressEvent::LeftoversFound { .. }
            | ProgressEvent::LeftoverRemoved { .. }
            | ProgressEvent::LeftoverKept { .. } => None,
            ProgressEvent::OrderCreated { name, .. }
            | ProgressEvent::AuthorizationPending { name, .. }
            | ProgressEvent::AuthorizationReused { name, .. }
            | ProgressEvent::ChallengePresented { name, .. }
            | ProgressEvent::Validating { name, .. }
            | ProgressEvent::Valid { name, .. }
            | ProgressEvent::Invalid { name, .. }
            | ProgressEvent::CleanedUp { name, .. }
            | ProgressEvent::CleanupFailed { name, .. }
            | ProgressEvent::Finalizing { name }
            | ProgressEvent::OrderResumed { name, .. }
            | ProgressEvent::Saved { name, .. }
            | ProgressEvent::Failed { name, .. }
            | ProgressEvent::DnsRecord { name, .. }
            | ProgressEvent::Propagation { name, .. }
            | ProgressEvent::PropagationWait { name, .. }
            | ProgressEvent::HookStarted { name, .. }
            | ProgressEvent::HookFailed { name, .. }
            | ProgressEvent::HookOutput { name, .. }
            | ProgressEvent::HookFinished { name, .. } => Some(name),
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// One sentence for a person, e.g. `order created for a.test (1
/// authorization)`: what the CLI prints and what is logged when nobody
/// receives the event.
impl fmt::Display for ProgressEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgressEvent::AccountReady {
                server,
                account_url,
                created,
            } => {
                if *created {
                    write!(f, "account created at {server} ({account_url})")
                } else {
                    write!(f, "using account {account_url}")
                }
            }
            ProgressEvent::AccountContactChanged {
                account_url,
                contact,
            } => write!(
                f,
                "contact of account {account_url} changed to {}",
                contact.join(", ")
            ),
            ProgressEvent::OrderCreated {
                domains,
                authorizations,
                ..
            } => write!(
                f,
                "order created for {} ({})",
                domains.join(", "),
                plural(*authorizations, "authorization")
            ),
            ProgressEvent::AuthorizationPending {
                domain, challenge, ..
            } => write!(f, "{domain}: answering the {challenge} challenge"),
            ProgressEvent::AuthorizationReused { domain, .. } => {
                write!(f, "{domain}: already authorized")
            }
            ProgressEvent::ChallengePresented {
                domain, challenge, ..
            } => write!(f, "{domain}: {challenge} response in place"),
            ProgressEvent::Validating { name, challenges } => write!(
                f,
                "{name}: the CA is validating {}",
                plural(*challenges, "challenge")
            ),
            ProgressEvent::Valid { domain, .. } => write!(f, "{domain}: valid"),
            ProgressEvent::Invalid {
                domain, problem, ..
            } => match problem {
                Some(p) => write!(f, "{domain}: invalid: {p}"),
                None => write!(f, "{domain}: invalid"),
            },
            ProgressEvent::CleanedUp {
                domain, challenge, ..
            } => write!(f, "{domain}: {challenge} response removed"),
            ProgressEvent::CleanupFailed {
                domain,
                challenge,
                error,
                ..
            } => write!(
                f,
                "{domain}: could not remove the {challenge} response: {error}"
            ),
            ProgressEvent::OrderResumed { name, order_url } => write!(
                f,
                "{name}: picked up order {order_url}, finalized by an earlier run; downloading its certificate"
            ),
            ProgressEvent::Finalizing { name } => {
                write!(f, "{name}: validated; requesting the certificate")
            }
            ProgressEvent::Saved {
                name,
                version,
                path,
            } => write!(f, "{name}: saved version {version} in {}", path.display()),
            ProgressEvent::DnsRecord {
                domain,
                fqdn,
                zone,
                cname_chain,
                ..
            } => {
                if cname_chain.len() > 1 {
                    write!(
                        f,
                        "{domain}: TXT record goes to {fqdn} in zone {zone} (via CNAME {})",
                        cname_chain.join(" → ")
                    )
                } else {
                    write!(f, "{domain}: TXT record {fqdn} in zone {zone}")
                }
            }
            ProgressEvent::Propagation {
                fqdn,
                ready,
                total,
                resolvers,
                ..
            } => {
                let asked = if *resolvers {
                    "resolvers"
                } else {
                    "nameservers"
                };
                write!(f, "{fqdn}: {ready}/{total} {asked} serve the record")
            }
            ProgressEvent::PropagationWait { name, wait } => write!(
                f,
                "{name}: waiting {}s for the TXT records to propagate (not checked)",
                wait.as_secs()
            ),
            ProgressEvent::WaitingForRun { holder } => {
                write!(
                    f,
                    "another certsmith run or renew holds {holder}; waiting for it"
                )
            }
            ProgressEvent::LeftoversFound { count } => write!(
                f,
                "{count} challenge(s) left by an earlier run that did not finish: cleaning up"
            ),
            ProgressEvent::LeftoverRemoved { description } => write!(f, "removed {description}"),
            ProgressEvent::LeftoverKept { description, error } => write!(
                f,
                "could not remove {description}: {error}; will retry on the next run"
            ),
            ProgressEvent::HookStarted { name, hook } => write!(f, "{name}: running the {hook}"),
            ProgressEvent::HookOutput { name, hook, line } => write!(f, "{name} {hook}: {line}"),
            ProgressEvent::HookFailed { name, error, .. } => write!(f, "{name}: {error}"),
            ProgressEvent::HookFinished {
                name,
                hook,
                elapsed,
            } => write!(f, "{name}: {hook} done in {:.1}s", elapsed.as_secs_f64()),
            ProgressEvent::Failed { name, error } => write!(f, "{name}: {error}"),
        }
    }
}

/// Where the engine sends events; cheap to clone. The default sends nowhere.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    tx: Option<UnboundedSender<ProgressEvent>>,
}

impl Progress {
    /// Sends events to `tx`.
    pub fn new(tx: UnboundedSender<ProgressEvent>) -> Self {
        Progress { tx: Some(tx) }
    }

    /// Drops every event.
    pub fn none() -> Self {
        Progress { tx: None }
    }

    /// Reports an event; never blocks, never fails. An event nobody
    /// receives is logged (at debug level) instead: one that is received is
    /// shown by the receiver, and logging it too would say it twice.
    pub fn emit(&self, event: ProgressEvent) {
        let unreceived = match &self.tx {
            Some(tx) => tx.send(event).err().map(|e| e.0),
            None => Some(event),
        };
        if let Some(event) = unreceived {
            log::debug!("{event}");
        }
    }
}
