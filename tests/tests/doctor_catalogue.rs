//! `certsmith doctor`'s credentials check (ABI 1.2 `check_credentials`)
//! for the catalogue's solvers, through the CLI, as `doctor.rs` runs it:
//! for each solver one run whose check passes and one whose check fails —
//! a `fail` line naming the option or variable to fix, the secret nowhere
//! in the output, exit code 10 — and proof that the check changed nothing
//! at the provider (only reads reached it; no record, no registration).
//!
//! Servers: Pebble for the CA checks, BIND9 for the zones the doctor finds
//! by SOA, real PowerDNS for `pdns`; the stand-ins for the APIs that
//! cannot run here (DigitalOcean, Hetzner, Google Cloud DNS, Azure DNS,
//! acme-dns). `httpreq` keeps the default: lego's httpreq protocol has no
//! read-only request, so the check is reported as skipped, never passed.

use std::os::unix::fs::PermissionsExt as _;

use certsmith_tests::catalogue::{self, Provider};
use certsmith_tests::catalogue_a::{self, Setup};
use certsmith_tests::standin::{Answer, CloudOpts};
use certsmith_tests::{Bind, Pebble, PebbleOpts, TempState, ZoneSpec};

use crate::doctor::{DOCTOR_FAILED, Doctor, run_doctor, write_config};

/// `[certificate.solver_options]` lines for `opts`.
fn options(opts: &[(String, String)]) -> String {
    let mut text = String::new();
    for (k, v) in opts {
        text.push_str(&format!("{k} = {v:?}\n"));
    }
    text
}

/// A config with one certificate for `domain` answered by `solver`.
fn cert(solver: &str, domain: &str, opts: &[(String, String)]) -> String {
    format!(
        "[[certificate]]\nname = \"c\"\ndomains = [{domain:?}]\nsolver = {solver:?}\n\
         [certificate.solver_options]\n{}",
        options(opts)
    )
}

fn env_of(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Asserts a failed credentials check for `code`: exit 10, the detail
/// naming each of `names`, none of `secrets` anywhere in the output.
fn expect_refused(d: &Doctor, code: &str, names: &[&str], secrets: &[&str]) -> String {
    assert_eq!(d.code, Some(DOCTOR_FAILED), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect(&format!("credentials {code}"), "fail");
    for n in names {
        assert!(detail.contains(n), "{code}: {n:?} not named in {detail}");
    }
    let all = format!("{}{}", d.json, d.stderr);
    for s in secrets {
        assert!(
            !all.contains(s),
            "{code}: a secret is in the output:\n{all}"
        );
    }
    detail
}

/// The cloud providers: a good credential (ok, the zone named), a wrong
/// one (fail, the variable named, the secret not shown); only GETs (and
/// the OAuth token POST) reached the stand-in.
fn cloud(provider: Provider, zone: &str) {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind = Bind::start(&[ZoneSpec::new(zone)]).expect("start BIND");
    let rig = catalogue::start(provider, CloudOpts::default().zones(&[zone]))
        .expect("start the stand-in");
    let home = TempState::new().expect("temp");
    let code = provider.code();
    let cfg = write_config(
        &home,
        "cloud.toml",
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        &cert(code, &format!("*.{zone}"), &rig.opts),
    );
    let a = bind.addr().to_string();
    let dns = ["--dns-resolver", &a, "--propagation-server", &a];

    let d = run_doctor(&cfg, &dns, &env_of(&rig.env));
    assert_eq!(d.code, Some(0), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect(&format!("credentials {code}"), "ok");
    assert!(detail.contains(zone), "{code}: {detail}");
    let good_secret = rig.standin.secret();
    assert!(!d.json.to_string().contains(&good_secret) && !d.stderr.contains(&good_secret));
    let requests = rig.standin.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.status == 200),
        "{code}: no read reached the API: {requests:?}"
    );
    for r in &requests {
        let token_call = r.method == "POST" && r.path.ends_with("/token");
        assert!(
            r.method == "GET" || token_call,
            "{code}: doctor sent {} {}",
            r.method,
            r.path
        );
    }
    assert!(
        rig.standin.state().records.is_empty(),
        "{code} wrote a record"
    );

    let (var, secret) = rig
        .bad_env
        .iter()
        .find(|(k, _)| k.starts_with(provider.secret_var()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("the bad credential");
    let d = run_doctor(&cfg, &dns, &env_of(&rig.bad_env));
    // The gcloud variable names a key file: its private key is the secret.
    let shown = if provider == Provider::Gcloud {
        let key: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&secret).expect("read the key"))
                .expect("a JSON key");
        let pem = key["private_key"].as_str().expect("private_key");
        pem.lines().nth(3).expect("a line of the key").to_owned()
    } else {
        secret
    };
    expect_refused(&d, code, &[&var], &[&shown]);
}

#[test]
fn digitalocean_token_good_and_bad() {
    cloud(Provider::DigitalOcean, "do.test");
}

#[test]
fn hetzner_token_good_and_bad() {
    cloud(Provider::Hetzner, "hz.test");
}

#[test]
fn gcloud_key_good_and_rotated() {
    cloud(Provider::Gcloud, "gc.test");
}

#[test]
fn azure_secret_good_and_bad() {
    cloud(Provider::Azure, "az.test");
}

/// No zone found for the name (the DNS check fails): each cloud check
/// still proves the credentials, with a read that needs no zone.
#[test]
fn cloud_credentials_without_a_zone() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind = Bind::start(&[ZoneSpec::new("other.test")]).expect("start BIND");
    let home = TempState::new().expect("temp");
    let a = bind.addr().to_string();
    let dns = ["--dns-resolver", &a, "--propagation-server", &a];
    for provider in Provider::ALL {
        let rig = catalogue::start(provider, CloudOpts::default().zones(&["cloud.test"]))
            .expect("start the stand-in");
        let code = provider.code();
        let cfg = write_config(
            &home,
            &format!("{code}.toml"),
            &pebble.directory_url(),
            pebble.ca_cert_path(),
            &cert(code, "www.nowhere.test", &rig.opts),
        );
        let d = run_doctor(&cfg, &dns, &env_of(&rig.env));
        assert!(
            d.expect("dns www.nowhere.test", "fail")
                .contains("no zone found")
        );
        let detail = d.expect(&format!("credentials {code}"), "ok");
        let read = ["account active", "zones listed", "are readable"];
        assert!(read.iter().any(|r| detail.contains(r)), "{code}: {detail}");
        assert!(
            rig.standin
                .requests()
                .iter()
                .all(|r| r.method == "GET" || r.path.ends_with("/token")),
            "{code}: {:?}",
            rig.standin.requests()
        );
    }
}

