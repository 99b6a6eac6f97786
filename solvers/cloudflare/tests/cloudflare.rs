//! The Cloudflare solver through the `Solver` trait, against the Cloudflare
//! API stand-in of `certsmith-tests`.

mod common;

use std::time::Duration;

use certsmith_plugin_api::{ErrorKind, Presented, Solver};
use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn, Failure, ZoneSpec};
use common::{
    calls, config, fqdn, request, request_due_in, solver, solver_with_config, solver_with_token,
};
use serde_json::json;

fn stand_in() -> CloudflareStandIn {
    CloudflareStandIn::start(CloudflareOpts::default()).expect("start the stand-in")
}

#[tokio::test]
async fn zone_lookup_walks_every_page_and_is_cached() {
    // Three zones named cf.test are visible (pending copies in two other
    // accounts, listed first) and one page holds one zone: the active one
    // is on page 3.
    let cf = CloudflareStandIn::start(
        CloudflareOpts::default()
            .zones(&["a.test", "other.test"])
            .zone(ZoneSpec::pending("cf.test", "account two"))
            .zone(ZoneSpec::pending("cf.test", "account three"))
            .zone(ZoneSpec::active("cf.test"))
            .max_per_page(1),
    )
    .expect("start");
    let s = solver(&cf);
    let p = s
        .present(&request("cf.test", "value-1"))
        .await
        .expect("present");

    let zone_pages: Vec<String> = cf
        .requests()
        .iter()
        .filter(|r| r.path == "/zones")
        .map(|r| {
            assert_eq!(r.query_param("name").as_deref(), Some("cf.test"));
            r.query_param("page").unwrap_or_default()
        })
        .collect();
    assert_eq!(zone_pages, ["1", "2", "3"], "{:#?}", calls(&cf.requests()));

    let records = cf.records();
    assert_eq!(records.len(), 1);
    // The record went into the active zone, which the stand-in lists last.
    let zone_ids: Vec<String> = records.iter().map(|r| r.zone_id.clone()).collect();
    assert_eq!(p.handle["zone_id"], json!(zone_ids[0]));
    assert_ne!(
        Some(zone_ids[0].clone()),
        cf.zone_id("cf.test"),
        "zone_id() returns the first (pending) zone of that name; the record must not be there"
    );

    // A second challenge in the same zone: no new lookup.
    let before = cf.requests().len();
    s.present(&request("cf.test", "value-2"))
        .await
        .expect("present");
    let new: Vec<_> = cf.requests()[before..].to_vec();
    assert!(new.iter().all(|r| r.path != "/zones"), "{:#?}", calls(&new));
}

#[tokio::test]
async fn present_creates_the_record_and_returns_its_id() {
    let cf = stand_in();
    let s = solver(&cf);
    let p = s
        .present(&request("cf.test", "the-value"))
        .await
        .expect("present");

    let records = cf.records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.record_type, "TXT");
    assert_eq!(r.name, "_acme-challenge.cf.test");
    assert_eq!(r.content, "\"the-value\"", "TXT content is sent quoted");
    assert_eq!(r.txt_value(), "the-value");
    assert_eq!(r.ttl, 120);
    assert_eq!(r.id.len(), 32);
    assert_eq!(
        p.handle,
        json!({"zone_id": cf.zone_id("cf.test"), "record_id": r.id})
    );
    assert_eq!(p.ttl, None, "the requested TTL (120) was used");

    let log = cf.requests();
    let post = log
        .iter()
        .find(|l| l.method == "POST")
        .expect("a POST was made");
    let body: serde_json::Value = serde_json::from_str(&post.body).expect("JSON body");
    assert_eq!(body["type"], "TXT");
    assert_eq!(body["name"], "_acme-challenge.cf.test");
    assert_eq!(body["ttl"], 120);
    assert!(log.iter().all(|l| l.authorized), "{:#?}", calls(&log));
}

