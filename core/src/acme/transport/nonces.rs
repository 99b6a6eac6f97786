//! Spare nonces: the `Replay-Nonce` of the last answer of an order, which
//! nothing would use, kept for the next order's first request.
//!
//! Every JWS needs a fresh nonce. instant-acme takes each request's nonce
//! from the answer to the one before, so an order needs `HEAD newNonce`
//! only for its first request (newOrder)
//! ([RFC 8555 §7.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.2)).
//! The answer to an order's last request, its certificate download, also
//! carries a nonce, and the order ends there. Kept here, it answers the
//! next `HEAD newNonce` without asking the CA: one request fewer per order
//! (of about eight), on both sides.
//!
//! A spare is used once (it is taken out) and only while young
//! ([`SPARE_NONCE_AGE`]): CAs forget nonces after a while. If the CA
//! refuses one all the same, the request gets `badNonce`, which carries a
//! fresh nonce and is signed again (see the parent module): the cost is
//! the request that was saved.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a spare nonce is used: well within how long CAs accept one
/// (Boulder keeps tens of thousands of recent nonces per instance).
pub(in crate::acme) const SPARE_NONCE_AGE: Duration = Duration::from_secs(20);

/// How many spare nonces are kept: about as many as orders in flight; the
/// oldest goes first.
pub(in crate::acme) const SPARE_NONCES: usize = 32;

/// The spare nonces of one client, newest last.
#[derive(Debug, Default)]
pub(in crate::acme) struct SpareNonces {
    kept: VecDeque<(String, Instant)>,
}

impl SpareNonces {
    /// Keeps `nonce`, received at `at`.
    pub(in crate::acme) fn keep(&mut self, nonce: String, at: Instant) {
        if self.kept.len() == SPARE_NONCES {
            self.kept.pop_front();
        }
        self.kept.push_back((nonce, at));
    }

    /// The newest spare nonce still young at `now`, taken out; the ones
    /// too old are dropped.
    pub(in crate::acme) fn take(&mut self, now: Instant) -> Option<String> {
        self.kept
            .retain(|(_, at)| now.saturating_duration_since(*at) < SPARE_NONCE_AGE);
        self.kept.pop_back().map(|(nonce, _)| nonce)
    }
}
