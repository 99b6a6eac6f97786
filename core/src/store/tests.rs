//! The filesystem store: layout, atomicity, permissions, locks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::fsio::sanitize;
use super::*;
use crate::keys::PrivateKeyPem;

use super::conformance::{files, lineage};

/// The version record of the tests (serial 01ab).
fn record() -> VersionRecord {
    super::conformance::record("01ab")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn versions_increment_and_current_switches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    assert_eq!(store.current_version("a.example").expect("read"), None);

    let v1 = store
        .commit_version("a.example", &files("one"), &lineage(), record())
        .expect("save 1");
    assert_eq!(v1.version, 1);
    assert_eq!(store.current_version("a.example").expect("read"), Some(1));
    let cur = store.cert_dir("a.example").join("current");
    assert_eq!(
        fs::read_to_string(cur.join(CERT_FILE)).expect("read"),
        "CERT one\n"
    );

    let v2 = store
        .commit_version("a.example", &files("two"), &lineage(), record())
        .expect("save 2");
    assert_eq!(v2.version, 2);
    assert_eq!(v2.current, cur);
    assert_eq!(
        fs::read_link(&cur).expect("symlink"),
        PathBuf::from("versions/2"),
        "the link is relative, so the store can move"
    );
    assert_eq!(
        fs::read_to_string(cur.join(PRIVKEY_FILE)).expect("read"),
        "KEY two\n"
    );
    // Version 1 is still there, intact.
    assert_eq!(
        fs::read_to_string(v1.dir.join(FULLCHAIN_FILE)).expect("read"),
        "CERT one\nCHAIN one\n"
    );

    let lin = store
        .load_lineage("a.example")
        .expect("read")
        .expect("exists");
    assert_eq!(lin.domains, ["a.example", "b.example"]);
    assert_eq!(
        lin.solver_options.get("port"),
        Some(&toml::Value::Integer(5002))
    );
    let nums: Vec<u32> = lin.versions.iter().map(|v| v.version).collect();
    assert_eq!(nums, [1, 2]);
}

#[test]
fn lineage_settings_carry_over_and_renewal_state_resets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    assert_eq!(store.cert_names().expect("list"), Vec::<String>::new());
    store
        .commit_version("s.example", &files("one"), &lineage(), record())
        .expect("save 1");
    let updated = store
        .update_lineage("s.example", &mut |l| {
            l.email = Some("a@example.com".into());
            l.deploy_hook = Some("true".into());
            l.renewal = Some(RenewalRecord {
                next_renewal: "2025-03-01T00:00:00Z".into(),
                reason: "ari".into(),
                explanation_url: Some("https://ca/why".into()),
                ..RenewalRecord::default()
            });
            l.revoked = Some(RevocationRecord {
                serial: "01ab".into(),
                reason: "superseded".into(),
                at: "2025-02-01T00:00:00Z".into(),
            });
        })
        .expect("update")
        .expect("exists");
    assert_eq!(
        store.load_lineage("s.example").expect("read"),
        Some(updated)
    );
    let text = fs::read_to_string(store.cert_dir("s.example").join("lineage.toml")).expect("read");
    assert!(
        text.contains("explanation_url = \"https://ca/why\""),
        "{text}"
    );
    assert_eq!(store.update_lineage("nope", &mut |_| {}).expect("ok"), None);

    store
        .commit_version("s.example", &files("two"), &lineage(), record())
        .expect("save 2");
    let l = store
        .load_lineage("s.example")
        .expect("read")
        .expect("exists");
    assert_eq!(l.email.as_deref(), Some("a@example.com"));
    assert_eq!(l.deploy_hook.as_deref(), Some("true"));
    assert_eq!(l.renewal, None);
    assert_eq!(l.revoked, None);
    assert_eq!(store.cert_names().expect("list"), ["s.example"]);
}

