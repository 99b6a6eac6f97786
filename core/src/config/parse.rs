//! Reading `certsmith.toml` into a typed model of the file.
//!
//! The toml crate parses the text into a tree that keeps the span of every
//! key and value ([`DeTable`]); this module walks that tree with the shape
//! of the file in hand (which tables and keys exist, and the type of each
//! value) and reports, at the key or value concerned, what does not fit:
//! an unknown key (with the nearest known one), a value of the wrong type,
//! a missing key. Walking the tree ourselves, rather than deriving
//! `Deserialize`, is what lets every error carry its key path and all of
//! them be reported at once: serde stops at the first, and says what is
//! wrong only in English prose.
//!
//! What the values mean (a URL, a duration, a domain) is `check.rs`'s
//! business; the model keeps each value's span for it.

use std::ops::Range;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostics::{Diagnostics, Expected, found, join};

/// The top-level keys.
const FILE_KEYS: &[&str] = &["defaults", "plugin_dirs", "solvers", "certificate", "store"];

/// The keys of `[defaults]`.
const DEFAULTS_KEYS: &[&str] = &[
    "server",
    "ca_cert",
    "email",
    "agree_tos",
    "eab_kid",
    "eab_hmac_key",
    "key_type",
    "state_dir",
    "plugin_dirs",
    "concurrency",
    "renew_before",
    "solver",
    "deploy_hook",
    "deploy_hook_timeout",
    "pre_hook",
    "post_hook",
    "hook_timeout",
    "dns_resolvers",
    "propagation_servers",
    "propagation_timeout",
    "propagation_check",
    "follow_cname",
];

/// The keys of a `[[certificate]]`.
const CERT_KEYS: &[&str] = &[
    "name",
    "domains",
    "solver",
    "solvers",
    "solver_options",
    "key_type",
    "deploy_hook",
    "pre_hook",
    "post_hook",
    "hook_timeout",
    "renew_before",
    "propagation_check",
    "challenges",
    "reuse_key",
    "preferred_chain",
    "profile",
    "csr",
];

/// A list of strings, each with its span.
pub(super) type RawList = Spanned<Vec<Spanned<String>>>;

/// `solvers = { "<name>" = "<solver>" }` as written: each name and
/// solver with its span.
pub(super) type RawNameSolvers = Vec<(Spanned<String>, Spanned<String>)>;

/// Solver options as written: each key with its span, each value as the
/// plugin will get it.
pub(super) type RawOptions = Vec<(Spanned<String>, toml::Value)>;

/// The whole file.
#[derive(Default)]
pub(super) struct RawFile {
    pub(super) defaults: RawDefaults,
    /// Also accepted at the top level (as `certsmith issue` has always read it).
    pub(super) plugin_dirs: Option<RawList>,
    /// `[solvers.<code>]`, by code.
    pub(super) solvers: Vec<(String, Spanned<RawOptions>)>,
    pub(super) certificate: Vec<Spanned<RawCert>>,
    /// `[store] url`.
    pub(super) store_url: Option<Spanned<String>>,
}

/// `[defaults]`.
#[derive(Default)]
pub(super) struct RawDefaults {
    pub(super) server: Option<Spanned<String>>,
    pub(super) ca_cert: Option<Spanned<String>>,
    pub(super) email: Option<Spanned<String>>,
    pub(super) agree_tos: bool,
    pub(super) eab_kid: Option<Spanned<String>>,
    pub(super) eab_hmac_key: Option<Spanned<String>>,
    pub(super) key_type: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) plugin_dirs: Option<RawList>,
    /// Wider than any TOML integer, so that the range check, not the
    /// reading, reports one that is too large.
    pub(super) concurrency: Option<Spanned<i128>>,
    pub(super) renew_before: Option<Spanned<String>>,
    pub(super) solver: Option<Spanned<String>>,
    pub(super) deploy_hook: Option<Spanned<String>>,
    pub(super) deploy_hook_timeout: Option<Spanned<String>>,
    pub(super) pre_hook: Option<Spanned<String>>,
    pub(super) post_hook: Option<Spanned<String>>,
    pub(super) hook_timeout: Option<Spanned<String>>,
    pub(super) dns_resolvers: Option<RawList>,
    pub(super) propagation_servers: Option<RawList>,
    pub(super) propagation_timeout: Option<Spanned<String>>,
    pub(super) propagation_check: Option<Spanned<String>>,
    pub(super) follow_cname: Option<bool>,
}

