//! Where the CPU of one issuance goes (issue 17: "find where it goes …
//! and say it in the benchmark output").
//!
//! Two views, printed under the `certsmith issue` row:
//!
//! * **Phases.** A child process (this executable with `--breakdown`)
//!   issues one certificate from an empty state directory the way
//!   `certsmith issue` does (plugin host, client, `Engine::connect`, one
//!   order), and reads its own CPU time (getrusage, every thread: the
//!   runtime's workers, the blocking pool, the plugin's server) when it
//!   starts each part and at each progress event the engine reports. One
//!   certificate at a time leaves the process idle between the CA's
//!   answers, so an event's CPU reading lags it by microseconds. Process
//!   start-up is `certsmith --version` (exec, dynamic linking, argument
//!   parsing), timed by `wait4`.
//! * **Operations.** The ingredients every issuance repeats, each run
//!   many times on one thread (`RUSAGE_THREAD`) for its CPU per
//!   operation: a TLS handshake with Pebble, a request on an open
//!   connection, building an HTTPS client, a P-256 key and its CSR, an
//!   ES256 signature (one per request: a JWS), parsing an order (JSON).
//!
//! Medians of `--runs`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certsmith_core::acme::{AccountOptions, AcmeClient};
use certsmith_core::engine::{CertRequest, Engine, EngineOptions};
use certsmith_core::identifiers;
use certsmith_core::keys::{self, KeyType};
use certsmith_core::plugin::{ConfigSources, PluginHost, SearchPath};
use certsmith_core::progress::{Progress, ProgressEvent};
use certsmith_core::store::Store;
use certsmith_tests::Pebble;

use super::common::{die, flag, median};
use super::{rusage_cpu, self_cpu, wait_with_rusage};

/// The parts of one issuance, each named by the event (or step) that ends
/// it, with what it holds; printed in the order a run reports them.
const PHASES: &[(&str, &str)] = &[
    (
        "plugin",
        "loading the standalone plugin, starting its HTTP server",
    ),
    ("runtime", "async runtime (two worker threads)"),
    (
        "client",
        "HTTP client (TLS configuration: the system's root certificates and Pebble's)",
    ),
    (
        "account_ready",
        "directory (TLS handshake), account key, newAccount, account stored",
    ),
    ("order_created", "newOrder"),
    (
        "challenge_presented",
        "its authorization, key authorization, challenge presented",
    ),
    ("validating", "challenge ready"),
    (
        "valid",
        "validation: polls, the plugin answering Pebble's GETs, the certificate key and CSR (made meanwhile)",
    ),
    ("finalizing", "finalize (the CSR sent)"),
    (
        "saved",
        "polls, certificate download, chain checked, stored (files written and synced)",
    ),
    ("cleaned_up", "challenge removed"),
    (
        "end",
        "the rest: results returned, plugin and runtime stopped",
    ),
];

/// The step a progress event ends, by its name in [`PHASES`]; `None` for
/// events that end none.
fn step_of(event: &ProgressEvent) -> Option<&'static str> {
    Some(match event {
        ProgressEvent::AccountReady { .. } => "account_ready",
        ProgressEvent::OrderCreated { .. } => "order_created",
        ProgressEvent::ChallengePresented { .. } => "challenge_presented",
        ProgressEvent::Validating { .. } => "validating",
        ProgressEvent::Valid { .. } => "valid",
        ProgressEvent::Finalizing { .. } => "finalizing",
        ProgressEvent::Saved { .. } => "saved",
        ProgressEvent::CleanedUp { .. } => "cleaned_up",
        _ => return None,
    })
}

