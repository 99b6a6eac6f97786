use super::kind::*;
use super::rate::*;
use super::scope::*;
use super::*;

#[test]
fn retry_after_forms() {
    let t = parse_retry_after("120").expect("seconds");
    assert!(t > SystemTime::now() + Duration::from_secs(100));
    let t = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
    assert_eq!(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_secs(),
        1_445_412_480
    );
    assert!(parse_retry_after("soon").is_none());
}

/// A `Shared` for a test server at `base`, with short waits.
fn test_shared(base: &str, max_attempts: u32) -> Arc<Shared> {
    let mut shared = Shared::new(
        &format!("{base}/dir"),
        Duration::from_millis(300),
        RateCap::None,
    );
    shared.policy.max_attempts = max_attempts;
    shared.policy.backoff_initial = Duration::from_millis(1);
    shared.cache(
        &format!("{base}/dir"),
        Bytes::from(format!(
            r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/acct","newOrder":"{base}/order","revokeCert":"{base}/revoke"}}"#
        )),
    );
    Arc::new(shared)
}

fn jws(payload: &str) -> Vec<u8> {
    format!(r#"{{"protected":"e30","payload":"{payload}","signature":"c2ln"}}"#).into_bytes()
}

/// A server that answers each connection with the next of `answers`
/// (raw HTTP/1.1 after the request is read; `None`: close without an
/// answer), then stops; returns how many connections it took.
async fn serve(answers: Vec<Option<&'static str>>) -> (String, tokio::task::JoinHandle<usize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let mut n = 0;
        for answer in answers {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            n += 1;
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf).await;
            if let Some(a) = answer {
                let _ = s.write_all(a.as_bytes()).await;
            }
        }
        n
    });
    (format!("http://{addr}"), server)
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const INTERNAL: &str = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/problem+json\r\ncontent-length: 58\r\nconnection: close\r\n\r\n{\"type\":\"urn:ietf:params:acme:error:serverInternal\",\"x\":1}";

/// A connection that never answers is abandoned after the attempt
/// timeout and the request is sent again on a new one.
#[tokio::test]
async fn a_request_that_gets_no_answer_is_retried_on_a_new_connection() {
    use ia::HttpClient as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        // The first connection reads the request and stays silent.
        let (mut silent, _) = listener.accept().await.expect("accept 1");
        let mut buf = [0u8; 4096];
        let _ = silent.read(&mut buf).await;
        // The second one answers.
        let (mut s, _) = listener.accept().await.expect("accept 2");
        let _ = s.read(&mut buf).await;
        s.write_all(OK.as_bytes()).await.expect("write");
        drop(silent);
    });
    let shared = test_shared(&format!("http://{addr}"), 3);
    let shim = HttpShim {
        http: reqwest::Client::builder().build().expect("client"),
        shared: shared.clone(),
    };
    // A POST-as-GET: reads, so it is sent again.
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{addr}/acme/order/1"))
        .body(ia::BodyWrapper::from(jws("")))
        .expect("request");
    let rsp = shim
        .request(req)
        .await
        .expect("answered on the second attempt");
    assert_eq!(rsp.parts.status, http::StatusCode::OK);
    assert_eq!(shared.stats().requests, 2);
    assert_eq!(shared.stats().retries, 1);
    server.await.expect("server");
}

/// 503 with Retry-After is waited out and sent again; a reset
/// connection too; both count as retries.
#[tokio::test]
async fn reads_are_retried_on_503_and_resets() {
    let (base, server) = serve(vec![Some(UNAVAILABLE), None, Some(OK)]).await;
    let shared = test_shared(&base, 6);
    let http = reqwest::Client::new();
    let a = send(
        &http,
        &shared,
        http::Method::HEAD,
        &format!("{base}/nonce"),
        http::HeaderMap::new(),
        Bytes::new(),
    )
    .await
    .expect("answered on the third attempt");
    assert_eq!(a.status, http::StatusCode::OK);
    assert_eq!(server.await.expect("server"), 3);
    assert_eq!(shared.stats().retries, 2);
}

