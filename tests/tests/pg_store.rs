//! The PostgreSQL store against a real PostgreSQL server (Debian
//! `postgresql`, started by the harness): the storage contract every
//! backend passes, leases with fencing across workers and expiry, private
//! keys sealed at rest, key rotation, schema migrations, and URLs whose
//! passwords never show.

use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use certsmith_core::store::conformance::{self, files, lineage, record};
use certsmith_core::store::pg::{PgStore, StoreKey};
use certsmith_core::store::{AccountKey, AccountSlot, PendingOrder, Storage, StoreError};
use certsmith_tests::postgres::Postgres;

fn server() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start().unwrap_or_else(|e| panic!("{e}")))
}

fn key(b: u8) -> StoreKey {
    StoreKey::from_bytes([b; 32])
}

/// A fresh database and a store on it.
fn fresh(db: &str) -> (String, PgStore) {
    let url = server().database(db).unwrap_or_else(|e| panic!("{e}"));
    let store = PgStore::open(&url, Some(key(1)), None).unwrap_or_else(|e| panic!("{e}"));
    (url, store)
}

#[test]
fn passes_the_storage_conformance_checks() {
    let (_, store) = fresh("conformance");
    conformance::cert_leases_fence_commits(&store);
    conformance::restore_keeps_versions(&store);
    conformance::commit_settles_its_pending_order(&store);
}

#[test]
fn an_expired_lease_cannot_publish_and_passes_to_another_worker() {
    let (url, a) = fresh("expiry");
    let b = PgStore::open(&url, Some(key(1)), None).expect("second worker");
    let ttl = Duration::from_millis(800);
    let first = a
        .cert_lease("x.example", ttl)
        .expect("claim")
        .expect("free");
    assert!(
        b.cert_lease("x.example", ttl).expect("claim").is_none(),
        "a live lease was taken"
    );
    std::thread::sleep(Duration::from_millis(1200));
    // Expired and not yet taken: still refused (the worker cannot know
    // whether another has begun).
    let late = a.commit_version_fenced(
        "x.example",
        &files("late"),
        &lineage(),
        record("01"),
        Some(first.token()),
        None,
    );
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    assert!(first.renew().is_err(), "an expired lease was renewed");
    let second = b
        .cert_lease("x.example", ttl)
        .expect("claim")
        .expect("expired lease is free");
    assert!(second.token() > first.token());
    let stale = a.commit_version_fenced(
        "x.example",
        &files("stale"),
        &lineage(),
        record("02"),
        Some(first.token()),
        None,
    );
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    b.commit_version_fenced(
        "x.example",
        &files("b"),
        &lineage(),
        record("03"),
        Some(second.token()),
        None,
    )
    .expect("the holder commits");
    // Renewal keeps a lease alive past its first time to live.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        second.renew().expect("renew");
    }
    assert!(
        a.cert_lease("x.example", ttl).expect("claim").is_none(),
        "a renewed lease was taken"
    );
    let v = b
        .read_version("x.example", None)
        .expect("read")
        .expect("current");
    assert_eq!((v.version, v.files.cert_pem.as_str()), (1, "CERT b\n"));
    drop(first);
    // The old holder's drop does not release the new holder's lease.
    assert!(a.cert_lease("x.example", ttl).expect("claim").is_none());
    drop(second);
    assert!(
        a.cert_lease("x.example", ttl).expect("claim").is_some(),
        "a dropped lease was not released"
    );
}

#[test]
fn concurrent_commits_get_distinct_versions_and_one_account_wins() {
    let (url, _) = fresh("concurrent");
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let s = PgStore::open(&url, Some(key(1)), None).expect("open");
                barrier.wait();
                let slot = s
                    .create_account(
                        &AccountKey {
                            ca_host: "ca.test".into(),
                            id: "acct".into(),
                        },
                        format!("{{\"n\":{i}}}").as_bytes(),
                    )
                    .expect("create");
                let saved = s
                    .commit_version(
                        "c.example",
                        &files(&i.to_string()),
                        &lineage(),
                        record("0a"),
                    )
                    .expect("commit");
                (matches!(slot, AccountSlot::Created(_)), saved.version)
            })
        })
        .collect();
    let results: Vec<(bool, u32)> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(results.iter().filter(|r| r.0).count(), 1, "{results:?}");
    let mut versions: Vec<u32> = results.iter().map(|r| r.1).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=n as u32).collect::<Vec<_>>());
    let s = PgStore::open(&url, Some(key(1)), None).expect("open");
    let l = s.load_lineage("c.example").expect("read").expect("lineage");
    assert_eq!(l.versions.len(), n);
}

