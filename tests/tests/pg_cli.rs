//! The shared PostgreSQL store through the built binary against a real
//! Pebble and a real PostgreSQL: what an ephemeral CI runner and a fleet
//! rely on. A certificate issued by one machine is known to the next
//! (which orders nothing), its files are written on the machine that
//! issued it for the deploy hook, nothing runs without the store key, and
//! `doctor` checks the store.

use std::fs;
use std::path::Path;

use certsmith_tests::postgres::Postgres;
use certsmith_tests::{Pebble, PebbleOpts, TempState};

use crate::accounts::{certsmith_env, config, p};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn orders_in_log(pebble: &Pebble) -> usize {
    fs::read_to_string(pebble.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Added order"))
        .count()
}

/// The `store` line of `doctor --output json`.
fn store_check(run: &crate::accounts::Run) -> Option<serde_json::Value> {
    run.json()
        .first()
        .and_then(|v| v["checks"].as_array().cloned())
        .and_then(|checks| checks.into_iter().find(|c| c["check"] == "store"))
}

#[test]
fn a_certificate_in_the_database_store_is_ordered_once_for_every_machine() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database("ci").expect("database");
    let pebble = Pebble::start(PebbleOpts {
        nonce_reject_percent: Some(0),
        ..PebbleOpts::default()
    })
    .expect("pebble");
    // Two runners: each its own (empty) state directory, one database.
    let dir = TempState::new().expect("temp dir");
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg_a = config(&pebble, &dir, &state_a);
    let hook_out = dir.path().join("hook.txt");
    let hook = format!("cat \"$CERTSMITH_FULLCHAIN\" > {}", p(&hook_out));
    let env = [
        ("CERTSMITH_STORE", url.as_str()),
        ("CERTSMITH_STORE_KEY", KEY),
    ];
    let args = |cfg: &Path| -> Vec<String> {
        [
            "issue",
            "--config",
            p(cfg),
            "--solver",
            "challtestsrv",
            "-d",
            "ci.example.test",
            "--email",
            "ops@example.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut first: Vec<String> = args(&cfg_a);
    first.extend(["--deploy-hook".to_owned(), hook]);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let run = certsmith_env(&first, &env).ok();
    assert!(
        !run.stderr.contains(pg.password()),
        "the password leaked: {}",
        run.describe()
    );
    // Runner A has the files (for its deploy hook and web server), the
    // database has the lineage: none on disk.
    let current = state_a.join("certs/ci.example.test/current");
    let fullchain = fs::read_to_string(current.join("fullchain.pem")).expect("local copy");
    assert!(fullchain.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        fs::read_to_string(&hook_out).expect("deploy hook ran"),
        fullchain
    );
    assert!(!state_a.join("certs/ci.example.test/lineage.toml").exists());
    assert_eq!(
        pg.psql("ci", "SELECT name, current_version FROM certsmith_certs")
            .expect("psql"),
        "ci.example.test|1"
    );
    let orders = orders_in_log(&pebble);

    // Runner B, from nothing: the same request finds the certificate and
    // orders nothing; it sees it in `list`.
    let cfg_b = config(&pebble, &dir, &state_b);
    let second: Vec<String> = args(&cfg_b);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let run = certsmith_env(&second, &env).ok();
    assert!(run.stdout.contains("not due"), "{}", run.describe());
    assert!(!run.stderr.contains("warning"), "{}", run.describe());
    // Runner B got the files too, where its web server reads them.
    let current_b = state_b.join("certs/ci.example.test/current");
    assert_eq!(
        fs::read_to_string(current_b.join("fullchain.pem")).expect("copy on B"),
        fullchain
    );
    assert!(current_b.join("privkey.pem").is_file());
    assert!(
        run.stdout.contains(p(&current_b.join("privkey.pem"))),
        "{}",
        run.describe()
    );
    assert_eq!(orders_in_log(&pebble), orders, "runner B ordered again");
    let list = certsmith_env(&["list", "--config", p(&cfg_b), "--output", "json"], &env).ok();
    let about = list.about("ci.example.test");
    assert_eq!(
        about["domains"][0],
        "ci.example.test",
        "{}",
        list.describe()
    );
    // One account for both runners.
    assert_eq!(
        pg.psql("ci", "SELECT count(*) FROM certsmith_accounts")
            .expect("psql"),
        "1"
    );

    // Without the key nothing runs, and the error says what to set.
    let run = certsmith_env(&second, &[("CERTSMITH_STORE", url.as_str())]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("CERTSMITH_STORE_KEY"),
        "{}",
        run.describe()
    );
    // The wrong key: named by its id, never shown.
    let wrong = "AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let run = certsmith_env(
        &second,
        &[
            ("CERTSMITH_STORE", url.as_str()),
            ("CERTSMITH_STORE_KEY", wrong),
        ],
    );
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("is not the key this store is encrypted with")
            && !run.stderr.contains(wrong),
        "{}",
        run.describe()
    );

    // doctor: the store check passes with the key, fails without.
    let ok = certsmith_env(&["doctor", "--config", p(&cfg_b), "--output", "json"], &env);
    let store_line = store_check(&ok);
    assert_eq!(
        store_line.as_ref().map(|v| v["status"].clone()),
        Some("ok".into()),
        "{}",
        ok.describe()
    );
    let bad = certsmith_env(
        &["doctor", "--config", p(&cfg_b), "--output", "json"],
        &[("CERTSMITH_STORE", url.as_str())],
    );
    let store_line = store_check(&bad);
    assert_eq!(
        store_line.map(|v| v["status"].clone()),
        Some("fail".into()),
        "{}",
        bad.describe()
    );
}

