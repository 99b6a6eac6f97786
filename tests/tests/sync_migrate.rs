//! `certsmith sync` and `certsmith store migrate` through the built binary,
//! with certificates really issued by Pebble: a sync materialises the
//! current versions (and nothing secret besides their keys), changes
//! nothing the second time, switches and runs its hook once after a
//! renewal; a reader never sees a certificate and a key of two versions
//! while `current` switches; a migration round-trips byte for byte and
//! refuses, copying nothing, a destination that already holds a name.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use certsmith_core::store::{PendingOrder, RateLimitRecord, Store};
use certsmith_tests::{Pebble, PebbleOpts, TempState};

use crate::accounts::{Run, certsmith, certsmith_env, config, issue, p};
use crate::json_schema::{migrate_lines, sync_lines};

/// A Pebble, a config on it, and a state directory.
struct Setup {
    _pebble: Pebble,
    dir: TempState,
    state: PathBuf,
    conf: PathBuf,
}

fn setup() -> Setup {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let dir = TempState::new().expect("temp dir");
    let state = dir.root().join("state");
    let conf = config(&pebble, &dir, &state);
    Setup {
        _pebble: pebble,
        dir,
        state,
        conf,
    }
}

fn sync(state: &Path, to: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "sync",
        "--state-dir",
        p(state),
        "--to",
        p(to),
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    certsmith(&args)
}

fn renew(conf: &Path, name: &str) {
    certsmith(&["renew", "--config", p(conf), "--cert-name", name, "--force"]).ok();
}

/// Every file and link under `root` (relative path → content, or `->
/// target` for a link), `.sync.lock` left out.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let meta = fs::symlink_metadata(&path).expect("stat");
            if meta.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else if meta.is_dir() {
                todo.push(path);
            } else if !rel.ends_with(".lock") {
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    out
}

