//! Operator semantics (issue 11), through the built binary against a real
//! Pebble: certificate identity and an idempotent `issue`, `issue
//! --config` honouring `[defaults]`, revoke that retires, `delete`,
//! `rename`, a closed stdout, JSON on usage errors and an empty store,
//! refused plugins, and the contrib files against the README.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};
use serde_json::Value;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", self.describe()))
            })
            .collect()
    }

    fn one(&self) -> Value {
        let mut v = self.json();
        assert_eq!(v.len(), 1, "one object: {}", self.describe());
        v.remove(0)
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(args)
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove("CERTSMITH_CONFIG")
        .env_remove("CERTSMITH_OUTPUT")
        .stdin(Stdio::null());
    cmd
}

fn certsmith(args: &[&str]) -> Run {
    Run::from(command(args).output().expect("run certsmith"))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn orders_in_log(pebble: &Pebble) -> usize {
    fs::read_to_string(pebble.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Added order"))
        .count()
}

fn sans(cert: &Path) -> Vec<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()
        .expect("run openssl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<String> = text
        .split([',', '\n'])
        .filter_map(|s| s.trim().strip_prefix("DNS:").map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn fullchain(state: &Path, name: &str) -> PathBuf {
    state.join("certs").join(name).join("current/fullchain.pem")
}

/// A config file whose `[defaults]` carry everything `issue` needs
/// (server, CA bundle, state dir, terms, contact, DNS), and no certificate.
fn config(pebble: &Pebble, state: &TempState) -> PathBuf {
    let cts = pebble.challtestsrv().expect("Pebble's challtestsrv");
    let text = format!(
        r#"[defaults]
server = "{server}"
ca_cert = "{ca}"
email = "ops@example.com"
agree_tos = true
state_dir = "{state}"
dns_resolvers = ["{dns}"]
propagation_servers = ["{dns}"]
propagation_timeout = "30s"

[solvers.challtestsrv]
url = "{mgmt}"

[solvers.standalone]
listen = ["127.0.0.1:{http}"]
"#,
        server = pebble.directory_url(),
        ca = p(pebble.ca_cert_path()),
        state = p(state.path()),
        dns = cts.dns_addr(),
        mgmt = cts.mgmt_url(),
        http = pebble.http_port(),
    );
    let path = state.file("certsmith.toml");
    fs::write(&path, text).expect("write config");
    path
}

fn issue(config: &Path, domains: &[&str], extra: &[&str]) -> Run {
    let mut args = vec![
        "issue",
        "--config",
        p(config),
        "--solver",
        "challtestsrv",
        "--output",
        "json",
    ];
    for d in domains {
        args.extend(["-d", d]);
    }
    args.extend_from_slice(extra);
    certsmith(&args)
}

/// Items 1-3: a wildcard-only set gets its own name; `issue --config`
/// takes server, state dir, terms and contact from `[defaults]`; `issue`
/// again orders nothing, refuses changes it was not asked for, and
/// `--expand`/`--force` order.
#[test]
fn issue_is_idempotent_and_never_replaces_a_certificate_unasked() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let config = config(&pebble, &state);
    let s = state.path();

    let r = issue(&config, &["w.test", "*.w.test"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.one()["name"], "w.test");
    assert_eq!(orders_in_log(&pebble), 1);

    let r = issue(&config, &["*.w.test"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.one()["name"], "_.w.test", "{}", r.describe());
    assert_eq!(sans(&fullchain(s, "w.test")), ["*.w.test", "w.test"]);
    assert_eq!(sans(&fullchain(s, "_.w.test")), ["*.w.test"]);
    assert_eq!(orders_in_log(&pebble), 2);

    let r = issue(&config, &["w.test", "*.w.test"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.one();
    assert_eq!(v["action"], "skipped", "{}", r.describe());
    assert!(
        v["reason"].as_str().is_some_and(|w| w.contains("not due")),
        "{v}"
    );
    assert!(v["fullchain_path"].is_string(), "{v}");
    assert_eq!(orders_in_log(&pebble), 2, "not due: no order");

    let r = issue(&config, &["w.test"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--replace"), "{}", r.describe());
    assert_eq!(r.one()["name"], "w.test");

    let r = issue(&config, &["w.test", "*.w.test", "x.w.test"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--expand"), "{}", r.describe());
    assert_eq!(orders_in_log(&pebble), 2, "refused: no order");
    assert_eq!(sans(&fullchain(s, "w.test")), ["*.w.test", "w.test"]);

    let r = issue(&config, &["w.test", "*.w.test", "x.w.test"], &["--expand"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        sans(&fullchain(s, "w.test")),
        ["*.w.test", "w.test", "x.w.test"]
    );
    assert_eq!(orders_in_log(&pebble), 3);

    let r = issue(&config, &["w.test", "*.w.test", "x.w.test"], &["--force"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.one()["action"], "renewed", "{}", r.describe());
    assert_eq!(orders_in_log(&pebble), 4);

    // Not due: the solver is not even set up, so a broken solver
    // configuration does not fail it; a new name needs it, and fails.
    let broken = ["--solver-opt", "no_such_option=1"];
    let r = issue(&config, &["w.test", "*.w.test", "x.w.test"], &broken);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.one();
    assert_eq!(v["action"], "skipped", "{}", r.describe());
    assert!(
        v["reason"].as_str().is_some_and(|w| w.contains("not due")),
        "{v}"
    );
    let r = issue(&config, &["new.w.test"], &broken);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = r.one();
    assert_eq!(v["name"], "new.w.test", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no_such_option")),
        "{v}"
    );
    assert_eq!(orders_in_log(&pebble), 4, "nothing ordered");
}

/// Item 5 (and 8): revoking for cessation of operation retires the
/// certificate (listed `retired`, never renewed); `rename` moves it;
/// `delete` removes it; an empty store lists as `[]`.
#[test]
fn revoke_retires_then_rename_and_delete() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let config = config(&pebble, &state);
    let (c, s) = (p(&config), p(state.path()));
    let r = issue(&config, &["gone.test"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let r = certsmith(&[
        "revoke",
        "--config",
        c,
        "--cert-name",
        "gone.test",
        "--reason",
        "cessation-of-operation",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.one()["retired"], true);
    let r = certsmith(&["list", "--state-dir", s, "--output", "json"]);
    assert_eq!(r.one()["state"], "retired", "{}", r.describe());
    let before = orders_in_log(&pebble);
    let r = certsmith(&[
        "renew", "--config", c, "--all", "--force", "--output", "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.json()[0]["action"], "skipped", "{}", r.describe());
    assert_eq!(
        orders_in_log(&pebble),
        before,
        "a retired one is never renewed"
    );

    let r = certsmith(&["rename", "--state-dir", s, "gone.test", "old.test"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(fullchain(state.path(), "old.test").exists());
    let r = certsmith(&[
        "delete",
        "--state-dir",
        s,
        "--cert-name",
        "old.test",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.one()["name"], "old.test");
    assert!(!state.path().join("certs/old.test").exists());
    let r = certsmith(&["list", "--state-dir", s, "--output", "json"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.stdout.trim(), "[]");
}

/// Item 7: a closed stdout ends certsmith quietly with 141, never a panic.
#[test]
fn a_closed_stdout_ends_quietly_with_141() {
    let state = TempState::new().expect("state");
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the descriptors are ours; the read end is closed at once.
    let (read, write) = unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) };
    drop(read);
    let out = command(&["list", "--state-dir", p(state.path()), "--output", "json"])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run certsmith");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Item 8: a usage error (clap's too) is a JSON object on stdout.
#[test]
fn usage_errors_are_json_under_output_json() {
    let r = certsmith(&["issue", "--output", "json", "--no-such-flag"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = r.one();
    assert_eq!(v["error"]["class"], "usage");
    assert_eq!(v["error"]["exit_code"], 2);
    // A conflict found after parsing (-q with -v) too.
    let r = certsmith(&["list", "-q", "-v", "--output", "json"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = r.one();
    assert_eq!(v["error"]["class"], "usage", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("-q/--quiet cannot be used with -v/--verbose")),
        "{v}"
    );
    let r = certsmith(&["list", "-q", "-v"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stdout.is_empty(), "{}", r.describe());
}

/// Item 9: refused plugins are listed with why, and named when a code is
/// not found; a file named for one code whose manifest says another is
/// refused with both named.
#[test]
fn refused_plugins_are_shown_with_the_reason() {
    let dir = TempState::new().expect("dir");
    let built = certsmith_bin()
        .parent()
        .expect("target dir")
        .join("libcertsmith_webroot.so");
    let renamed = dir.path().join("libcertsmith_mywebroot.so");
    fs::copy(&built, &renamed).expect("copy plugin");
    let open = dir.path().join("libcertsmith_openweb.so");
    fs::copy(&built, &open).expect("copy plugin");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).expect("chmod");
    let d = p(dir.path());
    let r = certsmith(&["solvers", "list", "--plugin-dir", d]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("libcertsmith_mywebroot.so"))
        .unwrap_or_else(|| panic!("mywebroot listed: {}", r.describe()));
    assert!(
        line.contains("'mywebroot'") && line.contains("'webroot'"),
        "{line}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("refused") && l.contains("libcertsmith_openweb.so")),
        "{}",
        r.describe()
    );
    let r = certsmith(&[
        "issue",
        "-d",
        "a.test",
        "--solver",
        "openweb",
        "--plugin-dir",
        d,
        "--state-dir",
        d,
    ]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("refused") && r.stderr.contains("libcertsmith_openweb.so"),
        "{}",
        r.describe()
    );
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Item 10: the README's exit codes are those of cli/src/exit.rs.
#[test]
fn readme_exit_codes_match_exit_rs() {
    let exit_rs = fs::read_to_string(root().join("cli/src/exit.rs")).expect("exit.rs");
    let mut code_consts: Vec<u32> = exit_rs
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub(crate) const "))
        .filter_map(|l| l.split('=').nth(1))
        .filter_map(|v| v.trim().trim_end_matches(';').parse().ok())
        .collect();
    code_consts.sort_unstable();
    let readme = fs::read_to_string(root().join("README.md")).expect("README");
    let section = readme
        .split("## Exit codes")
        .nth(1)
        .expect("an Exit codes section");
    let mut documented: Vec<u32> = section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(' ').next())
        .filter_map(|n| n.parse().ok())
        .collect();
    documented.sort_unstable();
    assert_eq!(documented, code_consts);
}

/// Item 10: the systemd units are valid and run the binary where the
/// README installs it.
#[test]
fn systemd_units_verify_and_match_the_install() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README");
    let service =
        fs::read_to_string(root().join("contrib/systemd/certsmith.service")).expect("unit");
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let bin = exec.split(' ').next().expect("a program");
    let dir = Path::new(bin).parent().expect("a directory");
    assert!(
        readme.contains(&format!("target/release/certsmith {}/", dir.display())),
        "the README installs certsmith to {}",
        dir.display()
    );
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok(),
        "systemd-analyze is missing: apt-get install systemd (scripts/test does)"
    );
    // Verified as installed, but with ExecStart on a copy of the built
    // binary (systemd-analyze checks that the program exists).
    let tmp = TempState::new().expect("dir");
    let bin_at = tmp.path().join("certsmith");
    fs::copy(certsmith_bin(), &bin_at).expect("copy binary");
    let unit = service.replace(
        &format!("ExecStart={bin} "),
        &format!("ExecStart={} ", p(&bin_at)),
    );
    fs::write(tmp.path().join("certsmith.service"), unit).expect("write unit");
    fs::copy(
        root().join("contrib/systemd/certsmith.timer"),
        tmp.path().join("certsmith.timer"),
    )
    .expect("copy timer");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(tmp.path().join("certsmith.service"))
        .arg(tmp.path().join("certsmith.timer"))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("certsmith.service:"), "{stderr}");
}
