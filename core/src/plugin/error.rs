//! Errors of the plugin host. Each message names the file or option involved
//! and what to do about it; none contains a secret value.

use std::path::PathBuf;
use std::time::Duration;

use certsmith_plugin_api::{ErrorBody, ManifestError};

/// Why a plugin could not be found, loaded, configured or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginHostError {
    /// The file or its directory can be modified by other users.
    #[error(
        "refusing to load {path}: {what} is {mode:04o}, writable by group or others; run `chmod go-w {fix}`"
    )]
    Insecure {
        /// The plugin file.
        path: PathBuf,
        /// "the file" or "its directory".
        what: &'static str,
        /// The permission bits found.
        mode: u32,
        /// The path to fix.
        fix: PathBuf,
    },
    /// The file is owned by someone other than root or the current user.
    #[error("refusing to load {path}: it is owned by uid {uid}, neither root nor you")]
    ForeignOwner {
        /// The plugin file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// The file's SHA-256 differs from the configured pin.
    #[error(
        "refusing to load {path}: its sha256 is {actual}, but the pin says {expected}; update the pin if you upgraded the plugin on purpose"
    )]
    PinMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The pinned digest (hex).
        expected: String,
        /// The file's digest (hex).
        actual: String,
    },
    /// Reading the file failed.
    #[error("cannot read plugin {path}: {source}")]
    Io {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The dynamic loader refused the library.
    #[error("cannot load {path}: {reason}")]
    Dlopen {
        /// The plugin file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library does not export the entry symbol.
    #[error(
        "{path} is not a certsmith plugin: it exports no `{symbol}` (build it with certsmith_plugin_api::export_solver!)"
    )]
    NoEntry {
        /// The plugin file.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
    },
    /// The entry returned null or a header without the magic bytes.
    #[error("{path} is not a certsmith plugin: its header has the wrong magic bytes")]
    BadMagic {
        /// The plugin file.
        path: PathBuf,
    },
    /// The plugin was built for another ABI major version.
    #[error(
        "{path} was built for plugin ABI v{found}, this certsmith speaks v{supported}: rebuild the plugin with a certsmith-plugin-api that implements ABI {supported}.x"
    )]
    AbiMismatch {
        /// The plugin file.
        path: PathBuf,
        /// Its ABI major.
        found: u16,
        /// Ours.
        supported: u16,
    },
    /// The plugin was built for a newer ABI minor than this host implements:
    /// it may rely on what that minor added.
    #[error(
        "{path} needs plugin ABI {major}.{found}, this certsmith implements ABI {major}.{supported}: upgrade certsmith, or rebuild the plugin with a certsmith-plugin-api that implements ABI {major}.{supported}"
    )]
    AbiTooNew {
        /// The plugin file.
        path: PathBuf,
        /// The ABI major (the same on both sides).
        major: u16,
        /// The plugin's ABI minor.
        found: u16,
        /// Ours.
        supported: u16,
    },
    /// A struct is smaller than ABI v1 requires.
    #[error(
        "{path} is corrupt or mis-built: its {what} is {size} bytes, ABI v1 needs at least {need}"
    )]
    StructTooSmall {
        /// The plugin file.
        path: PathBuf,
        /// Which struct.
        what: &'static str,
        /// Its declared size.
        size: u32,
        /// The minimum.
        need: usize,
    },
    /// The plugin was built with `panic = "abort"`.
    #[error(
        "refusing to load {path}: it was built with panic = \"abort\", so a bug in it would kill certsmith; build it with the default panic = \"unwind\""
    )]
    PanicAbort {
        /// The plugin file.
        path: PathBuf,
    },
    /// The embedded `plugin.toml` is invalid.
    #[error("{path}: {source}")]
    Manifest {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong with it.
        source: ManifestError,
    },
    /// A library's file name says one solver code and its manifest
    /// another: loading it would answer for a code its name does not show
    /// (and could shadow the built-in solver of that code).
    #[error(
        "refusing to load {path}: its file name says solver '{file_code}' but its manifest says '{manifest_code}'; rename the file to libcertsmith_{manifest_code}.so or fix the manifest's code"
    )]
    CodeMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The code in the file name (`libcertsmith_<code>.so`).
        file_code: String,
        /// The code in the manifest.
        manifest_code: String,
    },
    /// The embedded manifest is not UTF-8.
    #[error("{path}: its embedded plugin.toml is not valid UTF-8")]
    ManifestNotUtf8 {
        /// The plugin file.
        path: PathBuf,
    },
    /// Two files in one directory declare the same code.
    #[error(
        "two plugins declare the solver code '{code}': {first} and {second}; remove one of them"
    )]
    DuplicateCode {
        /// The code.
        code: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// No plugin has this code.
    #[error("{}", unknown_solver_message(.code, .available, .suggestion.as_deref(), .searched, .refused))]
    UnknownSolver {
        /// The code asked for.
        code: String,
        /// The codes found.
        available: Vec<String>,
        /// The nearest code, if any is close.
        suggestion: Option<String>,
        /// The directories searched.
        searched: Vec<PathBuf>,
        /// The libraries that were found but refused, each with why.
        refused: Vec<String>,
    },
    /// A configuration key the plugin does not declare.
    #[error("{}", unknown_option_message(.code, .key, .suggestion.as_deref(), .valid))]
    UnknownOption {
        /// The solver code.
        code: String,
        /// The key given.
        key: String,
        /// The nearest valid key.
        suggestion: Option<String>,
        /// All valid keys.
        valid: Vec<String>,
    },
    /// A required key has no value from any source.
    #[error("{}", missing_option_message(.code, .key, .env.as_deref()))]
    MissingOption {
        /// The solver code.
        code: String,
        /// The key.
        key: String,
        /// The env var that could supply it.
        env: Option<String>,
    },
    /// A value has the wrong type. The value itself is not repeated, since it
    /// may be a secret.
    #[error("solver '{code}': option '{key}' from {source_name} must be {expected}{hint}")]
    WrongType {
        /// The solver code.
        code: String,
        /// The key.
        key: String,
        /// Where the value came from ("--solver-opt", "CLOUDFLARE_API_TOKEN", ...).
        source_name: String,
        /// The expected type, in words.
        expected: &'static str,
        /// Extra help, e.g. the value when it is not secret.
        hint: String,
    },
    /// A value breaks its key's `min`, `max` or `pattern` (plugin.toml). The
    /// value itself is not repeated, since it may be a secret.
    #[error("solver '{code}': option '{key}' {reason}")]
    OutOfRange {
        /// The solver code.
        code: String,
        /// The key.
        key: String,
        /// The broken constraint, e.g. "must be at least 30".
        reason: certsmith_plugin_api::ValueError,
    },
    /// A `--solver-opt` argument is not `KEY=VALUE`.
    #[error("a solver option is KEY=VALUE, got '{0}'")]
    BadOptionSyntax(String),
    /// A `<ENV>_FILE` file could not be read.
    #[error("cannot read {var}={path}: {source}")]
    EnvFile {
        /// The variable name.
        var: String,
        /// The file it names.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The plugin rejected its configuration or failed to start.
    #[error("solver '{code}' could not start: {message}")]
    Create {
        /// The solver code.
        code: String,
        /// The plugin's message (redacted).
        message: String,
        /// The plugin's error class, when it sent one.
        kind: Option<certsmith_plugin_api::ErrorKind>,
    },
}

impl PluginHostError {
    /// Whether the user's input (a name, an option) is at fault rather than
    /// the plugin or its file: decides between the usage and solver exit codes.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PluginHostError::UnknownSolver { .. }
                | PluginHostError::UnknownOption { .. }
                | PluginHostError::MissingOption { .. }
                | PluginHostError::WrongType { .. }
                | PluginHostError::OutOfRange { .. }
                | PluginHostError::BadOptionSyntax(_)
                | PluginHostError::EnvFile { .. }
                | PluginHostError::Create {
                    kind: Some(certsmith_plugin_api::ErrorKind::Config),
                    ..
                }
        )
    }
}

