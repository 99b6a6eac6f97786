//! The Cloudflare plugin as certsmith loads it (`certsmith plugin check`
//! on the built library) and the stand-in's mirror into a real
//! pebble-challtestsrv, which is what Pebble's VA asks.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use certsmith_plugin_api::{Presented, Solver};
use certsmith_tests::cloudflare::{CloudflareOpts, CloudflareStandIn};
use certsmith_tests::{ChallTestSrv, dns, try_certsmith_bin};
use common::{fqdn, request, solver};

/// `target/<profile>/libcertsmith_cloudflare.so`, built with this test
/// (the test runs from `target/<profile>/deps`).
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(format!(
        "{}certsmith_cloudflare{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p certsmith-solver-cloudflare`",
        path.display()
    );
    path
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `certsmith plugin check <plugin> --domain cf.test --solver-opt api_base=...`,
/// with the token only in the child's environment, as a user runs it.
fn plugin_check(cf: &CloudflareStandIn, env: &[(&str, &str)]) -> Output {
    let bin = try_certsmith_bin().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin);
    cmd.arg("plugin")
        .arg("check")
        .arg(plugin_path())
        .args(["--domain", "cf.test", "--solver-opt"])
        .arg(format!("api_base={}", cf.api_base()))
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env_remove("CLOUDFLARE_API_TOKEN_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run certsmith")
}

#[test]
fn certsmith_plugin_check_passes() {
    let cf = CloudflareStandIn::start(CloudflareOpts::default()).expect("start");
    let out = plugin_check(&cf, &[("CLOUDFLARE_API_TOKEN", cf.token())]);
    let all = text(&out);
    eprintln!("{all}");
    assert!(out.status.success(), "{all}");
    assert!(all.contains("plugin check passed"), "{all}");
    assert!(!all.contains(cf.token()), "the token leaked:\n{all}");
    assert!(cf.records().is_empty(), "cleanup left {:?}", cf.records());
    let methods: Vec<String> = cf.requests().iter().map(|r| r.method.clone()).collect();
    assert!(methods.contains(&"POST".to_owned()), "{methods:?}");
    assert!(methods.contains(&"DELETE".to_owned()), "{methods:?}");
}

#[test]
fn certsmith_plugin_check_reads_the_token_from_a_file() {
    let cf = CloudflareStandIn::start(CloudflareOpts::default()).expect("start");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{}\n", cf.token())).expect("write token file");
    let file = file.display().to_string();
    let out = plugin_check(&cf, &[("CLOUDFLARE_API_TOKEN_FILE", &file)]);
    let all = text(&out);
    eprintln!("{all}");
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(cf.token()), "the token leaked:\n{all}");
}

#[test]
fn certsmith_plugin_check_with_a_wrong_token_fails_without_showing_it() {
    let cf = CloudflareStandIn::start(CloudflareOpts::default()).expect("start");
    let wrong = "Wr0ngT0kenWr0ngT0kenWr0ngT0kenWr0ngT0ken";
    let out = plugin_check(&cf, &[("CLOUDFLARE_API_TOKEN", wrong)]);
    let all = text(&out);
    eprintln!("{all}");
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("Cloudflare rejected the API token: it needs Zone:DNS:Edit on cf.test"),
        "{all}"
    );
    assert!(!all.contains(wrong), "the token leaked:\n{all}");
}

#[tokio::test]
async fn records_are_mirrored_into_challtestsrv() {
    let cts = ChallTestSrv::start().expect("start pebble-challtestsrv");
    let cf = CloudflareStandIn::start(CloudflareOpts::default().mirror_to(&cts)).expect("start");
    let name = fqdn("cf.test");
    let served = || {
        let mut v = dns::query_txt(cts.dns_addr(), &name).expect("query challtestsrv");
        v.sort();
        v
    };
    cf.add_foreign_txt(&name, "foreign").expect("foreign");
    let s = solver(&cf);
    let (a, b) = (request("cf.test", "value-a"), request("cf.test", "value-b"));
    let pa = s.present(&a).await.expect("present a");
    let pb = s.present(&b).await.expect("present b");
    assert_eq!(served(), ["foreign", "value-a", "value-b"]);

    s.cleanup(&a, &pa).await.expect("cleanup a");
    assert_eq!(served(), ["foreign", "value-b"]);
    s.cleanup(&b, &Presented::default())
        .await
        .expect("cleanup b");
    assert_eq!(served(), ["foreign"]);
    let _ = pb;
    assert!(cf.mirror_errors().is_empty(), "{:?}", cf.mirror_errors());
}
