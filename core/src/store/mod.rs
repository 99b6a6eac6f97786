//! Where certsmith keeps what it must remember: accounts, certificates and
//! their history, the renewal schedule, the cleanup journal.
//!
//! Why this module exists: every other module talks about *what* is stored
//! (an account for a CA, a new version of a certificate, a journal entry),
//! never about *where*. [`Storage`] is that contract, at the level of the
//! domain rather than a key-value store (as certmagic's `Storage` is not):
//! committing a certificate version is one call, atomic in every backend,
//! so that a reader never sees a mixed set. Only a backend knows paths,
//! tables or keys. The embedded default is [`FsStore`], a state directory
//! laid out as `docs/design.md` §4 describes:
//!
//! ```text
//! <root>/accounts/<ca-host>/<account-id>/account.json     0600
//! <root>/certs/<name>/current -> versions/<n>              switched atomically
//! <root>/certs/<name>/versions/<n>/{cert,chain,fullchain,privkey}.pem   (csr.pem instead of privkey.pem: the user's CSR)
//! <root>/certs/<name>/lineage.toml                         domains, solver, key type, server, versions
//! <root>/certs/<name>/pending-order.json                   0600: an order finalized, its certificate not yet stored (empty once it is)
//! <root>/rate-limits.json                                 rate limits the CA reported, until they lift
//! <root>/journal/<id>.json                                 presented challenges not yet cleaned up
//! <root>/lock                                              one writer at a time
//! <root>/run.lock                                          one batch (run, renew) at a time
//! <root>/account.lock                                      one account creation at a time
//! ```
//!
//! Every method is blocking (a backend may do file or database I/O): call
//! it from a blocking thread inside async code.

#[doc(hidden)]
pub mod conformance;
mod fs;
mod fsio;
pub mod migrate;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod sync;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certsmith_plugin_api::{ChallengeRequest, Presented};
use serde::{Deserialize, Serialize};

use crate::keys::PrivateKeyPem;

pub use fs::{DEFAULT_LOCK_TIMEOUT, FsStore, StateDirReport, default_root, inspect_state_dir};

/// File names inside a version directory.
pub const CERT_FILE: &str = "cert.pem";
/// The intermediates, without the leaf.
pub const CHAIN_FILE: &str = "chain.pem";
/// The leaf followed by the intermediates: what most servers want.
pub const FULLCHAIN_FILE: &str = "fullchain.pem";
/// The private key, mode 0600.
pub const PRIVKEY_FILE: &str = "privkey.pem";
/// The user's CSR, for a certificate ordered with one (then there is no
/// [`PRIVKEY_FILE`]: the key is the user's).
pub const CSR_FILE: &str = "csr.pem";

