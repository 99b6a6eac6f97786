//! A CA that fails now and then (docs/design.md §7): Pebble behind the
//! harness's fault-injecting proxy ([`FaultProxy`]). Every ACME step of an
//! issuance is faulted once with each kind of fault — HTTP 500, 503 with
//! `Retry-After`, a reset connection, a stalled one — and `certsmith issue`
//! must still end with a certificate; a challenge-ready request sent again
//! after a lost answer and refused because the first one was taken is no
//! failure; a challenge-ready request the CA answered only after the
//! validation had failed is reported as a failed validation, while one it
//! refused with the challenge still pending stays a refusal; 5 % random
//! faults over 50 issuances must still give 50
//! certificates; a CA whose directory answers 503 is
//! reported as unavailable, not as a wrong URL.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use certsmith_core::acme::{ATTEMPT_TIMEOUT_ENV, AccountOptions, AcmeClient};
use certsmith_core::engine::{CertRequest, Engine, EngineOptions};
use certsmith_core::identifiers;
use certsmith_core::keys::KeyType;
use certsmith_core::plugin::{ConfigSources, PluginHost, SearchPath};
use certsmith_core::progress::Progress;
use certsmith_core::store::Store;
use certsmith_tests::fault_proxy::{Fault, FaultProxy, RequestKind};
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};
use serde_json::Value;

/// The attempt timeout given to certsmith in the stall tests: a stalled
/// request is abandoned after this (the proxy stalls for 30 s).
const STALL_ATTEMPT_TIMEOUT_MS: &str = "1500";

/// Pebble without random nonce rejection (a fault is what each test
/// injects, nothing else), and every authorization validated afresh.
fn pebble() -> Pebble {
    Pebble::start(PebbleOpts {
        nonce_reject_percent: Some(0),
        env: vec![("PEBBLE_AUTHZREUSE".into(), "0".into())],
        ..PebbleOpts::default()
    })
    .expect("start Pebble")
}

/// `certsmith issue -d <domain>` through `proxy` into `state`, with the
/// standalone solver where Pebble's VA connects.
fn issue(
    pebble: &Pebble,
    proxy: &FaultProxy,
    state: &Path,
    domain: &str,
    env: &[(&str, &str)],
) -> Output {
    issue_listening(pebble.http_port(), proxy, state, domain, env)
}

