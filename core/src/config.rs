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
//! deploy_hook = "systemctl reload nginx"
//! deploy_hook_timeout = "120s"
//! dns_resolvers = ["192.0.2.53"]
//! propagation_servers = ["127.0.0.1:8053"]
//! propagation_timeout = "300s"
//! follow_cname = true
//!
//! [solvers.cloudflare]            # options of one plugin (secrets: use its env vars)
//! zone_id = "..."
//!
//! [[certificate]]
//! name = "example.com"            # default: the first domain
//! domains = ["example.com", "*.example.com"]
//! solver = "cloudflare"
//! solver_options = { ttl = 120 }  # overrides [solvers.cloudflare] for this one
//! key_type = "ec-p384"
//! deploy_hook = "..."
//! renew_before = "20d"
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

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::identifiers::{self, Identifier};
use crate::keys::KeyType;

/// The most orders `concurrency` may allow at once.
pub const MAX_CONCURRENCY: usize = 1024;

/// The default time a deploy hook may run.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// A position in the file, 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One thing wrong with a config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or an
    /// unknown key: found by the TOML parser.
    #[error("{}:{pos}: {key}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where.
        pos: Pos,
        /// The key at fault (`defaults.server`), or `(file)` when the
        /// parser could not tell.
        key: String,
        /// What is wrong.
        message: String,
        /// How to fix it, when known.
        hint: Option<String>,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("{}:{pos}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where.
        pos: Pos,
        /// The key at fault, e.g. `certificate[2].domains`.
        key: String,
        /// What is wrong.
        message: String,
        /// How to fix it, when known.
        hint: Option<String>,
    },
}

impl ConfigError {
    /// How to fix it, when there is something specific to say.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => Some("pass --config FILE with a readable file"),
            ConfigError::Syntax { hint, .. } | ConfigError::Invalid { hint, .. } => hint.as_deref(),
        }
    }

    /// The key at fault, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    /// The position, if the error has one.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { pos, .. } | ConfigError::Invalid { pos, .. } => Some(*pos),
        }
    }
}

/// Every error found in a file (at least one).
#[derive(Debug, thiserror::Error)]
#[error("{}", display_all(.errors))]
pub struct ConfigErrors {
    /// The errors, in file order.
    pub errors: Vec<ConfigError>,
}

fn display_all(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors { errors: vec![e] }
    }
}

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
    /// How long a deploy hook may run.
    pub deploy_hook_timeout: Option<Duration>,
    /// Resolvers for dns-01 discovery (SOA/NS/CNAME).
    pub dns_resolvers: Vec<SocketAddr>,
    /// Servers asked whether a dns-01 record has propagated, instead of the
    /// zone's nameservers.
    pub propagation_servers: Vec<SocketAddr>,
    /// How long to wait for dns-01 propagation.
    pub propagation_timeout: Option<Duration>,
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

/// One `[solvers.<code>]` table. `Debug` shows only the keys: values may
/// be secrets, and which ones only the plugin's manifest knows.
#[derive(Clone, Default)]
pub struct SolverTable {
    /// The options, as written.
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

impl SolverTable {
    fn from_raw(raw: RawOptions, pos: Pos, lines: &LineIndex) -> Self {
        let mut t = SolverTable {
            pos,
            ..SolverTable::default()
        };
        for (k, v) in raw {
            t.positions.insert(k.get_ref().clone(), lines.pos(k.span()));
            t.options.insert(k.into_inner(), v.into_inner());
        }
        t
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
    /// The solver code.
    pub solver: String,
    /// Options for this certificate only, over `[solvers.<code>]`.
    pub solver_options: SolverTable,
    /// The key type.
    pub key_type: KeyType,
    /// Command run after this certificate changes.
    pub deploy_hook: Option<String>,
    /// Renew when less than this is left.
    pub renew_before: Option<Duration>,
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
        let lines = LineIndex::new(text);
        let raw: RawFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => return Err(syntax_error(&e, path, &lines).into()),
        };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cx = Checker {
            path: path.to_owned(),
            lines: &lines,
            errors: Vec::new(),
            base,
        };
        let config = cx.check(raw);
        if cx.errors.is_empty() {
            Ok(config)
        } else {
            cx.errors.sort_by_key(|e| e.pos());
            Err(ConfigErrors { errors: cx.errors })
        }
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

