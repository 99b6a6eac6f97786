//! `certsmith.toml`: the file `certsmith run` works from.
//!
//! Why this module exists: an unattended agent is only as good as the file
//! that drives it, and a mistake in that file must be found by `certsmith
//! config check` (or at the start of `run`), never by the CA at 3 a.m. This
//! module is the one model of the file and its one parser. Every error it
//! reports carries the file, the line and column, and the key at fault
//! (`certificate[2].domains`), and says how to fix it.
//!
//! ```toml
//! [defaults]
//! server = "letsencrypt"          # or letsencrypt-staging, zerossl, an https URL
//! ca_cert = "ca.pem"              # extra CA certificates for the server's HTTPS
//! email = "admin@example.com"
//! agree_tos = true
//! key_type = "ec-p256"
//! state_dir = "/var/lib/certsmith"
//! plugin_dirs = ["/usr/lib/certsmith/plugins"]
//! concurrency = 4
//! renew_before = "30d"            # default: when 1/3 of the lifetime is left
//! solver = "cloudflare"           # for certificates that name none
//! deploy_hook = "systemctl reload nginx"   # after each certificate is stored
//! pre_hook = "systemctl stop nginx"         # before a certificate's challenges
//! post_hook = "systemctl start nginx"       # after them, always
//! hook_timeout = "120s"           # each hook, then killed with its process group
//!                                 # (deploy_hook_timeout: its older name)
//! dns_resolvers = ["192.0.2.53"]
//! propagation_servers = ["127.0.0.1:8053"]
//! propagation_timeout = "300s"
//! propagation_check = "authoritative" # or "recursive", "wait:SECONDS"
//! follow_cname = true
//!
//! [solvers.cloudflare]            # options of one plugin (secrets: use its env vars)
//! zone_id = "..."
//!
//! [solvers.site-b]                # a named instance: plugin webroot, other options
//! plugin = "webroot"
//! path = "/srv/b"
//!
//! [[certificate]]
//! name = "example.com"            # default: the first domain
//! domains = ["example.com", "*.example.com"]
//! solver = "cloudflare"           # the names `solvers` does not list
//! solvers = { "b.example.com" = "site-b" }  # a name's own solver (keys as in domains)
//! solver_options = { ttl = 120 }  # overrides [solvers.cloudflare] for this one
//! key_type = "ec-p384"
//! deploy_hook = "..."            # pre_hook, post_hook, hook_timeout too:
//!                                 # each overrides [defaults] for this one
//! renew_before = "20d"            # less than MAX_RENEW_BEFORE
//! propagation_check = "wait:30"   # overrides [defaults] for this one
//! challenges = ["tls-alpn-01"]    # challenge types, most preferred first
//! reuse_key = true                # renewals keep the private key
//! preferred_chain = "ISRG Root X1" # issuer CN of the chain wanted
//! profile = "shortlived"          # an ACME profile the CA offers
//! # csr = "example.com.csr"       # your own CSR (PEM or DER): the names come
//! #                               # from it (domains may be left out), no key is stored
//! ```
//!
//! Relative paths are relative to the directory of the file. Line and column
//! numbers are 1-based; `certificate[N]` counts `[[certificate]]` tables from
//! 1, in file order.
//!
//! Parsing checks everything that needs neither the plugins nor the CA:
//! syntax, types, unknown keys (with the nearest known one), server
//! shortcut or URL, e-mail, key types, durations, domain names, certificate
//! names and their uniqueness. The CLI then checks solvers and their options
//! against the plugins' manifests, reporting at the positions kept here
//! ([`Config::error_at`]).
//!
//! Reading happens in two passes, so that each error is found where its
//! fix is known:
//!
//! - `parse.rs` reads the TOML document (with the spans the toml crate keeps
//!   for every key and value) into a typed model of the file: syntax,
//!   unknown keys, wrong types, missing keys. If anything is wrong there,
//!   the second pass does not run: its checks would only repeat the damage.
//! - `check.rs` turns that model into a [`Config`]: the meaning of each value
//!   (URLs, addresses, durations, names, domains), all errors at once.
//!
//! `diagnostics.rs` turns spans into line and column and says what is wrong
//! and how to fix it; `duration.rs` is the one place durations are read and
//! written.

mod check;
mod diagnostics;
mod duration;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dns::PropagationCheck;
use crate::identifiers::Identifier;
use crate::keys::KeyType;

pub use diagnostics::{ConfigError, ConfigErrors, Pos};
pub use duration::{format_duration, parse_duration};

use diagnostics::Diagnostics;

/// The most orders `concurrency` may allow at once.
pub const MAX_CONCURRENCY: usize = 1024;

/// `renew_before` must be shorter than this. No certificate an ACME CA
/// issues today lives longer than it will be allowed to by March 2027
/// (100 days, CA/Browser Forum ballot SC-081), and Let's Encrypt's live 90
/// days or less: a margin this long would make every certificate due as
/// soon as it is issued. Margins shorter than this but still longer than a
/// certificate's actual lifetime are caught at run time
/// ([`crate::renewal::expiry_time`] falls back to 1/3 of the lifetime).
pub const MAX_RENEW_BEFORE: Duration = Duration::from_secs(100 * 86_400);