/// One `[[certificate]]`.
pub(super) struct RawCert {
    /// 1-based, in file order.
    pub(super) index: usize,
    pub(super) name: Option<Spanned<String>>,
    pub(super) domains: RawList,
    pub(super) solver: Option<Spanned<String>>,
    /// `solvers = { "<name>" = "<solver>" }`: the solver of each name.
    pub(super) solvers: Option<Spanned<RawNameSolvers>>,
    pub(super) solver_options: Option<Spanned<RawOptions>>,
    pub(super) key_type: Option<Spanned<String>>,
    pub(super) deploy_hook: Option<Spanned<String>>,
    pub(super) pre_hook: Option<Spanned<String>>,
    pub(super) post_hook: Option<Spanned<String>>,
    pub(super) hook_timeout: Option<Spanned<String>>,
    pub(super) renew_before: Option<Spanned<String>>,
    pub(super) propagation_check: Option<Spanned<String>>,
    pub(super) challenges: Option<RawList>,
    pub(super) reuse_key: Option<bool>,
    pub(super) preferred_chain: Option<Spanned<String>>,
    pub(super) profile: Option<Spanned<String>>,
    pub(super) csr: Option<Spanned<String>>,
}

/// Reads `text` into the model, reporting to `diagnostics` what does not
/// fit. When anything is reported, the model is incomplete and must not be
/// checked further.
pub(super) fn read(text: &str, diagnostics: &mut Diagnostics<'_>) -> RawFile {
    let (tree, errors) = DeTable::parse_recoverable(text);
    if let Some(e) = errors.first() {
        // The first error only: the parser's recovery makes the others
        // mostly echoes of it.
        diagnostics.syntax(e, &tree);
        return RawFile::default();
    }
    Reader { diagnostics }.file(&tree)
}

/// A table being read: its entries, its span, its key path in messages.
struct Table<'t, 'i> {
    entries: &'t DeTable<'i>,
    span: Range<usize>,
    path: String,
    /// Known keys that an unknown key here is probably a misspelling of:
    /// those are not reported missing as well.
    meant: Vec<&'static str>,
}

impl<'t, 'i> Table<'t, 'i> {
    fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

struct Reader<'d, 'a> {
    diagnostics: &'d mut Diagnostics<'a>,
}

impl Reader<'_, '_> {
    fn file(&mut self, tree: &Spanned<DeTable<'_>>) -> RawFile {
        let root = self.table(tree.get_ref(), tree.span(), String::new(), FILE_KEYS);
        let defaults = match self.subtable(&root, "defaults", DEFAULTS_KEYS) {
            Some(d) => self.defaults(&d),
            None => RawDefaults::default(),
        };
        let store_url = match self.subtable(&root, "store", &["url"]) {
            Some(t) => self.string(&t, "url"),
            None => None,
        };
        RawFile {
            defaults,
            store_url,
            plugin_dirs: self.strings(&root, "plugin_dirs"),
            solvers: self.solvers(&root),
            certificate: self.certificates(&root),
        }
    }

