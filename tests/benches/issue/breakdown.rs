//! Where the CPU of one issuance goes (issue 17: "find where it goes …
//! and say it in the benchmark output").
//!
//! Two views, printed after the side by side with lego and certbot:
//!
//! * **Steps.** A child process (this executable with `--breakdown`)
//!   issues one certificate from an empty state directory as `certsmith
//!   issue` sets the engine up (plugin host, client, store, the cleanup
//!   journal, `Engine::connect`, one order; without the CLI's own work:
//!   arguments, configuration, the run lease, the summary), and reads its
//!   own CPU time (`CLOCK_PROCESS_CPUTIME_ID`: every thread, the runtime's workers, the
//!   blocking pool and the plugin's server) at the end of each of its own
//!   steps and at each progress event the engine reports. The reading is
//!   taken by a thread that waits for the events, so it lags each event by
//!   the microseconds that thread takes to wake: a little of the next
//!   step's CPU can land in the one before. Process start-up is `certsmith
//!   --version` (exec, dynamic linking, argument parsing), timed by
//!   `wait4`.
//! * **Operations.** The ingredients every issuance repeats, each run
//!   many times on one thread (`CLOCK_THREAD_CPUTIME_ID`) for its CPU per
//!   operation: a TLS handshake with Pebble, a request on an open
//!   connection, building certsmith's HTTPS client, a P-256 key and its
//!   CSR, an ES256 signature (one per request: a JWS), parsing an order
//!   (JSON).
//!
//! Medians of `--runs`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certsmith_core::acme::AcmeClient;
use certsmith_core::engine::CertRequest;
use certsmith_core::identifiers;
use certsmith_core::keys::{self, KeyType};
use certsmith_core::progress::{Progress, ProgressEvent};
use certsmith_core::store::Store;
use certsmith_tests::Pebble;

use super::common::{die, flag, median};
use super::{
    child_command, cli_runtime, connect, output_within, run_timeout, standalone, wait_with_rusage,
};

/// The steps of one issuance, each named by the event (or step of the
/// child's own) that ends it, with what it holds, in the order they end.
const STEPS: &[(&str, &str)] = &[
    (
        "plugin",
        "loading the standalone plugin, starting its HTTP server",
    ),
    ("runtime", "async runtime (two worker threads)"),
    (
        "client",
        "HTTP client (TLS configuration: the system's root certificates and Pebble's), store opened",
    ),
    (
        "account_ready",
        "directory (TLS handshake), account key, newAccount, account stored",
    ),
    (
        "order_created",
        "pending order looked up, newOrder, its authorization fetched; the certificate key and CSR made meanwhile",
    ),
    (
        "challenge_presented",
        "key authorization, challenge presented (standalone is in_process: no journal entry, no name lock)",
    ),
    ("validating", "challenge ready"),
    (
        "valid",
        "validation: polls, the plugin answering Pebble's GETs",
    ),
    (
        "after_valid",
        "pending order recorded (store) and, at the same time, challenge removed",
    ),
    (
        "saved",
        "finalize, polls, certificate download, chain checked, stored (files written and synced)",
    ),
    (
        "end",
        "the rest: results returned, plugin and runtime stopped",
    ),
];

/// The step a progress event ends, by its name in [`STEPS`]; `None` for
/// events that end none. The pending order is recorded (`Finalizing`) while
/// the challenge is removed (`CleanedUp`), in either order: the step ends
/// at the later of the two.
fn step_of(event: &ProgressEvent) -> Option<&'static str> {
    Some(match event {
        ProgressEvent::AccountReady { .. } => "account_ready",
        ProgressEvent::OrderCreated { .. } => "order_created",
        ProgressEvent::ChallengePresented { .. } => "challenge_presented",
        ProgressEvent::Validating { .. } => "validating",
        ProgressEvent::Valid { .. } => "valid",
        ProgressEvent::Finalizing { .. }
        | ProgressEvent::CleanedUp { .. }
        | ProgressEvent::CleanupFailed { .. } => "after_valid",
        ProgressEvent::Saved { .. } => "saved",
        _ => return None,
    })
}

