//! `plugin.toml`: what a plugin says about itself.
//!
//! One file drives config validation, secret redaction, `certsmith solvers
//! info` and the generated docs, so the host never needs to know a plugin in
//! advance. It is embedded in the library (`include_str!`) and read by the
//! host at load time, before any instance is created.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::wire::ChallengeType;

/// A parsed `plugin.toml`.
///
/// Non-exhaustive: later versions add fields with defaults; get one from
/// [`Manifest::parse`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[non_exhaustive]
pub struct Manifest {
    /// What `--solver` takes: lowercase letters, digits, `-` and `_`.
    pub code: String,
    /// A human name, e.g. "Cloudflare DNS".
    pub name: String,
    /// The plugin's own version (independent of the ABI version).
    pub version: String,
    /// One paragraph: what it does and what it needs.
    #[serde(default)]
    pub description: String,
    /// Where to learn more (the provider's API docs).
    #[serde(default)]
    pub url: Option<String>,
    /// The challenge types it can answer.
    pub challenge_types: Vec<ChallengeType>,
    /// `true` when what `present` sets up lives in the certsmith process
    /// alone (a listener of the plugin's own, answering from memory) and
    /// ends with it: a crash or `kill -9` leaves nothing anywhere to clean
    /// up, and no other process can be writing it. The host then writes no
    /// cleanup journal entry for its challenges and takes no lock on their
    /// names (docs/design.md §3). Default `false`: every plugin that writes
    /// anything outside the process (a DNS record, a file) must leave it so.
    /// A host older than this key ignores it and journals as for any plugin.
    #[serde(default)]
    pub in_process: bool,
    /// Its configuration keys, by name.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigKey>,
    /// Tuning the host applies on the plugin's behalf.
    #[serde(default)]
    pub defaults: Defaults,
}

/// The type of a configuration value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConfigType {
    /// A UTF-8 string.
    String,
    /// A signed 64-bit integer.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A list of strings (comma-separated on the command line).
    StringList,
}

impl ConfigType {
    /// The name used in `plugin.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigType::String => "string",
            ConfigType::Integer => "integer",
            ConfigType::Boolean => "boolean",
            ConfigType::StringList => "string_list",
        }
    }
}

/// One configuration key.
///
/// A key that is neither given nor defaulted is **absent** from the JSON
/// object the plugin's `Config` is deserialized from (never `null`): use
/// `Option<T>` with `#[serde(default)]` for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[non_exhaustive]
pub struct ConfigKey {
    /// The value's type.
    #[serde(rename = "type")]
    pub ty: ConfigType,
    /// Whether the plugin cannot work without it.
    #[serde(default)]
    pub required: bool,
    /// Never printed, logged or shown in errors; redacted everywhere.
    #[serde(default)]
    pub secret: bool,
    /// An environment variable that supplies the value; `<env>_FILE` names a
    /// file holding it.
    #[serde(default)]
    pub env: Option<String>,
    /// The value used when none is given.
    #[serde(default)]
    pub default: Option<ConfigValue>,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// `integer` keys: the smallest value accepted (inclusive). The host
    /// refuses a smaller one before the plugin sees it.
    #[serde(default)]
    pub min: Option<i64>,
    /// `integer` keys: the largest value accepted (inclusive).
    #[serde(default)]
    pub max: Option<i64>,
    /// `string` and `string_list` keys: a glob every value (every element
    /// of a list) must match as a whole. `*` matches any run of characters
    /// (also none), `?` exactly one character, every other character only
    /// itself; there is no escaping and no character class. E.g.
    /// `"https://*"` or `"??-*"`.
    #[serde(default)]
    pub pattern: Option<String>,
}