/// Why the store could not be read or written. Each message names the
/// place (file, directory, table) concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No state directory was given and none can be derived: neither
    /// `XDG_DATA_HOME` nor `HOME` is set.
    #[error("cannot choose a state directory: neither XDG_DATA_HOME nor HOME is set")]
    NoDefaultRoot,
    /// The state directory does not exist, and was opened read-only
    /// ([`Store::open_existing`]), which creates nothing.
    #[error("state directory {path} does not exist")]
    Missing {
        /// The directory that was expected.
        path: PathBuf,
    },
    /// The state directory (or a directory in it) cannot be created or written.
    #[error("state directory {path} is not usable: {source}")]
    Unwritable {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "write", "read", "rename", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process held the lock for longer than the timeout.
    #[error(
        "another certsmith process holds {path}; wait for it or remove a stale lock (waited {}s)",
        .waited.as_secs()
    )]
    Locked {
        /// The lock (a file in the filesystem backend).
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The certificate name cannot be a directory name.
    #[error(
        "invalid certificate name '{0}': use letters, digits, '.', '-' and '_' (at most 128, not starting with '.')"
    )]
    BadName(String),
    /// A certificate of that name is already stored.
    #[error("a certificate named '{name}' is already stored in {location}")]
    Exists {
        /// The name.
        name: String,
        /// The store.
        location: String,
    },
    /// A commit was refused because the worker's lease on the certificate
    /// expired and passed to another (its fencing token is no longer the
    /// current one): another worker is now responsible for it.
    #[error(
        "the lease on certificate '{name}' passed to another worker (token {token} is stale): not publishing"
    )]
    Fenced {
        /// The certificate.
        name: String,
        /// The stale token.
        token: u64,
    },
    /// The store URL is not one certsmith can use.
    #[error("invalid store URL {url}: {reason}")]
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A database store was opened without its key.
    #[error(
        "a database store keeps private keys encrypted: set CERTSMITH_STORE_KEY to the store's key (32 random bytes in base64; for a new store make one with `openssl rand -base64 32`) or CERTSMITH_STORE_KEY_FILE to a file holding it"
    )]
    NoStoreKey,
    /// The store key cannot be used (malformed, or a value did not open).
    #[error("store key: {reason}")]
    StoreKey {
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The store key given is not the one the store's private keys are
    /// sealed with (ids are digests, never keys).
    #[error(
        "CERTSMITH_STORE_KEY (key id {given}) is not the key this store is encrypted with (key id {sealed_with}); give that key, or the new one if `certsmith store rotate-key` changed it"
    )]
    WrongStoreKey {
        /// The id of the key given.
        given: String,
        /// The id of the key the store uses.
        sealed_with: String,
    },
    /// The database's schema is newer than this certsmith.
    #[error(
        "{location} has schema version {found}, newer than this certsmith knows ({known}): upgrade certsmith on this machine"
    )]
    SchemaTooNew {
        /// The database, without a password.
        location: String,
        /// The schema version found.
        found: i32,
        /// The newest this certsmith knows.
        known: i32,
    },
    /// A database request failed.
    #[error("cannot {action} {location}: {message}")]
    Database {
        /// The database, without a password.
        location: String,
        /// What was being done, e.g. "connect to".
        action: &'static str,
        /// The server's or the client's words.
        message: String,
    },
    /// Something stored does not parse.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file (or record) concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Checks that `name` is usable as a certificate name (in every backend:
/// the filesystem one makes it a directory name).
pub fn check_cert_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

/// What to write for one new certificate version.
#[derive(Debug)]
pub struct CertFiles {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The intermediates (PEM), possibly empty.
    pub chain_pem: String,
    /// Leaf followed by intermediates (PEM).
    pub fullchain_pem: String,
    /// The private key (PEM), written 0600; `None` for a certificate
    /// ordered with the user's CSR.
    pub privkey_pem: Option<PrivateKeyPem>,
    /// The user's CSR (PEM), when the certificate was ordered with one.
    pub csr_pem: Option<String>,
}

/// One stored version, read back.
#[derive(Debug)]
pub struct VersionFiles {
    /// The version number.
    pub version: u32,
    /// The files as stored.
    pub files: CertFiles,
    /// Where the files are, for a backend that keeps them as files.
    pub dir: Option<PathBuf>,
}

/// One issued version, as recorded in `lineage.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version number (the directory name under `versions/`).
    pub version: u32,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// When certsmith stored it, RFC 3339.
    pub issued_at: String,
}