/// [`issue`] with the standalone solver on `127.0.0.1:port`.
fn issue_listening(
    port: u16,
    proxy: &FaultProxy,
    state: &Path,
    domain: &str,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(["issue", "--server", &proxy.directory_url(), "--ca-cert"])
        .arg(proxy.ca_bundle_path())
        .args(["--agree-tos", "--output", "json", "-d", domain])
        .args(["--solver", "standalone", "--solver-opt"])
        .arg(format!("listen=127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state)
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove("CERTSMITH_EAB_KID")
        .env_remove("CERTSMITH_EAB_HMAC_KEY")
        .env_remove(ATTEMPT_TIMEOUT_ENV)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run certsmith")
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The certificate a successful run stored: its JSON result, and the PEM
/// at `cert_path` names `domain`.
fn stored_cert(o: &Output, domain: &str) -> Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", describe(o)));
    let cert = PathBuf::from(v["cert_path"].as_str().expect("cert_path"));
    let pem = std::fs::read_to_string(&cert).expect("the certificate is in the store");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(v["domains"][0], domain, "{v}");
    v
}

/// Each step of an issuance faulted once with `fault`: every run exits 0
/// with a certificate in the store, and the fault was injected where asked.
fn each_step_faulted_once(fault: Fault, tag: &str, env: &[(&str, &str)]) {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    let mut serials = BTreeSet::new();
    for (i, kind) in RequestKind::ORDER_STEPS.iter().enumerate() {
        // A fresh state directory: the directory, a nonce and the account
        // are requested by every run.
        let state = tmp.path().join(format!("state-{i}"));
        let domain = format!("{tag}{i}.faults.test");
        proxy.fault_nth(*kind, proxy.count(*kind) + 1, fault);
        let before = proxy.injected().len();
        let o = issue(&pebble, &proxy, &state, &domain, env);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{kind:?} faulted with {fault:?}: {}",
            describe(&o)
        );
        let v = stored_cert(&o, &domain);
        assert!(
            proxy.injected()[before..].contains(&(*kind, fault)),
            "{kind:?}: the fault was not injected: {:?}, counts {:?}",
            proxy.injected(),
            proxy.counts()
        );
        serials.insert(v["serial"].as_str().expect("serial").to_owned());
    }
    assert_eq!(serials.len(), RequestKind::ORDER_STEPS.len());
    assert!(proxy.errors().is_empty(), "{:?}", proxy.errors());
}

#[test]
fn each_step_answered_500_once_still_issues() {
    each_step_faulted_once(Fault::Status500, "e500-", &[]);
}

#[test]
fn each_step_answered_503_with_retry_after_once_still_issues() {
    each_step_faulted_once(
        Fault::Status503 {
            retry_after_secs: 1,
        },
        "e503-",
        &[],
    );
}

#[test]
fn each_step_reset_once_still_issues() {
    each_step_faulted_once(Fault::Reset, "reset-", &[]);
}

#[test]
fn each_step_stalled_30s_once_still_issues() {
    each_step_faulted_once(
        Fault::Stall(Duration::from_secs(30)),
        "stall-",
        &[(ATTEMPT_TIMEOUT_ENV, STALL_ATTEMPT_TIMEOUT_MS)],
    );
}

/// A CA that validates before it answers a challenge's ready request
/// answers with the challenge already `invalid` and the validation's
/// problem (Pebble 2.4 does when its VA wins a race against its own
/// handler; the proxy makes the race's outcome certain). That is a failed
/// validation and is reported as one, with the name, the challenge type,
/// the CA's problem and the hint, not as a refusal to start it.
#[test]
fn a_challenge_answered_after_its_validation_failed_is_a_failed_validation() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    // Pebble's VA is done within milliseconds (the connection is refused);
    // two seconds leave room for a busy machine.
    let fault = Fault::ValidatedBeforeAnswer(Duration::from_secs(2));
    proxy.fault_nth(RequestKind::Challenge, 1, fault);
    let tmp = TempState::new().expect("temp dir");
    // The solver listens where Pebble's VA does not connect: the validation
    // fails at once.
    let unheard = certsmith_tests::free_port();
    let domain = "unheard.faults.test";
    let o = issue_listening(
        unheard,
        &proxy,
        &tmp.path().join("state"),
        domain,
        &[("CERTSMITH_VERBOSE", "1")],
    );
    assert_eq!(o.status.code(), Some(4), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("the CA did not validate {domain} (http-01)")),
        "{}",
        describe(&o)
    );
    assert!(
        !err.contains("refused to start the validation"),
        "{}",
        describe(&o)
    );
    assert!(
        err.contains("hint: the CA must reach the name over the Internet"),
        "{}",
        describe(&o)
    );
    assert!(
        err.contains(
            "the CA refused the challenge ready request, but the challenge is already Invalid"
        ),
        "the refusal was not settled by reading the challenge, so this test did not show what it is for: {}",
        describe(&o)
    );
    assert_eq!(
        proxy.injected(),
        [(RequestKind::Challenge, fault)],
        "the ready request's answer was rewritten, and nothing else"
    );
    assert!(proxy.errors().is_empty(), "{:?}", proxy.errors());
}

/// A challenge-ready request the CA refuses while the challenge stays
/// pending (here a rate limit, answered by the proxy without forwarding)
/// is a refusal, reported as one: reading the challenge does not turn it
/// into a success.
#[test]
fn a_challenge_ready_request_refused_with_the_challenge_pending_stays_refused() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let fault = Fault::RateLimited {
        retry_after_secs: 3600,
        detail: "too many challenge updates (fault injected by the test proxy)",
    };
    proxy.fault_every(RequestKind::Challenge, fault);
    let tmp = TempState::new().expect("temp dir");
    let domain = "refused.faults.test";
    let o = issue(&pebble, &proxy, &tmp.path().join("state"), domain, &[]);
    assert_eq!(o.status.code(), Some(5), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("too many challenge updates"),
        "the CA's refusal is what is reported: {}",
        describe(&o)
    );
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", describe(&o)));
    assert_eq!(v["error"]["class"], "rate_limited", "{v}");
    assert_eq!(
        proxy.count(RequestKind::Challenge),
        1,
        "a state change the CA refused for its rate is not sent again"
    );
}