    /// The deploy hook that applies to `cert`.
    pub fn deploy_hook(&self, cert: &CertificateConfig) -> Option<String> {
        cert.deploy_hook
            .clone()
            .or_else(|| self.defaults.deploy_hook.clone())
    }
}

/// Parses a duration such as `30d`, `12h`, `90m`, `45s`, `2w` or `1d12h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the duration is empty".to_owned());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("unknown unit '{c}' (use s, m, h, d or w)")),
        };
        if digits.is_empty() {
            return Err(format!("a number must come before '{c}'"));
        }
        let n: u64 = digits.parse().map_err(|_| "the number is too large")?;
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or("the duration is too large")?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "'{digits}' has no unit: write {digits}s, {digits}m, {digits}h or {digits}d"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (`30d`, `1d12h`).
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400u64), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The raw file, as serde sees it.

/// Solver options with the position of each key.
type RawOptions = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: Option<RawDefaults>,
    /// Also accepted at the top level (as `certsmith issue` has always read it).
    #[serde(default)]
    plugin_dirs: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    solvers: BTreeMap<String, Spanned<RawOptions>>,
    #[serde(default)]
    certificate: Vec<Spanned<RawCert>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    server: Option<Spanned<String>>,
    ca_cert: Option<Spanned<String>>,
    email: Option<Spanned<String>>,
    #[serde(default)]
    agree_tos: bool,
    eab_kid: Option<Spanned<String>>,
    eab_hmac_key: Option<Spanned<String>>,
    key_type: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    plugin_dirs: Option<Spanned<Vec<Spanned<String>>>>,
    concurrency: Option<Spanned<i64>>,
    renew_before: Option<Spanned<String>>,
    solver: Option<Spanned<String>>,
    deploy_hook: Option<Spanned<String>>,
    deploy_hook_timeout: Option<Spanned<String>>,
    dns_resolvers: Option<Vec<Spanned<String>>>,
    propagation_servers: Option<Vec<Spanned<String>>>,
    propagation_timeout: Option<Spanned<String>>,
    follow_cname: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    name: Option<Spanned<String>>,
    domains: Spanned<Vec<Spanned<String>>>,
    solver: Option<Spanned<String>>,
    #[serde(default)]
    solver_options: Option<Spanned<RawOptions>>,
    key_type: Option<Spanned<String>>,
    deploy_hook: Option<Spanned<String>>,
    renew_before: Option<Spanned<String>>,
}

/// Byte offsets to line and column.
struct LineIndex {
    /// Byte offset of each line start.
    starts: Vec<usize>,
    text: String,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                starts.push(i + 1);
            }
        }
        LineIndex {
            starts,
            text: text.to_owned(),
        }
    }

    fn pos_of(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(line).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Pos {
            line: line + 1,
            column,
        }
    }

    fn pos(&self, span: Range<usize>) -> Pos {
        self.pos_of(span.start)
    }

    fn line_text(&self, line: usize) -> &str {
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let end = self
            .starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len())
            .max(start);
        self.text.get(start..end).unwrap_or("").trim_end()
    }
}

/// The table path of line `line`: `defaults`, `solvers.x`,
/// `certificate[2]`, or the top level (empty).
fn table_context(lines: &LineIndex, line: usize) -> String {
    let mut current = String::new();
    let mut cert_count = 0usize;
    for l in 1..=line {
        let t = lines.line_text(l).trim();
        if let Some(inner) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = inner.trim();
            if name == "certificate" {
                cert_count += 1;
                current = format!("certificate[{cert_count}]");
            } else {
                current = name.to_owned();
            }
        } else if let Some(inner) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            let name = inner.trim();
            // A sub-table of a certificate, e.g. [certificate.solver_options].
            if let Some(rest) = name.strip_prefix("certificate.") {
                current = format!("certificate[{}].{rest}", cert_count.max(1));
            } else {
                current = name.to_owned();
            }
        }
    }
    current
}

