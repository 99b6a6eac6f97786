//! The challtestsrv solver through the `Solver` trait, against a real
//! `pebble-challtestsrv` (started on free loopback ports, killed on drop),
//! checked by asking its DNS server directly.
//!
//! A missing `/usr/bin/pebble-challtestsrv` fails these tests with the
//! install command (`apt-get install pebble`); they never skip.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_challtestsrv::{ChallTestSrv, ChallTestSrvConfig};
use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, DnsTarget, ErrorKind, PluginError, Presented, Solver,
};
use certsmith_tests::dns::query_txt;

/// A running pebble-challtestsrv, or a failure that says how to install it.
fn challtestsrv() -> certsmith_tests::ChallTestSrv {
    certsmith_tests::ChallTestSrv::start().unwrap_or_else(|e| panic!("{e}"))
}

/// The solver, called in this process. Its requests go through certsmith's
/// HTTP client (plugin ABI 1.3), as they do when certsmith loads the plugin.
fn solver(url: &str) -> ChallTestSrv {
    certsmith_tests::attach_plugin_host();
    ChallTestSrv::new(ChallTestSrvConfig {
        url: url.to_owned(),
    })
    .unwrap_or_else(|e| panic!("new({url}): {e}"))
}

fn deadline_in(d: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now + d.as_millis() as u64
}

/// A dns-01 request putting `value` at `fqdn`.
fn request(fqdn: &str, value: &str) -> ChallengeRequest {
    let identifier = fqdn
        .trim_start_matches("_acme-challenge.")
        .trim_end_matches('.')
        .to_owned();
    ChallengeRequest::new(
        ChallengeType::Dns01,
        identifier.clone(),
        format!("token-{value}"),
        format!("token-{value}.thumbprint"),
        deadline_in(Duration::from_secs(20)),
    )
    .with_dns(Some(DnsTarget::new(
        identifier,
        "_acme-challenge".to_owned(),
        fqdn.to_owned(),
        value.to_owned(),
        60,
    )))
}

/// The TXT values challtestsrv's DNS server serves at `name`, sorted.
fn served(cts: &certsmith_tests::ChallTestSrv, name: &str) -> Vec<String> {
    let mut v = query_txt(cts.dns_addr(), name).unwrap_or_else(|e| panic!("{e}"));
    v.sort();
    v
}

async fn present(s: &ChallTestSrv, req: &ChallengeRequest) -> Presented {
    s.present(req)
        .await
        .unwrap_or_else(|e| panic!("present {:?}: {e}", req.dns))
}