#[test]
fn permissions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let v = store
        .commit_version("p.example", &files("x"), &lineage(), record())
        .expect("save");
    assert_eq!(mode(&v.dir.join(PRIVKEY_FILE)), 0o600);
    assert_eq!(mode(&v.dir.join(CERT_FILE)), 0o644);
    assert_eq!(mode(&v.dir.join(FULLCHAIN_FILE)), 0o644);
    assert_eq!(mode(store.root()), 0o700);

    let key = AccountKey {
        ca_host: "localhost_14000".into(),
        id: "abcd".into(),
    };
    let AccountSlot::Created(acct) = store
        .create_account(&key, b"{\"secret\":1}")
        .expect("save account")
    else {
        panic!("a new account must be created");
    };
    assert_eq!(mode(&acct.location), 0o600);
    assert_eq!(mode(acct.location.parent().expect("dir")), 0o700);
    assert_eq!(
        store.load_account(&key).expect("read").map(|d| d.json),
        Some(b"{\"secret\":1}".to_vec())
    );
    let nope = AccountKey {
        id: "nope".into(),
        ..key
    };
    assert!(store.load_account(&nope).expect("read").is_none());
}

/// A version of the user's CSR holds `csr.pem` and no key, and reads
/// back so; a version that lacks its key without a CSR is an error.
#[test]
fn csr_version_has_no_key_and_reads_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let csr_files = CertFiles {
        privkey_pem: None,
        csr_pem: Some("CSR\n".into()),
        ..files("c")
    };
    let v = store
        .commit_version("c.example", &csr_files, &lineage(), record())
        .expect("save");
    assert!(!v.dir.join(PRIVKEY_FILE).exists(), "no key written");
    assert_eq!(mode(&v.dir.join(CSR_FILE)), 0o644);
    let back = store
        .read_version("c.example", None)
        .expect("read")
        .expect("a version");
    assert!(back.files.privkey_pem.is_none());
    assert_eq!(back.files.csr_pem.as_deref(), Some("CSR\n"));

    let v = store
        .commit_version("k.example", &files("k"), &lineage(), record())
        .expect("save");
    fs::remove_file(v.dir.join(PRIVKEY_FILE)).expect("rm");
    assert!(store.read_version("k.example", None).is_err());
}

#[test]
fn crashed_temp_version_is_ignored_and_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    store
        .commit_version("c.example", &files("one"), &lineage(), record())
        .expect("save 1");
    // Simulate a run killed while writing version 2: a half-written
    // temp dir, `current` untouched.
    let versions = store.cert_dir("c.example").join("versions");
    let crashed = versions.join(".tmp-2-99999");
    fs::create_dir(&crashed).expect("mkdir");
    fs::write(crashed.join(CERT_FILE), "half").expect("write");
    assert_eq!(store.current_version("c.example").expect("read"), Some(1));
    let cur = store.cert_dir("c.example").join("current");
    assert_eq!(
        fs::read_to_string(cur.join(CERT_FILE)).expect("read"),
        "CERT one\n"
    );

    let v = store
        .commit_version("c.example", &files("two"), &lineage(), record())
        .expect("save 2");
    assert_eq!(v.version, 2);
    assert!(!crashed.exists(), "the leftover is cleaned up");
    assert_eq!(
        fs::read_to_string(cur.join(CERT_FILE)).expect("read"),
        "CERT two\n"
    );
}

#[test]
fn lock_contention_waits_then_fails_clearly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state"))
        .expect("open")
        .with_lock_timeout(Duration::from_millis(200));
    let held = store.lock().expect("first lock");
    let err = store.lock().expect_err("second lock must fail");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Locked { .. }));
    assert!(msg.contains("another certsmith process holds"), "{msg}");
    assert!(
        msg.contains(&store.root().join("lock").display().to_string()),
        "{msg}"
    );
    drop(held);
    store.lock().expect("free again");

    // A writer waiting for a lock released within the timeout succeeds.
    let store = store.with_lock_timeout(Duration::from_secs(5));
    let held = store.lock().expect("lock");
    let barrier = Arc::new(Barrier::new(2));
    let (s2, b2) = (store.clone(), barrier.clone());
    let t = std::thread::spawn(move || {
        b2.wait();
        s2.commit_version("l.example", &files("x"), &lineage(), record())
    });
    barrier.wait();
    std::thread::sleep(Duration::from_millis(100));
    drop(held);
    let saved = t.join().expect("thread").expect("save after wait");
    assert_eq!(saved.version, 1);
}

