//! The certificate lifecycle end to end, against a real Pebble: `run
//! --config` (idempotence, changes, renewal margins, partial failure),
//! renewal by ARI through a stand-in proxy, `renew`, `revoke` with either
//! key, `list`, account rollover and deactivation, deploy hooks, and bad
//! config files. Always the built binary, run as cron, systemd or a CI job
//! would run it: arguments, exit code, stdout JSON lines, files on disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use certsmith_tests::ari_proxy::AriProxy;
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};
use serde_json::Value;

/// 90 days, like Let's Encrypt (Pebble's default is five years).
const VALIDITY: u64 = 90 * 86_400;

fn pebble() -> Pebble {
    Pebble::start(PebbleOpts {
        certificate_validity_period: Some(VALIDITY),
        ..PebbleOpts::default()
    })
    .expect("start Pebble")
}

/// A finished certsmith run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Every JSON line of stdout.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", self.describe()))
            })
            .collect()
    }

    /// The per-certificate lines of `run`/`renew --output json`, by name.
    fn results(&self) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v.get("name").is_some())
            .collect()
    }

    fn result(&self, name: &str) -> Value {
        self.results()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no result for {name}\n{}", self.describe()))
    }

    fn summary(&self) -> Value {
        self.json_lines()
            .into_iter()
            .find(|v| v.get("summary").is_some())
            .unwrap_or_else(|| panic!("no summary\n{}", self.describe()))
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn certsmith(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(args)
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove("CERTSMITH_EAB_KID")
        .env_remove("CERTSMITH_EAB_HMAC_KEY")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("run certsmith"))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `[defaults]` for `pebble` (or a proxy in front of it) and `state`.
fn defaults(server: &str, ca_cert: &Path, state: &Path, pebble: &Pebble, extra: &str) -> String {
    let cts = pebble.challtestsrv().expect("Pebble's challtestsrv");
    format!(
        r#"[defaults]
server = "{server}"
ca_cert = "{}"
email = "ops@example.com"
agree_tos = true
state_dir = "{}"
concurrency = 2
dns_resolvers = ["{dns}"]
propagation_servers = ["{dns}"]
propagation_timeout = "30s"
{extra}

[solvers.standalone]
listen = ["127.0.0.1:{http}"]

[solvers.challtestsrv]
url = "{mgmt}"
"#,
        p(ca_cert),
        p(state),
        dns = cts.dns_addr(),
        http = pebble.http_port(),
        mgmt = cts.mgmt_url(),
    )
}

fn pebble_defaults(pebble: &Pebble, state: &Path, extra: &str) -> String {
    defaults(
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        state,
        pebble,
        extra,
    )
}

fn cert_entry(name: &str, domains: &[&str], solver: &str, extra: &str) -> String {
    let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "\n[[certificate]]\nname = \"{name}\"\ndomains = [{}]\nsolver = \"{solver}\"\n{extra}\n",
        list.join(", ")
    )
}

fn write_config(state: &TempState, text: &str) -> PathBuf {
    let path = state.file("certsmith.toml");
    fs::write(&path, text).expect("write config");
    path
}

fn run_config(config: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", "--config", p(config), "--output", "json"];
    args.extend_from_slice(extra);
    certsmith(&args, &[])
}

