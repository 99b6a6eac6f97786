//! The Route53 solver through the `Solver` trait, against moto's server
//! (through the harness's fault-injecting proxy).

mod common;

use std::time::{Duration, Instant};

use certsmith_plugin_api::{ErrorKind, Presented, Solver};
use certsmith_route53::Route53Config;
use certsmith_tests::moto::{Fault, Moto, MotoOpts, Route53Action};
use common::{
    ACCESS_KEY_ID, SECRET_ACCESS_KEY, config, fqdn, request, request_in, solver, sorted, start_moto,
};

#[tokio::test]
async fn finds_the_zone_by_name_and_cleans_up() {
    let moto = start_moto();
    // A zone whose name sorts right after ours, and a parent zone: neither
    // may be picked.
    let zone_id = moto.create_zone("lookup.test", false).expect("zone");
    let after = moto.create_zone("a.lookup.test", false).expect("zone");
    let parent = moto.create_zone("test", false).expect("zone");
    let s = solver(config(&moto));
    let req = request("lookup.test", "value-1");

    let p = s.present(&req).await.expect("present");
    assert_eq!(p.handle["hosted_zone_id"], zone_id.as_str());
    assert_eq!(p.handle["fqdn"], "_acme-challenge.lookup.test");
    assert_eq!(p.ttl, None, "the requested TTL was used");
    let set = moto
        .txt_set(&zone_id, &fqdn("lookup.test"))
        .expect("read")
        .expect("the record exists");
    assert_eq!(
        set.raw_values,
        ["\"value-1\""],
        "quoted as Route53 stores TXT"
    );
    assert_eq!(set.ttl, Some(60));
    for other in [&after, &parent] {
        assert!(
            moto.txt_set(other, &fqdn("lookup.test"))
                .expect("read")
                .is_none()
        );
    }
    assert_eq!(moto.requests(Route53Action::ListHostedZonesByName), 1);
    assert!(
        moto.requests(Route53Action::GetChange) >= 1,
        "waited for INSYNC"
    );

    // Idempotent: a second present changes nothing.
    let changes = moto.requests(Route53Action::ChangeResourceRecordSets);
    s.present(&req).await.expect("present again");
    assert_eq!(
        moto.txt_values(&zone_id, &fqdn("lookup.test"))
            .expect("read"),
        ["value-1"]
    );
    assert_eq!(
        moto.requests(Route53Action::ChangeResourceRecordSets),
        changes,
        "no change for a value already there"
    );
    assert_eq!(
        moto.requests(Route53Action::ListHostedZonesByName),
        1,
        "the zone id is cached"
    );

    s.cleanup(&req, &p).await.expect("cleanup");
    assert!(
        moto.txt_set(&zone_id, &fqdn("lookup.test"))
            .expect("read")
            .is_none(),
        "the last value deletes the set"
    );
    // Idempotent, also without the handle (as after a crash before
    // present returned).
    s.cleanup(&req, &p).await.expect("cleanup again");
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup without handle");
}

#[tokio::test]
async fn a_missing_zone_is_not_found() {
    let moto = start_moto();
    moto.create_zone("present.test", false).expect("zone");
    let s = solver(config(&moto));
    let e = s
        .present(&request("absent.test", "v"))
        .await
        .expect_err("no such zone");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("absent.test"), "{e}");
    // Cleaning up in a zone that does not exist is nothing to do.
    s.cleanup(&request("absent.test", "v"), &Presented::default())
        .await
        .expect("cleanup");

    // An explicit zone id that does not exist.
    let s = solver(Route53Config {
        hosted_zone_id: Some("ZDOESNOTEXIST1".into()),
        ..config(&moto)
    });
    let e = s
        .present(&request("present.test", "v"))
        .await
        .expect_err("no such zone id");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("hosted_zone_id"), "{e}");
}

