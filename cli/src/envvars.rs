//! Warnings about `CERTSMITH_*` environment variables that certsmith does
//! not know.
//!
//! Why this module exists: an option set through a mistyped variable
//! (`CERTSMITH_SERVR=letsencrypt-staging`) is silently ignored, and the
//! order goes to the production CA. Every set variable with certsmith's
//! prefix is checked against the names certsmith reads (every `env` of the
//! command line, and those read elsewhere) and those it sets for others
//! (hooks) or that its test suite reads, and a stranger is named on
//! stderr with the nearest known name.

use std::collections::BTreeSet;
use std::ffi::OsString;

use certsmith_core::plugin::nearest;

/// The prefix of certsmith's variables.
const PREFIX: &str = "CERTSMITH_";

/// Variables certsmith (or its test suite) reads, or sets for the programs
/// it runs, that no command-line option declares.
const OTHER_KNOWN: &[&str] = &[
    // Read by the plugin host (core): directories added to --plugin-dir.
    "CERTSMITH_PLUGIN_PATH",
    // The shared store's key (core::store::pg), read by the core with its
    // `_FILE` form, and the new key of `store rotate-key`.
    "CERTSMITH_STORE_KEY",
    "CERTSMITH_STORE_KEY_FILE",
    "CERTSMITH_STORE_NEW_KEY",
    "CERTSMITH_STORE_NEW_KEY_FILE",
    // Read with their `_FILE` forms (core::envfile).
    "CERTSMITH_EAB_KID_FILE",
    "CERTSMITH_EAB_HMAC_KEY_FILE",
    // Set for hooks: core::hooks::HOOK_VARIABLES (added in known_names).
    // Read by the test suite and its harness (tests/).
    "CERTSMITH_BIN",
    "CERTSMITH_BLESS",
    "CERTSMITH_TEST_KEEP",
    "CERTSMITH_TEST_VENV",
    "CERTSMITH_TEST_PYTHON",
];

/// Every known variable name: the `env` of every argument of `cmd` and its
/// subcommands, and [`OTHER_KNOWN`].
pub(crate) fn known_names(cmd: &clap::Command) -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(name) = arg.get_env().and_then(|e| e.to_str()) {
                out.insert(name.to_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out: BTreeSet<String> = OTHER_KNOWN
        .iter()
        .chain(certsmith_core::hooks::HOOK_VARIABLES)
        .map(|s| (*s).to_owned())
        .collect();
    walk(cmd, &mut out);
    out
}

/// One warning line per variable of `vars` that has certsmith's prefix but
/// is not in `known`, naming the nearest known name when one is close.
pub(crate) fn unknown_variable_warnings(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    known: &BTreeSet<String>,
) -> Vec<String> {
    let mut names: Vec<String> = vars
        .into_iter()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with(PREFIX) && !known.contains(k))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            // Compare what follows the prefix, which every name shares.
            let tail = &name[PREFIX.len()..];
            let near = nearest(tail, known.iter().map(|k| &k[PREFIX.len()..]));
            match near {
                Some(n) => format!(
                    "warning: {name} is not a certsmith variable; did you mean {PREFIX}{n}?"
                ),
                None => format!(
                    "warning: {name} is not a certsmith variable (`certsmith <command> --help` lists them)"
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        known_names(&crate::command())
    }

    fn warnings(vars: &[(&str, &str)]) -> Vec<String> {
        unknown_variable_warnings(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            &known(),
        )
    }

    #[test]
    fn a_typo_gets_the_nearest_name() {
        assert_eq!(
            warnings(&[("CERTSMITH_SERVR", "x")]),
            [
                "warning: CERTSMITH_SERVR is not a certsmith variable; did you mean CERTSMITH_SERVER?"
            ]
        );
        assert_eq!(
            warnings(&[("CERTSMITH_STATEDIR", "x"), ("CERTSMITH_EMIAL", "x")]),
            [
                "warning: CERTSMITH_EMIAL is not a certsmith variable; did you mean CERTSMITH_EMAIL?",
                "warning: CERTSMITH_STATEDIR is not a certsmith variable; did you mean CERTSMITH_STATE_DIR?",
            ]
        );
    }

    #[test]
    fn a_stranger_without_a_near_name_is_still_named() {
        let w = warnings(&[("CERTSMITH_FROBNICATE_EVERYTHING", "1")]);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with(
                "warning: CERTSMITH_FROBNICATE_EVERYTHING is not a certsmith variable"
            ) && !w[0].contains("did you mean"),
            "{w:?}"
        );
    }

    #[test]
    fn known_and_foreign_variables_are_not_warned_about() {
        let mut vars: Vec<(&str, &str)> = vec![
            ("PATH", "/bin"),
            ("CERTSMITHX", "1"),
            ("CLOUDFLARE_API_TOKEN", "t"),
        ];
        let known = known();
        for k in &known {
            vars.push((k.as_str(), "1"));
        }
        assert_eq!(warnings(&vars), Vec::<String>::new());
    }

    #[test]
    fn every_variable_certsmith_reads_or_sets_is_known() {
        let known = known();
        for name in [
            "CERTSMITH_CONFIG",
            "CERTSMITH_STATE_DIR",
            "CERTSMITH_OUTPUT",
            "CERTSMITH_VERBOSE",
            "CERTSMITH_QUIET",
            "CERTSMITH_SERVER",
            "CERTSMITH_EMAIL",
            "CERTSMITH_AGREE_TOS",
            "CERTSMITH_CA_CERT",
            "CERTSMITH_KEY_TYPE",
            "CERTSMITH_SOLVER",
            "CERTSMITH_EAB_KID",
            "CERTSMITH_EAB_HMAC_KEY",
            "CERTSMITH_PLUGIN_PATH",
        ] {
            assert!(known.contains(name), "{name} is not known");
        }
        // What each hook receives, from the code that sets it.
        use certsmith_core::hooks::{HookContext, HookKind};
        let contexts = [
            HookContext::deploy("a", &["a".into()], "/x".into(), 1),
            HookContext::around(HookKind::Pre, "a", &["a".into()], false),
            HookContext::around(HookKind::Post, "a", &["a".into()], true),
        ];
        for ctx in contexts {
            for (name, _) in ctx.env() {
                assert!(known.contains(name), "hook variable {name} is not known");
            }
        }
    }
}
