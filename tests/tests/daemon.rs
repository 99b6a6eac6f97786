//! `certsmith daemon` (issue 15, item 4) through the built binary against
//! a real Pebble, on the filesystem store: it issues every certificate of
//! the config, serves Prometheus metrics and a health check, picks up a
//! certificate added by SIGHUP and survives a broken config on SIGHUP,
//! stops on SIGTERM with exit 0 and nothing left in the journal; two
//! daemons on one state directory, and two on one PostgreSQL store (each
//! with its own state directory, as two machines), issue each certificate
//! exactly once.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certsmith_tests::postgres::Postgres;
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin, free_port, journal_entries};
use serde_json::Value;

use crate::accounts::{certsmith, p};

/// A config for Pebble with the challtestsrv solver and `certs` as
/// `[[certificate]]` tables (one name each).
fn write_config(pebble: &Pebble, state: &Path, path: &Path, certs: &[&str], extra: &str) {
    let cts = pebble.challtestsrv().expect("Pebble's challtestsrv");
    let mut text = format!(
        r#"[defaults]
server = "{server}"
ca_cert = "{ca}"
email = "ops@example.com"
agree_tos = true
state_dir = "{state}"
solver = "challtestsrv"
dns_resolvers = ["{dns}"]
propagation_servers = ["{dns}"]
propagation_timeout = "30s"

[solvers.challtestsrv]
url = "{mgmt}"
"#,
        server = pebble.directory_url(),
        ca = p(pebble.ca_cert_path()),
        state = p(state),
        dns = cts.dns_addr(),
        mgmt = cts.mgmt_url(),
    );
    for c in certs {
        text.push_str(&format!("\n[[certificate]]\ndomains = [\"{c}\"]\n"));
    }
    text.push_str(extra);
    fs::write(path, text).expect("write config");
}

/// A running daemon, its stdout (JSON lines) and stderr collected.
struct Daemon {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    port: u16,
}

impl Daemon {
    fn start(config: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_env(config, extra, &[])
    }

