//! `certsmith issue` end to end, against a real Pebble started by the
//! harness: the built binary run as an operator or a CI job runs it
//! (arguments, exit code, stdout JSON, files on disk), plus the engine API
//! for what one CLI call cannot do (many certificates from one process).
//!
//! Every certificate obtained is checked the way a sceptical operator would,
//! with `openssl` (installed by scripts/test): the chain verifies against
//! Pebble's current root (`/roots/0`), the SANs are exactly the names asked
//! for, the key is of the type asked for and matches the certificate,
//! `privkey.pem` is 0600, and Pebble knows the serial.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use certsmith_core::acme::{AccountOptions, AcmeClient};
use certsmith_core::engine::{CertRequest, Engine, EngineOptions, IssuedCert};
use certsmith_core::error::IssueError;
use certsmith_core::identifiers;
use certsmith_core::keys::KeyType;
use certsmith_core::plugin::{ConfigSources, PluginHost, SearchPath, SolverInstance};
use certsmith_core::progress::{Progress, ProgressEvent};
use certsmith_core::store::Store;
use certsmith_tests::{
    Pebble, PebbleOpts, ServerProcess, StaticServer, TempState, TestCa, certsmith_bin, free_port,
    journal_entries,
};
use serde_json::Value;

// ------------------------------------------------------------ running it ---

/// `certsmith` with `args`, in a clean environment: nothing inherited that
/// would change where it looks (state dir, plugins) or what it sends (EAB).
fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(args)
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_PLUGIN_PATH")
        .env_remove("CERTSMITH_EAB_KID")
        .env_remove("CERTSMITH_EAB_HMAC_KEY")
        .stdin(Stdio::null());
    cmd
}