impl ConfigKey {
    /// Checks a value of the right type against `min`, `max` and
    /// `pattern`. The error never contains the value (it may be a secret).
    pub fn check(&self, value: &ConfigValue) -> Result<(), ValueError> {
        if let ConfigValue::Integer(i) = value {
            if let Some(min) = self.min
                && *i < min
            {
                return Err(ValueError::BelowMin { min });
            }
            if let Some(max) = self.max
                && *i > max
            {
                return Err(ValueError::AboveMax { max });
            }
        }
        if let Some(pattern) = &self.pattern {
            let fits = match value {
                ConfigValue::String(s) => glob_matches(pattern, s),
                ConfigValue::StringList(l) => l.iter().all(|s| glob_matches(pattern, s)),
                _ => true,
            };
            if !fits {
                return Err(ValueError::NoMatch {
                    pattern: pattern.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Why a value broke its key's `min`, `max` or `pattern`. The message
/// names the bound, never the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// An integer below `min`.
    #[error("must be at least {min}")]
    BelowMin {
        /// The key's `min`.
        min: i64,
    },
    /// An integer above `max`.
    #[error("must be at most {max}")]
    AboveMax {
        /// The key's `max`.
        max: i64,
    },
    /// A string (or a list element) that does not match `pattern`.
    #[error("must match the pattern {pattern:?} (* = any characters, ? = one character)")]
    NoMatch {
        /// The key's `pattern`.
        pattern: String,
    },
}

/// Whether `text` matches the glob `pattern` as a whole: `*` is any run of
/// characters, `?` one character, anything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point (the last `*`): linear in
    // practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A configuration value as `plugin.toml` declares it (a default): the
/// crate's own type, so that no TOML library's type is part of this API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ConfigValue {
    /// A `boolean` value.
    Boolean(bool),
    /// An `integer` value.
    Integer(i64),
    /// A `string` value.
    String(String),
    /// A `string_list` value.
    StringList(Vec<String>),
}

impl ConfigValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ConfigValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            ConfigValue::Integer(i) => Some(*i),
            _ => None,
        }
    }
    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ConfigValue::Boolean(b) => Some(*b),
            _ => None,
        }
    }
    /// The list, if this is one.
    pub fn as_string_list(&self) -> Option<&[String]> {
        match self {
            ConfigValue::StringList(l) => Some(l),
            _ => None,
        }
    }
    /// Whether the value has the given type.
    pub fn has_type(&self, ty: ConfigType) -> bool {
        matches!(
            (ty, self),
            (ConfigType::String, ConfigValue::String(_))
                | (ConfigType::Integer, ConfigValue::Integer(_))
                | (ConfigType::Boolean, ConfigValue::Boolean(_))
                | (ConfigType::StringList, ConfigValue::StringList(_))
        )
    }
    /// The value as JSON, as the plugin's `Config` receives it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ConfigValue::Boolean(b) => serde_json::Value::Bool(*b),
            ConfigValue::Integer(i) => serde_json::Value::from(*i),
            ConfigValue::String(s) => serde_json::Value::String(s.clone()),
            ConfigValue::StringList(l) => {
                serde_json::Value::Array(l.iter().cloned().map(serde_json::Value::String).collect())
            }
        }
    }
    /// A JSON value of one of the four types, else `None`.
    pub fn from_json(v: &serde_json::Value) -> Option<ConfigValue> {
        match v {
            serde_json::Value::Bool(b) => Some(ConfigValue::Boolean(*b)),
            serde_json::Value::Number(n) => n.as_i64().map(ConfigValue::Integer),
            serde_json::Value::String(s) => Some(ConfigValue::String(s.clone())),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(ConfigValue::StringList),
            _ => None,
        }
    }
}