/// The lines the test hook appended: `name version fullchain`.
fn hook_log(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn sync_materialises_is_idempotent_and_switches_after_a_renewal() {
    let s = setup();
    issue(&s.conf, "a.test", &[]).ok();
    issue(&s.conf, "b.test", &[]).ok();
    let to = s.dir.root().join("web");
    let log = s.dir.root().join("hook.log");
    let hook = format!(
        "echo \"$CERTSMITH_CERT_NAME $CERTSMITH_VERSION $CERTSMITH_FULLCHAIN $CERTSMITH_PRIVKEY\" >> {}",
        p(&log)
    );

    // First sync: both certificates, version 1, the hook once each.
    let r = sync(&s.state, &to, &["--deploy-hook", &hook]).ok();
    let lines = sync_lines(&r);
    for name in ["a.test", "b.test"] {
        let v = r.about(name);
        assert_eq!(v["action"], "updated", "{v}");
        assert_eq!(v["version"], 1, "{v}");
        assert_eq!(v["deploy_hook"]["status"], "ok", "{v}");
    }
    assert_eq!(lines.last().expect("summary")["sync_summary"]["updated"], 2);
    let canon = fs::canonicalize(&to).expect("canonical");
    let mut want_log = vec![
        format!(
            "a.test 1 {0}/certs/a.test/current/fullchain.pem {0}/certs/a.test/current/privkey.pem",
            canon.display()
        ),
        format!(
            "b.test 1 {0}/certs/b.test/current/fullchain.pem {0}/certs/b.test/current/privkey.pem",
            canon.display()
        ),
    ];
    assert_eq!(hook_log(&log), want_log);

    // The layout of the store's certificates, byte for byte; nothing else.
    let copied = tree(&to);
    let mut want = BTreeMap::new();
    for name in ["a.test", "b.test"] {
        want.insert(format!("certs/{name}/current"), b"-> versions/1".to_vec());
        for file in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
            let rel = format!("certs/{name}/versions/1/{file}");
            want.insert(rel.clone(), fs::read(s.state.join(&rel)).expect("stored"));
        }
        let key = to.join(format!("certs/{name}/versions/1/privkey.pem"));
        let mode = fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "no account, journal, lineage or pending order in the sync directory"
    );
    assert_eq!(copied, want);

    // Second sync: nothing written (same inodes), no hook.
    let inode = |rel: &str| fs::metadata(to.join(rel)).expect("stat").ino();
    let before = inode("certs/a.test/versions/1/fullchain.pem");
    let r = sync(&s.state, &to, &["--deploy-hook", &hook]).ok();
    for name in ["a.test", "b.test"] {
        let v = r.about(name);
        assert_eq!(v["action"], "unchanged", "{v}");
        assert!(v["deploy_hook"].is_null(), "{v}");
    }
    assert_eq!(inode("certs/a.test/versions/1/fullchain.pem"), before);
    assert_eq!(hook_log(&log).len(), 2, "the hook did not run again");
    assert_eq!(tree(&to), want);

    // After a renewal of a.test: it switches to version 2, the hook runs
    // once (for a.test), b.test stays.
    renew(&s.conf, "a.test");
    let r = sync(&s.state, &to, &["--deploy-hook", &hook]).ok();
    sync_lines(&r);
    let a = r.about("a.test");
    assert_eq!(
        (&a["action"], &a["version"], &a["previous_version"]),
        (&"updated".into(), &2.into(), &1.into()),
        "{a}"
    );
    assert_eq!(r.about("b.test")["action"], "unchanged");
    want_log.push(format!(
        "a.test 2 {0}/certs/a.test/current/fullchain.pem {0}/certs/a.test/current/privkey.pem",
        canon.display()
    ));
    assert_eq!(hook_log(&log), want_log);
    assert_eq!(
        fs::read_link(to.join("certs/a.test/current")).expect("link"),
        Path::new("versions/2")
    );
    assert_eq!(
        fs::read(to.join("certs/a.test/current/fullchain.pem")).expect("new"),
        fs::read(s.state.join("certs/a.test/versions/2/fullchain.pem")).expect("stored")
    );

    // Text output says what changed.
    renew(&s.conf, "a.test");
    let r = certsmith(&["sync", "--state-dir", p(&s.state), "--to", p(&to)]).ok();
    assert!(
        r.stdout.contains("a.test: updated to version 3, was 2")
            && r.stdout.contains("b.test: unchanged (version 1)"),
        "{}",
        r.describe()
    );
    // Version 1 is pruned (neither current nor the one before).
    assert!(!to.join("certs/a.test/versions/1").exists());
    assert!(to.join("certs/a.test/versions/2").is_dir());

    // A certificate ordered with the user's CSR: its CSR, no key; the hook
    // gets an empty CERTSMITH_PRIVKEY. A failing hook: exit 9, the files
    // in place.
    let made = certsmith_core::keys::key_and_csr(
        certsmith_core::keys::KeyType::EcP256,
        &["csr.test".to_owned()],
    )
    .expect("a CSR");
    let csr_file = s.dir.file("csr.der");
    fs::write(&csr_file, &made.csr_der).expect("write CSR");
    issue(&s.conf, "csr.test", &["--csr", p(&csr_file)]).ok();
    let fail_hook = format!("{hook}; exit 3");
    let r = sync(&s.state, &to, &["--deploy-hook", &fail_hook]);
    assert_eq!(r.code, Some(9), "{}", r.describe());
    let v = r.about("csr.test");
    assert_eq!(
        (
            &v["action"],
            &v["deploy_hook"]["status"],
            &v["error"]["class"]
        ),
        (&"updated".into(), &"failed".into(), &"deploy_hook".into()),
        "{v}"
    );
    let csr_dir = to.join("certs/csr.test/current");
    assert_eq!(
        fs::read(csr_dir.join("csr.pem")).expect("csr.pem"),
        fs::read(s.state.join("certs/csr.test/current/csr.pem")).expect("stored csr")
    );
    assert!(!csr_dir.join("privkey.pem").exists());
    assert!(csr_dir.join("fullchain.pem").is_file());
    assert_eq!(
        hook_log(&log).last().map(String::as_str),
        Some(
            format!(
                "csr.test 1 {}/certs/csr.test/current/fullchain.pem ",
                canon.display()
            )
            .as_str()
        )
    );

    // --name: only that certificate.
    let only = s.dir.root().join("only-b");
    let r = sync(&s.state, &only, &["--name", "b.test"]).ok();
    assert_eq!(sync_lines(&r).len(), 2, "{}", r.describe());
    assert!(only.join("certs/b.test/current/fullchain.pem").is_file());
    assert!(!only.join("certs/a.test").exists());
    // An unknown name is refused, naming it and the flag.
    let r = sync(&s.state, &only, &["--name", "nope.test"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("'nope.test'") && r.stderr.contains("--name"),
        "{}",
        r.describe()
    );
    // The state directory itself is refused as a target.
    let r = sync(&s.state, &s.state, &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("state directory"), "{}", r.describe());
}

/// Reads the pair through one resolution of `current`: the directory is
/// opened once and both files are read relative to it. `None` when the
/// version was pruned meanwhile (the reader tries again).
fn read_pair(current: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = fs::File::open(current).ok()?;
    let at = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let read = |f: &str| {
        let mut buf = Vec::new();
        fs::File::open(at.join(f))
            .and_then(|mut h| h.read_to_end(&mut buf))
            .ok()
            .map(|_| buf)
    };
    Some((read("fullchain.pem")?, read("privkey.pem")?))
}

#[test]
fn a_reader_never_sees_a_certificate_and_key_of_two_versions() {
    let s = setup();
    issue(&s.conf, "c.test", &[]).ok();
    for _ in 0..3 {
        renew(&s.conf, "c.test");
    }
    // Which version each fullchain and each key belongs to.
    let store_dir = s.state.join("certs/c.test");
    let mut chain_of = HashMap::new();
    let mut key_of = HashMap::new();
    for v in 1..=4u32 {
        let dir = store_dir.join(format!("versions/{v}"));
        chain_of.insert(fs::read(dir.join("fullchain.pem")).expect("chain"), v);
        key_of.insert(fs::read(dir.join("privkey.pem")).expect("key"), v);
    }
    assert_eq!(
        (chain_of.len(), key_of.len()),
        (4, 4),
        "four distinct versions"
    );

    let to = s.dir.root().join("web");
    sync(&s.state, &to, &[]).ok();
    let current = to.join("certs/c.test/current");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let current = current.clone();
        std::thread::spawn(move || {
            let (mut reads, mut mismatches, mut retries) = (0u64, 0u64, 0u64);
            // A reader resolving `current` once per file (two opens by
            // path) can see a pair across a switch: counted, to show the
            // switches are frequent enough for the check to mean something.
            let (mut naive_reads, mut naive_mixed) = (0u64, 0u64);
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                if let (Ok(chain), Ok(key)) = (
                    fs::read(current.join("fullchain.pem")),
                    fs::read(current.join("privkey.pem")),
                ) {
                    naive_reads += 1;
                    if chain_of.get(&chain) != key_of.get(&key) {
                        naive_mixed += 1;
                    }
                }
                let Some((chain, key)) = read_pair(&current) else {
                    retries += 1;
                    continue;
                };
                let (c, k) = (chain_of.get(&chain), key_of.get(&key));
                reads += 1;
                match (c, k) {
                    (Some(c), Some(k)) if c == k => {
                        seen.insert(*c);
                    }
                    _ => mismatches += 1,
                }
            }
            (reads, mismatches, retries, seen, naive_reads, naive_mixed)
        })
    };

    // Switch the store's current version around and sync each time: the
    // sync directory switches 40 times while the reader reads.
    let started = Instant::now();
    let mut switches = 0;
    for i in 0..40u32 {
        let v = [2, 1, 4, 3][i as usize % 4];
        let tmp = store_dir.join(".current-test");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("versions/{v}"), &tmp).expect("symlink");
        fs::rename(&tmp, store_dir.join("current")).expect("switch the store");
        let r = sync(&s.state, &to, &[]).ok();
        if r.about("c.test")["action"] == "updated" {
            switches += 1;
        }
        assert_eq!(r.about("c.test")["version"], v);
    }
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let (reads, mismatches, retries, seen, naive_reads, naive_mixed) =
        reader.join().expect("reader");
    eprintln!(
        "{switches} switches in {elapsed:?}; {reads} pairs read, {mismatches} mismatched, {retries} retried (pruned under the reader), versions seen {seen:?}; by path twice: {naive_mixed} of {naive_reads} mixed"
    );
    assert_eq!(switches, 40);
    assert_eq!(mismatches, 0, "a certificate and a key of two versions");
    assert!(reads > 100, "the reader read during the switches: {reads}");
    assert!(seen.len() >= 2, "the reader saw switches: {seen:?}");
    // Only the current version and the one before are kept.
    let kept: Vec<String> = fs::read_dir(to.join("certs/c.test/versions"))
        .expect("versions")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
}