/// A 500 to a request that changes state is not sent again: it may
/// have taken effect. The error says so, and `is_unsettled` sees it.
#[tokio::test]
async fn a_change_answered_500_is_unsettled_and_not_resent() {
    let (base, server) = serve(vec![Some(INTERNAL), Some(OK)]).await;
    let shared = test_shared(&base, 6);
    let http = reqwest::Client::new();
    let e = send(
        &http,
        &shared,
        http::Method::POST,
        &format!("{base}/finalize/1"),
        http::HeaderMap::new(),
        Bytes::from(jws("eyJjc3IiOiJ4In0")),
    )
    .await
    .err()
    .expect("no retry");
    assert!(e.unsettled(), "{e}");
    assert!(
        e.to_string().contains("HTTP 500") && e.to_string().contains("may have taken effect"),
        "{e}"
    );
    assert!(is_unsettled(&ia::Error::Other(Box::new(e))));
    assert_eq!(shared.stats().requests, 1);
    server.abort();
}

/// A 503 to a request that changes state was refused, not processed:
/// it is sent again. When every attempt gets 503, the error names the
/// status and says the CA is unavailable.
#[tokio::test]
async fn a_change_answered_503_is_resent_and_gives_up_naming_the_status() {
    let (base, server) = serve(vec![Some(UNAVAILABLE), Some(UNAVAILABLE)]).await;
    let shared = test_shared(&base, 2);
    let http = reqwest::Client::new();
    let e = send(
        &http,
        &shared,
        http::Method::POST,
        &format!("{base}/order"),
        http::HeaderMap::new(),
        Bytes::from(jws("eyJ4IjoxfQ")),
    )
    .await
    .err()
    .expect("gives up");
    assert!(!e.unsettled());
    assert!(
        e.to_string()
            .starts_with("the CA is unavailable (HTTP 503, retry after "),
        "{e}"
    );
    assert_eq!(server.await.expect("server"), 2);
}

#[test]
fn requests_are_classified_by_url_and_payload() {
    let shared = test_shared("https://ca", 6);
    let post = http::Method::POST;
    let c = |m: &http::Method, u: &str, b: &[u8]| shared.classify(m, u, b);
    assert_eq!(
        c(&http::Method::GET, "https://ca/dir", b""),
        Kind::Directory
    );
    assert_eq!(
        c(&http::Method::HEAD, "https://ca/nonce", b""),
        Kind::NewNonce
    );
    assert_eq!(c(&post, "https://ca/acct", &jws("e30")), Kind::NewAccount);
    assert_eq!(c(&post, "https://ca/order", &jws("e30")), Kind::NewOrder);
    assert_eq!(c(&post, "https://ca/revoke", &jws("e30")), Kind::Revoke);
    assert_eq!(c(&post, "https://ca/chal/1", &jws("e30")), Kind::Change);
    assert_eq!(c(&post, "https://ca/order/1", &jws("")), Kind::Fetch);
    assert_eq!(c(&post, "https://ca/cert/1", &jws("")), Kind::Fetch);
    assert!(Kind::Fetch.reads() && !Kind::Change.reads());
    assert!(Kind::NewAccount.resend_when_lost() && !Kind::NewOrder.resend_when_lost());
}

#[test]
fn token_bucket_allows_its_burst_then_spaces_requests() {
    let b = Bucket::new(RequestRate {
        per_second: 10.0,
        burst: 3,
    });
    let t0 = Instant::now();
    let waits: Vec<Duration> = (0..5).map(|_| b.reserve(t0)).collect();
    assert_eq!(waits[..3], [Duration::ZERO; 3]);
    assert_eq!(waits[3], Duration::from_millis(100));
    assert_eq!(waits[4], Duration::from_millis(200));
    // After a quiet second the burst is back.
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(b.reserve(t1), Duration::ZERO);
}

#[test]
fn default_caps_per_ca() {
    assert!(matches!(
        RateCap::for_directory("https://127.0.0.1:14000/dir"),
        RateCap::None
    ));
    assert!(matches!(
        RateCap::for_directory("https://localhost:14000/dir"),
        RateCap::None
    ));
    assert!(matches!(
        RateCap::for_directory("https://[::1]:14000/dir"),
        RateCap::None
    ));
    assert!(matches!(
        RateCap::for_directory(super::super::LETSENCRYPT),
        RateCap::PerKind(_)
    ));
    assert!(matches!(
        RateCap::for_directory(super::super::ZEROSSL),
        RateCap::One(_)
    ));
}

#[test]
fn backoff_grows_jittered_and_capped() {
    for attempt in 1..20 {
        let base = BACKOFF_INITIAL
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(BACKOFF_MAX);
        let d = backoff(BACKOFF_INITIAL, attempt);
        assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
    }
}

