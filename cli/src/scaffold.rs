//! `certsmith plugin new CODE --dns|--http [DIR]`: a standalone plugin crate
//! that builds and passes `certsmith plugin check` as generated, for an
//! author to fill in with a provider's API.
//!
//! The templates are in `cli/src/scaffold/`; `{{code}}`, `{{lib}}`,
//! `{{CODE}}` and `{{api}}` are replaced.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::exit;

/// `plugin new` arguments.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["dns", "http"])))]
pub(crate) struct NewArgs {
    /// The solver code (what --solver takes): 1-32 of a-z, 0-9, '-', '_'.
    code: String,
    /// A dns-01 solver (TXT records through a provider's API).
    #[arg(long)]
    dns: bool,
    /// An http-01 solver (serves the token over HTTP).
    #[arg(long)]
    http: bool,
    /// Where to create the crate [default: ./certsmith-CODE]; must not exist
    /// or be empty.
    dir: Option<PathBuf>,
}

const CARGO_TOML: &str = include_str!("scaffold/Cargo.toml.tmpl");
const GITIGNORE: &str = "/target\n";
const DNS_MANIFEST: &str = include_str!("scaffold/dns.plugin.toml.tmpl");
const DNS_LIB: &str = include_str!("scaffold/dns.lib.rs.tmpl");
const HTTP_MANIFEST: &str = include_str!("scaffold/http.plugin.toml.tmpl");
const HTTP_LIB: &str = include_str!("scaffold/http.lib.rs.tmpl");
const CHECK_TEST: &str = include_str!("scaffold/plugin_check.rs.tmpl");
const README: &str = include_str!("scaffold/README.md.tmpl");

/// The files of a new crate: (relative path, content).
pub(crate) fn files(code: &str, dns: bool) -> Vec<(&'static str, String)> {
    let lib = format!("certsmith_{}", code.replace('-', "_"));
    let upper = code.replace('-', "_").to_ascii_uppercase();
    // The requirement an outsider writes: this certsmith's plugin-api,
    // semver-compatible releases included.
    let api = {
        let v = certsmith_plugin_api_version();
        let mut parts = v.split('.');
        match (parts.next(), parts.next()) {
            (Some("0"), Some(minor)) => format!("0.{minor}"),
            (Some(major), _) => major.to_owned(),
            _ => v.to_owned(),
        }
    };
    let fill = |t: &str| {
        t.replace("{{code}}", code)
            .replace("{{lib}}", &lib)
            .replace("{{CODE}}", &upper)
            .replace("{{api}}", &api)
            .replace("{{kind}}", if dns { "dns" } else { "http" })
            .replace("{{Solver}}", &solver_type(code))
    };
    vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        (".gitignore", GITIGNORE.to_owned()),
        (
            "plugin.toml",
            fill(if dns { DNS_MANIFEST } else { HTTP_MANIFEST }),
        ),
        ("src/lib.rs", fill(if dns { DNS_LIB } else { HTTP_LIB })),
        ("tests/plugin_check.rs", fill(CHECK_TEST)),
        ("README.md", fill(README)),
    ]
}

/// The version of certsmith-plugin-api this certsmith was built with.
fn certsmith_plugin_api_version() -> &'static str {
    certsmith_plugin_api::VERSION
}

/// `my-dns` → `MyDns`.
fn solver_type(code: &str) -> String {
    let mut s: String = code
        .split(['-', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "Solver");
    }
    s
}

fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn write_all(dir: &Path, files: &[(&str, String)]) -> std::io::Result<()> {
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    Ok(())
}

/// Runs `plugin new`.
pub(crate) fn run(args: &NewArgs) -> u8 {
    if !valid_code(&args.code) {
        eprintln!(
            "error: solver code '{}' must be 1-32 characters of a-z, 0-9, '-' or '_'",
            args.code
        );
        return exit::USAGE;
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("certsmith-{}", args.code)));
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        eprintln!(
            "error: {} exists and is not empty; give a new directory",
            dir.display()
        );
        return exit::USAGE;
    }
    if let Err(e) = write_all(&dir, &files(&args.code, args.dns)) {
        eprintln!("error: cannot write {}: {e}", dir.display());
        return exit::INTERNAL;
    }
    let lib = format!("libcertsmith_{}.so", args.code.replace('-', "_"));
    println!(
        "created {} ({} solver '{}')\n\nnext:\n  cd {}\n  cargo build\n  certsmith plugin check target/debug/{lib}{}\n  cargo test   # runs the same check (set CERTSMITH_BIN if certsmith is not on PATH)",
        dir.display(),
        if args.dns { "dns-01" } else { "http-01" },
        args.code,
        dir.display(),
        if args.dns {
            ""
        } else {
            " --solver-opt listen=127.0.0.1:8080"
        },
    );
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled() {
        for dns in [true, false] {
            for (path, content) in files("my-dns", dns) {
                assert!(!content.contains("{{"), "{path}: {content}");
                if path == "Cargo.toml" {
                    assert!(content.contains("name = \"certsmith_my_dns\""), "{content}");
                    assert!(content.contains("crate-type = [\"cdylib\", \"rlib\"]"));
                }
                if path == "plugin.toml" {
                    let m = certsmith_plugin_api::Manifest::parse(&content).expect("valid");
                    assert_eq!(m.code, "my-dns");
                }
            }
        }
        assert!(valid_code("a_b-1") && !valid_code("A") && !valid_code(""));
    }
}