/// What a finished run printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from_output(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The one JSON object `--output json` prints on stdout.
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one JSON line on stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(args: &[String]) -> Run {
    Run::from_output(command(args).output().expect("run certsmith"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}

/// `issue` against `server`, trusting `ca_cert`, into `state`, JSON out.
fn issue_args_for(server: &str, ca_cert: &Path, state: &Path, domains: &[&str]) -> Vec<String> {
    let mut args = strings(&["issue", "--server", server, "--ca-cert"]);
    args.push(path_str(ca_cert));
    args.extend(strings(&["--agree-tos", "--state-dir"]));
    args.push(path_str(state));
    args.extend(strings(&["--output", "json"]));
    for d in domains {
        args.extend(strings(&["-d", d]));
    }
    args
}

fn issue_args(pebble: &Pebble, state: &Path, domains: &[&str]) -> Vec<String> {
    issue_args_for(
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        state,
        domains,
    )
}

/// `--solver standalone` listening where Pebble's VA connects for http-01
/// (challtestsrv resolves every name to 127.0.0.1).
fn standalone(pebble: &Pebble) -> Vec<String> {
    standalone_on(pebble.http_port())
}

/// `--solver standalone` listening on `127.0.0.1:port`.
fn standalone_on(port: u16) -> Vec<String> {
    vec![
        "--solver".into(),
        "standalone".into(),
        "--solver-opt".into(),
        format!("listen=127.0.0.1:{port}"),
    ]
}

fn webroot(dir: &Path) -> Vec<String> {
    vec![
        "--solver".into(),
        "webroot".into(),
        "--solver-opt".into(),
        format!("path={}", dir.display()),
    ]
}

fn with(mut args: Vec<String>, more: Vec<String>) -> Vec<String> {
    args.extend(more);
    args
}

/// Runs `args`, expects exit 0, returns the JSON result.
fn issue_ok(args: &[String]) -> Value {
    let r = run(args);
    assert_eq!(r.code, Some(0), "certsmith issue failed: {}", r.describe());
    r.json()
}

/// Runs `args`, expects exit `code`, returns the run; with `--output json`
/// the error object on stdout must carry the same code.
fn issue_fails(args: &[String], code: i32) -> Run {
    let r = run(args);
    assert_eq!(r.code, Some(code), "wrong exit code: {}", r.describe());
    if args.iter().any(|a| a == "json") && !r.stdout.trim().is_empty() {
        let v = r.json();
        assert_eq!(v["error"]["exit_code"], code, "{}", r.describe());
    }
    r
}

// ----------------------------------------------------------- checking it ---

/// `openssl ARGS`, which must succeed; its stdout.
fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Pebble's current issuing root, in a file next to the state dir.
fn root_file(pebble: &Pebble, tmp: &TempState) -> PathBuf {
    let path = tmp.file("pebble-root.pem");
    let pem = pebble.root_pem_blocking().expect("GET /roots/0");
    fs::write(&path, pem).expect("write root");
    path
}

/// The subjectAltName DNS names of a certificate, sorted.
fn sans(cert: &Path) -> Vec<String> {
    let out = openssl(&["x509", "-in", p(cert), "-noout", "-ext", "subjectAltName"]);
    let mut names: Vec<String> = out
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter_map(|e| e.strip_prefix("DNS:"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// Lower-case hex without leading zeros.
fn norm_serial(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    let s = s.trim_start_matches('0');
    if s.is_empty() { "0".into() } else { s.into() }
}

/// What a user gets back for one certificate, from JSON or the engine.
#[derive(Clone, Debug)]
struct Issued {
    name: String,
    domains: Vec<String>,
    cert: PathBuf,
    chain: PathBuf,
    fullchain: PathBuf,
    privkey: PathBuf,
    serial: String,
    not_before: String,
    not_after: String,
    key_type: String,
    version: u64,
}

impl Issued {
    fn from_json(v: &Value) -> Issued {
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("JSON result lacks string '{k}': {v}"))
                .to_owned()
        };
        Issued {
            name: s("name"),
            domains: v["domains"]
                .as_array()
                .unwrap_or_else(|| panic!("JSON result lacks 'domains': {v}"))
                .iter()
                .map(|d| d.as_str().expect("domain string").to_owned())
                .collect(),
            cert: s("cert_path").into(),
            chain: s("chain_path").into(),
            fullchain: s("fullchain_path").into(),
            privkey: s("privkey_path").into(),
            serial: s("serial"),
            not_before: s("not_before"),
            not_after: s("not_after"),
            key_type: s("key_type"),
            version: v["version"].as_u64().expect("version number"),
        }
    }

    fn from_engine(c: &IssuedCert) -> Issued {
        let rfc = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .expect("format")
        };
        Issued {
            name: c.name.clone(),
            domains: c.domains.clone(),
            cert: c.cert_path.clone(),
            chain: c.chain_path.clone(),
            fullchain: c.fullchain_path.clone(),
            privkey: c.privkey_path.clone().expect("certsmith made the key"),
            serial: c.serial.clone(),
            not_before: rfc(c.not_before),
            not_after: rfc(c.not_after),
            key_type: c.key_type.as_str().to_owned(),
            version: u64::from(c.version),
        }
    }
}

/// Everything an operator would check about a certificate certsmith stored.
fn check_certificate(
    issued: &Issued,
    pebble: &Pebble,
    root: &Path,
    domains: &[&str],
    key_type: &str,
) {
    let want: Vec<String> = domains.iter().map(|d| (*d).to_owned()).collect();
    assert_eq!(issued.domains, want, "domains in the result");
    assert_eq!(issued.key_type, key_type);
    for f in [
        &issued.cert,
        &issued.chain,
        &issued.fullchain,
        &issued.privkey,
    ] {
        assert!(f.is_file(), "{} is missing", f.display());
        assert!(
            f.components().any(|c| c.as_os_str() == "current"),
            "{} should be the stable path under current/",
            f.display()
        );
    }

    // The chain verifies against Pebble's root.
    let out = openssl(&[
        "verify",
        "-CAfile",
        p(root),
        "-untrusted",
        p(&issued.chain),
        p(&issued.cert),
    ]);
    assert!(out.trim_end().ends_with(": OK"), "openssl verify: {out}");
    let cert = fs::read_to_string(&issued.cert).expect("read cert");
    let chain = fs::read_to_string(&issued.chain).expect("read chain");
    assert_eq!(
        cert.matches("BEGIN CERTIFICATE").count(),
        1,
        "cert.pem: one"
    );
    assert!(chain.contains("BEGIN CERTIFICATE"), "chain.pem is empty");
    assert_eq!(
        fs::read_to_string(&issued.fullchain).expect("read fullchain"),
        format!("{cert}{chain}"),
        "fullchain.pem = cert.pem + chain.pem"
    );

    // The names are exactly those asked for.
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(sans(&issued.cert), sorted, "subjectAltNames");

    // The key: type as asked, matching the certificate, 0600.
    let text = openssl(&["pkey", "-in", p(&issued.privkey), "-noout", "-text"]);
    let ok = match key_type {
        "ec-p256" => text.contains("Private-Key: (256 bit") && text.contains("prime256v1"),
        "ec-p384" => text.contains("Private-Key: (384 bit") && text.contains("secp384r1"),
        "rsa2048" => text.contains("Private-Key: (2048 bit"),
        "rsa3072" => text.contains("Private-Key: (3072 bit"),
        "rsa4096" => text.contains("Private-Key: (4096 bit"),
        other => panic!("unknown key type {other}"),
    };
    let first_lines: String = text.lines().take(1).collect();
    assert!(ok, "privkey.pem is not {key_type}: {first_lines} ...");
    assert_eq!(
        openssl(&["pkey", "-in", p(&issued.privkey), "-pubout"]),
        openssl(&["x509", "-in", p(&issued.cert), "-noout", "-pubkey"]),
        "privkey.pem does not belong to cert.pem"
    );
    let mode = fs::metadata(&issued.privkey)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "privkey.pem mode {:o}", mode & 0o777);

    // Serial and dates in the result are the certificate's, and Pebble
    // issued it.
    let serial = openssl(&["x509", "-in", p(&issued.cert), "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=");
    assert_eq!(norm_serial(serial), norm_serial(&issued.serial), "serial");
    let dates = openssl(&[
        "x509",
        "-in",
        p(&issued.cert),
        "-noout",
        "-startdate",
        "-enddate",
        "-dateopt",
        "iso_8601",
    ]);
    let date = |key: &str| -> String {
        dates
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {dates}"))
            .trim()
            .replace(' ', "T")
    };
    assert_eq!(issued.not_before, date("notBefore="), "not_before");
    assert_eq!(issued.not_after, date("notAfter="), "not_after");
    assert!(issued.not_before < issued.not_after);
    let status = pebble
        .cert_status_by_serial_blocking(&issued.serial)
        .expect("Pebble management API")
        .unwrap_or_else(|| panic!("Pebble never issued serial {}", issued.serial));
    assert!(!status.is_revoked(), "{status:?}");
}

/// The store's view: `current` is a relative link to `versions/<n>`.
fn current_target(state: &Path, name: &str) -> PathBuf {
    fs::read_link(state.join("certs").join(name).join("current")).expect("current is a symlink")
}

/// The entries of `certs/<name>/versions`, sorted.
fn versions_listing(state: &Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(state.join("certs").join(name).join("versions"))
        .expect("versions dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn lineage_versions(state: &Path, name: &str) -> Vec<u32> {
    Store::open(state)
        .expect("open store")
        .load_lineage(name)
        .expect("lineage.toml parses")
        .expect("lineage.toml exists")
        .versions
        .iter()
        .map(|v| v.version)
        .collect()
}

fn read_version_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"]
        .iter()
        .map(|f| {
            (
                (*f).to_owned(),
                fs::read(dir.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}")),
            )
        })
        .collect()
}

// ------------------------------------------------ one certificate, CLI ---

#[test]
fn standalone_issues_verified_certificates_of_each_key_type() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    for (i, key_type) in ["ec-p256", "ec-p384", "rsa2048"].into_iter().enumerate() {
        let name = format!("k{i}.test");
        let www = format!("www.k{i}.test");
        let domains = [name.as_str(), www.as_str()];
        let args = with(
            with(
                issue_args(&pebble, tmp.path(), &domains),
                standalone(&pebble),
            ),
            strings(&["--key-type", key_type]),
        );
        let v = issue_ok(&args);
        let issued = Issued::from_json(&v);
        assert_eq!(issued.name, name, "the name defaults to the first domain");
        assert_eq!(issued.version, 1);
        check_certificate(&issued, &pebble, &root, &domains, key_type);
        assert_eq!(current_target(tmp.path(), &name), Path::new("versions/1"));
        let lineage = Store::open(tmp.path())
            .expect("store")
            .load_lineage(&name)
            .expect("parses")
            .expect("exists");
        assert_eq!(lineage.domains, domains);
        assert_eq!(lineage.solver, "standalone");
        assert_eq!(lineage.key_type, key_type);
        assert_eq!(lineage.server, pebble.directory_url());
    }
    // One account, created by the first run and reused by the others.
    let accounts: Vec<_> = walk(&tmp.path().join("accounts"))
        .into_iter()
        .filter(|p| p.ends_with("account.json"))
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let mode = fs::metadata(&accounts[0])
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "account.json holds the account key");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn webroot_behind_a_web_server_issues_a_verified_certificate() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    let docroot = tmp.file("www");
    fs::create_dir(&docroot).expect("mkdir www");
    let server = StaticServer::start(&docroot, pebble.http_port()).expect("static server");

    let domains = ["web.test", "www.web.test"];
    let v = issue_ok(&with(
        issue_args(&pebble, tmp.path(), &domains),
        webroot(&docroot),
    ));
    let issued = Issued::from_json(&v);
    check_certificate(&issued, &pebble, &root, &domains, "ec-p256");
    // Pebble's VA fetched the tokens through the web server ...
    assert!(
        server.log().contains("/.well-known/acme-challenge/"),
        "the web server saw no challenge request:\n{}",
        server.log()
    );
    // ... and cleanup removed what the solver created, and only that.
    assert_eq!(
        fs::read_dir(&docroot).expect("read www").count(),
        0,
        "webroot left files behind: {:?}",
        walk(&docroot)
    );
    let lineage = Store::open(tmp.path())
        .expect("store")
        .load_lineage("web.test")
        .expect("parses")
        .expect("exists");
    assert_eq!(lineage.solver, "webroot");
    assert_eq!(
        lineage.solver_options.get("path").and_then(|v| v.as_str()),
        Some(docroot.to_str().expect("utf-8")),
        "the non-secret solver options are recorded for renewal"
    );
}