/// Records that `step` ended at `at` (process CPU): a step that ends twice
/// (see [`step_of`]) keeps the later reading.
fn record(marks: &Mutex<Vec<(&'static str, Duration)>>, step: &'static str, at: Duration) {
    if let Ok(mut m) = marks.lock() {
        match m.iter_mut().find(|(s, _)| *s == step) {
            Some(mark) => mark.1 = at,
            None => m.push((step, at)),
        }
    }
}

/// `--breakdown`: issues one certificate as `certsmith issue` sets the
/// engine up and prints, as a JSON array of `[step, ms]` in the order they
/// ended, the process CPU at the end of each step of [`STEPS`], counted
/// from this function's start.
pub(super) fn child(args: &[String]) {
    let get = |name: &str| flag(args, name).unwrap_or_else(|| die(&format!("{name} missing")));
    let start = process_cpu();
    let marks: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
    let mark = |step: &'static str| record(&marks, step, process_cpu().saturating_sub(start));

    let (host, solver) = standalone(get("--plugin-dir").into(), get("--listen"));
    mark("plugin");

    let runtime = cli_runtime();
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
                if let Some(step) = step_of(&event) {
                    record(&marks, step, process_cpu().saturating_sub(start));
                }
            }
        })
    };
    let name = get("--name");
    runtime.block_on(async {
        let engine = connect(client, store, Progress::new(tx)).await;
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
    let tmp = tempfile::tempdir().unwrap_or_else(|e| die(&e.to_string()));
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
    // The steps in the order the first run reported them; every run must
    // report the same, or the medians would mix different steps.
    let mut order: Vec<usize> = Vec::new();
    for run in 0..runs {
        let child = child_command(
            "--breakdown",
            pebble,
            &tmp.path().join(format!("state-{run}")),
            plugins,
        )
        .args(["--name", &format!("steps{run}.bench.test")])
        .spawn()
        .unwrap_or_else(|e| die(&format!("run the breakdown child: {e}")));
        let out = output_within(child, run_timeout(1), pebble).unwrap_or_else(|stall| {
            die(&format!(
                "the breakdown run did not end (Pebble's log: {}): {}",
                pebble.log_path().display(),
                stall.stderr
            ))
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            die(&format!(
                "the breakdown run failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        });
        // Each step's own CPU: its reading minus the one before it.
        let mut seen = Vec::new();
        let mut before = 0.0;
        for mark in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let (Some(step), Some(at)) = (mark[0].as_str(), mark[1].as_f64()) else {
                continue;
            };
            let Some(i) = STEPS.iter().position(|(s, _)| *s == step) else {
                die(&format!(
                    "the breakdown run reported an unknown step {step}"
                ));
            };
            seen.push(i);
            per_step[i].push((at - before).max(0.0));
            before = at;
        }
        if run == 0 {
            order = seen;
        } else if seen != order {
            die(&format!(
                "the breakdown runs reported their steps in different orders ({order:?}, then {seen:?}): their medians would mix different steps"
            ));
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
        line(STEPS[i].1, ms);
    }
    println!(
        "  {total:>7.3} ms  in all after start-up (the engine, set up as `certsmith issue` sets it up)"
    );

    let ops = operations(pebble);
    println!("CPU per operation (one thread, many times):");
    for (what, ms) in ops {
        println!("  {:>7.1} µs  {what}", ms * 1000.0);
    }
}

/// CPU time so far on `clock` (`CLOCK_THREAD_CPUTIME_ID`: this thread's,
/// `CLOCK_PROCESS_CPUTIME_ID`: every thread's), to the nanosecond. Not
/// getrusage: the kernel splits that into user and system time and never
/// lets either go back, so a short interval can read as nothing at all.
fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes for the duration of the call, and
    // `clock` is one of the two constant clock ids every Linux has.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        die("clock_gettime of a CPU clock failed");
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Every thread's CPU time so far (see [`cpu_clock`]).
fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The CPU of one `op` on this thread: `n` runs, the median of five
/// rounds.
fn per_op(n: u32, mut op: impl FnMut()) -> f64 {
    let rounds = (0..5)
        .map(|_| {
            let before = cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
            for _ in 0..n {
                op();
            }
            cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
                .saturating_sub(before)
                .as_secs_f64()
                * 1000.0
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
            .tls_certs_merge([ca.clone()])
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
    // As certsmith builds its client: Pebble's CA read from its file and
    // merged into the system's roots, timeouts, no redirects.
    let server = pebble.directory_url();
    let built = per_op(10, || {
        let c = AcmeClient::new(&server, Some(pebble.ca_cert_path()))
            .unwrap_or_else(|e| die(&e.to_string()));
        std::hint::black_box(c);
    });

    vec![
        (
            "TLS handshake with Pebble (a new client's first request, less a request on an open connection)".to_owned(),
            (first - warm).max(0.0),
        ),
        ("an HTTPS request on an open connection (GET)".to_owned(), warm),
        (
            "building certsmith's HTTPS client (it loads the system's root certificates)".to_owned(),
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
