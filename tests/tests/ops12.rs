//! What lego and certbot users look for (issue 12, items 1-6), through the
//! built binary against a real Pebble: challenge choice (`--challenge`,
//! `challenges`), key reuse (`--reuse-key`), the preferred chain among
//! Pebble's alternate roots, ACME profiles (through the proxy of
//! `certsmith_tests::AriProxy`, since Pebble 2.4.0 ignores them), IP
//! address identifiers (IPv4 and IPv6, http-01 and tls-alpn-01), and an
//! own CSR (`--csr`). Each certificate is checked with `openssl`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use certsmith_tests::ari_proxy::AriProxy;
use certsmith_tests::{Pebble, PebbleOpts, TempState};
use serde_json::Value;

use crate::accounts::{Run, certsmith, p};

// ------------------------------------------------------------- helpers ---

/// `issue` against `server` (trusting `ca`) into `state`, JSON out, with
/// `extra` arguments.
fn issue(server: &str, ca: &Path, state: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "issue",
        "--server",
        server,
        "--ca-cert",
        p(ca),
        "--agree-tos",
        "--state-dir",
        p(state),
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    certsmith(&args)
}

fn issue_at(pebble: &Pebble, state: &Path, extra: &[&str]) -> Run {
    issue(&pebble.directory_url(), pebble.ca_cert_path(), state, extra)
}

/// The one JSON object of a run.
fn one(run: &Run) -> Value {
    let mut v = run.json();
    assert_eq!(v.len(), 1, "{}", run.describe());
    v.remove(0)
}

/// `renew --cert-name NAME --force`, JSON out.
fn renew_forced(state: &Path, name: &str) -> Run {
    certsmith(&[
        "renew",
        "--state-dir",
        p(state),
        "--cert-name",
        name,
        "--force",
        "--output",
        "json",
    ])
}

fn cert_dir(state: &Path, name: &str) -> PathBuf {
    state.join("certs").join(name)
}

fn lineage(state: &Path, name: &str) -> toml::Table {
    let text = fs::read_to_string(cert_dir(state, name).join("lineage.toml")).expect("lineage");
    toml::from_str(&text).expect("lineage parses")
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (scripts/test installs it: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `cert` verifies with `chain` as intermediates to `root` alone.
fn verifies_to(root_pem: &str, chain: &Path, cert: &Path, dir: &Path) -> bool {
    let root = dir.join("root-under-test.pem");
    fs::write(&root, root_pem).expect("write root");
    Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            p(&root),
            "-untrusted",
            p(chain),
            p(cert),
        ])
        .output()
        .expect("openssl")
        .status
        .success()
}

/// The subjectAltNames of a PEM certificate, as openssl prints them.
fn sans(cert: &Path) -> String {
    openssl(&["x509", "-in", p(cert), "-noout", "-ext", "subjectAltName"])
}

/// The subject CN of a PEM certificate.
fn subject_cn(pem: &str, dir: &Path) -> String {
    let f = dir.join("subject.pem");
    fs::write(&f, pem).expect("write");
    let out = openssl(&[
        "x509",
        "-in",
        p(&f),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ]);
    out.trim()
        .trim_start_matches("subject=")
        .split(',')
        .find_map(|rdn| rdn.strip_prefix("CN="))
        .expect("a CN")
        .to_owned()
}

fn standalone_http(pebble: &Pebble, ip: &str) -> String {
    format!("listen={ip}:{}", pebble.http_port())
}

fn standalone_tls(pebble: &Pebble, ip: &str) -> String {
    format!("tls_listen={ip}:{}", pebble.tls_port())
}

// ----------------------------------------------------- 6. challenge choice ---