#[tokio::test]
async fn automatic_ttl_reports_what_cloudflare_uses() {
    let cf = stand_in();
    let mut c = config(&cf, cf.token());
    c.ttl = 1;
    let s = solver_with_config(c);
    let p = s.present(&request("cf.test", "v")).await.expect("present");
    assert_eq!(cf.records()[0].ttl, 1);
    assert_eq!(p.ttl, Some(300));
}

#[tokio::test]
async fn presenting_the_same_value_twice_leaves_one_record() {
    let cf = stand_in();
    let s = solver(&cf);
    let req = request("cf.test", "same");
    let first = s.present(&req).await.expect("first present");
    let second = s.present(&req).await.expect("second present succeeds");
    assert_eq!(first.handle, second.handle, "the existing record's id");
    assert_eq!(cf.records().len(), 1);
    let statuses: Vec<(String, u16)> = cf
        .requests()
        .iter()
        .filter(|r| r.path.contains("dns_records"))
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("POST".to_owned(), 200),
            ("POST".to_owned(), 400),
            ("GET".to_owned(), 200)
        ],
        "the duplicate answer (81058) is followed by a lookup of the record"
    );
}

#[tokio::test]
async fn cleanup_deletes_by_the_id_in_the_handle() {
    let cf = stand_in();
    let s = solver(&cf);
    let req = request("cf.test", "v1");
    let p = s.present(&req).await.expect("present");
    let record_id = p.handle["record_id"].as_str().expect("id").to_owned();
    let before = cf.requests().len();

    s.cleanup(&req, &p).await.expect("cleanup");
    assert!(cf.records().is_empty());
    let log = cf.requests()[before..].to_vec();
    let zone_id = cf.zone_id("cf.test").expect("zone");
    let path = format!("/zones/{zone_id}/dns_records/{record_id}");
    assert_eq!(
        calls(&log),
        [format!("GET {path} → 200"), format!("DELETE {path} → 200")],
        "read back to check it is ours, then deleted by id"
    );
}

#[tokio::test]
async fn cleanup_without_a_handle_finds_the_record_by_value() {
    let cf = stand_in();
    let req = request("cf.test", "v2");
    solver(&cf).present(&req).await.expect("present");
    // A fresh instance (as after a restart), and no handle.
    let s = solver(&cf);
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
    assert!(cf.records().is_empty());
    let list = cf
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path.ends_with("/dns_records"))
        .expect("a listing");
    assert_eq!(list.query_param("type").as_deref(), Some("TXT"));
    assert_eq!(
        list.query_param("name").as_deref(),
        Some("_acme-challenge.cf.test")
    );
}

#[tokio::test]
async fn cleanup_again_is_success() {
    let cf = stand_in();
    let s = solver(&cf);
    let req = request("cf.test", "v3");
    let p = s.present(&req).await.expect("present");
    s.cleanup(&req, &p).await.expect("cleanup");
    s.cleanup(&req, &p)
        .await
        .expect("cleanup of a record already gone");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("and without a handle");
    assert!(cf.records().is_empty());
    assert_eq!(
        cf.requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1
    );
}

#[tokio::test]
async fn cleanup_in_a_zone_that_is_not_there_is_success() {
    let cf = stand_in();
    solver(&cf)
        .cleanup(&request("gone.test", "v"), &Presented::default())
        .await
        .expect("nothing can be left in a zone this token cannot see");
    solver(&cf)
        .cleanup(
            &request("cf.test", "v"),
            &Presented::new(json!({"zone_id": "0123456789abcdef0123456789abcdef", "record_id": "fedcba9876543210fedcba9876543210"})),
        )
        .await
        .expect("a zone deleted since present");
}