    fn defaults(&mut self, d: &Table<'_, '_>) -> RawDefaults {
        RawDefaults {
            server: self.string(d, "server"),
            ca_cert: self.string(d, "ca_cert"),
            email: self.string(d, "email"),
            agree_tos: self.boolean(d, "agree_tos").unwrap_or(false),
            eab_kid: self.string(d, "eab_kid"),
            eab_hmac_key: self.string(d, "eab_hmac_key"),
            key_type: self.string(d, "key_type"),
            state_dir: self.string(d, "state_dir"),
            plugin_dirs: self.strings(d, "plugin_dirs"),
            concurrency: self.integer(d, "concurrency"),
            renew_before: self.string(d, "renew_before"),
            solver: self.string(d, "solver"),
            deploy_hook: self.string(d, "deploy_hook"),
            deploy_hook_timeout: self.string(d, "deploy_hook_timeout"),
            pre_hook: self.string(d, "pre_hook"),
            post_hook: self.string(d, "post_hook"),
            hook_timeout: self.string(d, "hook_timeout"),
            dns_resolvers: self.strings(d, "dns_resolvers"),
            propagation_servers: self.strings(d, "propagation_servers"),
            propagation_timeout: self.string(d, "propagation_timeout"),
            propagation_check: self.string(d, "propagation_check"),
            follow_cname: self.boolean(d, "follow_cname"),
        }
    }

    fn solvers(&mut self, root: &Table<'_, '_>) -> Vec<(String, Spanned<RawOptions>)> {
        let Some(t) = self.subtable(root, "solvers", &[]) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (code, v) in t.entries.iter() {
            let key = t.key(code.get_ref());
            match v.get_ref() {
                DeValue::Table(options) => {
                    out.push((
                        code.get_ref().to_string(),
                        self.options(options, v.span(), &key),
                    ));
                }
                other => {
                    self.diagnostics
                        .wrong_type(v.span(), key, Expected::Table, found(other));
                }
            }
        }
        out
    }

    fn certificates(&mut self, root: &Table<'_, '_>) -> Vec<Spanned<RawCert>> {
        let Some(v) = root.get("certificate") else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.diagnostics.wrong_type(
                v.span(),
                root.key("certificate"),
                Expected::TableList,
                found(v.get_ref()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let index = i + 1;
            match item.get_ref() {
                DeValue::Table(entries) => {
                    if let Some(c) = self.cert(index, entries, item.span()) {
                        out.push(Spanned::new(item.span(), c));
                    }
                }
                other => self.diagnostics.wrong_type(
                    item.span(),
                    format!("certificate[{index}]"),
                    Expected::Table,
                    found(other),
                ),
            }
        }
        out
    }

    /// One certificate; `None` when `domains` is missing or unreadable.
    fn cert(&mut self, index: usize, entries: &DeTable<'_>, span: Range<usize>) -> Option<RawCert> {
        let t = self.table(entries, span, format!("certificate[{index}]"), CERT_KEYS);
        let csr = self.string(&t, "csr");
        // With a CSR the names come from it: `domains` may be left out.
        let domains = match self.strings(&t, "domains") {
            None if csr.is_some() && t.get("domains").is_none() => {
                Some(Spanned::new(t.span.clone(), Vec::new()))
            }
            other => other,
        };
        if t.get("domains").is_none() && !t.meant.contains(&"domains") && csr.is_none() {
            self.diagnostics
                .missing_key(t.span.clone(), t.key("domains"), "domains");
        }
        let solver_options = match t.get("solver_options") {
            Some(v) => match v.get_ref() {
                DeValue::Table(options) => {
                    Some(self.options(options, v.span(), &t.key("solver_options")))
                }
                other => {
                    self.diagnostics.wrong_type(
                        v.span(),
                        t.key("solver_options"),
                        Expected::Table,
                        found(other),
                    );
                    None
                }
            },
            None => None,
        };
        let solvers = match t.get("solvers") {
            Some(v) => match v.get_ref() {
                DeValue::Table(entries) => {
                    let key = t.key("solvers");
                    let mut out = Vec::new();
                    for (name, value) in entries.iter() {
                        match value.get_ref() {
                            DeValue::String(s) => out.push((
                                Spanned::new(name.span(), name.get_ref().to_string()),
                                Spanned::new(value.span(), s.to_string()),
                            )),
                            other => self.diagnostics.wrong_type(
                                value.span(),
                                join(&key, name.get_ref()),
                                Expected::String,
                                found(other),
                            ),
                        }
                    }
                    Some(Spanned::new(v.span(), out))
                }
                other => {
                    self.diagnostics.wrong_type(
                        v.span(),
                        t.key("solvers"),
                        Expected::Table,
                        found(other),
                    );
                    None
                }
            },
            None => None,
        };
        Some(RawCert {
            index,
            name: self.string(&t, "name"),
            solver: self.string(&t, "solver"),
            solvers,
            solver_options,
            key_type: self.string(&t, "key_type"),
            deploy_hook: self.string(&t, "deploy_hook"),
            pre_hook: self.string(&t, "pre_hook"),
            post_hook: self.string(&t, "post_hook"),
            hook_timeout: self.string(&t, "hook_timeout"),
            renew_before: self.string(&t, "renew_before"),
            propagation_check: self.string(&t, "propagation_check"),
            challenges: self.strings(&t, "challenges"),
            reuse_key: self.boolean(&t, "reuse_key"),
            preferred_chain: self.string(&t, "preferred_chain"),
            profile: self.string(&t, "profile"),
            csr,
            domains: domains?,
        })
    }

    /// `entries` as a table whose keys must be among `known`; an empty
    /// `known` means any key is fine.
    fn table<'t, 'i>(
        &mut self,
        entries: &'t DeTable<'i>,
        span: Range<usize>,
        path: String,
        known: &[&'static str],
    ) -> Table<'t, 'i> {
        let mut meant = Vec::new();
        if !known.is_empty() {
            for (k, _) in entries.iter() {
                let name: &str = k.get_ref();
                if !known.contains(&name) {
                    self.diagnostics
                        .unknown_key(k.span(), join(&path, name), name, known);
                    meant.extend(crate::plugin::nearest(name, known.iter().copied()));
                }
            }
        }
        Table {
            entries,
            span,
            path,
            meant,
        }
    }

    /// Key `key` of `t`, which must be a table with keys among `known`.
    fn subtable<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        key: &str,
        known: &[&'static str],
    ) -> Option<Table<'t, 'i>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Table(entries) => Some(self.table(entries, v.span(), t.key(key), known)),
            other => {
                self.diagnostics
                    .wrong_type(v.span(), t.key(key), Expected::Table, found(other));
                None
            }
        }
    }

