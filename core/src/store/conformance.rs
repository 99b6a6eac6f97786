//! Checks every [`Storage`] backend must pass, run against each backend
//! by its own tests (the filesystem one here, the PostgreSQL one against a
//! real server in the `tests` crate). Each function panics with what the
//! backend got wrong.
//!
//! Why this module exists: the agent relies on the contract of the trait
//! (atomic commits, fencing, leases that exclude each other), not on any
//! backend's details, so the same checks must hold for all of them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CertFiles, Lineage, PendingOrder, Storage, StoreError, VersionFiles, VersionRecord};
use crate::keys::PrivateKeyPem;

/// The files of a test version tagged `tag`.
pub fn files(tag: &str) -> CertFiles {
    CertFiles {
        cert_pem: format!("CERT {tag}\n"),
        chain_pem: format!("CHAIN {tag}\n"),
        fullchain_pem: format!("CERT {tag}\nCHAIN {tag}\n"),
        privkey_pem: Some(PrivateKeyPem::new(format!("KEY {tag}\n"))),
        csr_pem: None,
    }
}

/// A test lineage.
pub fn lineage() -> Lineage {
    let mut opts = BTreeMap::new();
    opts.insert("port".to_owned(), toml::Value::Integer(5002));
    Lineage {
        domains: vec!["a.example".into(), "b.example".into()],
        solver: "standalone".into(),
        solver_options: opts,
        key_type: "ec-p256".into(),
        server: "https://localhost:14000/dir".into(),
        versions: vec![],
        ..Lineage::default()
    }
}

/// A test version record.
pub fn record(serial: &str) -> VersionRecord {
    VersionRecord {
        version: 0,
        serial: serial.into(),
        not_before: "2025-01-01T00:00:00Z".into(),
        not_after: "2025-04-01T00:00:00Z".into(),
        issued_at: "2025-01-01T00:00:01Z".into(),
    }
}

/// A certificate lease excludes a second claim until dropped; each claim
/// has a larger token; a commit fenced with the current token succeeds
/// and one fenced with an older token is refused and changes nothing.
pub fn cert_leases_fence_commits(store: &dyn Storage) {
    let ttl = Duration::from_secs(60);
    let first = store
        .cert_lease("fenced.example", ttl)
        .expect("claim")
        .expect("a free certificate can be claimed");
    assert!(
        store
            .cert_lease("fenced.example", ttl)
            .expect("claim again")
            .is_none(),
        "a held certificate lease was claimed twice"
    );
    assert!(
        store
            .cert_lease("other.example", ttl)
            .expect("claim other")
            .is_some(),
        "the lease of one certificate blocked another"
    );
    let old = first.token();
    store
        .commit_version_fenced(
            "fenced.example",
            &files("one"),
            &lineage(),
            record("01"),
            Some(old),
            None,
        )
        .expect("a commit with the current token is accepted");
    drop(first);
    let second = store
        .cert_lease("fenced.example", ttl)
        .expect("claim")
        .expect("a released lease can be claimed");
    assert!(
        second.token() > old,
        "tokens must grow: {} then {}",
        old,
        second.token()
    );
    let refused = store.commit_version_fenced(
        "fenced.example",
        &files("stale"),
        &lineage(),
        record("02"),
        Some(old),
        None,
    );
    assert!(
        matches!(refused, Err(StoreError::Fenced { token, .. }) if token == old),
        "a stale token was not refused: {refused:?}"
    );
    assert_eq!(
        store.current_version("fenced.example").expect("read"),
        Some(1),
        "a refused commit changed the current version"
    );
    let l = store
        .load_lineage("fenced.example")
        .expect("read")
        .expect("lineage");
    assert_eq!(
        l.versions.len(),
        1,
        "a refused commit was recorded: {:?}",
        l.versions
    );
    second.renew().expect("the holder renews its lease");
}

/// A restored certificate keeps its version numbers, its lineage and its
/// current version; restoring over an existing one is refused.
pub fn restore_keeps_versions(store: &dyn Storage) {
    let mut lin = lineage();
    lin.versions = vec![
        VersionRecord {
            version: 2,
            ..record("02")
        },
        VersionRecord {
            version: 5,
            ..record("05")
        },
    ];
    let versions = vec![
        VersionFiles {
            version: 2,
            files: files("two"),
            dir: None,
        },
        VersionFiles {
            version: 5,
            files: files("five"),
            dir: None,
        },
    ];
    store
        .restore_cert("restored.example", &lin, &versions, Some(5))
        .expect("restore");
    assert_eq!(
        store.current_version("restored.example").expect("read"),
        Some(5)
    );
    let two = store
        .read_version("restored.example", Some(2))
        .expect("read")
        .expect("version 2");
    assert_eq!(two.files.cert_pem, "CERT two\n");
    assert_eq!(
        two.files
            .privkey_pem
            .as_ref()
            .map(|k| k.expose().to_owned()),
        Some("KEY two\n".to_owned())
    );
    let current = store
        .read_version("restored.example", None)
        .expect("read")
        .expect("current");
    assert_eq!(current.version, 5);
    assert_eq!(current.files.fullchain_pem, "CERT five\nCHAIN five\n");
    assert_eq!(
        store
            .load_lineage("restored.example")
            .expect("read")
            .expect("lineage")
            .versions,
        lin.versions
    );
    let again = store.restore_cert("restored.example", &lin, &versions, Some(5));
    assert!(
        matches!(again, Err(StoreError::Exists { .. })),
        "restoring over a stored certificate was not refused: {again:?}"
    );
    // The next commit numbers after the restored versions.
    let saved = store
        .commit_version("restored.example", &files("six"), &lin, record("06"))
        .expect("commit after restore");
    assert_eq!(saved.version, 6);
}

/// A pending order of `name` at `order_url`.
pub fn pending_order(name: &str, order_url: &str) -> PendingOrder {
    PendingOrder {
        server: "https://ca/dir".into(),
        order_url: order_url.into(),
        domains: vec![name.into()],
        key_type: "ec-p256".into(),
        privkey_pem: "KEY\n".into(),
        csr_der_b64: "AAEC".into(),
        finalized_at: "2026-01-01T00:00:00Z".into(),
        pid: 1,
        pid_start: 0,
        boot_id: String::new(),
    }
}

/// A commit that settles an order forgets that order's pending record in
/// the same step, and only that order's: a record another run made since
/// (another order URL) stays.
pub fn commit_settles_its_pending_order(store: &dyn Storage) {
    let name = "settled.example";
    store
        .put_pending_order(name, &pending_order(name, "https://ca/order/1"))
        .expect("put");
    store
        .commit_version_fenced(
            name,
            &files("one"),
            &lineage(),
            record("01"),
            None,
            Some("https://ca/order/1"),
        )
        .expect("commit");
    assert_eq!(
        store
            .pending_order(name)
            .expect("read")
            .map(|p| p.order_url),
        None,
        "the order the version came from is no longer pending"
    );
    store
        .put_pending_order(name, &pending_order(name, "https://ca/order/3"))
        .expect("put");
    store
        .commit_version_fenced(
            name,
            &files("two"),
            &lineage(),
            record("02"),
            None,
            Some("https://ca/order/2"),
        )
        .expect("commit");
    assert_eq!(
        store
            .pending_order(name)
            .expect("read")
            .map(|p| p.order_url),
        Some("https://ca/order/3".to_owned()),
        "another order's record stays"
    );
    assert_eq!(store.current_version(name).expect("read"), Some(2));
}