#[tokio::test]
async fn foreign_txt_values_at_the_same_name_are_never_touched() {
    let cf = stand_in();
    let name = fqdn("cf.test");
    let foreign = cf
        .add_foreign_txt(&name, "someone-elses-value")
        .expect("add foreign");
    let s = solver(&cf);
    let req = request("cf.test", "ours");
    let p = s.present(&req).await.expect("present");
    assert_eq!(cf.txt_values(&name), ["someone-elses-value", "ours"]);

    // A damaged handle that names the foreign record: it is read back, seen
    // not to be ours, and left alone; ours is found by value.
    let damaged = Presented::new(json!({"zone_id": p.handle["zone_id"], "record_id": foreign}));
    s.cleanup(&req, &damaged).await.expect("cleanup");
    assert_eq!(cf.txt_values(&name), ["someone-elses-value"]);
    s.cleanup(&req, &p).await.expect("cleanup again");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup without handle");
    assert_eq!(cf.txt_values(&name), ["someone-elses-value"]);
    assert!(cf.records()[0].foreign);
}

#[tokio::test]
async fn two_values_at_one_name_coexist_and_are_removed_one_by_one() {
    // example.com and *.example.com: two values at one name at once.
    let cf = stand_in();
    let s = solver(&cf);
    let apex = request("cf.test", "apex-value");
    let wild = request("cf.test", "wildcard-value");
    let (pa, pw) = tokio::join!(s.present(&apex), s.present(&wild));
    let (pa, pw) = (pa.expect("apex"), pw.expect("wildcard"));
    let name = fqdn("cf.test");
    let mut values = cf.txt_values(&name);
    values.sort();
    assert_eq!(values, ["apex-value", "wildcard-value"]);
    s.cleanup(&wild, &pw).await.expect("cleanup wildcard");
    assert_eq!(cf.txt_values(&name), ["apex-value"]);
    s.cleanup(&apex, &pa).await.expect("cleanup apex");
    assert!(cf.records().is_empty());
}

#[tokio::test]
async fn a_wrong_token_is_an_auth_error_that_never_shows_the_token() {
    let cf = stand_in();
    let wrong = "Wr0ngT0kenWr0ngT0kenWr0ngT0kenWr0ngT0ken";
    let s = solver_with_token(&cf, wrong);
    let e = s
        .present(&request("cf.test", "v"))
        .await
        .expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.retryable);
    assert_eq!(
        e.message,
        "Cloudflare rejected the API token: it needs Zone:DNS:Edit on cf.test \
         (HTTP 403 to GET /client/v4/zones?name=cf.test&per_page=50&page=1, \
         Cloudflare error 9109: Invalid access token)"
    );
    assert!(!e.message.contains(wrong));
    assert!(!format!("{e:?}").contains(wrong));
    assert!(!format!("{s:?}").contains(wrong), "{s:?}");
    let c = config(&cf, wrong);
    assert!(!format!("{c:?}").contains(wrong), "{c:?}");
    assert!(format!("{c:?}").contains("redacted"));
    // The stand-in really saw a Bearer token that was not its own.
    assert!(cf.requests().iter().all(|r| !r.authorized));

    // Cleanup with the wrong token is an auth error too (nothing deleted,
    // and the user needs to know).
    let e = s
        .cleanup(&request("cf.test", "v"), &Presented::default())
        .await
        .expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.message.contains(wrong));
}

