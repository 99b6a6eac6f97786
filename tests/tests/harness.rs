//! Self-tests of the harness: the servers really start, answer, resolve,
//! run in parallel and die with their owner.

use std::collections::HashSet;
use std::error::Error;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certsmith_tests::{ChallTestSrv, Pebble, PebbleOpts, dns, free_port};

type TestResult = Result<(), Box<dyn Error>>;

/// A process is gone when /proc has no entry for it or it is a zombie.
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn wait_dead(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if is_dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    is_dead(pid)
}

fn proc_environ(pid: u32) -> Result<Vec<String>, Box<dyn Error>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(raw
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

#[tokio::test]
async fn pebble_serves_its_directory_and_root_over_our_tls() -> TestResult {
    let pebble = Pebble::start(PebbleOpts::default())?;
    let dir_url = pebble.directory_url();
    assert!(dir_url.starts_with("https://127.0.0.1:") && dir_url.ends_with("/dir"));

    let dir: serde_json::Value = pebble
        .http_client()
        .get(&dir_url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let base = dir_url.trim_end_matches("/dir");
    for key in [
        "newAccount",
        "newNonce",
        "newOrder",
        "revokeCert",
        "keyChange",
    ] {
        let url = dir[key]
            .as_str()
            .ok_or_else(|| format!("directory has no {key}: {dir}"))?;
        assert!(url.starts_with(base), "{key} = {url} is not on {base}");
    }
    assert!(
        dir["meta"]["termsOfService"].is_string(),
        "Pebble announces terms of service: {dir}"
    );

    // The --ca-cert file is what Pebble's TLS chains to, and nothing else
    // does: a client with only the system roots must refuse Pebble.
    let ca_file = std::fs::read_to_string(pebble.ca_cert_path())?;
    assert_eq!(ca_file, pebble.ca_cert_pem());
    assert!(ca_file.starts_with("-----BEGIN CERTIFICATE-----"));
    let untrusting = reqwest::Client::builder().build()?;
    assert!(
        untrusting.get(&dir_url).send().await.is_err(),
        "Pebble's certificate must not verify without our CA"
    );

    // The ACME root, from the management port: a certificate, not our
    // HTTPS CA, identical through both the async and the blocking client.
    let root = pebble.root_pem().await?;
    assert!(root.trim_start().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(root.trim_end().ends_with("-----END CERTIFICATE-----"));
    assert_ne!(root.trim(), pebble.ca_cert_pem().trim());
    assert_eq!(pebble.root_pem_blocking()?, root);
    let intermediate = pebble.intermediate_pem().await?;
    assert!(intermediate.contains("BEGIN CERTIFICATE"));
    assert_ne!(intermediate, root);
    assert!(pebble.management_url().starts_with("https://127.0.0.1:"));
    assert_ne!(pebble.management_url(), base);

    // A serial Pebble never issued.
    assert_eq!(pebble.cert_status_by_serial("0x00DEAD:BEEF").await?, None);
    assert_eq!(pebble.cert_status_by_serial_blocking("deadbeef")?, None);
    Ok(())
}

#[tokio::test]
async fn each_pebble_start_has_a_new_acme_root() -> TestResult {
    let a = Pebble::start(PebbleOpts::default())?;
    let b = Pebble::start(PebbleOpts::default())?;
    assert_ne!(a.root_pem().await?, b.root_pem().await?);
    assert_ne!(a.ca_cert_pem(), b.ca_cert_pem());
    assert_ne!(a.directory_url(), b.directory_url());
    Ok(())
}

#[test]
fn challtestsrv_txt_and_a_records_resolve_over_udp() -> TestResult {
    let cts = ChallTestSrv::start()?;
    let dns_addr = cts.dns_addr();
    assert!(dns_addr.ip().is_loopback());
    assert!(cts.mgmt_url().starts_with("http://127.0.0.1:"));

    // No trailing dot and mixed case here: the harness adds the dot
    // challtestsrv needs and lower-cases (its lookups are case-sensitive).
    let name = "_acme-challenge.harness.example.test";
    assert!(dns::query_txt(dns_addr, name)?.is_empty());
    cts.set_txt("_acme-challenge.Harness.Example.TEST", "first-value")?;
    cts.set_txt(name, "second-value")?;
    let resp = dns::query(dns_addr, name, dns::TYPE_TXT)?;
    assert_eq!(resp.rcode, 0);
    let mut values = resp.txt_values();
    values.sort();
    assert_eq!(
        values,
        ["first-value", "second-value"],
        "both values coexist"
    );
    assert!(
        resp.answers
            .iter()
            .all(|r| r.name == name.to_ascii_lowercase())
    );

    cts.clear_txt(name)?;
    assert!(dns::query_txt(dns_addr, name)?.is_empty());

    // A: the default is loopback (Pebble's VA must dial the solver there),
    // an explicit record wins, AAAA is empty.
    assert_eq!(
        dns::query_a(dns_addr, "anything.example.test")?,
        [Ipv4Addr::LOCALHOST]
    );
    cts.add_a("pinned.example.test", Ipv4Addr::new(127, 0, 0, 7))?;
    assert_eq!(
        dns::query_a(dns_addr, "pinned.example.test")?,
        [Ipv4Addr::new(127, 0, 0, 7)]
    );
    let aaaa = dns::query(dns_addr, "anything.example.test", dns::TYPE_AAAA)?;
    assert!(aaaa.answers.is_empty(), "no AAAA answer: {aaaa:?}");
    Ok(())
}

#[test]
fn pebble_owns_a_challtestsrv_as_its_dns_and_passes_its_settings() -> TestResult {
    let http_port = free_port();
    let pebble = Pebble::start(PebbleOpts {
        http_port,
        nonce_reject_percent: Some(37),
        env: vec![("PEBBLE_AUTHZREUSE".into(), "0".into())],
        ..PebbleOpts::default()
    })?;
    assert_eq!(pebble.http_port(), http_port);
    assert_ne!(pebble.tls_port(), 0);
    assert_ne!(pebble.tls_port(), http_port);
    let cts = pebble
        .challtestsrv()
        .ok_or("Pebble started without its DNS")?;
    assert_eq!(cts.dns_addr(), pebble.dns_server());
    cts.set_txt("_acme-challenge.owned.test", "v1")?;
    assert_eq!(
        dns::query_txt(pebble.dns_server(), "_acme-challenge.owned.test")?,
        ["v1"]
    );

    // What the running Pebble was really given.
    let pid = pebble.pid().ok_or("no pid")?;
    let env = proc_environ(pid)?;
    for want in [
        "PEBBLE_VA_NOSLEEP=1",
        "PEBBLE_VA_ALWAYS_VALID=0",
        "PEBBLE_WFE_NONCEREJECT=37",
        "PEBBLE_AUTHZREUSE=0",
    ] {
        assert!(
            env.iter().any(|e| e == want),
            "{want} missing from Pebble's env"
        );
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let dns_pos = args
        .iter()
        .position(|a| a == "-dnsserver")
        .ok_or("no -dnsserver")?;
    assert_eq!(args[dns_pos + 1], pebble.dns_server().to_string());
    let cfg_pos = args
        .iter()
        .position(|a| a == "-config")
        .ok_or("no -config")?;
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&args[cfg_pos + 1])?)?;
    let p = &config["pebble"];
    assert_eq!(p["httpPort"], http_port);
    assert_eq!(p["tlsPort"], pebble.tls_port());
    assert_eq!(p["externalAccountBindingRequired"], false);
    assert_eq!(p["ocspResponderURL"], "");
    assert!(p.get("certificateValidityPeriod").is_none());
    Ok(())
}

#[test]
fn pebble_with_an_external_dns_server_starts_no_challtestsrv() -> TestResult {
    let cts = ChallTestSrv::start()?;
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(cts.dns_addr()),
        certificate_validity_period: Some(3600),
        ..PebbleOpts::default()
    })?;
    assert!(pebble.challtestsrv().is_none());
    assert_eq!(pebble.dns_server(), cts.dns_addr());
    assert!(pebble.root_pem_blocking()?.contains("BEGIN CERTIFICATE"));
    Ok(())
}