/// Another process holding the lock: a plain `flock` on the lock file
/// through a descriptor of its own, as another process would take it.
fn hold_as_another_process(store: &FsStore) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(store.root().join("lock"))
        .expect("open lock");
    // SAFETY: a valid descriptor; flock has no memory preconditions.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

#[test]
fn saving_an_issued_certificate_outwaits_the_lock_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state"))
        .expect("open")
        .with_lock_timeout(Duration::from_millis(100));
    let other = hold_as_another_process(&store);
    // An ordinary writer gives up after the timeout, waiting in the kernel.
    let started = Instant::now();
    let err = store.lock().expect_err("held elsewhere");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    // A save waits for as long as the other holder takes (here 4 timeouts).
    let s2 = store.clone();
    let saver = std::thread::spawn(move || {
        s2.commit_version("w.example", &files("x"), &lineage(), record())
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(!saver.is_finished(), "the save waits");
    drop(other);
    let saved = saver.join().expect("thread").expect("saved after the wait");
    assert_eq!(saved.version, 1);
    // The writer that gave up left nothing held: the lock is free.
    drop(store.lock().expect("free"));
}

#[test]
fn writers_of_one_process_take_turns_without_failing() {
    // 16 threads of one process, each saving 5 versions of one name, with a
    // lock timeout far below what queueing behind the others takes for
    // ordinary writers: saves never time out, and every version is distinct.
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state"))
        .expect("open")
        .with_lock_timeout(Duration::from_millis(1));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let s = store.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|j| {
                        s.commit_version(
                            "q.example",
                            &files(&format!("{i}-{j}")),
                            &lineage(),
                            record(),
                        )
                        .map(|v| v.version)
                    })
                    .collect::<Result<Vec<u32>, _>>()
            })
        })
        .collect();
    let mut versions: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread").expect("every save succeeds"))
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=80).collect::<Vec<u32>>());
}

#[test]
fn concurrent_writers_get_distinct_versions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let s = store.clone();
            std::thread::spawn(move || {
                s.commit_version("w.example", &files(&i.to_string()), &lineage(), record())
            })
        })
        .collect();
    let mut versions: Vec<u32> = handles
        .into_iter()
        .map(|h| h.join().expect("thread").expect("save").version)
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4]);
    let lin = store
        .load_lineage("w.example")
        .expect("read")
        .expect("exists");
    assert_eq!(lin.versions.len(), 4);
}

#[test]
fn unwritable_root_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    fs::write(&file, "x").expect("write");
    let err = FsStore::open(file.join("state")).expect_err("cannot create under a file");
    assert!(matches!(err, StoreError::Unwritable { .. }));
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn open_existing_creates_nothing_and_names_a_missing_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope");
    let err = Store::open_existing(&missing).expect_err("missing");
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!missing.exists(), "nothing created");

    // An existing, empty directory reads as an empty store and stays empty
    // (no subdirectories, no probe file, no lock).
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let store = Store::open_existing(&empty).expect("open");
    assert!(store.cert_names().expect("names").is_empty());
    assert!(store.accounts().expect("accounts").is_empty());
    assert!(store.journal_entries().expect("journal").is_empty());
    assert_eq!(fs::read_dir(&empty).expect("read").count(), 0);

    // What a writer stored is read back.
    let full = tmp.path().join("full");
    FsStore::open(&full)
        .expect("open rw")
        .commit_version("a.example", &files("one"), &lineage(), record())
        .expect("save");
    let store = Store::open_existing(&full).expect("open");
    assert_eq!(store.cert_names().expect("names"), ["a.example"]);

    let file = tmp.path().join("a-file");
    fs::write(&file, "x").expect("write");
    let err = Store::open_existing(&file).expect_err("a file");
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn cert_names() {
    assert!(check_cert_name("example.com").is_ok());
    assert!(check_cert_name("my_cert-1").is_ok());
    for bad in ["", ".hidden", "a/b", "..", "*.x", "a b"] {
        assert!(check_cert_name(bad).is_err(), "{bad}");
    }
    assert_eq!(sanitize("localhost:14000"), "localhost_14000");
    assert_eq!(sanitize(".."), "_..");
}