/// `certs/<name>/lineage.toml`: how to obtain this certificate again.
///
/// Never holds a secret: solver credentials and EAB keys are read from the
/// environment or the config file each time (`certsmith renew`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The identifiers, ASCII, in order.
    pub domains: Vec<String>,
    /// The solver code.
    pub solver: String,
    /// The solver options that were set explicitly and are not secret.
    #[serde(default)]
    pub solver_options: BTreeMap<String, toml::Value>,
    /// Where each explicitly set solver option came from at the last
    /// order, secret or not (never its value): `flag` (the command line,
    /// not stored), `env:VAR` (an environment variable, `VAR_FILE` for a
    /// file it names) or `config` (the config file's `[solvers.<code>]`
    /// or the lineage). A renewal that misses a secret says where it came
    /// from and what to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub option_sources: BTreeMap<String, String>,
    /// The solvers of names that do not use `solver` (by identifier,
    /// `*.`-prefixed for a wildcard): `[name_solvers."<name>"]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub name_solvers: BTreeMap<String, NameSolverRecord>,
    /// The key type name, e.g. `ec-p256`.
    pub key_type: String,
    /// The ACME directory URL.
    pub server: String,
    /// The extra CA bundle trusted for the server's HTTPS, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// The contact e-mail given at issuance: used only if the CA's account
    /// must be created at renewal (it never selects or changes the account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The command run after the certificate changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_hook: Option<String>,
    /// The command run before the certificate's challenges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<String>,
    /// The command run after its challenges, whatever happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<String>,
    /// How long each hook may run (e.g. `120s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_timeout: Option<String>,
    /// Renew when less than this is left (e.g. `30d`); default 1/3 of the
    /// lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// The challenge types asked for, most preferred first (`--challenge`,
    /// `challenges`); empty: the default order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<String>,
    /// Ordered with the user's CSR (`--csr`, `csr`): each version holds
    /// `csr.pem` and no private key; renewals send the CSR again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub csr: bool,
    /// Renewals keep the current private key (`--reuse-key`, `reuse_key`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse_key: bool,
    /// The issuer common name of the chain wanted (`--preferred-chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_chain: Option<String>,
    /// The ACME profile ordered (`--profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// When the current version is due for renewal, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalRecord>,
    /// Set when the current version was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<RevocationRecord>,
    /// Set when the certificate was retired (revoked because its names
    /// are no longer in use, or deleted): never renewed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<RetiredRecord>,
    /// Every version stored, oldest first.
    #[serde(default)]
    pub versions: Vec<VersionRecord>,
}

/// The solver of one name of a certificate that uses several.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NameSolverRecord {
    /// The solver (plugin) code.
    pub solver: String,
    /// Its options that were set explicitly and are not secret.
    #[serde(default)]
    pub solver_options: BTreeMap<String, toml::Value>,
}

/// `[retired]` of `lineage.toml`: the certificate is no longer wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredRecord {
    /// Why, e.g. `cessation-of-operation`.
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
}

/// `[renewal]` of `lineage.toml`: the next renewal of the current version
/// (see `crate::renewal`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRecord {
    /// When to renew, RFC 3339.
    pub next_renewal: String,
    /// Why then: `expiry` (1/3 of the lifetime left), `renew_before` (the
    /// configured margin) or `ari` (the CA's suggested window).
    pub reason: String,
    /// The serial of the version this is about, hex.
    #[serde(default)]
    pub serial: String,
    /// RFC 9773 certificate identifier (`base64url(AKI).base64url(serial)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_cert_id: Option<String>,
    /// The CA's suggested window start, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_window_start: Option<String>,
    /// The CA's suggested window end, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_window_end: Option<String>,
    /// The time picked at random in the CA's window, RFC 3339 (kept while
    /// the window stays the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_renewal_at: Option<String>,
    /// The CA's `explanationURL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation_url: Option<String>,
    /// Not to ask the CA again before this (its `Retry-After`), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_next_check: Option<String>,
    /// When this was computed, RFC 3339.
    #[serde(default)]
    pub checked_at: String,
}

/// `[revoked]` of `lineage.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// The revoked serial, hex.
    pub serial: String,
    /// The reason given, e.g. `key-compromise`.
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
}

/// Where a committed version can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedVersion {
    /// The version number.
    pub version: u32,
    /// The version's own files (`certs/<name>/versions/<n>`).
    pub dir: PathBuf,
    /// The stable place to hand to a web server (`certs/<name>/current`).
    pub current: PathBuf,
}

/// Which ACME account: the CA (its host, `host_port`) and the account id
/// (see `crate::acme::account_id`; one account per CA directory).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountKey {
    /// The CA's host and port, e.g. `acme-v02.api.letsencrypt.org`.
    pub ca_host: String,
    /// The account id: a digest of the directory URL (`crate::acme::account_id`),
    /// or, for accounts stored by certsmith 0.1, of the directory URL and
    /// contact (`crate::acme::legacy_account_id`).
    pub id: String,
}