/// TOML syntax: `"text"`, `120`, `true`, `["a", "b"]`.
impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
        match self {
            ConfigValue::Boolean(b) => write!(f, "{b}"),
            ConfigValue::Integer(i) => write!(f, "{i}"),
            ConfigValue::String(s) => f.write_str(&quote(s)),
            ConfigValue::StringList(l) => {
                let items: Vec<String> = l.iter().map(|s| quote(s)).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// Host-side tuning for a plugin, with the values used when it says nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct Defaults {
    /// TTL of dns-01 records, seconds.
    pub ttl: u32,
    /// How long to wait for a dns-01 record to reach every nameserver, seconds.
    pub propagation_timeout_s: u64,
    /// The longest interval between propagation checks, seconds.
    pub polling_interval_s: u64,
    /// How many challenges the host hands this plugin at once.
    pub max_concurrency: u32,
    /// How long the host waits for one `present`/`cleanup` call, seconds.
    pub call_timeout_s: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            ttl: 60,
            propagation_timeout_s: 120,
            polling_interval_s: 2,
            max_concurrency: 8,
            call_timeout_s: 120,
        }
    }
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The TOML did not parse or did not match the schema (the parser's
    /// message).
    #[error("plugin.toml is malformed: {0}")]
    Toml(String),
    /// `code` is empty or has characters other than `[a-z0-9_-]`.
    #[error("plugin.toml: code {0:?} must be 1-32 characters of a-z, 0-9, '-' or '_'")]
    BadCode(String),
    /// `challenge_types` is empty.
    #[error("plugin.toml: challenge_types must name at least one of http-01, dns-01, tls-alpn-01")]
    NoChallengeTypes,
    /// A default value does not match its key's type.
    #[error("plugin.toml: config.{key}.default must be of type {ty}")]
    BadDefault {
        /// The key.
        key: String,
        /// Its declared type.
        ty: &'static str,
    },
    /// A required key also has a default, which makes `required` meaningless.
    #[error("plugin.toml: config.{0} is required and has a default; drop one of them")]
    RequiredWithDefault(String),
    /// `min`/`max` on a key that is not an integer, `pattern` on one that is
    /// not a string or list, or `min` greater than `max`.
    #[error("plugin.toml: config.{key}: {why}")]
    BadConstraint {
        /// The key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The default breaks the key's own `min`, `max` or `pattern`.
    #[error("plugin.toml: config.{key}.default {source}")]
    DefaultOutOfRange {
        /// The key.
        key: String,
        /// The broken constraint.
        source: ValueError,
    },
}

impl Manifest {
    /// Parses and checks a `plugin.toml`.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Toml(e.to_string()))?;
        let code_ok = !m.code.is_empty()
            && m.code.len() <= 32
            && m.code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !code_ok {
            return Err(ManifestError::BadCode(m.code));
        }
        if m.challenge_types.is_empty() {
            return Err(ManifestError::NoChallengeTypes);
        }
        for (key, spec) in &m.config {
            let bad = |why| {
                Err(ManifestError::BadConstraint {
                    key: key.clone(),
                    why,
                })
            };
            if (spec.min.is_some() || spec.max.is_some()) && spec.ty != ConfigType::Integer {
                return bad("min and max apply to integer keys only");
            }
            if let (Some(min), Some(max)) = (spec.min, spec.max)
                && min > max
            {
                return bad("min is greater than max");
            }
            if spec.pattern.is_some()
                && !matches!(spec.ty, ConfigType::String | ConfigType::StringList)
            {
                return bad("pattern applies to string and string_list keys only");
            }
            if let Some(d) = &spec.default {
                if spec.required {
                    return Err(ManifestError::RequiredWithDefault(key.clone()));
                }
                if !d.has_type(spec.ty) {
                    return Err(ManifestError::BadDefault {
                        key: key.clone(),
                        ty: spec.ty.as_str(),
                    });
                }
                spec.check(d)
                    .map_err(|source| ManifestError::DefaultOutOfRange {
                        key: key.clone(),
                        source,
                    })?;
            }
        }
        Ok(m)
    }

    /// Whether the plugin can answer `ty`.
    pub fn supports(&self, ty: ChallengeType) -> bool {
        self.challenge_types.contains(&ty)
    }
}