#[tokio::test]
async fn a_token_without_dns_edit_is_an_auth_error_naming_the_zone() {
    let cf = stand_in();
    let s = solver_with_token(&cf, cf.read_only_token());
    let e = s
        .present(&request("cf.test", "v"))
        .await
        .expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.message.starts_with(
            "Cloudflare rejected the API token: it needs Zone:DNS:Edit on cf.test (HTTP 403 to POST /client/v4/zones/"
        ),
        "{}",
        e.message
    );
    assert!(
        e.message
            .ends_with("Cloudflare error 10000: Authentication error)"),
        "{}",
        e.message
    );
    assert!(!e.message.contains(cf.read_only_token()));
    assert!(cf.records().is_empty());
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after() {
    let cf = stand_in();
    cf.inject(Failure::RateLimited {
        retry_after_secs: 1,
    });
    let s = solver(&cf);
    s.present(&request("cf.test", "v"))
        .await
        .expect("present after the rate limit");
    assert_eq!(cf.records().len(), 1);
    let log = cf.requests();
    assert_eq!(log[0].status, 429, "{:#?}", calls(&log));
    assert_eq!(
        (log[1].method.as_str(), log[1].path.as_str()),
        (log[0].method.as_str(), log[0].path.as_str()),
        "the same request again"
    );
    let gap = log[1].at.duration_since(log[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "the retry came {gap:?} after the 429, before its Retry-After: 1"
    );
}

#[tokio::test]
async fn a_rate_limit_beyond_the_deadline_is_reported_with_its_wait() {
    let cf = stand_in();
    cf.inject(Failure::RateLimited {
        retry_after_secs: 3600,
    });
    let e = solver(&cf)
        .present(&request("cf.test", "v"))
        .await
        .expect_err("cannot wait an hour");
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.retryable);
    assert_eq!(e.retry_after_ms, Some(3_600_000));
    assert_eq!(cf.requests().len(), 1, "no retry was attempted");
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retried() {
    let cf = stand_in();
    cf.inject(Failure::ServerError { status: 500 });
    cf.inject(Failure::BadGatewayHtml);
    cf.inject(Failure::Hangup);
    cf.inject(Failure::ServerError { status: 503 });
    let s = solver(&cf);
    let req = request("cf.test", "v");
    let p = s.present(&req).await.expect("present after the failures");
    let statuses: Vec<u16> = cf.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..5], [500, 502, 0, 503, 200], "{statuses:?}");
    assert_eq!(cf.records().len(), 1);
    // Back-off: 250 ms, then 500 ms, then 1 s.
    let log = cf.requests();
    assert!(log[1].at.duration_since(log[0].at) >= Duration::from_millis(240));
    assert!(log[2].at.duration_since(log[1].at) >= Duration::from_millis(490));

    cf.inject(Failure::ServerError { status: 500 });
    s.cleanup(&req, &p).await.expect("cleanup after a 500");
    assert!(cf.records().is_empty());
}

#[tokio::test]
async fn server_errors_until_the_deadline_end_as_a_transient_error() {
    let cf = stand_in();
    for _ in 0..100 {
        cf.inject(Failure::ServerError { status: 503 });
    }
    let e = solver(&cf)
        .present(&request_due_in("cf.test", "v", Duration::from_secs(3)))
        .await
        .expect_err("never succeeds");
    assert_eq!(e.kind, ErrorKind::Transient, "{}", e.message);
    assert!(e.retryable);
    assert!(e.message.contains("HTTP 503"), "{}", e.message);
    assert!(
        e.message.contains("before the call's deadline"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn a_zone_that_does_not_exist_is_not_found() {
    let cf =
        CloudflareStandIn::start(CloudflareOpts::default().zones(&["cf.test", "sub.nope.test"]))
            .expect("start");
    let e = solver(&cf)
        .present(&request("nope.test", "v"))
        .await
        .expect_err("no such zone");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(
        e.message,
        "no Cloudflare zone named nope.test is visible to this token (is the zone on this \
         Cloudflare account, and among the token's Zone Resources? Or set zone_id)"
    );
    assert!(cf.records().is_empty());
}

#[tokio::test]
async fn two_active_zones_of_one_name_need_zone_id() {
    let mut twin = ZoneSpec::active("cf.test");
    twin.account = "another account".into();
    let cf = CloudflareStandIn::start(CloudflareOpts::default().zone(twin)).expect("start");
    let e = solver(&cf)
        .present(&request("cf.test", "v"))
        .await
        .expect_err("ambiguous");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("set zone_id"), "{}", e.message);
}

#[tokio::test]
async fn zone_id_skips_the_lookup() {
    let cf = stand_in();
    let mut c = config(&cf, cf.token());
    c.zone_id = cf.zone_id("cf.test");
    let s = solver_with_config(c);
    let req = request("cf.test", "v");
    let p = s.present(&req).await.expect("present");
    s.cleanup(&req, &p).await.expect("cleanup");
    assert!(
        cf.requests().iter().all(|r| r.path != "/zones"),
        "{:#?}",
        calls(&cf.requests())
    );
}
