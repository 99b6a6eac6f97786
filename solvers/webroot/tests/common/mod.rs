//! Helpers shared by the webroot solver's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::{ChallengeRequest, ChallengeType, Solver};
use certsmith_webroot::{Webroot, WebrootConfig};

pub fn solver(root: &Path) -> Webroot {
    Webroot::new(WebrootConfig {
        path: root.to_path_buf(),
    })
    .expect("valid config")
}

pub fn request(token: &str) -> ChallengeRequest {
    let deadline = SystemTime::now() + Duration::from_secs(60);
    ChallengeRequest::new(
        ChallengeType::Http01,
        "example.test".to_owned(),
        token.to_owned(),
        format!("{token}.thumbprint"),
        deadline
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64,
    )
}

pub fn well_known(root: &Path) -> PathBuf {
    root.join(".well-known")
}

pub fn challenge_dir(root: &Path) -> PathBuf {
    root.join(".well-known").join("acme-challenge")
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

/// Every entry under `dir`, recursively, relative to it, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            out.push(
                p.strip_prefix(base)
                    .expect("under base")
                    .display()
                    .to_string(),
            );
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