// ---------------------------------------------------- versions, crashes ---

/// Whether process `pid` has `file` open (its fd table in /proc).
fn has_open(pid: u32, file: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == file))
}

/// Issues a name, then runs a second issue of it and SIGKILLs that run at a
/// deterministic point after its order completed but before anything of the
/// new version is switched in, then checks that version 1 is untouched and
/// that the next run makes version 2 and cleans up the debris.
///
/// How the kill is made deterministic: the store stages a version's files
/// in a hidden `versions/.staging-<pid>-<n>` directory, then numbers and
/// publishes it only while it holds `<state>/lock` (flock), a file it opens
/// only to take the lock. The test holds the lock itself, so the second run
/// — its order validated and finalized at Pebble — blocks at the lock; the
/// test sees the lock file among the run's open files (/proc/<pid>/fd) and
/// kills it there. Timing a SIGKILL *inside* the few microseconds of file
/// writes is not possible without racing, so the state such a kill leaves —
/// a half-written hidden temp directory in `versions/` — is then laid down
/// by hand.
#[test]
fn reissue_makes_version_2_and_a_killed_run_leaves_version_1_intact() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    let state = tmp.path();
    let name = "again.test";
    let args = with(issue_args(&pebble, state, &[name]), standalone(&pebble));

    let first = Issued::from_json(&issue_ok(&args));
    assert_eq!(first.version, 1);
    check_certificate(&first, &pebble, &root, &[name], "ec-p256");
    // Not due: issuing again needs --force (issue is idempotent).
    let mut args = args;
    args.push("--force".to_owned());
    let cert_dir = state.join("certs").join(name);
    let v1_dir = cert_dir.join("versions/1");
    let v1_files = read_version_files(&v1_dir);

    // The killed run.
    let downloads_before = pebble_requests(&pebble, "/certZ/");
    let lock_path = state
        .join("lock")
        .canonicalize()
        .expect("the lock file exists");
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .expect("open lock");
    lock.lock().expect("flock the store");
    let mut child = command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certsmith");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_open(pid, &lock_path) {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            panic!(
                "the second run ended ({status}) before reaching the store: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the second run never reached the store lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let out = child.wait_with_output().expect("reap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("validated; requesting the certificate") && !stderr.contains("saved"),
        "the run was killed after its order, before saving: {stderr}"
    );
    // (More than one request when Pebble rejected a nonce: it rejects 5 %
    // by default, and the client retries.)
    assert!(
        pebble_requests(&pebble, "/certZ/") > downloads_before,
        "the killed run had downloaded its certificate"
    );
    lock.unlock().expect("unlock");
    drop(lock);

    // Version 1 is intact, current, readable, and still verifies. The
    // killed run had staged its files (outside the lock): a hidden
    // directory, never a version, swept by the next writer.
    assert_eq!(current_target(state, name), Path::new("versions/1"));
    let staged = format!(".staging-{pid}-");
    let listing = versions_listing(state, name);
    assert!(
        listing.iter().all(|v| v == "1" || v.starts_with(&staged)),
        "{listing:?}"
    );
    assert_eq!(read_version_files(&cert_dir.join("current")), v1_files);
    check_certificate(&first, &pebble, &root, &[name], "ec-p256");

    // What a kill in the middle of writing version 2 leaves behind.
    let debris = cert_dir.join(format!("versions/.tmp-2-{pid}"));
    fs::create_dir(&debris).expect("mkdir debris");
    let half = &v1_files[0].1[..v1_files[0].1.len() / 2];
    fs::write(debris.join("cert.pem"), half).expect("write");
    fs::write(
        debris.join("privkey.pem"),
        b"-----BEGIN PRIVATE KEY-----\nMIG",
    )
    .expect("write");
    fs::set_permissions(
        debris.join("privkey.pem"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    assert_eq!(current_target(state, name), Path::new("versions/1"));
    assert_eq!(read_version_files(&cert_dir.join("current")), v1_files);

    // The next run makes version 2, switches current, removes the debris.
    let second = Issued::from_json(&issue_ok(&args));
    assert_eq!(second.version, 2);
    assert_eq!(current_target(state, name), Path::new("versions/2"));
    assert_eq!(versions_listing(state, name), ["1", "2"]);
    assert!(!debris.exists(), "the half-written version was not removed");
    assert_ne!(second.serial, first.serial);
    check_certificate(&second, &pebble, &root, &[name], "ec-p256");
    assert_eq!(read_version_files(&v1_dir), v1_files, "version 1 unchanged");
    assert_eq!(lineage_versions(state, name), [1, 2]);
    // Nothing else left over in the certificate's directory: the settled
    // order's record stays as an empty file, to be written into by the
    // next order (docs/design.md §4.1).
    let mut entries: Vec<String> = fs::read_dir(&cert_dir)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["current", "lineage.toml", "pending-order.json", "versions"]
    );
    let pending = fs::metadata(cert_dir.join("pending-order.json")).expect("record");
    assert_eq!(pending.len(), 0, "the settled record is empty");
}

