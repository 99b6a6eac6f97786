//! http-01 through the `Solver` trait, checked with real TCP connections.

mod common;

use std::sync::Arc;

use certsmith_plugin_api::{ChallengeType, ErrorKind, Presented, Solver};
use certsmith_standalone::{Standalone, StandaloneConfig};
use common::{free_port, http, is_open, request, solver};

const HTTP01: ChallengeType = ChallengeType::Http01;

#[tokio::test]
async fn serves_the_key_authorization_as_text_plain() {
    let (s, addr, _) = solver();
    let req = request(HTTP01, "example.test", "tok_-123ABC");
    s.present(&req).await.expect("present");

    let r = http(addr, "GET", "/.well-known/acme-challenge/tok_-123ABC").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, req.key_authorization);
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(
        r.header("Content-Length"),
        Some(req.key_authorization.len().to_string().as_str())
    );
    assert_eq!(r.header("Connection"), Some("close"));

    let r = http(addr, "HEAD", "/.well-known/acme-challenge/tok_-123ABC").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "", "HEAD answers headers only");
    assert_eq!(
        r.header("Content-Length"),
        Some(req.key_authorization.len().to_string().as_str())
    );

    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn unknown_tokens_and_other_paths_are_404() {
    let (s, addr, _) = solver();
    let req = request(HTTP01, "example.test", "known");
    s.present(&req).await.expect("present");

    for path in [
        "/.well-known/acme-challenge/unknown",
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/known/extra",
        "/known",
        "/",
    ] {
        let r = http(addr, "GET", path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("Content-Type"), Some("text/plain"), "{path}");
        assert!(!r.body.contains(&req.key_authorization), "{path}");
    }
    let r = http(addr, "POST", "/.well-known/acme-challenge/known").await;
    assert_eq!(r.status, 405);
    assert!(!r.body.contains(&req.key_authorization));

    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_challenges_share_one_listener_that_closes_after_the_last() {
    let (s, addr, _) = solver();
    let s = Arc::new(s);
    let reqs: Vec<_> = (0..50)
        .map(|i| {
            request(
                HTTP01,
                &format!("host{i}.example.test"),
                &format!("token{i}"),
            )
        })
        .collect();

    let mut tasks = Vec::new();
    for req in reqs.clone() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.present(&req).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("present");
    }

    let mut tasks = Vec::new();
    for req in reqs.clone() {
        tasks.push(tokio::spawn(async move {
            let r = http(
                addr,
                "GET",
                &format!("/.well-known/acme-challenge/{}", req.token),
            )
            .await;
            (r, req)
        }));
    }
    for t in tasks {
        let (r, req) = t.await.expect("join");
        assert_eq!(r.status, 200, "{}", req.token);
        assert_eq!(r.body, req.key_authorization);
    }

    // All but the last: the listener stays and still serves the last one.
    let mut rest = reqs;
    let last = rest.pop().expect("50 requests");
    let mut tasks = Vec::new();
    for req in rest {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.cleanup(&req, &Presented::default()).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("cleanup");
    }
    let r = http(addr, "GET", "/.well-known/acme-challenge/token0").await;
    assert_eq!(r.status, 404, "cleaned-up token is gone");
    let r = http(
        addr,
        "GET",
        &format!("/.well-known/acme-challenge/{}", last.token),
    )
    .await;
    assert_eq!(r.status, 200);

    s.cleanup(&last, &Presented::default())
        .await
        .expect("cleanup");
    assert!(
        !is_open(addr).await,
        "the port closes after the last cleanup"
    );
}

#[tokio::test]
async fn presenting_twice_counts_once() {
    let (s, addr, _) = solver();
    let req = request(HTTP01, "example.test", "twice");
    s.present(&req).await.expect("present");
    s.present(&req).await.expect("present again");
    let r = http(addr, "GET", "/.well-known/acme-challenge/twice").await;
    assert_eq!(r.status, 200);

    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
    assert!(!is_open(addr).await, "one cleanup undoes both presents");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("a second cleanup is fine");
}

