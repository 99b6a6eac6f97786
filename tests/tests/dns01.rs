//! dns-01 end to end: wildcard certificates from a real Pebble, with records
//! written by real DNS plugins into real DNS servers (BIND9 through RFC 2136,
//! pebble-challtestsrv through the example plugin), the core finding zones,
//! following CNAMEs, checking propagation and keeping its journal.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use certsmith_tests::bind::{Bind, ZoneSpec};
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin, dns, journal_entries};

pub(crate) fn run(args: &[String], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(args).env_remove("CERTSMITH_PLUGIN_PATH");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run certsmith")
}

pub(crate) fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub(crate) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

/// `certsmith issue` arguments common to every test: the CA, the state dir.
pub(crate) fn issue_args(
    pebble: &Pebble,
    state: &Path,
    domains: &[&str],
    solver: &str,
) -> Vec<String> {
    let mut a = s(&[
        "issue",
        "--solver",
        solver,
        "--agree-tos",
        "--output",
        "json",
    ]);
    for d in domains {
        a.push("-d".into());
        a.push((*d).into());
    }
    a.extend([
        "--server".into(),
        pebble.directory_url(),
        "--ca-cert".into(),
        pebble.ca_cert_path().display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
    ]);
    a
}

/// The SANs of a PEM certificate, via openssl.
fn sans(cert: &Path) -> Vec<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()
        .expect("openssl must be installed: apt-get install openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<String> = text
        .split([',', '\n'])
        .filter_map(|p| p.trim().strip_prefix("DNS:").map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// Verifies `fullchain` against Pebble's root.
fn verify_chain(pebble: &Pebble, dir: &Path) {
    let root = pebble.root_pem_blocking().expect("root from /roots/0");
    let root_path = dir.join("pebble-root.pem");
    std::fs::write(&root_path, root).expect("write root");
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_path)
        .arg("-untrusted")
        .arg(dir.join("chain.pem"))
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "chain does not verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn issued_dir(stdout: &str) -> PathBuf {
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    PathBuf::from(v["cert_path"].as_str().expect("cert_path"))
        .parent()
        .expect("dir")
        .to_path_buf()
}

/// A BIND9 serving `example.test` and `validation.test`, TSIG updates allowed,
/// with CNAME delegation and a CNAME loop set up in `example.test`.
pub(crate) fn bind() -> Bind {
    Bind::start_resolving(&[
        ZoneSpec::new("example.test")
            .record("_acme-challenge.app IN CNAME _acme-challenge.app.validation.test.")
            .record("_acme-challenge.loop1 IN CNAME _acme-challenge.loop2.example.test.")
            .record("_acme-challenge.loop2 IN CNAME _acme-challenge.loop1.example.test."),
        ZoneSpec::new("validation.test"),
    ])
    .expect("start BIND9")
}

pub(crate) fn pebble_on(bind: &Bind) -> Pebble {
    Pebble::start(PebbleOpts {
        dns_server: Some(bind.addr()),
        ..PebbleOpts::default()
    })
    .expect("start Pebble")
}

fn rfc2136_opts(bind: &Bind) -> Vec<String> {
    rfc2136_opts_checking(bind, &[&bind.addr().to_string()])
}

/// The rfc2136 options, with propagation checked on `servers`.
pub(crate) fn rfc2136_opts_checking(bind: &Bind, servers: &[&str]) -> Vec<String> {
    let a = bind.addr().to_string();
    let mut v = s(&[
        "--solver-opt",
        &format!("server={a}"),
        "--solver-opt",
        &format!("tsig_key_name={}", bind.tsig_key_name()),
        "--dns-resolver",
        &a,
    ]);
    for server in servers {
        v.push("--propagation-server".into());
        v.push((*server).into());
    }
    v
}

/// Starts `certsmith issue` for example.test with propagation checked on a
/// server that never answers, and returns once the record is in BIND: the
/// process is then waiting, with a presented challenge to clean up.
fn start_stuck_issue(bind: &Bind, pebble: &Pebble, state: &TempState, silent: &str) -> Child {
    start_stuck_issue_with(bind, pebble, state, silent, false)
}

/// Like [`start_stuck_issue`]; with `secret_flag` the TSIG secret is given
/// only as `--solver-opt`, not in the environment.
fn start_stuck_issue_with(
    bind: &Bind,
    pebble: &Pebble,
    state: &TempState,
    silent: &str,
    secret_flag: bool,
) -> Child {
    let mut args = issue_args(pebble, state.path(), &["example.test"], "rfc2136");
    args.extend(rfc2136_opts_checking(bind, &[silent]));
    args.extend(s(&["--propagation-timeout", "600"]));
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(&args).env_remove("RFC2136_TSIG_SECRET");
    if secret_flag {
        cmd.args([
            "--solver-opt",
            &format!("tsig_secret={}", bind.tsig_secret_b64()),
        ]);
    } else {
        cmd.env("RFC2136_TSIG_SECRET", bind.tsig_secret_b64());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while bind
        .query_txt("_acme-challenge.example.test")
        .expect("query")
        .is_empty()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the record never appeared in BIND");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn assert_no_challenge_txt(bind: &Bind, names: &[&str]) {
    for n in names {
        let v = bind.query_txt(n).expect("query BIND");
        assert!(v.is_empty(), "{n} still has TXT {v:?}");
    }
}

#[test]
fn wildcard_and_apex_through_rfc2136_and_bind() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let mut args = issue_args(
        &pebble,
        state.path(),
        &["*.example.test", "example.test"],
        "rfc2136",
    );
    args.extend(rfc2136_opts(&bind));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let dir = issued_dir(&out);
    assert_eq!(
        sans(&dir.join("cert.pem")),
        vec!["*.example.test", "example.test"]
    );
    verify_chain(&pebble, &dir);
    // Both values shared one name; progress said where and how far.
    assert!(
        err.contains("TXT record _acme-challenge.example.test in zone example.test"),
        "{err}"
    );
    assert!(err.contains("1/1 nameservers serve the record"), "{err}");
    assert_no_challenge_txt(&bind, &["_acme-challenge.example.test"]);
    // The journal is empty again.
    assert_eq!(journal_entries(state.path()), 0);
}

#[test]
fn cname_delegation_writes_into_the_validation_zone() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let mut args = issue_args(&pebble, state.path(), &["app.example.test"], "rfc2136");
    args.extend(rfc2136_opts(&bind));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        err.contains(
            "TXT record goes to _acme-challenge.app.validation.test in zone validation.test (via CNAME _acme-challenge.app.example.test → _acme-challenge.app.validation.test)"
        ),
        "{err}"
    );
    verify_chain(&pebble, &issued_dir(&out));
    assert_no_challenge_txt(&bind, &["_acme-challenge.app.validation.test"]);

    // A loop is reported with its chain, before anything is presented.
    let mut args = issue_args(&pebble, state.path(), &["loop1.example.test"], "rfc2136");
    args.extend(rfc2136_opts(&bind));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("CNAME loop at the challenge name: _acme-challenge.loop1.example.test → _acme-challenge.loop2.example.test → _acme-challenge.loop1.example.test"),
        "{err}"
    );
}