/// `--breakdown`: issues one certificate as `certsmith issue` does and
/// prints, as a JSON array of `[step, ms]` in the order they ended, the
/// process CPU at the end of each step of [`PHASES`], counted from this
/// function's start.
pub(super) fn child(args: &[String]) {
    let get = |name: &str| flag(args, name).unwrap_or_else(|| die(&format!("{name} missing")));
    let start = self_cpu();
    let marks: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
    let mark = |step: &'static str| {
        if let Ok(mut m) = marks.lock() {
            m.push((step, self_cpu().saturating_sub(start)));
        }
    };

    let host = PluginHost::discover(&SearchPath {
        dirs: vec![get("--plugin-dir").into()],
        ..SearchPath::default()
    });
    let solver = host
        .get("standalone")
        .unwrap_or_else(|e| die(&e.to_string()))
        .instantiate(&ConfigSources {
            cli: &[("listen".to_owned(), get("--listen").to_owned())],
            ..Default::default()
        })
        .unwrap_or_else(|e| die(&e.to_string()));
    mark("plugin");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    mark("runtime");
    let client = AcmeClient::new(get("--server"), Some(Path::new(get("--ca-cert"))))
        .unwrap_or_else(|e| die(&e.to_string()));
    let store = Store::open(Path::new(get("--state"))).unwrap_or_else(|e| die(&e.to_string()));
    mark("client");

    // The engine's events, read as they come by a thread of their own, so
    // that each CPU reading is taken when its step ends.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = {
        let marks = Arc::clone(&marks);
        std::thread::spawn(move || {
            while let Some(event) = rx.blocking_recv() {
                if let (Some(step), Ok(mut m)) = (step_of(&event), marks.lock()) {
                    m.push((step, self_cpu().saturating_sub(start)));
                }
            }
        })
    };
    let name = get("--name");
    runtime.block_on(async {
        let engine = Engine::connect(
            client,
            store,
            AccountOptions {
                agree_tos: true,
                ..Default::default()
            },
            Progress::new(tx),
            EngineOptions::default(),
        )
        .await
        .unwrap_or_else(|e| die(&format!("connect: {e}")));
        let domains =
            identifiers::parse_domains(&[name.to_owned()]).unwrap_or_else(|e| die(&e.to_string()));
        let req = CertRequest::new(name.to_owned(), domains, solver, KeyType::EcP256);
        engine
            .issue(req)
            .await
            .unwrap_or_else(|e| die(&format!("issue: {e}")));
    });
    runtime.shutdown_background();
    // The engine (and with it the event channel's sender) is gone: the
    // recorder has every event.
    let _ = recorder.join();
    drop(host);
    mark("end");

    let marks = marks.lock().map(|m| m.clone()).unwrap_or_default();
    let json: Vec<serde_json::Value> = marks
        .iter()
        .map(|(step, at)| serde_json::json!([step, at.as_secs_f64() * 1000.0]))
        .collect();
    println!("{}", serde_json::Value::Array(json));
}

/// Runs `--breakdown` `runs` times against `pebble`, times
/// `certsmith --version`, measures the operations, and prints both views.
pub(super) fn report(bin: &Path, plugins: &Path, pebble: &Pebble, runs: usize, issue_cpu: f64) {
    let me = std::env::current_exe().unwrap_or_else(|e| die(&e.to_string()));
    let tmp = tempfile::tempdir().unwrap_or_else(|e| die(&e.to_string()));
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    // The steps in the order the first run reported them (the engine's
    // order, e.g. the challenge is removed before finalize).
    let mut order = Vec::new();
    for run in 0..runs {
        let out = Command::new(&me)
            .arg("--breakdown")
            .args(["--server", &pebble.directory_url()])
            .arg("--ca-cert")
            .arg(pebble.ca_cert_path())
            .args(["--listen", &format!("127.0.0.1:{}", pebble.http_port())])
            .arg("--state")
            .arg(tmp.path().join(format!("state-{run}")))
            .args(["--name", &format!("parts{run}.bench.test")])
            .arg("--plugin-dir")
            .arg(plugins)
            .output()
            .unwrap_or_else(|e| die(&format!("run the breakdown child: {e}")));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            die(&format!(
                "the breakdown run failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        });
        // Each step's own CPU: its mark minus the one before it, in the
        // order the steps ended.
        let mut before = 0.0;
        for mark in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let (Some(step), Some(at)) = (mark[0].as_str(), mark[1].as_f64()) else {
                continue;
            };
            let Some(i) = PHASES.iter().position(|(s, _)| *s == step) else {
                continue;
            };
            if run == 0 {
                order.push(i);
            }
            per_step[i].push((at - before).max(0.0));
            before = at;
        }
    }
    let mut startup = Vec::new();
    for _ in 0..runs {
        let child = Command::new(bin)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| die(&format!("run {}: {e}", bin.display())));
        let used = wait_with_rusage(child);
        if !used.ok {
            die("certsmith --version failed");
        }
        startup.push(used.cpu.as_secs_f64() * 1000.0);
    }

    println!();
    println!(
        "where the CPU of one issuance goes (`certsmith issue` above: {:.1} ms), medians of {runs}:",
        issue_cpu * 1000.0
    );
    let line = |what: &str, ms: f64| println!("  {ms:>7.3} ms  {what}");
    line(
        "process start-up (`certsmith --version`: exec, dynamic linking, arguments)",
        median(startup),
    );
    let mut total = 0.0;
    for i in order {
        let ms = median(std::mem::take(&mut per_step[i]));
        total += ms;
        line(PHASES[i].1, ms);
    }
    println!(
        "  {total:>7.3} ms  in all after start-up (the engine API, as `certsmith issue` uses it)"
    );

    let ops = operations(pebble);
    println!("CPU per operation (one thread, many times):");
    for (what, ms) in ops {
        println!("  {:>7.1} µs  {what}", ms * 1000.0);
    }
}