/// The name lock files of `solver` under `<state>/locks`.
fn name_locks(state: &Path, solver: &str) -> usize {
    let prefix = format!("name-{solver}-");
    fs::read_dir(state.join("locks")).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    })
}

/// Waits until `ready` holds while `child` runs; panics with its stderr if
/// it ended first, or after 30 s.
fn wait_while_running(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if child.try_wait().expect("wait").is_some() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("certsmith ended before {what}: {err}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("certsmith never got to {what} in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A challenge that lives in the certsmith process alone (the standalone
/// solver's manifest says `in_process = true`) gets no cleanup journal entry
/// and no name lock: killed while it is presented, the run leaves nothing
/// for a later run to clean. A webroot challenge (a file outside the
/// process) is journaled before `present` and survives the kill in the
/// journal. Pebble's VA connects to a listener that never answers, so each
/// run stays between `present` and cleanup (Pebble waits 15 s) until killed.
#[test]
fn a_killed_run_journals_a_webroot_challenge_but_not_a_standalone_one() {
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let http_port = silent.local_addr().expect("addr").port();
    let pebble = Pebble::start(PebbleOpts {
        http_port,
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let state = tmp.path();

    // Standalone: presented once its listener (opened by the first
    // http-01 `present`, after the journal would have been written) answers.
    let listen = free_port();
    let args = with(
        issue_args(&pebble, state, &["memory.test"]),
        standalone_on(listen),
    );
    let mut child = command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certsmith");
    wait_while_running(&mut child, "presenting the standalone challenge", || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, listen)).is_ok()
    });
    assert_eq!(
        journal_entries(state),
        0,
        "a standalone challenge was journaled"
    );
    assert_eq!(
        name_locks(state, "standalone"),
        0,
        "a standalone name was locked"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert_eq!(journal_entries(state), 0);

    // Webroot: presented once the token file is in the document root.
    let docroot = tmp.file("www");
    fs::create_dir(&docroot).expect("mkdir www");
    let tokens = docroot.join(".well-known/acme-challenge");
    let mut child = command(&with(
        issue_args(&pebble, state, &["disk.test"]),
        webroot(&docroot),
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn certsmith");
    wait_while_running(&mut child, "presenting the webroot challenge", || {
        fs::read_dir(&tokens).is_ok_and(|mut d| d.next().is_some())
    });
    assert_eq!(
        journal_entries(state),
        1,
        "the webroot challenge is journaled"
    );
    assert_eq!(name_locks(state, "webroot"), 1, "its name was locked");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert_eq!(journal_entries(state), 1, "the entry outlives the kill");
    drop(silent);
}

/// Eight first runs at once on an empty state directory: one account is
/// created at the CA and stored, and every run uses it.
#[test]
fn concurrent_first_runs_create_one_account() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let state = tmp.path();
    let docroot = tmp.file("www");
    fs::create_dir(&docroot).expect("mkdir www");
    let _server = StaticServer::start(&docroot, pebble.http_port()).expect("static server");
    let children: Vec<Child> = (0..8)
        .map(|i| {
            command(&with(
                issue_args(&pebble, state, &[&format!("race{i}.test")]),
                webroot(&docroot),
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn certsmith")
        })
        .collect();
    for c in children {
        let r = Run::from_output(c.wait_with_output().expect("wait"));
        assert_eq!(r.code, Some(0), "{}", r.describe());
    }
    let log = fs::read_to_string(pebble.log_path()).unwrap_or_default();
    let created = log
        .lines()
        .filter(|l| l.contains("There are now") && l.contains("accounts in memory"))
        .count();
    assert_eq!(created, 1, "accounts created at the CA:\n{log}");
    let accounts: Vec<PathBuf> = walk(&state.join("accounts"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "account.json"))
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
}

#[test]
fn two_processes_on_one_state_dir_both_succeed_and_order_a_name_once() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    let state = tmp.path();
    let docroot = tmp.file("www");
    fs::create_dir(&docroot).expect("mkdir www");
    // webroot, not standalone: two standalone solvers cannot both listen on
    // the one port Pebble's VA connects to; one web server serves both.
    let _server = StaticServer::start(&docroot, pebble.http_port()).expect("static server");
    let spawn = |domain: &str| -> Child {
        command(&with(
            issue_args(&pebble, state, &[domain]),
            webroot(&docroot),
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certsmith")
    };
    let finish = |c: Child| -> Issued {
        let r = Run::from_output(c.wait_with_output().expect("wait"));
        assert_eq!(r.code, Some(0), "{}", r.describe());
        Issued::from_json(&r.json())
    };

    // Different names, on a fresh state dir: both also create an account.
    let (a, b) = (spawn("one.test"), spawn("two.test"));
    let (a, b) = (finish(a), finish(b));
    for (issued, name) in [(&a, "one.test"), (&b, "two.test")] {
        assert_eq!(issued.version, 1);
        check_certificate(issued, &pebble, &root, &[name], "ec-p256");
        assert_eq!(current_target(state, name), Path::new("versions/1"));
        assert_eq!(lineage_versions(state, name), [1]);
    }

    // The same name twice at once: one claims it and orders it; the other
    // waits for the claim, then finds it stored and not due: one order,
    // one version, both exit 0.
    let (c, d) = (spawn("same.test"), spawn("same.test"));
    let results: Vec<Value> = [c, d]
        .into_iter()
        .map(|child| {
            let r = Run::from_output(child.wait_with_output().expect("wait"));
            assert_eq!(r.code, Some(0), "{}", r.describe());
            r.json()
        })
        .collect();
    let mut actions: Vec<&str> = results
        .iter()
        .map(|v| v["action"].as_str().unwrap_or_default())
        .collect();
    actions.sort_unstable();
    assert_eq!(actions, ["issued", "skipped"], "{results:?}");
    let issued = results
        .iter()
        .find(|v| v["action"] == "issued")
        .map(Issued::from_json)
        .expect("the issued one");
    assert_eq!(issued.version, 1);
    check_certificate(&issued, &pebble, &root, &["same.test"], "ec-p256");
    assert_eq!(current_target(state, "same.test"), Path::new("versions/1"));
    assert_eq!(versions_listing(state, "same.test"), ["1"]);
    assert_eq!(lineage_versions(state, "same.test"), [1]);
    assert!(
        walk(state).iter().all(|p| !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".tmp"))),
        "temporary files left: {:?}",
        walk(state)
    );
}

// ------------------------------------------- many certificates, engine ---

/// The directory of the built binary and its plugins.
fn build_dir() -> PathBuf {
    certsmith_bin()
        .parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

/// The standalone plugin from the build directory, listening where Pebble's
/// VA connects.
fn standalone_instance(pebble: &Pebble) -> SolverInstance {
    let host = PluginHost::discover(&SearchPath {
        dirs: vec![build_dir()],
        ..SearchPath::default()
    });
    host.get("standalone")
        .unwrap_or_else(|e| panic!("{e}: run `cargo build --workspace` first"))
        .instantiate(&ConfigSources {
            cli: &[(
                "listen".to_owned(),
                format!("127.0.0.1:{}", pebble.http_port()),
            )],
            ..Default::default()
        })
        .expect("configure standalone")
}

/// A runtime like the CLI's: multi-threaded, two workers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An engine on Pebble with a fresh account in `state`.
async fn connect(pebble: &Pebble, state: &Path, progress: Progress) -> Engine {
    let client =
        AcmeClient::new(&pebble.directory_url(), Some(pebble.ca_cert_path())).expect("client");
    Engine::connect(
        client,
        Store::open(state).expect("store"),
        AccountOptions {
            agree_tos: true,
            ..Default::default()
        },
        progress,
        EngineOptions::default(),
    )
    .await
    .expect("connect to Pebble")
}

/// `n` requests for `<prefix><i>.test` and `www.<prefix><i>.test`.
fn requests(solver: &SolverInstance, prefix: &str, n: usize) -> Vec<(Vec<String>, CertRequest)> {
    (0..n)
        .map(|i| {
            let names = vec![format!("{prefix}{i}.test"), format!("www.{prefix}{i}.test")];
            let request = CertRequest::new(
                names[0].clone(),
                identifiers::parse_domains(&names).expect("valid names"),
                solver.clone(),
                KeyType::EcP256,
            );
            (names, request)
        })
        .collect()
}

/// `n` certificates with two names each, issued by one engine at most
/// `concurrency` at a time.
fn issue_through_engine(
    pebble: &Pebble,
    state: &Path,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Vec<(Vec<String>, Result<IssuedCert, IssueError>)> {
    let solver = standalone_instance(pebble);
    runtime().block_on(async {
        let engine = connect(pebble, state, Progress::none()).await;
        let (names, requests): (Vec<_>, Vec<_>) = requests(&solver, prefix, n).into_iter().unzip();
        let results = engine.issue_all(requests, concurrency).await;
        names.into_iter().zip(results).collect()
    })
}

fn check_all(
    results: &[(Vec<String>, Result<IssuedCert, IssueError>)],
    pebble: &Pebble,
    root: &Path,
) {
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(d, r)| r.as_ref().err().map(|e| format!("{}: {e}", d[0])))
        .collect();
    assert!(failures.is_empty(), "failed: {failures:#?}");
    let mut serials = BTreeSet::new();
    for (domains, r) in results {
        let cert = r.as_ref().expect("checked above");
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        let issued = Issued::from_engine(cert);
        assert_eq!(issued.version, 1);
        check_certificate(&issued, pebble, root, &domains, "ec-p256");
        serials.insert(issued.serial);
    }
    assert_eq!(
        serials.len(),
        results.len(),
        "every certificate is distinct"
    );
}

#[test]
fn twenty_certificates_at_once_from_one_process() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    let results = issue_through_engine(&pebble, tmp.path(), "c", 20, 8);
    assert_eq!(results.len(), 20);
    check_all(&results, &pebble, &root);
}

/// `issue_each` streams: a request is taken from the iterator only when an
/// order slot is free, and each result is handed over as its order ends.
/// (Spawning every order at once, as `issue_all` once did, held the state
/// of all of them: memory grew with the number of certificates.)
#[test]
fn issue_each_takes_a_request_only_when_a_slot_is_free() {
    const N: usize = 12;
    const CONCURRENCY: usize = 3;
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    let solver = standalone_instance(&pebble);
    let taken = Arc::new(AtomicUsize::new(0));
    let (results, taken_at_each) = runtime().block_on(async {
        let engine = connect(&pebble, tmp.path(), Progress::none()).await;
        let counter = taken.clone();
        let (mut names_of, requests): (Vec<_>, Vec<_>) =
            requests(&solver, "s", N).into_iter().unzip();
        let requests = requests.into_iter().inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let mut results: Vec<(Vec<String>, Result<IssuedCert, IssueError>)> = Vec::new();
        let mut taken_at_each = Vec::new();
        engine
            .issue_each(requests, CONCURRENCY, |i, result| {
                taken_at_each.push(taken.load(Ordering::SeqCst));
                results.push((std::mem::take(&mut names_of[i]), result));
            })
            .await;
        (results, taken_at_each)
    });
    assert_eq!(results.len(), N, "one result per request");
    for (k, &taken) in taken_at_each.iter().enumerate() {
        assert!(
            taken <= k + CONCURRENCY,
            "when result {} came, {taken} requests had been taken: more than the {CONCURRENCY} slots allow",
            k + 1
        );
    }
    assert!(
        results.iter().all(|(names, _)| !names.is_empty()),
        "every index came once"
    );
    check_all(&results, &pebble, &root);
}

/// An order's first request (newOrder) is signed with the nonce its
/// predecessor's certificate download brought, not one from `HEAD
/// newNonce`, and Pebble accepts it: one order after another, only the
/// account and the first order ask for a nonce, and no newOrder is signed
/// twice (a refused nonce would make instant-acme sign it again).
#[test]
fn orders_reuse_the_nonce_of_the_previous_download() {
    const N: usize = 6;
    let pebble = Pebble::start(PebbleOpts {
        nonce_reject_percent: Some(0),
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    let results = issue_through_engine(&pebble, tmp.path(), "nonce", N, 1);
    check_all(&results, &pebble, &root);
    assert_eq!(
        pebble_requests(&pebble, "HEAD /nonce-plz"),
        2,
        "the account and the first order ask Pebble for a nonce, the other orders reuse one"
    );
    assert_eq!(
        pebble_requests(&pebble, "POST /order-plz"),
        N,
        "every reused nonce was accepted"
    );
}

#[test]
fn ten_certificates_with_half_the_nonces_rejected() {
    let pebble = Pebble::start(PebbleOpts {
        nonce_reject_percent: Some(50),
        ..PebbleOpts::default()
    })
    .expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let root = root_file(&pebble, &tmp);
    let results = issue_through_engine(&pebble, tmp.path(), "n", 10, 5);
    check_all(&results, &pebble, &root);
    // Pebble did reject nonces, and the engine retried through them: one
    // account and ten orders took more POSTs to their resources than that.
    let log = fs::read_to_string(pebble.log_path()).unwrap_or_default();
    assert!(
        log.contains("Configured to reject 50% of good nonces"),
        "PEBBLE_WFE_NONCEREJECT was not applied"
    );
    let posts =
        pebble_requests(&pebble, "POST /sign-me-up") + pebble_requests(&pebble, "POST /order-plz");
    assert!(posts > 11, "no request was retried ({posts} POSTs)");
}

/// Cancelling a run (what the CLI does on Ctrl-C) while orders are in
/// flight: every result is a certificate or `Cancelled`, every challenge
/// that was presented is cleaned up, and the standalone listener is closed
/// again.
#[test]
fn cancelling_a_run_cleans_up_every_presented_challenge() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let solver = standalone_instance(&pebble);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (results, events) = runtime().block_on(async {
        let engine = connect(&pebble, tmp.path(), Progress::new(tx)).await;
        let token = engine.cancel_token();
        let (_, requests): (Vec<_>, Vec<_>) = requests(&solver, "x", 10).into_iter().unzip();
        let run = tokio::spawn(async move { engine.issue_all(requests, 4).await });
        // Cancel as soon as the first challenge response is in place.
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            let presented = matches!(event, ProgressEvent::ChallengePresented { .. });
            events.push(event);
            if presented {
                token.cancel();
                break;
            }
        }
        let results = run.await.expect("the run task");
        // The engine is gone with the task: every event is in the channel.
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        (results, events)
    });

    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(IssueError::Cancelled))),
        "{results:#?}"
    );
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(IssueError::Cancelled))),
        "the cancellation came too late to stop anything"
    );
    let mut presented = BTreeSet::new();
    let mut cleaned = BTreeSet::new();
    for e in &events {
        match e {
            ProgressEvent::ChallengePresented { name, domain, .. } => {
                presented.insert((name.clone(), domain.clone()));
            }
            ProgressEvent::CleanedUp { name, domain, .. } => {
                cleaned.insert((name.clone(), domain.clone()));
            }
            ProgressEvent::CleanupFailed { domain, error, .. } => {
                panic!("cleanup failed for {domain}: {error}")
            }
            _ => {}
        }
    }
    assert!(!presented.is_empty());
    let missed: Vec<_> = presented.difference(&cleaned).collect();
    assert!(missed.is_empty(), "never cleaned up: {missed:?}");
    // The standalone plugin closes its listener after the last cleanup.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpListener::bind((Ipv4Addr::LOCALHOST, pebble.http_port())).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {} is still held after every challenge was cleaned up",
            pebble.http_port()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --------------------------------------------------------- bad input ---

