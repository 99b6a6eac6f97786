//! The plugin ABI and host, exercised as a user does: through the built
//! `certsmith` binary and real shared libraries (the solvers and the test
//! plugins under tests/plugins/), never through mocks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use certsmith_tests::{StaticServer, certsmith_bin};

fn build_dir() -> PathBuf {
    certsmith_bin()
        .parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

/// A library built by `cargo build --workspace`, e.g. `libcsmtest_hang.so`.
fn lib(name: &str) -> PathBuf {
    let p = build_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        p.display()
    );
    p
}

/// The panic = "abort" plugin lives outside the workspace (profiles are
/// per workspace); build it here if scripts/test has not.
fn abort_plugin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/abort-plugin");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(root.join("tests/plugins/abort/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building tests/plugins/abort failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/libcsmtest_abort.so")
}

fn certsmith(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(args)
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove("CSMTEST_TOKEN")
        .env_remove("CSMTEST_TOKEN_FILE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run certsmith")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn check_plugin(path: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let p = path.to_str().expect("utf-8 path");
    let mut args = vec!["plugin", "check", p];
    args.extend_from_slice(extra);
    let o = certsmith(&args, envs);
    let (out, err) = text(&o);
    (o.status.code().unwrap_or(-1), out, err)
}

/// A private directory (0700) holding a copy of `src` named `name`, with `mode`.
fn copy_plugin(src: &Path, name: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let dst = dir.path().join(name);
    std::fs::copy(src, &dst).expect("copy plugin");
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).expect("chmod");
    (dir, dst)
}

