//! The Cloudflare plugin end to end: `certsmith issue --solver cloudflare`
//! against a real Pebble, through the Cloudflare API stand-in (the one
//! service that cannot run here), which mirrors records into the
//! pebble-challtestsrv Pebble's VA asks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn, Failure};
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin, dns, journal_entries};

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

/// The cleanup journal's one entry in `state`, parsed; `None` while there
/// is none.
fn journal_entry(state: &Path) -> Option<serde_json::Value> {
    std::fs::read_dir(state.join("journal"))
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .and_then(|e| std::fs::read(e.path()).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[test]
fn a_killed_run_journals_the_record_id_and_the_next_run_deletes_that_record() {
    let (pebble, cf, state) = setup();
    // A propagation server that never answers keeps the run after present.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent = silent.local_addr().expect("addr").to_string();
    let mut child = issue_cmd(&pebble, &cf, &state, &["cf.test"])
        .args(["--propagation-server", &silent])
        .args(["--propagation-timeout", "600"])
        .env("CLOUDFLARE_API_TOKEN", cf.token())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn certsmith");
    // What present returned reaches the journal before the run waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    let entry = loop {
        if let Some(e) = journal_entry(state.path()).filter(|e| !e["presented"].is_null()) {
            break e;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no journal entry with what present returned: {:?}",
                journal_entry(state.path())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let record = cf
        .records()
        .into_iter()
        .find(|r| r.name == "_acme-challenge.cf.test")
        .expect("the killed run's record");
    assert_eq!(
        entry["presented"]["handle"]["record_id"],
        record.id.as_str()
    );
    assert_eq!(
        entry["presented"]["handle"]["zone_id"],
        record.zone_id.as_str()
    );

    // The next run removes that record by its id, and the entry with it.
    let o = issue(&pebble, &cf, &state, &["other.test"], cf.token());
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        err.contains("1 challenge(s) left by an earlier run"),
        "{err}"
    );
    assert!(
        cf.requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with(&record.id) && r.status == 200),
        "{:?}",
        cf.requests()
    );
    assert!(cf.txt_values("_acme-challenge.cf.test").is_empty());
    assert_eq!(journal_entries(state.path()), 0);
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
