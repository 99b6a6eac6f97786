//! Every command's `--output json` against the schema of docs/json.md,
//! written here as a checker: each line of stdout is one JSON value whose
//! fields are exactly the documented ones (required ones present, none
//! undocumented), of the documented types; every object about one
//! certificate carries `name`. Runs against a real Pebble.

use std::fs;
use std::path::Path;

use certsmith_tests::{Pebble, PebbleOpts, TempState};
use serde_json::Value;

use crate::accounts::{Run, certsmith, config, p};

/// A field's type.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    StrList,
    /// A list of integers.
    IntList,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// An object checked against this schema.
    Obj(&'static Schema),
    /// A list of objects checked against this schema.
    ObjList(&'static Schema),
    /// An object whose values are all checked against this schema.
    Map(&'static Schema),
    /// A TOML value carried as JSON (any).
    Any,
    /// This type, or `null`.
    Null(&'static Ty),
}

/// An object's fields: (name, type, required).
type Schema = [(&'static str, Ty, bool)];

const R: bool = true;
const O: bool = false;
const STR_OR_NULL: Ty = Ty::Null(&Ty::Str);
const INT_OR_NULL: Ty = Ty::Null(&Ty::Int);

/// `error` objects: `{"class","message","hint","exit_code"}`.
const ERROR_BODY: &Schema = &[
    ("class", Ty::Str, R),
    ("message", Ty::Str, R),
    ("hint", STR_OR_NULL, R),
    ("exit_code", Ty::Int, R),
];
/// A top-level error line; `name` when it concerns one certificate.
const ERROR: &Schema = &[("error", Ty::Obj(ERROR_BODY), R), ("name", Ty::Str, O)];
const HOOK: &Schema = &[
    ("status", Ty::OneOf(&["ok", "failed"]), R),
    ("error", Ty::Obj(ERROR_BODY), O),
];
const ISSUE: &Schema = &[
    ("name", Ty::Str, R),
    ("domains", Ty::StrList, R),
    ("action", Ty::OneOf(&["issued", "renewed", "skipped"]), R),
    ("reason", Ty::Str, R),
    ("next_renewal", STR_OR_NULL, R),
    ("renewal_reason", STR_OR_NULL, R),
    ("serial", STR_OR_NULL, R),
    ("not_after", STR_OR_NULL, R),
    ("fullchain_path", STR_OR_NULL, R),
    ("privkey_path", STR_OR_NULL, R),
    ("cert_path", STR_OR_NULL, R),
    ("chain_path", STR_OR_NULL, R),
    ("deploy_hook", Ty::Null(&Ty::Obj(HOOK)), R),
    ("post_hook", Ty::Null(&Ty::Obj(HOOK)), R),
    ("error", Ty::Null(&Ty::Obj(ERROR_BODY)), R),
    // Only when a certificate was obtained (not `skipped`).
    ("version", Ty::Int, O),
    ("version_dir", Ty::Str, O),
    ("not_before", Ty::Str, O),
    ("key_type", Ty::Str, O),
    ("chain_issuer", STR_OR_NULL, O),
    ("csr_path", STR_OR_NULL, O),
];
const BATCH: &Schema = &[
    ("name", Ty::Str, R),
    ("domains", Ty::StrList, R),
    (
        "action",
        Ty::OneOf(&["issued", "renewed", "skipped", "failed"]),
        R,
    ),
    ("reason", Ty::Str, R),
    ("version", INT_OR_NULL, R),
    ("serial", STR_OR_NULL, R),
    ("not_after", STR_OR_NULL, R),
    ("next_renewal", STR_OR_NULL, R),
    ("renewal_reason", STR_OR_NULL, R),
    ("replaces", STR_OR_NULL, R),
    ("fullchain_path", STR_OR_NULL, R),
    ("privkey_path", STR_OR_NULL, R),
    ("deploy_hook", Ty::Null(&Ty::Obj(HOOK)), R),
    ("post_hook", Ty::Null(&Ty::Obj(HOOK)), R),
    ("error", Ty::Null(&Ty::Obj(ERROR_BODY)), R),
];
const COUNTS: &Schema = &[
    ("total", Ty::Int, R),
    ("issued", Ty::Int, R),
    ("renewed", Ty::Int, R),
    ("skipped", Ty::Int, R),
    ("failed", Ty::Int, R),
    ("interrupted", Ty::Bool, R),
];
/// `issue`, `run`, `renew` with `--dry-run`: one object per certificate.
const DRY_RUN: &Schema = &[
    ("name", Ty::Str, R),
    ("domains", Ty::StrList, R),
    ("dry_run", Ty::Bool, R),
    ("server", Ty::Str, R),
    ("would", Ty::OneOf(&["issue", "renew", "skip", "fail"]), R),
    ("reason", Ty::Str, R),
    ("test_order", Ty::OneOf(&["ok", "failed", "skipped"]), R),
    ("error", Ty::Null(&Ty::Obj(ERROR_BODY)), R),
];
/// The last line of `run` and `renew`: the one object without `name`.
const SUMMARY: &Schema = &[("summary", Ty::Obj(COUNTS), R), ("exit_code", Ty::Int, R)];
const REVOKE: &Schema = &[
    ("name", Ty::Str, R),
    ("serial", Ty::Str, R),
    ("reason", Ty::Str, R),
    ("reason_code", Ty::Int, R),
    ("signed_with", Ty::Str, R),
    ("already_revoked", Ty::Bool, R),
    ("revoked_at", STR_OR_NULL, R),
    ("retired", Ty::Bool, R),
];
const DELETE: &Schema = &[
    ("name", Ty::Str, R),
    ("action", Ty::OneOf(&["deleted"]), R),
    ("files_kept", Ty::Bool, R),
];
const RENAME: &Schema = &[
    ("name", Ty::Str, R),
    ("action", Ty::OneOf(&["renamed"]), R),
    ("old_name", Ty::Str, R),
];
const LIST: &Schema = &[
    ("name", Ty::Str, R),
    ("domains", Ty::StrList, R),
    ("issuer", STR_OR_NULL, R),
    ("serial", STR_OR_NULL, R),
    ("not_after", STR_OR_NULL, R),
    ("days_left", INT_OR_NULL, R),
    ("next_renewal", STR_OR_NULL, R),
    ("renewal_reason", STR_OR_NULL, R),
    ("explanation_url", STR_OR_NULL, R),
    ("solver", STR_OR_NULL, R),
    (
        "state",
        Ty::OneOf(&[
            "valid", "due", "expired", "revoked", "retired", "damaged", "missing",
        ]),
        R,
    ),
    ("version", INT_OR_NULL, R),
    ("path", Ty::Str, R),
    ("rate_limited_until", STR_OR_NULL, R),
];
const ACCOUNT: &Schema = &[
    ("url", Ty::Str, R),
    ("server", Ty::Str, R),
    ("contact", Ty::StrList, R),
    ("key_type", Ty::Str, R),
    ("key_thumbprint", Ty::Str, R),
    ("created_at", Ty::Str, R),
    ("key_changed_at", STR_OR_NULL, R),
    ("deactivated_at", STR_OR_NULL, R),
    ("status", Ty::OneOf(&["valid", "deactivated"]), R),
    ("in_use", Ty::Bool, R),
    ("path", Ty::Str, R),
];
const ACCOUNT_ACTION: &Schema = &[
    ("action", Ty::OneOf(&["rollover", "deactivate"]), R),
    ("account", Ty::Obj(ACCOUNT), R),
];
const PLUGIN: &Schema = &[
    ("code", Ty::Str, R),
    ("name", Ty::Str, R),
    ("version", Ty::Str, R),
    ("challenge_types", Ty::StrList, R),
    ("path", Ty::Str, R),
    ("abi_version", Ty::Str, R),
    ("sha256", Ty::Str, R),
];
const PROBLEM: &Schema = &[("path", Ty::Str, R), ("error", Ty::Str, R)];
const SOLVERS_LIST: &Schema = &[
    ("solvers", Ty::ObjList(PLUGIN), R),
    ("searched", Ty::StrList, R),
    ("problems", Ty::ObjList(PROBLEM), R),
];
const OPTION: &Schema = &[
    ("type", Ty::Str, R),
    ("required", Ty::Bool, R),
    ("secret", Ty::Bool, R),
    ("env", STR_OR_NULL, R),
    ("env_file", STR_OR_NULL, R),
    ("default", Ty::Any, R),
    ("description", Ty::Str, R),
];
const SOLVERS_INFO: &Schema = &[
    ("code", Ty::Str, R),
    ("name", Ty::Str, R),
    ("version", Ty::Str, R),
    ("challenge_types", Ty::StrList, R),
    ("path", Ty::Str, R),
    ("abi_version", Ty::Str, R),
    ("sha256", Ty::Str, R),
    ("description", Ty::Str, R),
    ("url", STR_OR_NULL, R),
    ("config", Ty::Map(OPTION), R),
    ("defaults", Ty::Any, R),
    ("in_process", Ty::Bool, R),
];
const CONFIG_CERT: &Schema = &[
    ("name", Ty::Str, R),
    ("domains", Ty::StrList, R),
    ("solver", Ty::Str, R),
    ("key_type", Ty::Str, R),
];
const CONFIG_ERROR: &Schema = &[
    ("line", INT_OR_NULL, R),
    ("column", INT_OR_NULL, R),
    ("key", STR_OR_NULL, R),
    ("message", Ty::Str, R),
    ("hint", STR_OR_NULL, R),
];
const CONFIG_CHECK: &Schema = &[
    ("file", Ty::Str, R),
    ("valid", Ty::Bool, R),
    ("certificates", Ty::ObjList(CONFIG_CERT), R),
    ("errors", Ty::ObjList(CONFIG_ERROR), R),
    ("warnings", Ty::StrList, R),
];

const DOCTOR_CHECK: &Schema = &[
    ("check", Ty::Str, R),
    ("status", Ty::OneOf(&["ok", "warn", "fail", "skipped"]), R),
    ("detail", Ty::Str, R),
    ("fix", STR_OR_NULL, R),
];
const DOCTOR_SUMMARY: &Schema = &[
    ("ok", Ty::Int, R),
    ("warn", Ty::Int, R),
    ("fail", Ty::Int, R),
    ("skipped", Ty::Int, R),
];
const MAN: &Schema = &[("man_pages", Ty::StrList, R)];
const DOCTOR: &Schema = &[
    ("checks", Ty::ObjList(DOCTOR_CHECK), R),
    ("summary", Ty::Obj(DOCTOR_SUMMARY), R),
    ("exit_code", Ty::Int, R),
];

/// A `daemon` event (the certificates' objects are [`BATCH`]'s).
const DAEMON: &Schema = &[
    (
        "daemon",
        Ty::OneOf(&["started", "reloaded", "reload_failed", "stopped"]),
        R,
    ),
    ("config", Ty::Str, O),
    ("certificates", Ty::Int, O),
    ("metrics", STR_OR_NULL, O),
    ("errors", Ty::ObjList(CONFIG_ERROR), O),
];

/// Checks one line of `daemon --output json` (tests/tests/daemon.rs runs
/// it): a daemon event, or a certificate's object as `run` prints it.
pub(crate) fn check_daemon_line(v: &Value) -> Result<(), String> {
    if v.get("daemon").is_some() {
        check(v, DAEMON, "daemon event")
    } else {
        check(v, BATCH, "daemon certificate")
    }
}

/// Checks one line of a `--dry-run` output (tests/tests/cli12.rs runs
/// them): a certificate's object, or the summary of `run`/`renew`.
/// `sync`: one object per certificate.
const SYNC: &Schema = &[
    ("name", Ty::Str, R),
    ("domains", Ty::StrList, R),
    ("action", Ty::OneOf(&["updated", "unchanged", "failed"]), R),
    ("version", INT_OR_NULL, R),
    ("previous_version", INT_OR_NULL, R),
    ("path", STR_OR_NULL, R),
    ("pruned", Ty::IntList, R),
    ("deploy_hook", Ty::Null(&Ty::Obj(HOOK)), R),
    ("error", Ty::Null(&Ty::Obj(ERROR_BODY)), R),
];
const SYNC_COUNTS: &Schema = &[
    ("to", Ty::Str, R),
    ("total", Ty::Int, R),
    ("updated", Ty::Int, R),
    ("unchanged", Ty::Int, R),
    ("failed", Ty::Int, R),
];
/// `sync`: the summary after each pass's certificates.
const SYNC_SUMMARY: &Schema = &[
    ("sync_summary", Ty::Obj(SYNC_COUNTS), R),
    ("exit_code", Ty::Int, R),
];
const MIGRATED: &Schema = &[
    ("from", Ty::Str, R),
    ("to", Ty::Str, R),
    ("accounts", Ty::Int, R),
    ("accounts_present", Ty::Int, R),
    ("certificates", Ty::Int, R),
    ("versions", Ty::Int, R),
    ("pending_orders", Ty::Int, R),
    ("journal_entries", Ty::Int, R),
    ("rate_limits", Ty::Int, R),
    ("verified", Ty::Bool, R),
];
/// `store migrate`: one object.
const MIGRATE: &Schema = &[("migrated", Ty::Obj(MIGRATED), R)];

/// Checks every stdout line of a `sync` run (certificates, summaries,
/// error lines); returns the lines.
pub(crate) fn sync_lines(r: &Run) -> Vec<Value> {
    let values = r.json();
    assert!(!values.is_empty(), "no JSON on stdout: {}", r.describe());
    for v in &values {
        let result = if v.get("sync_summary").is_some() {
            check(v, SYNC_SUMMARY, "sync summary")
        } else if v.get("error").is_some() && v.get("domains").is_none() {
            check(v, ERROR, "error line")
        } else {
            check(v, SYNC, "sync line")
        };
        if let Err(e) = result {
            panic!("{e}\n{}", r.describe());
        }
    }
    values
}

const ROTATED: &Schema = &[
    ("store", Ty::Str, R),
    ("key_id", Ty::Str, R),
    ("accounts", Ty::Int, R),
    ("private_keys", Ty::Int, R),
    ("pending_orders", Ty::Int, R),
];
/// `store rotate-key`: one object.
const ROTATE: &Schema = &[("rotated", Ty::Obj(ROTATED), R)];

/// Checks the stdout of a `store rotate-key` run (its object or an error
/// line); returns the lines.
pub(crate) fn rotate_lines(r: &Run) -> Vec<Value> {
    lines(r, ROTATE, None, false)
}

/// Checks the stdout of a `store migrate` run (its object or an error
/// line); returns the lines.
pub(crate) fn migrate_lines(r: &Run) -> Vec<Value> {
    lines(r, MIGRATE, None, false)
}

pub(crate) fn check_dry_run_line(v: &Value) -> Result<(), String> {
    if v.get("summary").is_some() {
        check(v, SUMMARY, "dry-run summary")
    } else {
        check(v, DRY_RUN, "dry-run certificate")
    }
}

fn check_ty(v: &Value, ty: Ty, at: &str) -> Result<(), String> {
    let ok = match ty {
        Ty::Str => v.is_string(),
        Ty::Int => v.is_i64() || v.is_u64(),
        Ty::Bool => v.is_boolean(),
        Ty::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Ty::IntList => v
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n.is_i64() || n.is_u64())),
        Ty::OneOf(words) => v.as_str().is_some_and(|s| words.contains(&s)),
        Ty::Obj(schema) => return check(v, schema, at),
        Ty::ObjList(schema) => {
            let Some(items) = v.as_array() else {
                return Err(format!("{at}: not a list: {v}"));
            };
            for (i, item) in items.iter().enumerate() {
                check(item, schema, &format!("{at}[{i}]"))?;
            }
            true
        }
        Ty::Map(schema) => {
            let Some(map) = v.as_object() else {
                return Err(format!("{at}: not an object: {v}"));
            };
            for (k, item) in map {
                check(item, schema, &format!("{at}.{k}"))?;
            }
            true
        }
        Ty::Any => true,
        Ty::Null(inner) => {
            return if v.is_null() {
                Ok(())
            } else {
                check_ty(v, *inner, at)
            };
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{at}: wrong type: {v}"))
    }
}

/// Checks `v` against `schema`: required fields present, no undocumented
/// field, every field of its type.
fn check(v: &Value, schema: &Schema, at: &str) -> Result<(), String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("{at}: not an object: {v}"));
    };
    for (name, ty, required) in schema {
        match obj.get(*name) {
            Some(field) => check_ty(field, *ty, &format!("{at}.{name}"))?,
            None if *required => return Err(format!("{at}: no '{name}': {v}")),
            None => {}
        }
    }
    for key in obj.keys() {
        if !schema.iter().any(|(name, _, _)| name == key) {
            return Err(format!("{at}: undocumented field '{key}': {v}"));
        }
    }
    Ok(())
}

/// Checks every stdout line of `r`: an error line against [`ERROR`] (with
/// `name` when `cert` is given), others against `schema` (and, for
/// `run`/`renew`, the last line against [`SUMMARY`]); returns the lines.
fn lines(r: &Run, schema: &Schema, cert: Option<&str>, summary: bool) -> Vec<Value> {
    let values = r.json();
    assert!(!values.is_empty(), "no JSON on stdout: {}", r.describe());
    for (i, v) in values.iter().enumerate() {
        let result = if v.get("error").is_some() && v.get("domains").is_none() {
            check(v, ERROR, "error line").and_then(|()| match cert {
                Some(n) if v["name"] != n => Err(format!("error line without name {n}: {v}")),
                _ => Ok(()),
            })
        } else if summary && i + 1 == values.len() {
            check(v, SUMMARY, "summary")
        } else {
            check(v, schema, "line")
        };
        if let Err(e) = result {
            panic!("{e}\n{}", r.describe());
        }
    }
    values
}

fn json(args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    certsmith(&all)
}

#[test]
fn every_command_output_matches_docs_json_md() {
    // The checker refuses an undocumented field, a missing one, a wrong type.
    let ok = serde_json::json!({"name": "x", "action": "deleted", "files_kept": true});
    assert_eq!(check(&ok, DELETE, "t"), Ok(()));
    let mut extra = ok.clone();
    extra["extra"] = 1.into();
    assert!(check(&extra, DELETE, "t").is_err());
    assert!(
        check(
            &serde_json::json!({"name": "x", "action": "deleted"}),
            DELETE,
            "t"
        )
        .is_err()
    );
    assert!(
        check(
            &serde_json::json!({"name": 1, "action": "deleted", "files_kept": true}),
            DELETE,
            "t"
        )
        .is_err()
    );

    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let dir = TempState::new().expect("state");
    let state = dir.path().join("state");
    let conf = config(&pebble, &dir, &state);
    let mut text = fs::read_to_string(&conf).expect("config");
    text.push_str("\n[[certificate]]\ndomains = [\"b.test\"]\nsolver = \"challtestsrv\"\n");
    fs::write(&conf, text).expect("write config");
    let c = p(&conf);
    let s = p(&state);

    // An empty store, and accounts before there is one.
    fs::create_dir_all(&state).expect("mkdir state");
    let r = json(&["list", "--state-dir", s]).ok();
    assert_eq!(r.stdout.trim(), "[]", "{}", r.describe());
    let r = json(&["account", "list", "--config", c]).ok();
    assert_eq!(r.stdout.trim(), "[]", "{}", r.describe());

    // issue: issued, then skipped (not due); a failure names the certificate.
    let issue = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "issue",
            "--config",
            c,
            "--solver",
            "challtestsrv",
            "-d",
            name,
        ];
        args.extend_from_slice(extra);
        json(&args)
    };
    let r = issue("a.test", &["--email", "ops@example.test"]).ok();
    assert_eq!(lines(&r, ISSUE, None, false)[0]["action"], "issued");
    let r = issue("a.test", &[]).ok();
    assert_eq!(lines(&r, ISSUE, None, false)[0]["action"], "skipped");
    let r = issue("bad.test", &["--solver-opt", "no_such_option=1"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    lines(&r, ISSUE, Some("bad.test"), false);

    // run and renew: one object per certificate, then the summary.
    let r = json(&["run", "--config", c]).ok();
    let v = lines(&r, BATCH, None, true);
    assert_eq!(v.len(), 2, "{}", r.describe());
    let r = json(&["renew", "--config", c, "--all"]).ok();
    assert_eq!(lines(&r, BATCH, None, true).len(), 3, "{}", r.describe());
    let r = json(&["renew", "--config", c, "--cert-name", "a.test", "--force"]).ok();
    assert_eq!(lines(&r, BATCH, None, true)[0]["action"], "renewed");

    // list, accounts, solvers, config check.
    let r = json(&["list", "--state-dir", s]).ok();
    assert_eq!(lines(&r, LIST, None, false).len(), 2, "{}", r.describe());
    let r = json(&["account", "list", "--config", c]).ok();
    lines(&r, ACCOUNT, None, false);
    let r = json(&["account", "show", "--config", c]).ok();
    lines(&r, ACCOUNT, None, false);
    let r = json(&["account", "rollover", "--config", c]).ok();
    lines(&r, ACCOUNT_ACTION, None, false);
    let r = json(&["solvers", "list", "--config", c]).ok();
    lines(&r, SOLVERS_LIST, None, false);
    let r = json(&["solvers", "info", "challtestsrv", "--config", c]).ok();
    lines(&r, SOLVERS_INFO, None, false);
    let r = json(&["config", "check", "--config", c]).ok();
    lines(&r, CONFIG_CHECK, None, false);
    // doctor: one object, ok or not (here the state dir holds certificates
    // and the config's plugin needs nothing it lacks).
    let r = json(&["doctor", "--config", c]);
    assert_eq!(lines(&r, DOCTOR, None, false).len(), 1, "{}", r.describe());
    let man_dir = format!("{s}-man");
    let r = json(&["man", "--dir", &man_dir]).ok();
    lines(&r, MAN, None, false);

    // revoke, rename, delete; their failures name the certificate.
    let r = json(&["revoke", "--config", c, "--cert-name", "b.test"]).ok();
    lines(&r, REVOKE, None, false);
    let r = json(&["revoke", "--config", c, "--cert-name", "none.test"]);
    assert_ne!(r.code, Some(0), "{}", r.describe());
    lines(&r, REVOKE, Some("none.test"), false);
    let r = json(&["rename", "--state-dir", s, "a.test", "c.test"]).ok();
    lines(&r, RENAME, None, false);
    let r = json(&["delete", "--state-dir", s, "--cert-name", "c.test"]).ok();
    lines(&r, DELETE, None, false);
    let r = json(&["delete", "--state-dir", s, "--cert-name", "c.test"]);
    assert_ne!(r.code, Some(0), "{}", r.describe());
    lines(&r, DELETE, Some("c.test"), false);

    // issue --csr: no key of ours (`privkey_path` null), the CSR stored;
    // its renewal likewise.
    let made = certsmith_core::keys::key_and_csr(
        certsmith_core::keys::KeyType::EcP256,
        &["csr.test".to_owned()],
    )
    .expect("a CSR");
    let csr_file = dir.file("csr.der");
    fs::write(&csr_file, &made.csr_der).expect("write CSR");
    let r = json(&[
        "issue",
        "--config",
        c,
        "--solver",
        "challtestsrv",
        "--csr",
        csr_file.to_str().expect("UTF-8"),
    ])
    .ok();
    let v = &lines(&r, ISSUE, None, false)[0];
    assert!(
        v["privkey_path"].is_null() && v["csr_path"].is_string(),
        "{v}"
    );
    let r = json(&["renew", "--config", c, "--cert-name", "csr.test", "--force"]).ok();
    assert!(lines(&r, BATCH, None, true)[0]["privkey_path"].is_null());

    // sync and store migrate (sync_migrate.rs checks what they do).
    let to = format!("{s}-sync");
    let r = json(&["sync", "--state-dir", s, "--to", &to]).ok();
    assert!(sync_lines(&r).len() >= 2, "{}", r.describe());
    let r = json(&["sync", "--state-dir", s, "--to", &to, "--name", "none.test"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    sync_lines(&r);
    let copy = format!("{s}-copy");
    let r = json(&["store", "migrate", "--from", s, "--to", &copy]).ok();
    migrate_lines(&r);
    let r = json(&["store", "migrate", "--from", s, "--to", &copy]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    migrate_lines(&r);

    // Usage errors, from clap and after parsing.
    for args in [&["list", "--no-such-flag"][..], &["list", "-q", "-v"][..]] {
        let r = json(args);
        assert_eq!(r.code, Some(2), "{}", r.describe());
        lines(&r, ERROR, None, false);
    }
    assert!(Path::new(&state).join("certs/b.test").exists());
}
