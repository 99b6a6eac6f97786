//! Budgets and counters: the retries and waits one order may spend, and
//! what a client sent.

use super::*;

/// How many requests a client sent, how many of them were retries, and how
/// many order polls it made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Requests sent to the CA (every attempt counts).
    pub requests: u64,
    /// Of those, attempts after a failed one.
    pub retries: u64,
    /// Order polls (waiting for validation or issuance).
    pub polls: u64,
    /// `newNonce` requests answered with a spare nonce instead of sent.
    pub nonces_reused: u64,
}

#[derive(Default)]
pub(in crate::acme) struct Counters {
    pub(in crate::acme) requests: AtomicU64,
    pub(in crate::acme) retries: AtomicU64,
    pub(in crate::acme) polls: AtomicU64,
    pub(in crate::acme) nonces_reused: AtomicU64,
}

/// What one order may still spend on retries, and what its requests
/// learned that its polling needs (the last `Retry-After`). Set for the
/// requests of an order with [`ORDER_SCOPE`].
pub(in crate::acme) struct OrderScope {
    pub(in crate::acme) retries_left: AtomicU32,
    pub(in crate::acme) wait_left_ms: AtomicU64,
    pub(in crate::acme) retry_after: Mutex<Option<SystemTime>>,
    /// When the order was placed.
    pub(in crate::acme) started: Instant,
    /// Polls made so far.
    pub(in crate::acme) polls: AtomicU32,
}

impl OrderScope {
    pub(in crate::acme) fn new() -> Arc<OrderScope> {
        Arc::new(OrderScope {
            retries_left: AtomicU32::new(ORDER_RETRIES),
            wait_left_ms: AtomicU64::new(u64::try_from(ORDER_RETRY_WAIT.as_millis()).unwrap_or(0)),
            retry_after: Mutex::new(None),
            started: Instant::now(),
            polls: AtomicU32::new(0),
        })
    }

    /// Spends one retry and `wait`; false when the budget is spent.
    pub(in crate::acme) fn take_retry(&self, wait: Duration) -> bool {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let retry = self
            .retries_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        retry
            && self
                .wait_left_ms
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(ms))
                .is_ok()
    }

    /// The `Retry-After` of the last successful answer in this order, once.
    pub(in crate::acme) fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after.lock().ok()?.take()
    }

    pub(in crate::acme) fn set_retry_after(&self, at: Option<SystemTime>) {
        if let Ok(mut slot) = self.retry_after.lock() {
            *slot = at;
        }
    }
}

tokio::task_local! {
    /// The order the requests of the current task belong to.
    pub(in crate::acme) static ORDER_SCOPE: Arc<OrderScope>;
}

/// A uniformly random fraction in [0, 1).
pub(in crate::acme) fn random_fraction() -> f64 {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// `d` scaled by a random factor in [lo, hi).
pub(in crate::acme) fn jitter(d: Duration, lo: f64, hi: f64) -> Duration {
    d.mul_f64(lo + (hi - lo) * random_fraction())
}

/// The backoff before attempt `attempt + 1`: `initial` doubled per attempt,
/// at most [`BACKOFF_MAX`], jittered to 50-100 %.
pub(in crate::acme) fn backoff(initial: Duration, attempt: u32) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    jitter(base, 0.5, 1.0)
}