/// The key assigned on `line` before `column`, if the line is `key = ...`.
fn key_on_line(lines: &LineIndex, pos: Pos) -> Option<String> {
    let text = lines.line_text(pos.line);
    let (lhs, _) = text.split_once('=')?;
    let lhs_len = lhs.chars().count();
    if pos.column <= lhs_len {
        // The error is in the key itself.
        return Some(lhs.trim().trim_matches('"').to_owned());
    }
    let k = lhs.trim().trim_matches('"');
    (!k.is_empty() && !k.starts_with('[')).then(|| k.to_owned())
}

/// The key whose (multi-line) value contains byte `offset`: the last key
/// assigned at bracket depth 0 before it, when the depth at `offset` is
/// still above 0 (an unclosed array or inline table).
fn enclosing_key(lines: &LineIndex, offset: usize) -> Option<String> {
    let text = lines.text.get(..offset.min(lines.text.len()))?;
    let mut depth = 0i32;
    let mut key: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if depth == 0 {
            if trimmed.starts_with('[') {
                key = None;
            } else if let Some((lhs, _)) = trimmed.split_once('=') {
                let k = lhs.trim().trim_matches('"');
                if !k.is_empty() && !k.contains(['[', '{', '"', '#']) {
                    key = Some(k.to_owned());
                }
            }
        }
        let mut in_str: Option<char> = None;
        let mut escaped = false;
        // The value part only: a header's brackets are not depth.
        let value = if depth == 0 {
            match trimmed.split_once('=') {
                Some((_, v)) if !trimmed.starts_with('[') => v,
                _ => "",
            }
        } else {
            line
        };
        for c in value.chars() {
            match in_str {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        in_str = None;
                    }
                }
                None => match c {
                    '"' | '\'' => in_str = Some(c),
                    '#' => break,
                    '[' | '{' => depth += 1,
                    ']' | '}' => depth -= 1,
                    _ => {}
                },
            }
        }
    }
    (depth > 0).then_some(key).flatten()
}

fn join_key(table: &str, key: &str) -> String {
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table.to_owned(),
        (false, false) => format!("{table}.{key}"),
    }
}

/// The text between the first pair of backticks after `after`.
fn backticked_after<'a>(message: &'a str, after: &str) -> Option<&'a str> {
    let i = message.find(after)? + after.len();
    let rest = &message[i..];
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(&rest[start..start + len])
}

/// Turns the TOML parser's error into one naming the line, column and key.
fn syntax_error(e: &toml::de::Error, path: &Path, lines: &LineIndex) -> ConfigError {
    let message = e.message().trim().to_owned();
    let pos = e
        .span()
        .map_or(Pos { line: 1, column: 1 }, |s| lines.pos(s));
    let table = table_context(lines, pos.line);
    let mut hint = None;
    let mut msg = message.clone();
    let key = if let Some(field) = backticked_after(&message, "unknown field") {
        let expected: Vec<&str> = message
            .split_once("expected")
            .map(|(_, list)| {
                list.split('`')
                    .enumerate()
                    .filter(|(i, _)| i % 2 == 1)
                    .map(|(_, s)| s)
                    .collect()
            })
            .unwrap_or_default();
        msg = format!("unknown key `{field}`");
        if let Some(near) = crate::plugin::nearest(field, expected.iter().copied()) {
            msg.push_str(&format!(": did you mean `{near}`?"));
            hint = Some(format!("rename `{field}` to `{near}`"));
        } else if !expected.is_empty() {
            hint = Some(format!("valid keys here: {}", expected.join(", ")));
        }
        join_key(&table, field)
    } else if let Some(field) = backticked_after(&message, "missing field") {
        msg = format!("missing key `{field}`");
        hint = Some(match field {
            "domains" => "add domains = [\"example.com\"]".to_owned(),
            _ => format!("add {field} = ..."),
        });
        join_key(&table, field)
    } else {
        let offset = e.span().map_or(0, |s| s.start);
        let k = enclosing_key(lines, offset)
            .or_else(|| key_on_line(lines, pos))
            .unwrap_or_default();
        if message.contains("invalid type") {
            hint = type_hint(&k);
        } else {
            hint = Some(format!(
                "check the TOML syntax at line {} and above: quotes, commas, brackets",
                pos.line
            ));
        }
        let key = join_key(&table, &k);
        if key.is_empty() {
            "(file)".to_owned()
        } else {
            key
        }
    };
    ConfigError::Syntax {
        path: path.to_owned(),
        pos,
        key,
        message: msg,
        hint,
    }
}