/// A stored account document (JSON; it holds the account's private key).
#[derive(Clone)]
pub struct StoredAccountDoc {
    /// Which account.
    pub key: AccountKey,
    /// The document.
    pub json: Vec<u8>,
    /// Where it is, for messages (a path in the filesystem backend).
    pub location: PathBuf,
}

impl fmt::Debug for StoredAccountDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The document holds a private key.
        f.debug_struct("StoredAccountDoc")
            .field("key", &self.key)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// What [`Storage::create_account`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum AccountSlot {
    /// The document was stored.
    Created(StoredAccountDoc),
    /// Another writer stored one first; this is theirs, and nothing was
    /// written.
    Existing(StoredAccountDoc),
}

/// One presented challenge awaiting cleanup (see `crate::journal`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The entry's id (also its file name).
    pub id: String,
    /// When it was written (Unix seconds).
    pub created_unix: u64,
    /// The process that presented it.
    pub pid: u32,
    /// That process's start time (clock ticks since boot), to survive pid reuse.
    pub pid_start: u64,
    /// The boot of the machine it ran on (`/proc/sys/kernel/random/boot_id`):
    /// a pid means something only on that machine and boot. Empty in
    /// entries written before it was recorded (taken as this machine's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    /// The solver code.
    pub solver: String,
    /// The solver's non-secret options, as given.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// The challenge.
    pub request: ChallengeRequest,
    /// What `present` returned, once it has.
    #[serde(default)]
    pub presented: Option<Presented>,
}

/// An order whose certificate was requested (finalized) and not yet
/// stored: enough to download it in a later run instead of ordering again
/// (the CA has issued it, or is issuing it, under this key).
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingOrder {
    /// The ACME directory URL.
    pub server: String,
    /// The order's URL at the CA.
    pub order_url: String,
    /// The identifiers ordered, ASCII, in order.
    pub domains: Vec<String>,
    /// The key type name, e.g. `ec-p256`.
    pub key_type: String,
    /// The certificate's private key (PEM); empty for an order of the
    /// user's CSR (the key is theirs).
    pub privkey_pem: String,
    /// The CSR sent (DER, base64url), to finalize again if the CA did not
    /// get it.
    pub csr_der_b64: String,
    /// When the order was finalized, RFC 3339.
    pub finalized_at: String,
    /// The process that finalized it, and its start time: a process still
    /// at work on it is left alone.
    #[serde(default)]
    pub pid: u32,
    /// That process's start time (clock ticks since boot).
    #[serde(default)]
    pub pid_start: u64,
    /// The boot of the machine it ran on (see [`JournalEntry::boot_id`]);
    /// empty in records written before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

impl fmt::Debug for PendingOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is never shown.
        f.debug_struct("PendingOrder")
            .field("server", &self.server)
            .field("order_url", &self.order_url)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// A rate limit the CA reported, remembered until it lifts so that no
/// order it would refuse is sent meanwhile (by this run or a later one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitRecord {
    /// The ACME directory URL.
    pub server: String,
    /// The registered domains it covers; empty when it covers every order
    /// at this CA (a limit on the account's new orders).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Until when, RFC 3339.
    pub until: String,
    /// The CA's words.
    pub detail: String,
    /// When it was recorded, RFC 3339.
    pub recorded_at: String,
}

/// How a lease that expires is extended: called with its token.
pub type LeaseRenewer = Box<dyn Fn(u64) -> Result<(), StoreError> + Send + Sync>;

