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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    pub default: Option<toml::Value>,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// Host-side tuning for a plugin, with the values used when it says nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
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
    /// The TOML did not parse or did not match the schema.
    #[error("plugin.toml is malformed: {0}")]
    Toml(#[from] toml::de::Error),
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
}

impl Manifest {
    /// Parses and checks a `plugin.toml`.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text)?;
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
            if let Some(d) = &spec.default {
                if spec.required {
                    return Err(ManifestError::RequiredWithDefault(key.clone()));
                }
                if !value_has_type(d, spec.ty) {
                    return Err(ManifestError::BadDefault {
                        key: key.clone(),
                        ty: spec.ty.as_str(),
                    });
                }
            }
        }
        Ok(m)
    }

    /// Whether the plugin can answer `ty`.
    pub fn supports(&self, ty: ChallengeType) -> bool {
        self.challenge_types.contains(&ty)
    }
}

/// Whether a TOML value has the given config type.
pub fn value_has_type(v: &toml::Value, ty: ConfigType) -> bool {
    match (ty, v) {
        (ConfigType::String, toml::Value::String(_)) => true,
        (ConfigType::Integer, toml::Value::Integer(_)) => true,
        (ConfigType::Boolean, toml::Value::Boolean(_)) => true,
        (ConfigType::StringList, toml::Value::Array(a)) => {
            a.iter().all(|x| matches!(x, toml::Value::String(_)))
        }
        _ => false,
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
                let _ = writeln!(
                    s,
                    "| `{k}` | {} | {} | {} | {env} | {default} | {} |",
                    c.ty.as_str(),
                    if c.required { "yes" } else { "no" },
                    if c.secret { "yes" } else { "no" },
                    c.description.replace('|', "\\|").replace('\n', " ")
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
        let bad_type = SAMPLE.replace("type = \"integer\"", "type = \"float\"");
        assert!(matches!(
            Manifest::parse(&bad_type),
            Err(ManifestError::Toml(_))
        ));
    }
}