#[tokio::test]
async fn cleanup_of_an_unknown_token_is_success_and_opens_nothing() {
    let (s, addr, _) = solver();
    let req = request(HTTP01, "example.test", "never-presented");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup of an unknown token");
    assert!(!is_open(addr).await);

    // ... and does not disturb a presented one.
    let other = request(HTTP01, "example.test", "presented");
    s.present(&other).await.expect("present");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
    let r = http(addr, "GET", "/.well-known/acme-challenge/presented").await;
    assert_eq!(r.status, 200);
    s.cleanup(&other, &Presented::default())
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn dropping_the_solver_closes_its_listeners() {
    let (s, addr, _) = solver();
    s.present(&request(HTTP01, "example.test", "orphan"))
        .await
        .expect("present");
    drop(s);
    // The accept loop is aborted on drop; its listener closes when the
    // runtime next drops the task.
    for _ in 0..100 {
        if !is_open(addr).await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{addr} still accepts connections after the solver was dropped");
}

#[tokio::test]
async fn the_listener_starts_again_after_closing() {
    let (s, addr, _) = solver();
    for round in 0..3 {
        let req = request(HTTP01, "example.test", &format!("round{round}"));
        s.present(&req)
            .await
            .expect("present (re-binding the port)");
        let r = http(
            addr,
            "GET",
            &format!("/.well-known/acme-challenge/round{round}"),
        )
        .await;
        assert_eq!(r.status, 200);
        s.cleanup(&req, &Presented::default())
            .await
            .expect("cleanup");
        assert!(!is_open(addr).await);
    }
}

#[tokio::test]
async fn an_address_in_use_is_a_config_error_naming_it_and_the_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let s = Standalone::new(StandaloneConfig {
        listen: vec![addr.to_string()],
        ..StandaloneConfig::default()
    })
    .expect("valid config");
    let req = request(HTTP01, "example.test", "tok");
    let e = s.present(&req).await.expect_err("port is taken");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains(&addr.to_string()), "{}", e.message);
    assert!(e.message.contains("--solver-opt listen="), "{}", e.message);
    // The fix is not the address that was passed, nor a made-up one.
    assert!(
        !e.message.contains(&format!("listen={addr}")),
        "{}",
        e.message
    );
    assert!(!e.message.contains("5002"), "{}", e.message);

    // Once the port is free, the same solver works.
    drop(taken);
    s.present(&req).await.expect("present");
    assert_eq!(
        http(addr, "GET", "/.well-known/acme-challenge/tok")
            .await
            .status,
        200
    );
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn the_dual_stack_wildcard_pair_binds() {
    // The shape of the default (`[::]:80`, `0.0.0.0:80`) on a free port: on
    // a dual-stack host the second bind fails with EADDRINUSE, which is fine.
    let port = free_port();
    let s = Standalone::new(StandaloneConfig {
        listen: vec![format!("[::]:{port}"), format!("0.0.0.0:{port}")],
        ..StandaloneConfig::default()
    })
    .expect("valid config");
    let req = request(HTTP01, "example.test", "dual");
    s.present(&req).await.expect("present on the wildcard pair");
    let r = http(
        ([127, 0, 0, 1], port).into(),
        "GET",
        "/.well-known/acme-challenge/dual",
    )
    .await;
    assert_eq!(r.status, 200);
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
}

#[test]
fn bad_addresses_fail_at_construction() {
    let e = Standalone::new(StandaloneConfig {
        listen: vec!["example.com:80".into()],
        ..StandaloneConfig::default()
    })
    .expect_err("not an IP address");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("example.com:80"), "{}", e.message);
}

#[tokio::test]
async fn dns01_is_refused() {
    let (s, _, _) = solver();
    let req = request(ChallengeType::Dns01, "example.test", "tok");
    let e = s.present(&req).await.expect_err("dns-01");
    assert_eq!(e.kind, ErrorKind::Config);
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup of dns-01 is a no-op");
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (s, addr, _) = solver();
    let req = request(HTTP01, "example.test", "tok");
    s.present(&req).await.expect("present");

    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let big = format!(
        "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nX-Padding: {}\r\n",
        "a".repeat(9 * 1024)
    );
    conn.write_all(big.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.expect("read");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    assert!(!out.contains(&req.key_authorization));

    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
}