fn type_hint(key: &str) -> Option<String> {
    Some(match key {
        "domains" => {
            "domains is a list: domains = [\"example.com\", \"www.example.com\"]".to_owned()
        }
        "plugin_dirs" | "dns_resolvers" | "propagation_servers" => {
            format!("{key} is a list of strings: {key} = [\"...\"]")
        }
        "agree_tos" | "follow_cname" => format!("{key} is true or false"),
        "concurrency" => "concurrency is a number such as 4".to_owned(),
        "renew_before" | "deploy_hook_timeout" | "propagation_timeout" => {
            format!("{key} is a duration string such as \"30d\", \"12h\" or \"90s\"")
        }
        "solver_options" => {
            "solver_options is a table: solver_options = { key = \"value\" }".to_owned()
        }
        "" => return None,
        _ => format!("{key} is a string: {key} = \"...\""),
    })
}

struct Checker<'a> {
    path: PathBuf,
    lines: &'a LineIndex,
    errors: Vec<ConfigError>,
    base: PathBuf,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: String, hint: &str) {
        self.errors.push(ConfigError::Invalid {
            path: self.path.clone(),
            pos: self.lines.pos(span),
            key: key.into(),
            message,
            hint: (!hint.is_empty()).then(|| hint.to_owned()),
        });
    }

    fn path_value(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn duration(&mut self, v: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    v.span(),
                    key,
                    format!("invalid duration '{}': {e}", v.get_ref()),
                    "write a duration such as \"30d\", \"12h\", \"90m\" or \"45s\"",
                );
                None
            }
        }
    }

    fn key_type(&mut self, v: &Spanned<String>, key: &str) -> Option<KeyType> {
        match v.get_ref().parse::<KeyType>() {
            Ok(k) => Some(k),
            Err(_) => {
                let names: Vec<&str> = KeyType::ALL.iter().map(|k| k.as_str()).collect();
                let near = crate::plugin::nearest(v.get_ref(), names.iter().copied());
                let mut msg = format!("unknown key type '{}'", v.get_ref());
                if let Some(n) = near {
                    msg.push_str(&format!(": did you mean '{n}'?"));
                }
                self.err(
                    v.span(),
                    key,
                    msg,
                    "use one of ec-p256, ec-p384, rsa2048, rsa3072, rsa4096",
                );
                None
            }
        }
    }

    fn servers(&mut self, list: &[Spanned<String>], key: &str) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for s in list {
            match crate::dns::parse_server(s.get_ref()) {
                Some(a) => out.push(a),
                None => self.err(
                    s.span(),
                    key,
                    format!("'{}' is not IP or IP:PORT", s.get_ref()),
                    "write an address such as \"192.0.2.53\" or \"127.0.0.1:8053\"",
                ),
            }
        }
        out
    }

    fn check(&mut self, raw: RawFile) -> Config {
        let d = raw.defaults.unwrap_or_default();
        let mut defaults = Defaults {
            agree_tos: d.agree_tos,
            follow_cname: d.follow_cname,
            ..Defaults::default()
        };
        if let Some(s) = &d.server {
            match crate::acme::resolve_server(s.get_ref()) {
                Ok(url) => defaults.server = Some(url),
                Err(e) => self.err(
                    s.span(),
                    "defaults.server",
                    e.to_string(),
                    "use letsencrypt, letsencrypt-staging, zerossl, or the https URL of an ACME directory",
                ),
            }
        }
        if let Some(p) = &d.ca_cert {
            let path = self.path_value(p.get_ref());
            if let Err(e) = std::fs::metadata(&path) {
                self.err(
                    p.span(),
                    "defaults.ca_cert",
                    format!("cannot read {}: {e}", path.display()),
                    "give the path of a PEM file (relative paths start at the config file's directory)",
                );
            }
            defaults.ca_cert = Some(path);
        }
        if let Some(e) = &d.email {
            let opts = crate::acme::AccountOptions {
                email: Some(e.get_ref().clone()),
                ..Default::default()
            };
            match opts.contact() {
                Ok(_) => defaults.email = Some(e.get_ref().trim().to_owned()),
                Err(_) => self.err(
                    e.span(),
                    "defaults.email",
                    format!("'{}' is not an e-mail address", e.get_ref()),
                    "give one address such as admin@example.com",
                ),
            }
        }
        defaults.eab_kid = d.eab_kid.map(Spanned::into_inner);
        defaults.eab_hmac_key = d.eab_hmac_key.map(|k| SecretString(k.into_inner()));
        if let Some(k) = &d.key_type {
            defaults.key_type = self.key_type(k, "defaults.key_type");
        }
        if let Some(s) = &d.state_dir {
            defaults.state_dir = Some(self.path_value(s.get_ref()));
        }
        for list in [raw.plugin_dirs.as_ref(), d.plugin_dirs.as_ref()]
            .into_iter()
            .flatten()
        {
            for p in list.get_ref() {
                defaults.plugin_dirs.push(self.path_value(p.get_ref()));
            }
        }
        if let Some(c) = &d.concurrency {
            let n = *c.get_ref();
            if n < 1 || n > MAX_CONCURRENCY as i64 {
                self.err(
                    c.span(),
                    "defaults.concurrency",
                    format!("{n} is out of range"),
                    "use a number from 1 to 1024",
                );
            } else {
                defaults.concurrency = usize::try_from(n).ok();
            }
        }
        if let Some(r) = &d.renew_before {
            defaults.renew_before = self.duration(r, "defaults.renew_before");
        }
        if let Some(t) = &d.deploy_hook_timeout {
            defaults.deploy_hook_timeout = self.duration(t, "defaults.deploy_hook_timeout");
            if defaults.deploy_hook_timeout == Some(Duration::ZERO) {
                self.err(
                    t.span(),
                    "defaults.deploy_hook_timeout",
                    "the timeout is zero".to_owned(),
                    "give the hook some time, e.g. \"120s\"",
                );
            }
        }
        if let Some(t) = &d.propagation_timeout {
            defaults.propagation_timeout = self.duration(t, "defaults.propagation_timeout");
        }
        if let Some(h) = &d.deploy_hook {
            if h.get_ref().trim().is_empty() {
                self.err(
                    h.span(),
                    "defaults.deploy_hook",
                    "the command is empty".to_owned(),
                    "remove deploy_hook or give a shell command",
                );
            } else {
                defaults.deploy_hook = Some(h.get_ref().clone());
            }
        }
        if let Some(list) = &d.dns_resolvers {
            defaults.dns_resolvers = self.servers(list, "defaults.dns_resolvers");
        }
        if let Some(list) = &d.propagation_servers {
            defaults.propagation_servers = self.servers(list, "defaults.propagation_servers");
        }
        if let Some(s) = &d.solver {
            defaults.solver = Some(Located {
                value: s.get_ref().trim().to_owned(),
                pos: self.lines.pos(s.span()),
            });
        }

        let mut solvers = BTreeMap::new();
        for (code, table) in raw.solvers {
            let pos = self.lines.pos(table.span());
            solvers.insert(
                code,
                SolverTable::from_raw(table.into_inner(), pos, self.lines),
            );
        }

        let mut certificates: Vec<CertificateConfig> = Vec::new();
        let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
        for (i, raw_cert) in raw.certificate.into_iter().enumerate() {
            let index = i + 1;
            let pos = self.lines.pos(raw_cert.span());
            let (name, checked) = self.check_cert(index, pos, raw_cert.into_inner(), &defaults);
            // Names must be unique, whether or not the rest is valid.
            if !name.is_empty() {
                if let Some(first) = seen.get(&name) {
                    let msg = format!(
                        "two certificates are named '{name}' (the other at line {})",
                        first.line
                    );
                    self.errors.push(ConfigError::Invalid {
                        path: self.path.clone(),
                        pos,
                        key: format!("certificate[{index}].name"),
                        message: msg,
                        hint: Some("give each [[certificate]] its own name = \"...\"".to_owned()),
                    });
                    continue;
                }
                seen.insert(name, pos);
            }
            if let Some(c) = checked {
                certificates.push(c);
            }
        }
        Config {
            path: self.path.clone(),
            defaults,
            solvers,
            certificates,
        }
    }

    fn check_cert(
        &mut self,
        index: usize,
        pos: Pos,
        raw: RawCert,
        defaults: &Defaults,
    ) -> (String, Option<CertificateConfig>) {
        let key = |f: &str| format!("certificate[{index}].{f}");
        let errors_before = self.errors.len();

        let mut domains = Vec::new();
        if raw.domains.get_ref().is_empty() {
            self.err(
                raw.domains.span(),
                key("domains"),
                "the list is empty".to_owned(),
                "list at least one domain: domains = [\"example.com\"]",
            );
        }
        for d in raw.domains.get_ref() {
            match identifiers::parse_domains(std::slice::from_ref(d.get_ref())) {
                Ok(mut ids) => domains.append(&mut ids),
                Err(e) => self.err(
                    d.span(),
                    key("domains"),
                    e.to_string(),
                    "domains are DNS names such as example.com or *.example.com",
                ),
            }
        }
        // Duplicates are dropped, keeping the first.
        let mut unique: Vec<Identifier> = Vec::with_capacity(domains.len());
        for d in domains {
            if !unique.iter().any(|u| u.as_str() == d.as_str()) {
                unique.push(d);
            }
        }
        let domains = unique;

        let name = match &raw.name {
            Some(n) => {
                if let Err(e) = crate::store::check_cert_name(n.get_ref()) {
                    self.err(
                        n.span(),
                        key("name"),
                        e.to_string(),
                        "use a plain name such as example.com",
                    );
                }
                n.get_ref().clone()
            }
            None => identifiers::default_cert_name(&domains).unwrap_or_default(),
        };

        let (solver, solver_pos) = match (&raw.solver, &defaults.solver) {
            (Some(s), _) => (s.get_ref().trim().to_owned(), self.lines.pos(s.span())),
            (None, Some(d)) => (d.value.clone(), d.pos),
            (None, None) => {
                self.err(
                    raw.domains.span(),
                    key("solver"),
                    "no solver: neither this certificate nor [defaults] names one".to_owned(),
                    "add solver = \"CODE\" (see `certsmith solvers list`)",
                );
                (String::new(), pos)
            }
        };
        if raw
            .solver
            .as_ref()
            .is_some_and(|s| s.get_ref().trim().is_empty())
            && let Some(s) = &raw.solver
        {
            self.err(
                s.span(),
                key("solver"),
                "the solver code is empty".to_owned(),
                "name a solver (see `certsmith solvers list`)",
            );
        }

        let key_type = match &raw.key_type {
            Some(k) => self.key_type(k, &key("key_type")),
            None => Some(defaults.key_type.unwrap_or_default()),
        };
        let renew_before = match &raw.renew_before {
            Some(r) => self.duration(r, &key("renew_before")),
            None => None,
        };
        let deploy_hook = match &raw.deploy_hook {
            Some(h) if h.get_ref().trim().is_empty() => {
                self.err(
                    h.span(),
                    key("deploy_hook"),
                    "the command is empty".to_owned(),
                    "remove deploy_hook or give a shell command",
                );
                None
            }
            Some(h) => Some(h.get_ref().clone()),
            None => None,
        };
        let solver_options = match raw.solver_options {
            Some(t) => {
                let p = self.lines.pos(t.span());
                SolverTable::from_raw(t.into_inner(), p, self.lines)
            }
            None => SolverTable {
                pos,
                ..SolverTable::default()
            },
        };
        if self.errors.len() > errors_before {
            return (name, None);
        }
        let config = CertificateConfig {
            index,
            name: name.clone(),
            domains,
            solver,
            solver_options,
            key_type: key_type.unwrap_or_default(),
            deploy_hook,
            renew_before,
            pos,
            domains_pos: self.lines.pos(raw.domains.span()),
            solver_pos,
        };
        (name, Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("/etc/certsmith/certsmith.toml"))
    }

    fn one_error(text: &str) -> ConfigError {
        let mut e = parse(text).expect_err("must fail").errors;
        assert_eq!(e.len(), 1, "{e:?}");
        e.remove(0)
    }

    const GOOD: &str = r#"
