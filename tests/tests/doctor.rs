//! `certsmith doctor` through the CLI: for every check, one case that
//! passes and one that does not, against the real servers — Pebble (the
//! CA's directory, its clock; ARI and profiles through the stand-in proxy
//! in front of it, since Pebble 2.4.0 has neither), BIND9 (zones,
//! nameservers, the rfc2136 TSIG key good and bad), moto (Route53
//! credentials accepted and refused), the Cloudflare stand-in (token good
//! and bad), python's static file server (a webroot served or not).
//!
//! Every run uses `--output json`; the checks are read back by name. The
//! text form is checked once: one line per check, a fix on every line
//! that is not ok.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use certsmith_tests::ari_proxy::AriProxy;
use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn};
use certsmith_tests::moto::{Moto, MotoOpts};
use certsmith_tests::{
    Bind, Pebble, PebbleOpts, StaticServer, TempState, ZoneSpec, certsmith_bin, free_port,
};
use serde_json::Value;

/// The exit code of a doctor with a failed check (README, cli/src/exit.rs).
pub(crate) const DOCTOR_FAILED: i32 = 10;

/// The prefixes of the variables certsmith and its solvers read.
const SOLVER_ENV_PREFIXES: &[&str] = &[
    "CERTSMITH_",
    "CLOUDFLARE_",
    "RFC2136_",
    "AWS_",
    "DO_",
    "HETZNER_",
    "GCE_",
    "AZURE_",
    "PDNS_",
    "ACME_DNS_",
    "EXEC_",
    "HTTPREQ_",
];

/// A doctor run: its exit code, its JSON report, its stderr.
pub(crate) struct Doctor {
    pub(crate) code: Option<i32>,
    pub(crate) json: Value,
    pub(crate) stderr: String,
}

impl Doctor {
    /// The check named `name` (the first one, when several share it).
    pub(crate) fn check(&self, name: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["check"] == name))
            .unwrap_or_else(|| panic!("no check {name:?} in {:#}\n{}", self.json, self.stderr))
    }

    /// Asserts the status of `name`, and that a non-ok one has a fix.
    pub(crate) fn expect(&self, name: &str, status: &str) -> String {
        let c = self.check(name);
        assert_eq!(c["status"], status, "{name}: {c:#}\nall: {:#}", self.json);
        if status == "ok" {
            assert!(c["fix"].is_null(), "{c:#}");
        } else {
            let fix = c["fix"].as_str().unwrap_or_default();
            assert!(fix.len() > 10, "{name}: a {status} without a fix: {c:#}");
        }
        c["detail"].as_str().unwrap_or_default().to_owned()
    }
}

pub(crate) fn run_doctor(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Doctor {
    let out = doctor_cmd(config, extra, env, "json");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("doctor's stdout is not one JSON object ({e}):\n{stdout}\n{stderr}")
    });
    let code = out.status.code();
    assert_eq!(
        json["exit_code"].as_i64().map(|c| c as i32),
        code,
        "{json:#}"
    );
    let failed = json["summary"]["fail"].as_u64().unwrap_or(0);
    assert_eq!(
        code,
        Some(if failed > 0 { DOCTOR_FAILED } else { 0 }),
        "{json:#}\n{stderr}"
    );
    Doctor { code, json, stderr }
}