/// A held lease: exclusive work on a scope (`run` for a whole batch) until
/// dropped. Its fencing token grows with every lease taken on the scope,
/// so a backend shared by several machines can refuse a commit from a
/// holder whose lease has since passed to another.
pub struct Lease {
    token: u64,
    holder: String,
    renewer: Option<LeaseRenewer>,
    _guard: Box<dyn fmt::Debug + Send + Sync>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("token", &self.token)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Makes a lease; `guard` releases it when dropped.
    pub fn new(token: u64, holder: String, guard: Box<dyn fmt::Debug + Send + Sync>) -> Lease {
        Lease {
            token,
            holder,
            renewer: None,
            _guard: guard,
        }
    }

    /// The fencing token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// What holds it, for messages (the lock file in the filesystem backend).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Extends a lease that expires (a database backend's) by its time to
    /// live; `Err(StoreError::Fenced)` when it has expired and passed to
    /// another worker. A lease that cannot expire (the filesystem
    /// backend's) always renews.
    pub fn renew(&self) -> Result<(), StoreError> {
        match &self.renewer {
            Some(renew) => renew(self.token),
            None => Ok(()),
        }
    }

    /// Gives the lease a way to renew itself (see [`Lease::renew`]).
    pub fn with_renewer(mut self, renew: LeaseRenewer) -> Lease {
        self.renewer = Some(renew);
        self
    }
}