/// The answer to the challenge's ready request is lost (a 500 after the CA
/// took it). Pebble 2.4 shows a challenge pending while it validates, so the
/// authorization read right after still says pending and certsmith sends the
/// request again; that resend reaches the CA late, when the challenge is
/// already valid, and is refused as "only status pending". The refusal of a
/// resend must be read as the first request having been taken: the run
/// issues. Pebble's validation is held for 1 s by a relay in front of the
/// solver, and the resend for 3 s, so this order of events is certain.
#[test]
fn a_resent_challenge_ready_refused_because_the_first_was_taken_still_issues() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    let solver_port = certsmith_tests::free_port();
    let relay = TcpListener::bind((Ipv4Addr::LOCALHOST, pebble.http_port())).expect("relay port");
    std::thread::spawn(move || {
        for client in relay.incoming().flatten() {
            std::thread::spawn(move || relay_late(client, solver_port, Duration::from_secs(1)));
        }
    });
    proxy.fault_nth(RequestKind::Challenge, 1, Fault::Status500);
    proxy.fault_nth(
        RequestKind::Challenge,
        2,
        Fault::Delay(Duration::from_secs(3)),
    );
    let domain = "resent-ready.faults.test";
    let o = issue_listening(
        solver_port,
        &proxy,
        &tmp.path().join("state"),
        domain,
        &[("CERTSMITH_VERBOSE", "1")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    stored_cert(&o, domain);
    assert_eq!(
        proxy.injected(),
        [
            (RequestKind::Challenge, Fault::Status500),
            (RequestKind::Challenge, Fault::Delay(Duration::from_secs(3)))
        ],
        "both faults, and only they, were injected"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "the resent challenge ready request was refused because the first one had been taken"
        ),
        "the resend was not refused, so this test did not show what it is for: {}",
        describe(&o)
    );
}

/// Copies one connection to `127.0.0.1:port` both ways after `delay`: a
/// challenge server that is slow to answer the CA.
fn relay_late(client: TcpStream, port: u16, delay: Duration) {
    std::thread::sleep(delay);
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return;
    };
    let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    let _ = std::io::copy(&mut s_in, &mut c_out);
    let _ = c_out.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// A 500 on the certificate download (twice in a row) does not lose the
/// certificate: the download is sent again, and no second order is placed.
#[test]
fn a_500_on_the_download_keeps_the_certificate_of_the_same_order() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    proxy.fault_nth(RequestKind::Certificate, 1, Fault::Status500);
    proxy.fault_nth(RequestKind::Certificate, 2, Fault::Status500);
    let o = issue(
        &pebble,
        &proxy,
        &tmp.path().join("state"),
        "dl.faults.test",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    stored_cert(&o, "dl.faults.test");
    assert_eq!(
        proxy.count(RequestKind::NewOrder),
        1,
        "{:?}",
        proxy.counts()
    );
    assert!(
        proxy.count(RequestKind::Certificate) >= 3,
        "{:?}",
        proxy.counts()
    );
}

/// A directory that answers 503 every time: the run fails as a network
/// failure (exit 7) whose message says the CA is unavailable and names the
/// status — not that the URL is no ACME directory.
#[test]
fn a_directory_answering_503_is_reported_as_an_unavailable_ca() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    proxy.fault_every(
        RequestKind::Directory,
        Fault::Status503 {
            retry_after_secs: 0,
        },
    );
    let o = issue(
        &pebble,
        &proxy,
        &tmp.path().join("state"),
        "down.faults.test",
        &[],
    );
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        all.contains("the CA is unavailable (HTTP 503"),
        "{}",
        describe(&o)
    );
    assert!(
        !all.contains("is this the URL of an ACME directory"),
        "{all}"
    );
    // Retried with the waits it was told, then given up.
    assert_eq!(
        proxy.count(RequestKind::Directory),
        certsmith_core::acme::MAX_ATTEMPTS as usize
    );
    // While retrying it said so.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("the CA is unavailable (HTTP 503") && stderr.contains("retrying after"),
        "{stderr}"
    );
    // A 404 is still a wrong URL.
    let o = Command::new(certsmith_bin())
        .args(["issue", "--server"])
        .arg(proxy.directory_url().replace("/dir", "/nothing-here"))
        .arg("--ca-cert")
        .arg(proxy.ca_bundle_path())
        .args([
            "--agree-tos",
            "-d",
            "x.faults.test",
            "--solver",
            "standalone",
        ])
        .arg("--state-dir")
        .arg(tmp.path().join("state-404"))
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("run certsmith");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("is this the URL of an ACME directory"),
        "{}",
        describe(&o)
    );
}

