//! The rfc2136 solver against a real BIND9 (`named`, Debian package `bind9`)
//! started by the test harness. These tests fail, never skip, when `named`
//! is missing: the error says how to install it.

use std::error::Error;
use std::time::{SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, DnsTarget, ErrorKind, PluginError, Presented, Solver,
};
use certsmith_rfc2136::{Rfc2136, Rfc2136Config};
use certsmith_tests::bind::TSIG_ALGORITHMS;
use certsmith_tests::{Bind, ZoneSpec};

type TestResult = Result<(), Box<dyn Error>>;

const ZONE: &str = "example.test";
const NAME: &str = "_acme-challenge.example.test";

fn zone() -> ZoneSpec {
    ZoneSpec::new(ZONE).record("www IN A 127.0.0.1")
}

fn config(bind: &Bind) -> Rfc2136Config {
    Rfc2136Config {
        server: Some(bind.addr().to_string()),
        tsig_key_name: bind.tsig_key_name().to_owned(),
        tsig_algorithm: Some(bind.tsig_algorithm().to_owned()),
        tsig_secret: bind.tsig_secret_b64().to_owned().into(),
        ttl: Some(60),
        timeout_s: Some(5),
    }
}

fn request(zone: &str, fqdn: &str, value: &str) -> ChallengeRequest {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let name = fqdn
        .strip_suffix(zone)
        .map(|n| n.trim_end_matches('.'))
        .filter(|n| !n.is_empty())
        .unwrap_or("@");
    ChallengeRequest::new(
        ChallengeType::Dns01,
        zone.to_owned(),
        "token".to_owned(),
        "token.thumbprint".to_owned(),
        now_ms + 60_000,
    )
    .with_dns(Some(
        DnsTarget::new(
            zone.to_owned(),
            name.to_owned(),
            fqdn.to_owned(),
            value.to_owned(),
            60,
        )
        .with_primary_ns(Some(format!("ns1.{zone}"))),
    ))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A valid base64 secret that is not `bind`'s.
fn other_secret(bind: &Bind) -> String {
    let other = "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC1vdGhlci0=".to_owned();
    assert_ne!(other, bind.tsig_secret_b64());
    other
}

fn assert_no_secret(e: &PluginError, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !e.message.contains(s),
            "the error shows a secret: {}",
            e.message
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn present_appends_and_cleanup_deletes_exactly_one_value() -> TestResult {
    let bind = Bind::start(&[zone()])?;
    let solver = Rfc2136::new(config(&bind))?;
    let a = request(ZONE, NAME, "value-a");
    let b = request(ZONE, NAME, "value-b");

    let presented = solver.present(&a).await?;
    assert_eq!(bind.query_txt(NAME)?, vec!["value-a"]);
    assert_eq!(presented.ttl, None, "the requested TTL was used");

    // A second value at the same name (example.test + *.example.test) is
    // added beside the first, and presenting again changes nothing.
    solver.present(&b).await?;
    solver.present(&a).await?;
    assert_eq!(sorted(bind.query_txt(NAME)?), vec!["value-a", "value-b"]);
    let answer = bind.query(NAME, certsmith_tests::dns::TYPE_TXT)?;
    assert!(answer.answers.iter().all(|r| r.ttl == 60), "{answer:?}");

    solver.cleanup(&a, &presented).await?;
    assert_eq!(bind.query_txt(NAME)?, vec!["value-b"]);
    // Cleaning up what is gone succeeds and leaves the other value alone.
    solver.cleanup(&a, &presented).await?;
    assert_eq!(bind.query_txt(NAME)?, vec!["value-b"]);
    solver.cleanup(&b, &Presented::default()).await?;
    assert!(bind.query_txt(NAME)?.is_empty());
    // The www record was never touched.
    assert_eq!(
        certsmith_tests::dns::query_a(bind.addr(), "www.example.test")?,
        vec![std::net::Ipv4Addr::LOCALHOST]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_presents_all_land() -> TestResult {
    let bind = Bind::start(&[zone()])?;
    let solver = std::sync::Arc::new(Rfc2136::new(config(&bind))?);
    let values: Vec<String> = (0..8).map(|i| format!("concurrent-{i}")).collect();
    let mut tasks = Vec::new();
    for v in &values {
        let solver = solver.clone();
        let req = request(ZONE, NAME, v);
        tasks.push(tokio::spawn(async move { solver.present(&req).await }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(sorted(bind.query_txt(NAME)?), sorted(values.clone()));
    let mut tasks = Vec::new();
    for v in &values {
        let solver = solver.clone();
        let req = request(ZONE, NAME, v);
        tasks.push(tokio::spawn(async move {
            solver.cleanup(&req, &Presented::default()).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert!(bind.query_txt(NAME)?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_at_the_apex_and_in_a_second_zone() -> TestResult {
    let bind = Bind::start(&[zone(), ZoneSpec::new("validation.test")])?;
    let solver = Rfc2136::new(config(&bind))?;
    let apex = request("validation.test", "validation.test", "at-apex");
    let deep = request(
        "validation.test",
        "_acme-challenge.app.validation.test",
        "deep",
    );
    solver.present(&apex).await?;
    solver.present(&deep).await?;
    assert_eq!(bind.query_txt("validation.test")?, vec!["at-apex"]);
    assert_eq!(
        bind.query_txt("_acme-challenge.app.validation.test")?,
        vec!["deep"]
    );
    solver.cleanup(&apex, &Presented::default()).await?;
    solver.cleanup(&deep, &Presented::default()).await?;
    assert!(bind.query_txt("validation.test")?.is_empty());
    assert!(
        bind.query_txt("_acme-challenge.app.validation.test")?
            .is_empty()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_an_auth_error_that_names_the_server_and_hides_the_secret() -> TestResult {
    let bind = Bind::start(&[zone()])?;
    let wrong = other_secret(&bind);
    let mut cfg = config(&bind);
    cfg.tsig_secret = wrong.clone().into();
    let solver = Rfc2136::new(cfg)?;
    let Err(e) = solver.present(&request(ZONE, NAME, "v")).await else {
        return Err("present with a wrong secret succeeded".into());
    };
    eprintln!("as the user sees it: {e}");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(!e.retryable);
    let expected = format!(
        "TSIG key rejected by {}: check key name, secret and algorithm (BADSIG)",
        bind.addr()
    );
    assert!(e.message.starts_with(&expected), "{}", e.message);
    assert!(!e.message.contains("truncated"), "{}", e.message);
    assert_no_secret(&e, &[&wrong, bind.tsig_secret_b64()]);
    assert!(bind.query_txt(NAME)?.is_empty(), "nothing was added");

    // cleanup reports the same, rather than pretending success.
    let Err(e) = solver
        .cleanup(&request(ZONE, NAME, "v"), &Presented::default())
        .await
    else {
        return Err("cleanup with a wrong secret succeeded".into());
    };
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert_no_secret(&e, &[&wrong, bind.tsig_secret_b64()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_name_is_an_auth_error() -> TestResult {
    let bind = Bind::start(&[zone()])?;
    let mut cfg = config(&bind);
    cfg.tsig_key_name = "no-such-key".into();
    let solver = Rfc2136::new(cfg)?;
    let Err(e) = solver.present(&request(ZONE, NAME, "v")).await else {
        return Err("present with an unknown key name succeeded".into());
    };
    eprintln!("as the user sees it: {e}");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(
        e.message.contains(&format!(
            "TSIG key rejected by {}: check key name, secret and algorithm (BADKEY)",
            bind.addr()
        )),
        "{}",
        e.message
    );
    assert_no_secret(&e, &[bind.tsig_secret_b64()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_algorithm_is_an_auth_error() -> TestResult {
    let bind = Bind::start(&[zone()])?;
    let mut cfg = config(&bind);
    cfg.tsig_algorithm = Some("hmac-sha512".into());
    let solver = Rfc2136::new(cfg)?;
    let Err(e) = solver.present(&request(ZONE, NAME, "v")).await else {
        return Err("present with the wrong algorithm succeeded".into());
    };
    eprintln!("as the user sees it: {e}");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("TSIG key rejected by"), "{}", e.message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_the_server_does_not_serve_is_a_config_error() -> TestResult {
    let bind = Bind::start(&[zone()])?;
    let solver = Rfc2136::new(config(&bind))?;
    let Err(e) = solver
        .present(&request("other.test", "_acme-challenge.other.test", "v"))
        .await
    else {
        return Err("an update of an unserved zone succeeded".into());
    };
    eprintln!("as the user sees it: {e}");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(
        e.message
            .starts_with(&format!("zone other.test is not served by {}", bind.addr())),
        "{}",
        e.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_bind_offers() -> TestResult {
    for algorithm in TSIG_ALGORITHMS {
        let bind = Bind::start_with_algorithm(&[zone()], algorithm)?;
        match Rfc2136::new(config(&bind)) {
            Ok(solver) => {
                let req = request(ZONE, NAME, algorithm);
                solver.present(&req).await?;
                assert_eq!(bind.query_txt(NAME)?, vec![algorithm], "{algorithm}");
                solver.cleanup(&req, &Presented::default()).await?;
                assert!(bind.query_txt(NAME)?.is_empty(), "{algorithm}");
                assert!(
                    ["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm),
                    "{algorithm} unexpectedly works: update plugin.toml and the docs"
                );
            }
            Err(e) => {
                // hickory-dns 0.26 signs with SHA-2 256/384/512 only.
                assert!(
                    ["hmac-sha1", "hmac-sha224"].contains(&algorithm),
                    "{algorithm}: {e}"
                );
                assert_eq!(e.kind, ErrorKind::Config);
                assert!(e.message.contains("hickory"), "{}", e.message);
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_defaults_to_the_primary_ns_and_host_names_resolve() -> TestResult {
    let bind = Bind::start(&[zone()])?;
    // No server: the SOA MNAME from the request is used. (A real MNAME has
    // no port; here it carries BIND's, which the parser accepts.)
    let mut cfg = config(&bind);
    cfg.server = None;
    let solver = Rfc2136::new(cfg)?;
    let mut req = request(ZONE, NAME, "via-primary-ns");
    if let Some(dns) = req.dns.as_mut() {
        dns.primary_ns = Some(format!("127.0.0.1:{}", bind.addr().port()));
    }
    solver.present(&req).await?;
    assert_eq!(bind.query_txt(NAME)?, vec!["via-primary-ns"]);
    solver.cleanup(&req, &Presented::default()).await?;

    // A host name: `localhost` may resolve to ::1 first, where nothing
    // listens; the next address is tried.
    let mut cfg = config(&bind);
    cfg.server = Some(format!("localhost:{}", bind.addr().port()));
    let solver = Rfc2136::new(cfg)?;
    let req = request(ZONE, NAME, "via-host-name");
    solver.present(&req).await?;
    assert_eq!(bind.query_txt(NAME)?, vec!["via-host-name"]);
    solver.cleanup(&req, &Presented::default()).await?;

    // Neither: a config error that says what to set.
    let mut cfg = config(&bind);
    cfg.server = None;
    let solver = Rfc2136::new(cfg)?;
    let mut req = request(ZONE, NAME, "nowhere");
    if let Some(dns) = req.dns.as_mut() {
        dns.primary_ns = None;
    }
    let Err(e) = solver.present(&req).await else {
        return Err("present with no server succeeded".into());
    };
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("--solver-opt server="), "{}", e.message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_gone_is_a_transient_error() -> TestResult {
    let mut bind = Bind::start(&[zone()])?;
    let cfg = config(&bind);
    bind.kill();
    let solver = Rfc2136::new(cfg)?;
    let Err(e) = solver.present(&request(ZONE, NAME, "v")).await else {
        return Err("present to a dead server succeeded".into());
    };
    eprintln!("as the user sees it: {e}");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.retryable);
    assert!(
        e.message.contains(&bind.addr().to_string()),
        "{}",
        e.message
    );
    Ok(())
}