#[test]
fn account_creation_keeps_the_first_of_two_writers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let key = AccountKey {
        ca_host: "ca_443".into(),
        id: "0123".into(),
    };
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = store.clone();
            let key = key.clone();
            std::thread::spawn(move || s.create_account(&key, format!("{{\"n\":{i}}}").as_bytes()))
        })
        .collect();
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for h in handles {
        match h.join().expect("thread").expect("create") {
            AccountSlot::Created(d) => created.push(d.json),
            AccountSlot::Existing(d) => existing.push(d.json),
        }
    }
    assert_eq!(created.len(), 1, "exactly one writer stores the account");
    assert!(
        existing.iter().all(|j| *j == created[0]),
        "the others see it"
    );
    let stored = store.load_account(&key).expect("read").expect("stored");
    assert_eq!(stored.json, created[0]);
    let replaced = store.replace_account(&key, b"{}").expect("replace");
    assert_eq!(replaced.json, b"{}");
    let all = store.accounts().expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].key, key);
    assert!(
        !format!("{:?}", all[0]).contains("{}"),
        "Debug shows no document"
    );
}

#[test]
fn read_version_gives_one_whole_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    assert!(
        store
            .read_version("r.example", None)
            .expect("read")
            .is_none()
    );
    store
        .commit_version("r.example", &files("one"), &lineage(), record())
        .expect("save 1");
    store
        .commit_version("r.example", &files("two"), &lineage(), record())
        .expect("save 2");
    let cur = store
        .read_version("r.example", None)
        .expect("read")
        .expect("current");
    assert_eq!(cur.version, 2);
    assert_eq!(cur.files.cert_pem, "CERT two\n");
    assert_eq!(
        cur.files.privkey_pem.as_ref().map(PrivateKeyPem::expose),
        Some("KEY two\n")
    );
    let one = store
        .read_version("r.example", Some(1))
        .expect("read")
        .expect("v1");
    assert_eq!(one.files.fullchain_pem, "CERT one\nCHAIN one\n");
    assert!(
        store
            .read_version("r.example", Some(9))
            .expect("read")
            .is_none()
    );
    assert_eq!(
        store.current_dir("r.example"),
        Some(store.root().join("certs/r.example/current"))
    );
}

#[test]
fn journal_entries_round_trip_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let entry = JournalEntry {
        id: "1700000000-00ff".into(),
        created_unix: 1_700_000_000,
        pid: 1,
        pid_start: 0,
        boot_id: String::new(),
        solver: "webroot".into(),
        options: BTreeMap::new(),
        request: ChallengeRequest::new(
            certsmith_plugin_api::ChallengeType::Http01,
            "j.example",
            "tok",
            "tok.x",
            1,
        ),
        presented: None,
    };
    store.put_journal_entry(&entry).expect("put");
    let path = store.root().join("journal/1700000000-00ff.json");
    assert_eq!(mode(&path), 0o600);
    let all = store.journal_entries().expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, entry.id);
    store.remove_journal_entry(&entry.id).expect("remove");
    store
        .remove_journal_entry(&entry.id)
        .expect("removing twice is fine");
    assert!(store.journal_entries().expect("list").is_empty());
}

#[test]
fn leases_exclude_each_other_and_tokens_grow() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let first = store.lease("run", Duration::ZERO).expect("lease");
    assert!(first.holder().ends_with("run.lock"), "{}", first.holder());
    let err = store.lease("run", Duration::ZERO).expect_err("held");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let t1 = first.token();
    drop(first);
    let second = store.lease("run", Duration::ZERO).expect("free again");
    assert!(second.token() > t1, "{} > {t1}", second.token());
}