/// `example.com` and `*.example.com` put two values at one name at once;
/// many more at once must not lose any either (the per-name lock).
#[tokio::test]
async fn concurrent_presents_at_one_name_keep_every_value() {
    let moto = start_moto();
    let zone_id = moto.create_zone("multi.test", false).expect("zone");
    let s = solver(config(&moto));
    let apex = request("multi.test", "apex-value");
    let mut wildcard = request("multi.test", "wildcard-value");
    wildcard.wildcard = true;

    let (pa, pw) = tokio::join!(s.present(&apex), s.present(&wildcard));
    let (pa, pw) = (pa.expect("present apex"), pw.expect("present wildcard"));
    assert_eq!(
        sorted(
            moto.txt_values(&zone_id, &fqdn("multi.test"))
                .expect("read")
        ),
        ["apex-value", "wildcard-value"]
    );

    // Each cleanup removes only its own value; the last deletes the set.
    s.cleanup(&apex, &pa).await.expect("cleanup apex");
    assert_eq!(
        moto.txt_values(&zone_id, &fqdn("multi.test"))
            .expect("read"),
        ["wildcard-value"]
    );
    s.cleanup(&apex, &pa).await.expect("cleanup apex again");
    assert_eq!(
        moto.txt_values(&zone_id, &fqdn("multi.test"))
            .expect("read"),
        ["wildcard-value"],
        "a repeated cleanup leaves the other value"
    );
    s.cleanup(&wildcard, &pw).await.expect("cleanup wildcard");
    assert!(
        moto.txt_set(&zone_id, &fqdn("multi.test"))
            .expect("read")
            .is_none()
    );

    // Eight at once, then all cleaned up at once.
    let reqs: Vec<_> = (0..8)
        .map(|i| request("multi.test", &format!("value-{i}")))
        .collect();
    let presented = futures_join_all(reqs.iter().map(|r| s.present(r))).await;
    let presented: Vec<Presented> = presented.into_iter().map(|p| p.expect("present")).collect();
    let want: Vec<String> = (0..8).map(|i| format!("value-{i}")).collect();
    assert_eq!(
        sorted(
            moto.txt_values(&zone_id, &fqdn("multi.test"))
                .expect("read")
        ),
        want
    );
    let cleaned = futures_join_all(reqs.iter().zip(&presented).map(|(r, p)| s.cleanup(r, p))).await;
    for c in cleaned {
        c.expect("cleanup");
    }
    assert!(
        moto.txt_set(&zone_id, &fqdn("multi.test"))
            .expect("read")
            .is_none()
    );
}

/// Runs futures concurrently on the current task (no extra dependency).
async fn futures_join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<Option<_>> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (h, out) in handles.iter_mut().zip(outputs.iter_mut()) {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *h = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[tokio::test]
async fn values_that_are_not_ours_are_kept() {
    let moto = start_moto();
    let zone_id = moto.create_zone("shared.test", false).expect("zone");
    moto.upsert_txt(&zone_id, &fqdn("shared.test"), 300, &["foreign value"])
        .expect("seed");
    let s = solver(Route53Config {
        ttl: Some(120),
        ..config(&moto)
    });
    let req = request("shared.test", "ours");
    let p = s.present(&req).await.expect("present");
    assert_eq!(p.ttl, Some(120), "the configured TTL is reported");
    let set = moto
        .txt_set(&zone_id, &fqdn("shared.test"))
        .expect("read")
        .expect("set");
    assert_eq!(sorted(set.values()), ["foreign value", "ours"]);
    assert_eq!(set.ttl, Some(120));

    s.cleanup(&req, &p).await.expect("cleanup");
    let set = moto
        .txt_set(&zone_id, &fqdn("shared.test"))
        .expect("read")
        .expect("the foreign value keeps the set");
    assert_eq!(set.values(), ["foreign value"]);
}

#[tokio::test]
async fn private_zone_chooses_between_a_public_and_a_private_zone() {
    let moto = start_moto();
    let public = moto.create_zone("split.test", false).expect("zone");
    let private = moto.create_zone("split.test", true).expect("zone");

    let e = solver(config(&moto))
        .present(&request("split.test", "v"))
        .await
        .expect_err("ambiguous");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(
        e.message.contains("private_zone") && e.message.contains(&public),
        "{e}"
    );

    for (want_private, id, other) in [(true, &private, &public), (false, &public, &private)] {
        let s = solver(Route53Config {
            private_zone: Some(want_private),
            ..config(&moto)
        });
        let req = request("split.test", &format!("private-{want_private}"));
        let p = s.present(&req).await.expect("present");
        assert_eq!(p.handle["hosted_zone_id"], id.as_str());
        assert_eq!(
            moto.txt_values(id, &fqdn("split.test")).expect("read"),
            [format!("private-{want_private}")]
        );
        assert!(
            moto.txt_values(other, &fqdn("split.test"))
                .expect("read")
                .is_empty()
        );
        s.cleanup(&req, &p).await.expect("cleanup");
        assert!(
            moto.txt_values(id, &fqdn("split.test"))
                .expect("read")
                .is_empty()
        );
    }

    // Only a public zone exists under another name: asking for a private
    // one is not_found and says what exists.
    moto.create_zone("onlypublic.test", false).expect("zone");
    let e = solver(Route53Config {
        private_zone: Some(true),
        ..config(&moto)
    })
    .present(&request("onlypublic.test", "v"))
    .await
    .expect_err("no private zone");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("public"), "{e}");
}

