//! The httpreq solver against the lego-style hook of the test harness,
//! which writes into a real BIND9: values land and go, a 429 and a 503
//! with Retry-After are waited out inside the deadline, and a refusal
//! comes back with the hook's answer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use certsmith_httpreq::{Httpreq, HttpreqConfig};
use certsmith_plugin_api::{ChallengeRequest, ChallengeType, DnsTarget, ErrorKind, Secret, Solver};
use certsmith_tests::httpreq_hook::HttpreqHook;
use certsmith_tests::throttle_proxy::Throttle;
use certsmith_tests::{Bind, ZoneSpec};

fn request(value: &str, secs: u64) -> ChallengeRequest {
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + secs * 1000;
    ChallengeRequest::new(ChallengeType::Dns01, "h.test", "t", "t.k", deadline).with_dns(Some(
        DnsTarget::new(
            "h.test",
            "_acme-challenge",
            "_acme-challenge.h.test",
            value,
            60,
        ),
    ))
}

/// The solver for `hook` with basic auth `u`/`password`, with certsmith's
/// host attached (its HTTP client sends the solver's requests, as when
/// certsmith loads the plugin).
fn solver(hook: &HttpreqHook, password: &str) -> Httpreq {
    certsmith_tests::attach_plugin_host();
    let mut c = HttpreqConfig::new(hook.endpoint());
    c.username = Some("u".into());
    c.password = Some(Secret::new(password));
    Httpreq::new(c).expect("config")
}

#[tokio::test(flavor = "multi_thread")]
async fn values_reach_bind_through_the_hook_after_rate_limits() {
    let bind = Bind::start(&[ZoneSpec::new("h.test")]).expect("BIND");
    let hook = HttpreqHook::start(&bind, "/hook", Some(("u", "pw"))).expect("hook");
    let s = solver(&hook, "pw");
    hook.inject(Throttle {
        status: 429,
        retry_after_secs: 1,
    });
    hook.inject(Throttle {
        status: 503,
        retry_after_secs: 1,
    });
    let started = Instant::now();
    let r = request("value-a", 30);
    let p = s.present(&r).await.expect("present");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "Retry-After honoured"
    );
    assert_eq!(
        bind.query_txt("_acme-challenge.h.test").expect("query"),
        ["value-a"]
    );
    s.cleanup(&r, &p).await.expect("cleanup");
    assert!(
        bind.query_txt("_acme-challenge.h.test")
            .expect("query")
            .is_empty()
    );
    let paths: Vec<(String, u16)> = hook
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(
        paths,
        [
            ("/hook/present".to_owned(), 429),
            ("/hook/present".to_owned(), 503),
            ("/hook/present".to_owned(), 200),
            ("/hook/cleanup".to_owned(), 200),
        ]
    );
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_is_not_waited_and_refusals_are_final() {
    let bind = Bind::start(&[ZoneSpec::new("h.test")]).expect("BIND");
    let hook = HttpreqHook::start(&bind, "", Some(("u", "pw"))).expect("hook");
    let s = solver(&hook, "pw");
    hook.inject(Throttle {
        status: 429,
        retry_after_secs: 600,
    });
    let started = Instant::now();
    let e = s.present(&request("v", 5)).await.expect_err("rate limited");
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after_ms, Some(600_000));
    assert!(started.elapsed() < Duration::from_secs(2));

    let wrong = solver(&hook, "not-pw");
    let e = wrong.present(&request("v", 5)).await.expect_err("401");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.message.contains("HTTP 401: Unauthorized"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("not-pw"), "{}", e.message);
}
