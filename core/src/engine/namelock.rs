//! The cross-process lock of one (solver, record name) around `present` and
//! `cleanup` (docs/design.md §3.8).
//!
//! Read-modify-write DNS APIs (fetch the TXT set, add a value, write the set
//! back) lose a value when two processes do it at the same name at once.
//! Every certsmith process sharing a state directory takes
//! `<state>/locks/name-<solver>-<hash of the name>.lock` (an `flock`) for
//! the length of one call, so calls at one name take turns; calls at other
//! names, and other solvers, do not wait.

use certsmith_plugin_api::ChallengeRequest;

use crate::plugin::SolverInstance;
use crate::store::{Lease, Store};

/// The name a request writes at: the dns-01 record's fqdn, else the
/// identifier (lower case, no trailing dot).
pub(crate) fn lock_name(req: &ChallengeRequest) -> String {
    let name = match &req.dns {
        Some(d) => d.fqdn.as_str(),
        None => req.identifier.as_str(),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The lease scope of (solver, name): the name hashed, so that any name
/// makes a short, safe file name.
pub(crate) fn scope(solver: &str, name: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let hex: String = digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("name-{solver}-{hex}")
}

/// Takes the lock of `req`'s name for `solver`, waiting up to the call's
/// own timeout. `None` when it could not be had: the call then goes ahead
/// unserialized, with a warning, rather than failing the order over a lock
/// (the holder is likely hung; its own deadline ends it). Also `None`,
/// without asking, for a solver whose challenges live in its process alone
/// (`in_process`): no other process can write there.
pub(crate) async fn lock(
    store: &Store,
    solver: &SolverInstance,
    req: &ChallengeRequest,
) -> Option<Lease> {
    if solver.manifest().in_process {
        return None;
    }
    let wait = super::challenge::call_timeout(solver.manifest());
    let solver = solver.code();
    let name = lock_name(req);
    let scope = scope(solver, &name);
    let store = store.clone();
    let taken = tokio::task::spawn_blocking(move || store.name_lease(&scope, wait)).await;
    match taken {
        Ok(Ok(lease)) => Some(lease),
        Ok(Err(e)) => {
            log::warn!(
                "solver '{solver}': going ahead at {name} without the lock that keeps other certsmith processes from writing there at the same time: {e}"
            );
            None
        }
        Err(e) => {
            log::warn!("solver '{solver}': the lock of {name} could not be taken: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{ChallengeType, DnsTarget};
    use std::time::Duration;

    #[test]
    fn names_and_scopes() {
        let req = ChallengeRequest::new(ChallengeType::Dns01, "Example.com", "t", "k", 0).with_dns(
            Some(DnsTarget::new(
                "example.com",
                "_acme-challenge",
                "_acme-challenge.Example.COM.",
                "v",
                60,
            )),
        );
        assert_eq!(lock_name(&req), "_acme-challenge.example.com");
        let http = ChallengeRequest::new(ChallengeType::Http01, "a.test", "t", "k", 0);
        assert_eq!(lock_name(&http), "a.test");
        let s = scope("cloudflare", "_acme-challenge.example.com");
        assert!(s.starts_with("name-cloudflare-") && s.len() == "name-cloudflare-".len() + 20);
        assert_ne!(s, scope("cloudflare", "_acme-challenge.example.org"));
        assert_ne!(s, scope("route53", "_acme-challenge.example.com"));
    }

    #[test]
    fn a_second_holder_waits_across_store_handles() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Two handles on one state directory stand for two processes: flock
        // locks belong to open files, not to processes.
        let a = Store::open(dir.path()).expect("store");
        let b = Store::open(dir.path()).expect("store");
        let held = a
            .name_lease("name-x-1", Duration::from_secs(1))
            .expect("first");
        assert!(dir.path().join("locks").join("name-x-1.lock").exists());
        assert!(
            b.name_lease("name-x-1", Duration::from_millis(100))
                .is_err()
        );
        assert!(b.name_lease("name-x-2", Duration::from_millis(100)).is_ok());
        drop(held);
        assert!(b.name_lease("name-x-1", Duration::from_millis(100)).is_ok());
    }
}