#[test]
fn an_order_budget_runs_out() {
    let scope = OrderScope::new();
    for _ in 0..ORDER_RETRIES {
        assert!(scope.take_retry(Duration::ZERO));
    }
    assert!(!scope.take_retry(Duration::ZERO));
    let scope = OrderScope::new();
    assert!(scope.take_retry(ORDER_RETRY_WAIT));
    assert!(!scope.take_retry(Duration::from_secs(1)));
}

/// A connection failure keeps its cause in the error's sources, and the
/// message users see still names it.
#[tokio::test]
async fn a_nonce_request_that_cannot_connect_keeps_its_cause() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut client = AcmeClient::new("https://localhost:14000/dir", None).expect("client");
    client.shared = test_shared("https://localhost:14000", 2);
    let url = format!("http://127.0.0.1:{port}/nonce");
    let e = client.fresh_nonce(&url).await.expect_err("refused");
    assert_eq!(e.class(), crate::error::ErrorClass::Network);
    let mut source = std::error::Error::source(&e);
    let mut found = false;
    while let Some(s) = source {
        found |= s.downcast_ref::<reqwest::Error>().is_some();
        source = s.source();
    }
    assert!(found, "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot get a nonce at {url}: no answer after 2 attempt(s): "
        )),
        "{text}"
    );
}

/// The nonce of a certificate download, the last answer of an order,
/// answers the next `HEAD newNonce` without a request; once: the one after
/// goes to the CA. Other answers' nonces are not kept (instant-acme signs
/// the order's next request with them).
#[tokio::test]
async fn a_certificate_downloads_nonce_answers_the_next_new_nonce() {
    use ia::HttpClient as _;
    const CHAIN: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/pem-certificate-chain\r\nreplay-nonce: spare-1\r\ncontent-length: 4\r\nconnection: close\r\n\r\nPEM\n";
    const ORDER: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nreplay-nonce: used-by-the-order\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    const NONCE: &str = "HTTP/1.1 200 OK\r\nreplay-nonce: from-the-ca\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let (base, server) = serve(vec![Some(ORDER), Some(CHAIN), Some(NONCE)]).await;
    let shared = test_shared(&base, 1);
    let shim = HttpShim {
        http: reqwest::Client::new(),
        shared: shared.clone(),
    };
    let post_as_get = |path: &str| {
        http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{base}{path}"))
            .body(ia::BodyWrapper::from(jws("")))
            .expect("request")
    };
    let head_nonce = || {
        http::Request::builder()
            .method(http::Method::HEAD)
            .uri(format!("{base}/nonce"))
            .body(ia::BodyWrapper::default())
            .expect("request")
    };
    let nonce = |rsp: &ia::BytesResponse| {
        rsp.parts
            .headers
            .get("replay-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    shim.request(post_as_get("/order/1")).await.expect("order");
    shim.request(post_as_get("/cert/1")).await.expect("chain");
    let first = shim.request(head_nonce()).await.expect("spare");
    assert_eq!(first.parts.status, http::StatusCode::OK);
    assert_eq!(nonce(&first).as_deref(), Some("spare-1"));
    assert_eq!(
        shared.stats().requests,
        2,
        "the spare is not asked of the CA"
    );
    assert_eq!(shared.stats().nonces_reused, 1);
    let second = shim.request(head_nonce()).await.expect("from the CA");
    assert_eq!(
        nonce(&second).as_deref(),
        Some("from-the-ca"),
        "a spare is used once"
    );
    assert_eq!(shared.stats().requests, 3);
    assert_eq!(server.await.expect("server"), 3);
}

/// Spare nonces are used newest first, only while young, and only so
/// many are kept.
#[test]
fn spare_nonces_are_taken_newest_first_while_young() {
    use super::nonces::*;
    let start = Instant::now();
    let mut spare = SpareNonces::default();
    spare.keep("old".into(), start);
    spare.keep("new".into(), start + Duration::from_secs(10));
    assert_eq!(
        spare.take(start + Duration::from_secs(11)).as_deref(),
        Some("new")
    );
    assert_eq!(
        spare.take(start + SPARE_NONCE_AGE + Duration::from_secs(1)),
        None,
        "too old to be used"
    );
    for i in 0..=SPARE_NONCES {
        spare.keep(i.to_string(), start);
    }
    let mut taken = Vec::new();
    while let Some(n) = spare.take(start) {
        taken.push(n);
    }
    assert_eq!(
        taken.len(),
        SPARE_NONCES,
        "the oldest is dropped past the limit"
    );
    assert_eq!(taken.last().map(String::as_str), Some("1"));
}