    fn string(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Spanned<String>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Spanned::new(v.span(), s.to_string())),
            other => {
                self.diagnostics
                    .wrong_type(v.span(), t.key(key), Expected::String, found(other));
                None
            }
        }
    }

    fn boolean(&mut self, t: &Table<'_, '_>, key: &str) -> Option<bool> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.diagnostics
                    .wrong_type(v.span(), t.key(key), Expected::Bool, found(other));
                None
            }
        }
    }

    fn integer(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Spanned<i128>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Spanned::new(v.span(), n)),
                Err(_) => {
                    self.diagnostics.unrepresentable(v.span(), t.key(key));
                    None
                }
            },
            other => {
                self.diagnostics
                    .wrong_type(v.span(), t.key(key), Expected::Integer, found(other));
                None
            }
        }
    }

    /// A list of strings; each element of another type is reported at the
    /// element.
    fn strings(&mut self, t: &Table<'_, '_>, key: &str) -> Option<RawList> {
        let v = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.diagnostics.wrong_type(
                v.span(),
                t.key(key),
                Expected::StringList,
                found(v.get_ref()),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Spanned::new(item.span(), s.to_string())),
                other => {
                    ok = false;
                    self.diagnostics.wrong_type(
                        item.span(),
                        t.key(key),
                        Expected::String,
                        found(other),
                    );
                }
            }
        }
        ok.then(|| Spanned::new(v.span(), out))
    }

    /// A solver's options: any keys, any values (the plugin's manifest says
    /// which are valid, later).
    fn options(
        &mut self,
        entries: &DeTable<'_>,
        span: Range<usize>,
        path: &str,
    ) -> Spanned<RawOptions> {
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries.iter() {
            match toml::Value::deserialize(v.clone().into_deserializer()) {
                Ok(value) => out.push((Spanned::new(k.span(), k.get_ref().to_string()), value)),
                Err(_) => {
                    self.diagnostics
                        .unrepresentable(v.span(), join(path, k.get_ref()));
                }
            }
        }
        Spanned::new(span, out)
    }
}