async fn cleanup(s: &ChallTestSrv, req: &ChallengeRequest) {
    s.cleanup(req, &Presented::default())
        .await
        .unwrap_or_else(|e| panic!("cleanup {:?}: {e}", req.dns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_values_at_one_name_coexist_and_cleanup_removes_only_its_own() {
    let cts = challtestsrv();
    let s = solver(&cts.mgmt_url());
    let name = "_acme-challenge.shared.example.test";
    // example.test and *.example.test: two values at one name, presented at once.
    let apex = request(name, "value-apex");
    let wildcard = request(name, "value-wildcard");
    let (a, b) = tokio::join!(s.present(&apex), s.present(&wildcard));
    let a = a.unwrap_or_else(|e| panic!("present apex: {e}"));
    b.unwrap_or_else(|e| panic!("present wildcard: {e}"));
    assert_eq!(served(&cts, name), ["value-apex", "value-wildcard"]);
    assert_eq!(
        a.handle,
        serde_json::json!({"host": format!("{name}."), "value": "value-apex"})
    );
    assert_eq!(
        a.ttl,
        Some(0),
        "challtestsrv serves TTL 0 whatever is asked"
    );

    cleanup(&s, &apex).await;
    assert_eq!(
        served(&cts, name),
        ["value-wildcard"],
        "only its own value goes"
    );

    // Missing is success, and leaves the other value alone.
    cleanup(&s, &apex).await;
    assert_eq!(served(&cts, name), ["value-wildcard"]);

    cleanup(&s, &wildcard).await;
    assert!(served(&cts, name).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn present_is_idempotent() {
    let cts = challtestsrv();
    let s = solver(&cts.mgmt_url());
    let name = "_acme-challenge.again.example.test";
    let req = request(name, "only-once");
    present(&s, &req).await;
    present(&s, &req).await;
    let (x, y) = tokio::join!(s.present(&req), s.present(&req));
    x.unwrap_or_else(|e| panic!("{e}"));
    y.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        served(&cts, name),
        ["only-once"],
        "challtestsrv appends duplicates; the plugin must not send them"
    );
    cleanup(&s, &req).await;
    assert!(served(&cts, name).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_what_they_know() {
    // Two configurations (two orders) on one challtestsrv must not clear
    // each other's values.
    let cts = challtestsrv();
    let first = solver(&cts.mgmt_url());
    let second = solver(&format!("{}/", cts.mgmt_url()));
    let name = "_acme-challenge.two.example.test";
    let a = request(name, "from-first");
    let b = request(name, "from-second");
    present(&first, &a).await;
    present(&second, &b).await;
    cleanup(&first, &a).await;
    assert_eq!(served(&cts, name), ["from-second"]);
    cleanup(&second, &b).await;
    assert!(served(&cts, name).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_case_insensitive_and_get_their_trailing_dot() {
    let cts = challtestsrv();
    let s = solver(&cts.mgmt_url());
    // challtestsrv matches names case-sensitively and needs the trailing
    // dot; the plugin normalizes both.
    let upper = request("_acme-challenge.MiXed.Example.TEST", "v1");
    let dotted = request("_acme-challenge.mixed.example.test.", "v2");
    present(&s, &upper).await;
    present(&s, &dotted).await;
    assert_eq!(
        served(&cts, "_acme-challenge.mixed.example.test"),
        ["v1", "v2"]
    );
    cleanup(&s, &upper).await;
    assert_eq!(served(&cts, "_acme-challenge.mixed.example.test"), ["v2"]);
    cleanup(&s, &dotted).await;
    assert!(served(&cts, "_acme-challenge.mixed.example.test").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_a_value_left_by_an_earlier_process() {
    // A crashed run left a value; the journal replays its cleanup in a new
    // process, which never presented it.
    let cts = challtestsrv();
    let name = "_acme-challenge.stale.example.test";
    cts.set_txt(name, "left-behind")
        .unwrap_or_else(|e| panic!("{e}"));
    let s = solver(&cts.mgmt_url());
    let mine = request(name, "current");
    present(&s, &mine).await;
    assert_eq!(served(&cts, name), ["current", "left-behind"]);

    cleanup(&s, &request(name, "left-behind")).await;
    assert_eq!(
        served(&cts, name),
        ["current"],
        "this process's value stays"
    );
    cleanup(&s, &mine).await;
    assert!(served(&cts, name).is_empty());
}

#[tokio::test]
async fn a_request_without_dns_target_is_a_config_error() {
    // No server needed: the request is refused before any HTTP.
    let s = solver("http://127.0.0.1:9");
    let mut req = request("_acme-challenge.nodns.example.test", "v");
    req.dns = None;
    let e = s.present(&req).await.expect_err("present without dns");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(!e.retryable);
    assert!(e.message.contains("nodns.example.test"), "{e}");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup of something never presented is success");

    let mut http = request("_acme-challenge.http.example.test", "v");
    http.challenge_type = ChallengeType::Http01;
    let e = s.present(&http).await.expect_err("http-01");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
}

#[tokio::test]
async fn a_bad_url_is_a_config_error() {
    for url in ["127.0.0.1:8055", "ftp://127.0.0.1:8055", "not a url"] {
        let e = ChallTestSrv::new(ChallTestSrvConfig { url: url.into() })
            .expect_err("bad url accepted");
        assert_eq!(e.kind, ErrorKind::Config, "{url}: {e}");
    }
}

/// A loopback port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
}

#[tokio::test]
async fn an_unreachable_url_is_a_transient_error_naming_it() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let s = solver(&url);
    let req = request("_acme-challenge.down.example.test", "v");
    let e: PluginError = s.present(&req).await.expect_err("nothing listens");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.retryable);
    assert!(e.message.contains(&url), "{e}");
    assert!(e.message.contains("Is pebble-challtestsrv running?"), "{e}");
    // Cleanup reaches for the server too (to clear the name) and says the same.
    let e = s
        .cleanup(&req, &Presented::default())
        .await
        .expect_err("nothing listens");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.message.contains(&url), "{e}");
}

#[tokio::test]
async fn a_passed_deadline_is_a_transient_error_without_a_request() {
    let s = solver(&format!("http://127.0.0.1:{}", closed_port()));
    let mut req = request("_acme-challenge.late.example.test", "v");
    req.deadline_unix_ms = deadline_in(Duration::ZERO).saturating_sub(1000);
    let e = s.present(&req).await.expect_err("deadline passed");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.message.contains("deadline"), "{e}");
}

/// A one-thread HTTP server answering every request with `status`; returns
/// its URL and a counter of requests served.
fn fixed_status_server(
    status: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let url = format!(
        "http://{}",
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let hits = std::sync::Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope"
            );
        }
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_map_to_error_kinds() {
    use std::sync::atomic::Ordering;
    let req = request("_acme-challenge.status.example.test", "v");

    let (url, hits) = fixed_status_server("503 Service Unavailable");
    let e = solver(&url).present(&req).await.expect_err("503");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.message.contains("503") && e.message.contains(&url), "{e}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "5xx is retried, 3 tries in all"
    );

    let (url, hits) = fixed_status_server("404 Not Found");
    let e = solver(&url).present(&req).await.expect_err("404");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("management API"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "404 is not retried");

    let (url, _) = fixed_status_server("400 Bad Request");
    let e = solver(&url).present(&req).await.expect_err("400");
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(
        e.message.contains("400") && e.message.contains("nope"),
        "{e}"
    );
}
