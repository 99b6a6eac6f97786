//! A plugin's configuration: assembled from every source, checked against
//! the manifest before the plugin sees it, and redacted wherever it could leak.
//!
//! Sources, highest precedence first:
//! 1. `--solver-opt KEY=VALUE` on the command line;
//! 2. the environment variable the manifest names for the key (`env`), then
//!    `<ENV>_FILE`, a file holding the value (for container secrets);
//! 3. the config file's `[solvers.<code>]` table;
//! 4. the manifest's `default`.
//!
//! Checking here rather than in the plugin means every plugin gets the same
//! precise messages (unknown key with the nearest valid one, missing key with
//! its env var, wrong type) and secrets are known to the host, which redacts
//! them from plugin errors and logs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::RwLock;

use certsmith_plugin_api::{ConfigKey, ConfigType, ConfigValue, Manifest};

use super::error::PluginHostError;

/// Where option values come from.
#[allow(clippy::type_complexity)]
#[derive(Clone, Copy, Default)]
pub struct ConfigSources<'a> {
    /// `--solver-opt` pairs, in order.
    pub cli: &'a [(String, String)],
    /// The config file's `[solvers.<code>]` table.
    pub file: Option<&'a toml::Table>,
    /// Looks up an environment variable; `None` uses the process environment.
    pub env: Option<&'a dyn Fn(&str) -> Option<String>>,
}

impl fmt::Debug for ConfigSources<'_> {
    // Values may be secrets; only the keys are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSources")
            .field("cli", &self.cli.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("file", &self.file.map(|t| t.keys().collect::<Vec<_>>()))
            .finish_non_exhaustive()
    }
}

impl ConfigSources<'_> {
    fn env_var(&self, name: &str) -> Option<String> {
        match self.env {
            Some(f) => f(name),
            None => std::env::var(name).ok(),
        }
    }
}

/// Parses `--solver-opt KEY=VALUE`.
pub fn parse_solver_opt(arg: &str) -> Result<(String, String), PluginHostError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(PluginHostError::BadOptionSyntax(arg.to_owned())),
    }
}

/// A validated configuration, ready to hand to the plugin.
#[derive(Clone)]
pub struct ResolvedConfig {
    code: String,
    values: serde_json::Map<String, serde_json::Value>,
    explicit: BTreeSet<String>,
    sources: BTreeMap<String, String>,
    secret_keys: BTreeSet<String>,
    redactor: Redactor,
}

impl fmt::Debug for ResolvedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.values {
            if self.secret_keys.contains(k) {
                m.entry(k, &"[redacted]");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl ResolvedConfig {
    /// The JSON object handed to the plugin's `create`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.values).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// One value.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.values.get(key)
    }

    /// The solver code this configuration belongs to.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Options set explicitly (not defaults) and not secret: what may be
    /// written to `lineage.toml` and shown to the user.
    pub fn public_options(&self) -> BTreeMap<String, toml::Value> {
        self.values
            .iter()
            .filter(|(k, _)| self.explicit.contains(*k) && !self.secret_keys.contains(*k))
            .filter_map(|(k, v)| json_to_toml(v).map(|t| (k.clone(), t)))
            .collect()
    }

    /// Where each explicitly set option came from, secret or not (never
    /// a value): `flag`, `env:VAR` (`env:VAR_FILE` for a file the variable
    /// names) or `config`.
    pub fn option_sources(&self) -> BTreeMap<String, String> {
        self.sources.clone()
    }

    /// The redactor for this configuration's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    Some(match v {
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => toml::Value::Integer(n.as_i64()?),
        serde_json::Value::Array(a) => {
            toml::Value::Array(a.iter().filter_map(json_to_toml).collect())
        }
        _ => return None,
    })
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Whether a config-file value has the given type.
fn toml_has_type(v: &toml::Value, ty: ConfigType) -> bool {
    match (ty, v) {
        (ConfigType::String, toml::Value::String(_))
        | (ConfigType::Integer, toml::Value::Integer(_))
        | (ConfigType::Boolean, toml::Value::Boolean(_)) => true,
        (ConfigType::StringList, toml::Value::Array(a)) => {
            a.iter().all(|x| matches!(x, toml::Value::String(_)))
        }
        _ => false,
    }
}

fn type_words(ty: ConfigType) -> &'static str {
    match ty {
        ConfigType::String => "a string",
        ConfigType::Integer => "an integer",
        ConfigType::Boolean => "true or false",
        ConfigType::StringList => "a list of strings",
        _ => "a value of another type",
    }
}

