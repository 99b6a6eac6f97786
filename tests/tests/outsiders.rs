//! Plugin authors outside the repository: the plugin-api crate packages on
//! its own; the example plugin, copied out of the workspace and built
//! against the packaged crate, loads; the example as released for ABI 1.0,
//! built against the pinned 1.0 crate, loads and passes `plugin check` in
//! this host; `certsmith plugin new` makes crates that pass it unchanged.
//!
//! The builds run `cargo --offline` (every dependency is in Cargo.lock and
//! the local registry cache) with this run's target directory, so the
//! dependencies compiled for the workspace are reused; the profile settings
//! of the workspace are passed as `--config` for the same reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use certsmith_tests::certsmith_bin;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// This run's target directory: the e2e binary is target/<profile>/deps/e2e-*.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<exe>")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "--config",
            "profile.dev.debug=\"line-tables-only\"",
            "--config",
            "profile.dev.package.\"*\".debug=false",
        ]);
    c
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// `cargo package -p certsmith-plugin-api`, unpacked into `dir`: the crate
/// exactly as crates.io would serve it. Returns its directory.
fn packaged_plugin_api(dir: &Path, verify: bool) -> PathBuf {
    let mut c = cargo();
    c.current_dir(workspace_root()).args([
        "package",
        "-p",
        "certsmith-plugin-api",
        "--offline",
        "--allow-dirty",
    ]);
    if !verify {
        c.arg("--no-verify");
    }
    run(c, "cargo package -p certsmith-plugin-api");
    let version = certsmith_plugin_api::VERSION;
    let krate = target_dir()
        .join("package")
        .join(format!("certsmith-plugin-api-{version}.crate"));
    let mut tar = Command::new("tar");
    tar.arg("xzf").arg(&krate).arg("-C").arg(dir);
    run(tar, "unpacking the .crate");
    let unpacked = dir.join(format!("certsmith-plugin-api-{version}"));
    let manifest = std::fs::read_to_string(unpacked.join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        !manifest.contains("workspace"),
        "the packaged Cargo.toml still inherits from a workspace:\n{manifest}"
    );
    assert!(manifest.contains("rust-version = \"1.95\""), "{manifest}");
    unpacked
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// The workspace's dependency table, to spell out `x.workspace = true` the
/// way `cargo package` does.
fn workspace_dependency(name: &str) -> toml::Value {
    let root: toml::Table = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .expect("root Cargo.toml")
        .parse()
        .expect("toml");
    root["workspace"]["dependencies"][name].clone()
}

/// plugins-example's Cargo.toml as an outsider writes it: explicit
/// versions, the plugin-api from `api`, its own workspace, and a library
/// name of its own, so that its build does not replace the workspace's and,
/// not being `libcertsmith_*`, is not discovered next to the certsmith
/// binary by other tests (two plugins with one code is an error).
fn outsider_manifest(api: &Path) -> String {
    let text = std::fs::read_to_string(workspace_root().join("plugins-example/Cargo.toml"))
        .expect("plugins-example/Cargo.toml");
    let mut m: toml::Table = text.parse().expect("toml");
    let package = m["package"].as_table_mut().expect("[package]");
    for key in ["version", "edition", "rust-version", "license"] {
        let ws: toml::Table = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
            .expect("root")
            .parse()
            .expect("toml");
        package.insert(key.into(), ws["workspace"]["package"][key].clone());
    }
    m["lib"]
        .as_table_mut()
        .expect("[lib]")
        .insert("name".into(), "csmtest_outside_challtestsrv".into());
    let deps = m["dependencies"].as_table_mut().expect("[dependencies]");
    for (name, spec) in deps.iter_mut() {
        let mut full = match workspace_dependency(name) {
            toml::Value::String(v) => {
                let mut t = toml::Table::new();
                t.insert("version".into(), v.into());
                t
            }
            toml::Value::Table(t) => t,
            other => panic!("{name}: {other}"),
        };
        if let Some(f) = spec.get("features") {
            let mut all = full
                .get("features")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            all.extend(f.as_array().cloned().unwrap_or_default());
            full.insert("features".into(), all.into());
        }
        if name == "certsmith-plugin-api" {
            // As published: the SDK is a default feature.
            full = toml::Table::new();
            full.insert("path".into(), api.display().to_string().into());
        }
        *spec = full.into();
    }
    m.remove("dev-dependencies");
    m.remove("lints");
    m.insert("workspace".into(), toml::Table::new().into());
    toml::to_string(&m).expect("toml")
}

fn plugin_check(lib: &Path, args: &[&str]) -> String {
    let mut c = Command::new(certsmith_bin());
    c.args(["plugin", "check"]).arg(lib).args(args);
    run(c, &format!("certsmith plugin check {}", lib.display()))
}

#[test]
fn the_example_builds_outside_the_workspace_from_the_packaged_crate_and_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let api = packaged_plugin_api(tmp.path(), true);
    let example = tmp.path().join("example");
    for f in ["src", "plugin.toml"] {
        let src = workspace_root().join("plugins-example").join(f);
        if src.is_dir() {
            copy_dir(&src, &example.join(f));
        } else {
            std::fs::copy(&src, example.join(f)).expect("copy");
        }
    }
    std::fs::write(example.join("Cargo.toml"), outsider_manifest(&api)).expect("write");
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        example.join("Cargo.lock"),
    )
    .expect("lock");
    let mut build = cargo();
    build
        .current_dir(&example)
        .args(["build", "--offline", "--lib"]);
    run(build, "building the example outside the workspace");
    let lib = target_dir().join("debug/libcsmtest_outside_challtestsrv.so");
    let cts = certsmith_tests::ChallTestSrv::start().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("url={}", cts.mgmt_url());
    let out = plugin_check(&lib, &["--solver-opt", &url]);
    assert!(out.contains("plugin check passed"), "{out}");
    assert!(out.contains("(ABI 1.3)"), "{out}");
}

