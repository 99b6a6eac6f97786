//! The cloud DNS solvers of the catalogue (`digitalocean`, `hetzner`,
//! `gcloud`, `azure`) end to end: `certsmith issue` for a wildcard and
//! its apex against a real Pebble, through each provider's stand-in
//! (these APIs cannot run here), which mirrors the TXT values into the
//! pebble-challtestsrv Pebble's VA asks; `certsmith plugin check` on each
//! built plugin; and wrong credentials, which must fail naming the
//! variable to fix without showing the secret.
//!
//! Each issuance also proves: someone else's TXT value at the name is
//! kept (in the API and in DNS), the provider's rate-limit answer is
//! waited out and retried, and listings are walked page by page (the
//! stand-ins serve one item per page; Azure reads one record set and has
//! no listing).

use std::process::{Command, Output};

use certsmith_tests::catalogue::{self, Provider, Rig};
use certsmith_tests::standin::CloudOpts;
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin, dns};
use certsmith_tests::{azure, gcloud};

/// The zone each provider's test uses.
fn zone(p: Provider) -> &'static str {
    match p {
        Provider::DigitalOcean => "do.test",
        Provider::Hetzner => "hz.test",
        Provider::Gcloud => "gc.test",
        Provider::Azure => "az.test",
    }
}

fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn with_env(cmd: &mut Command, rig: &Rig, env: &[(String, String)]) {
    for v in rig.provider.env_vars() {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    for (k, v) in &rig.opts {
        cmd.args(["--solver-opt", &format!("{k}={v}")]);
    }
}

fn issue(
    pebble: &Pebble,
    rig: &Rig,
    state: &TempState,
    domains: &[&str],
    env: &[(String, String)],
) -> Output {
    let cts = pebble.challtestsrv().expect("challtestsrv");
    let dns_addr = cts.dns_addr().to_string();
    let mut cmd = Command::new(certsmith_bin());
    cmd.args([
        "issue",
        "--solver",
        rig.provider.code(),
        "--agree-tos",
        "--output",
        "json",
    ]);
    for d in domains {
        cmd.args(["-d", d]);
    }
    cmd.args(["--server", &pebble.directory_url()])
        .arg("--ca-cert")
        .arg(pebble.ca_cert_path())
        .arg("--state-dir")
        .arg(state.path())
        .args([
            "--dns-resolver",
            &dns_addr,
            "--propagation-server",
            &dns_addr,
        ]);
    with_env(&mut cmd, rig, env);
    cmd.output().expect("run certsmith")
}

fn setup(p: Provider) -> (Pebble, Rig, TempState) {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let rig = Rig::mirrored(
        p,
        pebble.challtestsrv().expect("challtestsrv"),
        &["other.test", zone(p), "third.test"],
    )
    .expect("start the stand-in");
    (pebble, rig, TempState::new().expect("state"))
}

/// A wildcard + apex certificate through `p`, with a foreign value at the
/// name and a rate-limit answer on the first record call.
fn wildcard_and_apex(p: Provider) {
    let (pebble, rig, state) = setup(p);
    let z = zone(p);
    let name = format!("_acme-challenge.{z}");
    rig.standin.add_foreign_txt(&name, "someone-elses-value");
    rig.rate_limit_next_record_call();
    let wild = format!("*.{z}");
    let o = issue(&pebble, &rig, &state, &[&wild, z], &rig.env);
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let secret = rig.standin.secret();
    assert!(
        !out.contains(&secret) && !err.contains(&secret),
        "the secret leaked"
    );

    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let cert = v["cert_path"].as_str().expect("cert_path").to_owned();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", &cert])
        .output()
        .expect("openssl");
    let sans = String::from_utf8_lossy(&text.stdout);
    assert!(
        sans.contains(&format!("DNS:{wild}")) && sans.contains(&format!("DNS:{z}")),
        "{sans}"
    );

    let reqs = rig.standin.requests();
    let limited = reqs
        .iter()
        .position(|r| r.status == 429)
        .expect("the rate-limit answer was served");
    assert!(reqs[limited].injected);
    assert!(
        reqs[limited + 1..]
            .iter()
            .any(|r| r.path == reqs[limited].path && r.status < 300),
        "the rate-limited call was retried: {reqs:?}"
    );
    if p != Provider::Azure {
        assert!(rig.paginated(), "no second page was read: {reqs:?}");
    }
    if p == Provider::Gcloud {
        assert!(
            reqs.iter()
                .any(|r| r.method == "GET" && r.path.contains("/changes/")),
            "the pending change was polled until done: {reqs:?}"
        );
    }
    if matches!(p, Provider::Gcloud | Provider::Azure) {
        let tokens = reqs.iter().filter(|r| r.path.ends_with("/token")).count();
        assert_eq!(tokens, 1, "the access token is cached: {reqs:?}");
    }
    assert_eq!(rig.standin.txt_values(&name), vec!["someone-elses-value"]);
    let served =
        dns::query_txt(pebble.challtestsrv().expect("cts").dns_addr(), &name).expect("query");
    assert_eq!(served, vec!["someone-elses-value"]);
    assert!(
        rig.standin.mirror_errors().is_empty(),
        "{:?}",
        rig.standin.mirror_errors()
    );
}

/// Wrong credentials: exit 3, the message names the variable to fix, the
/// secret is not shown, nothing is left behind.
fn bad_credentials(p: Provider) {
    let (pebble, rig, state) = setup(p);
    let z = zone(p);
    let o = issue(&pebble, &rig, &state, &[z], &rig.bad_env);
    let (out, err) = texts(&o);
    eprintln!("{err}");
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    let var = match p {
        Provider::Gcloud => "GCE_SERVICE_ACCOUNT_FILE",
        _ => p.secret_var(),
    };
    assert!(err.contains(var), "the error names {var}:\n{err}");
    for (k, v) in &rig.bad_env {
        if k == p.secret_var() {
            assert!(
                !out.contains(v) && !err.contains(v),
                "the secret leaked:\n{err}"
            );
        }
    }
    assert!(
        rig.standin
            .txt_values(&format!("_acme-challenge.{z}"))
            .is_empty()
    );
}

/// `certsmith plugin check` on the built plugin passes and cleans up.
fn plugin_check(p: Provider) {
    let rig = catalogue::start(p, CloudOpts::default().zones(&[zone(p)]).max_per_page(1))
        .expect("start the stand-in");
    check_passes(&rig, &rig.env);
}

/// Runs `certsmith plugin check` against `rig` with `env`; asserts it
/// passed, wrote, and left no record.
fn check_passes(rig: &Rig, env: &[(String, String)]) {
    let path = rig.plugin_path();
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace`",
        path.display()
    );
    let (ok, all) = check(rig, env, &[]);
    assert!(ok, "{all}");
    assert!(all.contains("plugin check passed"), "{all}");
    let left: Vec<_> = rig.standin.state().records.clone();
    assert!(left.is_empty(), "cleanup left {left:?}");
    let writes = rig
        .standin
        .requests()
        .iter()
        .filter(|r| {
            matches!(r.method.as_str(), "POST" | "PUT" | "DELETE") && !r.path.ends_with("/token")
        })
        .count();
    assert!(
        writes >= 2,
        "present and cleanup both wrote: {:?}",
        rig.standin.requests()
    );
}

#[test]
fn digitalocean_wildcard_and_apex() {
    wildcard_and_apex(Provider::DigitalOcean);
}

#[test]
fn digitalocean_bad_token() {
    bad_credentials(Provider::DigitalOcean);
}

#[test]
fn digitalocean_plugin_check() {
    plugin_check(Provider::DigitalOcean);
}

#[test]
fn hetzner_wildcard_and_apex() {
    wildcard_and_apex(Provider::Hetzner);
}

#[test]
fn hetzner_bad_token() {
    bad_credentials(Provider::Hetzner);
}

#[test]
fn hetzner_plugin_check() {
    plugin_check(Provider::Hetzner);
}

#[test]
fn gcloud_wildcard_and_apex() {
    wildcard_and_apex(Provider::Gcloud);
}

#[test]
fn gcloud_rotated_key() {
    bad_credentials(Provider::Gcloud);
}

#[test]
fn gcloud_plugin_check() {
    plugin_check(Provider::Gcloud);
}

#[test]
fn azure_wildcard_and_apex() {
    wildcard_and_apex(Provider::Azure);
}

#[test]
fn azure_wrong_client_secret() {
    bad_credentials(Provider::Azure);
}

#[test]
fn azure_plugin_check() {
    plugin_check(Provider::Azure);
}

/// The secret from `<VAR>_FILE`, as container secrets are mounted.
fn secret_from_file(p: Provider) {
    let rig = catalogue::start(p, CloudOpts::default().zones(&[zone(p)])).expect("start");
    let state = TempState::new().expect("state");
    let file = state.file("secret");
    let mut env = Vec::new();
    for (k, v) in &rig.env {
        if k == p.secret_var() {
            std::fs::write(&file, format!("{v}\n")).expect("write the secret file");
            env.push((format!("{k}_FILE"), file.to_string_lossy().into_owned()));
        } else {
            env.push((k.clone(), v.clone()));
        }
    }
    check_passes(&rig, &env);
}

#[test]
fn digitalocean_token_from_file() {
    secret_from_file(Provider::DigitalOcean);
}

#[test]
fn hetzner_token_from_file() {
    secret_from_file(Provider::Hetzner);
}

#[test]
fn azure_client_secret_from_file() {
    secret_from_file(Provider::Azure);
}

/// A record set changed by someone else between our read and our write
/// (the write's condition fails): the plugin reads it again and writes
/// again, keeping the other value.
fn set_changed_meanwhile(
    p: Provider,
    method: &str,
    part: &str,
    refusal: certsmith_tests::standin::Answer,
) {
    let rig = catalogue::start(p, CloudOpts::default().zones(&[zone(p)])).expect("start");
    rig.standin.add_foreign_txt(
        &format!("_acme-challenge.{}", zone(p)),
        "someone-elses-value",
    );
    rig.standin.inject_on(method, part, refusal);
    let (ok, all) = check(&rig, &rig.env, &[]);
    assert!(ok, "{all}");
    let reqs = rig.standin.requests();
    let refused = reqs
        .iter()
        .position(|r| r.status == 412)
        .expect("the 412 was served");
    assert!(
        reqs[refused + 1..]
            .iter()
            .any(|r| r.method == "GET" && !r.path.ends_with("/token"))
            && reqs[refused + 1..]
                .iter()
                .any(|r| r.method == method && r.status < 300),
        "read again and written again after the 412: {reqs:?}"
    );
    assert_eq!(
        rig.standin
            .txt_values(&format!("_acme-challenge.{}", zone(p))),
        vec!["someone-elses-value"]
    );
}

#[test]
fn azure_etag_conflict_is_read_again() {
    set_changed_meanwhile(
        Provider::Azure,
        "PUT",
        "/TXT/",
        azure::precondition_failed(),
    );
}

#[test]
fn gcloud_change_conflict_is_read_again() {
    set_changed_meanwhile(
        Provider::Gcloud,
        "POST",
        "/changes",
        gcloud::condition_not_met(),
    );
}

/// `certsmith plugin check` against `rig` with `env` and extra options.
fn check(rig: &Rig, env: &[(String, String)], extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(certsmith_bin());
    cmd.arg("plugin")
        .arg("check")
        .arg(rig.plugin_path())
        .args(["--domain", zone(rig.provider)]);
    with_env(&mut cmd, rig, env);
    for o in extra {
        cmd.args(["--solver-opt", o]);
    }
    let o = cmd.output().expect("run certsmith");
    let (out, err) = texts(&o);
    (o.status.success(), format!("{out}\n{err}"))
}

#[test]
fn gcloud_private_zone_only_when_allowed() {
    let p = Provider::Gcloud;
    let rig = catalogue::start(p, CloudOpts::default().private_zone(zone(p))).expect("start");
    let (ok, all) = check(&rig, &rig.env, &[]);
    assert!(!ok, "{all}");
    assert!(all.contains("GCE_ALLOW_PRIVATE_ZONE=true"), "{all}");
    let (ok, all) = check(&rig, &rig.env, &["allow_private_zone=true"]);
    assert!(ok, "{all}");
    assert!(rig.standin.state().records.is_empty());
}

#[test]
fn azure_wrong_resource_group_names_the_setting() {
    let rig =
        catalogue::start(Provider::Azure, CloudOpts::default().zones(&["az.test"])).expect("start");
    let env: Vec<(String, String)> = rig
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "AZURE_RESOURCE_GROUP" => (k.clone(), "not-the-dns-group".to_owned()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let (ok, all) = check(&rig, &env, &[]);
    assert!(!ok, "{all}");
    assert!(
        all.contains("ResourceGroupNotFound")
            || all.contains("Resource group 'not-the-dns-group' could not be found"),
        "{all}"
    );
    assert!(all.contains("AZURE_RESOURCE_GROUP"), "{all}");
}