/// A TCP listener that counts connections and drops them: the `--server`
/// of runs that must never contact a CA.
struct ConnectionCounter {
    port: u16,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<TcpListener>>,
}

impl ConnectionCounter {
    fn start() -> ConnectionCounter {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {}
                }
            }
            listener
        });
        ConnectionCounter {
            port,
            count,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Stops listening; the number of connections ever made, including
    /// any still waiting in the backlog.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let listener = self.thread.take().expect("running").join().expect("thread");
        let mut n = self.count.load(Ordering::SeqCst);
        while listener.accept().is_ok() {
            n += 1;
        }
        n
    }
}

#[test]
fn bad_input_never_reaches_the_ca() {
    let tmp = TempState::new().expect("temp state");
    let ca = TestCa::generate().expect("test CA");
    let ca_file = tmp.file("ca.pem");
    fs::write(&ca_file, &ca.ca_cert_pem).expect("write ca");
    let counter = ConnectionCounter::start();
    let server = counter.url();
    let state = tmp.path();
    let args = |domains: &[&str], solver: &[&str]| {
        let mut a = issue_args_for(&server, &ca_file, state, domains);
        a.extend(strings(solver));
        a
    };
    let standalone = ["--solver", "standalone"];

    let long = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(63),
        "e".repeat(40),
        "com".to_owned(),
    ]
    .join(".");
    assert_eq!(long.len(), 300);

    // A regular file where the state directory should be: creating a
    // directory under it fails with ENOTDIR even for root. (A chmod 0500
    // directory would not do: the tests run as root in CI, and root writes
    // through permission bits; a read-only mount would need privileges.)
    let blocker = tmp.file("not-a-directory");
    fs::write(&blocker, "a file").expect("write");
    let unwritable = blocker.join("state");
    let mut unwritable_args = strings(&["issue", "--server", &server, "--ca-cert"]);
    unwritable_args.extend([
        path_str(&ca_file),
        "--agree-tos".into(),
        "--state-dir".into(),
    ]);
    unwritable_args.push(path_str(&unwritable));
    unwritable_args.extend(strings(&["--output", "json", "-d", "ok.test"]));
    unwritable_args.extend(strings(&standalone));

    let many: Vec<String> = (0..101).map(|i| format!("n{i}.example.com")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();

    // (what, arguments, expected in stderr, error class in the JSON).
    let cases: Vec<(&str, Vec<String>, Vec<String>, &str)> = vec![
        (
            "101 names, one more than the CA accepts",
            args(&many, &standalone),
            strings(&["101 names in one certificate", "at most 100"]),
            "usage",
        ),
        (
            "an internationalized name with a disallowed character",
            args(&["b\u{fc}\u{2028}cher.example"], &standalone),
            strings(&["not a valid internationalized name", "U+2028"]),
            "usage",
        ),
        (
            "a space in a name",
            args(&["ex ample.com"], &standalone),
            strings(&["invalid domain 'ex ample.com'", "a space"]),
            "usage",
        ),
        (
            "two wildcards",
            args(&["*.*.example.com"], &standalone),
            strings(&["'*.*.example.com'", "wildcard is allowed only once"]),
            "usage",
        ),
        (
            "a 300-character name",
            args(&[long.as_str()], &standalone),
            strings(&["300 characters long", "at most 253"]),
            "usage",
        ),
        (
            "a wildcard with an http-01 solver",
            args(&["*.example.com"], &standalone),
            strings(&["'*.example.com' needs dns-01", "solver 'standalone'"]),
            "usage",
        ),
        (
            "an unknown solver",
            args(&["example.com"], &["--solver", "nosuch"]),
            strings(&[
                "unknown solver 'nosuch'",
                "available: ",
                "standalone",
                "webroot",
            ]),
            "usage",
        ),
        (
            "an unwritable state directory",
            unwritable_args,
            vec![
                "state directory".to_owned(),
                path_str(&blocker),
                "--state-dir".to_owned(),
            ],
            "store",
        ),
    ];
    for (what, args, expected, class) in cases {
        let r = issue_fails(&args, 2);
        for e in &expected {
            assert!(
                r.stderr.contains(e.as_str()),
                "{what}: expected {e:?} in stderr: {}",
                r.describe()
            );
        }
        assert_eq!(r.json()["error"]["class"], class, "{what}");
    }
    assert!(blocker.is_file(), "the file is untouched");
    assert_eq!(
        counter.finish(),
        0,
        "a run with bad input connected to the CA"
    );
}