#[test]
fn a_plugin_built_against_abi_1_0_loads_and_passes_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&workspace_root().join("tests/compat"), tmp.path());
    let example = tmp.path().join("plugins-example-1.0");
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        example.join("Cargo.lock"),
    )
    .expect("lock");
    let mut build = cargo();
    build
        .current_dir(&example)
        .args(["build", "--offline", "--lib"]);
    run(build, "building the ABI 1.0 example");
    let lib = target_dir().join("debug/libcsmtest_challtestsrv_abi10.so");
    let cts = certsmith_tests::ChallTestSrv::start().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("url={}", cts.mgmt_url());
    let dns = cts.dns_addr().to_string();
    let out = plugin_check(&lib, &["--solver-opt", &url, "--dns-server", &dns]);
    assert!(out.contains("(ABI 1.0)"), "{out}");
    assert!(out.contains("plugin check passed"), "{out}");
    assert!(
        out.contains("TXT record served by the DNS server"),
        "the check asked challtestsrv's DNS server: {out}"
    );

    // `certsmith doctor` does not ask a plugin built before ABI 1.2 to
    // check its credentials (it could not know the method): a visible
    // skip, not a pass, and not a failure.
    let plugins = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&lib, plugins.path().join("libcertsmith_challtestsrv.so")).expect("copy");
    let config = tmp.path().join("doctor.toml");
    std::fs::write(
        &config,
        format!(
            "[defaults]\nstate_dir = {:?}\n\n[[certificate]]\nname = \"c\"\ndomains = [\"c.example.test\"]\nsolver = \"challtestsrv\"\n[certificate.solver_options]\nurl = {:?}\n",
            tmp.path().join("state").display().to_string(),
            cts.mgmt_url()
        ),
    )
    .expect("write the config");
    let out = Command::new(certsmith_bin())
        .args([
            "doctor",
            "--output",
            "json",
            "--server",
            "https://127.0.0.1:9/dir",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--plugin-dir")
        .arg(plugins.path())
        .args(["--dns-resolver", &dns])
        .output()
        .expect("run certsmith doctor");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["check"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {report:#}"))
    };
    let plugin = check("plugin challtestsrv");
    assert_eq!(plugin["status"], "ok", "{report:#}");
    assert!(
        plugin["detail"]
            .as_str()
            .is_some_and(|d| d.contains("(ABI 1.0)")),
        "{plugin:#}"
    );
    let creds = check("credentials challtestsrv");
    assert_eq!(creds["status"], "skipped", "{report:#}");
    assert!(
        creds["detail"].as_str().is_some_and(
            |d| d.starts_with("not supported by this plugin (built for ABI 1.0), skipped")
        ),
        "{creds:#}"
    );
}

#[test]
fn plugin_new_makes_crates_that_build_and_pass_check_unchanged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let api = packaged_plugin_api(tmp.path(), false);
    let patch = format!(
        "patch.crates-io.certsmith-plugin-api.path=\"{}\"",
        api.display()
    );
    for kind in ["dns", "http"] {
        let dir = tmp.path().join(kind);
        let code = format!("scaffold-{kind}");
        let mut new = Command::new(certsmith_bin());
        new.args(["plugin", "new", &code, &format!("--{kind}")])
            .arg(&dir);
        let said = run(new, "certsmith plugin new");
        assert!(said.contains("plugin check"), "{said}");
        for f in [
            "Cargo.toml",
            "plugin.toml",
            "src/lib.rs",
            "tests/plugin_check.rs",
        ] {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        assert!(
            manifest.contains("crate-type = [\"cdylib\", \"rlib\"]"),
            "{manifest}"
        );
        assert!(
            manifest.contains(&format!("name = \"certsmith_scaffold_{kind}\"")),
            "{manifest}"
        );
        // As an outsider's crates.io dependency would resolve: to the
        // packaged crate (crates.io has no certsmith-plugin-api here).
        std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).expect("lock");
        let mut test = cargo();
        test.current_dir(&dir)
            .args(["--config", &patch, "test", "--offline"])
            .env("CERTSMITH_BIN", certsmith_bin());
        let out = run(test, &format!("cargo test in the {kind} scaffold"));
        assert!(out.contains("plugin_check_passes ... ok"), "{out}");
        // And the library itself, checked here too.
        let lib = target_dir().join(format!("debug/deps/libcertsmith_scaffold_{kind}.so"));
        let port = certsmith_tests::free_port();
        let listen = format!("listen=127.0.0.1:{port}");
        let args: &[&str] = if kind == "http" {
            &["--solver-opt", &listen]
        } else {
            &[]
        };
        let out = plugin_check(&lib, args);
        assert!(out.contains("plugin check passed"), "{out}");
    }
    // Refusals: a bad code, a directory in use.
    let o = Command::new(certsmith_bin())
        .args(["plugin", "new", "Bad Code", "--dns"])
        .arg(tmp.path().join("x"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(certsmith_bin())
        .args(["plugin", "new", "again", "--dns"])
        .arg(tmp.path().join("dns"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
}

/// `plugin check --dns-server` finds the zone by SOA, as a real run does: a
/// zone-based plugin (rfc2136 updates the zone it is given) then passes
/// for a name below the apex; `--zone` overrides the lookup, and a wrong
/// zone makes the same plugin fail.
#[test]
fn plugin_check_finds_the_zone_by_soa_and_zone_overrides_it() {
    use certsmith_tests::bind::{Bind, ZoneSpec};
    let bind = Bind::start(&[ZoneSpec::new("example.test")]).unwrap_or_else(|e| panic!("{e}"));
    let lib = target_dir().join("debug/libcertsmith_rfc2136.so");
    let addr = bind.addr().to_string();
    let server = format!("server={addr}");
    let key = format!("tsig_key_name={}", bind.tsig_key_name());
    let check = |extra: &[&str]| {
        let mut c = Command::new(certsmith_bin());
        c.args(["plugin", "check"])
            .arg(&lib)
            .args(["--solver-opt", &server, "--solver-opt", &key])
            .args(["--domain", "www.example.test"])
            .args(extra)
            .env("RFC2136_TSIG_SECRET", bind.tsig_secret_b64());
        let o = c.output().expect("run certsmith");
        (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (code, out) = check(&["--dns-server", &addr]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("zone found by SOA")
            && out.contains("_acme-challenge.www.example.test is in zone example.test"),
        "{out}"
    );
    assert!(out.contains("TXT record gone after cleanup"), "{out}");
    let (code, out) = check(&["--zone", "example.test"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("zone found by SOA"), "{out}");
    // The override wins over the lookup: a zone BIND does not have fails.
    let (code, out) = check(&["--dns-server", &addr, "--zone", "www.example.test"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(!out.contains("zone found by SOA"), "{out}");
}