/// 5 % of every request faulted at random (500, 503 + Retry-After: 1, a
/// reset) over 50 certificates issued by one engine, 8 at a time (Pebble
/// stays far below its ~32 concurrent orders): all 50 are issued.
#[test]
fn five_percent_random_faults_over_fifty_issuances_give_fifty_certificates() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    proxy.fault_random(
        5.0,
        &[
            Fault::Status500,
            Fault::Status503 {
                retry_after_secs: 1,
            },
            Fault::Reset,
        ],
        0x5eed_0010,
    );
    let plugins = certsmith_bin()
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    let solver = PluginHost::discover(&SearchPath {
        dirs: vec![plugins],
        ..SearchPath::default()
    })
    .get("standalone")
    .unwrap_or_else(|e| panic!("{e}: run `cargo build --workspace` first"))
    .instantiate(&ConfigSources {
        cli: &[(
            "listen".to_owned(),
            format!("127.0.0.1:{}", pebble.http_port()),
        )],
        ..Default::default()
    })
    .expect("configure standalone");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (results, stats) = runtime.block_on(async {
        let client =
            AcmeClient::new(&proxy.directory_url(), Some(proxy.ca_bundle_path())).expect("client");
        let engine = Engine::connect(
            client.clone(),
            Store::open(tmp.path().join("state")).expect("store"),
            AccountOptions {
                agree_tos: true,
                ..Default::default()
            },
            Progress::none(),
            EngineOptions::default(),
        )
        .await
        .expect("connect through the faulty proxy");
        let requests = (0..50)
            .map(|i| {
                let name = format!("rnd{i}.faults.test");
                let domains =
                    identifiers::parse_domains(std::slice::from_ref(&name)).expect("valid name");
                CertRequest::new(name, domains, solver.clone(), KeyType::EcP256)
            })
            .collect();
        (engine.issue_all(requests, 8).await, client.stats())
    });
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    let serials: BTreeSet<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|c| c.serial.as_str()))
        .collect();
    assert_eq!(serials.len(), 50);
    for r in results.iter().flatten() {
        assert!(r.cert_path.is_file(), "{}", r.cert_path.display());
    }
    // Faults were injected, and certsmith retried.
    let injected = proxy.injected();
    assert!(injected.len() >= 5, "{injected:?}");
    assert!(stats.retries > 0, "{stats:?}");
    runtime.shutdown_background();
}

// ------------------------------------------- rate limits, kept orders ---

/// A `run` through `proxy` of `names` (standalone solver), one order at a
/// time, JSON out.
fn run_batch(pebble: &Pebble, proxy: &FaultProxy, state: &Path, names: &[&str]) -> Output {
    let mut text = format!(
        "[defaults]\nserver = \"{}\"\nca_cert = \"{}\"\nagree_tos = true\nstate_dir = \"{}\"\nconcurrency = 1\n\n[solvers.standalone]\nlisten = [\"127.0.0.1:{}\"]\n",
        proxy.directory_url(),
        proxy.ca_bundle_path().display(),
        state.display(),
        pebble.http_port()
    );
    for n in names {
        text.push_str(&format!(
            "\n[[certificate]]\nname = \"{n}\"\ndomains = [\"{n}\"]\nsolver = \"standalone\"\n"
        ));
    }
    let config = state.with_extension("toml");
    std::fs::create_dir_all(state).expect("state dir");
    std::fs::write(&config, text).expect("write config");
    Command::new(certsmith_bin())
        .args(["run", "--output", "json", "--config"])
        .arg(&config)
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove(ATTEMPT_TIMEOUT_ENV)
        .stdin(Stdio::null())
        .output()
        .expect("run certsmith")
}

/// The per-certificate JSON lines of a batch, by name.
fn batch_results(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("name").is_some())
        .collect()
}