/// How many requests in Pebble's log match `method_and_path` (it logs
/// every request as `<METHOD> <path> -> calling handler()`).
fn pebble_requests(pebble: &Pebble, method_and_path: &str) -> usize {
    fs::read_to_string(pebble.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(method_and_path))
        .count()
}

#[test]
fn missing_agree_tos_shows_the_terms_and_creates_nothing() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let args: Vec<String> = with(
        issue_args(&pebble, tmp.path(), &["tos.test"]),
        standalone(&pebble),
    )
    .into_iter()
    .filter(|a| a != "--agree-tos")
    .collect();
    let directory_fetches = pebble_requests(&pebble, "GET /dir");
    let r = issue_fails(&args, 2);
    assert!(
        pebble_requests(&pebble, "GET /dir") > directory_fetches,
        "certsmith reads the terms from the directory"
    );
    assert!(
        r.stderr.contains("terms of service") && r.stderr.contains("--agree-tos"),
        "{}",
        r.describe()
    );
    // Pebble publishes terms in its directory; the message shows their URL.
    let directory = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            AcmeClient::new(&pebble.directory_url(), Some(pebble.ca_cert_path()))
                .expect("client")
                .directory()
                .await
        })
        .expect("Pebble's directory");
    let tos = directory
        .terms_of_service
        .expect("Pebble publishes terms of service");
    assert!(
        r.stderr.contains(&tos),
        "the terms URL {tos}: {}",
        r.describe()
    );
    assert_eq!(r.json()["error"]["class"], "usage");
    assert_eq!(
        pebble_requests(&pebble, "POST /sign-me-up"),
        0,
        "an account"
    );
    assert_eq!(pebble_requests(&pebble, "POST /order-plz"), 0, "an order");
    assert!(
        walk(&tmp.path().join("accounts")).is_empty(),
        "no account stored"
    );
}