pub(crate) fn doctor_cmd(
    config: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    output: &str,
) -> Output {
    let mut cmd = Command::new(certsmith_bin());
    // Only what the test sets reaches a solver: no credential of the
    // environment the tests run in.
    for (k, _) in std::env::vars_os() {
        let k_ = k.to_string_lossy();
        if SOLVER_ENV_PREFIXES.iter().any(|p| k_.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.args(["doctor", "--output", output, "--config"])
        .arg(config)
        .args(extra)
        .envs(env.iter().copied());
    cmd.output().expect("run certsmith doctor")
}

/// A config file: `[defaults]` with the state dir and CA, then `certs`.
pub(crate) fn write_config(
    home: &TempState,
    file: &str,
    pebble_dir: &str,
    ca: &Path,
    certs: &str,
) -> std::path::PathBuf {
    let path = home.file(file);
    let text = format!(
        "[defaults]\nserver = {pebble_dir:?}\nca_cert = {:?}\nstate_dir = {:?}\n\n{certs}",
        ca.display().to_string(),
        home.path().display().to_string(),
    );
    std::fs::write(&path, text).expect("write the config");
    path
}

fn standalone_cert(listen: &str, tls: &str) -> String {
    format!(
        "[[certificate]]\nname = \"web\"\ndomains = [\"www.example.test\"]\nsolver = \"standalone\"\n\
         [certificate.solver_options]\nlisten = [{listen:?}]\ntls_listen = [{tls:?}]\n"
    )
}

#[test]
fn config_state_dir_keys_plugins_and_ports() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let home = TempState::new().expect("temp");
    let dir = pebble.directory_url();
    let ca = pebble.ca_cert_path();
    let listen = format!("127.0.0.1:{}", free_port());
    let tls = format!("127.0.0.1:{}", free_port());
    let good = write_config(
        &home,
        "good.toml",
        &dir,
        ca,
        &standalone_cert(&listen, &tls),
    );

    // All good.
    let d = run_doctor(&good, &[], &[]);
    assert_eq!(d.code, Some(0), "{:#}", d.json);
    assert!(d.expect("config", "ok").contains("1 certificate(s)"));
    assert!(d.expect("state-dir", "ok").contains("mode 0700"));
    d.expect("private-keys", "ok");
    assert!(d.expect("plugin standalone", "ok").contains("ABI 1.3"));
    assert!(
        d.expect("credentials standalone", "skipped")
            .contains("not supported by this plugin")
    );
    d.expect(&format!("port {listen}"), "ok");
    d.expect("ca-directory", "ok");

    // The text form: one line per check, a fix on each that is not ok.
    let out = doctor_cmd(&good, &[], &[], "text");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        d.json["checks"].as_array().map_or(0, Vec::len) + 1,
        "{text}"
    );
    for l in &lines[..lines.len() - 1] {
        let status = l.split_whitespace().next().unwrap_or_default();
        assert!(["ok", "warn", "fail", "skipped"].contains(&status), "{l}");
        assert_eq!(status != "ok", l.contains(" — fix: "), "{l}");
    }

    // The config: an unknown solver fails, and so does a syntax error.
    let bad = write_config(
        &home,
        "bad.toml",
        &dir,
        ca,
        "[[certificate]]\nname = \"x\"\ndomains = [\"x.example.test\"]\nsolver = \"standalon\"\n",
    );
    let d = run_doctor(&bad, &[], &[]);
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    let detail = d.expect("config", "fail");
    assert!(detail.contains("standalon"), "{detail}");
    std::fs::write(home.file("broken.toml"), "[[certificate]\nname=").expect("write");
    let d = run_doctor(&home.file("broken.toml"), &[], &[]);
    assert!(
        d.expect("config", "fail").contains("broken.toml:1:"),
        "{:#}",
        d.json
    );
    // The CA is not known then: nothing is sent to a default one.
    assert!(d.expect("ca-directory", "skipped").contains("config"));

    // A plugin whose options are incomplete (a Cloudflare token missing).
    let cf = write_config(
        &home,
        "cf.toml",
        &dir,
        ca,
        "[[certificate]]\nname = \"x\"\ndomains = [\"x.example.test\"]\nsolver = \"cloudflare\"\n",
    );
    let d = run_doctor(&cf, &[], &[]);
    let detail = d.expect("config", "fail");
    assert!(detail.contains("api_token"), "{detail}");
    // Options the manifest accepts but the plugin itself refuses (a TTL
    // Cloudflare does not take): the config is fine, the plugin is not.
    let cf = write_config(
        &home,
        "cf-ttl.toml",
        &dir,
        ca,
        "[[certificate]]\nname = \"x\"\ndomains = [\"x.example.test\"]\nsolver = \"cloudflare\"\n\
         [certificate.solver_options]\nttl = 45\n",
    );
    let d = run_doctor(&cf, &[], &[("CLOUDFLARE_API_TOKEN", "some-token")]);
    d.expect("config", "ok");
    let detail = d.expect("plugin cloudflare", "fail");
    assert!(detail.contains("ttl 45"), "{detail}");

    // The state directory: writable by others, then a private key readable
    // by others, then not a directory at all.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let d = run_doctor(&good, &[], &[]);
    assert!(d.expect("state-dir", "fail").contains("0777"));
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let d = run_doctor(&good, &[], &[]);
    assert_eq!(d.code, Some(0));
    d.expect("state-dir", "warn");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let key_dir = home.path().join("certs/web/versions/1");
    std::fs::create_dir_all(&key_dir).expect("mkdir");
    let key = key_dir.join("privkey.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let d = run_doctor(&good, &[], &[]);
    let detail = d.expect("private-keys", "fail");
    assert!(detail.contains("privkey.pem (0644)"), "{detail}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    d.check("state-dir");
    let file_state = home.file("state-file");
    std::fs::write(&file_state, "").expect("write");
    let d = run_doctor(
        &good,
        &["--state-dir", file_state.to_str().expect("utf-8")],
        &[],
    );
    assert!(d.expect("state-dir", "fail").contains("not a directory"));

    // Port 80 for standalone: held by this test process, which is named.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let held_addr = held.local_addr().expect("addr").to_string();
    let busy = write_config(
        &home,
        "busy.toml",
        &dir,
        ca,
        &standalone_cert(&held_addr, &tls),
    );
    let d = run_doctor(&busy, &[], &[]);
    let detail = d.expect(&format!("port {held_addr}"), "fail");
    assert!(
        detail.contains(&format!("(pid {})", std::process::id())),
        "the holder is not named: {detail}"
    );
    // tls_listen only matters for tls-alpn-01: a warning.
    let busy_tls = write_config(
        &home,
        "busy-tls.toml",
        &dir,
        ca,
        &standalone_cert(&listen, &held_addr),
    );
    let d = run_doctor(&busy_tls, &[], &[]);
    assert_eq!(d.code, Some(0));
    d.expect(&format!("port {held_addr}"), "warn");
    drop(held);
}

#[test]
fn ca_directory_clock_ari_and_profiles() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let home = TempState::new().expect("temp");
    let cert = standalone_cert(
        &format!("127.0.0.1:{}", free_port()),
        &format!("127.0.0.1:{}", free_port()),
    );

    // Pebble itself: reachable, same clock, neither ARI nor profiles.
    let cfg = write_config(
        &home,
        "pebble.toml",
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        &cert,
    );
    let d = run_doctor(&cfg, &[], &[]);
    assert_eq!(d.code, Some(0), "{:#}", d.json);
    d.expect("ca-directory", "ok");
    assert!(d.expect("clock", "ok").contains(" s "));
    d.expect("ari", "warn");
    d.expect("profiles", "warn");

    // Through the stand-in that adds ARI and profiles, with a clock an
    // hour off: ari and profiles ok, the clock fails; two minutes: a warning.
    let proxy = AriProxy::start(&pebble).expect("start the proxy");
    proxy.set_profiles(&[("classic", "the default"), ("shortlived", "6 days")]);
    proxy.set_date_offset(3600);
    let cfg = write_config(
        &home,
        "proxy.toml",
        &proxy.directory_url(),
        proxy.ca_bundle_path(),
        &cert,
    );
    let d = run_doctor(&cfg, &[], &[]);
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    d.expect("ari", "ok");
    assert!(d.expect("profiles", "ok").contains("classic, shortlived"));
    let detail = d.expect("clock", "fail");
    assert!(detail.contains("behind"), "{detail}");
    proxy.set_date_offset(-120);
    let d = run_doctor(&cfg, &[], &[]);
    assert_eq!(d.code, Some(0));
    assert!(d.expect("clock", "warn").contains("ahead of"));

    // A CA that does not answer: the directory fails, the rest is skipped.
    let nowhere = format!("https://127.0.0.1:{}/dir", free_port());
    let d = run_doctor(&cfg, &["--server", &nowhere], &[]);
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    d.expect("ca-directory", "fail");
    for name in ["clock", "ari", "profiles"] {
        d.expect(name, "skipped");
    }
}

fn rfc2136_cert(bind: &Bind, domain: &str) -> String {
    format!(
        "[[certificate]]\nname = \"dns\"\ndomains = [{domain:?}]\nsolver = \"rfc2136\"\n\
         [certificate.solver_options]\nserver = \"{}\"\ntsig_key_name = \"{}\"\n",
        bind.addr(),
        bind.tsig_key_name()
    )
}

#[test]
fn dns_zones_nameservers_and_the_rfc2136_key() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind = Bind::start(&[ZoneSpec::new("example.test")]).expect("start BIND");
    let home = TempState::new().expect("temp");
    let a = bind.addr().to_string();
    let cfg = write_config(
        &home,
        "dns.toml",
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        &rfc2136_cert(&bind, "*.example.test"),
    );
    let dns = ["--dns-resolver", &a, "--propagation-server", &a];

    // The good key; the zone found by SOA, its nameserver answering.
    let d = run_doctor(
        &cfg,
        &dns,
        &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())],
    );
    assert_eq!(d.code, Some(0), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect("dns example.test", "ok");
    assert!(detail.contains("zone example.test"), "{detail}");
    let detail = d.expect("credentials rfc2136", "ok");
    assert!(
        detail.contains("accepted for updates of example.test"),
        "{detail}"
    );
    // Nothing was added to the zone.
    assert!(
        bind.query_txt("_acme-challenge.example.test")
            .expect("query")
            .is_empty()
    );

    // A wrong secret: refused by BIND, the secret never shown.
    let wrong = "c2VjcmV0LXRoYXQtYmluZC1kb2VzLW5vdC1rbm93LTAxMjM0NTY3OA==";
    let d = run_doctor(&cfg, &dns, &[("RFC2136_TSIG_SECRET", wrong)]);
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    let detail = d.expect("credentials rfc2136", "fail");
    assert!(detail.contains("TSIG key rejected"), "{detail}");
    assert!(!d.json.to_string().contains(wrong) && !d.stderr.contains(wrong));

    // A nameserver that does not answer for the zone.
    let silent = format!("127.0.0.1:{}", free_port());
    let d = run_doctor(
        &cfg,
        &["--dns-resolver", &a, "--propagation-server", &silent],
        &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())],
    );
    let detail = d.expect("dns example.test", "fail");
    assert!(detail.contains(&silent), "{detail}");

    // A name in no zone the resolver knows.
    let cfg = write_config(
        &home,
        "nozone.toml",
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        &rfc2136_cert(&bind, "www.elsewhere.test"),
    );
    let d = run_doctor(
        &cfg,
        &dns,
        &[("RFC2136_TSIG_SECRET", bind.tsig_secret_b64())],
    );
    assert!(
        d.expect("dns www.elsewhere.test", "fail")
            .contains("no zone found")
    );
}