/// The files under `certs/` of a state directory (lineage, current link,
/// every version's files, pending orders), but for the empty
/// `pending-order.json` a settled order leaves: no pending order, and
/// nothing for a migration to carry (docs/design.md §4.1).
fn certs_tree(state: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = tree(&state.join("certs"));
    files.retain(|path, bytes| !(path.ends_with("/pending-order.json") && bytes.is_empty()));
    files
}

fn accounts_tree(state: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(&state.join("accounts"))
}

fn migrate(from: &Path, to: &Path) -> Run {
    certsmith(&[
        "store",
        "migrate",
        "--from",
        p(from),
        "--to",
        p(to),
        "--output",
        "json",
    ])
}

#[test]
fn migrate_round_trips_and_refuses_a_taken_name_copying_nothing() {
    let s = setup();
    issue(&s.conf, "a.test", &[]).ok();
    renew(&s.conf, "a.test");
    issue(&s.conf, "b.test", &[]).ok();
    // A pending order and a rate limit, as a run leaves them.
    let store = Store::open(&s.state).expect("store");
    let pending = PendingOrder {
        server: "https://ca.test/dir".to_owned(),
        order_url: "https://ca.test/order/1".to_owned(),
        domains: vec!["b.test".to_owned()],
        key_type: "ec-p256".to_owned(),
        privkey_pem: "-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n"
            .to_owned(),
        csr_der_b64: "MIIB".to_owned(),
        finalized_at: "2026-01-01T00:00:00Z".to_owned(),
        pid: 1,
        pid_start: 2,
        boot_id: String::new(),
    };
    store
        .put_pending_order("b.test", &pending)
        .expect("pending");
    let limit = RateLimitRecord {
        server: "https://ca.test/dir".to_owned(),
        domains: vec!["a.test".to_owned()],
        until: "2099-01-01T00:00:00Z".to_owned(),
        detail: "too many certificates".to_owned(),
        recorded_at: "2026-01-01T00:00:00Z".to_owned(),
    };
    store.record_rate_limit(&limit).expect("rate limit");
    let entry = certsmith_core::store::JournalEntry {
        id: "1700000000-00ff".into(),
        created_unix: 1_700_000_000,
        pid: 1,
        pid_start: 0,
        boot_id: String::new(),
        solver: "challtestsrv".into(),
        options: BTreeMap::new(),
        request: certsmith_plugin_api::ChallengeRequest::new(
            certsmith_plugin_api::ChallengeType::Http01,
            "j.test",
            "tok",
            "tok.x",
            1,
        ),
        presented: None,
    };
    store.put_journal_entry(&entry).expect("journal");
    drop(store);

    // A → B → C: C holds exactly what A holds.
    let b = s.dir.root().join("b");
    let c = s.dir.root().join("c");
    let r = migrate(&s.state, &b).ok();
    let m = &migrate_lines(&r)[0]["migrated"];
    assert_eq!(
        (
            &m["accounts"],
            &m["certificates"],
            &m["versions"],
            &m["pending_orders"],
            &m["rate_limits"],
            &m["journal_entries"],
            &m["verified"]
        ),
        (
            &1.into(),
            &2.into(),
            &3.into(),
            &1.into(),
            &1.into(),
            &1.into(),
            &true.into()
        ),
        "{}",
        r.describe()
    );
    let r = migrate(&b, &c).ok();
    assert_eq!(migrate_lines(&r)[0]["migrated"]["verified"], true);
    assert_eq!(accounts_tree(&c), accounts_tree(&s.state));
    assert_eq!(certs_tree(&c), certs_tree(&s.state));
    let a_tree = certs_tree(&s.state);
    for rel in [
        "a.test/lineage.toml",
        "a.test/versions/1/privkey.pem",
        "a.test/versions/2/fullchain.pem",
        "a.test/current",
        "b.test/pending-order.json",
    ] {
        assert!(a_tree.contains_key(rel), "{rel} compared: {a_tree:?}");
    }
    for rel in ["a.test/versions/2/privkey.pem", "b.test/pending-order.json"] {
        let mode = fs::metadata(c.join("certs").join(rel))
            .expect("copied")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{rel}");
    }
    assert_eq!(tree(&c.join("journal")), tree(&s.state.join("journal")));
    assert_eq!(tree(&c.join("journal")).len(), 1);
    assert_eq!(
        fs::read(c.join("rate-limits.json")).expect("limits"),
        fs::read(s.state.join("rate-limits.json")).expect("limits")
    );
    // The copy works as a store: list reads it.
    let r = certsmith(&["list", "--state-dir", p(&c), "--output", "json"]).ok();
    assert_eq!(r.about("a.test")["version"], 2, "{}", r.describe());
    // Text output says it verified.
    let text = s.dir.root().join("text");
    let r = certsmith(&["store", "migrate", "--from", p(&s.state), "--to", p(&text)]).ok();
    assert!(r.stdout.contains("verified"), "{}", r.describe());

    // D already has a.test (its own, from its own account): refused,
    // naming the certificate and the account, and D is unchanged.
    let d = s.dir.root().join("d");
    let d_conf = s.dir.root().join("d.toml");
    fs::write(
        &d_conf,
        fs::read_to_string(&s.conf)
            .expect("config")
            .replace(p(&s.state), p(&d)),
    )
    .expect("write config");
    issue(&d_conf, "a.test", &[]).ok();
    let before = tree(&d);
    let r = migrate(&s.state, &d);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    migrate_lines(&r);
    assert!(
        r.stderr.contains("a certificate named 'a.test'")
            && r.stderr.contains("a different account")
            && r.stderr.contains("nothing was copied"),
        "{}",
        r.describe()
    );
    assert!(!r.stderr.contains("'b.test'"), "{}", r.describe());
    assert_eq!(tree(&d), before, "nothing was copied into D");
    assert!(!d.join("certs/b.test").exists());

    // Into itself: refused.
    let r = migrate(&s.state, &s.state);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    // A URL the build cannot open names the flag.
    let r = migrate(&s.state, Path::new("mysql://db/x"));
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--to"), "{}", r.describe());
}