// ------------------------------------------------- one test per exit code ---

#[test]
fn exit_7_when_the_ca_cannot_be_reached() {
    let tmp = TempState::new().expect("temp state");
    let ca = TestCa::generate().expect("test CA");
    let ca_file = tmp.file("ca.pem");
    fs::write(&ca_file, &ca.ca_cert_pem).expect("write ca");
    // A port nothing listens on: connection refused.
    let port = free_port();
    let server = format!("https://127.0.0.1:{port}/dir");
    let mut args = issue_args_for(&server, &ca_file, tmp.path(), &["down.test"]);
    args.extend(strings(&["--solver", "standalone"]));
    let started = Instant::now();
    let r = issue_fails(&args, 7);
    assert!(
        r.stderr.contains(&server),
        "names the server: {}",
        r.describe()
    );
    assert_eq!(r.json()["error"]["class"], "network");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a refused connection fails fast"
    );
}

#[test]
fn exit_3_when_the_solver_cannot_present() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    // Something else holds the port the standalone solver must listen on.
    let _squatter =
        TcpListener::bind((Ipv4Addr::LOCALHOST, pebble.http_port())).expect("bind the port");
    let r = issue_fails(
        &with(
            issue_args(&pebble, tmp.path(), &["busy.test"]),
            standalone(&pebble),
        ),
        3,
    );
    assert!(
        r.stderr.contains(
            "solver 'standalone' failed to present the http-01 challenge for 'busy.test'"
        ),
        "{}",
        r.describe()
    );
    assert_eq!(r.json()["error"]["class"], "solver");
    assert!(!tmp.path().join("certs/busy.test/current").exists());
}