/// A scoped DigitalOcean token that may not read the account (403) is no
/// failure when it sees the domain.
#[test]
fn digitalocean_scoped_token_without_account_read() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind = Bind::start(&[ZoneSpec::new("do.test")]).expect("start BIND");
    let rig = catalogue::start(
        Provider::DigitalOcean,
        CloudOpts::default().zones(&["do.test"]),
    )
    .expect("start the stand-in");
    rig.standin.inject(
        "/v2/account",
        Answer::json(
            403,
            serde_json::json!({"id": "forbidden", "message": "You are not authorized to perform this operation"}),
        ),
    );
    let home = TempState::new().expect("temp");
    let cfg = write_config(
        &home,
        "do.toml",
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        &cert("digitalocean", "do.test", &rig.opts),
    );
    let a = bind.addr().to_string();
    let d = run_doctor(
        &cfg,
        &["--dns-resolver", &a, "--propagation-server", &a],
        &env_of(&rig.env),
    );
    assert_eq!(d.code, Some(0), "{:#}", d.json);
    let detail = d.expect("credentials digitalocean", "ok");
    assert!(
        detail.contains("not readable with its scopes") && detail.contains("do.test"),
        "{detail}"
    );
}

/// A zone the token does not see: a not-found naming the zone.
#[test]
fn digitalocean_zone_not_visible() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind = Bind::start(&[ZoneSpec::new("other.test")]).expect("start BIND");
    let rig = catalogue::start(
        Provider::DigitalOcean,
        CloudOpts::default().zones(&["do.test"]),
    )
    .expect("start the stand-in");
    let home = TempState::new().expect("temp");
    let cfg = write_config(
        &home,
        "do.toml",
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        &cert("digitalocean", "other.test", &rig.opts),
    );
    let a = bind.addr().to_string();
    let d = run_doctor(
        &cfg,
        &["--dns-resolver", &a, "--propagation-server", &a],
        &env_of(&rig.env),
    );
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    let detail = d.expect("credentials digitalocean", "fail");
    assert!(
        detail.contains("no domain other.test") && detail.contains("DO_AUTH_TOKEN"),
        "{detail}"
    );
}

/// A config for a catalogue-A setup, with its DNS server as resolver.
fn setup_config(home: &TempState, s: &Setup, file: &str, domain: &str) -> std::path::PathBuf {
    write_config(
        home,
        file,
        &s.pebble.directory_url(),
        s.pebble.ca_cert_path(),
        &cert(s.solver, domain, &[]),
    )
}

fn dns_args(s: &Setup) -> Vec<String> {
    let a = s.dns.to_string();
    vec![
        "--dns-resolver".into(),
        a.clone(),
        "--propagation-server".into(),
        a,
    ]
}