#[test]
fn a_wrong_tsig_secret_is_translated_and_a_solver_failure() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let mut args = issue_args(&pebble, state.path(), &["example.test"], "rfc2136");
    args.extend(rfc2136_opts(&bind));
    let wrong = "c2VjcmV0LXRoYXQtaXMtd3Jvbmctc2VjcmV0LXRoYXQtaXMtd3Jvbmc=";
    let o = run(&args, &[("RFC2136_TSIG_SECRET", wrong)]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(err.contains("TSIG key rejected"), "{err}");
    assert!(
        err.contains("check key name, secret and algorithm"),
        "{err}"
    );
    assert!(
        !err.contains(wrong) && !out.contains(wrong),
        "secret leaked"
    );
}

/// A UDP port where nothing answers: a nameserver that never serves the record.
fn silent_server() -> (std::net::UdpSocket, String) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("addr").to_string();
    (sock, addr)
}

#[test]
fn a_propagation_timeout_names_the_server_and_still_cleans_up() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let (_silent, silent) = silent_server();
    let a = bind.addr().to_string();
    let mut args = issue_args(&pebble, state.path(), &["example.test"], "rfc2136");
    args.extend(rfc2136_opts_checking(&bind, &[&a, &silent]));
    args.extend(s(&["--propagation-timeout", "2"]));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(6), "{out}\n{err}");
    assert!(
        err.contains("did not reach every authoritative nameserver"),
        "{err}"
    );
    assert!(
        err.contains(&format!("MISS {silent}: error: no answer")),
        "{err}"
    );
    assert!(
        err.contains(&format!("ok   {a}: serves all 1 values")),
        "{err}"
    );
    assert_no_challenge_txt(&bind, &["_acme-challenge.example.test"]);
}