#[test]
fn cloudflare_token_good_and_bad() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind = Bind::start(&[ZoneSpec::new("cf.test")]).expect("start BIND");
    let cf = CloudflareStandIn::start(CloudflareOpts::default().zones(&["cf.test"]))
        .expect("start the Cloudflare stand-in");
    let home = TempState::new().expect("temp");
    let a = bind.addr().to_string();
    let cfg = write_config(
        &home,
        "cf.toml",
        &pebble.directory_url(),
        pebble.ca_cert_path(),
        &format!(
            "[[certificate]]\nname = \"cf\"\ndomains = [\"cf.test\"]\nsolver = \"cloudflare\"\n\
             [certificate.solver_options]\napi_base = {:?}\n",
            cf.api_base()
        ),
    );
    let dns = ["--dns-resolver", &a, "--propagation-server", &a];
    let d = run_doctor(&cfg, &dns, &[("CLOUDFLARE_API_TOKEN", cf.token())]);
    assert_eq!(d.code, Some(0), "{:#}", d.json);
    let detail = d.expect("credentials cloudflare", "ok");
    assert!(
        detail.contains("active") && detail.contains("cf.test ("),
        "{detail}"
    );
    assert!(
        cf.requests()
            .iter()
            .any(|r| r.path == "/user/tokens/verify" && r.method == "GET")
    );
    assert!(
        cf.requests().iter().all(|r| r.method == "GET"),
        "doctor changed something"
    );

    let bad = "not-the-token-0123456789";
    let d = run_doctor(&cfg, &dns, &[("CLOUDFLARE_API_TOKEN", bad)]);
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    let detail = d.expect("credentials cloudflare", "fail");
    assert!(detail.contains("api_token"), "{detail}");
    assert!(!d.json.to_string().contains(bad));
}