impl Manifest {
    /// The plugin's reference page in Markdown, generated from the manifest
    /// alone so that the docs cannot drift from what the host enforces.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "# `{}`: {}\n", self.code, self.name);
        let _ = writeln!(
            s,
            "<!-- Generated from {}'s plugin.toml; do not edit. Regenerate with `CERTSMITH_BLESS=1 cargo test -p certsmith-tests --test e2e docs`. -->\n",
            self.code
        );
        if !self.description.is_empty() {
            let _ = writeln!(s, "{}\n", self.description.trim());
        }
        let types: Vec<&str> = self.challenge_types.iter().map(|t| t.as_str()).collect();
        let _ = writeln!(s, "- Challenge types: {}", types.join(", "));
        let _ = writeln!(s, "- Plugin version: {}", self.version);
        if let Some(url) = &self.url {
            let _ = writeln!(s, "- Reference: <{url}>");
        }
        if self.in_process {
            let _ = writeln!(
                s,
                "- Its challenges live in the certsmith process only and end with it: no cleanup journal entry, no lock on their names"
            );
        }
        let _ = writeln!(s, "\n## Options\n");
        if self.config.is_empty() {
            let _ = writeln!(s, "This solver takes no options.");
        } else {
            let _ = writeln!(
                s,
                "Give them as `--solver-opt KEY=VALUE`, in the environment variable shown, in a file named by `<VAR>_FILE`, or in the config file's `[solvers.{}]` table (in that order of precedence).\n",
                self.code
            );
            let _ = writeln!(
                s,
                "| option | type | required | secret | environment | default | description |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for (k, c) in &self.config {
                let env = c
                    .env
                    .as_ref()
                    .map(|e| format!("`{e}`, `{e}_FILE`"))
                    .unwrap_or_default();
                let default = c
                    .default
                    .as_ref()
                    .map(|d| format!("`{d}`"))
                    .unwrap_or_default();
                let mut description = c.description.replace('|', "\\|").replace('\n', " ");
                let mut limits = Vec::new();
                if let Some(min) = c.min {
                    limits.push(format!("at least {min}"));
                }
                if let Some(max) = c.max {
                    limits.push(format!("at most {max}"));
                }
                if let Some(p) = &c.pattern {
                    limits.push(format!("matches `{}`", p.replace('|', "\\|")));
                }
                if !limits.is_empty() {
                    description = format!("{description} ({})", limits.join(", "))
                        .trim_start()
                        .to_owned();
                }
                let _ = writeln!(
                    s,
                    "| `{k}` | {} | {} | {} | {env} | {default} | {description} |",
                    c.ty.as_str(),
                    if c.required { "yes" } else { "no" },
                    if c.secret { "yes" } else { "no" },
                );
            }
        }
        let d = &self.defaults;
        let _ = writeln!(s, "\n## Host defaults\n");
        let _ = writeln!(s, "| setting | value |\n|---|---|");
        let _ = writeln!(s, "| record TTL | {} s |", d.ttl);
        let _ = writeln!(s, "| propagation timeout | {} s |", d.propagation_timeout_s);
        let _ = writeln!(
            s,
            "| longest polling interval | {} s |",
            d.polling_interval_s
        );
        let _ = writeln!(s, "| challenges at once | {} |", d.max_concurrency);
        let _ = writeln!(s, "| timeout of one call | {} s |", d.call_timeout_s);
        let _ = writeln!(s, "\n## Example\n\n```sh");
        let mut cmd = String::from("certsmith issue -d example.com");
        if self.supports(ChallengeType::Dns01) {
            cmd.push_str(" -d '*.example.com'");
        }
        let _ = write!(cmd, " --solver {}", self.code);
        for (k, c) in &self.config {
            if c.required && c.env.is_none() {
                let _ = write!(cmd, " --solver-opt {k}=...");
            }
        }
        for c in self.config.values() {
            if let (true, Some(e)) = (c.required, &c.env) {
                cmd = format!("{e}=... {cmd}");
            }
        }
        let _ = writeln!(s, "{cmd}\n```");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
code = "cloudflare"
name = "Cloudflare DNS"
version = "0.1.0"
description = "d"
challenge_types = ["dns-01"]

[config.api_token]
type = "string"
required = true
secret = true
env = "CLOUDFLARE_API_TOKEN"

[config.ttl]
type = "integer"
default = 120

[defaults]
propagation_timeout_s = 300
"#;

    #[test]
    fn parses_sample() {
        let m = Manifest::parse(SAMPLE).expect("valid");
        assert_eq!(m.code, "cloudflare");
        assert!(m.supports(ChallengeType::Dns01));
        assert!(!m.supports(ChallengeType::Http01));
        assert!(m.config["api_token"].secret);
        assert_eq!(m.defaults.propagation_timeout_s, 300);
        assert_eq!(
            m.defaults.polling_interval_s, 2,
            "unset defaults keep theirs"
        );
        assert!(!m.in_process, "a plugin that says nothing is journaled");
        let own = SAMPLE.replace(
            "challenge_types = [\"dns-01\"]",
            "challenge_types = [\"dns-01\"]\nin_process = true",
        );
        assert!(Manifest::parse(&own).expect("valid").in_process);
    }

