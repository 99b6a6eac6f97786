//! The Route53 plugin as certsmith loads it: `certsmith plugin check` on the
//! built library, against moto, with the credentials in the environment as
//! a user gives them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use certsmith_tests::try_certsmith_bin;
use common::{SECRET_ACCESS_KEY, start_moto};

/// The plugin library built with this test: `target/<profile>/deps/` has
/// the copy `cargo test` just built (it uplifts a cdylib to
/// `target/<profile>/` only on `cargo build`), so the newer of the two.
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("target/<profile>/deps/<test>");
    let profile_dir = deps.parent().expect("target/<profile>/deps");
    let file = format!(
        "{}certsmith_route53{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let newest = [deps.join(&file), profile_dir.join(&file)]
        .into_iter()
        .filter_map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p);
    newest.unwrap_or_else(|| {
        panic!(
            "{} is not built: run `cargo build -p certsmith-solver-route53`",
            profile_dir.join(&file).display()
        )
    })
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The output of a check that must have passed without printing the
/// secret access key.
fn passed_without_leaking(out: &Output) -> String {
    let all = text(out);
    eprintln!("{all}");
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains(SECRET_ACCESS_KEY),
        "the secret leaked:\n{all}"
    );
    all
}

/// `certsmith plugin check <plugin> --domain <zone> --solver-opt ...` with
/// AWS credentials in the child's environment only. The metadata services
/// are switched off and HOME points nowhere, so nothing outside loopback is
/// asked and no developer's ~/.aws is read.
fn plugin_check(opts: &[String], env: &[(&str, &str)], domain: &str) -> Output {
    let bin = try_certsmith_bin().unwrap_or_else(|e| panic!("{e}"));
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin);
    cmd.arg("plugin")
        .arg("check")
        .arg(plugin_path())
        .args(["--domain", domain]);
    for o in opts {
        cmd.arg("--solver-opt").arg(o);
    }
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_ROUTE_53",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", home.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials"),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run certsmith")
}

#[test]
fn certsmith_plugin_check_passes() {
    let moto = start_moto();
    let zone_id = moto.create_zone("check.test", false).expect("zone");
    let out = plugin_check(
        &[
            format!("endpoint_url={}", moto.endpoint_url()),
            format!("hosted_zone_id={zone_id}"),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDTESTING"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ],
        "check.test",
    );
    let all = passed_without_leaking(&out);
    assert!(all.contains("plugin check passed"), "{all}");
    assert!(
        moto.txt_set(&zone_id, "_acme-challenge.check.test")
            .expect("read")
            .is_none(),
        "cleanup left a record"
    );
    assert!(
        moto.requests(certsmith_tests::moto::Route53Action::ChangeResourceRecordSets) >= 2,
        "present and cleanup reached moto"
    );
}

/// The zone looked up by name, credentials from a shared credentials file
/// and `profile` (the standard chain, not the explicit options).
#[test]
fn certsmith_plugin_check_with_a_profile_and_a_zone_lookup() {
    let moto = start_moto();
    let zone_id = moto.create_zone("profile.test", false).expect("zone");
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[certsmith-test]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = {SECRET_ACCESS_KEY}\n"
        ),
    )
    .expect("write credentials");
    let creds = creds.display().to_string();
    let out = plugin_check(
        &[
            format!("endpoint_url={}", moto.endpoint_url()),
            "profile=certsmith-test".to_owned(),
        ],
        &[("AWS_SHARED_CREDENTIALS_FILE", creds.as_str())],
        "profile.test",
    );
    passed_without_leaking(&out);
    assert!(
        moto.requests(certsmith_tests::moto::Route53Action::ListHostedZonesByName) >= 1,
        "looked the zone up"
    );
    assert!(
        moto.txt_set(&zone_id, "_acme-challenge.profile.test")
            .expect("read")
            .is_none()
    );
}

/// No credentials anywhere: an auth error saying where it looked, not a
/// failed request.
#[test]
fn certsmith_plugin_check_without_credentials_says_so() {
    let moto = start_moto();
    let zone_id = moto.create_zone("nocreds.test", false).expect("zone");
    let out = plugin_check(
        &[
            format!("endpoint_url={}", moto.endpoint_url()),
            format!("hosted_zone_id={zone_id}"),
        ],
        &[],
        "nocreds.test",
    );
    let all = text(&out);
    eprintln!("{all}");
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("no AWS credentials found"), "{all}");
    assert!(all.contains("auth"), "{all}");
    assert_eq!(
        moto.requests(certsmith_tests::moto::Route53Action::ChangeResourceRecordSets),
        0
    );
}

/// Credentials from a container credentials endpoint (what ECS and EKS pod
/// identity serve): the credential provider's request goes through
/// certsmith's HTTP client too, as Route53's do.
#[test]
fn certsmith_plugin_check_with_container_credentials() {
    let moto = start_moto();
    let zone_id = moto.create_zone("ecs.test", false).expect("zone");
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        root.path().join("creds"),
        format!(
            r#"{{"AccessKeyId":"AKIDCONTAINER","SecretAccessKey":"{SECRET_ACCESS_KEY}","Token":"container-token","Expiration":"2099-01-01T00:00:00Z"}}"#
        ),
    )
    .expect("write credentials");
    let port = certsmith_tests::free_port();
    let server =
        certsmith_tests::StaticServer::start(root.path(), port).unwrap_or_else(|e| panic!("{e}"));
    let uri = format!("http://127.0.0.1:{port}/creds");
    let out = plugin_check(
        &[
            format!("endpoint_url={}", moto.endpoint_url()),
            format!("hosted_zone_id={zone_id}"),
        ],
        &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str())],
        "ecs.test",
    );
    passed_without_leaking(&out);
    assert!(
        moto.requests(certsmith_tests::moto::Route53Action::ChangeResourceRecordSets) >= 2,
        "present and cleanup reached moto"
    );
    assert!(
        server.log().contains("GET /creds"),
        "the credentials came from the endpoint:\n{}",
        server.log()
    );
}
