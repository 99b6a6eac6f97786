//! `certsmith config check [--config FILE]`: everything about a config
//! file that can be checked without the CA.
//!
//! Why this module exists: a config change should be validated when it is
//! made (in review, in CI, by a deploy script), not when the timer fires.
//! On top of what `certsmith_core::config` checks while parsing (syntax,
//! types, unknown keys, durations, domains, names), this loads the plugins
//! and checks each certificate's solver: that it exists (with the nearest
//! code when it does not), that its options satisfy its manifest (unknown
//! keys, types, required keys and their environment variables) and that it
//! can answer the challenges the domains need (a wildcard needs dns-01).
//! Nothing is sent to the CA, no plugin instance is created, and the state
//! directory is not touched (it need not exist yet). Every error names the
//! file, line, column and key.

use certsmith_core::config::{Config, ConfigError};
use certsmith_core::identifiers;
use certsmith_core::plugin::{self, ConfigSources, PluginHost, PluginHostError};
use clap::Subcommand;
use serde_json::json;

use crate::output::{outln, print_error, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the config file (names, solvers, their options) without
    /// contacting the CA.
    #[command(after_help = crate::help::CONFIG)]
    Check,
}

pub(crate) async fn run(global: &GlobalArgs, cmd: ConfigCommand) -> u8 {
    match cmd {
        ConfigCommand::Check => check(global),
    }
}

fn check(global: &GlobalArgs) -> u8 {
    let (path, config) = match setup::require_config(global, "config check") {
        Ok(found) => found,
        Err(code) => return code,
    };
    let path = &path;
    let host = setup::plugin_host(global, Some(&config));
    let (errors, warnings) = diagnose(&config, &host);

    match global.output {
        OutputFormat::Json => print_json(&json!({
            "file": path,
            "valid": errors.is_empty(),
            "certificates": config.certificates.iter().map(|c| json!({
                "name": c.name,
                "domains": c.domain_names(),
                "solver": c.solver,
                "key_type": c.key_type.as_str(),
            })).collect::<Vec<_>>(),
            "errors": errors.iter().map(setup::config_error_json).collect::<Vec<_>>(),
            "warnings": warnings,
        })),
        OutputFormat::Text => {
            if errors.is_empty() {
                outln!(
                    "{}: OK, {} certificate(s): {}",
                    path.display(),
                    config.certificates.len(),
                    config
                        .certificates
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for e in &errors {
        print_error(&e.to_string(), e.hint());
    }
    if errors.is_empty() {
        exit::OK
    } else {
        exit::USAGE
    }
}

/// What `config check` finds wrong with a loaded config beyond what
/// parsing found: each certificate's solver exists, its options fit the
/// manifest, it answers the challenges the names need. Errors (sorted by
/// position) and warnings. `certsmith doctor` reports the same.
pub(crate) fn diagnose(config: &Config, host: &PluginHost) -> (Vec<ConfigError>, Vec<String>) {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    for e in host.duplicate_errors() {
        warnings.push(e.to_string());
    }
    for cert in &config.certificates {
        // The solvers of names with their own.
        for (id, name, pos) in &cert.name_solvers {
            let key = cert.key(&format!("solvers.\"{id}\""));
            let plugin = match host.get(&config.plugin_code(name)) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(config.error_at(
                        *pos,
                        key,
                        e.to_string(),
                        Some("name a plugin (`certsmith solvers list`) or a [solvers.<name>] table with plugin = \"CODE\""),
                    ));
                    continue;
                }
            };
            let table = config.instance_table(name);
            if let Err(e) = plugin::resolve(
                plugin.manifest(),
                &ConfigSources {
                    file: Some(&table),
                    ..Default::default()
                },
            ) {
                errors.push(config.error_at(
                    *pos,
                    key.clone(),
                    format!("solver '{name}': {e}"),
                    Some("fix its options in [solvers.<name>]"),
                ));
            }
            let ids: Vec<_> = cert
                .domains
                .iter()
                .filter(|d| d.as_str() == id)
                .cloned()
                .collect();
            if let Err(e) = identifiers::check_solver(&ids, plugin.manifest()) {
                errors.push(config.error_at(
                    *pos,
                    key,
                    e.to_string(),
                    Some("a wildcard needs a dns-01 solver (RFC 8555 §8.4)"),
                ));
            }
        }
        let plugin = match host.get(&config.plugin_code(&cert.solver)) {
            Ok(p) => p,
            Err(e) => {
                errors.push(config.error_at(
                    cert.solver_pos,
                    cert.key("solver"),
                    e.to_string(),
                    Some("`certsmith solvers list` shows the solvers found; --plugin-dir adds a directory"),
                ));
                continue;
            }
        };
        let manifest = plugin.manifest();
        let table = config.solver_table(cert);
        if let Err(e) = plugin::resolve(
            manifest,
            &ConfigSources {
                file: Some(&table),
                ..Default::default()
            },
        ) {
            errors.push(option_error(config, cert, &e));
        }
        let own: Vec<_> = cert
            .domains
            .iter()
            .filter(|d| !cert.name_solvers.iter().any(|(id, _, _)| id == d.as_str()))
            .cloned()
            .collect();
        if let Err(e) = identifiers::check_solver(&own, manifest) {
            errors.push(config.error_at(
                cert.domains_pos,
                cert.key("domains"),
                e.to_string(),
                Some("a wildcard needs a dns-01 solver (RFC 8555 §8.4)"),
            ));
        }
    }
    for name in config.solvers.keys() {
        let code = config.plugin_code(name);
        if host.get(&code).is_err() {
            warnings.push(if code == *name {
                format!("[solvers.{name}] configures a solver that was not found")
            } else {
                format!("[solvers.{name}] names plugin '{code}', which was not found")
            });
        }
    }
    errors.sort_by_key(ConfigError::pos);
    (errors, warnings)
}

/// A solver option error, placed at the option (or the table, or the
/// solver name).
fn option_error(
    config: &Config,
    cert: &certsmith_core::config::CertificateConfig,
    e: &PluginHostError,
) -> ConfigError {
    let key = match e {
        PluginHostError::UnknownOption { key, .. }
        | PluginHostError::MissingOption { key, .. }
        | PluginHostError::WrongType { key, .. }
        | PluginHostError::OutOfRange { key, .. } => Some(key.as_str()),
        _ => None,
    };
    let (pos, path) = match key {
        Some(k) => config.option_pos(cert, k),
        None => (cert.solver_pos, cert.key("solver")),
    };
    let hint = match e {
        PluginHostError::MissingOption { .. } => Some(
            "set it in [solvers.<code>] or the certificate's solver_options, or (for secrets) in the environment variable named",
        ),
        PluginHostError::UnknownOption { .. } => {
            Some("`certsmith solvers info <CODE>` lists the options")
        }
        _ => None,
    };
    config.error_at(pos, path, e.to_string(), hint)
}