#[test]
fn the_config_file_names_the_store() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database("cfg").expect("database");
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    let dir = TempState::new().expect("temp dir");
    let state = dir.path().join("state");
    let cfg = config(&pebble, &dir, &state);
    let mut text = fs::read_to_string(&cfg).expect("read");
    text.push_str(&format!("\n[store]\nurl = \"{url}\"\n"));
    fs::write(&cfg, text).expect("write");
    certsmith_env(
        &[
            "issue",
            "--config",
            p(&cfg),
            "--solver",
            "challtestsrv",
            "-d",
            "cfg.example.test",
            "--email",
            "ops@example.com",
        ],
        &[("CERTSMITH_STORE_KEY", KEY)],
    )
    .ok();
    assert_eq!(
        pg.psql("cfg", "SELECT name FROM certsmith_certs")
            .expect("psql"),
        "cfg.example.test"
    );
    // A bad URL in the file is a config error naming the key.
    let mut text = fs::read_to_string(&cfg).expect("read");
    text = text.replace(&url, "mysql://nope/x");
    fs::write(&cfg, text).expect("write");
    let run = certsmith_env(&["config", "check", "--config", p(&cfg)], &[]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("store.url") || run.stdout.contains("store.url"),
        "{}",
        run.describe()
    );
}

#[test]
fn two_runners_issuing_the_same_new_certificate_at_once_order_it_once() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database("race").expect("database");
    let pebble = Pebble::start(PebbleOpts {
        nonce_reject_percent: Some(0),
        ..PebbleOpts::default()
    })
    .expect("pebble");
    let dir = TempState::new().expect("temp dir");
    let cfg = config(&pebble, &dir, &dir.path().join("unused"));
    let before = orders_in_log(&pebble);
    let runners: Vec<_> = (0..3)
        .map(|i| {
            let (cfg, url) = (cfg.clone(), url.clone());
            let state = dir.path().join(format!("runner-{i}"));
            std::thread::spawn(move || {
                certsmith_env(
                    &[
                        "issue",
                        "--config",
                        p(&cfg),
                        "--state-dir",
                        p(&state),
                        "--solver",
                        "challtestsrv",
                        "-d",
                        "race.example.test",
                        "--email",
                        "ops@example.com",
                        "--output",
                        "json",
                    ],
                    &[
                        ("CERTSMITH_STORE", url.as_str()),
                        ("CERTSMITH_STORE_KEY", KEY),
                    ],
                )
            })
        })
        .collect();
    let runs: Vec<_> = runners
        .into_iter()
        .map(|t| t.join().expect("runner"))
        .collect();
    let actions: Vec<String> = runs
        .into_iter()
        .map(|r| {
            r.ok().about("race.example.test")["action"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "issued").count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "skipped").count(),
        2,
        "{actions:?}"
    );
    assert_eq!(
        orders_in_log(&pebble) - before,
        1,
        "the certificate was ordered more than once"
    );
    assert_eq!(
        pg.psql("race", "SELECT count(*) FROM certsmith_versions")
            .expect("psql"),
        "1"
    );
    // Each run released its claim as it ended: none is left to expire, which
    // would have kept the other runners waiting for its whole TTL (2 min).
    assert_eq!(
        pg.psql(
            "race",
            "SELECT count(*) FROM certsmith_leases WHERE scope LIKE 'cert:%' AND expires_at > now()"
        )
        .expect("psql"),
        "0"
    );
}