#[test]
fn a_pending_order_is_kept_private_until_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    assert!(store.pending_order("p.example").expect("read").is_none());
    let order = PendingOrder {
        server: "https://ca/dir".into(),
        order_url: "https://ca/order/1".into(),
        domains: vec!["p.example".into()],
        key_type: "ec-p256".into(),
        privkey_pem: "KEY SECRET\n".into(),
        csr_der_b64: "AAEC".into(),
        finalized_at: "2026-01-01T00:00:00Z".into(),
        pid: 1,
        pid_start: 0,
        boot_id: String::new(),
    };
    store.put_pending_order("p.example", &order).expect("put");
    let path = store.root().join("certs/p.example/pending-order.json");
    assert_eq!(mode(&path), 0o600);
    let back = store
        .pending_order("p.example")
        .expect("read")
        .expect("there");
    assert_eq!(back.order_url, order.order_url);
    assert_eq!(back.privkey_pem, order.privkey_pem);
    assert!(
        !format!("{back:?}").contains("SECRET"),
        "Debug hides the key"
    );
    // A certificate directory holding only a pending order is no certificate yet.
    assert!(store.cert_names().expect("names").is_empty());
    store
        .remove_pending_order("p.example", "https://ca/order/2")
        .expect("another order's removal");
    assert!(
        store.pending_order("p.example").expect("read").is_some(),
        "a record of another order stays"
    );
    store
        .remove_pending_order("p.example", &order.order_url)
        .expect("remove");
    store
        .remove_pending_order("p.example", &order.order_url)
        .expect("removing twice is fine");
    assert!(store.pending_order("p.example").expect("read").is_none());
}

#[test]
fn leftover_journal_temp_files_are_swept_once_old() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let journal = store.root().join("journal");
    let old = journal.join(".1700000000-00ff.tmp");
    let fresh = journal.join(".1700000001-00ff.json.tmp-4242");
    fs::write(&old, "half").expect("write");
    fs::write(&fresh, "half").expect("write");
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&old)
        .and_then(|f| f.set_modified(long_ago))
        .expect("age it");
    assert!(store.journal_entries().expect("list").is_empty());
    assert!(!old.exists(), "a leftover of a killed write is removed");
    assert!(
        fresh.exists(),
        "a write that may be in progress is left alone"
    );
}

#[test]
fn rate_limits_are_remembered_until_they_lift() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    assert!(store.rate_limits().expect("read").is_empty());
    let lifted = RateLimitRecord {
        server: "https://ca/dir".into(),
        domains: vec!["example.com".into()],
        until: "2000-01-01T00:00:00Z".into(),
        detail: "too many certificates".into(),
        recorded_at: "2000-01-01T00:00:00Z".into(),
    };
    store.record_rate_limit(&lifted).expect("record");
    let current = RateLimitRecord {
        until: "2999-01-01T00:00:00Z".into(),
        domains: vec![],
        ..lifted.clone()
    };
    store.record_rate_limit(&current).expect("record");
    assert_eq!(
        store.rate_limits().expect("read"),
        [current],
        "the lifted one is gone"
    );
}