#[test]
fn solvers_list_finds_the_built_plugins_next_to_the_binary() {
    let o = certsmith(&["solvers", "list", "--output", "json"], &[]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let solvers = v["solvers"].as_array().expect("solvers array");
    for code in ["standalone", "webroot"] {
        let s = solvers
            .iter()
            .find(|s| s["code"] == code)
            .unwrap_or_else(|| panic!("{code} not listed: {v}"));
        let path = s["path"].as_str().expect("path");
        assert!(
            Path::new(path).starts_with(build_dir().canonicalize().expect("canon")),
            "{path} should come from the build directory"
        );
        assert_eq!(
            s["abi_version"],
            format!("1.{}", certsmith_plugin_api::abi::ABI_MINOR)
        );
    }
    let standalone = solvers
        .iter()
        .find(|s| s["code"] == "standalone")
        .expect("listed");
    assert_eq!(
        standalone["challenge_types"],
        serde_json::json!(["http-01", "tls-alpn-01"])
    );
    // Test plugins are not named libcertsmith_*, so they are not discovered.
    assert!(solvers.iter().all(|s| s["code"] != "panicky"));

    let o = certsmith(&["solvers", "list"], &[]);
    let (out, _) = text(&o);
    assert!(
        out.contains("standalone") && out.contains("webroot"),
        "{out}"
    );
}

#[test]
fn solvers_info_describes_options() {
    let o = certsmith(&["solvers", "info", "webroot", "--output", "json"], &[]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["code"], "webroot");
    assert_eq!(v["config"]["path"]["required"], true);
    assert_eq!(v["config"]["path"]["type"], "string");
    assert_eq!(
        v["in_process"], false,
        "a webroot file outlives the process"
    );
    assert!(
        v["path"]
            .as_str()
            .expect("path")
            .ends_with("libcertsmith_webroot.so")
    );

    let o = certsmith(&["solvers", "info", "standalone", "--output", "json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["in_process"], true, "its listeners are in the process");
    let o = certsmith(&["solvers", "info", "standalone"], &[]);
    let (out, _) = text(&o);
    assert!(
        out.contains("lifetime:   its challenges live in the certsmith process that presents them"),
        "{out}"
    );

    let o = certsmith(&["solvers", "info", "standalon"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("did you mean 'standalone'?"), "{err}");
    assert!(err.contains("available: "), "{err}");
}

#[test]
fn handshake_failures_are_specific_and_not_fatal() {
    let next_minor = format!(
        "needs plugin ABI 1.{}, this certsmith implements ABI 1.{}",
        certsmith_plugin_api::abi::ABI_MINOR + 1,
        certsmith_plugin_api::abi::ABI_MINOR
    );
    let cases: [(PathBuf, &str); 5] = [
        (lib("libcsmtest_bad_magic.so"), "wrong magic bytes"),
        (
            lib("libcsmtest_abi_v2.so"),
            "built for plugin ABI v2, this certsmith speaks v1",
        ),
        (
            lib("libcsmtest_small_struct.so"),
            "its PluginHeader is 16 bytes, ABI v1 needs at least 48",
        ),
        (abort_plugin(), "built with panic = \"abort\""),
        (lib("libcsmtest_abi_minor_next.so"), &next_minor),
    ];
    for (path, expected) in &cases {
        let (code, _, err) = check_plugin(path, &[], &[]);
        assert_eq!(code, 3, "{}: {err}", path.display());
        assert!(
            err.contains(expected),
            "{}: expected {expected:?} in {err}",
            path.display()
        );
    }

    // In a plugin directory, the bad ones are skipped with a warning and the
    // good one next to them still loads: one broken file breaks nothing else.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for (i, (path, _)) in cases.iter().enumerate() {
        std::fs::copy(path, dir.path().join(format!("libcertsmith_bad{i}.so"))).expect("copy");
    }
    std::fs::copy(
        lib("libcsmtest_panicky.so"),
        dir.path().join("libcertsmith_panicky.so"),
    )
    .expect("copy");
    let d = dir.path().to_str().expect("utf-8");
    let o = certsmith(
        &["solvers", "list", "--plugin-dir", d, "--output", "json"],
        &[],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        v["solvers"]
            .as_array()
            .expect("array")
            .iter()
            .any(|s| s["code"] == "panicky")
    );
    assert_eq!(
        v["problems"].as_array().expect("array").len(),
        cases.len(),
        "{v}"
    );
    let (_, err) = text(&certsmith(&["solvers", "list", "--plugin-dir", d], &[]));
    assert!(
        err.contains("libcertsmith_bad0.so") && err.contains("wrong magic"),
        "{err}"
    );
}

#[test]
fn only_the_entry_symbol_is_exported() {
    for name in ["libcertsmith_standalone.so", "libcertsmith_webroot.so"] {
        let out = Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(lib(name))
            .output()
            .expect("nm (binutils) must be installed: apt-get install binutils");
        let listing = String::from_utf8_lossy(&out.stdout);
        let exported: Vec<&str> = listing
            .lines()
            .filter(|l| l.contains(" T ") || l.contains(" D ") || l.contains(" B "))
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        assert_eq!(
            exported,
            vec!["certsmith_solver_plugin_v1"],
            "{name}: {listing}"
        );
    }
}

#[test]
fn a_panicking_plugin_is_reported_and_the_host_keeps_working() {
    let p = lib("libcsmtest_panicky.so");
    let (code, out, err) = check_plugin(&p, &[], &[("CSMTEST_TOKEN", "tok-abcdef")]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("FAIL  http-01: present (the plugin panicked: deliberate panic in present for check.certsmith.test)"),
        "{out}"
    );
    // After the panic the same instance still answers: cleanup is called
    // and succeeds, and the next challenge type is tried.
    assert!(out.contains("ok    http-01: cleanup"), "{out}");
    assert!(
        out.contains("FAIL  dns-01: present (the plugin panicked"),
        "{out}"
    );
    assert!(out.contains("ok    dns-01: cleanup (again"), "{out}");

    let (code, out, err) = check_plugin(
        &p,
        &["--solver-opt", "panic_in=new"],
        &[("CSMTEST_TOKEN", "tok-abcdef")],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("solver 'panicky' could not start: it panicked: deliberate panic in new"),
        "{err}"
    );

    let (code, out, _) = check_plugin(
        &p,
        &["--solver-opt", "panic_in=cleanup"],
        &[("CSMTEST_TOKEN", "tok-abcdef")],
    );
    assert_eq!(code, 3);
    assert!(out.contains("ok    http-01: present (handle"), "{out}");
    assert!(
        out.contains("FAIL  http-01: cleanup (the plugin panicked: deliberate panic in cleanup)"),
        "{out}"
    );
}

#[test]
fn the_sdk_enforces_the_request_deadline() {
    let (code, out, _) = check_plugin(
        &lib("libcsmtest_panicky.so"),
        &[
            "--solver-opt",
            "sleep_ms=60000",
            "--solver-opt",
            "panic_in=none",
            "--timeout",
            "1",
        ],
        &[("CSMTEST_TOKEN", "tok-abcdef")],
    );
    assert_eq!(code, 3);
    assert!(
        out.contains("FAIL  http-01: present (transient error: the operation did not finish before its deadline)"),
        "{out}"
    );
}

#[test]
fn a_plugin_that_never_completes_is_cancelled_at_the_host_timeout() {
    let started = std::time::Instant::now();
    let (code, out, err) = check_plugin(&lib("libcsmtest_hang.so"), &["--timeout", "1"], &[]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("FAIL  http-01: present (the plugin did not answer within ")
            && out.contains("s and was cancelled)"),
        "{out}"
    );
    // Every call of the contract timed out on its own; the host went on.
    assert!(out.contains("FAIL  http-01: cleanup (again"), "{out}");
    assert!(
        started.elapsed().as_secs() < 60,
        "the host must not wait forever"
    );
}

#[test]
fn writable_files_and_directories_are_refused() {
    let src = lib("libcertsmith_standalone.so");
    let (_d1, world_file) = copy_plugin(&src, "libcertsmith_standalone.so", 0o666);
    let (code, _, err) = check_plugin(&world_file, &[], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("the file is 0666, writable by group or others"),
        "{err}"
    );
    assert!(err.contains("chmod go-w"), "{err}");

    let (d2, in_open_dir) = copy_plugin(&src, "libcertsmith_standalone.so", 0o644);
    std::fs::set_permissions(d2.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, _, err) = check_plugin(&in_open_dir, &[], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("its directory is 0777"), "{err}");

    // Refused during discovery too: the code is then unknown.
    let o = certsmith(
        &[
            "solvers",
            "info",
            "standalone",
            "--plugin-dir",
            d2.path().to_str().expect("utf-8"),
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert!(err.contains("its directory is 0777"), "{err}");
}

#[test]
fn sha256_pins_are_enforced() {
    let src = lib("libcertsmith_webroot.so");
    let webroot = tempfile::tempdir().expect("tempdir");
    let opt = format!("path={}", webroot.path().display());
    let bad = "0".repeat(64);
    let (code, _, err) = check_plugin(&src, &["--sha256", &bad], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("its sha256 is") && err.contains(&bad), "{err}");

    let o = certsmith(&["solvers", "info", "webroot", "--output", "json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let good = v["sha256"].as_str().expect("sha256").to_owned();
    let (code, out, err) = check_plugin(
        &src,
        &[
            "--sha256",
            &good,
            "--solver-opt",
            &opt,
            "--http-base",
            "http://127.0.0.1:9",
        ],
        &[],
    );
    // Loads and creates; the HTTP fetch fails since nothing serves the webroot.
    assert!(out.contains("ok    handshake"), "{out}{err}");
    assert!(out.contains("ok    http-01: present"), "{out}");
    assert_eq!(code, 3);
}

#[test]
fn config_errors_name_the_key_the_fix_and_never_the_secret() {
    let p = lib("libcsmtest_panicky.so");
    // Unknown key, with the nearest valid one.
    let (code, _, err) = check_plugin(&p, &["--solver-opt", "tokn=x"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("solver 'panicky' has no option 'tokn': did you mean 'token'?"),
        "{err}"
    );

    // Missing required: names the option and both env vars.
    let (code, _, err) = check_plugin(&p, &[], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("needs option 'token': set CSMTEST_TOKEN (or CSMTEST_TOKEN_FILE"),
        "{err}"
    );

    // Wrong type.
    let (code, _, err) = check_plugin(
        &p,
        &["--solver-opt", "sleep_ms=soon"],
        &[("CSMTEST_TOKEN", "tok-abcdef")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("option 'sleep_ms' from --solver-opt must be an integer, got 'soon'"),
        "{err}"
    );

    // The _FILE variant is read; a careless plugin that logs the secret and
    // puts it in an error message is redacted by the host, in every output.
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "sk-live-9f8e7d6c5b4a";
    let f = dir.path().join("token");
    std::fs::write(&f, format!("{secret}\n")).expect("write");
    let f = f.to_str().expect("utf-8");
    let (code, out, err) = check_plugin(
        &p,
        &[
            "-v",
            "--solver-opt",
            "leak_secret=true",
            "--solver-opt",
            "panic_in=none",
        ],
        &[("CSMTEST_TOKEN_FILE", f)],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("the API rejected token [redacted]"), "{out}");
    assert!(
        err.contains("careless log line with token [redacted]"),
        "{err}"
    );
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "secret leaked:\n{out}\n{err}"
    );

    let (code, out, err) = check_plugin(
        &p,
        &[
            "--output",
            "json",
            "--solver-opt",
            "leak_secret=true",
            "--solver-opt",
            "panic_in=none",
        ],
        &[("CSMTEST_TOKEN", secret)],
    );
    assert_eq!(code, 3);
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "secret leaked:\n{out}\n{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ok"], false);
}

#[test]
fn plugin_check_passes_on_the_built_in_http_solvers() {
    let port = certsmith_tests::free_port();
    let tls_port = certsmith_tests::free_port();
    let listen = format!("listen=127.0.0.1:{port}");
    let tls = format!("tls_listen=127.0.0.1:{tls_port}");
    let (code, out, err) = check_plugin(
        &lib("libcertsmith_standalone.so"),
        &["--solver-opt", &listen, "--solver-opt", &tls],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    http-01: token served over HTTP"),
        "{out}"
    );
    assert!(out.contains("ok    tls-alpn-01: present"), "{out}");
    assert!(out.contains("plugin check passed"), "{out}");
}

#[test]
fn plugin_check_passes_on_webroot_behind_a_web_server() {
    let webroot = tempfile::tempdir().expect("tempdir");
    let port = certsmith_tests::free_port();
    let _server = StaticServer::start(webroot.path(), port).expect("static file server");
    let opt = format!("path={}", webroot.path().display());
    let base = format!("http://127.0.0.1:{port}");
    let (code, out, err) = check_plugin(
        &lib("libcertsmith_webroot.so"),
        &["--solver-opt", &opt, "--http-base", &base],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    http-01: token served over HTTP"),
        "{out}"
    );
    assert!(
        out.contains("ok    http-01: token gone after cleanup"),
        "{out}"
    );
    // Cleanup removed what it created and nothing else.
    assert_eq!(std::fs::read_dir(webroot.path()).expect("read").count(), 0);
}

/// In-process, through the core's host API: when the host stops waiting for
/// a call (its future is dropped, or it times out), it calls the plugin's
/// `cancel`, and the SDK drops the operation's future inside the plugin.
#[tokio::test]
async fn dropping_a_call_cancels_the_operation_inside_the_plugin() {
    use certsmith_core::plugin::{CallError, ConfigSources, LoadPolicy, PluginHost};
    use certsmith_plugin_api::{ChallengeRequest, ChallengeType};
    use std::time::Duration;

    let plugin = PluginHost::load_file(&lib("libcsmtest_panicky.so"), &LoadPolicy::default())
        .expect("load the panicky test plugin");
    let dir = tempfile::tempdir().expect("tempdir");
    let instance = |sleep_ms: &str, marker: &Path| {
        let cli = vec![
            ("token".to_owned(), "tok-abcdef".to_owned()),
            ("panic_in".to_owned(), "none".to_owned()),
            ("sleep_ms".to_owned(), sleep_ms.to_owned()),
            ("cancel_marker".to_owned(), marker.display().to_string()),
        ];
        let no_env = |_: &str| None;
        plugin
            .instantiate(&ConfigSources {
                cli: &cli,
                file: None,
                env: Some(&no_env),
            })
            .expect("create")
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let req = ChallengeRequest::new(
        ChallengeType::Http01,
        "cancel.test",
        "tok",
        "tok.x",
        now_ms + 120_000,
    );
    let wait_for = |p: &Path| {
        let p = p.to_path_buf();
        async move {
            for _ in 0..100 {
                if p.exists() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };

    // 1. The caller drops the future (as Ctrl-C or a failed sibling does).
    let marker1 = dir.path().join("dropped");
    let slow = instance("60000", &marker1);
    let r = tokio::time::timeout(Duration::from_millis(300), slow.present(&req)).await;
    assert!(r.is_err(), "present should still be sleeping");
    assert!(
        wait_for(&marker1).await,
        "the plugin's operation was not cancelled"
    );

    // 2. The host's own timeout fires.
    let marker2 = dir.path().join("timed-out");
    let slow = instance("60000", &marker2);
    let r = slow
        .call(
            certsmith_plugin_api::METHOD_PRESENT,
            &serde_json::to_vec(&req).expect("json"),
            Duration::from_millis(300),
        )
        .await;
    assert!(matches!(r, Err(CallError::TimedOut(_))), "{r:?}");
    assert!(
        wait_for(&marker2).await,
        "the timed-out operation was not cancelled"
    );

    // The plugin keeps working afterwards.
    let marker3 = dir.path().join("never");
    let fast = instance("0", &marker3);
    fast.present(&req)
        .await
        .expect("present after cancellations");
    assert!(!marker3.exists());
}

#[test]
fn the_search_path_is_walked_in_order() {
    // An installed layout: <prefix>/bin/certsmith and
    // <prefix>/lib/certsmith/plugins/libcertsmith_*.so.
    let prefix = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(prefix.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = prefix.path().join("bin");
    let plugins = prefix.path().join("lib/certsmith/plugins");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    for d in [
        &bin,
        &plugins,
        &prefix.path().join("lib"),
        &prefix.path().join("lib/certsmith"),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::copy(certsmith_bin(), bin.join("certsmith")).expect("copy binary");
    std::fs::copy(
        lib("libcertsmith_webroot.so"),
        plugins.join("libcertsmith_webroot.so"),
    )
    .expect("copy plugin");
    let list = |envs: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = Command::new(bin.join("certsmith"));
        cmd.args(["solvers", "list", "--output", "json"])
            .args(extra)
            .env_remove("CERTSMITH_PLUGIN_PATH");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("run the installed binary");
        assert!(o.status.success(), "{:?}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    let path_of = |v: &serde_json::Value, code: &str| {
        v["solvers"]
            .as_array()
            .expect("array")
            .iter()
            .find(|s| s["code"] == code)
            .and_then(|s| s["path"].as_str().map(str::to_owned))
    };

    // 1. <exe>/../lib/certsmith/plugins.
    let v = list(&[], &[]);
    let p = path_of(&v, "webroot").expect("webroot found under lib/certsmith/plugins");
    assert!(p.contains("lib/certsmith/plugins"), "{p}");
    assert!(
        path_of(&v, "standalone").is_none(),
        "only what is installed"
    );

    // 2. CERTSMITH_PLUGIN_PATH comes before it.
    let (d1, _) = copy_plugin(
        &lib("libcertsmith_webroot.so"),
        "libcertsmith_webroot.so",
        0o644,
    );
    let env_dir = d1.path().to_str().expect("utf-8").to_owned();
    let v = list(&[("CERTSMITH_PLUGIN_PATH", &env_dir)], &[]);
    assert_eq!(
        path_of(&v, "webroot").as_deref(),
        Some(
            d1.path()
                .join("libcertsmith_webroot.so")
                .to_str()
                .expect("utf-8")
        )
    );

    // 3. --plugin-dir comes before both.
    let (d2, _) = copy_plugin(
        &lib("libcertsmith_webroot.so"),
        "libcertsmith_webroot.so",
        0o644,
    );
    let cli_dir = d2.path().to_str().expect("utf-8").to_owned();
    let v = list(
        &[("CERTSMITH_PLUGIN_PATH", &env_dir)],
        &["--plugin-dir", &cli_dir],
    );
    assert_eq!(
        path_of(&v, "webroot").as_deref(),
        Some(
            d2.path()
                .join("libcertsmith_webroot.so")
                .to_str()
                .expect("utf-8")
        )
    );
}

#[test]
fn solvers_info_marks_secrets_and_names_their_env_vars() {
    let o = certsmith(&["solvers", "info", "cloudflare"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("api_token"))
        .unwrap_or_else(|| panic!("no api_token line in {out}"));
    assert!(line.contains("required"), "{line}");
    assert!(line.contains("secret"), "{line}");
    assert!(
        line.contains("env CLOUDFLARE_API_TOKEN or CLOUDFLARE_API_TOKEN_FILE"),
        "{line}"
    );
}

/// The libraries of `dir` this process has mapped (from /proc/self/maps).
fn mapped_from(dir: &Path) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mut files: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|f| Path::new(f).starts_with(dir))
        .map(|f| {
            Path::new(f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

#[test]
fn a_solver_is_loaded_alone_and_the_others_only_when_all_are_asked_for() {
    use certsmith_core::plugin::{PluginHost, PluginHostError, SearchPath};
    use std::sync::Arc;

    let (dir, _) = copy_plugin(
        &lib("libcertsmith_webroot.so"),
        "libcertsmith_webroot.so",
        0o644,
    );
    for (src, name) in [
        ("libcertsmith_standalone.so", "libcertsmith_standalone.so"),
        // Not a plugin at all: refused, but only when something loads it.
        ("libcsmtest_bad_magic.so", "libcertsmith_broken.so"),
    ] {
        let dst = dir.path().join(name);
        std::fs::copy(lib(src), &dst).expect("copy");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let host = PluginHost::discover(&SearchPath {
        dirs: vec![dir.path().to_owned()],
        ..SearchPath::default()
    });
    assert!(
        mapped_from(dir.path()).is_empty(),
        "discovery loads nothing"
    );

    let webroot = host.get("webroot").expect("webroot");
    assert_eq!(mapped_from(dir.path()), ["libcertsmith_webroot.so"]);
    assert!(Arc::ptr_eq(&webroot, &host.get("webroot").expect("again")));

    // Listing loads the rest, once, and keeps the plugin already loaded.
    let codes: Vec<String> = host.plugins().map(|p| p.manifest().code.clone()).collect();
    assert_eq!(codes, ["standalone", "webroot"]);
    assert!(
        host.plugins().any(|p| Arc::ptr_eq(p, &webroot)),
        "webroot was loaded a second time"
    );
    assert_eq!(host.problems().len(), 1, "{:?}", host.problems());
    assert!(host.problems()[0].path.ends_with("libcertsmith_broken.so"));
    // The refused file was loaded to be checked (and, as every library,
    // never unloaded).
    assert_eq!(
        mapped_from(dir.path()),
        [
            "libcertsmith_broken.so",
            "libcertsmith_standalone.so",
            "libcertsmith_webroot.so"
        ]
    );

    // An unknown code says what there is and what was refused.
    match host.get("webrot") {
        Err(PluginHostError::UnknownSolver {
            available,
            suggestion,
            refused,
            ..
        }) => {
            assert_eq!(available, ["standalone", "webroot"]);
            assert_eq!(suggestion.as_deref(), Some("webroot"));
            assert_eq!(refused.len(), 1, "{refused:?}");
        }
        other => panic!("expected UnknownSolver, got {other:?}"),
    }
}

#[test]
fn an_unknown_solver_loads_everything_to_say_what_there_is() {
    use certsmith_core::plugin::{PluginHost, PluginHostError, SearchPath};

    let (dir, _) = copy_plugin(
        &lib("libcertsmith_webroot.so"),
        "libcertsmith_webroot.so",
        0o644,
    );
    let host = PluginHost::discover(&SearchPath {
        dirs: vec![dir.path().to_owned()],
        ..SearchPath::default()
    });
    let e = host.get("cloudflare").expect_err("not there");
    assert!(
        matches!(&e, PluginHostError::UnknownSolver { available, .. } if available == &["webroot"]),
        "{e:?}"
    );
    assert_eq!(mapped_from(dir.path()), ["libcertsmith_webroot.so"]);
}