/// The CPU of one `op` on this thread: `n` runs, the median of five
/// rounds.
fn per_op(n: u32, mut op: impl FnMut()) -> f64 {
    let rounds = (0..5)
        .map(|_| {
            let before = rusage_cpu(libc::RUSAGE_THREAD);
            for _ in 0..n {
                op();
            }
            (rusage_cpu(libc::RUSAGE_THREAD).saturating_sub(before)).as_secs_f64() * 1000.0
                / f64::from(n)
        })
        .collect();
    median(rounds)
}

/// The operations every issuance repeats, with their CPU (ms) each.
fn operations(pebble: &Pebble) -> Vec<(String, f64)> {
    let domains = vec!["op.bench.test".to_owned()];
    let key_and_csr = per_op(50, || {
        keys::key_and_csr(KeyType::EcP256, &domains).unwrap_or_else(|e| die(&e.to_string()));
    });

    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signer = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap_or_else(|e| die(&format!("P-256 key: {e}")));
    // About the size of a JWS's signing input (protected header and
    // payload, base64url).
    let input = [b'a'; 400];
    let signature = per_op(500, || {
        signer
            .sign(&rng, &input)
            .unwrap_or_else(|e| die(&format!("sign: {e}")));
    });

    let order = br#"{"status":"ready","expires":"2026-12-05T10:00:00Z","identifiers":[{"type":"dns","value":"op.bench.test"}],"authorizations":["https://127.0.0.1:14000/authZ/aVeryLongRandomTokenOfPebbleXyZ"],"finalize":"https://127.0.0.1:14000/finalize-order/anotherLongRandomTokenOfPebble"}"#;
    let json = per_op(2000, || {
        let v: serde_json::Value =
            serde_json::from_slice(order).unwrap_or_else(|e| die(&e.to_string()));
        std::hint::black_box(v);
    });

    // A handshake: a fresh client's first request minus a request on a
    // connection already open; on a runtime of this thread alone.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    let ca = reqwest::Certificate::from_pem(pebble.ca_cert_pem().as_bytes())
        .unwrap_or_else(|e| die(&format!("Pebble's CA certificate: {e}")));
    let url = pebble.directory_url();
    let client = || {
        reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .build()
            .unwrap_or_else(|e| die(&format!("HTTP client: {e}")))
    };
    let get = |c: &reqwest::Client| {
        runtime.block_on(async {
            let rsp = c
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| die(&format!("GET {url}: {e}")));
            std::hint::black_box(rsp.bytes().await.unwrap_or_default());
        });
    };
    // Clients built beforehand, so that a first request is the handshake
    // and the request alone.
    let mut unused: Vec<reqwest::Client> = (0..5 * 10).map(|_| client()).collect();
    let first = per_op(10, || {
        if let Some(c) = unused.pop() {
            get(&c);
        }
    });
    let warm_client = client();
    get(&warm_client);
    let warm = per_op(20, || get(&warm_client));
    let built = per_op(10, || {
        std::hint::black_box(client());
    });

    vec![
        (
            "TLS handshake with Pebble (a new client's first request, less a request on an open connection)".to_owned(),
            (first - warm).max(0.0),
        ),
        ("an HTTPS request on an open connection (GET)".to_owned(), warm),
        (
            "building an HTTPS client (it loads the system's root certificates)".to_owned(),
            built,
        ),
        ("P-256 certificate key and its CSR".to_owned(), key_and_csr),
        (
            "ES256 signature (the JWS of every request to the CA)".to_owned(),
            signature,
        ),
        ("parsing an order (JSON)".to_owned(), json),
    ]
}