/// A writer's sweep of leftover temp files never removes the temp file of
/// another writer's pending-order record (both hold the store lock).
#[test]
fn pending_order_writes_and_commits_interleave_safely() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let order = conformance::pending_order("i.example", "https://ca/order/1");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (s, o) = (store.clone(), order.clone());
            std::thread::spawn(move || {
                for _ in 0..25 {
                    if i % 2 == 0 {
                        s.put_pending_order("i.example", &o).expect("put");
                    } else {
                        s.commit_version("i.example", &files("x"), &lineage(), record())
                            .expect("commit");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("no writer failed");
    }
}

/// Each commit prepares its lineage before it takes the store lock, for
/// the version number it sees then. Commits of one certificate racing each
/// other see the same number: the one that comes second must notice and
/// write the lineage again, or versions would go missing from it.
#[test]
fn racing_commits_of_one_certificate_each_land_in_the_lineage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let start = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (s, start) = (store.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                (0..10)
                    .map(|i| {
                        s.commit_version(
                            "r.example",
                            &files(&format!("{t}-{i}")),
                            &lineage(),
                            record(),
                        )
                        .expect("commit")
                        .version
                    })
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let mut numbers: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("no writer failed"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=40).collect::<Vec<u32>>(),
        "every commit got its own number"
    );
    let listed: Vec<u32> = store
        .load_lineage("r.example")
        .expect("read")
        .expect("a lineage")
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(
        listed,
        (1..=40).collect::<Vec<u32>>(),
        "the lineage lists every version, once, in order"
    );
    assert_eq!(store.current_version("r.example").expect("read"), Some(40));
    let left: Vec<String> = fs::read_dir(store.root().join("certs/r.example"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(super::fs::LINEAGE_NEXT_PREFIX))
        .collect();
    assert!(
        left.is_empty(),
        "no prepared lineage is left behind: {left:?}"
    );
}

#[test]
fn staging_directories_are_swept_once_old_and_never_become_versions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    store
        .commit_version("s.example", &files("one"), &lineage(), record())
        .expect("save");
    let versions = store.root().join("certs/s.example/versions");
    // A save killed while staging its files, long ago; one staging now in
    // this process; one of a process that has exited.
    let me = std::process::id();
    let old = versions.join(format!("{}{me}-900", super::fs::STAGING_PREFIX));
    let fresh = versions.join(format!("{}{me}-901", super::fs::STAGING_PREFIX));
    let mut exited = std::process::Command::new("true").spawn().expect("spawn");
    let dead_pid = exited.id();
    exited.wait().expect("reap");
    let dead = versions.join(format!("{}{dead_pid}-0", super::fs::STAGING_PREFIX));
    for d in [&old, &fresh, &dead] {
        fs::create_dir(d).expect("mkdir");
        fs::write(d.join(CERT_FILE), "half").expect("write");
    }
    // The same for lineages prepared beside the version.
    let cert_dir = store.root().join("certs/s.example");
    let next = |owner: String| cert_dir.join(format!("{}{owner}", super::fs::LINEAGE_NEXT_PREFIX));
    let (old_next, fresh_next, dead_next) = (
        next(format!("{me}-900")),
        next(format!("{me}-901")),
        next(format!("{dead_pid}-0")),
    );
    for f in [&old_next, &fresh_next, &dead_next] {
        fs::write(f, "versions = [").expect("write");
    }
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for aged in [&old, &old_next] {
        fs::File::open(aged)
            .and_then(|f| f.set_modified(long_ago))
            .expect("age it");
    }
    let saved = store
        .commit_version("s.example", &files("two"), &lineage(), record())
        .expect("save");
    assert_eq!(saved.version, 2, "staging directories are not versions");
    assert!(!old.exists(), "an old leftover is removed");
    assert!(
        !dead.exists(),
        "the leftover of an exited process is removed"
    );
    assert!(fresh.exists(), "a save that may be staging is left alone");
    assert!(
        !old_next.exists() && !dead_next.exists(),
        "leftover lineages are removed"
    );
    assert!(
        fresh_next.exists(),
        "a lineage a save may be preparing is left alone"
    );
    let listed = store
        .load_lineage("s.example")
        .expect("read")
        .expect("lineage");
    assert_eq!(
        listed.versions.len(),
        2,
        "a leftover is never taken for the lineage"
    );
    let mut names: Vec<String> = fs::read_dir(&versions)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names, ["1", "2"]);
}

#[test]
fn conformance_cert_leases_fence_commits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    conformance::cert_leases_fence_commits(&store);
}

#[test]
fn conformance_commit_settles_its_pending_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    conformance::commit_settles_its_pending_order(&store);
}

