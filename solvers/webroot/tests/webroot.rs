//! The webroot solver through the `Solver` trait, on real directories.

mod common;

use std::fs;

use certsmith_plugin_api::{ChallengeType, ErrorKind, Presented, Solver};
use certsmith_webroot::{Webroot, WebrootConfig};
use common::{challenge_dir, mode, request, solver, tree, well_known};

#[tokio::test]
async fn writes_the_key_authorization_with_mode_0644() {
    let root = tempfile::tempdir().expect("tempdir");
    let s = solver(root.path());
    let req = request("tok_-09AZaz");
    let p = s.present(&req).await.expect("present");

    let file = challenge_dir(root.path()).join("tok_-09AZaz");
    assert_eq!(
        fs::read_to_string(&file).expect("read"),
        req.key_authorization,
        "exactly the key authorization, no newline"
    );
    assert_eq!(mode(&file), 0o644);
    assert_eq!(
        tree(root.path()),
        [
            ".well-known",
            ".well-known/acme-challenge",
            ".well-known/acme-challenge/tok_-09AZaz"
        ],
        "no temp file left behind"
    );
    assert_eq!(p.handle["file"], file.display().to_string());
    assert_eq!(
        p.handle["created_dirs"],
        serde_json::json!([
            well_known(root.path()).display().to_string(),
            challenge_dir(root.path()).display().to_string(),
        ])
    );

    s.cleanup(&req, &p).await.expect("cleanup");
    assert_eq!(tree(root.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_pre_existing_well_known_is_kept() {
    let root = tempfile::tempdir().expect("tempdir");
    fs::create_dir(well_known(root.path())).expect("mkdir");
    fs::write(well_known(root.path()).join("security.txt"), "Contact: x").expect("write");
    let s = solver(root.path());
    let req = request("tok");
    let p = s.present(&req).await.expect("present");
    assert_eq!(
        p.handle["created_dirs"],
        serde_json::json!([challenge_dir(root.path()).display().to_string()])
    );

    s.cleanup(&req, &p).await.expect("cleanup");
    assert_eq!(
        tree(root.path()),
        [".well-known", ".well-known/security.txt"],
        "created acme-challenge removed, .well-known and its content kept"
    );
}

#[tokio::test]
async fn a_pre_existing_empty_challenge_dir_is_kept() {
    let root = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(challenge_dir(root.path())).expect("mkdir");
    let s = solver(root.path());
    let req = request("tok");
    let p = s.present(&req).await.expect("present");
    assert_eq!(p.handle["created_dirs"], serde_json::json!([]));
    s.cleanup(&req, &p).await.expect("cleanup");
    assert_eq!(
        tree(root.path()),
        [".well-known", ".well-known/acme-challenge"]
    );
}

#[tokio::test]
async fn both_directories_removed_when_neither_existed() {
    let root = tempfile::tempdir().expect("tempdir");
    fs::write(root.path().join("index.html"), "hi").expect("write");
    let s = solver(root.path());
    let req = request("tok");
    let p = s.present(&req).await.expect("present");
    assert!(challenge_dir(root.path()).is_dir());
    s.cleanup(&req, &p).await.expect("cleanup");
    assert_eq!(tree(root.path()), ["index.html"]);
}

#[tokio::test]
async fn a_foreign_file_keeps_the_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    let s = solver(root.path());
    let req = request("tok");
    let p = s.present(&req).await.expect("present");
    let foreign = challenge_dir(root.path()).join("someone-elses");
    fs::write(&foreign, "x").expect("write");

    s.cleanup(&req, &p).await.expect("cleanup");
    assert!(foreign.exists(), "foreign file untouched");
    assert!(!challenge_dir(root.path()).join("tok").exists());
    assert_eq!(
        tree(root.path()),
        [
            ".well-known",
            ".well-known/acme-challenge",
            ".well-known/acme-challenge/someone-elses"
        ]
    );
}

#[tokio::test]
async fn concurrent_challenges_share_the_directories() {
    let root = tempfile::tempdir().expect("tempdir");
    let s = solver(root.path());
    let a = request("tokA");
    let b = request("tokB");
    let (pa, pb) = tokio::join!(s.present(&a), s.present(&b));
    let (pa, pb) = (pa.expect("present a"), pb.expect("present b"));

    s.cleanup(&a, &pa).await.expect("cleanup a");
    assert_eq!(
        fs::read_to_string(challenge_dir(root.path()).join("tokB")).expect("b still there"),
        b.key_authorization
    );
    s.cleanup(&b, &pb).await.expect("cleanup b");
    assert_eq!(
        tree(root.path()),
        Vec::<String>::new(),
        "the last one tidies up"
    );
}

#[tokio::test]
async fn many_concurrent_challenges() {
    let root = tempfile::tempdir().expect("tempdir");
    let s = std::sync::Arc::new(solver(root.path()));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let req = request(&format!("tok{i}"));
            let p = s.present(&req).await.expect("present");
            tokio::task::yield_now().await;
            s.cleanup(&req, &p).await.expect("cleanup");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(tree(root.path()), Vec::<String>::new());
}

#[tokio::test]
async fn present_and_cleanup_are_idempotent() {
    let root = tempfile::tempdir().expect("tempdir");
    let s = solver(root.path());
    let req = request("tok");
    let first = s.present(&req).await.expect("present");
    let second = s.present(&req).await.expect("present again");
    assert_eq!(
        first.handle["created_dirs"], second.handle["created_dirs"],
        "the second present remembers what the first created"
    );
    assert_eq!(
        tree(root.path()),
        [
            ".well-known",
            ".well-known/acme-challenge",
            ".well-known/acme-challenge/tok"
        ]
    );

    // A cleanup with an empty handle (the host lost it) still removes the
    // directories this instance created.
    s.cleanup(&req, &Presented::default())
        .await
        .expect("cleanup");
    assert_eq!(tree(root.path()), Vec::<String>::new());
    s.cleanup(&req, &second).await.expect("cleanup again");
    s.cleanup(&request("never-presented"), &Presented::default())
        .await
        .expect("cleanup of an unknown token");
}

#[tokio::test]
async fn cleanup_after_a_restart_uses_the_handle() {
    let root = tempfile::tempdir().expect("tempdir");
    let req = request("tok");
    let p = solver(root.path()).present(&req).await.expect("present");
    // A new instance (as after a crash) knows only the journaled handle.
    solver(root.path())
        .cleanup(&req, &p)
        .await
        .expect("cleanup");
    assert_eq!(tree(root.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_handle_cannot_name_other_directories() {
    let root = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let empty = root.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let req = request("tok");
    let forged = Presented::new(serde_json::json!({
        "file": root.path().join("index.html").display().to_string(),
        "created_dirs": [
            empty.display().to_string(),
            other.path().display().to_string(),
        ],
    }));
    fs::write(root.path().join("index.html"), "hi").expect("write");
    solver(root.path())
        .cleanup(&req, &forged)
        .await
        .expect("cleanup");
    assert!(empty.is_dir(), "not one of the two known directories");
    assert!(other.path().is_dir());
    assert!(
        root.path().join("index.html").exists(),
        "file comes from the token"
    );
}

#[tokio::test]
async fn path_traversal_tokens_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let docroot = root.path().join("www");
    fs::create_dir(&docroot).expect("mkdir");
    fs::write(root.path().join("victim"), "keep me").expect("write");
    let s = solver(&docroot);
    for token in [
        "../../../victim",
        "..",
        "a/b",
        ".hidden",
        "",
        "tok en",
        "tok.en",
    ] {
        let e = s.present(&request(token)).await.expect_err("refused token");
        assert!(
            matches!(e.kind, ErrorKind::Internal | ErrorKind::Config),
            "{token:?}: {e}"
        );
        s.cleanup(&request(token), &Presented::default())
            .await
            .expect("cleanup of a refused token is a no-op");
    }
    assert_eq!(tree(&docroot), Vec::<String>::new(), "nothing created");
    assert_eq!(
        fs::read_to_string(root.path().join("victim")).expect("read"),
        "keep me"
    );
}

#[test]
fn a_missing_path_is_a_config_error_naming_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let missing = root.path().join("no-such-docroot");
    let e = Webroot::new(WebrootConfig {
        path: missing.clone(),
    })
    .expect_err("missing path");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(
        e.message.contains(&missing.display().to_string()),
        "{}",
        e.message
    );

    let file = root.path().join("a-file");
    fs::write(&file, "").expect("write");
    let e = Webroot::new(WebrootConfig { path: file }).expect_err("a file");
    assert_eq!(e.kind, ErrorKind::Config);
}

#[tokio::test]
async fn a_docroot_removed_later_is_a_config_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let docroot = root.path().join("www");
    fs::create_dir(&docroot).expect("mkdir");
    let s = solver(&docroot);
    fs::remove_dir(&docroot).expect("rmdir");
    let e = s.present(&request("tok")).await.expect_err("gone");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("www"), "{}", e.message);
}

#[tokio::test]
async fn dns01_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let s = solver(root.path());
    let mut req = request("tok");
    req.challenge_type = ChallengeType::Dns01;
    let e = s.present(&req).await.expect_err("dns-01");
    assert_eq!(e.kind, ErrorKind::Config);
}

#[test]
fn the_manifest_is_valid() {
    let m = certsmith_plugin_api::Manifest::parse(include_str!("../plugin.toml"))
        .expect("valid manifest");
    assert_eq!(m.code, "webroot");
    assert_eq!(m.challenge_types, [ChallengeType::Http01]);
    assert!(m.config["path"].required);
    assert!(m.config["path"].description.contains("document root"));
}