/// The contract every store backend fulfils. Methods are blocking.
///
/// Atomicity: [`Storage::commit_version`] publishes a version's four files
/// and its lineage record together, or not at all; [`Storage::read_version`]
/// returns one version's files, never a mix of two.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where the store is, for messages (a directory, a database URL
    /// without credentials).
    fn location(&self) -> String;

    /// A stored account, if there is one.
    fn load_account(&self, key: &AccountKey) -> Result<Option<StoredAccountDoc>, StoreError>;

    /// Stores an account unless one is already stored under `key`, in one
    /// step: of two processes creating the same account, one stores and
    /// the other gets [`AccountSlot::Existing`].
    fn create_account(&self, key: &AccountKey, json: &[u8]) -> Result<AccountSlot, StoreError>;

    /// Replaces a stored account (after a key rollover or deactivation).
    fn replace_account(
        &self,
        key: &AccountKey,
        json: &[u8],
    ) -> Result<StoredAccountDoc, StoreError>;

    /// Every stored account, in a stable order.
    fn accounts(&self) -> Result<Vec<StoredAccountDoc>, StoreError>;

    /// Where the account under `key` is or would be, for messages.
    fn account_location(&self, key: &AccountKey) -> PathBuf;

    /// The names of every certificate with a lineage, sorted.
    fn cert_names(&self) -> Result<Vec<String>, StoreError>;

    /// A certificate's lineage, if there is one.
    fn load_lineage(&self, name: &str) -> Result<Option<Lineage>, StoreError>;

    /// Changes a lineage (renewal state, revocation, settings) without a
    /// new version; returns the lineage written, or `None` when there is
    /// none.
    fn update_lineage(
        &self,
        name: &str,
        change: &mut dyn FnMut(&mut Lineage),
    ) -> Result<Option<Lineage>, StoreError>;

    /// Stores a new version of `name` and makes it current, atomically.
    /// `lineage` describes the certificate; its `versions` are replaced by
    /// the stored history plus `record` (whose `version` is set here).
    /// Settings `lineage` leaves unset (account, CA bundle, hook, margin)
    /// carry over from the stored lineage.
    fn commit_version(
        &self,
        name: &str,
        files: &CertFiles,
        lineage: &Lineage,
        record: VersionRecord,
    ) -> Result<SavedVersion, StoreError> {
        self.commit_version_fenced(name, files, lineage, record, None, None)
    }

    /// [`commit_version`](Storage::commit_version), refused with
    /// [`StoreError::Fenced`] unless `fence` is still the token of the
    /// current lease on the certificate ([`Storage::cert_lease`]), checked
    /// in the same step as the commit: a worker whose lease expired and
    /// passed to another cannot publish. `None` commits unconditionally.
    /// `settles`: the URL of the order this version came from; its pending
    /// order ([`Storage::put_pending_order`]) is forgotten in the same step
    /// (as [`Storage::remove_pending_order`] does), so that no reader sees
    /// the version stored and its order still pending, and no crash leaves
    /// them so (a later order would resume it and store the same
    /// certificate again).
    fn commit_version_fenced(
        &self,
        name: &str,
        files: &CertFiles,
        lineage: &Lineage,
        record: VersionRecord,
        fence: Option<u64>,
        settles: Option<&str>,
    ) -> Result<SavedVersion, StoreError>;

    /// Removes the certificate `name` from the store: its lineage and
    /// pending order, and, unless `keep_files`, every stored version.
    /// With `keep_files` the versions stay where they are (for a
    /// filesystem backend: `certs/<name>/versions` and `current`), no
    /// longer a certificate of the store. Returns whether there was one.
    fn remove_cert(&self, name: &str, keep_files: bool) -> Result<bool, StoreError>;

    /// Renames the certificate `from` to `to` (its lineage and versions);
    /// [`StoreError::Exists`] when `to` is taken.
    fn rename_cert(&self, from: &str, to: &str) -> Result<(), StoreError>;

    /// The number of the current version, if any.
    fn current_version(&self, name: &str) -> Result<Option<u32>, StoreError>;

    /// Version `version` of `name`, or the current one when `None`; `None`
    /// when there is no such version.
    fn read_version(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<VersionFiles>, StoreError>;

    /// The stable place where a web server reads `name`'s current files,
    /// for a backend that keeps files.
    fn current_dir(&self, name: &str) -> Option<PathBuf>;

    /// Records, durably, an order about to be finalized for `name` (one per
    /// certificate; a newer one replaces it). The record holds a private key.
    fn put_pending_order(&self, name: &str, order: &PendingOrder) -> Result<(), StoreError>;

    /// The pending order of `name`, if there is one.
    fn pending_order(&self, name: &str) -> Result<Option<PendingOrder>, StoreError>;

    /// Forgets the pending order of `name` (stored, or gone at the CA) if
    /// it is the one at `order_url` (another process may have recorded its
    /// own since); a missing one is not an error.
    fn remove_pending_order(&self, name: &str, order_url: &str) -> Result<(), StoreError>;

    /// Remembers a rate limit (and forgets those that have lifted).
    fn record_rate_limit(&self, record: &RateLimitRecord) -> Result<(), StoreError>;

    /// The rate limits remembered, lifted ones included until the next
    /// [`Storage::record_rate_limit`].
    fn rate_limits(&self) -> Result<Vec<RateLimitRecord>, StoreError>;

    /// Writes (or overwrites) a journal entry, durably.
    fn put_journal_entry(&self, entry: &JournalEntry) -> Result<(), StoreError>;

    /// Removes a journal entry; a missing one is not an error.
    fn remove_journal_entry(&self, id: &str) -> Result<(), StoreError>;

    /// Every journal entry, oldest first; unreadable ones are skipped with
    /// a warning.
    fn journal_entries(&self) -> Result<Vec<JournalEntry>, StoreError>;

    /// Where the journal is, for messages.
    fn journal_location(&self) -> String;

    /// Takes the lease on `scope`, waiting up to `wait` for its holder to
    /// release it ([`StoreError::Locked`] after that).
    fn lease(&self, scope: &str, wait: Duration) -> Result<Lease, StoreError>;

    /// Takes the lock of one (solver, name) for one solver call, waiting up
    /// to `wait`: like [`lease`](Storage::lease), kept apart from the
    /// run-wide leases (the file store puts them under `locks/`).
    fn name_lease(&self, scope: &str, wait: Duration) -> Result<Lease, StoreError> {
        self.lease(scope, wait)
    }

    /// Requests sent to a database by this process so far, for a backend
    /// that has one (metrics, benchmarks).
    fn queries(&self) -> Option<u64> {
        None
    }

    /// Claims the work on certificate `name` for `ttl` without waiting:
    /// `None` when another worker holds it. The lease's token grows with
    /// every claim of the certificate and is the fence of
    /// [`Storage::commit_version_fenced`]. A backend shared by machines
    /// lets the lease expire after `ttl` unless it is renewed
    /// ([`Lease::renew`]), and another worker may then claim it; the
    /// filesystem backend holds it until it is dropped.
    fn cert_lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, StoreError>;

    /// Stores a whole certificate copied from another store (`certsmith
    /// store migrate`): its lineage and every version, keeping their
    /// numbers, with `current` the current one. [`StoreError::Exists`]
    /// when the store already has a certificate of that name: nothing is
    /// replaced.
    fn restore_cert(
        &self,
        name: &str,
        lineage: &Lineage,
        versions: &[VersionFiles],
        current: Option<u32>,
    ) -> Result<(), StoreError>;
}