#[tokio::test]
async fn a_record_below_the_zone_apex() {
    let moto = start_moto();
    let zone_id = moto.create_zone("zone.test", false).expect("zone");
    let s = solver(Route53Config {
        hosted_zone_id: Some(format!("/hostedzone/{zone_id}")),
        wait_for_sync: Some(false),
        ..config(&moto)
    });
    let req = request_in(
        "zone.test",
        "www.zone.test",
        "deep",
        Duration::from_secs(60),
    );
    let p = s.present(&req).await.expect("present");
    assert_eq!(
        moto.txt_values(&zone_id, "_acme-challenge.www.zone.test")
            .expect("read"),
        ["deep"]
    );
    assert_eq!(
        moto.requests(Route53Action::ListHostedZonesByName),
        0,
        "hosted_zone_id skips the lookup"
    );
    assert_eq!(
        moto.requests(Route53Action::GetChange),
        0,
        "wait_for_sync=false"
    );
    s.cleanup(&req, &p).await.expect("cleanup");
    assert!(
        moto.txt_values(&zone_id, "_acme-challenge.www.zone.test")
            .expect("read")
            .is_empty()
    );
}

/// moto with IAM auth enforced rejects an access key it does not know.
#[tokio::test]
async fn credentials_moto_rejects_are_an_auth_error() {
    let moto = Moto::start_with(MotoOpts { enforce_auth: true }).unwrap_or_else(|e| panic!("{e}"));
    for hosted_zone_id in [None, Some("ZSOMEZONE1".to_owned())] {
        let s = solver(Route53Config {
            hosted_zone_id,
            ..config(&moto)
        });
        let e = s
            .present(&request("auth.test", "v"))
            .await
            .expect_err("rejected");
        eprintln!("{e}");
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(!e.retryable, "{e:?}");
        assert!(
            e.message.contains("AWS rejected the credentials")
                && e.message.contains("InvalidClientTokenId"),
            "{e}"
        );
        assert!(
            e.message.contains("route53:ChangeResourceRecordSets")
                && e.message.contains("route53:ListHostedZonesByName"),
            "{e}"
        );
        assert!(!e.message.contains(SECRET_ACCESS_KEY), "secret leaked: {e}");
    }
}

/// Route53's own 403 shapes, injected by the proxy.
#[tokio::test]
async fn route53_auth_errors_are_translated() {
    let moto = start_moto();
    let zone_id = moto.create_zone("auth.test", false).expect("zone");
    let s = solver(config(&moto));
    for (fault, code) in [
        (Fault::InvalidClientTokenId, "InvalidClientTokenId"),
        (Fault::SignatureDoesNotMatch, "SignatureDoesNotMatch"),
    ] {
        moto.fail_next_any(fault, 1);
        let e = s
            .present(&request("auth.test", "v"))
            .await
            .expect_err("rejected");
        eprintln!("{e}");
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(
            e.message.contains("AWS rejected the credentials") && e.message.contains(code),
            "{e}"
        );
        assert!(e.message.contains("route53:GetChange"), "{e}");
        assert!(!e.message.contains(SECRET_ACCESS_KEY), "secret leaked: {e}");
        assert!(
            e.message
                .contains("access_key_id/secret_access_key options"),
            "names where the credentials came from: {e}"
        );
    }
    moto.fail_next(
        Route53Action::ChangeResourceRecordSets,
        Fault::AccessDenied,
        1,
    );
    let e = s
        .present(&request("auth.test", "v"))
        .await
        .expect_err("denied");
    eprintln!("{e}");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(
        e.message.contains("AccessDenied")
            && e.message.contains("route53:ChangeResourceRecordSets"),
        "{e}"
    );
    assert_eq!(moto.faults_pending(), 0);
    assert!(
        moto.txt_values(&zone_id, &fqdn("auth.test"))
            .expect("read")
            .is_empty()
    );
    // The key id is no secret, and debugging output never shows the secret.
    let shown = format!("{s:?}");
    assert!(
        shown.contains(ACCESS_KEY_ID) && !shown.contains(SECRET_ACCESS_KEY),
        "{shown}"
    );
}

