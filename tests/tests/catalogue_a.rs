//! The first half of the solver catalogue end to end (issue #14 1-4):
//! `exec`, `httpreq`, `acmedns` and `pdns`, each issuing a wildcard + apex
//! certificate from a real Pebble whose VA reads the records from a real
//! DNS server — BIND9 written by a lego exec script with nsupdate, by a
//! lego-httpreq hook, by the acme-dns stand-in; a real PowerDNS written
//! through its API — and each passing `certsmith plugin check` against the
//! same servers. The setups are `certsmith_tests::catalogue_a`'s.

use std::path::PathBuf;
use std::process::{Command, Output};

use certsmith_tests::catalogue_a::{
    Setup, acmedns_delegate, acmedns_setup, acmedns_storage, exec_setup, httpreq_setup, pdns_setup,
};
use certsmith_tests::throttle_proxy::Throttle;
use certsmith_tests::{TempState, certsmith_bin};

fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The SANs of the certificate `issue` reported, sorted.
fn issued_sans(stdout: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let cert = PathBuf::from(v["cert_path"].as_str().expect("cert_path"));
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl must be installed: apt-get install openssl");
    let mut sans: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split([',', '\n'])
        .filter_map(|p| p.trim().strip_prefix("DNS:").map(str::to_owned))
        .collect();
    sans.sort();
    sans
}

/// Issues `*.<zone>` + `<zone>` and checks the certificate.
fn issue_wildcard_and_apex(setup: &Setup, state: &TempState) -> (String, String) {
    let zone = setup.zone.clone();
    let wildcard = format!("*.{zone}");
    let o = setup
        .issue(state.path(), &[&wildcard, &zone])
        .output()
        .expect("run certsmith");
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert_eq!(issued_sans(&out), vec![wildcard, zone]);
    (out, err)
}