#[test]
fn store_rotate_key_re_encrypts_and_the_old_key_stops_working() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database("rotate").expect("database");
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    let dir = TempState::new().expect("temp dir");
    let cfg = config(&pebble, &dir, &dir.path().join("state"));
    let env = [
        ("CERTSMITH_STORE", url.as_str()),
        ("CERTSMITH_STORE_KEY", KEY),
    ];
    certsmith_env(
        &[
            "issue",
            "--config",
            p(&cfg),
            "--solver",
            "challtestsrv",
            "-d",
            "rot.example.test",
            "--email",
            "ops@example.com",
        ],
        &env,
    )
    .ok();
    // Without a new key: refused, saying what to set.
    let run = certsmith_env(&["store", "rotate-key", "--config", p(&cfg)], &env);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(
        run.stderr.contains("CERTSMITH_STORE_NEW_KEY"),
        "{}",
        run.describe()
    );
    let new = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let rotated = certsmith_env(
        &[
            "store",
            "rotate-key",
            "--config",
            p(&cfg),
            "--output",
            "json",
        ],
        &[
            ("CERTSMITH_STORE", url.as_str()),
            ("CERTSMITH_STORE_KEY", KEY),
            ("CERTSMITH_STORE_NEW_KEY", new),
        ],
    )
    .ok();
    let r = &crate::json_schema::rotate_lines(&rotated)[0]["rotated"];
    assert_eq!(
        (r["accounts"].as_u64(), r["private_keys"].as_u64()),
        (Some(1), Some(1)),
        "{}",
        rotated.describe()
    );
    assert!(!rotated.stdout.contains(new) && !rotated.stdout.contains(pg.password()));
    // The old key is refused; the new one lists the certificate.
    let old = certsmith_env(&["list", "--config", p(&cfg)], &env);
    assert_ne!(old.code, Some(0), "{}", old.describe());
    assert!(old.stderr.contains("rotate-key"), "{}", old.describe());
    let listed = certsmith_env(
        &["list", "--config", p(&cfg), "--output", "json"],
        &[
            ("CERTSMITH_STORE", url.as_str()),
            ("CERTSMITH_STORE_KEY", new),
        ],
    )
    .ok();
    assert_eq!(listed.about("rot.example.test")["name"], "rot.example.test");
}

#[test]
fn run_skips_a_certificate_another_worker_is_ordering() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database("held").expect("database");
    let pebble = Pebble::start(PebbleOpts::default()).expect("pebble");
    let dir = TempState::new().expect("temp dir");
    let cfg = config(&pebble, &dir, &dir.path().join("state"));
    let mut text = fs::read_to_string(&cfg).expect("read");
    text = text.replace(
        "[solvers.challtestsrv]",
        "solver = \"challtestsrv\"\nemail = \"ops@example.com\"\n\n[solvers.challtestsrv]",
    );
    text.push_str("\n[[certificate]]\ndomains = [\"held.example.test\"]\n\n[[certificate]]\ndomains = [\"free.example.test\"]\n");
    fs::write(&cfg, text).expect("write");
    // Another worker (a daemon elsewhere) holds the claim on one of them.
    let other = certsmith_core::store::pg::PgStore::open(
        &url,
        Some(certsmith_core::store::pg::StoreKey::parse(KEY, "test").expect("key")),
        None,
    )
    .expect("open");
    let claim = certsmith_core::store::Storage::cert_lease(
        &other,
        "held.example.test",
        std::time::Duration::from_secs(120),
    )
    .expect("claim")
    .expect("free");
    let env = [
        ("CERTSMITH_STORE", url.as_str()),
        ("CERTSMITH_STORE_KEY", KEY),
    ];
    let run = certsmith_env(&["run", "--config", p(&cfg), "--output", "json"], &env).ok();
    assert_eq!(
        run.about("free.example.test")["action"],
        "issued",
        "{}",
        run.describe()
    );
    let held = run.about("held.example.test");
    assert_eq!(held["action"], "skipped", "{}", run.describe());
    assert!(
        held["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("another worker"),
        "{held}"
    );
    assert_eq!(
        pg.psql("held", "SELECT name FROM certsmith_certs")
            .expect("psql"),
        "free.example.test"
    );
    // Released: the next run orders it.
    drop(claim);
    let run = certsmith_env(&["run", "--config", p(&cfg), "--output", "json"], &env).ok();
    assert_eq!(
        run.about("held.example.test")["action"],
        "issued",
        "{}",
        run.describe()
    );
}