    #[test]
    fn rejects_bad_manifests() {
        let bad_code = SAMPLE.replace("\"cloudflare\"", "\"Cloud Flare\"");
        assert!(matches!(
            Manifest::parse(&bad_code),
            Err(ManifestError::BadCode(_))
        ));
        let no_types = SAMPLE.replace("[\"dns-01\"]", "[]");
        assert!(matches!(
            Manifest::parse(&no_types),
            Err(ManifestError::NoChallengeTypes)
        ));
        let bad_default = SAMPLE.replace("default = 120", "default = \"x\"");
        assert!(matches!(
            Manifest::parse(&bad_default),
            Err(ManifestError::BadDefault { .. })
        ));
        let min_on_string = SAMPLE.replace("secret = true", "secret = true\nmin = 1");
        assert!(matches!(
            Manifest::parse(&min_on_string),
            Err(ManifestError::BadConstraint { .. })
        ));
        let default_low = SAMPLE.replace("default = 120", "default = 120\nmin = 300");
        assert!(matches!(
            Manifest::parse(&default_low),
            Err(ManifestError::DefaultOutOfRange { .. })
        ));
        let bad_type = SAMPLE.replace("type = \"integer\"", "type = \"float\"");
        assert!(matches!(
            Manifest::parse(&bad_type),
            Err(ManifestError::Toml(_))
        ));
    }

    #[test]
    fn constraints_check_values_without_naming_them() {
        let text = SAMPLE.replace("default = 120", "default = 120\nmin = 30\nmax = 86400")
            + "\n[config.base]\ntype = \"string\"\npattern = \"https://*\"\n";
        let m = Manifest::parse(&text).expect("valid");
        let ttl = &m.config["ttl"];
        assert_eq!(ttl.default, Some(ConfigValue::Integer(120)));
        assert_eq!(ttl.check(&ConfigValue::Integer(30)), Ok(()));
        assert_eq!(
            ttl.check(&ConfigValue::Integer(29)),
            Err(ValueError::BelowMin { min: 30 })
        );
        assert_eq!(
            ttl.check(&ConfigValue::Integer(86401)),
            Err(ValueError::AboveMax { max: 86400 })
        );
        let base = &m.config["base"];
        assert!(base.check(&ConfigValue::String("https://x".into())).is_ok());
        let e = base
            .check(&ConfigValue::String("http://hunter2".into()))
            .expect_err("no match");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let md = m.to_markdown();
        assert!(md.contains("(at least 30, at most 86400)"), "{md}");
        assert!(md.contains("matches `https://*`"), "{md}");
    }

    #[test]
    fn globs_match_whole_values() {
        for (p, t, ok) in [
            ("https://*", "https://a.b/c", true),
            ("https://*", "http://a", false),
            ("??-*", "eu-west-1", true),
            ("??-*", "e-west", false),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("a*b*c", "abbbc", true),
            ("a*b*c", "acb", false),
            ("", "", true),
            ("*", "", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(p, t), ok, "{p} ~ {t}");
        }
    }

    #[test]
    fn config_values_print_as_toml() {
        let m = Manifest::parse(
            &(SAMPLE.to_owned()
                + "\n[config.listen]\ntype = \"string_list\"\ndefault = [\"[::]:80\", \"0.0.0.0:80\"]\n[config.on]\ntype = \"boolean\"\ndefault = true\n"),
        )
        .expect("valid");
        assert_eq!(
            m.config["listen"].default.as_ref().map(ToString::to_string),
            Some(r#"["[::]:80", "0.0.0.0:80"]"#.to_owned())
        );
        assert_eq!(m.config["on"].default, Some(ConfigValue::Boolean(true)));
        assert_eq!(
            serde_json::to_value(&m.config["ttl"].default).expect("json"),
            serde_json::json!(120)
        );
    }
}
