//! External account binding (RFC 8555 §7.3.4) against a Pebble that
//! requires it, as ZeroSSL and commercial CAs do.

use std::process::{Command, Output};

use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};

const KID: &str = "kid-certsmith-1";
// base64url of 32 bytes, as CAs hand them out.
const HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
const WRONG: &str = "AAAADM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTAAAA";

fn issue(
    pebble: &Pebble,
    state: &TempState,
    domain: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args([
        "issue",
        "-d",
        domain,
        "--solver",
        "standalone",
        "--agree-tos",
    ])
    .args([
        "--solver-opt",
        &format!("listen=127.0.0.1:{}", pebble.http_port()),
    ])
    .args(["--server", &pebble.directory_url()])
    .arg("--ca-cert")
    .arg(pebble.ca_cert_path())
    .arg("--state-dir")
    .arg(state.path())
    .args(extra)
    .env_remove("CERTSMITH_EAB_KID")
    .env_remove("CERTSMITH_EAB_HMAC_KEY")
    .env_remove("CERTSMITH_EAB_KID_FILE")
    .env_remove("CERTSMITH_EAB_HMAC_KEY_FILE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run certsmith")
}

fn texts(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under the state dir, concatenated (to look for the key).
fn all_files(dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push_str(&all_files(&p));
            } else if let Ok(t) = std::fs::read_to_string(&p) {
                out.push_str(&t);
            }
        }
    }
    out
}

#[test]
fn a_ca_that_requires_eab_gets_it_from_flags_or_the_environment() {
    let pebble = Pebble::start(PebbleOpts {
        eab_keys: vec![(KID.into(), HMAC.into())],
        ..PebbleOpts::default()
    })
    .expect("start Pebble");

    // Without EAB: refused before an account is created, naming the flags.
    let state = TempState::new().expect("state");
    let o = issue(&pebble, &state, "eab0.test", &[], &[]);
    let text = texts(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("--eab-kid"), "{text}");
    assert!(
        !state.path().join("accounts").exists()
            || all_files(&state.path().join("accounts")).is_empty()
    );

    // A wrong key: the CA refuses the binding.
    let o = issue(
        &pebble,
        &state,
        "eab1.test",
        &["--eab-kid", KID, "--eab-hmac-key", WRONG],
        &[],
    );
    let text = texts(&o);
    assert_eq!(o.status.code(), Some(4), "{text}");
    assert!(!text.contains(WRONG), "the key leaked: {text}");

    // From the environment, as CI passes secrets.
    let o = issue(
        &pebble,
        &state,
        "eab2.test",
        &[],
        &[("CERTSMITH_EAB_KID", KID), ("CERTSMITH_EAB_HMAC_KEY", HMAC)],
    );
    let text = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(!text.contains(HMAC), "the key leaked: {text}");
    assert!(
        !all_files(state.path()).contains(HMAC),
        "the key was stored"
    );

    // From flags, on a fresh state dir (so a new account is bound).
    let state = TempState::new().expect("state");
    let o = issue(
        &pebble,
        &state,
        "eab3.test",
        &["--eab-kid", KID, "--eab-hmac-key", HMAC],
        &[],
    );
    let text = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(!text.contains(HMAC), "the key leaked: {text}");

    // The key from a file (`*_FILE`, as container secrets are mounted), on a
    // fresh state dir; only one of the pair is refused before any request.
    let state = TempState::new().expect("state");
    let key_file = state.file("eab-hmac-key");
    std::fs::write(&key_file, format!("{HMAC}\n")).expect("write the key file");
    let key_path = key_file.to_str().expect("UTF-8 path");
    let o = issue(
        &pebble,
        &state,
        "eab4.test",
        &[],
        &[
            ("CERTSMITH_EAB_KID", KID),
            ("CERTSMITH_EAB_HMAC_KEY_FILE", key_path),
        ],
    );
    let text = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(!text.contains(HMAC), "the key leaked: {text}");
    let o = issue(
        &pebble,
        &state,
        "eab5.test",
        &[],
        &[("CERTSMITH_EAB_HMAC_KEY_FILE", key_path)],
    );
    let text = texts(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains("needs both a key id and an HMAC key"),
        "{text}"
    );
}