    fn start_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "daemon",
            "--config",
            p(config),
            "--output",
            "json",
            "--check-interval",
            "1s",
            "--metrics-listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(certsmith_bin())
            .args(&args)
            .env_remove("CERTSMITH_STATE_DIR")
            .env_remove("CERTSMITH_PLUGIN_PATH")
            .env_remove("CERTSMITH_CONFIG")
            .env_remove("CERTSMITH_OUTPUT")
            .env_remove("CERTSMITH_STORE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start certsmith daemon");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let text = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = text.lock().expect("lock");
                t.push_str(&line);
                t.push('\n');
            }
        });
        Daemon {
            child,
            stdout,
            stderr,
            port,
        }
    }

    fn json(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("lock")
            .iter()
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                // Every line as docs/json.md documents it.
                if let Err(e) = crate::json_schema::check_daemon_line(&v) {
                    panic!("{e}");
                }
                v
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout.lock().expect("lock").join("\n"),
            self.stderr.lock().expect("lock")
        )
    }

    /// Waits up to `secs` for `ok` to hold on the JSON lines so far.
    fn wait_for(&self, secs: u64, what: &str, ok: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if ok(&self.json()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("waited {secs}s for {what}\n{}", self.describe());
    }

    /// Waits up to `secs` for a line on stderr with every one of `parts`.
    fn wait_stderr(&self, secs: u64, parts: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let found = self
                .stderr
                .lock()
                .expect("lock")
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)));
            if found {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "waited {secs}s for {parts:?} on stderr\n{}",
            self.describe()
        );
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid, with a valid signal.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill {sig}");
    }

    /// SIGTERM, then the exit code and how long the exit took.
    fn terminate(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the readers take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return (status.code(), started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit 30s after SIGTERM\n{}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` on the metrics endpoint: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the endpoint");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the answer");
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of the series `series` (name and labels, as written) in a
/// Prometheus text page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{page}"))
}

/// The names of the certificates issued so far.
fn issued(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|v| v["action"] == "issued")
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect()
}

/// `list --output json` of the state directory, by name.
fn listed(state: &Path) -> Vec<Value> {
    let r = certsmith(&["list", "--state-dir", p(state), "--output", "json"]).ok();
    r.json()
}

fn versions(state: &Path, name: &str) -> usize {
    let dir: PathBuf = state.join("certs").join(name).join("versions");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

#[test]
fn daemon_issues_serves_metrics_reloads_and_stops_cleanly() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let dir = TempState::new().expect("state");
    let state = dir.path().to_owned();
    let config = dir.root().join("certsmith.toml");
    let three = ["one.test", "two.test", "three.test"];
    write_config(&pebble, &state, &config, &three, "");
    let mut d = Daemon::start(&config, &["--shutdown-grace", "1s"]);

    d.wait_for(60, "three certificates issued", |l| issued(l).len() == 3);
    let started = &d.json()[0];
    assert_eq!(started["daemon"], "started", "{}", d.describe());
    assert_eq!(started["certificates"], 3);
    let list = listed(&state);
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        list.iter()
            .all(|c| c["state"] == "valid" && c["version"] == 1),
        "{list:?}"
    );

    // Metrics and health.
    let (status, page) = d.get("/metrics");
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        metric(&page, "certsmith_certificates{state=\"valid\"}"),
        3.0,
        "{page}"
    );
    assert_eq!(
        metric(&page, "certsmith_certificates{state=\"missing\"}"),
        0.0
    );
    for name in three {
        let left = metric(
            &page,
            &format!("certsmith_certificate_expiry_seconds{{name=\"{name}\"}}"),
        );
        assert!(left > 0.0, "{name}: {left}");
    }
    assert_eq!(
        metric(&page, "certsmith_orders_total{result=\"issued\"}"),
        3.0
    );
    assert_eq!(
        metric(&page, "certsmith_orders_total{result=\"failed\"}"),
        0.0
    );
    // New orders (201) and everything else the CA answered.
    assert!(
        metric(&page, "certsmith_ca_requests_total{status=\"201\"}") >= 3.0,
        "{page}"
    );
    assert!(
        metric(&page, "certsmith_ca_requests_total{status=\"200\"}") >= 3.0,
        "{page}"
    );
    assert!(
        page.contains("# TYPE certsmith_solver_seconds histogram"),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "certsmith_solver_seconds_count{solver=\"challtestsrv\"}"
        ),
        3.0,
        "{page}"
    );
    assert!(
        metric(
            &page,
            "certsmith_solver_seconds_bucket{solver=\"challtestsrv\",le=\"+Inf\"}"
        ) == 3.0
    );
    let (status, body) = d.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(d.get("/nothing").0, 404);

    // SIGHUP with a fourth certificate: reloaded, and it is issued.
    write_config(
        &pebble,
        &state,
        &config,
        &["one.test", "two.test", "three.test", "four.test"],
        "",
    );
    d.signal(libc::SIGHUP);
    d.wait_for(30, "four.test issued", |l| issued(l).contains("four.test"));
    assert!(
        d.json()
            .iter()
            .any(|v| v["daemon"] == "reloaded" && v["certificates"] == 4),
        "{}",
        d.describe()
    );
    assert_eq!(versions(&state, "one.test"), 1, "nothing renewed twice");

    // SIGHUP with a broken config: kept running on the old one, the
    // file's diagnostics reported.
    fs::write(&config, "[defaults]\nserver = \n").expect("break the config");
    d.signal(libc::SIGHUP);
    d.wait_for(20, "the reload refused", |l| {
        l.iter().any(|v| v["daemon"] == "reload_failed")
    });
    let failed = d
        .json()
        .into_iter()
        .find(|v| v["daemon"] == "reload_failed")
        .expect("reload_failed");
    assert!(failed["errors"][0]["line"].as_u64().is_some(), "{failed}");
    assert!(
        d.stderr.lock().expect("lock").contains("error: "),
        "{}",
        d.describe()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(d.child.try_wait().expect("wait").is_none(), "still running");
    assert_eq!(d.get("/healthz").0, 200);

    // SIGTERM while an order is in flight (its dns-01 record presented,
    // then a fixed 30 s wait for propagation): after the grace period (1 s)
    // the order is cancelled and its record removed; exit 0 promptly.
    write_config(
        &pebble,
        &state,
        &config,
        &["one.test", "two.test", "three.test", "four.test"],
        "\n[[certificate]]\ndomains = [\"five.test\"]\npropagation_check = \"wait:30\"\n",
    );
    d.signal(libc::SIGHUP);
    d.wait_stderr(30, &["five.test:", "response in place"]);
    assert_eq!(journal_entries(&state), 1, "presented: {}", d.describe());
    let (code, took) = d.terminate();
    assert_eq!(code, Some(0), "{}", d.describe());
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}\n{}",
        d.describe()
    );
    assert_eq!(journal_entries(&state), 0, "{}", d.describe());
    let lines = d.json();
    assert!(
        lines
            .iter()
            .any(|v| v["name"] == "five.test" && v["action"] == "failed"),
        "{}",
        d.describe()
    );
    assert_eq!(lines.last().expect("lines")["daemon"], "stopped");
    let stderr = d.stderr.lock().expect("lock").clone();
    assert!(stderr.contains("--shutdown-grace"), "{stderr}");
    assert!(
        stderr.contains("five.test: dns-01 response removed"),
        "{stderr}"
    );
}

#[test]
fn two_daemons_on_one_state_directory_issue_each_certificate_once() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let dir = TempState::new().expect("state");
    let state = dir.path().to_owned();
    let config = dir.root().join("certsmith.toml");
    let names = ["a.test", "b.test", "c.test", "d.test", "e.test", "f.test"];
    write_config(&pebble, &state, &config, &names, "");
    let mut first = Daemon::start(&config, &["-v"]);
    let mut second = Daemon::start(&config, &["-v"]);
    wait_all_issued(&[&first, &second], &names);
    // A few more rounds of both: nothing is ordered again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        orders_done(&first) + orders_done(&second),
        names.len() as f64,
        "{}\n{}",
        first.describe(),
        second.describe()
    );
    for name in names {
        assert_eq!(versions(&state, name), 1, "{name}");
    }
    let list = listed(&state);
    assert!(
        list.iter()
            .all(|c| c["version"] == 1 && c["state"] == "valid"),
        "{list:?}"
    );
    for d in [&mut first, &mut second] {
        let (code, _) = d.terminate();
        assert_eq!(code, Some(0), "{}", d.describe());
    }
    assert_eq!(journal_entries(&state), 0);
}

/// Waits until the daemons together have issued every one of `names`.
fn wait_all_issued(daemons: &[&Daemon], names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: BTreeSet<String> = daemons.iter().flat_map(|d| issued(&d.json())).collect();
        if done.len() == names.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all issued\n{}",
            daemons
                .iter()
                .map(|d| d.describe())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Orders a daemon placed that succeeded, from its `/metrics`.
fn orders_done(d: &Daemon) -> f64 {
    let (status, page) = d.get("/metrics");
    assert_eq!(status, 200, "{page}");
    metric(&page, "certsmith_orders_total{result=\"issued\"}")
        + metric(&page, "certsmith_orders_total{result=\"renewed\"}")
}

/// Two machines (two state directories) sharing one PostgreSQL store:
/// each certificate is claimed by one daemon (a row lease with SKIP
/// LOCKED), ordered once at the CA, and both daemons see them all valid.
#[test]
fn two_daemons_on_one_postgresql_store_order_each_certificate_once() {
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database("fleet").expect("database");
    let pebble = Pebble::start(PebbleOpts {
        nonce_reject_percent: Some(0),
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let dir = TempState::new().expect("state");
    let names = [
        "p1.test", "p2.test", "p3.test", "p4.test", "p5.test", "p6.test",
    ];
    let (cfg_a, cfg_b) = (dir.root().join("a.toml"), dir.root().join("b.toml"));
    write_config(&pebble, &dir.path().join("a"), &cfg_a, &names, "");
    write_config(&pebble, &dir.path().join("b"), &cfg_b, &names, "");
    let env = [
        ("CERTSMITH_STORE", url.as_str()),
        ("CERTSMITH_STORE_KEY", KEY),
    ];
    let mut a = Daemon::start_env(&cfg_a, &["-v"], &env);
    let mut b = Daemon::start_env(&cfg_b, &["-v"], &env);
    wait_all_issued(&[&a, &b], &names);
    // A few more rounds of both: nothing is ordered again.
    std::thread::sleep(Duration::from_secs(3));
    let orders_at_ca = fs::read_to_string(pebble.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Added order"))
        .count();
    assert_eq!(
        orders_at_ca,
        names.len(),
        "{}\n{}",
        a.describe(),
        b.describe()
    );
    assert_eq!(
        orders_done(&a) + orders_done(&b),
        names.len() as f64,
        "{}\n{}",
        a.describe(),
        b.describe()
    );
    let rows = pg
        .psql(
            "fleet",
            "SELECT name, current_version FROM certsmith_certs ORDER BY name",
        )
        .expect("psql");
    let expected: Vec<String> = names.iter().map(|n| format!("{n}|1")).collect();
    assert_eq!(rows, expected.join("\n"));
    // Each daemon reads the shared store: all six valid, and healthy.
    for d in [&a, &b] {
        let (_, page) = d.get("/metrics");
        assert_eq!(
            metric(&page, "certsmith_certificates{state=\"valid\"}"),
            6.0,
            "{page}"
        );
        assert_eq!(d.get("/healthz"), (200, "ok\n".to_owned()));
    }
    assert!(
        !a.describe().contains(pg.password()) && !b.describe().contains(pg.password()),
        "the database password leaked"
    );
    for d in [&mut a, &mut b] {
        let (code, _) = d.terminate();
        assert_eq!(code, Some(0), "{}", d.describe());
    }
}
