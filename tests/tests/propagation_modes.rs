//! The three propagation checks through the CLI, against a real Pebble
//! validating through a real BIND9 that the rfc2136 plugin writes to:
//! `recursive` issues with only a resolver to ask, `wait:N` issues without
//! a single query to the server named for checks, and both come from the
//! config file per certificate as well as from the flag.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output};

use certsmith_tests::bind::{Bind, ZoneSpec};
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};

fn run(args: &[String], bind: &Bind) -> (Option<i32>, String, String) {
    let o: Output = Command::new(certsmith_bin())
        .args(args)
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove("CERTSMITH_STATE_DIR")
        .env("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())
        .output()
        .expect("run certsmith");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

/// BIND9 answering for `example.test` and `validation.test`, recursion
/// included (from its own zones only). The zones' NS, `ns1.<zone>`, is
/// 127.0.0.1 on port 53, where BIND does not listen: an authoritative check
/// without `--propagation-server` could not reach it.
fn bind() -> Bind {
    Bind::start_resolving(&[
        ZoneSpec::new("example.test"),
        ZoneSpec::new("validation.test"),
    ])
    .expect("start BIND9")
}

fn pebble_on(bind: &Bind) -> Pebble {
    Pebble::start(PebbleOpts {
        dns_server: Some(bind.addr()),
        ..PebbleOpts::default()
    })
    .expect("start Pebble")
}

/// `issue` of `domain` through rfc2136 into `bind`, with `extra` flags.
fn issue(pebble: &Pebble, bind: &Bind, state: &Path, domain: &str, extra: &[&str]) -> Vec<String> {
    let a = bind.addr().to_string();
    let mut args = s(&["issue", "--solver", "rfc2136", "--agree-tos", "-d", domain]);
    args.extend([
        "--server".into(),
        pebble.directory_url(),
        "--ca-cert".into(),
        pebble.ca_cert_path().display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--solver-opt".into(),
        format!("server={a}"),
        "--solver-opt".into(),
        format!("tsig_key_name={}", bind.tsig_key_name()),
        "--dns-resolver".into(),
        a,
    ]);
    args.extend(s(extra));
    args
}

/// A UDP socket nobody answers on, to prove it is never asked.
fn silent_server() -> (UdpSocket, String) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_nonblocking(true).expect("nonblocking");
    let addr = sock.local_addr().expect("addr").to_string();
    (sock, addr)
}

/// How many datagrams reached `sock`.
fn datagrams(sock: &UdpSocket) -> usize {
    let mut buf = [0u8; 512];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

#[test]
fn a_fixed_wait_issues_without_asking_any_server() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let (silent, silent_addr) = silent_server();
    // The server named for checks never answers: the authoritative check
    // would time out on it (dns01.rs shows it does).
    let args = issue(
        &pebble,
        &bind,
        state.path(),
        "example.test",
        &[
            "--propagation-server",
            &silent_addr,
            "--propagation-timeout",
            "2",
            "--propagation-check",
            "wait:1",
        ],
    );
    let (code, out, err) = run(&args, &bind);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("example.test: waiting 1s for the TXT records to propagate (not checked)"),
        "{err}"
    );
    assert!(!err.contains("nameservers serve the record"), "{err}");
    assert!(
        err.contains("--propagation-server is not asked with --propagation-check wait:1"),
        "{err}"
    );
    assert_eq!(datagrams(&silent), 0, "the propagation server was asked");
    assert!(
        bind.query_txt("_acme-challenge.example.test")
            .expect("query")
            .is_empty(),
        "cleaned up"
    );
}

#[test]
fn the_recursive_check_issues_through_a_resolver() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    // No --propagation-server: only the resolver is reachable.
    let args = issue(
        &pebble,
        &bind,
        state.path(),
        "*.example.test",
        &[
            "--propagation-check",
            "recursive",
            "--propagation-timeout",
            "30",
        ],
    );
    let (code, out, err) = run(&args, &bind);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("_acme-challenge.example.test: 1/1 resolvers serve the record"),
        "{err}"
    );
    assert!(!err.contains("nameservers serve the record"), "{err}");
}

#[test]
fn a_bad_mode_is_a_usage_error_naming_the_choices() {
    let o = Command::new(certsmith_bin())
        .args(["issue", "-d", "a.test", "--propagation-check", "sometimes"])
        .output()
        .expect("run certsmith");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "'sometimes' is not a propagation check: use authoritative, recursive or wait:SECONDS"
        ),
        "{err}"
    );
}

#[test]
fn each_certificate_of_the_config_file_has_its_own_mode() {
    let bind = bind();
    let pebble = pebble_on(&bind);
    let state = TempState::new().expect("state");
    let (silent, silent_addr) = silent_server();
    let a = bind.addr();
    let config = state.path().join("certsmith.toml");
    // [defaults] checks on the silent server: only a certificate's own
    // mode lets it through.
    std::fs::write(
        &config,
        format!(
            r#"[defaults]
server = "{server}"
ca_cert = "{ca}"
agree_tos = true
state_dir = "{state}"
solver = "rfc2136"
dns_resolvers = ["{a}"]
propagation_servers = ["{silent_addr}"]
propagation_timeout = "20s"

[solvers.rfc2136]
server = "{a}"
tsig_key_name = "{key}"

[[certificate]]
domains = ["example.test"]
propagation_check = "wait:1"

[[certificate]]
domains = ["www.validation.test"]
propagation_check = "recursive"
"#,
            server = pebble.directory_url(),
            ca = pebble.ca_cert_path().display(),
            state = state.path().join("state").display(),
            key = bind.tsig_key_name(),
        ),
    )
    .expect("write config");
    let cfg = config.display().to_string();
    let (code, out, err) = run(&s(&["config", "check", "--config", &cfg]), &bind);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = run(&s(&["run", "--config", &cfg]), &bind);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("example.test: waiting 1s for the TXT records to propagate"),
        "{err}"
    );
    assert!(
        err.contains("_acme-challenge.www.validation.test: 1/1 resolvers serve the record"),
        "{err}"
    );
    assert_eq!(datagrams(&silent), 0, "the propagation server was asked");

    // A mistyped mode is a config error at its key.
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace("\"wait:1\"", "\"wait:1s\"")).expect("write");
    let (code, out, err) = run(&s(&["config", "check", "--config", &cfg]), &bind);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        err.lines().any(|l| l.starts_with(&format!("error: {cfg}:"))
            && l.contains(
                "certificate[1].propagation_check: 'wait:1s': wait takes a whole number of seconds"
            )),
        "{err}"
    );
}
