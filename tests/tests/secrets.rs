//! Secrets at renewal (issue 11, item 4), through the built binary against
//! a real Pebble and the Cloudflare stand-in: a token given only with
//! `--solver-opt` at issue is never stored, so a renewal without it fails
//! naming where to set it (the variable, the config key), `renew
//! --solver-opt CODE:KEY=VALUE` renews, and `renew --all` reports a
//! certificate that is not due as skipped even when its secret is
//! missing.

use std::process::Command;

use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn};
use certsmith_tests::{Pebble, PebbleOpts, TempState, certsmith_bin};
use serde_json::Value;

use crate::accounts::{Run, p};

fn run(cmd: &mut Command) -> Run {
    let out = cmd
        .env_remove("CERTSMITH_STATE_DIR")
        .env_remove("CERTSMITH_CONFIG")
        .env_remove("CERTSMITH_OUTPUT")
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env_remove("CLOUDFLARE_API_TOKEN_FILE")
        .output()
        .expect("run certsmith");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `certsmith <args> --state-dir S --dns-resolver CTS --propagation-server CTS`.
fn certsmith(pebble: &Pebble, state: &TempState, args: &[&str]) -> Command {
    let dns = pebble
        .challtestsrv()
        .expect("challtestsrv")
        .dns_addr()
        .to_string();
    let mut cmd = Command::new(certsmith_bin());
    cmd.args(args).args(["--state-dir", p(state.path())]).args([
        "--dns-resolver",
        &dns,
        "--propagation-server",
        &dns,
    ]);
    cmd
}

fn results(r: &Run) -> Vec<Value> {
    r.json()
        .into_iter()
        .filter(|v| v.get("summary").is_none())
        .collect()
}

#[test]
fn a_secret_given_on_the_command_line_is_asked_for_at_renewal() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("start Pebble");
    let cf = CloudflareStandIn::start(
        CloudflareOpts::default()
            .zones(&["cf.test"])
            .mirror_to(pebble.challtestsrv().expect("challtestsrv")),
    )
    .expect("start the Cloudflare stand-in");
    let state = TempState::new().expect("state");
    let token = cf.token().to_owned();
    let api_base = format!("api_base={}", cf.api_base());
    let token_opt = format!("api_token={token}");
    let server = pebble.directory_url();

    let r = run(certsmith(
        &pebble,
        &state,
        &[
            "issue",
            "-d",
            "cf.test",
            "--solver",
            "cloudflare",
            "--agree-tos",
        ],
    )
    .args(["--server", &server, "--ca-cert", p(pebble.ca_cert_path())])
    .args(["--solver-opt", &api_base, "--solver-opt", &token_opt]))
    .ok();
    let lineage =
        std::fs::read_to_string(state.path().join("certs/cf.test/lineage.toml")).expect("lineage");
    assert!(!lineage.contains(&token), "the token is never stored");

    // Forced renewal without the token: fails naming where to set it.
    let r2 = run(&mut certsmith(
        &pebble,
        &state,
        &["renew", "--cert-name", "cf.test", "--force"],
    ));
    assert_ne!(r2.code, Some(0), "{}", r2.describe());
    assert!(
        r2.stderr.contains("CLOUDFLARE_API_TOKEN"),
        "{}",
        r2.describe()
    );
    assert!(
        r2.stderr.contains("[solvers.cloudflare]"),
        "{}",
        r2.describe()
    );
    assert!(
        !r2.stderr.contains("pass --solver-opt KEY"),
        "{}",
        r2.describe()
    );
    assert!(
        !r2.stderr.contains(&token) && !r.stderr.contains(&token),
        "token leaked"
    );

    // Not due and the token missing: skipped, never failed.
    let r3 = run(&mut certsmith(
        &pebble,
        &state,
        &["renew", "--all", "--output", "json"],
    ))
    .ok();
    let rows = results(&r3);
    assert_eq!(rows.len(), 1, "{}", r3.describe());
    assert_eq!(rows[0]["name"], "cf.test");
    assert_eq!(rows[0]["action"], "skipped", "{}", r3.describe());

    // With the token given to renew, for that solver: renewed.
    let coded = format!("cloudflare:api_token={token}");
    let r4 = run(certsmith(
        &pebble,
        &state,
        &[
            "renew",
            "--cert-name",
            "cf.test",
            "--force",
            "--output",
            "json",
        ],
    )
    .args(["--solver-opt", &coded]))
    .ok();
    let rows = results(&r4);
    assert_eq!(rows[0]["action"], "renewed", "{}", r4.describe());
    assert!(
        !r4.stdout.contains(&token) && !r4.stderr.contains(&token),
        "token leaked"
    );
}
