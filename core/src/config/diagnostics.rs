//! What is wrong with a config file, where, and how to fix it.
//!
//! Both passes over the file report here, in terms of the byte spans the
//! toml crate keeps for every key and value; this module turns a span into
//! a line and column, and a kind of problem into a message and a hint. The
//! wording of the structural errors (unknown key, wrong type, missing key,
//! syntax) lives here so that it is the same wherever the problem is found.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

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
    /// The file is not valid TOML, or its shape is not that of a config
    /// file: an unknown key, a value of the wrong type, a missing key.
    #[error("{}:{pos}: {key}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where.
        pos: Pos,
        /// The key at fault (`defaults.server`), or `(file)` when no key
        /// can be blamed.
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
            ConfigError::Read { .. } => Some("check that the file exists and is readable"),
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

/// The type a key's value must have, as messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expected {
    String,
    Bool,
    Integer,
    StringList,
    Table,
    TableList,
}

impl Expected {
    fn describe(self) -> &'static str {
        match self {
            Expected::String => "a string",
            Expected::Bool => "true or false",
            Expected::Integer => "an integer",
            Expected::StringList => "a list of strings",
            Expected::Table => "a table",
            Expected::TableList => "an array of tables",
        }
    }
}

/// The type of a value as written, for "expected X, found Y". Never the
/// value itself: it may be a secret.
pub(super) fn found(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// `table.key`, or `key` at the top level.
pub(super) fn join(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    }
}

/// The errors found so far in one file, and what turns spans into
/// positions.
pub(super) struct Diagnostics<'a> {
    path: &'a Path,
    lines: LineIndex<'a>,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        Diagnostics {
            path,
            lines: LineIndex::new(text),
            errors: Vec::new(),
        }
    }

    /// Where `span` starts.
    pub(super) fn pos(&self, span: Range<usize>) -> Pos {
        self.lines.pos_of(span.start)
    }

    /// How many errors have been found.
    pub(super) fn count(&self) -> usize {
        self.errors.len()
    }

    /// The errors found so far, in file order, if there are any; the list
    /// is left empty for the next pass.
    pub(super) fn take(&mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(ConfigError::pos);
        Err(ConfigErrors { errors })
    }

    /// A value that is well-formed but not acceptable. An empty `hint`
    /// means none.
    /// An invalid value at `pos` (when only its position is kept).
    pub(super) fn invalid_at(
        &mut self,
        pos: Pos,
        key: impl Into<String>,
        message: String,
        hint: &str,
    ) {
        self.errors.push(ConfigError::Invalid {
            path: self.path.to_owned(),
            pos,
            key: key.into(),
            message,
            hint: (!hint.is_empty()).then(|| hint.to_owned()),
        });
    }

    pub(super) fn invalid(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: String,
        hint: &str,
    ) {
        self.errors.push(ConfigError::Invalid {
            path: self.path.to_owned(),
            pos: self.pos(span),
            key: key.into(),
            message,
            hint: (!hint.is_empty()).then(|| hint.to_owned()),
        });
    }

    fn structural(&mut self, pos: Pos, key: String, message: String, hint: Option<String>) {
        self.errors.push(ConfigError::Syntax {
            path: self.path.to_owned(),
            pos,
            key,
            message,
            hint,
        });
    }

    /// Key `name` (at `span`, path `key`) is not one of `known`.
    pub(super) fn unknown_key(
        &mut self,
        span: Range<usize>,
        key: String,
        name: &str,
        known: &[&str],
    ) {
        let mut message = format!("unknown key `{name}`");
        let hint = match crate::plugin::nearest(name, known.iter().copied()) {
            Some(near) => {
                message.push_str(&format!(": did you mean `{near}`?"));
                format!("rename `{name}` to `{near}`")
            }
            None => format!("valid keys here: {}", known.join(", ")),
        };
        self.structural(self.pos(span), key, message, Some(hint));
    }

    /// The value at `span` (of key `key`) is `found`, not `expected`.
    pub(super) fn wrong_type(
        &mut self,
        span: Range<usize>,
        key: String,
        expected: Expected,
        found: &str,
    ) {
        let message = format!(
            "invalid type: expected {}, found {found}",
            expected.describe()
        );
        let hint = type_hint(&key, expected);
        self.structural(self.pos(span), key, message, hint);
    }

    /// The table at `span` lacks key `name` (path `key`).
    pub(super) fn missing_key(&mut self, span: Range<usize>, key: String, name: &str) {
        let hint = match name {
            "domains" => "add domains = [\"example.com\"]".to_owned(),
            _ => format!("add {name} = ..."),
        };
        self.structural(
            self.pos(span),
            key,
            format!("missing key `{name}`"),
            Some(hint),
        );
    }

    /// A value the toml crate parsed but cannot represent (in practice an
    /// integer beyond 64 bits). The value is not repeated: solver options
    /// may be secrets.
    pub(super) fn unrepresentable(&mut self, span: Range<usize>, key: String) {
        self.structural(
            self.pos(span),
            key,
            "invalid value: TOML cannot represent it".to_owned(),
            Some("TOML integers must fit in 64 bits".to_owned()),
        );
    }

    /// The toml crate's syntax error, blamed on the key whose key or value
    /// it falls in, as far as the tree it could still build tells.
    pub(super) fn syntax(&mut self, e: &toml::de::Error, tree: &Spanned<DeTable<'_>>) {
        let span = e.span().unwrap_or(0..0);
        let pos = self.pos(span.clone());
        let key = blame(tree, span, &self.lines);
        let hint = format!(
            "check the TOML syntax at line {} and above: quotes, commas, brackets",
            pos.line
        );
        let key = if key.is_empty() {
            "(file)".to_owned()
        } else {
            key
        };
        self.structural(pos, key, e.message().trim().to_owned(), Some(hint));
    }
}