/// The default time a hook (pre, post, deploy) may run.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest time a hook may be given.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Its position.
    pub pos: Pos,
}

/// `[defaults]`, checked.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    /// The ACME directory URL (shortcuts resolved), if set.
    pub server: Option<String>,
    /// Extra CA certificates for the server's HTTPS (absolute path).
    pub ca_cert: Option<PathBuf>,
    /// Contact e-mail.
    pub email: Option<String>,
    /// Agreement to the CA's terms of service.
    pub agree_tos: bool,
    /// EAB key id.
    pub eab_kid: Option<String>,
    /// EAB HMAC key (better from `CERTSMITH_EAB_HMAC_KEY`). Never printed.
    pub eab_hmac_key: Option<SecretString>,
    /// Key type of certificates that name none.
    pub key_type: Option<KeyType>,
    /// The state directory (absolute path).
    pub state_dir: Option<PathBuf>,
    /// `[store] url`: a shared store (`postgres://…`) instead of the state
    /// directory.
    pub store_url: Option<String>,
    /// Extra plugin directories (absolute paths).
    pub plugin_dirs: Vec<PathBuf>,
    /// Bound on concurrent orders.
    pub concurrency: Option<usize>,
    /// Renew when less than this is left (default: 1/3 of the lifetime).
    pub renew_before: Option<Duration>,
    /// Solver of certificates that name none.
    pub solver: Option<Located<String>>,
    /// Command run after a certificate changes.
    pub deploy_hook: Option<String>,
    /// How long each hook may run (`hook_timeout`, or its older name
    /// `deploy_hook_timeout`).
    pub deploy_hook_timeout: Option<Duration>,
    /// Command run before a certificate's challenges.
    pub pre_hook: Option<String>,
    /// Command run after a certificate's challenges, whatever happened.
    pub post_hook: Option<String>,
    /// Resolvers for dns-01 discovery (SOA/NS/CNAME).
    pub dns_resolvers: Vec<SocketAddr>,
    /// Servers asked whether a dns-01 record has propagated, instead of the
    /// zone's nameservers.
    pub propagation_servers: Vec<SocketAddr>,
    /// How long to wait for dns-01 propagation.
    pub propagation_timeout: Option<Duration>,
    /// How dns-01 propagation is checked, for certificates that say nothing.
    pub propagation_check: Option<PropagationCheck>,
    /// Whether CNAMEs at `_acme-challenge.<domain>` are followed.
    pub follow_cname: Option<bool>,
}

/// A string that is never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One `[solvers.<name>]` table: a solver instance. Its name is the
/// plugin's code, or any name with `plugin = "<code>"` in the table, so
/// that one plugin can serve with two sets of options (two webroot
/// directories). `Debug` shows only the keys: values may be secrets, and
/// which ones only the plugin's manifest knows.
#[derive(Clone, Default)]
pub struct SolverTable {
    /// `plugin = "<code>"`, when the instance has a name of its own.
    pub plugin: Option<String>,
    /// The options, as written (without `plugin`).
    pub options: toml::Table,
    /// Where each option's value is.
    pub positions: BTreeMap<String, Pos>,
    /// Where the table is.
    pub pos: Pos,
}

impl fmt::Debug for SolverTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SolverTable")
            .field("keys", &self.options.keys().collect::<Vec<_>>())
            .field("pos", &self.pos)
            .finish()
    }
}

/// One `[[certificate]]`, checked, with the defaults applied.
#[derive(Clone, Debug)]
pub struct CertificateConfig {
    /// 1-based index among the `[[certificate]]` tables.
    pub index: usize,
    /// The certificate name (the directory under `certs/`).
    pub name: String,
    /// The identifiers, checked.
    pub domains: Vec<Identifier>,
    /// The solver (a plugin code or a `[solvers.<name>]` instance) of the
    /// names `name_solvers` leaves out; when it covers every name, the
    /// first name's solver.
    pub solver: String,
    /// The solver of some names (`solvers = { "<name>" = "<solver>" }`):
    /// (identifier as in `domains`, solver, where it is written).
    pub name_solvers: Vec<(String, String, Pos)>,
    /// Options for this certificate only, over `[solvers.<code>]` (of its
    /// `solver` only).
    pub solver_options: SolverTable,
    /// The key type.
    pub key_type: KeyType,
    /// Command run after this certificate changes.
    pub deploy_hook: Option<String>,
    /// Command run before this certificate's challenges.
    pub pre_hook: Option<String>,
    /// Command run after them, whatever happened.
    pub post_hook: Option<String>,
    /// How long each of its hooks may run.
    pub hook_timeout: Option<Duration>,
    /// Renew when less than this is left.
    pub renew_before: Option<Duration>,
    /// How this certificate's dns-01 propagation is checked, if it says.
    pub propagation_check: Option<PropagationCheck>,
    /// `challenges`, `reuse_key`, `preferred_chain`, `profile`, `csr`
    /// (read and checked: its names are `domains`).
    pub order: crate::engine::OrderOptions,
    /// Where the table starts.
    pub pos: Pos,
    /// Where `domains` is.
    pub domains_pos: Pos,
    /// Where the solver is named (here or in `[defaults]`).
    pub solver_pos: Pos,
}