fn unknown_solver_message(
    code: &str,
    available: &[String],
    suggestion: Option<&str>,
    searched: &[PathBuf],
    refused: &[String],
) -> String {
    let mut s = format!("unknown solver '{code}'");
    if let Some(near) = suggestion {
        s.push_str(&format!(": did you mean '{near}'?"));
    }
    if available.is_empty() {
        s.push_str("; no solver plugins were found in ");
        let dirs: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
        s.push_str(&dirs.join(", "));
    } else {
        s.push_str(&format!("; available: {}", available.join(", ")));
    }
    if !refused.is_empty() {
        s.push_str(&format!("; refused: {}", refused.join("; ")));
    }
    s
}

fn unknown_option_message(
    code: &str,
    key: &str,
    suggestion: Option<&str>,
    valid: &[String],
) -> String {
    let mut s = format!("solver '{code}' has no option '{key}'");
    if let Some(near) = suggestion {
        s.push_str(&format!(": did you mean '{near}'?"));
    }
    if valid.is_empty() {
        s.push_str(" (it takes no options)");
    } else {
        s.push_str(&format!(" (valid: {})", valid.join(", ")));
    }
    s
}

fn missing_option_message(code: &str, key: &str, env: Option<&str>) -> String {
    match env {
        Some(var) => format!(
            "solver '{code}' needs option '{key}': set {var} (or {var}_FILE to a file holding it), or '{key}' in [solvers.{code}] of the config file"
        ),
        None => format!(
            "solver '{code}' needs option '{key}': set '{key}' in [solvers.{code}] of the config file"
        ),
    }
}

/// Why one `present` or `cleanup` call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The plugin reported an error (message already redacted).
    #[error("{}", .0.message)]
    Plugin(ErrorBody),
    /// The plugin panicked; it survives, the host survives.
    #[error("the plugin panicked: {0}")]
    Panicked(String),
    /// The call was cancelled.
    #[error("the call was cancelled")]
    Cancelled,
    /// The plugin does not implement the method.
    #[error("the plugin does not support '{0}'")]
    Unsupported(String),
    /// The plugin did not complete in time and was cancelled.
    #[error("the plugin did not answer within {:.0}s and was cancelled", .0.as_secs_f64())]
    TimedOut(Duration),
}