/// Parses a value given as text (command line, environment, file).
fn parse_text(
    code: &str,
    key: &str,
    spec: &ConfigKey,
    source_name: &str,
    text: &str,
) -> Result<serde_json::Value, PluginHostError> {
    let wrong = || PluginHostError::WrongType {
        code: code.to_owned(),
        key: key.to_owned(),
        source_name: source_name.to_owned(),
        expected: type_words(spec.ty),
        hint: if spec.secret {
            String::new()
        } else {
            format!(", got '{text}'")
        },
    };
    Ok(match spec.ty {
        ConfigType::String => serde_json::Value::String(text.to_owned()),
        ConfigType::Integer => {
            serde_json::Value::from(text.trim().parse::<i64>().map_err(|_| wrong())?)
        }
        ConfigType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => serde_json::Value::Bool(true),
            "false" | "0" | "no" | "off" => serde_json::Value::Bool(false),
            _ => return Err(wrong()),
        },
        ConfigType::StringList => serde_json::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| serde_json::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => return Err(wrong()),
    })
}

/// Assembles and validates a plugin's configuration.
pub fn resolve(
    manifest: &Manifest,
    sources: &ConfigSources<'_>,
) -> Result<ResolvedConfig, PluginHostError> {
    let code = manifest.code.as_str();
    let valid: Vec<String> = manifest.config.keys().cloned().collect();
    let unknown = |key: &str| PluginHostError::UnknownOption {
        code: code.to_owned(),
        key: key.to_owned(),
        suggestion: nearest(key, valid.iter().map(String::as_str)).map(str::to_owned),
        valid: valid.clone(),
    };

    let mut values = serde_json::Map::new();
    let mut explicit = BTreeSet::new();
    let mut origins = BTreeMap::new();

    // 1. Command line.
    for (key, text) in sources.cli {
        let spec = manifest.config.get(key).ok_or_else(|| unknown(key))?;
        let v = parse_text(code, key, spec, "--solver-opt", text)?;
        if spec.ty == ConfigType::StringList {
            // Repeating a list option appends, so `listen=a --solver-opt listen=b` works.
            if let Some(serde_json::Value::Array(prev)) = values.get_mut(key) {
                if let serde_json::Value::Array(more) = v {
                    prev.extend(more);
                }
                continue;
            }
        }
        values.insert(key.clone(), v);
        explicit.insert(key.clone());
        origins.insert(key.clone(), "flag".to_owned());
    }

    // 3. Config file, checked in full even where the CLI overrides, so a
    // typo in the file is reported rather than silently ignored.
    let mut from_file = BTreeMap::new();
    if let Some(table) = sources.file {
        for (key, v) in table {
            let spec = manifest.config.get(key).ok_or_else(|| unknown(key))?;
            // A single string where a list is expected is a list of one,
            // as on the command line (`listen = "127.0.0.1:80"`).
            let coerced;
            let v = match (spec.ty, v) {
                (ConfigType::StringList, toml::Value::String(one)) => {
                    coerced = toml::Value::Array(vec![toml::Value::String(one.clone())]);
                    &coerced
                }
                _ => v,
            };
            if !toml_has_type(v, spec.ty) {
                return Err(PluginHostError::WrongType {
                    code: code.to_owned(),
                    key: key.clone(),
                    source_name: format!("[solvers.{code}]"),
                    expected: type_words(spec.ty),
                    hint: String::new(),
                });
            }
            from_file.insert(key.clone(), toml_to_json(v));
        }
    }

    for (key, spec) in &manifest.config {
        if values.contains_key(key) {
            continue;
        }
        // 2. Environment, then <ENV>_FILE.
        if let Some(var) = &spec.env {
            let env = |name: &str| sources.env_var(name);
            let found =
                crate::envfile::var_or_file(var, &env).map_err(|e| PluginHostError::EnvFile {
                    var: e.var,
                    path: e.path,
                    source: e.source,
                })?;
            if let Some((from, text)) = found {
                values.insert(key.clone(), parse_text(code, key, spec, &from, &text)?);
                explicit.insert(key.clone());
                origins.insert(key.clone(), format!("env:{from}"));
                continue;
            }
        }
        // 3. Config file.
        if let Some(v) = from_file.remove(key) {
            values.insert(key.clone(), v);
            explicit.insert(key.clone());
            origins.insert(key.clone(), "config".to_owned());
            continue;
        }
        // 4. Default, or an error when required.
        if let Some(d) = &spec.default {
            values.insert(key.clone(), d.to_json());
        } else if spec.required {
            return Err(PluginHostError::MissingOption {
                code: code.to_owned(),
                key: key.clone(),
                env: spec.env.clone(),
            });
        }
    }

    // The manifest's `min`, `max` and `pattern`, before the plugin sees
    // anything (defaults were checked when the manifest was parsed).
    for (key, v) in &values {
        if let (Some(spec), Some(value)) = (manifest.config.get(key), ConfigValue::from_json(v)) {
            spec.check(&value)
                .map_err(|reason| PluginHostError::OutOfRange {
                    code: code.to_owned(),
                    key: key.clone(),
                    reason,
                })?;
        }
    }

    let secret_keys: BTreeSet<String> = manifest
        .config
        .iter()
        .filter(|(_, s)| s.secret)
        .map(|(k, _)| k.clone())
        .collect();
    let mut secrets = Vec::new();
    for k in &secret_keys {
        match values.get(k) {
            Some(serde_json::Value::String(s)) => secrets.push(s.clone()),
            Some(serde_json::Value::Array(a)) => {
                secrets.extend(a.iter().filter_map(|x| x.as_str().map(str::to_owned)))
            }
            Some(other) => secrets.push(other.to_string()),
            None => {}
        }
    }
    let redactor = Redactor::new(secrets);
    register_global(&redactor);
    Ok(ResolvedConfig {
        code: code.to_owned(),
        values,
        explicit,
        sources: origins,
        secret_keys,
        redactor,
    })
}

