//! The pdns solver against a real PowerDNS (`certsmith_tests::pdns`):
//! two values at one name presented at once (example.com and
//! *.example.com) both land, other and disabled records survive, cleanup
//! removes only its own, twice is harmless.

use std::time::{SystemTime, UNIX_EPOCH};

use certsmith_pdns::{Pdns, PdnsConfig};
use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, DnsTarget, ErrorKind, Presented, Solver,
};
use certsmith_tests::pdns::Pdns as PdnsServer;
use certsmith_tests::throttle_proxy::Throttle;
use certsmith_tests::throttle_proxy::ThrottleProxy;

fn request(value: &str) -> ChallengeRequest {
    let in_30s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 30_000;
    ChallengeRequest::new(ChallengeType::Dns01, "zone.test", "t", "t.k", in_30s).with_dns(Some(
        DnsTarget::new(
            "zone.test",
            "_acme-challenge",
            "_acme-challenge.zone.test",
            value,
            60,
        ),
    ))
}

/// The solver for the API at `url`, with certsmith's host attached (its
/// HTTP client sends the solver's requests, as when certsmith loads the
/// plugin).
fn solver(url: impl Into<String>, key: impl Into<String>) -> Pdns {
    certsmith_tests::attach_plugin_host();
    Pdns::new(PdnsConfig::new(url, key)).expect("config")
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_values_land_and_only_ours_are_removed() {
    let server = PdnsServer::start(&["zone.test"]).expect("start PowerDNS");
    let name = "_acme-challenge.zone.test";
    server
        .put_txt(
            "zone.test",
            name,
            &[("\"other\"", false), ("\"parked\"", true)],
        )
        .expect("foreign records");
    let s = solver(server.api_url(), server.api_key());
    let (a, b) = (request("value-a"), request("value-b"));
    let (pa, pb) = tokio::join!(s.present(&a), s.present(&b));
    let (pa, pb) = (pa.expect("present a"), pb.expect("present b"));
    let mut served = server.query_txt(name).expect("query");
    served.sort();
    assert_eq!(served, ["other", "value-a", "value-b"]);
    s.present(&a).await.expect("present again is harmless");
    assert_eq!(
        server
            .txt_records("zone.test", name)
            .expect("records")
            .len(),
        4
    );

    s.cleanup(&a, &pa).await.expect("cleanup a");
    s.cleanup(&a, &pa).await.expect("cleanup a again");
    s.cleanup(&b, &pb).await.expect("cleanup b");
    let mut left = server.txt_records("zone.test", name).expect("records");
    left.sort();
    assert_eq!(
        left,
        [
            ("\"other\"".to_owned(), false),
            ("\"parked\"".to_owned(), true)
        ]
    );

    // The last value gone deletes the set.
    server.put_txt("zone.test", name, &[]).expect("clear");
    let p = s.present(&a).await.expect("present");
    s.cleanup(&a, &p).await.expect("cleanup");
    assert!(
        server
            .txt_records("zone.test", name)
            .expect("records")
            .is_empty()
    );
    s.cleanup(&b, &Presented::default())
        .await
        .expect("nothing there");
}

#[tokio::test]
async fn a_zone_powerdns_does_not_have_and_a_wrong_key_are_told_apart() {
    let server = PdnsServer::start(&["zone.test"]).expect("start PowerDNS");
    let s = solver(server.api_url(), server.api_key());
    let mut r = request("v");
    if let Some(d) = r.dns.as_mut() {
        d.zone = "missing.test".into();
    }
    let e = s.present(&r).await.expect_err("no zone");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.contains("PowerDNS has no zone missing.test"),
        "{}",
        e.message
    );
    let bad = solver(server.api_url(), "wrong-key");
    let e = bad.present(&request("v")).await.expect_err("auth");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.message.contains("wrong-key"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_of_a_gateway_in_front_are_waited_out_within_the_deadline() {
    let server = PdnsServer::start(&["zone.test"]).expect("start PowerDNS");
    let proxy = ThrottleProxy::start(server.web_addr()).expect("proxy");
    proxy.inject(Throttle {
        status: 429,
        retry_after_secs: 1,
    });
    proxy.inject(Throttle {
        status: 503,
        retry_after_secs: 1,
    });
    let s = solver(proxy.url(), server.api_key());
    let started = std::time::Instant::now();
    let r = request("value-a");
    let p = s.present(&r).await.expect("present through the throttling");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900));
    assert_eq!(
        server
            .query_txt("_acme-challenge.zone.test")
            .expect("query"),
        ["value-a"]
    );
    let statuses: Vec<u16> = proxy.requests().iter().map(|(_, _, s)| *s).collect();
    assert_eq!(&statuses[..3], [429, 503, 200], "{:?}", proxy.requests());
    assert!(
        proxy
            .requests()
            .iter()
            .any(|(m, _, s)| m == "PATCH" && *s == 204)
    );

    // A Retry-After beyond the deadline ends the call at once, with the wait.
    proxy.inject(Throttle {
        status: 429,
        retry_after_secs: 3600,
    });
    let started = std::time::Instant::now();
    let e = s.cleanup(&r, &p).await.expect_err("rate limited");
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after_ms, Some(3_600_000));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    s.cleanup(&r, &p).await.expect("cleanup");
    assert!(
        server
            .query_txt("_acme-challenge.zone.test")
            .expect("query")
            .is_empty()
    );
}