#[test]
fn route53_credentials_accepted_and_refused() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind = Bind::start(&[ZoneSpec::new("r53.test")]).expect("start BIND");
    let home = TempState::new().expect("temp");
    let a = bind.addr().to_string();
    let dns = ["--dns-resolver", &a, "--propagation-server", &a];
    let keys = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let config = |moto: &Moto, file: &str| {
        write_config(
            &home,
            file,
            &pebble.directory_url(),
            pebble.ca_cert_path(),
            &format!(
                "[[certificate]]\nname = \"r53\"\ndomains = [\"r53.test\"]\nsolver = \"route53\"\n\
                 [certificate.solver_options]\nendpoint_url = {:?}\n",
                moto.endpoint_url()
            ),
        )
    };

    let moto = Moto::start().expect("start moto");
    let id = moto.create_zone("r53.test", false).expect("hosted zone");
    let d = run_doctor(&config(&moto, "good.toml"), &dns, &keys);
    assert_eq!(d.code, Some(0), "{:#}\n{}", d.json, d.stderr);
    let detail = d.expect("credentials route53", "ok");
    assert!(detail.contains(&id), "{detail}");
    drop(moto);

    let strict = Moto::start_with(MotoOpts { enforce_auth: true }).expect("start moto");
    let d = run_doctor(&config(&strict, "strict.toml"), &dns, &keys);
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    let detail = d.expect("credentials route53", "fail");
    assert!(detail.contains("InvalidClientTokenId"), "{detail}");
}