#[test]
fn many_pebbles_start_in_parallel_on_distinct_ports() -> TestResult {
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| Pebble::start(PebbleOpts::default())))
        .collect();
    let mut pebbles = Vec::new();
    for h in handles {
        pebbles.push(h.join().map_err(|_| "start panicked")??);
    }
    let mut ports = HashSet::new();
    for p in &pebbles {
        for url in [p.directory_url(), p.management_url()] {
            assert!(ports.insert(url.clone()), "{url} used twice");
        }
        assert!(ports.insert(p.dns_server().to_string()));
        assert!(p.root_pem_blocking()?.contains("BEGIN CERTIFICATE"));
    }
    Ok(())
}

#[test]
fn dropping_pebble_kills_pebble_and_its_challtestsrv() -> TestResult {
    let mut pebble = Pebble::start(PebbleOpts::default())?;
    let pebble_pid = pebble.pid().ok_or("no pid")?;
    let cts_pid = pebble
        .challtestsrv()
        .and_then(ChallTestSrv::pid)
        .ok_or("no challtestsrv pid")?;
    let temp = pebble.temp_dir().to_path_buf();
    assert!(!is_dead(pebble_pid) && !is_dead(cts_pid));

    pebble.stop();
    assert!(wait_dead(pebble_pid, Duration::from_secs(5)));
    assert!(pebble.pid().is_none());
    assert!(!is_dead(cts_pid), "stop() leaves the DNS server up");
    assert!(
        pebble.root_pem_blocking().is_err(),
        "a stopped Pebble answers nothing"
    );

    drop(pebble);
    assert!(wait_dead(cts_pid, Duration::from_secs(5)));
    if std::env::var_os("CERTSMITH_TEST_KEEP").is_none() {
        assert!(!temp.exists(), "{} left behind", temp.display());
    }
    Ok(())
}