impl CertificateConfig {
    /// The key prefix used in messages, e.g. `certificate[2]`.
    pub fn key(&self, field: &str) -> String {
        format!("certificate[{}].{field}", self.index)
    }

    /// The domains as ASCII strings.
    pub fn domain_names(&self) -> Vec<String> {
        self.domains.iter().map(|d| d.as_str().to_owned()).collect()
    }
}

/// A checked `certsmith.toml`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[defaults]`.
    pub defaults: Defaults,
    /// `[solvers.<code>]` tables.
    pub solvers: BTreeMap<String, SolverTable>,
    /// The certificates, in file order.
    pub certificates: Vec<CertificateConfig>,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Checks `text`, read from `path` (used for messages and to resolve
    /// relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let mut diagnostics = Diagnostics::new(path, text);
        let raw = parse::read(text, &mut diagnostics);
        diagnostics.take()?;
        let config = check::check(raw, path, &mut diagnostics);
        diagnostics.take()?;
        Ok(config)
    }

    /// An error at `pos` about `key`, for checks made outside this module
    /// (solvers and their options, against the plugins found).
    pub fn error_at(
        &self,
        pos: Pos,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            pos,
            key: key.into(),
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }

    /// The certificate named `name`.
    pub fn certificate(&self, name: &str) -> Option<&CertificateConfig> {
        self.certificates.iter().find(|c| c.name == name)
    }

    /// The solver options for `cert`: `[solvers.<code>]` with the
    /// certificate's `solver_options` over it.
    pub fn solver_table(&self, cert: &CertificateConfig) -> toml::Table {
        let mut table = self
            .solvers
            .get(&cert.solver)
            .map(|t| t.options.clone())
            .unwrap_or_default();
        for (k, v) in &cert.solver_options.options {
            table.insert(k.clone(), v.clone());
        }
        table
    }

    /// Where option `key` of `cert`'s solver is written: in the
    /// certificate's `solver_options`, else in `[solvers.<code>]`, else
    /// where the solver is named. Returns the position and the key path.
    pub fn option_pos(&self, cert: &CertificateConfig, key: &str) -> (Pos, String) {
        if let Some(p) = cert.solver_options.positions.get(key) {
            return (*p, cert.key(&format!("solver_options.{key}")));
        }
        if let Some(t) = self.solvers.get(&cert.solver) {
            if let Some(p) = t.positions.get(key) {
                return (*p, format!("solvers.{}.{key}", cert.solver));
            }
            return (t.pos, format!("solvers.{}", cert.solver));
        }
        (cert.solver_pos, cert.key("solver"))
    }

    /// The plugin code of solver `name`: its `plugin`, else the name.
    pub fn plugin_code(&self, name: &str) -> String {
        self.solvers
            .get(name)
            .and_then(|t| t.plugin.clone())
            .unwrap_or_else(|| name.to_owned())
    }

    /// The options of solver instance `name` (`[solvers.<name>]`).
    pub fn instance_table(&self, name: &str) -> toml::Table {
        self.solvers
            .get(name)
            .map(|t| t.options.clone())
            .unwrap_or_default()
    }

    /// Every `[solvers.*]` table as one table (what the journal sweep and
    /// `issue` take).
    pub fn solvers_table(&self) -> toml::Table {
        self.solvers
            .iter()
            .map(|(k, t)| (k.clone(), toml::Value::Table(t.options.clone())))
            .collect()
    }

    /// The `renew_before` that applies to `cert`.
    pub fn renew_before(&self, cert: &CertificateConfig) -> Option<Duration> {
        cert.renew_before.or(self.defaults.renew_before)
    }

    /// The propagation check that applies to `cert`: its own, else
    /// `[defaults]`'s; `None` leaves it to the engine.
    pub fn propagation_check(&self, cert: &CertificateConfig) -> Option<PropagationCheck> {
        cert.propagation_check.or(self.defaults.propagation_check)
    }

    /// The deploy hook that applies to `cert`.
    pub fn deploy_hook(&self, cert: &CertificateConfig) -> Option<String> {
        cert.deploy_hook
            .clone()
            .or_else(|| self.defaults.deploy_hook.clone())
    }

    /// The pre-hook that applies to `cert`.
    pub fn pre_hook(&self, cert: &CertificateConfig) -> Option<String> {
        cert.pre_hook
            .clone()
            .or_else(|| self.defaults.pre_hook.clone())
    }

    /// The post-hook that applies to `cert`.
    pub fn post_hook(&self, cert: &CertificateConfig) -> Option<String> {
        cert.post_hook
            .clone()
            .or_else(|| self.defaults.post_hook.clone())
    }

    /// The hook timeout that applies to `cert`.
    pub fn hook_timeout(&self, cert: &CertificateConfig) -> Option<Duration> {
        cert.hook_timeout.or(self.defaults.deploy_hook_timeout)
    }
}