/// What to write instead of a value of the wrong type.
fn type_hint(path: &str, expected: Expected) -> Option<String> {
    if expected == Expected::TableList || path.starts_with("certificate[") && !path.contains('.') {
        return Some("start each certificate with a [[certificate]] line".to_owned());
    }
    if path == "defaults" {
        return Some("[defaults] is a table: a [defaults] line, then key = value lines".to_owned());
    }
    if path == "solvers" || path.starts_with("solvers.") {
        return Some(
            "a solver's options are a table: a [solvers.CODE] line, then key = value lines"
                .to_owned(),
        );
    }
    let key = path.rsplit('.').next().unwrap_or(path);
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

/// The key to blame for a syntax error at `span`, from the tree the parser
/// built up to and around the error: the innermost key whose name or value
/// covers the error; else, in the `[table]` the error is under, the key the
/// error names (a duplicate) or the key assigned earlier on the error's
/// line; else that table. Empty when nothing can be blamed.
fn blame(tree: &Spanned<DeTable<'_>>, span: Range<usize>, lines: &LineIndex<'_>) -> String {
    let text = lines.text;
    let at = span.start;
    if let Some(key) = covering(tree.get_ref(), "", at) {
        return key;
    }
    let (path, table) =
        header_before(tree.get_ref(), text, at).unwrap_or((String::new(), tree.get_ref()));
    let named = text
        .get(span)
        .unwrap_or("")
        .trim()
        .trim_matches(['"', '\'']);
    if !named.is_empty() && table.iter().any(|(k, _)| k.get_ref() == named) {
        return join(&path, named);
    }
    let line = lines.pos_of(at).line;
    let earlier_on_line = table
        .iter()
        .filter(|(k, _)| k.span().start <= at && lines.pos_of(k.span().start).line == line)
        .max_by_key(|(k, _)| k.span().start);
    match earlier_on_line {
        Some((k, _)) => join(&path, k.get_ref()),
        None => path,
    }
}

/// The innermost key of `table` (path `path`) whose name or value covers
/// byte `at`. The end of a span counts as covered: an unclosed string, list
/// or header ends where the error is found.
fn covering(table: &DeTable<'_>, path: &str, at: usize) -> Option<String> {
    for (k, v) in table.iter() {
        let key = join(path, k.get_ref());
        if covers(k.span(), at) {
            return Some(key);
        }
        match v.get_ref() {
            DeValue::Table(t) => {
                if let Some(inner) = covering(t, &key, at) {
                    return Some(inner);
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        let element = format!("{key}[{}]", i + 1);
                        if let Some(inner) = covering(t, &element, at) {
                            return Some(inner);
                        }
                        if covers(item.span(), at) {
                            return Some(element);
                        }
                    }
                }
            }
            _ => {}
        }
        if covers(v.span(), at) {
            return Some(key);
        }
    }
    None
}

fn covers(span: Range<usize>, at: usize) -> bool {
    span.start <= at && at <= span.end
}

/// The table opened by the last `[header]` or `[[header]]` at or before
/// byte `at`, with its path.
fn header_before<'t, 'i>(
    tree: &'t DeTable<'i>,
    text: &str,
    at: usize,
) -> Option<(String, &'t DeTable<'i>)> {
    let mut headers = Vec::new();
    collect_headers(tree, "", text, &mut headers);
    headers
        .into_iter()
        .filter(|h| h.start <= at && h.name_start <= at)
        .max_by_key(|h| h.start)
        .map(|h| (h.path, h.table))
}

/// A table that has a header.
struct Header<'t, 'i> {
    /// Where the header starts.
    start: usize,
    /// Where the table's own name is. After an unclosed header the
    /// parser's recovery can make a table of what follows it; a table
    /// named after the error is not the one the error is under.
    name_start: usize,
    path: String,
    table: &'t DeTable<'i>,
}

/// Every table under `table` that has a header. A table's span is its
/// header when it has one (`[defaults]`), its braces when inline, its key
/// when dotted: only a header's span starts with `[`.
fn collect_headers<'t, 'i>(
    table: &'t DeTable<'i>,
    path: &str,
    text: &str,
    out: &mut Vec<Header<'t, 'i>>,
) {
    for (k, v) in table.iter() {
        let key = join(path, k.get_ref());
        let tables: Vec<(String, &'t Spanned<DeValue<'i>>)> = match v.get_ref() {
            DeValue::Table(_) => vec![(key, v)],
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{key}[{}]", i + 1), item))
                .collect(),
            _ => Vec::new(),
        };
        for (path, value) in tables {
            let DeValue::Table(t) = value.get_ref() else {
                continue;
            };
            let start = value.span().start;
            if text.get(start..).is_some_and(|s| s.starts_with('[')) {
                out.push(Header {
                    start,
                    name_start: k.span().start,
                    path: path.clone(),
                    table: t,
                });
            }
            collect_headers(t, &path, text, out);
        }
    }
}

/// Byte offsets to line and column.
struct LineIndex<'a> {
    /// Byte offset of each line start.
    starts: Vec<usize>,
    text: &'a str,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                starts.push(i + 1);
            }
        }
        LineIndex { starts, text }
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
}