fn plugin_path(code: &str) -> PathBuf {
    let bin = certsmith_bin();
    let p = bin
        .parent()
        .expect("target dir")
        .join(format!("libcertsmith_{code}.so"));
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace`",
        p.display()
    );
    p
}

/// `certsmith plugin check` of `setup`'s plugin for `domain`, asking the
/// setup's DNS server whether the record is served and gone again.
fn plugin_check(setup: &Setup, domain: &str) -> Output {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(["plugin", "check"])
        .arg(plugin_path(setup.solver))
        .args(["--domain", domain, "--dns-server", &setup.dns.to_string()]);
    for o in &setup.opts {
        cmd.args(["--solver-opt", o]);
    }
    for v in certsmith_tests::catalogue_a::SOLVER_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in &setup.env {
        cmd.env(k, v);
    }
    cmd.output().expect("run certsmith plugin check")
}

fn assert_check_passes(setup: &Setup, domain: &str) {
    let o = plugin_check(setup, domain);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("plugin check passed"),
        "{out}\n{err}"
    );
    assert!(
        format!("{out}{err}").contains("TXT record gone after cleanup"),
        "{out}\n{err}"
    );
}

fn txt(setup: &Setup, name: &str) -> Vec<String> {
    let server = setup.dns;
    let mut v = certsmith_tests::dns::query_txt(server, name).expect("query TXT");
    v.sort();
    v
}

// ---- exec -------------------------------------------------------------

#[test]
fn exec_runs_a_lego_nsupdate_script_unchanged_for_wildcard_and_apex() {
    let setup = exec_setup("exec.test").expect("setup");
    let name = "_acme-challenge.exec.test";
    let updater = setup.updater().expect("bind");
    updater
        .add_txt(name, "someone-elses-value")
        .expect("foreign TXT");
    let state = TempState::new().expect("state");
    issue_wildcard_and_apex(&setup, &state);
    // Both values gone, the foreign one kept.
    assert_eq!(txt(&setup, name), ["someone-elses-value"]);
    assert_check_passes(&setup, "exec.test");
}

#[test]
fn exec_raw_mode_runs_a_lego_raw_script() {
    let mut setup = exec_setup("raw.test").expect("setup");
    setup.env.retain(|(k, _)| k != "EXEC_PATH");
    let raw = certsmith_tests::catalogue_a::lego_exec_script()
        .with_file_name("lego-exec-raw-nsupdate.sh")
        .display()
        .to_string();
    setup.env.push(("EXEC_PATH".into(), raw));
    setup.env.push(("EXEC_MODE".into(), "RAW".into()));
    let state = TempState::new().expect("state");
    issue_wildcard_and_apex(&setup, &state);
    assert!(txt(&setup, "_acme-challenge.raw.test").is_empty());
}

#[test]
fn exec_puts_the_scripts_output_in_the_error() {
    let mut setup = exec_setup("exec.test").expect("setup");
    // The script as is, with a TSIG key BIND does not know.
    for (k, v) in &mut setup.env {
        if k == "TSIG_KEY" {
            *v = "hmac-sha256:unknown-key.:c2VjcmV0LXRoYXQtaXMtd3Jvbmc=".into();
        }
    }
    let state = TempState::new().expect("state");
    let o = setup
        .issue(state.path(), &["exec.test"])
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(
        err.contains("lego-exec-nsupdate.sh present _acme-challenge.exec.test."),
        "{err}"
    );
    assert!(err.contains("exit code"), "{err}");
    // nsupdate's complaint, as the script printed it.
    assert!(
        err.to_lowercase().contains("tsig") || err.contains("NOTAUTH") || err.contains("REFUSED"),
        "{err}"
    );
    assert!(!err.contains("c2VjcmV0LXRoYXQtaXMtd3Jvbmc="), "{err}");
}

// ---- httpreq ----------------------------------------------------------

#[test]
fn httpreq_posts_to_a_lego_hook_with_basic_auth_and_rides_out_a_rate_limit() {
    let password = "hook-password-0123456789";
    let setup = httpreq_setup("hook.test", ("certsmith", password)).expect("setup");
    let hook = setup.hook.as_ref().expect("hook");
    hook.inject(Throttle {
        status: 429,
        retry_after_secs: 1,
    });
    hook.inject(Throttle {
        status: 503,
        retry_after_secs: 1,
    });
    let state = TempState::new().expect("state");
    let (out, err) = issue_wildcard_and_apex(&setup, &state);
    assert!(
        !out.contains(password) && !err.contains(password),
        "password leaked"
    );
    let reqs = hook.requests();
    assert_eq!(reqs[0].status, 429);
    assert_eq!(reqs[1].status, 503);
    let ok: Vec<_> = reqs.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        ok.iter().filter(|r| r.path == "/acme/present").count(),
        2,
        "{reqs:?}"
    );
    assert_eq!(
        ok.iter().filter(|r| r.path == "/acme/cleanup").count(),
        2,
        "{reqs:?}"
    );
    assert!(reqs.iter().all(|r| r.authorized), "{reqs:?}");
    let body = &ok[0].body;
    assert_eq!(body["fqdn"], "_acme-challenge.hook.test.");
    assert_eq!(body["value"].as_str().map(str::len), Some(43));
    assert!(txt(&setup, "_acme-challenge.hook.test").is_empty());
    assert_check_passes(&setup, "hook.test");
}

#[test]
fn httpreq_a_wrong_password_is_a_solver_error_with_the_answer_and_no_password() {
    let mut setup = httpreq_setup("hook.test", ("certsmith", "the-right-one")).expect("setup");
    let wrong = "the-wrong-password-42";
    for (k, v) in &mut setup.env {
        if k == "HTTPREQ_PASSWORD" {
            *v = wrong.into();
        }
    }
    let state = TempState::new().expect("state");
    let o = setup
        .issue(state.path(), &["hook.test"])
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains("HTTPREQ_PASSWORD"), "{err}");
    assert!(
        !out.contains(wrong) && !err.contains(wrong),
        "password leaked"
    );
}

#[test]
fn httpreq_password_from_a_file() {
    let password = "file-password-987";
    let mut setup = httpreq_setup("hook.test", ("certsmith", password)).expect("setup");
    let file = setup.dir.path().join("hook-password");
    std::fs::write(&file, format!("{password}\n")).expect("password file");
    setup.env.retain(|(k, _)| k != "HTTPREQ_PASSWORD");
    setup
        .env
        .push(("HTTPREQ_PASSWORD_FILE".into(), file.display().to_string()));
    let state = TempState::new().expect("state");
    let o = setup
        .issue(state.path(), &["hook.test"])
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let hook = setup.hook.as_ref().expect("hook");
    assert!(
        hook.requests()
            .iter()
            .all(|r| r.authorized && r.status == 200)
    );
}

// ---- acmedns ----------------------------------------------------------

fn storage(setup: &Setup) -> serde_json::Value {
    let text = std::fs::read_to_string(acmedns_storage(setup.dir.path())).expect("storage file");
    serde_json::from_str(&text).expect("storage JSON")
}

#[test]
fn acmedns_registers_names_the_cname_then_issues_through_it() {
    let setup = acmedns_setup("adns.test").expect("setup");
    let state = TempState::new().expect("state");
    // First run: no account yet. One is registered and stored, and the
    // error names the CNAME to create.
    let o = setup
        .issue(state.path(), &["*.adns.test", "adns.test"])
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_ne!(o.status.code(), Some(0), "{out}\n{err}");
    let st = storage(&setup);
    let account = &st["adns.test"];
    let full = account["fulldomain"]
        .as_str()
        .expect("fulldomain")
        .to_owned();
    for key in [
        "username",
        "password",
        "subdomain",
        "allowfrom",
        "server_url",
    ] {
        assert!(account.get(key).is_some(), "{key} missing: {st}");
    }
    assert!(
        err.contains(&format!("_acme-challenge.adns.test. CNAME {full}.")),
        "{err}"
    );
    let password = account["password"].as_str().expect("password");
    assert!(
        !err.contains(password) && !out.contains(password),
        "password leaked"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(acmedns_storage(setup.dir.path()))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The operator creates it; the second run goes through.
    setup
        .updater()
        .expect("bind")
        .set_cname("_acme-challenge.adns.test", &full)
        .expect("CNAME");
    let (_, err) = issue_wildcard_and_apex(&setup, &state);
    assert!(err.contains(&full), "the CNAME target is named: {err}");
    // Both values were sent, then rotated out by cleanup.
    let sub = account["subdomain"].as_str().expect("subdomain");
    let acme = setup.acmedns.as_ref().expect("acme-dns");
    assert_eq!(acme.values(sub), [certsmith_acmedns_cleared(); 2]);
    assert!(
        txt(&setup, &full)
            .iter()
            .all(|v| v == certsmith_acmedns_cleared())
    );
}

fn certsmith_acmedns_cleared() -> &'static str {
    "certsmith_cleared_xxxxxxxxxxxxxxxxxxxxxxxxx"
}

#[test]
fn acmedns_uses_a_certbot_storage_file_and_rides_out_a_503() {
    let setup = acmedns_setup("bot.test").expect("setup");
    let full = acmedns_delegate(&setup, "bot.test").expect("account + CNAME");
    let acme = setup.acmedns.as_ref().expect("acme-dns");
    acme.inject(Throttle {
        status: 503,
        retry_after_secs: 1,
    });
    let state = TempState::new().expect("state");
    issue_wildcard_and_apex(&setup, &state);
    let reqs = acme.requests();
    assert!(reqs.iter().any(|r| r.status == 503), "{reqs:?}");
    // The account came from the file: the only registration is the
    // operator's (acmedns_delegate).
    assert_eq!(
        reqs.iter().filter(|r| r.path == "/register").count(),
        1,
        "{reqs:?}"
    );
    assert!(
        txt(&setup, &full)
            .iter()
            .all(|v| v == certsmith_acmedns_cleared())
    );
    assert_check_passes(&setup, "bot.test");
}

#[test]
fn acmedns_a_cname_to_the_wrong_place_is_refused_before_any_update() {
    let setup = acmedns_setup("bad.test").expect("setup");
    acmedns_delegate(&setup, "bad.test").expect("account + CNAME");
    setup
        .updater()
        .expect("bind")
        .set_cname("_acme-challenge.bad.test", "elsewhere.auth.test")
        .expect("CNAME");
    let before = setup.acmedns.as_ref().expect("acme").requests().len();
    let state = TempState::new().expect("state");
    let o = setup
        .issue(state.path(), &["bad.test"])
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_ne!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(err.contains("leads to elsewhere.auth.test"), "{err}");
    assert_eq!(
        setup.acmedns.as_ref().expect("acme").requests().len(),
        before
    );
}

// ---- pdns -------------------------------------------------------------

#[test]
fn pdns_issues_wildcard_and_apex_through_a_real_powerdns_keeping_other_records() {
    let setup = pdns_setup("pdns.test").expect("setup");
    let pdns = setup.pdns.as_ref().expect("pdns");
    let name = "_acme-challenge.pdns.test";
    // Someone else's value, and a disabled record the filtered API view
    // would not show: both must survive.
    pdns.put_txt(
        "pdns.test",
        name,
        &[("\"someone-elses-value\"", false), ("\"parked\"", true)],
    )
    .expect("foreign records");
    let state = TempState::new().expect("state");
    let (out, err) = issue_wildcard_and_apex(&setup, &state);
    assert!(
        !out.contains(pdns.api_key()) && !err.contains(pdns.api_key()),
        "key leaked"
    );
    let mut left = pdns.txt_records("pdns.test", name).expect("records");
    left.sort();
    assert_eq!(
        left,
        [
            ("\"parked\"".to_owned(), true),
            ("\"someone-elses-value\"".to_owned(), false)
        ]
    );
    assert_eq!(txt(&setup, name), ["someone-elses-value"]);
    assert_check_passes(&setup, "pdns.test");
}

#[test]
fn pdns_a_wrong_key_is_an_auth_error_without_the_key() {
    let mut setup = pdns_setup("pdns.test").expect("setup");
    let wrong = "wrong-pdns-key-0123456789";
    for (k, v) in &mut setup.env {
        if k == "PDNS_API_KEY" {
            *v = wrong.into();
        }
    }
    let state = TempState::new().expect("state");
    let o = setup
        .issue(state.path(), &["pdns.test"])
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(err.contains("PowerDNS refused the API key"), "{err}");
    assert!(!out.contains(wrong) && !err.contains(wrong), "key leaked");
}

#[test]
fn pdns_key_from_a_file() {
    let mut setup = pdns_setup("pdns.test").expect("setup");
    let key = setup.pdns.as_ref().expect("pdns").api_key().to_owned();
    let file = setup.dir.path().join("pdns-key");
    std::fs::write(&file, format!("{key}\n")).expect("key file");
    setup.env.retain(|(k, _)| k != "PDNS_API_KEY");
    setup
        .env
        .push(("PDNS_API_KEY_FILE".into(), file.display().to_string()));
    let state = TempState::new().expect("state");
    let o = setup
        .issue(state.path(), &["pdns.test"])
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
}