/// The standalone plugin configured with `tls_listen` only answers with
/// `--challenge tls-alpn-01`; the choice is recorded, and a forced renewal
/// answers tls-alpn-01 again (its http-01 listener, on port 80 by default,
/// is never opened).
#[test]
fn tls_alpn_01_chosen_and_kept_for_renewal() {
    // No authorization reuse: the renewal must validate again.
    let pebble = Pebble::start(PebbleOpts {
        env: vec![("PEBBLE_AUTHZREUSE".into(), "0".into())],
        ..PebbleOpts::default()
    })
    .expect("pebble");
    let state = TempState::new().expect("state");
    let tls = standalone_tls(&pebble, "127.0.0.1");
    let r = issue_at(
        &pebble,
        state.path(),
        &[
            "-d",
            "alpn.example",
            "--solver",
            "standalone",
            "--solver-opt",
            &tls,
            "--challenge",
            "tls-alpn-01",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let l = lineage(state.path(), "alpn.example");
    assert_eq!(
        l.get("challenges").and_then(|v| v.as_array()).cloned(),
        Some(vec![toml::Value::from("tls-alpn-01")]),
        "{l:?}"
    );
    let r = renew_forced(state.path(), "alpn.example");
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.json();
    assert_eq!(v[0]["action"], "renewed", "{}", r.describe());
    assert!(
        r.stderr.contains("tls-alpn-01"),
        "the renewal answers tls-alpn-01: {}",
        r.describe()
    );
    assert!(!r.stderr.contains("http-01"), "{}", r.describe());
}

/// A challenge type the solver does not offer is refused before any
/// order, naming the flag and what the solver offers; so is one listed
/// twice, one unknown, and a config `challenges` the same way.
#[test]
fn challenge_not_offered_is_refused_naming_flag_and_offer() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    let state = TempState::new().expect("state");
    let webroot = state.file("www");
    fs::create_dir_all(&webroot).expect("mkdir");
    let path_opt = format!("path={}", webroot.display());
    let r = issue_at(
        &pebble,
        state.path(),
        &[
            "-d",
            "x.example",
            "--solver",
            "webroot",
            "--solver-opt",
            &path_opt,
            "--challenge",
            "tls-alpn-01",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let e = &one(&r)["error"];
    let msg = e["message"].as_str().expect("message");
    let hint = e["hint"].as_str().expect("hint");
    assert!(
        msg.contains("tls-alpn-01") && msg.contains("webroot"),
        "{msg}"
    );
    assert!(msg.contains("http-01"), "lists what webroot answers: {msg}");
    assert!(
        hint.contains("--challenge") && hint.contains("challenges"),
        "{hint}"
    );
    assert!(
        !cert_dir(state.path(), "x.example").exists(),
        "nothing ordered or stored"
    );

    let r = issue_at(
        &pebble,
        state.path(),
        &[
            "-d",
            "x.example",
            "--solver",
            "webroot",
            "--challenge",
            "http-02",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stdout.contains("http-02") || r.stderr.contains("http-02"),
        "{}",
        r.describe()
    );

    let r = issue_at(
        &pebble,
        state.path(),
        &[
            "-d",
            "x.example",
            "--solver",
            "webroot",
            "--solver-opt",
            &path_opt,
            "--challenge",
            "http-01",
            "--challenge",
            "http-01",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stdout.contains("twice"), "{}", r.describe());

    // The config file: an unknown type is found by `config check` at its
    // line; a type the solver lacks by `run`, naming both.
    let cfg = state.file("certsmith.toml");
    fs::write(
        &cfg,
        format!(
            "[defaults]\nserver = \"{}\"\nca_cert = \"{}\"\nagree_tos = true\nstate_dir = \"{}\"\n\n[[certificate]]\ndomains = [\"x.example\"]\nsolver = \"webroot\"\nsolver_options = {{ path = \"{}\" }}\nchallenges = [\"dns-01\", \"tls-alpn-1\"]\n",
            pebble.directory_url(),
            p(pebble.ca_cert_path()),
            p(state.path()),
            p(&webroot)
        ),
    )
    .expect("config");
    let r = certsmith(&["config", "check", "--config", p(&cfg), "--output", "json"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = one(&r);
    let err = &v["error"]["errors"][0];
    assert_eq!(err["key"], "certificate[1].challenges", "{v}");
    assert_eq!(err["line"], 11, "{v}");
    assert!(
        err["message"].as_str().expect("m").contains("tls-alpn-1"),
        "{v}"
    );

    let text = fs::read_to_string(&cfg).expect("read");
    fs::write(&cfg, text.replace(", \"tls-alpn-1\"", "")).expect("write");
    let r = certsmith(&["run", "--config", p(&cfg), "--output", "json"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = r.json();
    let msg = v[0]["error"]["message"].as_str().expect("message");
    assert!(msg.contains("dns-01") && msg.contains("webroot"), "{msg}");
}

// ----------------------------------------------------------- 2. reuse key ---

/// With `--reuse-key`, a forced renewal certifies the same key (recorded
/// in the lineage, so `renew` honours it); without, a new one.
#[test]
fn reuse_key_keeps_the_private_key_across_renewals() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    let state = TempState::new().expect("state");
    let listen = standalone_http(&pebble, "127.0.0.1");
    for (name, reuse) in [("keep.example", true), ("fresh.example", false)] {
        let mut args = vec![
            "-d",
            name,
            "--solver",
            "standalone",
            "--solver-opt",
            &listen,
        ];
        if reuse {
            args.push("--reuse-key");
        }
        let r = issue_at(&pebble, state.path(), &args);
        assert_eq!(r.code, Some(0), "{}", r.describe());
        assert_eq!(
            lineage(state.path(), name)
                .get("reuse_key")
                .and_then(toml::Value::as_bool),
            reuse.then_some(true)
        );
        let v1 = cert_dir(state.path(), name).join("versions/1");
        let r = renew_forced(state.path(), name);
        assert_eq!(r.code, Some(0), "{}", r.describe());
        let v2 = cert_dir(state.path(), name).join("versions/2");
        let key1 = fs::read_to_string(v1.join("privkey.pem")).expect("key 1");
        let key2 = fs::read_to_string(v2.join("privkey.pem")).expect("key 2");
        let pubkey =
            |dir: &Path| openssl(&["x509", "-in", p(&dir.join("cert.pem")), "-noout", "-pubkey"]);
        assert_ne!(
            openssl(&["x509", "-in", p(&v1.join("cert.pem")), "-noout", "-serial"]),
            openssl(&["x509", "-in", p(&v2.join("cert.pem")), "-noout", "-serial"]),
            "a new certificate"
        );
        if reuse {
            assert_eq!(key1, key2, "{name}: the key is kept");
            assert_eq!(
                pubkey(&v1),
                pubkey(&v2),
                "{name}: the same key is certified"
            );
        } else {
            assert_ne!(key1, key2, "{name}: a new key by default");
        }
    }
}

// ----------------------------------------------------- 3. preferred chain ---

/// Pebble with two alternate roots: `--preferred-chain` with the CN of
/// root 2 stores the chain that verifies to root 2 (and not to root 0);
/// the renewal keeps that choice; a CN no chain has keeps the default
/// chain (verifying to root 0) with a warning naming what is offered.
#[test]
fn preferred_chain_picks_the_alternate_root() {
    let pebble = Pebble::start(PebbleOpts {
        env: vec![("PEBBLE_ALTERNATE_ROOTS".into(), "2".into())],
        ..PebbleOpts::default()
    })
    .expect("pebble");
    let state = TempState::new().expect("state");
    let root0 = pebble.root_pem_at_blocking(0).expect("root 0");
    let root2 = pebble.root_pem_at_blocking(2).expect("root 2");
    let cn2 = subject_cn(&root2, state.path());
    assert_ne!(cn2, subject_cn(&root0, state.path()));
    let listen = standalone_http(&pebble, "127.0.0.1");

    let r = issue_at(
        &pebble,
        state.path(),
        &[
            "-d",
            "chain.example",
            "--solver",
            "standalone",
            "--solver-opt",
            &listen,
            "--preferred-chain",
            &cn2,
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = one(&r);
    assert_eq!(v["chain_issuer"], cn2.as_str(), "{v}");
    let cur = cert_dir(state.path(), "chain.example").join("current");
    let (chain, cert) = (cur.join("chain.pem"), cur.join("cert.pem"));
    assert!(
        verifies_to(&root2, &chain, &cert, state.path()),
        "chain to root 2"
    );
    assert!(
        !verifies_to(&root0, &chain, &cert, state.path()),
        "not to root 0"
    );
    assert_eq!(
        lineage(state.path(), "chain.example")
            .get("preferred_chain")
            .and_then(toml::Value::as_str),
        Some(cn2.as_str())
    );
    let r = renew_forced(state.path(), "chain.example");
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(
        verifies_to(&root2, &chain, &cert, state.path()),
        "renewal: root 2"
    );

    let r = issue_at(
        &pebble,
        state.path(),
        &[
            "-d",
            "default.example",
            "--solver",
            "standalone",
            "--solver-opt",
            &listen,
            "--preferred-chain",
            "No Such Root",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(
        r.stderr.contains("No Such Root") && r.stderr.contains("default chain"),
        "a notice: {}",
        r.describe()
    );
    assert!(
        r.stderr.contains(&cn2),
        "names the chains offered: {}",
        r.describe()
    );
    let cur = cert_dir(state.path(), "default.example").join("current");
    assert!(
        verifies_to(
            &root0,
            &cur.join("chain.pem"),
            &cur.join("cert.pem"),
            state.path()
        ),
        "the default chain"
    );
}

// ------------------------------------------------------------ 4. profiles ---

/// Through a proxy that advertises profiles: the order asks for the
/// profile given (and the renewal again, from the lineage); an unknown
/// one is refused before ordering, listing the CA's; a CA that lists none
/// gets a clear error.
#[test]
fn profile_is_sent_checked_and_kept() {
    // New-order requests are counted: no nonce rejection, or the client's
    // badNonce retry would send one twice.
    let pebble = Pebble::start(PebbleOpts {
        nonce_reject_percent: Some(0),
        ..PebbleOpts::default()
    })
    .expect("pebble");
    let proxy = AriProxy::start(&pebble).expect("proxy");
    proxy.set_profiles(&[
        ("classic", "The profile you know"),
        ("shortlived", "Six days"),
    ]);
    let state = TempState::new().expect("state");
    let listen = standalone_http(&pebble, "127.0.0.1");
    let server = proxy.directory_url();
    let base = ["--solver", "standalone", "--solver-opt", listen.as_str()];

    let mut args = vec!["-d", "prof.example", "--profile", "shortlived"];
    args.extend_from_slice(&base);
    let r = issue(&server, proxy.ca_bundle_path(), state.path(), &args);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        proxy.new_order_profiles(),
        vec![Some("shortlived".to_owned())]
    );
    assert_eq!(
        lineage(state.path(), "prof.example")
            .get("profile")
            .and_then(toml::Value::as_str),
        Some("shortlived")
    );
    let r = renew_forced(state.path(), "prof.example");
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(proxy.new_order_profiles().len(), 2);
    assert_eq!(proxy.new_order_profiles()[1].as_deref(), Some("shortlived"));

    let mut args = vec!["-d", "other.example", "--profile", "tlsserver"];
    args.extend_from_slice(&base);
    let r = issue(&server, proxy.ca_bundle_path(), state.path(), &args);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let e = &one(&r)["error"];
    let (msg, hint) = (
        e["message"].as_str().expect("m"),
        e["hint"].as_str().expect("h"),
    );
    assert!(
        msg.contains("tlsserver") && msg.contains("classic, shortlived"),
        "{msg}"
    );
    assert!(hint.contains("--profile"), "{hint}");
    assert_eq!(
        proxy.new_order_profiles().len(),
        2,
        "refused before ordering"
    );

    // Pebble itself lists no profile.
    let mut args = vec!["-d", "other.example", "--profile", "classic"];
    args.extend_from_slice(&base);
    let r = issue_at(&pebble, state.path(), &args);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let e = &one(&r)["error"];
    assert!(
        e["message"]
            .as_str()
            .expect("m")
            .contains("offers no certificate profiles"),
        "{e}"
    );
    assert!(e["hint"].as_str().expect("h").contains("--profile"), "{e}");
}

// ------------------------------------------------------ 5. IP identifiers ---

/// IPv4 and IPv6 addresses, each with http-01 and tls-alpn-01: Pebble
/// connects to the address itself, where the standalone solver listens.
/// The certificate carries the address as an IP SAN; an IPv6 one is
/// stored under a file-name-safe name.
#[test]
fn ip_address_certificates_v4_and_v6_with_http_and_tls_alpn() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    for (ip, listen_ip, name, san) in [
        (
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "IP Address:127.0.0.1",
        ),
        (
            "::1",
            "[::1]",
            "0-0-0-0-0-0-0-1",
            "IP Address:0:0:0:0:0:0:0:1",
        ),
    ] {
        for challenge in ["http-01", "tls-alpn-01"] {
            // A state (and account) of its own: Pebble reuses an account's
            // valid authorizations, which would validate nothing.
            let state = TempState::new().expect("state");
            let opt = if challenge == "http-01" {
                standalone_http(&pebble, listen_ip)
            } else {
                standalone_tls(&pebble, listen_ip)
            };
            let r = issue_at(
                &pebble,
                state.path(),
                &[
                    "-d",
                    ip,
                    "--solver",
                    "standalone",
                    "--solver-opt",
                    &opt,
                    "--challenge",
                    challenge,
                ],
            );
            assert_eq!(r.code, Some(0), "{ip} {challenge}: {}", r.describe());
            let v = one(&r);
            assert_eq!(v["name"], name, "{v}");
            assert_eq!(v["domains"], serde_json::json!([ip]), "{v}");
            let cert = cert_dir(state.path(), name).join("current/cert.pem");
            let sans = sans(&cert);
            assert!(sans.contains(san), "{ip}: {sans}");
            assert!(!sans.contains("DNS:"), "{ip}: {sans}");
            assert!(
                r.stderr.contains(challenge),
                "{ip}: answered with {challenge}: {}",
                r.describe()
            );
        }
    }
    // An address with a DNS-only solver is refused before ordering.
    let state = TempState::new().expect("state");
    let r = issue_at(
        &pebble,
        state.path(),
        &[
            "-d",
            "192.0.2.7",
            "--solver",
            "challtestsrv",
            "--solver-opt",
            "url=http://127.0.0.1:9",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stdout.contains("http-01 or tls-alpn-01"),
        "{}",
        r.describe()
    );
}

// ---------------------------------------------------------------- 1. CSR ---

/// A key and a CSR made by openssl, as an operator would.
fn openssl_csr(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join("user-key.pem");
    let csr = dir.join("user-csr.pem");
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        p(&key),
        "-subj",
        &format!("/CN={}", names[0]),
        "-addext",
        &format!("subjectAltName={san}"),
        "-out",
        p(&csr),
    ]);
    (key, csr)
}

fn cert_pubkey(cert: &Path) -> String {
    openssl(&["x509", "-in", p(cert), "-noout", "-pubkey"])
}

/// `--csr` (PEM, then DER): the names come from the CSR, no private key is
/// written (and the output says so), the CSR is stored with the
/// certificate and chain, and a forced renewal sends it again (the same
/// key is certified). -d names that differ, or a file that is no CSR,
/// are refused before ordering, naming the flags.
#[test]
fn own_csr_keeps_the_key_with_the_user_and_renews_with_it() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    let state = TempState::new().expect("state");
    let (key, csr) = openssl_csr(state.path(), &["csr.example", "www.csr.example"]);
    let user_pubkey = openssl(&["pkey", "-in", p(&key), "-pubout"]);
    let listen = standalone_http(&pebble, "127.0.0.1");
    let solver = ["--solver", "standalone", "--solver-opt", listen.as_str()];

    let mut args = vec!["--csr", p(&csr)];
    args.extend_from_slice(&solver);
    let r = issue_at(&pebble, state.path(), &args);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = one(&r);
    assert_eq!(v["name"], "csr.example", "{v}");
    assert_eq!(
        v["domains"],
        serde_json::json!(["csr.example", "www.csr.example"]),
        "{v}"
    );
    assert!(v["privkey_path"].is_null(), "{v}");
    let dir = cert_dir(state.path(), "csr.example");
    assert_eq!(
        v["csr_path"].as_str(),
        Some(p(&dir.join("current/csr.pem"))),
        "{v}"
    );
    for version in ["versions/1"] {
        let d = dir.join(version);
        assert!(!d.join("privkey.pem").exists(), "no key stored");
        for f in ["cert.pem", "chain.pem", "fullchain.pem", "csr.pem"] {
            assert!(d.join(f).is_file(), "{f} stored");
        }
    }
    assert_eq!(cert_pubkey(&dir.join("current/cert.pem")), user_pubkey);
    assert_eq!(
        lineage(state.path(), "csr.example")
            .get("csr")
            .and_then(toml::Value::as_bool),
        Some(true)
    );

    let r = renew_forced(state.path(), "csr.example");
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.json();
    assert_eq!(v[0]["action"], "renewed", "{}", r.describe());
    assert!(v[0]["privkey_path"].is_null(), "{}", r.describe());
    assert!(!dir.join("versions/2/privkey.pem").exists());
    assert!(dir.join("versions/2/csr.pem").is_file());
    assert_eq!(
        cert_pubkey(&dir.join("versions/2/cert.pem")),
        user_pubkey,
        "the renewal certifies the user's key again"
    );

    // `list` finds the CSR's version sound: its key is the CSR's.
    let r = certsmith(&["list", "--state-dir", p(state.path()), "--output", "json"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let listed = r.json();
    assert_eq!(listed[0]["name"], "csr.example", "{}", r.describe());
    assert_eq!(listed[0]["state"], "valid", "{}", r.describe());

    // Text output says where the key is.
    let r = certsmith(&[
        "issue",
        "--server",
        &pebble.directory_url(),
        "--ca-cert",
        p(pebble.ca_cert_path()),
        "--agree-tos",
        "--state-dir",
        p(state.path()),
        "--csr",
        p(&csr),
        "--force",
        "--solver",
        "standalone",
        "--solver-opt",
        &listen,
    ]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("kept by you"), "{}", r.describe());

    // DER, with -d naming the same set: accepted.
    let der = state.file("user-csr.der");
    openssl(&["req", "-in", p(&csr), "-outform", "DER", "-out", p(&der)]);
    let mut args = vec![
        "--csr",
        p(&der),
        "-d",
        "www.csr.example",
        "-d",
        "csr.example",
        "--cert-name",
        "der",
    ];
    args.extend_from_slice(&solver);
    let r = issue_at(&pebble, state.path(), &args);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        cert_pubkey(&cert_dir(state.path(), "der").join("current/cert.pem")),
        user_pubkey
    );

    // -d that differs: an error naming both.
    let mut args = vec!["--csr", p(&csr), "-d", "other.example", "--cert-name", "x"];
    args.extend_from_slice(&solver);
    let r = issue_at(&pebble, state.path(), &args);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let e = &one(&r)["error"];
    let msg = e["message"].as_str().expect("m");
    assert!(
        msg.contains("--csr") && msg.contains("-d") && msg.contains("other.example"),
        "{msg}"
    );
    assert!(msg.contains("www.csr.example"), "{msg}");
    assert!(!cert_dir(state.path(), "x").exists());

    // Not a CSR.
    let mut args = vec!["--csr", p(&key)];
    args.extend_from_slice(&solver);
    let r = issue_at(&pebble, state.path(), &args);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let e = &one(&r)["error"];
    assert!(e["message"].as_str().expect("m").contains("--csr"), "{e}");
    assert!(
        e["hint"].as_str().expect("h").contains("openssl req"),
        "{e}"
    );

    // --reuse-key with --csr: refused by the parser.
    let mut args = vec!["--csr", p(&csr), "--reuse-key"];
    args.extend_from_slice(&solver);
    let r = issue_at(&pebble, state.path(), &args);
    assert_eq!(r.code, Some(2), "{}", r.describe());
}

/// `csr = "file"` in a `[[certificate]]` without `domains`: `run` orders
/// with the CSR's names and stores no key; a `domains` that differs is
/// found by `config check`.
#[test]
fn config_csr_orders_with_its_names() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    let state = TempState::new().expect("state");
    // Next to the config file: `csr` is relative to it.
    let (key, _) = openssl_csr(state.root(), &["cfg.example"]);
    let cfg = state.file("certsmith.toml");
    let text = format!(
        "[defaults]\nserver = \"{}\"\nca_cert = \"{}\"\nagree_tos = true\nstate_dir = \"{}\"\n\n[[certificate]]\ncsr = \"user-csr.pem\"\nsolver = \"standalone\"\nsolver_options = {{ listen = [\"127.0.0.1:{}\"] }}\n",
        pebble.directory_url(),
        p(pebble.ca_cert_path()),
        p(state.path()),
        pebble.http_port()
    );
    fs::write(&cfg, &text).expect("config");
    let r = certsmith(&["run", "--config", p(&cfg), "--output", "json"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = r.json();
    assert_eq!(v[0]["name"], "cfg.example", "{}", r.describe());
    assert!(v[0]["privkey_path"].is_null(), "{}", r.describe());
    let cur = cert_dir(state.path(), "cfg.example").join("current");
    assert!(!cur.join("privkey.pem").exists());
    assert_eq!(
        cert_pubkey(&cur.join("cert.pem")),
        openssl(&["pkey", "-in", p(&key), "-pubout"])
    );

    fs::write(
        &cfg,
        text.replace("csr = ", "domains = [\"other.example\"]\ncsr = "),
    )
    .expect("config");
    let r = certsmith(&["config", "check", "--config", p(&cfg), "--output", "json"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = one(&r);
    let err = &v["error"]["errors"][0];
    assert_eq!(err["key"], "certificate[1].domains", "{v}");
    assert!(
        err["message"].as_str().expect("m").contains("cfg.example"),
        "{v}"
    );
}

// ------------------------------------------------------- the config file ---

/// Every order option from a `[[certificate]]` through `run`: tls-alpn-01
/// only (the solver has `tls_listen` alone), the profile sent through the
/// proxy, the chain of Pebble's alternate root 1, and a forced second run
/// certifying the same key again.
#[test]
fn run_honours_every_order_option_of_the_config() {
    let pebble = Pebble::start(PebbleOpts {
        env: vec![
            ("PEBBLE_ALTERNATE_ROOTS".into(), "1".into()),
            ("PEBBLE_AUTHZREUSE".into(), "0".into()),
        ],
        // New-order requests are counted: a badNonce retry would send one
        // twice (it did, once in CI).
        nonce_reject_percent: Some(0),
        ..PebbleOpts::default()
    })
    .expect("pebble");
    let proxy = AriProxy::start(&pebble).expect("proxy");
    proxy.set_profiles(&[("shortlived", "Six days")]);
    let state = TempState::new().expect("state");
    let root1 = pebble.root_pem_at_blocking(1).expect("root 1");
    let cn1 = subject_cn(&root1, state.root());
    let cfg = state.file("certsmith.toml");
    fs::write(
        &cfg,
        format!(
            "[defaults]\nserver = \"{}\"\nca_cert = \"{}\"\nagree_tos = true\nstate_dir = \"{}\"\n\n[[certificate]]\ndomains = [\"opts.example\"]\nsolver = \"standalone\"\nsolver_options = {{ tls_listen = [\"127.0.0.1:{}\"] }}\nchallenges = [\"tls-alpn-01\"]\nreuse_key = true\npreferred_chain = \"{cn1}\"\nprofile = \"shortlived\"\n",
            proxy.directory_url(),
            p(proxy.ca_bundle_path()),
            p(state.path()),
            pebble.tls_port()
        ),
    )
    .expect("config");
    let dir = cert_dir(state.path(), "opts.example");
    for (round, extra) in [(1, None), (2, Some("--force"))] {
        let mut args = vec!["run", "--config", p(&cfg), "--output", "json"];
        args.extend(extra);
        let r = certsmith(&args);
        assert_eq!(r.code, Some(0), "round {round}: {}", r.describe());
        assert!(r.stderr.contains("tls-alpn-01"), "{}", r.describe());
        assert!(!r.stderr.contains("http-01"), "{}", r.describe());
        let v = dir.join(format!("versions/{round}"));
        assert!(
            verifies_to(
                &root1,
                &v.join("chain.pem"),
                &v.join("cert.pem"),
                state.root()
            ),
            "round {round}: the chain of root 1"
        );
        assert_eq!(proxy.new_order_profiles().len(), round);
    }
    assert!(
        proxy
            .new_order_profiles()
            .iter()
            .all(|p| p.as_deref() == Some("shortlived"))
    );
    assert_eq!(
        fs::read_to_string(dir.join("versions/1/privkey.pem")).expect("key 1"),
        fs::read_to_string(dir.join("versions/2/privkey.pem")).expect("key 2"),
        "reuse_key"
    );
}