#[tokio::test]
async fn throttling_and_prior_request_not_complete_are_retried() {
    let moto = start_moto();
    let zone_id = moto.create_zone("throttle.test", false).expect("zone");
    let s = solver(config(&moto));
    let a = request("throttle.test", "a");
    let b = request("throttle.test", "b");

    moto.fail_next(
        Route53Action::ChangeResourceRecordSets,
        Fault::Throttling,
        2,
    );
    moto.fail_next(
        Route53Action::ChangeResourceRecordSets,
        Fault::PriorRequestNotComplete,
        1,
    );
    moto.fail_next(
        Route53Action::ListResourceRecordSets,
        Fault::ServiceUnavailable,
        1,
    );
    moto.fail_next(Route53Action::GetChange, Fault::Throttling, 1);
    let started = Instant::now();
    let (pa, pb) = tokio::join!(s.present(&a), s.present(&b));
    let (pa, pb) = (pa.expect("present a"), pb.expect("present b"));
    eprintln!("two presents through 5 faults took {:?}", started.elapsed());
    assert_eq!(moto.faults_served(), 5);
    assert_eq!(moto.faults_pending(), 0);
    assert_eq!(
        sorted(
            moto.txt_values(&zone_id, &fqdn("throttle.test"))
                .expect("read")
        ),
        ["a", "b"]
    );

    moto.fail_next(
        Route53Action::ChangeResourceRecordSets,
        Fault::Throttling,
        1,
    );
    s.cleanup(&a, &pa).await.expect("cleanup a");
    moto.fail_next(
        Route53Action::ChangeResourceRecordSets,
        Fault::PriorRequestNotComplete,
        1,
    );
    s.cleanup(&b, &pb).await.expect("cleanup b");
    assert_eq!(moto.faults_served(), 7);
    assert!(
        moto.txt_set(&zone_id, &fqdn("throttle.test"))
            .expect("read")
            .is_none()
    );
}

/// A DELETE refused because the set changed since it was read is
/// recomputed from a fresh read.
#[tokio::test]
async fn a_change_batch_race_is_recomputed() {
    let moto = start_moto();
    let zone_id = moto.create_zone("race.test", false).expect("zone");
    let s = solver(config(&moto));
    let req = request("race.test", "v");
    let p = s.present(&req).await.expect("present");
    let reads = moto.requests(Route53Action::ListResourceRecordSets);
    moto.fail_next(
        Route53Action::ChangeResourceRecordSets,
        Fault::InvalidChangeBatchRace,
        1,
    );
    s.cleanup(&req, &p).await.expect("cleanup");
    assert_eq!(moto.faults_served(), 1);
    assert_eq!(
        moto.requests(Route53Action::ListResourceRecordSets),
        reads + 2,
        "read again after the race"
    );
    assert!(
        moto.txt_set(&zone_id, &fqdn("race.test"))
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
async fn throttling_until_the_deadline_is_rate_limited() {
    let moto = start_moto();
    moto.create_zone("slow.test", false).expect("zone");
    let s = solver(config(&moto));
    moto.fail_next(
        Route53Action::ChangeResourceRecordSets,
        Fault::Throttling,
        1000,
    );
    let timeout = Duration::from_secs(4);
    let req = request_in("slow.test", "slow.test", "v", timeout);
    let started = Instant::now();
    let e = s.present(&req).await.expect_err("throttled throughout");
    let took = started.elapsed();
    eprintln!("after {took:?}: {e}");
    assert_eq!(e.kind, ErrorKind::RateLimited, "{e}");
    assert!(e.retryable);
    assert!(e.message.contains("Throttling"), "{e}");
    assert!(
        e.message
            .contains("Route53 kept throttling until the call's deadline"),
        "says why it stopped: {e}"
    );
    assert!(took < timeout, "gave up before the deadline ({took:?})");
    assert!(
        moto.faults_served() >= 3,
        "retried several times: {}",
        moto.faults_served()
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_transient() {
    let port = certsmith_tests::free_port();
    let s = solver(Route53Config {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        hosted_zone_id: Some("ZANY".into()),
        access_key_id: Some(ACCESS_KEY_ID.into()),
        secret_access_key: Some(SECRET_ACCESS_KEY.into()),
        ..Route53Config::default()
    });
    let req = request_in("down.test", "down.test", "v", Duration::from_secs(3));
    let e = s.present(&req).await.expect_err("nothing listens");
    eprintln!("{e}");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.message.contains("could not reach"), "{e}");
    assert!(
        e.message.contains("retried until the call's deadline"),
        "{e}"
    );
}