#[test]
fn pdns_key_good_and_bad() {
    let s = catalogue_a::pdns_setup("pdns.test").expect("pdns setup");
    let home = TempState::new().expect("temp");
    let cfg = setup_config(&home, &s, "pdns.toml", "www.pdns.test");
    let args = dns_args(&s);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pdns = s.pdns.as_ref().expect("PowerDNS");

    let d = run_doctor(&cfg, &args, &env_of(&s.env));
    assert_eq!(d.code, Some(0), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect("credentials pdns", "ok");
    assert!(
        detail.contains("accepted by PowerDNS") && detail.contains("pdns.test ("),
        "{detail}"
    );
    assert!(!d.json.to_string().contains(pdns.api_key()));
    assert!(
        pdns.query_txt("_acme-challenge.www.pdns.test")
            .expect("query")
            .is_empty()
    );

    let wrong = "not-the-pdns-api-key-0123456789";
    let env: Vec<(String, String)> = s
        .env
        .iter()
        .map(|(k, v)| {
            let v = if k == "PDNS_API_KEY" { wrong } else { v };
            (k.clone(), v.to_owned())
        })
        .collect();
    let d = run_doctor(&cfg, &args, &env_of(&env));
    expect_refused(&d, "pdns", &["PDNS_API_KEY"], &[wrong, pdns.api_key()]);
}

#[test]
fn acmedns_account_stored_or_missing() {
    let s = catalogue_a::acmedns_setup("adns.test").expect("acmedns setup");
    let home = TempState::new().expect("temp");
    let cfg = setup_config(&home, &s, "acmedns.toml", "adns.test");
    let args = dns_args(&s);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let acme = s.acmedns.as_ref().expect("acme-dns");

    // No account stored yet: fail naming the file's variable; nothing
    // was registered.
    let d = run_doctor(&cfg, &args, &env_of(&s.env));
    let detail = expect_refused(&d, "acmedns", &["ACME_DNS_STORAGE_PATH", "adns.test"], &[]);
    assert!(detail.contains("no account"), "{detail}");
    assert!(
        acme.requests().iter().all(|r| r.path != "/register"),
        "doctor registered an account: {:?}",
        acme.requests()
    );

    // The account stored and the CNAME created, as an operator does once:
    // ok; the server asked /health only; the password never shown.
    let full = catalogue_a::acmedns_delegate(&s, "adns.test").expect("delegate");
    let before = acme.requests().len();
    let d = run_doctor(&cfg, &args, &env_of(&s.env));
    assert_eq!(d.code, Some(0), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect("credentials acmedns", "ok");
    assert!(
        detail.contains("/health") && detail.contains(acme.zone()),
        "{detail} (fulldomain {full})"
    );
    let after: Vec<String> = acme.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(after, ["/health"], "doctor sent more than /health");
    let stored = std::fs::read_to_string(catalogue_a::acmedns_storage(s.dir.path()))
        .expect("the storage file");
    let stored: serde_json::Value = serde_json::from_str(&stored).expect("JSON");
    let password = stored["adns.test"]["password"].as_str().expect("password");
    assert!(!d.json.to_string().contains(password) && !d.stderr.contains(password));
}

#[test]
fn exec_program_executable_or_not() {
    let s = catalogue_a::exec_setup("exec.test").expect("exec setup");
    let home = TempState::new().expect("temp");
    let cfg = setup_config(&home, &s, "exec.toml", "exec.test");
    let args = dns_args(&s);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let bind = s.bind.as_ref().expect("BIND");

    // The lego hook script: ok, and not run (no record in BIND).
    let d = run_doctor(&cfg, &args, &env_of(&s.env));
    assert_eq!(d.code, Some(0), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect("credentials exec", "ok");
    let script = catalogue_a::lego_exec_script().display().to_string();
    assert!(
        detail.contains(&script) && detail.contains("not run"),
        "{detail}"
    );
    assert!(
        bind.query_txt("_acme-challenge.exec.test")
            .expect("query")
            .is_empty()
    );

    // A program without the execute bit (the tests run as root, for which
    // access(2) still wants one), then one that does not exist.
    let plain = s.dir.path().join("hook.sh");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").expect("write");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let with_path = |p: &str| -> Vec<(String, String)> {
        s.env
            .iter()
            .map(|(k, v)| {
                let v = if k == "EXEC_PATH" { p } else { v };
                (k.clone(), v.to_owned())
            })
            .collect()
    };
    let plain = plain.display().to_string();
    let d = run_doctor(&cfg, &args, &env_of(&with_path(&plain)));
    let detail = expect_refused(&d, "exec", &["EXEC_PATH", &plain], &[]);
    assert!(
        detail.contains("not executable") && detail.contains("chmod +x"),
        "{detail}"
    );
    let missing = s.dir.path().join("no-such-hook").display().to_string();
    let d = run_doctor(&cfg, &args, &env_of(&with_path(&missing)));
    let detail = expect_refused(&d, "exec", &["EXEC_PATH", &missing], &[]);
    assert!(detail.contains("no such file"), "{detail}");
}

/// httpreq has no read-only request in lego's protocol: skipped, with the
/// fix to check by hand, never reported as passed; nothing sent to the hook.
#[test]
fn httpreq_check_is_skipped() {
    let s = catalogue_a::httpreq_setup("hreq.test", ("certsmith", "hook-password-0123"))
        .expect("httpreq setup");
    let home = TempState::new().expect("temp");
    let cfg = setup_config(&home, &s, "httpreq.toml", "hreq.test");
    let args = dns_args(&s);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = run_doctor(&cfg, &args, &env_of(&s.env));
    assert_eq!(d.code, Some(0), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect("credentials httpreq", "skipped");
    assert!(detail.contains("not supported by this plugin"), "{detail}");
    let fix = d.check("credentials httpreq")["fix"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(fix.contains("by hand"), "{fix}");
    assert!(!d.json.to_string().contains("hook-password-0123"));
}
