//! The Cloudflare plugin end to end: `certsmith issue --solver cloudflare`
//! against a real Pebble, through the Cloudflare API stand-in (the one
//! service that cannot run here), which mirrors records into the
//! pebble-challtestsrv Pebble's VA asks.

use std::path::PathBuf;
use std::process::{Command, Output};

use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn, Failure};
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin, dns};

/// `certsmith issue --solver cloudflare` against Pebble and the stand-in,
/// with no token in its environment yet.
fn issue_cmd(
    pebble: &Pebble,
    cf: &CloudflareStandIn,
    state: &TempState,
    domains: &[&str],
) -> Command {
    let cts = pebble.challtestsrv().expect("challtestsrv");
    let dns_addr = cts.dns_addr().to_string();
    let mut cmd = Command::new(certsmith_bin());
    cmd.args([
        "issue",
        "--solver",
        "cloudflare",
        "--agree-tos",
        "--output",
        "json",
    ]);
    for d in domains {
        cmd.args(["-d", d]);
    }
    cmd.args(["--solver-opt", &format!("api_base={}", cf.api_base())])
        .args(["--server", &pebble.directory_url()])
        .arg("--ca-cert")
        .arg(pebble.ca_cert_path())
        .arg("--state-dir")
        .arg(state.path())
        .args([
            "--dns-resolver",
            &dns_addr,
            "--propagation-server",
            &dns_addr,
        ])
        .env_remove("CLOUDFLARE_API_TOKEN_FILE")
        .env_remove("CLOUDFLARE_API_TOKEN");
    cmd
}

fn issue(
    pebble: &Pebble,
    cf: &CloudflareStandIn,
    state: &TempState,
    domains: &[&str],
    token: &str,
) -> Output {
    issue_cmd(pebble, cf, state, domains)
        .env("CLOUDFLARE_API_TOKEN", token)
        .output()
        .expect("run certsmith")
}

fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn setup() -> (Pebble, CloudflareStandIn, TempState) {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let cf = CloudflareStandIn::start(
        CloudflareOpts::default()
            .zones(&["other.test", "cf.test", "third.test"])
            .max_per_page(1)
            .mirror_to(pebble.challtestsrv().expect("challtestsrv")),
    )
    .expect("start the Cloudflare stand-in");
    (pebble, cf, TempState::new().expect("state"))
}

#[test]
fn a_wildcard_certificate_through_cloudflare() {
    let (pebble, cf, state) = setup();
    // Someone else's value at the same name, and a rate limit on the first call.
    cf.add_foreign_txt("_acme-challenge.cf.test", "someone-elses-value")
        .expect("foreign record");
    cf.inject(Failure::RateLimited {
        retry_after_secs: 1,
    });
    let token = cf.token().to_owned();
    let o = issue(&pebble, &cf, &state, &["*.cf.test", "cf.test"], &token);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "token leaked"
    );

    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["domains"], serde_json::json!(["*.cf.test", "cf.test"]));
    let cert = PathBuf::from(v["cert_path"].as_str().expect("cert_path"));
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl");
    let sans = String::from_utf8_lossy(&text.stdout);
    assert!(
        sans.contains("DNS:*.cf.test") && sans.contains("DNS:cf.test"),
        "{sans}"
    );

    // The 429 was honoured and retried; the zone the core found was looked up.
    let reqs = cf.requests();
    let first = reqs.first().expect("requests");
    assert_eq!(first.status, 429);
    assert!(
        reqs.iter().any(|r| r.path == "/zones"
            && r.status == 200
            && r.query_param("name").as_deref() == Some("cf.test")),
        "{reqs:?}"
    );
    // Only our values were removed; the foreign one stays, in the API and in DNS.
    assert_eq!(
        cf.txt_values("_acme-challenge.cf.test"),
        vec!["someone-elses-value"]
    );
    let served = dns::query_txt(
        pebble.challtestsrv().expect("cts").dns_addr(),
        "_acme-challenge.cf.test",
    )
    .expect("query");
    assert_eq!(served, vec!["someone-elses-value"]);
}

#[test]
fn a_wrong_token_is_a_solver_error_that_never_shows_the_token() {
    let (pebble, cf, state) = setup();
    let wrong = "wrong-token-0123456789abcdef";
    let o = issue(&pebble, &cf, &state, &["*.cf.test"], wrong);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(
        err.contains("Cloudflare rejected the API token: it needs Zone:DNS:Edit on cf.test"),
        "{err}"
    );
    assert!(
        !out.contains(wrong) && !err.contains(wrong),
        "token leaked:\n{out}\n{err}"
    );
    // Nothing was left behind.
    assert!(
        cf.records().iter().all(|r| r.record_type != "TXT"),
        "{:?}",
        cf.records()
    );
}

#[test]
fn a_zone_cloudflare_does_not_have_is_reported() {
    let (pebble, cf, state) = setup();
    let token = cf.token().to_owned();
    let o = issue(&pebble, &cf, &state, &["missing.test"], &token);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(
        err.contains("no Cloudflare zone named missing.test"),
        "{err}"
    );
}

#[test]
fn the_token_can_come_from_a_file() {
    let (pebble, cf, state) = setup();
    let f = state.file("cf-token");
    std::fs::write(&f, format!("{}\n", cf.token())).expect("write token file");
    let o = issue_cmd(&pebble, &cf, &state, &["cf.test"])
        .env("CLOUDFLARE_API_TOKEN_FILE", &f)
        .output()
        .expect("run");
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
}