#[test]
fn a_killed_run_leaves_a_journal_entry_the_next_run_cleans() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let (_silent, silent) = silent_server();
    let mut child = start_stuck_issue(&bind, &pebble, &state, &silent);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert_eq!(
        bind.query_txt("_acme-challenge.example.test")
            .expect("query")
            .len(),
        1,
        "the killed run could not clean up"
    );
    assert_eq!(journal_entries(state.path()), 1);

    // Any later run on the state dir removes it first and says so.
    let mut args = issue_args(&pebble, state.path(), &["other.example.test"], "rfc2136");
    args.extend(rfc2136_opts(&bind));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        err.contains("1 challenge(s) left by an earlier run"),
        "{err}"
    );
    assert!(
        err.contains("removed TXT _acme-challenge.example.test = "),
        "{err}"
    );
    assert_no_challenge_txt(&bind, &["_acme-challenge.example.test"]);
    assert_eq!(journal_entries(state.path()), 0);
}

#[test]
fn a_leftover_presented_with_a_flag_given_secret_is_cleaned_with_this_runs_flags() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let (_silent, silent) = silent_server();
    let mut child = start_stuck_issue_with(&bind, &pebble, &state, &silent, true);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert_eq!(journal_entries(state.path()), 1);

    // The secret was never stored; this run gives it the same way.
    let mut args = issue_args(&pebble, state.path(), &["other.example.test"], "rfc2136");
    args.extend(rfc2136_opts(&bind));
    args.extend(s(&[
        "--solver-opt",
        &format!("tsig_secret={}", bind.tsig_secret_b64()),
    ]));
    let o = run(&args, &[]);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        err.contains("removed TXT _acme-challenge.example.test = "),
        "{err}"
    );
    assert!(!err.contains("needs option"), "{err}");
    assert_no_challenge_txt(&bind, &["_acme-challenge.example.test"]);
    assert_eq!(journal_entries(state.path()), 0);
}

#[test]
fn twenty_wildcard_certificates_through_the_example_plugin() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let cts = pebble.challtestsrv().expect("Pebble's challtestsrv");
    let dns_addr = cts.dns_addr().to_string();
    let url = format!("url={}", cts.mgmt_url());
    let state = TempState::new().expect("state");
    let mut children = Vec::new();
    for i in 0..20 {
        let apex = format!("site{i}.test");
        let wildcard = format!("*.site{i}.test");
        let mut args = issue_args(&pebble, state.path(), &[&wildcard, &apex], "challtestsrv");
        args.extend(s(&[
            "--solver-opt",
            &url,
            "--dns-resolver",
            &dns_addr,
            "--propagation-server",
            &dns_addr,
        ]));
        let child = Command::new(certsmith_bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        children.push((i, child));
    }
    for (i, child) in children {
        let o = child.wait_with_output().expect("wait");
        let (out, err) = texts(&o);
        assert_eq!(o.status.code(), Some(0), "site{i}: {out}\n{err}");
        let dir = issued_dir(&out);
        assert_eq!(
            sans(&dir.join("cert.pem")),
            vec![format!("*.site{i}.test"), format!("site{i}.test")]
        );
        verify_chain(&pebble, &dir);
        let left = dns::query_txt(cts.dns_addr(), &format!("_acme-challenge.site{i}.test"))
            .expect("query challtestsrv");
        assert!(left.is_empty(), "site{i}: TXT left: {left:?}");
    }
}

#[test]
fn sigterm_during_an_order_cleans_up_before_exiting() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let (_silent, silent) = silent_server();
    let child = start_stuck_issue(&bind, &pebble, &state, &silent);
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().expect("wait");
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted: removing presented challenges"),
        "{err}"
    );
    assert!(err.contains("dns-01 response removed"), "{err}");
    assert_no_challenge_txt(&bind, &["_acme-challenge.example.test"]);
    assert_eq!(journal_entries(state.path()), 0);
}

#[test]
fn no_follow_cname_writes_at_the_challenge_name_itself() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let mut args = issue_args(&pebble, state.path(), &["app.example.test"], "rfc2136");
    args.extend(rfc2136_opts(&bind));
    args.extend(s(&["--no-follow-cname", "--propagation-timeout", "1"]));
    let o = run(&args, &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())]);
    let (out, err) = texts(&o);
    // BIND keeps a CNAME alone at its name (RFC 1034 §3.6.2), so the value
    // never appears there: the point is where certsmith put it.
    assert!(
        err.contains(
            "app.example.test: TXT record _acme-challenge.app.example.test in zone example.test"
        ),
        "{err}"
    );
    assert!(!err.contains("via CNAME"), "{err}");
    assert_eq!(o.status.code(), Some(6), "{out}\n{err}");
}