/// Replaces secret values in text with `[redacted]`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// Secrets shorter than this are not redacted: replacing every "a" in a
/// message would destroy it and protect nothing.
const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    /// A redactor for these values (short or empty ones are ignored).
    pub fn new(secrets: Vec<String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// `text` with every secret replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// Every secret any configuration in this process has resolved: plugin log
/// lines arrive without saying which instance sent them, so they are checked
/// against all.
static GLOBAL_SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

fn register_global(r: &Redactor) {
    let mut g = GLOBAL_SECRETS.write().unwrap_or_else(|p| p.into_inner());
    for s in &r.secrets {
        if !g.contains(s) {
            g.push(s.clone());
        }
    }
    g.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Redacts every secret known to this process.
pub(crate) fn redact_global(text: &str) -> String {
    let g = GLOBAL_SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_owned();
    for s in g.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a plausible typo (at most a third of the word's length, minimum 2).
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
code = "cf"
name = "CF"
version = "1"
challenge_types = ["dns-01"]
[config.api_token]
type = "string"
required = true
secret = true
env = "TEST_CF_TOKEN"
[config.ttl]
type = "integer"
default = 60
[config.zone_id]
type = "string"
[config.proxied]
type = "boolean"
[config.listen]
type = "string_list"
"#;

    fn manifest() -> Manifest {
        Manifest::parse(MANIFEST).expect("valid manifest")
    }

    fn env_none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn cli_values_are_typed_and_defaults_filled() {
        let cli = vec![
            ("api_token".to_owned(), "tok-1234".to_owned()),
            ("ttl".to_owned(), "120".to_owned()),
            ("proxied".to_owned(), "yes".to_owned()),
            ("listen".to_owned(), "a:1,b:2".to_owned()),
            ("listen".to_owned(), "c:3".to_owned()),
        ];
        let env: &dyn Fn(&str) -> Option<String> = &env_none;
        let cfg = resolve(
            &manifest(),
            &ConfigSources {
                cli: &cli,
                file: None,
                env: Some(env),
            },
        )
        .expect("valid");
        assert_eq!(cfg.get("ttl"), Some(&serde_json::json!(120)));
        assert_eq!(cfg.get("proxied"), Some(&serde_json::json!(true)));
        assert_eq!(
            cfg.get("listen"),
            Some(&serde_json::json!(["a:1", "b:2", "c:3"]))
        );
        let public = cfg.public_options();
        assert!(
            !public.contains_key("api_token"),
            "secret must not be public"
        );
        assert_eq!(public.get("ttl"), Some(&toml::Value::Integer(120)));
        assert!(!format!("{cfg:?}").contains("tok-1234"));
    }

    #[test]
    fn unknown_key_suggests_nearest() {
        let cli = vec![("api_tokn".to_owned(), "x".to_owned())];
        let err = resolve(
            &manifest(),
            &ConfigSources {
                cli: &cli,
                ..Default::default()
            },
        )
        .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("no option 'api_tokn'"), "{msg}");
        assert!(msg.contains("did you mean 'api_token'?"), "{msg}");
        assert!(err.is_usage());
    }

    #[test]
    fn missing_required_names_env_var() {
        let env: &dyn Fn(&str) -> Option<String> = &env_none;
        let err = resolve(
            &manifest(),
            &ConfigSources {
                env: Some(env),
                ..Default::default()
            },
        )
        .expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("'api_token'"), "{msg}");
        assert!(msg.contains("TEST_CF_TOKEN"), "{msg}");
        assert!(msg.contains("TEST_CF_TOKEN_FILE"), "{msg}");
    }

    #[test]
    fn env_file_variant_is_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tok");
        std::fs::write(&f, "from-file-secret\n").expect("write");
        let fpath = f.display().to_string();
        let env = move |k: &str| (k == "TEST_CF_TOKEN_FILE").then(|| fpath.clone());
        let env: &dyn Fn(&str) -> Option<String> = &env;
        let cfg = resolve(
            &manifest(),
            &ConfigSources {
                env: Some(env),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(
            cfg.get("api_token"),
            Some(&serde_json::json!("from-file-secret"))
        );
        assert_eq!(
            cfg.redactor().redact("bad token from-file-secret!"),
            "bad token [redacted]!"
        );
    }

    #[test]
    fn precedence_cli_then_env_then_file() {
        let file: toml::Table =
            toml::from_str("api_token = \"file-secret\"\nzone_id = \"z-file\"").expect("toml");
        let env = |k: &str| (k == "TEST_CF_TOKEN").then(|| "env-secret".to_owned());
        let env: &dyn Fn(&str) -> Option<String> = &env;
        let cfg = resolve(
            &manifest(),
            &ConfigSources {
                cli: &[],
                file: Some(&file),
                env: Some(env),
            },
        )
        .expect("valid");
        assert_eq!(cfg.get("api_token"), Some(&serde_json::json!("env-secret")));
        assert_eq!(cfg.get("zone_id"), Some(&serde_json::json!("z-file")));
        let cli = vec![("zone_id".to_owned(), "z-cli".to_owned())];
        let cfg = resolve(
            &manifest(),
            &ConfigSources {
                cli: &cli,
                file: Some(&file),
                env: Some(env),
            },
        )
        .expect("valid");
        assert_eq!(cfg.get("zone_id"), Some(&serde_json::json!("z-cli")));
    }

    #[test]
    fn wrong_types_never_echo_secrets() {
        let m = Manifest::parse(&MANIFEST.replace(
            "[config.ttl]\ntype = \"integer\"",
            "[config.ttl]\ntype = \"integer\"\nsecret = true",
        ))
        .expect("valid");
        let cli = vec![
            ("api_token".to_owned(), "t0k3n".to_owned()),
            ("ttl".to_owned(), "hunter22".to_owned()),
        ];
        let err = resolve(
            &m,
            &ConfigSources {
                cli: &cli,
                ..Default::default()
            },
        )
        .expect_err("wrong type");
        let msg = err.to_string();
        assert!(msg.contains("'ttl'") && msg.contains("an integer"), "{msg}");
        assert!(!msg.contains("hunter22"), "{msg}");

        let file: toml::Table = toml::from_str("ttl = \"sixty\"").expect("toml");
        let err = resolve(
            &manifest(),
            &ConfigSources {
                cli: &[("api_token".to_owned(), "t0k3n".to_owned())],
                file: Some(&file),
                env: None,
            },
        )
        .expect_err("wrong type in file");
        assert!(err.to_string().contains("[solvers.cf]"), "{err}");
    }

    #[test]
    fn a_string_in_the_file_is_a_list_of_one() {
        let file: toml::Table =
            toml::from_str("api_token = \"t0k3n\"\nlisten = \"127.0.0.1:80\"").expect("toml");
        let cfg = resolve(
            &manifest(),
            &ConfigSources {
                file: Some(&file),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(
            cfg.get("listen"),
            Some(&serde_json::json!(["127.0.0.1:80"]))
        );
    }

    #[test]
    fn nearest_finds_typos_only() {
        let c = ["cloudflare", "route53", "rfc2136", "standalone", "webroot"];
        assert_eq!(nearest("cloudflar", c), Some("cloudflare"));
        assert_eq!(nearest("standalon", c), Some("standalone"));
        assert_eq!(nearest("xyz", c), None);
    }

    #[test]
    fn solver_opt_syntax() {
        assert_eq!(
            parse_solver_opt("a=b=c").expect("ok"),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_solver_opt("novalue").is_err());
        assert!(parse_solver_opt("=v").is_err());
    }
}