#[test]
fn exit_4_when_the_ca_refuses_the_validation() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    // A webroot no web server serves: the token is written, but Pebble's VA
    // finds nothing listening on the http-01 port.
    let docroot = tmp.file("www");
    fs::create_dir(&docroot).expect("mkdir");
    let r = issue_fails(
        &with(
            issue_args(&pebble, tmp.path(), &["unserved.test"]),
            webroot(&docroot),
        ),
        4,
    );
    assert!(
        r.stderr
            .contains("the CA did not validate unserved.test (http-01)"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr.contains("urn:ietf:params:acme:error:"),
        "the CA's problem type is shown: {}",
        r.describe()
    );
    assert_eq!(r.json()["error"]["class"], "ca_refused");
    assert_eq!(
        fs::read_dir(&docroot).expect("read").count(),
        0,
        "cleanup ran after the failed validation"
    );
    assert!(!tmp.path().join("certs/unserved.test/current").exists());
}

/// An HTTPS reverse proxy in front of Pebble that answers newOrder with
/// `429 Too Many Requests`, `Retry-After` and an ACME `rateLimited` problem
/// document, as Let's Encrypt does; everything else goes to Pebble with the
/// Host header unchanged, so Pebble's URLs (and the JWS `url` it checks)
/// name the proxy. Pebble 2.4.0 has no rate limits of its own.
const RATE_LIMIT_PROXY: &str = r#"
import http.client, http.server, json, ssl, sys
from urllib.parse import urlparse

port, upstream, cert, key, upstream_ca = sys.argv[1:6]
up = ssl.create_default_context(cafile=upstream_ca)
up.check_hostname = False

def connect():
    return http.client.HTTPSConnection("127.0.0.1", int(upstream), context=up, timeout=30)

c = connect()
c.request("GET", "/dir")
DIRECTORY = json.loads(c.getresponse().read())
NEW_ORDER = urlparse(DIRECTORY["newOrder"]).path
NEW_NONCE = urlparse(DIRECTORY["newNonce"]).path
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_one(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        if self.command == "POST" and urlparse(self.path).path == NEW_ORDER:
            u = connect()
            u.request("HEAD", NEW_NONCE)
            nonce = u.getresponse().getheader("Replay-Nonce")
            doc = json.dumps({
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many new orders recently (test proxy)",
                "status": 429,
            }).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Retry-After", "3600")
            if nonce:
                self.send_header("Replay-Nonce", nonce)
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)
            sys.stderr.write("429 for newOrder\n")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        u = connect()
        u.request(self.command, self.path, body=body, headers=headers)
        r = u.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = handle_one

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Proxy)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
sys.stderr.write("ready\n")
server.serve_forever()
"#;

#[test]
fn exit_5_when_the_ca_rate_limits() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let tmp = TempState::new().expect("temp state");
    let ca = TestCa::generate().expect("proxy CA");
    let (ca_file, cert, key, script) = (
        tmp.file("proxy-ca.pem"),
        tmp.file("proxy.pem"),
        tmp.file("proxy.key"),
        tmp.file("proxy.py"),
    );
    fs::write(&ca_file, &ca.ca_cert_pem).expect("write");
    fs::write(&cert, &ca.leaf_cert_pem).expect("write");
    fs::write(&key, &ca.leaf_key_pem).expect("write");
    fs::write(&script, RATE_LIMIT_PROXY).expect("write");
    let port = free_port();
    let upstream = pebble
        .directory_url()
        .trim_start_matches("https://127.0.0.1:")
        .trim_end_matches("/dir")
        .to_owned();
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(port.to_string())
        .arg(&upstream)
        .arg(&cert)
        .arg(&key)
        .arg(pebble.ca_cert_path());
    let proxy =
        ServerProcess::spawn("rate-limit proxy", cmd, &tmp.file("proxy.log")).expect("proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not start: {}",
            proxy.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(25));
    }

    let server = format!("https://127.0.0.1:{port}/dir");
    let mut args = issue_args_for(&server, &ca_file, tmp.path(), &["limited.test"]);
    args.extend(standalone(&pebble));
    let r = issue_fails(&args, 5);
    assert!(
        r.stderr.contains("rate-limited") && r.stderr.contains("retry after"),
        "the retry time is shown: {}\nproxy log:\n{}",
        r.describe(),
        proxy.log_tail(20)
    );
    assert!(r.stderr.contains("too many new orders recently"));
    assert_eq!(r.json()["error"]["class"], "rate_limited");
    assert!(proxy.log().contains("429 for newOrder"));
    // The account went through the proxy to Pebble; the order never did.
    assert!(pebble_requests(&pebble, "POST /sign-me-up") >= 1);
    assert_eq!(pebble_requests(&pebble, "POST /order-plz"), 0);
}