#[test]
fn sync_follow_picks_up_a_renewal_and_stops_on_sigterm_with_exit_0() {
    let s = setup();
    issue(&s.conf, "f.test", &[]).ok();
    let to = s.dir.root().join("web");
    let log = s.dir.root().join("hook.log");
    let hook = format!(
        "echo \"$CERTSMITH_CERT_NAME $CERTSMITH_VERSION\" >> {}",
        p(&log)
    );
    let child = std::process::Command::new(certsmith_tests::certsmith_bin())
        .args([
            "sync",
            "--state-dir",
            p(&s.state),
            "--to",
            p(&to),
            "--follow",
            "--interval",
            "1",
            "--deploy-hook",
            &hook,
            "--output",
            "json",
        ])
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_CONFIG")
        .env_remove("CERTSMITH_OUTPUT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sync --follow");
    let link = to.join("certs/f.test/current");
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while fs::read_link(&link).ok().as_deref() != Some(Path::new(want)) {
            assert!(Instant::now() < deadline, "current never became {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("versions/1");
    renew(&s.conf, "f.test");
    wait_for("versions/2");
    // Let a pass or two go by with nothing to do.
    std::thread::sleep(Duration::from_millis(2500));
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("wait");
    let r = Run::from(out);
    assert_eq!(
        r.code,
        Some(0),
        "SIGTERM ends --follow with 0: {}",
        r.describe()
    );
    assert_eq!(
        hook_log(&log),
        ["f.test 1", "f.test 2"],
        "the hook ran once per change"
    );
    // The first pass, then only the pass that changed something.
    let lines = sync_lines(&r);
    let actions: Vec<&str> = lines.iter().filter_map(|v| v["action"].as_str()).collect();
    assert_eq!(actions, ["updated", "updated"], "{}", r.describe());
    assert_eq!(
        lines
            .iter()
            .filter(|v| v.get("sync_summary").is_some())
            .count(),
        2,
        "{}",
        r.describe()
    );
}

#[test]
fn migrate_into_postgres_and_back_keeps_everything_and_a_node_syncs_from_it() {
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let pg = certsmith_tests::postgres::Postgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database("fleet").expect("database");
    let s = setup();
    issue(&s.conf, "a.test", &[]).ok();
    renew(&s.conf, "a.test");
    issue(&s.conf, "b.test", &[]).ok();
    let env = [("CERTSMITH_STORE_KEY", KEY)];
    let migrate_env = |from: &str, to: &str| {
        certsmith_env(
            &[
                "store", "migrate", "--from", from, "--to", to, "--output", "json",
            ],
            &env,
        )
    };

    // The directory into the database.
    let r = migrate_env(p(&s.state), &url).ok();
    let m = &migrate_lines(&r)[0]["migrated"];
    assert_eq!(
        (&m["certificates"], &m["versions"], &m["verified"]),
        (&2.into(), &3.into(), &true.into()),
        "{}",
        r.describe()
    );
    assert!(!r.stdout.contains(pg.password()), "{}", r.describe());
    assert!(!r.stderr.contains(pg.password()), "{}", r.describe());

    // A web node syncs from the database through a role that may only
    // read (SELECT): the current files, nothing else, and no local copy
    // of the store is made.
    pg.psql(
        "fleet",
        "CREATE ROLE web LOGIN PASSWORD 'web-pw'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO web",
    )
    .expect("a read-only role");
    let web_url = url.replacen(
        &format!("{}:{}@", certsmith_tests::postgres::ROLE, pg.password()),
        "web:web-pw@",
        1,
    );
    assert_ne!(web_url, url, "the URL names the role");
    let home = s.dir.root().join("home");
    fs::create_dir_all(&home).expect("home");
    let to = s.dir.root().join("web");
    let r = certsmith_env(
        &[
            "sync",
            "--store",
            &web_url,
            "--to",
            p(&to),
            "--output",
            "json",
        ],
        &[("CERTSMITH_STORE_KEY", KEY), ("HOME", p(&home))],
    )
    .ok();
    sync_lines(&r);
    assert_eq!(r.about("a.test")["version"], 2, "{}", r.describe());
    for (name, v) in [("a.test", 2), ("b.test", 1)] {
        for file in ["fullchain.pem", "privkey.pem"] {
            assert_eq!(
                fs::read(to.join(format!("certs/{name}/current/{file}"))).expect("synced"),
                fs::read(s.state.join(format!("certs/{name}/versions/{v}/{file}")))
                    .expect("stored"),
                "{name} {file}"
            );
        }
    }
    assert_eq!(
        fs::read_dir(&home).expect("home").count(),
        0,
        "no state directory made"
    );

    // Back into a fresh directory: byte for byte what the first held.
    let back = s.dir.root().join("back");
    let r = migrate_env(&url, p(&back)).ok();
    assert_eq!(migrate_lines(&r)[0]["migrated"]["verified"], true);
    assert_eq!(accounts_tree(&back), accounts_tree(&s.state));
    assert_eq!(certs_tree(&back), certs_tree(&s.state));

    // Into the database again: refused, nothing copied.
    let count = || {
        pg.psql("fleet", "SELECT count(*) FROM certsmith_versions")
            .expect("psql")
            .trim()
            .to_owned()
    };
    let before = count();
    let r = migrate_env(p(&s.state), &url);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("a certificate named 'a.test'")
            && r.stderr.contains("a certificate named 'b.test'"),
        "{}",
        r.describe()
    );
    assert_eq!(count(), before);
}