/// Starts `certsmith-harness-helper` (built next to the certsmith binary by
/// `cargo build --workspace`), which holds a Pebble until it is killed.
fn helper() -> Result<std::process::Child, Box<dyn Error>> {
    Ok(helper_command()?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn helper_command() -> Result<Command, Box<dyn Error>> {
    let bin = certsmith_tests::certsmith_bin().with_file_name("certsmith-harness-helper");
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: run `cargo build --workspace` first",
            bin.display()
        )
        .into());
    }
    Ok(Command::new(bin))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_test_process_leaks_no_servers() -> TestResult {
    let mut child = KillOnDrop(helper()?);
    let stdout = child.0.stdout.take().ok_or("no stdout")?;
    let mut found = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some((_, rest)) = line.split_once("HARNESS-PIDS ") {
            let mut fields = rest.split_whitespace();
            let pebble: u32 = fields.next().ok_or("no pid")?.parse()?;
            let cts: u32 = fields.next().ok_or("no pid")?.parse()?;
            let dir = std::path::PathBuf::from(fields.next().ok_or("no dir")?);
            found = Some((vec![pebble, cts], dir));
            break;
        }
    }
    let (pids, temp) = found.ok_or("the helper printed no pids")?;
    assert!(pids.iter().all(|&p| !is_dead(p)));

    // SIGKILL: no destructor runs; only PR_SET_PDEATHSIG can clean up.
    child.0.kill()?;
    child.0.wait()?;
    for pid in pids {
        assert!(
            wait_dead(pid, Duration::from_secs(5)),
            "server {pid} outlived its killed test process"
        );
    }
    // Its temporary directory is the one thing a SIGKILL leaves behind.
    assert!(temp.join("ca.pem").is_file());
    std::fs::remove_dir_all(&temp)?;
    Ok(())
}

#[test]
fn a_missing_pebble_fails_the_test_with_the_install_hint() -> TestResult {
    let mut cmd = helper_command()?;
    let out = cmd.env("PEBBLE_BIN", "/nonexistent/pebble").output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "must fail, not skip: {text}");
    assert!(
        text.contains(
            "pebble is not installed: run `apt-get install pebble` (or scripts/test, which installs it)"
        ),
        "{text}"
    );
    Ok(())
}

#[test]
fn temp_state_and_certsmith_bin_point_where_tests_expect() -> TestResult {
    let state = certsmith_tests::TempState::new()?;
    let (path, root) = (state.path().to_path_buf(), state.root().to_path_buf());
    assert!(path.is_dir() && path.starts_with(&root));
    assert_eq!(std::fs::read_dir(&path)?.count(), 0, "starts empty");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o700
        );
    }
    assert_eq!(state.file("certsmith.toml"), root.join("certsmith.toml"));
    drop(state);
    if std::env::var_os("CERTSMITH_TEST_KEEP").is_none() {
        assert!(!root.exists(), "removed on drop");
    }

    // target/<profile>/certsmith, next to target/<profile>/deps/e2e-<hash>.
    if std::env::var_os("CERTSMITH_BIN").is_none() {
        let bin = certsmith_tests::certsmith_bin();
        let exe = std::env::current_exe()?;
        assert_eq!(bin.file_name().and_then(|n| n.to_str()), Some("certsmith"));
        assert_eq!(
            Some(bin.parent().ok_or("no parent")?),
            exe.parent().and_then(|deps| deps.parent())
        );
    }
    Ok(())
}
