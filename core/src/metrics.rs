//! Process-wide counters a long-running front end exports (`certsmith
//! daemon`'s `/metrics`).
//!
//! Why this module exists: what the CA answered is only seen deep in the
//! ACME transport, once per HTTP response, while a metrics endpoint wants
//! the totals of the whole process, across every client and engine the
//! daemon builds and rebuilds. A few atomics here are cheap enough to
//! count always (one relaxed add per response), and keep the transport
//! free of any metrics library.

use std::sync::atomic::{AtomicU64, Ordering};

/// HTTP status codes counted one by one: 100 to 599.
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

/// Responses of the CA by status code (index: status - 100).
static CA_RESPONSES: [AtomicU64; STATUSES] = [const { AtomicU64::new(0) }; STATUSES];
/// Requests to the CA that got no HTTP response (refused, reset, timed out).
static CA_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Counts one HTTP response of the CA.
pub(crate) fn count_ca_response(status: u16) {
    match CA_RESPONSES.get(usize::from(status.wrapping_sub(FIRST_STATUS))) {
        Some(slot) => slot.fetch_add(1, Ordering::Relaxed),
        None => CA_FAILURES.fetch_add(1, Ordering::Relaxed),
    };
}

/// Counts one request to the CA that got no HTTP response.
pub(crate) fn count_ca_failure() {
    CA_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// What the CA answered so far in this process, every attempt counted
/// (retries too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaRequests {
    /// (HTTP status, responses), for every status seen, ascending.
    pub by_status: Vec<(u16, u64)>,
    /// Requests that got no HTTP response (connection refused or reset,
    /// timeout).
    pub no_response: u64,
}

/// The counts of [`CaRequests`] now.
pub fn ca_requests() -> CaRequests {
    let by_status = CA_RESPONSES
        .iter()
        .zip(FIRST_STATUS..)
        .filter_map(|(n, status)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then_some((status, n))
        })
        .collect();
    CaRequests {
        by_status,
        no_response: CA_FAILURES.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn responses_are_counted_by_status() {
        let before = super::ca_requests();
        let of = |c: &super::CaRequests, s: u16| {
            c.by_status
                .iter()
                .find(|(st, _)| *st == s)
                .map_or(0, |(_, n)| *n)
        };
        super::count_ca_response(201);
        super::count_ca_response(201);
        super::count_ca_response(999);
        super::count_ca_failure();
        let after = super::ca_requests();
        assert_eq!(of(&after, 201) - of(&before, 201), 2);
        assert_eq!(after.no_response - before.no_response, 2);
    }
}
