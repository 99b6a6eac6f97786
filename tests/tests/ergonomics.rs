//! What a person reads, through the CLI: `renew_before` that outlives the
//! certificate (refused by `config check`, warned about and never a renewal
//! loop at run time), `-vv` in sentences rather than Debug structs, one
//! error line for an untrusted CA, the standalone solver's hint built from
//! the address that failed, and `plugin check` counting what it prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn certsmith(args: &[&str]) -> Run {
    let o: Output = Command::new(certsmith_bin())
        .args(args)
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("run certsmith");
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A config file for `pebble`, standalone solver where its VA connects.
fn config(pebble: &Pebble, state: &TempState, extra_defaults: &str, certs: &str) -> PathBuf {
    let path = state.path().join("certsmith.toml");
    let text = format!(
        r#"[defaults]
server = "{server}"
ca_cert = "{ca}"
agree_tos = true
state_dir = "{dir}"
solver = "standalone"
{extra_defaults}

[solvers.standalone]
listen = ["127.0.0.1:{http}"]

{certs}"#,
        server = pebble.directory_url(),
        ca = p(pebble.ca_cert_path()),
        dir = p(&state.path().join("state")),
        http = pebble.http_port(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn renew_before_longer_than_any_lifetime_is_a_config_error() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let cfg = config(
        &pebble,
        &state,
        "renew_before = \"1900d\"",
        "[[certificate]]\ndomains = [\"a.test\"]\nrenew_before = \"100d\"\n",
    );
    let name = p(&cfg);
    for cmd in [&["config", "check"][..], &["run"][..]] {
        let mut args = cmd.to_vec();
        args.extend(["--config", name]);
        let r = certsmith(&args);
        assert_eq!(r.code, Some(2), "{cmd:?}: {}", r.describe());
        for key in ["defaults.renew_before", "certificate[1].renew_before"] {
            assert!(
                r.stderr
                    .lines()
                    .any(|l| l.starts_with(&format!("error: {name}:"))
                        && l.contains(&format!("{key}: "))
                        && l.contains(
                            "is longer than certificates live: it must be less than 100d"
                        )),
                "{cmd:?}: no error at {key}: {}",
                r.describe()
            );
        }
    }
    assert!(
        !state.path().join("state").join("certs").exists(),
        "nothing was ordered"
    );
}

#[test]
fn renew_before_longer_than_the_lifetime_warns_and_never_loops() {
    // 30-day certificates; renew_before 40 days passes the config check
    // (it is under the cap) but outlives them.
    let pebble = Pebble::start(PebbleOpts {
        certificate_validity_period: Some(30 * 86_400),
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let state = TempState::new().expect("state");
    let cfg = config(
        &pebble,
        &state,
        "",
        "[[certificate]]\nname = \"short\"\ndomains = [\"short.test\"]\nrenew_before = \"40d\"\n",
    );
    let args = ["run", "--config", p(&cfg), "--output", "json"];
    let warning =
        "warning: short: renew_before (40d) is not shorter than the certificate's lifetime";

    let first = certsmith(&args);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    assert!(first.stdout.contains("\"issued\""), "{}", first.describe());
    assert_eq!(
        first.stderr.matches(warning).count(),
        1,
        "{}",
        first.describe()
    );

    // The next run does not renew: the 1/3 rule says when.
    let second = certsmith(&args);
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert!(
        second.stdout.contains("\"skipped\""),
        "{}",
        second.describe()
    );
    assert!(
        second.stdout.contains("1/3 of the lifetime left"),
        "{}",
        second.describe()
    );
    assert_eq!(
        second.stderr.matches(warning).count(),
        1,
        "{}",
        second.describe()
    );
    assert!(
        second
            .stderr
            .contains("renewing when 1/3 of the lifetime is left instead"),
        "{}",
        second.describe()
    );
}

/// `issue` of `domain` from `pebble` with the standalone solver.
fn issue_args(pebble: &Pebble, state: &TempState, domain: &str) -> Vec<String> {
    [
        "issue",
        "--agree-tos",
        "-d",
        domain,
        "--server",
        &pebble.directory_url(),
        "--state-dir",
        p(state.path()),
        "--solver",
        "standalone",
        "--solver-opt",
        &format!("listen=127.0.0.1:{}", pebble.http_port()),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Whether a line looks like Rust's Debug output of a struct or enum
/// variant: `Name { field: ...`.
fn looks_like_debug(line: &str) -> bool {
    line.split_whitespace()
        .collect::<Vec<_>>()
        .windows(3)
        .any(|w| {
            w[0].chars().next().is_some_and(char::is_uppercase)
                && w[0].chars().all(char::is_alphanumeric)
                && w[1] == "{"
                && w[2].ends_with(':')
        })
}

#[test]
fn very_verbose_output_is_sentences_each_said_once() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let mut args = issue_args(&pebble, &state, "verbose.test");
    args.extend(["--ca-cert".into(), p(pebble.ca_cert_path()).to_owned()]);
    args.push("-vv".into());
    let r = certsmith(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, Some(0), "{}", r.describe());
    for line in r.stderr.lines() {
        assert!(
            !looks_like_debug(line),
            "a Debug struct: {line}\n{}",
            r.describe()
        );
    }
    assert!(!r.stderr.contains("AccountReady"), "{}", r.describe());
    // Each step once, in words.
    for sentence in [
        "order created for verbose.test (1 authorization)",
        "verbose.test: answering the http-01 challenge",
        "verbose.test: valid",
    ] {
        assert_eq!(
            r.stderr.lines().filter(|l| l.ends_with(sentence)).count(),
            1,
            "{sentence}\n{}",
            r.describe()
        );
    }
}

#[test]
fn an_untrusted_ca_is_reported_once() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    // No --ca-cert: Pebble's HTTPS certificate is not trusted.
    let args = issue_args(&pebble, &state, "untrusted.test");
    let r = certsmith(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(r.code, Some(0), "{}", r.describe());
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.describe());
    assert!(r.stderr.contains("hint:"), "{}", r.describe());
    assert!(r.stderr.contains("--ca-cert"), "{}", r.describe());
    // At -v the library's own line is there for whoever digs.
    let mut verbose = args.clone();
    verbose.push("-v".into());
    let r = certsmith(&verbose.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        r.stderr.contains("error: [rustls_platform_verifier]"),
        "{}",
        r.describe()
    );
}

#[test]
fn the_standalone_hint_never_repeats_what_was_passed() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let state = TempState::new().expect("state");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut args = issue_args(&pebble, &state, "hint.test");
    args.extend(["--ca-cert".into(), p(pebble.ca_cert_path()).to_owned()]);
    let listen = args
        .iter()
        .position(|a| a.starts_with("listen="))
        .expect("listen option");
    args[listen] = format!("listen={addr}");
    let r = certsmith(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, Some(3), "{}", r.describe());
    assert!(
        r.stderr
            .contains(&format!("cannot listen on {addr} (listen)")),
        "{}",
        r.describe()
    );
    assert!(
        !r.stderr.contains(&format!("--solver-opt listen={addr}")),
        "the hint repeats the address that failed: {}",
        r.describe()
    );
    assert!(!r.stderr.contains("5002"), "{}", r.describe());
    assert!(
        r.stderr
            .contains("pass a free port with --solver-opt listen=IP:PORT"),
        "{}",
        r.describe()
    );
}

#[test]
fn plugin_check_counts_the_steps_it_prints() {
    let lib = certsmith_bin()
        .parent()
        .expect("build dir")
        .join("libcertsmith_standalone.so");
    let listen = format!("listen=127.0.0.1:{}", certsmith_tests::free_port());
    let tls = format!("tls_listen=127.0.0.1:{}", certsmith_tests::free_port());
    let r = certsmith(&[
        "plugin",
        "check",
        p(&lib),
        "--solver-opt",
        &listen,
        "--solver-opt",
        &tls,
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let ok = r.stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(ok > 2, "{}", r.describe());
    assert!(
        r.stdout
            .contains(&format!("plugin check passed: {ok} steps")),
        "{ok} ok lines: {}",
        r.describe()
    );
}