/// A settled record is emptied, not removed, and the next record goes
/// into that file in place: a first issuance frees no inode (docs/design.md
/// §4.1). A record that is not empty is replaced atomically, and an empty
/// file is no pending order.
#[test]
fn a_settled_pending_order_is_emptied_and_the_next_is_written_into_it() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    let name = "e.example";
    let path = store.root().join("certs/e.example/pending-order.json");
    let first = conformance::pending_order(name, "https://ca/order/1");
    store.put_pending_order(name, &first).expect("put");
    let ino = fs::metadata(&path).expect("record").ino();
    store
        .commit_version_fenced(
            name,
            &files("one"),
            &lineage(),
            record(),
            None,
            Some("https://ca/order/1"),
        )
        .expect("commit");
    let meta = fs::metadata(&path).expect("the settled record stays");
    assert_eq!((meta.ino(), meta.len()), (ino, 0), "emptied in place");
    assert!(store.pending_order(name).expect("read").is_none());
    // Settling again, or another order, leaves the empty file as it is.
    store
        .remove_pending_order(name, "https://ca/order/1")
        .expect("settle an empty record");
    assert_eq!(fs::metadata(&path).expect("still there").len(), 0);

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let second = conformance::pending_order(name, "https://ca/order/2");
    store
        .put_pending_order(name, &second)
        .expect("put into the empty file");
    assert_eq!(fs::metadata(&path).expect("record").ino(), ino, "in place");
    assert_eq!(mode(&path), 0o600, "the key is private again");
    let back = store.pending_order(name).expect("read").expect("there");
    assert_eq!(back.order_url, "https://ca/order/2");
    assert_eq!(back.privkey_pem, second.privkey_pem);

    // Over a record that is not empty: a new file, never a mix of both.
    let third = conformance::pending_order(name, "https://ca/order/3");
    store
        .put_pending_order(name, &third)
        .expect("put over a record");
    assert_ne!(
        fs::metadata(&path).expect("record").ino(),
        ino,
        "renamed over"
    );
    let back = store.pending_order(name).expect("read").expect("there");
    assert_eq!(back.order_url, "https://ca/order/3");
    // A record that does not parse is emptied by the settle all the same.
    fs::write(&path, "{ torn").expect("tear");
    store
        .remove_pending_order(name, "https://ca/order/3")
        .expect("settle a torn record");
    assert_eq!(fs::metadata(&path).expect("still there").len(), 0);

    // A record that cannot be changed in place (here a link, put there by
    // hand) is replaced and removed by name, as before.
    let elsewhere = tmp.path().join("elsewhere.json");
    fs::write(&elsewhere, "").expect("write");
    fs::remove_file(&path).expect("remove");
    std::os::unix::fs::symlink(&elsewhere, &path).expect("link");
    store
        .put_pending_order(name, &third)
        .expect("put over a link");
    assert!(!fs::symlink_metadata(&path).expect("record").is_symlink());
    assert_eq!(
        fs::read(&elsewhere).expect("read").len(),
        0,
        "not written through"
    );
    fs::remove_file(&path).expect("remove");
    fs::write(&elsewhere, serde_json::to_vec(&third).expect("json")).expect("write");
    std::os::unix::fs::symlink(&elsewhere, &path).expect("link");
    store
        .remove_pending_order(name, "https://ca/order/3")
        .expect("settle a linked record");
    assert!(fs::symlink_metadata(&path).is_err(), "the link is removed");
    assert!(
        !fs::read(&elsewhere).expect("read").is_empty(),
        "its target is not touched"
    );
}

#[test]
fn conformance_restore_keeps_versions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(tmp.path().join("state")).expect("open");
    conformance::restore_keeps_versions(&store);
}

#[test]
fn store_urls_lose_their_password_in_messages() {
    assert_eq!(
        redact_url("postgres://certsmith:s3cret@db.example:5432/certs?sslmode=require"),
        "postgres://certsmith:***@db.example:5432/certs?sslmode=require"
    );
    assert_eq!(
        redact_url("postgres://db.example/certs?user=a&password=s3cret"),
        "postgres://db.example/certs?user=a&password=***"
    );
    assert_eq!(redact_url("postgres://a@h/d"), "postgres://a@h/d");
}

#[test]
fn the_state_dir_report_lists_every_file_holding_a_key_that_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("state");
    let version = root.join("certs/k.example/versions/1");
    fs::create_dir_all(&version).expect("mkdir");
    let open = |p: &Path, mode: u32| {
        fs::write(p, "x").expect("write");
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    open(&version.join("privkey.pem"), 0o644);
    open(&root.join("certs/k.example/pending-order.json"), 0o604);
    open(&version.join("cert.pem"), 0o644);
    open(&version.join("chain.pem"), 0o600);
    // A settled (empty) record holds no key, whatever its mode.
    let settled = root.join("certs/s.example");
    fs::create_dir_all(&settled).expect("mkdir");
    fs::write(settled.join("pending-order.json"), "").expect("write");
    fs::set_permissions(
        settled.join("pending-order.json"),
        fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let report = inspect_state_dir(&root);
    let listed: Vec<(String, u32)> = report
        .readable_keys
        .iter()
        .map(|(p, m)| {
            let rel = p.strip_prefix(&root).expect("under root");
            (rel.display().to_string(), *m)
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("certs/k.example/pending-order.json".to_owned(), 0o604),
            ("certs/k.example/versions/1/privkey.pem".to_owned(), 0o644),
        ],
        "a certificate, public, is not listed"
    );
}