#[test]
fn webroot_written_and_served_or_not() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let bind =
        Bind::start(&[ZoneSpec::new("web.test").record("www IN A 127.0.0.1")]).expect("start BIND");
    let home = TempState::new().expect("temp");
    let served = home.file("served");
    let other = home.file("other");
    std::fs::create_dir_all(&served).expect("mkdir");
    std::fs::create_dir_all(&other).expect("mkdir");
    let server = StaticServer::start(&served, free_port()).expect("static server");
    let port = server.port().to_string();
    let a = bind.addr().to_string();
    let args = ["--dns-resolver", &a, "--http-port", &port];
    let config = |file: &str, root: &Path| {
        write_config(
            &home,
            file,
            &pebble.directory_url(),
            pebble.ca_cert_path(),
            &format!(
                "[[certificate]]\nname = \"w\"\ndomains = [\"www.web.test\"]\nsolver = \"webroot\"\n\
                 [certificate.solver_options]\npath = {:?}\n",
                root.display().to_string()
            ),
        )
    };

    let d = run_doctor(&config("good.toml", &served), &args, &[]);
    assert_eq!(d.code, Some(0), "{:#}", d.json);
    assert!(
        d.expect("webroot www.web.test", "ok")
            .contains("returned the probe file")
    );
    let left: Vec<_> = std::fs::read_dir(served.join(".well-known/acme-challenge"))
        .expect("challenge dir")
        .collect();
    assert!(left.is_empty(), "the probe file was left behind");

    // A directory the web server does not serve.
    let d = run_doctor(&config("other.toml", &other), &args, &[]);
    assert_eq!(d.code, Some(DOCTOR_FAILED));
    assert!(
        d.expect("webroot www.web.test", "fail")
            .contains("did not return the probe file")
    );

    // A webroot where the challenge directory cannot be made (tests run
    // as root, so a file is in the way instead of a permission).
    let blocked = home.file("blocked");
    std::fs::create_dir_all(&blocked).expect("mkdir");
    std::fs::write(blocked.join(".well-known"), "").expect("write");
    let d = run_doctor(&config("blocked.toml", &blocked), &args, &[]);
    let name = format!("webroot {}", blocked.display());
    assert!(d.expect(&name, "fail").contains("cannot write"));
    // And a path that is no directory at all: the plugin itself refuses it.
    let file = home.file("a-file");
    std::fs::write(&file, "").expect("write");
    let d = run_doctor(&config("file.toml", &file), &args, &[]);
    assert!(
        d.expect("plugin webroot", "fail")
            .contains("not a directory")
    );
}