/// The lineage a commit of `record` writes: `lineage` with the stored
/// history (of `old`) plus `record`; settings `lineage` leaves unset
/// (account, CA bundle, hook, margin) carry over from `old`, while renewal
/// state and a revocation belonged to the old version. The same in every
/// backend.
pub(crate) fn lineage_for_commit(
    old: Option<Lineage>,
    lineage: &Lineage,
    record: VersionRecord,
) -> Lineage {
    let mut lineage = lineage.clone();
    let mut history = Vec::new();
    if let Some(old) = old {
        history = old.versions;
        lineage.ca_cert = lineage.ca_cert.or(old.ca_cert);
        lineage.email = lineage.email.or(old.email);
        lineage.deploy_hook = lineage.deploy_hook.or(old.deploy_hook);
        lineage.renew_before = lineage.renew_before.or(old.renew_before);
    }
    history.retain(|v| v.version != record.version);
    history.push(record);
    lineage.versions = history;
    lineage
}

/// `url` without a password (`postgres://user:secret@host/db` becomes
/// `postgres://user:***@host/db`), for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut out = format!("{scheme}://");
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            if user_info.contains(':') {
                out.push_str(&format!("{user}:***@{host}"));
            } else {
                out.push_str(&format!("{user}@{host}"));
            }
        }
        None => out.push_str(authority),
    }
    // Query parameters may carry a password too.
    match path.split_once('?') {
        Some((p, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            out.push_str(&format!("{p}?{}", q.join("&")));
        }
        None => out.push_str(path),
    }
    out
}

/// A handle on a store backend: cheap to clone, shared by every task.
/// Dereferences to [`Storage`].
#[derive(Clone, Debug)]
pub struct Store(Arc<dyn Storage>);

impl Store {
    /// Wraps a backend.
    pub fn new(backend: impl Storage + 'static) -> Store {
        Store(Arc::new(backend))
    }

    /// Opens (creating if needed) the state directory at `root`: the
    /// filesystem backend, see [`FsStore::open`].
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        FsStore::open(root).map(Store::new)
    }

    /// Opens the existing state directory at `root` for reading: the
    /// filesystem backend, see [`FsStore::open_existing`]. Creates and
    /// writes nothing; [`StoreError::Missing`] when it does not exist.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        FsStore::open_existing(root).map(Store::new)
    }

    /// Opens the shared store at `url` (`postgres://…`). `local` is the
    /// directory where the files of the versions this process commits are
    /// also written, for deploy hooks and web servers on this machine.
    /// The store key comes from `CERTSMITH_STORE_KEY` or
    /// `CERTSMITH_STORE_KEY_FILE`; without it the store refuses to open.
    pub fn open_url(url: &str, local: Option<PathBuf>) -> Result<Store, StoreError> {
        #[cfg(feature = "postgres")]
        {
            let key = pg::StoreKey::from_env(pg::STORE_KEY_VAR, &crate::envfile::process_env)?;
            pg::PgStore::open(url, key, local).map(Store::new)
        }
        #[cfg(not(feature = "postgres"))]
        {
            let _ = local;
            Err(StoreError::BadUrl {
                url: redact_url(url),
                reason: "this certsmith was built without the postgres feature".to_owned(),
            })
        }
    }
}

impl Deref for Store {
    type Target = dyn Storage;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
