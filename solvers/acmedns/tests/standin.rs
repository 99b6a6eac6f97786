//! The acmedns solver against the acme-dns stand-in of the test harness
//! (which serves through a real BIND9): registration and the CNAME it
//! asks for, two values at once, cleanup rotating them out, a refused
//! account.

use std::time::{SystemTime, UNIX_EPOCH};

use certsmith_acmedns::{Acmedns, AcmednsConfig, CLEARED};
use certsmith_plugin_api::{ChallengeRequest, ChallengeType, DnsTarget, ErrorKind, Solver};
use certsmith_tests::acmedns::AcmeDnsStandIn;
use certsmith_tests::{Bind, ZoneSpec};

fn request(fqdn: &str, value: &str) -> ChallengeRequest {
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 30_000;
    ChallengeRequest::new(ChallengeType::Dns01, "example.test", "t", "t.k", deadline)
        .with_dns(Some(DnsTarget::new("auth.test", "x", fqdn, value, 1)))
}

/// The solver, with certsmith's host attached (its HTTP client sends the
/// solver's requests, as when certsmith loads the plugin).
fn solver(config: AcmednsConfig) -> Acmedns {
    certsmith_tests::attach_plugin_host();
    Acmedns::new(config).expect("config")
}

fn v(c: char) -> String {
    std::iter::repeat_n(c, 43).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_then_two_values_then_cleanup_rotates_them_out() {
    let bind = Bind::start(&[ZoneSpec::new("auth.test")]).expect("BIND");
    let acme = AcmeDnsStandIn::start(&bind, "auth.test").expect("stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("accounts.json");
    let s = solver(AcmednsConfig::new(
        acme.api_base(),
        file.display().to_string(),
    ));

    // No account, no CNAME: one is registered, and the CNAME is asked for.
    let e = s
        .present(&request("_acme-challenge.example.test", &v('a')))
        .await
        .expect_err("needs a CNAME");
    assert_eq!(e.kind, ErrorKind::Config);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("file")).expect("json");
    let full = stored["example.test"]["fulldomain"]
        .as_str()
        .expect("fulldomain")
        .to_owned();
    assert!(
        e.message
            .contains(&format!("_acme-challenge.example.test. CNAME {full}.")),
        "{}",
        e.message
    );

    // With the CNAME followed (the core hands over its target):
    let (a, b) = (request(&full, &v('a')), request(&full, &v('b')));
    let pa = s.present(&a).await.expect("present a");
    let pb = s.present(&b).await.expect("present b");
    let mut served = bind.query_txt(&full).expect("query");
    served.sort();
    assert_eq!(served, [v('a'), v('b')]);
    s.cleanup(&a, &pa).await.expect("cleanup a");
    s.cleanup(&b, &pb).await.expect("cleanup b");
    // Two placeholders, one record set: DNS holds identical records once.
    assert_eq!(bind.query_txt(&full).expect("query"), [CLEARED]);
    assert_eq!(
        acme.values(stored["example.test"]["subdomain"].as_str().expect("sub")),
        [CLEARED, CLEARED]
    );
}

#[tokio::test]
async fn a_refused_account_is_an_auth_error_naming_the_file() {
    let bind = Bind::start(&[ZoneSpec::new("auth.test")]).expect("BIND");
    let acme = AcmeDnsStandIn::start(&bind, "auth.test").expect("stand-in");
    let mut account = acme.register().expect("register");
    account["password"] = serde_json::Value::String("x".repeat(40));
    let full = account["fulldomain"].as_str().expect("full").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("accounts.json");
    std::fs::write(
        &file,
        serde_json::json!({ "example.test": account }).to_string(),
    )
    .expect("write");
    let s = solver(AcmednsConfig::new(
        acme.api_base(),
        file.display().to_string(),
    ));
    let e = s.present(&request(&full, &v('a'))).await.expect_err("401");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("accounts.json"), "{}", e.message);
    assert!(!e.message.contains(&"x".repeat(40)), "{}", e.message);
}