[defaults]
server = "https://localhost:14000/dir"
email = "admin@example.com"
agree_tos = true
key_type = "ec-p384"
plugin_dirs = ["plugins"]
concurrency = 3
renew_before = "30d"
propagation_servers = ["127.0.0.1:8053"]

[solvers.standalone]
listen = "127.0.0.1:5002"

[[certificate]]
domains = ["A.example.com", "www.a.example.com", "a.example.com"]
solver = "standalone"

[[certificate]]
name = "b"
domains = ["b.example.com"]
solver = "standalone"
solver_options = { listen = "127.0.0.1:5003" }
key_type = "rsa2048"
renew_before = "1d12h"
deploy_hook = "true"
"#;

    #[test]
    fn a_good_file() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(
            c.defaults.server.as_deref(),
            Some("https://localhost:14000/dir")
        );
        assert_eq!(
            c.defaults.plugin_dirs,
            [PathBuf::from("/etc/certsmith/plugins")]
        );
        assert_eq!(c.defaults.concurrency, Some(3));
        assert_eq!(
            c.defaults.renew_before,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.defaults.propagation_servers.len(), 1);
        assert_eq!(c.certificates.len(), 2);
        let a = &c.certificates[0];
        assert_eq!(a.name, "a.example.com");
        assert_eq!(a.domain_names(), ["a.example.com", "www.a.example.com"]);
        assert_eq!(a.key_type, KeyType::EcP384);
        let b = &c.certificates[1];
        assert_eq!(b.key_type, KeyType::Rsa2048);
        assert_eq!(b.renew_before, Some(Duration::from_secs(36 * 3600)));
        assert_eq!(
            c.solver_table(b).get("listen").and_then(|v| v.as_str()),
            Some("127.0.0.1:5003")
        );
        assert_eq!(
            c.solver_table(a).get("listen").and_then(|v| v.as_str()),
            Some("127.0.0.1:5002")
        );
        let (pos, key) = c.option_pos(b, "listen");
        assert_eq!(key, "certificate[2].solver_options.listen");
        assert_eq!(pos.line, 23);
        let (pos, key) = c.option_pos(a, "listen");
        assert_eq!(key, "solvers.standalone.listen");
        assert_eq!(
            pos,
            Pos {
                line: 13,
                column: 1
            }
        );
        assert_eq!(c.deploy_hook(b).as_deref(), Some("true"));
    }

    #[test]
    fn malformed_toml_names_line_and_column() {
        let e = one_error("[defaults]\nserver = \"x\n");
        let s = e.to_string();
        assert!(s.starts_with("/etc/certsmith/certsmith.toml:2:"), "{s}");
        assert!(matches!(e, ConfigError::Syntax { .. }));
    }

    #[test]
    fn an_unclosed_array_is_blamed_on_its_key() {
        let e = one_error("[[certificate]]\ndomains = [\"a.test\"\nsolver = \"x\"\n");
        assert_eq!(e.key(), Some("certificate[1].domains"), "{e}");
        assert_eq!(e.pos(), Some(Pos { line: 3, column: 1 }));
        assert!(e.hint().is_some_and(|h| h.contains("syntax")), "{e:?}");
        let e = one_error("[defaults]\nemail = \"a@b.c\nagree_tos = true\n");
        assert_eq!(e.key(), Some("defaults.email"), "{e}");
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let e = one_error("[[certificate]]\ndomain = [\"a.example\"]\nsolver = \"x\"\n");
        let s = e.to_string();
        assert!(
            s.contains(":2:1: certificate[1].domain: unknown key `domain`"),
            "{s}"
        );
        assert!(s.contains("did you mean `domains`?"), "{s}");
        let e = one_error("[defaults]\nemial = \"a@b.c\"\n");
        assert_eq!(e.key(), Some("defaults.emial"));
        assert!(e.to_string().contains("did you mean `email`"), "{e}");
        assert_eq!(e.pos(), Some(Pos { line: 2, column: 1 }));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = one_error("[[certificate]]\nsolver = \"x\"\ndomains = \"a.example\"\n");
        assert_eq!(e.key(), Some("certificate[1].domains"), "{e}");
        assert_eq!(e.pos().map(|p| p.line), Some(3));
        assert!(e.hint().is_some_and(|h| h.contains("list")), "{e:?}");
        let e = one_error("[defaults]\nagree_tos = \"yes\"\n");
        assert_eq!(e.key(), Some("defaults.agree_tos"), "{e}");
    }

    #[test]
    fn missing_domains() {
        let e = one_error("[[certificate]]\nsolver = \"x\"\n");
        assert_eq!(e.key(), Some("certificate[1].domains"), "{e}");
        assert!(e.to_string().contains("missing key `domains`"), "{e}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_positions() {
        let text = r#"
[defaults]
server = "http://insecure.example/dir"
email = "not-an-email"
renew_before = "30 days"
key_type = "ec-p521"

[[certificate]]
domains = ["ok.example", "bad..example"]
solver = "standalone"

[[certificate]]
name = "dup"
domains = ["c.example"]
solver = "standalone"

[[certificate]]
name = "dup"
domains = ["d.example"]
solver = "standalone"
"#;
        let errors = parse(text).expect_err("invalid").errors;
        let keys: Vec<(String, usize)> = errors
            .iter()
            .map(|e| {
                (
                    e.key().unwrap_or("").to_owned(),
                    e.pos().map_or(0, |p| p.line),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("defaults.server".to_owned(), 3),
                ("defaults.email".to_owned(), 4),
                ("defaults.renew_before".to_owned(), 5),
                ("defaults.key_type".to_owned(), 6),
                ("certificate[1].domains".to_owned(), 9),
                ("certificate[3].name".to_owned(), 17),
            ],
            "{errors:#?}"
        );
        let kt = &errors[3];
        assert!(
            kt.to_string().contains("unknown key type 'ec-p521'"),
            "{kt}"
        );
        assert!(kt.hint().is_some_and(|h| h.contains("ec-p384")), "{kt:?}");
        let dom = &errors[4];
        assert_eq!(dom.pos().map(|p| p.column), Some(26), "{dom}");
        assert!(dom.to_string().contains("bad..example"), "{dom}");
    }

    #[test]
    fn solver_from_defaults_or_error() {
        let c =
            parse("[defaults]\nsolver = \"webroot\"\n[[certificate]]\ndomains = [\"a.example\"]\n")
                .expect("valid");
        assert_eq!(c.certificates[0].solver, "webroot");
        assert_eq!(
            c.certificates[0].solver_pos,
            Pos {
                line: 2,
                column: 10
            }
        );
        let e = one_error("[[certificate]]\ndomains = [\"a.example\"]\n");
        assert_eq!(e.key(), Some("certificate[1].solver"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "1d12h");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn secrets_are_not_in_debug() {
        let c = parse(
            "[defaults]\neab_kid = \"kid\"\neab_hmac_key = \"c2VjcmV0\"\n[solvers.cf]\napi_token = \"hunter2\"\n",
        )
        .expect("valid");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("c2VjcmV0") && !dbg.contains("hunter2"),
            "{dbg}"
        );
        assert!(dbg.contains("api_token"), "{dbg}");
    }

    #[test]
    fn top_level_plugin_dirs_still_accepted() {
        let c = parse("plugin_dirs = [\"/opt/p\"]\n").expect("valid");
        assert_eq!(c.defaults.plugin_dirs, [PathBuf::from("/opt/p")]);
    }
}