fn list(state: &Path) -> Vec<Value> {
    let r = certsmith(&["list", "--state-dir", p(state), "--output", "json"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    r.json_lines()
}

fn listed(state: &Path, name: &str) -> Value {
    list(state)
        .into_iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
}

/// The SANs of a PEM certificate, via openssl.
fn sans(cert: &Path) -> Vec<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()
        .expect("run openssl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<String> = text
        .split([',', '\n'])
        .filter_map(|s| s.trim().strip_prefix("DNS:").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The lifetime of `name`'s current certificate in seconds, returned once
/// the certificate is more than a second old.
fn lifetime_secs(state: &Path, name: &str) -> i64 {
    let pem = fs::read_to_string(current(state, name).join("cert.pem")).expect("cert.pem");
    let facts = certsmith_core::renewal::read_cert_pem(&pem, name).expect("a certificate");
    let older = facts.not_before + time::Duration::seconds(2);
    while time::OffsetDateTime::now_utc() < older {
        std::thread::sleep(Duration::from_millis(100));
    }
    (facts.not_after - facts.not_before).whole_seconds()
}

fn current(state: &Path, name: &str) -> PathBuf {
    state.join("certs").join(name).join("current")
}

fn lineage_text(state: &Path, name: &str) -> String {
    fs::read_to_string(state.join("certs").join(name).join("lineage.toml")).expect("lineage")
}

/// How many orders Pebble has created (requests it refused, e.g. for a
/// bad nonce, do not count).
fn orders_in_log(pebble: &Pebble) -> usize {
    fs::read_to_string(pebble.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Added order"))
        .count()
}

fn actions(run: &Run) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = run
        .results()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_owned(),
                r["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    out.sort();
    out
}

// ----------------------------------------------------------------- run ---

#[test]
fn run_issues_five_mixed_certificates_then_only_what_changed() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let certs = [
        ("web1", vec!["web1.test"], "standalone", ""),
        ("web2", vec!["web2.test", "www.web2.test"], "standalone", ""),
        (
            "web3",
            vec!["web3.test"],
            "standalone",
            "key_type = \"rsa2048\"",
        ),
        ("dns1", vec!["*.dns1.test", "dns1.test"], "challtestsrv", ""),
        ("dns2", vec!["dns2.test"], "challtestsrv", ""),
    ];
    let build = |over: &dyn Fn(&str) -> (Vec<&'static str>, &'static str)| {
        let mut text = pebble_defaults(&pebble, state.path(), "");
        for (name, domains, solver, extra) in &certs {
            let (d, e) = over(name);
            let domains: Vec<&str> = if d.is_empty() { domains.clone() } else { d };
            let extra = format!("{extra}\n{e}");
            text.push_str(&cert_entry(name, &domains, solver, &extra));
        }
        text
    };
    let config = write_config(&state, &build(&|_| (vec![], "")));
    let check = certsmith(&["config", "check", "--config", p(&config)], &[]);
    assert_eq!(check.code, Some(0), "{}", check.describe());
    assert!(
        check.stdout.contains("OK, 5 certificate(s)"),
        "{}",
        check.describe()
    );

    // 1. Everything is new: five orders, concurrently (two at a time).
    let first = run_config(&config, &[]);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    assert_eq!(
        actions(&first),
        pairs(&[
            ("dns1", "issued"),
            ("dns2", "issued"),
            ("web1", "issued"),
            ("web2", "issued"),
            ("web3", "issued"),
        ])
    );
    assert_eq!(first.summary()["summary"]["issued"], 5);
    for (name, domains, _, _) in &certs {
        let mut want: Vec<String> = domains.iter().map(|d| (*d).to_owned()).collect();
        want.sort();
        assert_eq!(
            sans(&current(state.path(), name).join("cert.pem")),
            want,
            "{name}"
        );
        let serial = first.result(name)["serial"]
            .as_str()
            .expect("serial")
            .to_owned();
        let status = pebble
            .cert_status_by_serial_blocking(&serial)
            .expect("Pebble")
            .expect("Pebble issued it");
        assert!(!status.is_revoked());
        // The schedule is recorded: 1/3 of 90 days before expiry.
        assert!(
            lineage_text(state.path(), name).contains("reason = \"expiry\""),
            "{name}: {}",
            lineage_text(state.path(), name)
        );
    }
    assert_eq!(orders_in_log(&pebble), 5, "one order per certificate");

    // 2. Right after: nothing is due, nothing is sent.
    let second = run_config(&config, &[]);
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert!(
        actions(&second).iter().all(|(_, a)| a == "skipped"),
        "{}",
        second.describe()
    );
    assert!(
        !second.stderr.contains("order created"),
        "{}",
        second.describe()
    );
    assert!(
        !second.stderr.contains("account"),
        "no account request either"
    );
    assert_eq!(orders_in_log(&pebble), 5, "the second run sent no order");
    let skipped = second.result("web1");
    assert!(
        skipped["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("not due until")),
        "{skipped}"
    );
    assert_eq!(skipped["renewal_reason"], "expiry");

    // 3. One certificate's domains change: only it is ordered again.
    let config = write_config(
        &state,
        &build(&|name| {
            if name == "web2" {
                (vec!["web2.test", "www.web2.test", "api.web2.test"], "")
            } else {
                (vec![], "")
            }
        }),
    );
    let third = run_config(&config, &[]);
    assert_eq!(third.code, Some(0), "{}", third.describe());
    assert_eq!(
        actions(&third),
        pairs(&[
            ("dns1", "skipped"),
            ("dns2", "skipped"),
            ("web1", "skipped"),
            ("web2", "issued"),
            ("web3", "skipped"),
        ])
    );
    assert!(
        third.result("web2")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("domains changed")),
        "{}",
        third.describe()
    );
    assert_eq!(
        sans(&current(state.path(), "web2").join("cert.pem")),
        ["api.web2.test", "web2.test", "www.web2.test"]
    );
    assert_eq!(third.result("web2")["version"], 2);
    assert_eq!(orders_in_log(&pebble), 6);

    // 4. A renew_before longer than the remaining lifetime: renewed. It
    // must be shorter than the lifetime (a longer one is ignored, see
    // ergonomics.rs): one second shorter, once the certificate is older
    // than that.
    let margin = format!("{}s", lifetime_secs(state.path(), "dns1") - 1);
    // `build` takes static text: leaked once, in a test.
    let renew_before: &'static str =
        Box::leak(format!("renew_before = \"{margin}\"").into_boxed_str());
    let config = write_config(
        &state,
        &build(&|name| match name {
            "web2" => (vec!["web2.test", "www.web2.test", "api.web2.test"], ""),
            "dns1" => (vec![], renew_before),
            _ => (vec![], ""),
        }),
    );
    let fourth = run_config(&config, &[]);
    assert_eq!(fourth.code, Some(0), "{}", fourth.describe());
    assert_eq!(
        actions(&fourth),
        pairs(&[
            ("dns1", "renewed"),
            ("dns2", "skipped"),
            ("web1", "skipped"),
            ("web2", "skipped"),
            ("web3", "skipped"),
        ])
    );
    let renewed = fourth.result("dns1");
    assert!(
        renewed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("renew_before")),
        "{renewed}"
    );
    assert_eq!(renewed["version"], 2);
    assert_eq!(
        sans(&current(state.path(), "dns1").join("cert.pem")),
        ["*.dns1.test", "dns1.test"]
    );

    // `list` agrees: dns1 is due again once a second old (its margin is
    // the lifetime less a second), the others are valid.
    lifetime_secs(state.path(), "dns1");
    let rows = list(state.path());
    assert_eq!(rows.len(), 5);
    for row in &rows {
        let want = if row["name"] == "dns1" {
            "due"
        } else {
            "valid"
        };
        assert_eq!(row["state"], want, "{row}");
        assert!(
            row["days_left"]
                .as_i64()
                .is_some_and(|d| (88..=90).contains(&d)),
            "{row}"
        );
        assert!(
            row["issuer"].as_str().is_some_and(|i| i.contains("Pebble")),
            "{row}"
        );
    }
    assert_eq!(
        listed(state.path(), "dns1")["renewal_reason"],
        "renew_before"
    );
    assert_eq!(listed(state.path(), "web1")["solver"], "standalone");
}

#[test]
fn one_failing_certificate_does_not_stop_the_others() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let mut text = pebble_defaults(&pebble, state.path(), "");
    text.push_str(&cert_entry("good", &["good.test"], "standalone", ""));
    // 192.0.2.1 (TEST-NET-1) is not an address of this host: the solver
    // cannot listen there, so this one order fails.
    text.push_str(&cert_entry(
        "bad",
        &["bad.test"],
        "standalone",
        "solver_options = { listen = [\"192.0.2.1:80\"] }",
    ));
    text.push_str(&cert_entry("good2", &["good2.test"], "standalone", ""));
    let config = write_config(&state, &text);
    let r = run_config(&config, &[]);
    assert_eq!(r.code, Some(8), "partial failure: {}", r.describe());
    assert_eq!(
        actions(&r),
        pairs(&[("bad", "failed"), ("good", "issued"), ("good2", "issued")])
    );
    let bad = r.result("bad");
    assert_eq!(bad["error"]["class"], "solver", "{bad}");
    assert!(r.stderr.contains("error: bad: "), "{}", r.describe());
    assert_eq!(r.summary()["summary"]["failed"], 1);
    assert_eq!(r.summary()["exit_code"], 8);

    // Text output: a table with every certificate.
    let again = certsmith(&["run", "--config", p(&config)], &[]);
    assert_eq!(again.code, Some(8), "{}", again.describe());
    assert!(again.stdout.contains("NAME"), "{}", again.describe());
    for name in ["good", "good2", "bad"] {
        assert!(again.stdout.contains(name), "{}", again.describe());
    }
}

#[test]
fn overlapping_runs_order_each_certificate_once() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let mut text = pebble_defaults(&pebble, state.path(), "");
    for i in 0..3 {
        text.push_str(&cert_entry(
            &format!("ov{i}"),
            &[&format!("ov{i}.test")],
            "standalone",
            "",
        ));
    }
    let config = write_config(&state, &text);
    let spawn = || {
        Command::new(certsmith_bin())
            .args(["run", "--config", p(&config), "--output", "json"])
            .env_remove("CERTSMITH_STATE_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let runs = [
        Run::from(a.wait_with_output().expect("wait")),
        Run::from(b.wait_with_output().expect("wait")),
    ];
    let mut issued = 0;
    for r in &runs {
        assert_eq!(r.code, Some(0), "{}", r.describe());
        issued += r.summary()["summary"]["issued"].as_u64().unwrap_or(0);
    }
    assert_eq!(issued, 3, "each certificate ordered by one run only");
    assert_eq!(orders_in_log(&pebble), 3);
}

// ----------------------------------------------------------------- ARI ---

#[test]
fn ari_window_decides_renewal_and_the_chosen_time_is_kept() {
    // New-order requests are counted: no nonce rejection, or the client's
    // badNonce retry would send one twice.
    let pebble = Pebble::start(PebbleOpts {
        certificate_validity_period: Some(VALIDITY),
        nonce_reject_percent: Some(0),
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let proxy = AriProxy::start(&pebble).expect("ARI proxy");
    proxy.set_window_relative(20 * 86_400, 21 * 86_400);
    proxy.set_retry_after(2);
    let state = TempState::new().expect("state");
    let mut text = defaults(
        &proxy.directory_url(),
        proxy.ca_bundle_path(),
        state.path(),
        &pebble,
        "",
    );
    text.push_str(&cert_entry("ari", &["ari.test"], "standalone", ""));
    let config = write_config(&state, &text);

    // 1. Issued (nothing to replace); then the CA's window is asked for and
    // a time in it is chosen and persisted with the explanation URL.
    let first = run_config(&config, &[]);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    assert_eq!(first.result("ari")["action"], "issued");
    assert_eq!(proxy.new_orders(), [None]);
    let asked = proxy.renewal_info_requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let cert_id = asked[0].clone();
    assert!(cert_id.contains('.') && !cert_id.contains('='), "{cert_id}");
    let row = listed(state.path(), "ari");
    assert_eq!(row["renewal_reason"], "ari", "{row}");
    assert_eq!(row["explanation_url"], "https://ari.example/why");
    let chosen = row["next_renewal"].as_str().expect("time").to_owned();
    let lineage = lineage_text(state.path(), "ari");
    assert!(
        lineage.contains(&format!("next_renewal = \"{chosen}\"")),
        "{lineage}"
    );
    assert!(
        lineage.contains("explanation_url = \"https://ari.example/why\""),
        "{lineage}"
    );
    assert!(
        lineage.contains(&format!("ari_cert_id = \"{cert_id}\"")),
        "{lineage}"
    );
    let window = |l: &str, key: &str| -> String {
        l.lines()
            .find_map(|x| x.strip_prefix(&format!("{key} = \"")))
            .map(|x| x.trim_end_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{key} missing: {l}"))
    };
    let (ws, we) = (
        window(&lineage, "ari_window_start"),
        window(&lineage, "ari_window_end"),
    );
    assert!(ws <= chosen && chosen <= we, "{ws} <= {chosen} <= {we}");

    // 2. Right away: Retry-After (2 s) has not passed, so the CA is not
    // asked again, and the window is in the future: nothing is ordered.
    let second = run_config(&config, &[]);
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert_eq!(second.result("ari")["action"], "skipped");
    assert_eq!(
        proxy.renewal_info_requests().len(),
        1,
        "Retry-After honoured"
    );
    assert_eq!(proxy.new_orders().len(), 1);

    // 3. After Retry-After, the same window: asked again, the time chosen
    // before is kept.
    std::thread::sleep(Duration::from_millis(2200));
    let third = run_config(&config, &[]);
    assert_eq!(
        third.result("ari")["action"],
        "skipped",
        "{}",
        third.describe()
    );
    assert_eq!(proxy.renewal_info_requests().len(), 2);
    assert_eq!(listed(state.path(), "ari")["next_renewal"], chosen.as_str());

    // 4. The CA moves the window into the past: renewed at once, naming
    // the certificate it replaces.
    std::thread::sleep(Duration::from_millis(2200));
    proxy.set_window_relative(-2 * 86_400, -86_400);
    let fourth = run_config(&config, &[]);
    assert_eq!(fourth.code, Some(0), "{}", fourth.describe());
    let renewed = fourth.result("ari");
    assert_eq!(renewed["action"], "renewed", "{}", fourth.describe());
    assert_eq!(renewed["replaces"], cert_id.as_str());
    assert!(
        renewed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ARI")),
        "{renewed}"
    );
    assert_eq!(proxy.new_orders(), [None, Some(cert_id.clone())]);
    assert!(proxy.errors().is_empty(), "{:?}", proxy.errors());

    // 5. The new certificate gets its own window (in the future again):
    // nothing more is ordered.
    std::thread::sleep(Duration::from_millis(2200));
    proxy.set_window_relative(30 * 86_400, 31 * 86_400);
    let fifth = run_config(&config, &[]);
    assert_eq!(
        fifth.result("ari")["action"],
        "skipped",
        "{}",
        fifth.describe()
    );
    assert_eq!(proxy.new_orders().len(), 2);
    let asked = proxy.renewal_info_requests();
    assert_ne!(
        asked.last(),
        Some(&cert_id),
        "the new certificate is asked about"
    );
    let row = listed(state.path(), "ari");
    assert_eq!(row["renewal_reason"], "ari");
    assert_eq!(row["state"], "valid");
}

// --------------------------------------------------------------- renew ---

#[test]
fn renew_from_the_lineage_of_an_issued_certificate() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let s = p(state.path());
    let listen = format!("listen=127.0.0.1:{}", pebble.http_port());
    let marker = state.file("renewed-by-hook");
    let hook = format!("echo \"$CERTSMITH_CERT_NAME\" >> {}", p(&marker));
    let r = certsmith(
        &[
            "issue",
            "-d",
            "lin.test",
            "--solver",
            "standalone",
            "--solver-opt",
            &listen,
            "--server",
            &pebble.directory_url(),
            "--ca-cert",
            p(pebble.ca_cert_path()),
            "--email",
            "ops@example.com",
            "--agree-tos",
            "--state-dir",
            s,
            "--deploy-hook",
            &hook,
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(
        fs::read_to_string(&marker).unwrap_or_default(),
        "lin.test\n"
    );
    let lineage = lineage_text(state.path(), "lin.test");
    assert!(lineage.contains("email = \"ops@example.com\""), "{lineage}");
    assert!(lineage.contains("ca_cert = "), "{lineage}");
    assert!(!lineage.contains("PRIVATE"), "{lineage}");
    // Both the settings and the renewal schedule are recorded after the order.
    assert!(lineage.contains("next_renewal = "), "{lineage}");

    // Not due: nothing happens.
    let r = certsmith(
        &[
            "renew",
            "--cert-name",
            "lin.test",
            "--state-dir",
            s,
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.result("lin.test")["action"], "skipped");

    // Forced, with jitter: renewed from lineage.toml alone (server, CA
    // bundle, account, solver options, hook).
    let r = certsmith(
        &[
            "renew",
            "--all",
            "--force",
            "--jitter",
            "1",
            "--state-dir",
            s,
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let res = r.result("lin.test");
    assert_eq!(res["action"], "renewed", "{}", r.describe());
    assert_eq!(res["version"], 2);
    assert_eq!(res["deploy_hook"]["status"], "ok");
    assert!(r.stderr.contains("--jitter 1"), "{}", r.describe());
    assert_eq!(
        fs::read_to_string(&marker).unwrap_or_default(),
        "lin.test\nlin.test\n"
    );

    // Neither --cert-name nor --all: a usage error; an unknown name too.
    let r = certsmith(&["renew", "--state-dir", s], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let r = certsmith(&["renew", "--cert-name", "nope", "--state-dir", s], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("stored certificates: lin.test"),
        "{}",
        r.describe()
    );
}

// -------------------------------------------------------------- revoke ---

#[test]
fn revoke_with_the_account_key_or_the_certificate_key() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let mut text = pebble_defaults(&pebble, state.path(), "");
    text.push_str(&cert_entry("rv-account", &["rv1.test"], "standalone", ""));
    text.push_str(&cert_entry(
        "rv-ec",
        &["rv2.test"],
        "standalone",
        "key_type = \"ec-p384\"",
    ));
    text.push_str(&cert_entry(
        "rv-rsa",
        &["rv3.test"],
        "standalone",
        "key_type = \"rsa2048\"",
    ));
    let config = write_config(&state, &text);
    let first = run_config(&config, &[]);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let serial = |name: &str| {
        first.result(name)["serial"]
            .as_str()
            .expect("serial")
            .to_owned()
    };
    let s = p(state.path());

    // The account key.
    let r = certsmith(
        &[
            "revoke",
            "--cert-name",
            "rv-account",
            "--reason",
            "key-compromise",
            "--state-dir",
            s,
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = &r.json_lines()[0];
    assert_eq!(v["signed_with"], "account key");
    assert_eq!(v["reason_code"], 1);

    // The certificate's own key (EC P-384 and RSA), with no account at all:
    // move the accounts away first.
    fs::rename(state.path().join("accounts"), state.file("accounts-away")).expect("move");
    for (name, reason, code) in [
        ("rv-ec", "superseded", 4),
        // (cessation-of-operation retires instead: tests/tests/operator.rs)
        ("rv-rsa", "key-compromise", 1),
    ] {
        let key = current(state.path(), name).join("privkey.pem");
        let r = certsmith(
            &[
                "revoke",
                "--cert-name",
                name,
                "--reason",
                reason,
                "--key-file",
                p(&key),
                "--state-dir",
                s,
                "--output",
                "json",
            ],
            &[],
        );
        assert_eq!(r.code, Some(0), "{name}: {}", r.describe());
        assert_eq!(r.json_lines()[0]["signed_with"], "certificate key");
        let status = pebble
            .cert_status_by_serial_blocking(&serial(name))
            .expect("Pebble")
            .expect("known");
        assert!(status.is_revoked(), "{name}: {status:?}");
        assert_eq!(status.reason, Some(code), "{name}");
    }
    let status = pebble
        .cert_status_by_serial_blocking(&serial("rv-account"))
        .expect("Pebble")
        .expect("known");
    assert!(status.is_revoked(), "{status:?}");
    assert_eq!(status.reason, Some(1));

    // Without the account and without --key-file: a clear error.
    let r = certsmith(
        &["revoke", "--cert-name", "rv-account", "--state-dir", s],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("no account is stored"),
        "{}",
        r.describe()
    );
    assert!(r.stderr.contains("--key-file"), "{}", r.describe());
    fs::rename(state.file("accounts-away"), state.path().join("accounts")).expect("move back");

    // Revoking again: the CA says so, and that is not an error.
    let r = certsmith(
        &["revoke", "--cert-name", "rv-account", "--state-dir", s],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(r.stdout.contains("already revoked"), "{}", r.describe());

    // `list` shows them revoked; the next `run` replaces them.
    for row in list(state.path()) {
        assert_eq!(row["state"], "revoked", "{row}");
    }
    let again = run_config(&config, &[]);
    assert_eq!(again.code, Some(0), "{}", again.describe());
    for name in ["rv-account", "rv-ec", "rv-rsa"] {
        let res = again.result(name);
        assert_eq!(res["action"], "issued", "{res}");
        assert!(
            res["reason"]
                .as_str()
                .is_some_and(|r| r.contains("revoked")),
            "{res}"
        );
    }
    for row in list(state.path()) {
        assert_eq!(row["state"], "valid", "{row}");
    }
}

// ------------------------------------------------------------- account ---

#[test]
fn account_rollover_then_issue_then_deactivate() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let mut text = pebble_defaults(&pebble, state.path(), "");
    text.push_str(&cert_entry("acct", &["acct.test"], "standalone", ""));
    let config = write_config(&state, &text);
    let c = p(&config);
    let first = run_config(&config, &[]);
    assert_eq!(first.code, Some(0), "{}", first.describe());

    let show = certsmith(&["account", "show", "--config", c, "--output", "json"], &[]);
    assert_eq!(show.code, Some(0), "{}", show.describe());
    let before = show.json_lines()[0].clone();
    assert_eq!(
        before["contact"],
        serde_json::json!(["mailto:ops@example.com"])
    );
    assert_eq!(before["key_type"], "ec-p256");
    assert_eq!(before["status"], "valid");
    let url = before["url"].as_str().expect("url").to_owned();
    let text_show = certsmith(&["account", "show", "--config", c], &[]);
    assert!(text_show.stdout.contains(&url), "{}", text_show.describe());

    // Rollover: same account, new key.
    let r = certsmith(
        &["account", "rollover", "--config", c, "--output", "json"],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let after = r.json_lines()[0]["account"].clone();
    assert_eq!(after["url"], url.as_str());
    assert_ne!(after["key_thumbprint"], before["key_thumbprint"]);
    assert!(after["key_changed_at"].is_string());

    // Issuance with the new key, on the same account (not a new one).
    let r = run_config(&config, &["--force"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.result("acct")["action"], "renewed");
    assert!(
        r.stderr.contains(&format!("using account {url}")),
        "{}",
        r.describe()
    );
    assert!(!r.stderr.contains("account created"), "{}", r.describe());

    // Deactivation needs --yes.
    let r = certsmith(&["account", "deactivate", "--config", c], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--yes"), "{}", r.describe());
    let r = certsmith(&["account", "deactivate", "--config", c, "--yes"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(
        r.stdout.contains(&format!("deactivated account {url}")),
        "{}",
        r.describe()
    );
    let show = certsmith(&["account", "show", "--config", c, "--output", "json"], &[]);
    assert_eq!(show.json_lines()[0]["status"], "deactivated");

    // Using it afterwards: a clear error that says what to do.
    let r = run_config(&config, &["--force"]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr
            .contains(&format!("the account {url} was deactivated")),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr
            .contains("hint: to start over with a new account, remove"),
        "{}",
        r.describe()
    );

    // And it is the CA's view too: without the local mark, the CA refuses.
    let path = show.json_lines()[0]["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let mut stored: Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
    stored
        .as_object_mut()
        .expect("object")
        .remove("deactivated_at");
    fs::write(&path, stored.to_string()).expect("write");
    let r = run_config(&config, &["--force"]);
    assert_eq!(
        r.code,
        Some(4),
        "the CA refuses the account: {}",
        r.describe()
    );
    assert!(
        r.stderr.to_lowercase().contains("deactivated"),
        "{}",
        r.describe()
    );
}

// -------------------------------------------------------------- hooks ---

#[test]
fn deploy_hooks_get_the_environment_and_failures_keep_the_certificate() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let env_out = state.file("hook-env");
    let mut text = pebble_defaults(&pebble, state.path(), "deploy_hook_timeout = \"2s\"");
    text.push_str(&cert_entry(
        "hooked",
        &["hooked.test", "www.hooked.test"],
        "standalone",
        &format!(
            "deploy_hook = \"env | grep ^CERTSMITH_ | sort > {}; echo reloaded\"",
            p(&env_out)
        ),
    ));
    let config = write_config(&state, &text);
    let r = run_config(&config, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.result("hooked")["deploy_hook"]["status"], "ok");
    assert!(
        r.stderr.contains("hooked deploy hook: reloaded"),
        "output is shown: {}",
        r.describe()
    );
    let env = fs::read_to_string(&env_out).expect("the hook ran");
    let dir = current(state.path(), "hooked")
        .canonicalize()
        .expect("current");
    let var = |k: &str| -> String {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing: {env}"))
            .to_owned()
    };
    assert_eq!(var("CERTSMITH_CERT_NAME"), "hooked");
    assert_eq!(var("CERTSMITH_DOMAINS"), "hooked.test www.hooked.test");
    let cert_dir = PathBuf::from(var("CERTSMITH_CERT_DIR"));
    assert_eq!(cert_dir.canonicalize().expect("dir"), dir);
    assert!(Path::new(&var("CERTSMITH_FULLCHAIN")).is_file());
    assert!(var("CERTSMITH_FULLCHAIN").ends_with("fullchain.pem"));
    assert!(Path::new(&var("CERTSMITH_PRIVKEY")).is_file());
    assert!(var("CERTSMITH_PRIVKEY").ends_with("privkey.pem"));

    // A hook that fails: its own exit code (9), its output in the message,
    // and the new certificate in place.
    let mut text = pebble_defaults(&pebble, state.path(), "deploy_hook_timeout = \"2s\"");
    text.push_str(&cert_entry(
        "hooked",
        &["hooked.test", "www.hooked.test"],
        "standalone",
        "deploy_hook = \"echo 'nginx: configuration test failed' >&2; exit 7\"",
    ));
    let config = write_config(&state, &text);
    let r = run_config(&config, &["--force"]);
    assert_eq!(r.code, Some(9), "{}", r.describe());
    let res = r.result("hooked");
    assert_eq!(res["action"], "renewed", "the certificate counts: {res}");
    assert_eq!(res["deploy_hook"]["status"], "failed");
    assert!(r.stderr.contains("exit status 7"), "{}", r.describe());
    assert!(
        r.stderr.contains("nginx: configuration test failed"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("the new certificate is in place"),
        "{}",
        r.describe()
    );
    assert_eq!(
        fs::read_link(current(state.path(), "hooked")).expect("link"),
        PathBuf::from("versions/2")
    );
    assert_eq!(listed(state.path(), "hooked")["state"], "valid");

    // A hook that hangs is killed after deploy_hook_timeout.
    let mut text = pebble_defaults(&pebble, state.path(), "deploy_hook_timeout = \"1s\"");
    text.push_str(&cert_entry(
        "hooked",
        &["hooked.test", "www.hooked.test"],
        "standalone",
        "deploy_hook = \"sleep 30\"",
    ));
    let config = write_config(&state, &text);
    let started = std::time::Instant::now();
    let r = run_config(&config, &["--force"]);
    assert_eq!(r.code, Some(9), "{}", r.describe());
    assert!(
        r.stderr.contains("did not finish within 1s"),
        "{}",
        r.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_eq!(
        fs::read_link(current(state.path(), "hooked")).expect("link"),
        PathBuf::from("versions/3")
    );
}

// ---------------------------------------------------------- bad config ---

/// `config check` and `run` on `text`: both fail with exit 2 before any
/// request, and every `expected` (line, column, key, message part) is named.
fn assert_config_errors(text: &str, expected: &[(usize, usize, &str, &str)]) {
    let state = TempState::new().expect("state");
    let config = write_config(&state, text);
    let name = p(&config);
    for cmd in [&["config", "check"][..], &["run"][..]] {
        let mut args: Vec<&str> = cmd.to_vec();
        args.extend(["--config", name, "--state-dir", p(state.path())]);
        let r = certsmith(&args, &[]);
        assert_eq!(r.code, Some(2), "{cmd:?}: {}", r.describe());
        for (line, column, key, message) in expected {
            let prefix = format!("error: {name}:{line}:{column}: {key}: ");
            let hit = r
                .stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(message));
            assert!(
                hit,
                "{cmd:?}: expected `{prefix}...{message}` in:\n{}",
                r.stderr
            );
        }
    }
    // JSON: one object with every error, positions included.
    let r = certsmith(
        &["config", "check", "--config", name, "--output", "json"],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    let v = &r.json_lines()[0];
    let errors = v["errors"]
        .as_array()
        .or_else(|| v["error"]["errors"].as_array())
        .unwrap_or_else(|| panic!("no errors array: {v}"));
    assert_eq!(errors.len(), expected.len(), "{v}");
    for (e, (line, column, key, _)) in errors.iter().zip(expected) {
        assert_eq!(e["line"], *line, "{e}");
        assert_eq!(e["column"], *column, "{e}");
        assert_eq!(e["key"], *key, "{e}");
    }
}

const HEAD: &str = "[defaults]\nserver = \"https://127.0.0.1:9/dir\"\nagree_tos = true\n";

#[test]
fn bad_config_files_name_line_column_and_key() {
    // Malformed TOML.
    assert_config_errors(
        &format!("{HEAD}\n[[certificate]]\ndomains = [\"a.test\"\nsolver = \"standalone\"\n"),
        &[(7, 1, "certificate[1].domains", "missing comma")],
    );
    // Unknown keys, with the nearest known one.
    assert_config_errors(
        &format!("{HEAD}\n[[certificate]]\ndomain = [\"a.test\"]\nsolver = \"standalone\"\n"),
        &[(
            6,
            1,
            "certificate[1].domain",
            "unknown key `domain`: did you mean `domains`?",
        )],
    );
    assert_config_errors(
        &format!("{HEAD}emial = \"a@b.test\"\n"),
        &[(4, 1, "defaults.emial", "did you mean `email`?")],
    );
    // Wrong type.
    assert_config_errors(
        &format!("{HEAD}\n[[certificate]]\ndomains = \"a.test\"\nsolver = \"standalone\"\n"),
        &[(6, 11, "certificate[1].domains", "invalid type")],
    );
    // Values that parse but are wrong: all reported at once.
    assert_config_errors(
        &format!(
            "{HEAD}renew_before = \"30 days\"\nkey_type = \"ec-p512\"\n\n[[certificate]]\nname = \"a\"\ndomains = [\"ok.test\", \"bad..test\"]\nsolver = \"standalone\"\n\n[[certificate]]\nname = \"a\"\ndomains = [\"b.test\"]\nsolver = \"standalone\"\n"
        ),
        &[
            (4, 16, "defaults.renew_before", "invalid duration '30 days'"),
            (5, 12, "defaults.key_type", "unknown key type 'ec-p512'"),
            (9, 23, "certificate[1].domains", "bad..test"),
            (
                12,
                1,
                "certificate[2].name",
                "two certificates are named 'a'",
            ),
        ],
    );
}

#[test]
fn config_check_validates_solvers_and_options_against_manifests() {
    // Unknown solver, unknown option, missing required option, wildcard
    // with an http-01 solver: each at its line and column.
    let text = format!(
        "{HEAD}\n[solvers.standalone]\nlisen = \"127.0.0.1:5002\"\n\n[[certificate]]\ndomains = [\"a.test\"]\nsolver = \"standalon\"\n\n[[certificate]]\ndomains = [\"b.test\"]\nsolver = \"standalone\"\n\n[[certificate]]\ndomains = [\"*.c.test\"]\nsolver = \"webroot\"\nsolver_options = {{ path = \"/tmp\" }}\n\n[[certificate]]\ndomains = [\"d.test\"]\nsolver = \"webroot\"\n"
    );
    let state = TempState::new().expect("state");
    let config = write_config(&state, &text);
    let name = p(&config);
    let r = certsmith(&["config", "check", "--config", name], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    for (pos_key, part) in [
        (
            "10:10: certificate[1].solver",
            "unknown solver 'standalon': did you mean 'standalone'?",
        ),
        (
            "6:1: solvers.standalone.lisen",
            "has no option 'lisen': did you mean 'listen'?",
        ),
        ("17:11: certificate[3].domains", "'*.c.test' needs dns-01"),
        ("23:10: certificate[4].solver", "needs option 'path'"),
    ] {
        let prefix = format!("error: {name}:{pos_key}: ");
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(part)),
            "expected `{prefix}...{part}` in:\n{}",
            r.stderr
        );
    }
    // `run` never gets to the CA with such a file (127.0.0.1:9 would
    // refuse): each certificate fails on its own, with its solver error.
    let r = certsmith(
        &[
            "run",
            "--config",
            name,
            "--state-dir",
            p(state.path()),
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(
        r.code,
        Some(2),
        "all failed as usage errors: {}",
        r.describe()
    );
    assert!(
        r.results().iter().all(|v| v["action"] == "failed"),
        "{}",
        r.describe()
    );
    assert!(
        !r.stderr.contains("127.0.0.1:9"),
        "no request was sent: {}",
        r.describe()
    );

    // A file without errors passes, listing its certificates.
    let good = format!(
        "{HEAD}\n[solvers.standalone]\nlisten = [\"127.0.0.1:5002\"]\n\n[[certificate]]\ndomains = [\"a.test\", \"www.a.test\"]\nsolver = \"standalone\"\n"
    );
    let config = write_config(&state, &good);
    let r = certsmith(
        &[
            "config",
            "check",
            "--config",
            p(&config),
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = &r.json_lines()[0];
    assert_eq!(v["valid"], true);
    assert_eq!(v["certificates"][0]["name"], "a.test");
    // `run` without --config, and a missing file: usage errors.
    let r = certsmith(&["run"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.stderr.contains("--config"), "{}", r.describe());
    let r = certsmith(
        &["config", "check", "--config", "/nonexistent/certsmith.toml"],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr
            .contains("cannot read the config file /nonexistent/certsmith.toml"),
        "{}",
        r.describe()
    );
}

// ------------------------------------------------------------- secrets ---

#[test]
fn secrets_are_read_at_renewal_time_and_never_stored() {
    use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn};
    let pebble = pebble();
    let cts = pebble.challtestsrv().expect("challtestsrv");
    let cf = CloudflareStandIn::start(CloudflareOpts::default().zones(&["cf.test"]).mirror_to(cts))
        .expect("Cloudflare stand-in");
    let token = cf.token().to_owned();
    let state = TempState::new().expect("state");
    let mut text = pebble_defaults(&pebble, state.path(), "");
    text.push_str(&format!(
        "\n[solvers.cloudflare]\napi_token = \"{token}\"\napi_base = \"{}\"\n",
        cf.api_base()
    ));
    text.push_str(&cert_entry(
        "cf",
        &["*.cf.test", "cf.test"],
        "cloudflare",
        "",
    ));
    let config = write_config(&state, &text);
    let r = run_config(&config, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.result("cf")["action"], "issued");
    let lineage = lineage_text(state.path(), "cf");
    assert!(
        !lineage.contains(&token),
        "the token is in lineage.toml:\n{lineage}"
    );
    assert!(
        lineage.contains(&cf.api_base()),
        "public options are kept:\n{lineage}"
    );
    assert!(!r.stdout.contains(&token) && !r.stderr.contains(&token));

    // `renew` from the lineage alone: the secret must come from the
    // environment (or a config file) now; without it, a clear error.
    let s = p(state.path());
    let dns = cts.dns_addr().to_string();
    let renew = |envs: &[(&str, &str)]| {
        certsmith(
            &[
                "renew",
                "--cert-name",
                "cf",
                "--force",
                "--state-dir",
                s,
                "--dns-resolver",
                &dns,
                "--propagation-server",
                &dns,
                "--output",
                "json",
            ],
            envs,
        )
    };
    let r = renew(&[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("needs option 'api_token'"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("CLOUDFLARE_API_TOKEN"),
        "{}",
        r.describe()
    );
    let r = renew(&[("CLOUDFLARE_API_TOKEN", &token)]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.result("cf")["action"], "renewed");
    let secret_file = state.file("cf-token");
    fs::write(&secret_file, format!("{token}\n")).expect("write");
    let r = renew(&[("CLOUDFLARE_API_TOKEN_FILE", p(&secret_file))]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert_eq!(r.result("cf")["version"], 3);
    assert!(!lineage_text(state.path(), "cf").contains(&token));
}

// ------------------------------------------------------------- contrib ---

#[test]
fn the_contrib_example_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("contrib/certsmith.toml");
    let r = certsmith(
        &[
            "config",
            "check",
            "--config",
            p(&example),
            "--output",
            "json",
        ],
        &[("CLOUDFLARE_API_TOKEN", "not-a-real-token")],
    );
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let v = &r.json_lines()[0];
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["certificates"].as_array().map(Vec::len), Some(3));
    // Without the token in the environment, the check says which variable.
    let r = certsmith(&["config", "check", "--config", p(&example)], &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("CLOUDFLARE_API_TOKEN"),
        "{}",
        r.describe()
    );
    // The scheduled command lines use flags that exist.
    for file in [
        "contrib/systemd/certsmith.service",
        "contrib/cron/certsmith",
    ] {
        let text = fs::read_to_string(root.join(file)).expect("contrib file");
        assert!(
            text.contains("certsmith run --config /etc/certsmith/certsmith.toml"),
            "{file}"
        );
    }
    let help = certsmith(&["run", "--help"], &[]);
    assert!(help.stdout.contains("--jitter") && help.stdout.contains("--config"));
    let unit = fs::read_to_string(root.join("contrib/systemd/certsmith-daemon.service"))
        .expect("contrib file");
    assert!(unit.contains(
        "certsmith daemon --config /etc/certsmith/certsmith.toml --metrics-listen 127.0.0.1:9415"
    ));
    let help = certsmith(&["daemon", "--help"], &[]);
    assert!(help.stdout.contains("--metrics-listen") && help.stdout.contains("--shutdown-grace"));
}

// ------------------------------------------------------ damaged current ---

/// Six ways a `current` set can be damaged (by a disk, an operator, a
/// script): each is listed as `damaged`, is due for `run` with the reason
/// `damaged`, and is replaced by a new version; the damaged version stays.
#[test]
fn a_damaged_current_version_is_listed_damaged_and_replaced() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let names = ["d1", "d2", "d3", "d4", "d5", "d6"];
    let mut text = pebble_defaults(&pebble, state.path(), "");
    for n in names {
        text.push_str(&cert_entry(n, &[&format!("{n}.test")], "standalone", ""));
    }
    let config = write_config(&state, &text);
    let r = run_config(&config, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let file = |n: &str, f: &str| current(state.path(), n).join(f);
    let read = |n: &str, f: &str| fs::read_to_string(file(n, f)).expect("read");
    let (key6, cert5, full6) = (
        read("d6", "privkey.pem"),
        read("d5", "cert.pem"),
        read("d6", "fullchain.pem"),
    );
    fs::write(file("d1", "privkey.pem"), "").expect("empty key");
    fs::write(file("d2", "cert.pem"), "garbage\n").expect("garbled cert");
    fs::write(file("d3", "privkey.pem"), key6).expect("another certificate's key");
    fs::remove_file(file("d4", "chain.pem")).expect("chain missing");
    fs::write(file("d5", "fullchain.pem"), full6).expect("another full chain");
    fs::write(file("d6", "cert.pem"), cert5).expect("another certificate");

    for n in names {
        let row = listed(state.path(), n);
        assert_eq!(row["state"], "damaged", "{n}: {row}");
    }
    let r = run_config(&config, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    for n in names {
        let result = r.result(n);
        assert_eq!(result["action"], "renewed", "{n}: {result}");
        assert!(
            result["reason"]
                .as_str()
                .is_some_and(|s| s.contains("damaged")),
            "{n}: {result}"
        );
        assert_eq!(result["version"], 2, "{n}: {result}");
        assert_eq!(listed(state.path(), n)["state"], "valid", "{n}");
        assert!(
            state
                .path()
                .join("certs")
                .join(n)
                .join("versions/1")
                .is_dir(),
            "{n}: nothing is deleted"
        );
    }
    // Now whole again: nothing to do.
    let r = run_config(&config, &[]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    assert!(
        r.results().iter().all(|v| v["action"] == "skipped"),
        "{}",
        r.describe()
    );
}

// ------------------------------------------------------------- signals ---

/// Whether `pid` catches SIGTERM yet (`SigCgt` of /proc/<pid>/status).
fn catches_sigterm(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// SIGTERM as soon as certsmith handles it — here while `run --jitter`
/// waits, before any batch — ends it as an interruption (exit 130), not by
/// the signal.
#[test]
fn sigterm_before_the_batch_exits_130() {
    let pebble = pebble();
    let state = TempState::new().expect("state");
    let mut text = pebble_defaults(&pebble, state.path(), "");
    text.push_str(&cert_entry("sig", &["sig.test"], "standalone", ""));
    let config = write_config(&state, &text);
    let mut child = Command::new(certsmith_bin())
        .args(["run", "--config", p(&config), "--jitter", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certsmith");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !catches_sigterm(child.id()) {
        assert!(
            std::time::Instant::now() < deadline,
            "certsmith never installed its SIGTERM handler"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("certsmith did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "{status:?}: {err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        !current(state.path(), "sig").exists(),
        "nothing was ordered"
    );
}