#[test]
fn private_keys_are_sealed_and_need_the_store_key() {
    let (url, store) = fresh("sealed");
    let acct = AccountKey {
        ca_host: "ca.test".into(),
        id: "a1".into(),
    };
    store
        .create_account(&acct, br#"{"private_key":"ACCOUNT-SECRET"}"#)
        .expect("account");
    store
        .commit_version("k.example", &files("k"), &lineage(), record("01"))
        .expect("commit");
    let order = PendingOrder {
        server: "https://ca.test/dir".into(),
        order_url: "https://ca.test/order/1".into(),
        domains: vec!["k.example".into()],
        key_type: "ec-p256".into(),
        privkey_pem: "PENDING-SECRET".into(),
        csr_der_b64: String::new(),
        finalized_at: "2026-01-01T00:00:00Z".into(),
        pid: 0,
        pid_start: 0,
        boot_id: String::new(),
    };
    store
        .put_pending_order("k.example", &order)
        .expect("pending");
    // What the database holds: no key in the clear anywhere.
    let dump = server()
        .psql(
            "sealed",
            "SELECT encode(doc, 'escape') FROM certsmith_accounts UNION ALL \
             SELECT encode(privkey, 'escape') FROM certsmith_versions UNION ALL \
             SELECT encode(doc, 'escape') FROM certsmith_pending_orders",
        )
        .expect("psql");
    for secret in ["ACCOUNT-SECRET", "KEY k", "PENDING-SECRET"] {
        assert!(
            !dump.contains(secret),
            "{secret} is stored in the clear: {dump}"
        );
    }
    // The wrong key and no key are refused at open, naming what to do.
    let wrong = PgStore::open(&url, Some(key(2)), None).expect_err("wrong key");
    assert!(matches!(wrong, StoreError::WrongStoreKey { .. }), "{wrong}");
    assert!(wrong.to_string().contains("CERTSMITH_STORE_KEY"), "{wrong}");
    let none = PgStore::open(&url, None, None).expect_err("no key");
    assert!(
        none.to_string().contains("CERTSMITH_STORE_KEY_FILE"),
        "{none}"
    );

    // Rotation: everything opens with the new key and not the old.
    let rotated = store.rotate_key(&key(3)).expect("rotate");
    assert_eq!(
        (rotated.accounts, rotated.keys, rotated.pending_orders),
        (1, 1, 1)
    );
    let after = PgStore::open(&url, Some(key(3)), None).expect("new key");
    let v = after
        .read_version("k.example", None)
        .expect("read")
        .expect("current");
    assert_eq!(v.files.privkey_pem.expect("key").expose(), "KEY k\n");
    assert_eq!(
        after
            .pending_order("k.example")
            .expect("read")
            .expect("order")
            .privkey_pem,
        "PENDING-SECRET"
    );
    assert_eq!(
        after
            .load_account(&acct)
            .expect("read")
            .expect("account")
            .json,
        br#"{"private_key":"ACCOUNT-SECRET"}"#
    );
    assert!(matches!(
        PgStore::open(&url, Some(key(1)), None),
        Err(StoreError::WrongStoreKey { .. })
    ));
    // A process still holding the old key refuses to write.
    let refused = store.commit_version("k.example", &files("old-key"), &lineage(), record("02"));
    assert!(
        matches!(refused, Err(StoreError::WrongStoreKey { .. })),
        "{refused:?}"
    );
}

#[test]
fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let (url, store) = fresh("schema");
    assert_eq!(store.schema_version().expect("version"), 1);
    drop(store);
    let again = PgStore::open(&url, Some(key(1)), None).expect("reopen");
    assert_eq!(again.schema_version().expect("version"), 1);
    assert_eq!(
        server()
            .psql("schema", "SELECT count(*) FROM certsmith_schema")
            .expect("psql"),
        "1"
    );
    server()
        .psql(
            "schema",
            "INSERT INTO certsmith_schema (version) VALUES (99)",
        )
        .expect("psql");
    let newer = PgStore::open(&url, Some(key(1)), None).expect_err("newer schema");
    assert!(
        matches!(newer, StoreError::SchemaTooNew { found: 99, .. }),
        "{newer}"
    );
    assert!(newer.to_string().contains("upgrade certsmith"), "{newer}");
}

#[test]
fn passwords_never_show_in_locations_or_errors() {
    let (url, store) = fresh("redacted");
    let pw = server().password();
    assert!(url.contains(pw));
    assert!(!store.location().contains(pw), "{}", store.location());
    assert!(!format!("{store:?}").contains(pw));
    // A server that is not there: the error names the place, not the password.
    let dead = url.replace(
        &format!(
            ":{}/",
            url.rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .unwrap_or("0")
        ),
        ":1/",
    );
    let err = PgStore::open(&dead, Some(key(1)), None).expect_err("no server");
    let text = err.to_string();
    assert!(text.contains("connect to") && !text.contains(pw), "{text}");
    let bad = PgStore::open("mysql://x@y/z", Some(key(1)), None).expect_err("bad scheme");
    assert!(bad.to_string().contains("postgres://"), "{bad}");
}