/// A `rateLimited` answer to a new order is remembered: the batch's other
/// orders are not sent, a later run sends none either until the time, and
/// `list` shows it; the exit class is "rate limited" (5) with the time.
#[test]
fn a_rate_limit_is_remembered_and_no_order_is_sent_until_it_lifts() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    let state = tmp.path().join("state");
    let names = ["rl1.faults.test", "rl2.faults.test", "rl3.other.test"];
    // One certificate stored before the limit (listed with it afterwards).
    let o = issue(&pebble, &proxy, &state, "rl0.faults.test", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let before = proxy.count(RequestKind::NewOrder);
    proxy.fault_nth(
        RequestKind::NewOrder,
        before + 1,
        Fault::RateLimited {
            retry_after_secs: 3600,
            detail: "too many new orders recently",
        },
    );
    let o = run_batch(&pebble, &proxy, &state, &names);
    assert_eq!(o.status.code(), Some(5), "{}", describe(&o));
    assert_eq!(
        proxy.count(RequestKind::NewOrder),
        before + 1,
        "one new order reached the CA: {:?}",
        proxy.counts()
    );
    let results = batch_results(&o);
    assert_eq!(results.len(), 3, "{}", describe(&o));
    for r in &results {
        assert_eq!(r["action"], "failed", "{r}");
        assert_eq!(r["error"]["class"], "rate_limited", "{r}");
    }
    let skipped = results
        .iter()
        .filter(|r| {
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not sent"))
        })
        .count();
    assert_eq!(
        skipped,
        2,
        "the other two were never sent: {}",
        describe(&o)
    );
    assert!(state.join("rate-limits.json").is_file());

    // A later run: still nothing sent.
    let o = run_batch(&pebble, &proxy, &state, &names);
    assert_eq!(o.status.code(), Some(5), "{}", describe(&o));
    assert_eq!(
        proxy.count(RequestKind::NewOrder),
        before + 1,
        "{:?}",
        proxy.counts()
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("rate-limited"), "{stderr}");

    // `list` shows the limit on what it covers (a limit on new orders: all).
    let out = Command::new(certsmith_bin())
        .args(["list", "--output", "json", "--state-dir"])
        .arg(&state)
        .output()
        .expect("run certsmith list");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(listed["name"], "rl0.faults.test", "{listed}");
    assert!(listed["rate_limited_until"].is_string(), "{listed}");
}

/// The certificate download fails on every attempt after the CA issued:
/// the run fails (network), keeps the order, and the next run downloads
/// that certificate, sending no new order and no second finalize.
#[test]
fn a_certificate_the_ca_issued_is_downloaded_by_the_next_run_not_ordered_again() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    let state = tmp.path().join("state");
    let domain = "kept.faults.test";
    // Every attempt of the first run's download (a request is sent at most
    // six times).
    for n in 1..=6 {
        proxy.fault_nth(RequestKind::Certificate, n, Fault::Status500);
    }
    let o = issue(&pebble, &proxy, &state, domain, &[]);
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    assert!(
        state
            .join("certs")
            .join(domain)
            .join("pending-order.json")
            .is_file(),
        "the finalized order is kept"
    );
    let (orders, finalizes) = (
        proxy.count(RequestKind::NewOrder),
        proxy.count(RequestKind::Finalize),
    );
    let o = issue(&pebble, &proxy, &state, domain, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    stored_cert(&o, domain);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("picked up order"), "{stderr}");
    assert_eq!(proxy.count(RequestKind::NewOrder), orders, "no new order");
    assert_eq!(proxy.count(RequestKind::Finalize), finalizes, "no finalize");
    assert_eq!(
        std::fs::metadata(state.join("certs").join(domain).join("pending-order.json"))
            .map(|m| m.len())
            .ok(),
        Some(0),
        "the stored certificate's order is settled: its record is emptied"
    );
}

/// A run killed while it waits for the certificate download (the CA has
/// issued): the next run downloads that certificate instead of ordering.
#[test]
fn a_run_killed_after_finalize_leaves_an_order_the_next_run_completes() {
    let pebble = pebble();
    let proxy = FaultProxy::start(&pebble).expect("fault proxy");
    let tmp = TempState::new().expect("temp dir");
    let state = tmp.path().join("state");
    let domain = "killed.faults.test";
    proxy.fault_nth(
        RequestKind::Certificate,
        1,
        Fault::Stall(Duration::from_secs(60)),
    );
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(["issue", "--server", &proxy.directory_url(), "--ca-cert"])
        .arg(proxy.ca_bundle_path())
        .args([
            "--agree-tos",
            "-d",
            domain,
            "--solver",
            "standalone",
            "--solver-opt",
        ])
        .arg(format!("listen=127.0.0.1:{}", pebble.http_port()))
        .arg("--state-dir")
        .arg(&state)
        .env_remove(ATTEMPT_TIMEOUT_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn certsmith");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.count(RequestKind::Certificate) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never asked for its certificate: {:?}",
            proxy.counts()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(
        state
            .join("certs")
            .join(domain)
            .join("pending-order.json")
            .is_file()
    );
    let orders = proxy.count(RequestKind::NewOrder);
    let o = issue(&pebble, &proxy, &state, domain, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    stored_cert(&o, domain);
    assert_eq!(proxy.count(RequestKind::NewOrder), orders, "no new order");
}
