//! [`retry`]: run a call again after retryable failures, with exponential
//! backoff, never past the request's [`Deadline`].

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use super::Deadline;
use crate::wire::PluginError;

/// How [`retry`] spaces its attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// Attempts in all (the first one included); at least 1.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each further one.
    pub initial: Duration,
    /// The longest wait between two attempts (also caps `Retry-After`,
    /// unless [`cap_retry_after`](Self::cap_retry_after) is off).
    pub max: Duration,
    /// Time kept free before the deadline for the attempt after a wait: no
    /// wait starts that would leave less than this (default zero). See
    /// [`with_reserve`](Self::with_reserve).
    pub reserve: Duration,
    /// Whether [`max`](Self::max) also caps the provider's `Retry-After`
    /// (default `true`). See [`whole_retry_after`](Self::whole_retry_after).
    pub cap_retry_after: bool,
    /// Whether each backoff wait is "equal jitter": half of it fixed, half
    /// random (default `false`). See [`with_equal_jitter`](Self::with_equal_jitter).
    pub equal_jitter: bool,
}

impl Default for Backoff {
    /// 4 attempts, waiting 250 ms, 500 ms, 1 s (at most 10 s each).
    fn default() -> Self {
        Backoff {
            attempts: 4,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
            reserve: Duration::ZERO,
            cap_retry_after: true,
            equal_jitter: false,
        }
    }
}

impl Backoff {
    /// A policy of `attempts` tries, waiting `initial`, then twice that …,
    /// at most `max`.
    pub fn new(attempts: u32, initial: Duration, max: Duration) -> Self {
        Backoff {
            attempts: attempts.max(1),
            initial,
            max,
            reserve: Duration::ZERO,
            cap_retry_after: true,
            equal_jitter: false,
        }
    }

    /// The same policy, but each backoff wait drawn at random between half
    /// of it and all of it ("equal jitter"), so that callers throttled
    /// together, by one account-wide limit such as Route53's, spread out
    /// instead of retrying in lockstep, and still back off. A provider's
    /// `Retry-After` is waited as given, never jittered.
    pub fn with_equal_jitter(mut self) -> Self {
        self.equal_jitter = true;
        self
    }

    /// The same policy, but starting no wait that would leave less than
    /// `reserve` before the deadline: time for the attempt after the wait
    /// to get an answer, rather than be cut short by the deadline.
    pub fn with_reserve(mut self, reserve: Duration) -> Self {
        self.reserve = reserve;
        self
    }

    /// The same policy, but waiting the provider's whole `Retry-After`
    /// (not capped by [`max`](Self::max)), as providers that count early
    /// retries against the client want. A `Retry-After` that would end
    /// past the deadline (less the [`reserve`](Self::reserve)) is not
    /// waited: [`retry`] returns the error at once, with the provider's
    /// wait in its `retry_after_ms`.
    pub fn whole_retry_after(mut self) -> Self {
        self.cap_retry_after = false;
        self
    }

    /// The wait after failed attempt `n` (1-based).
    fn wait(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        let full = self.initial.saturating_mul(factor).min(self.max);
        if !self.equal_jitter {
            return full;
        }
        // A fresh `RandomState` is randomly keyed: enough randomness to
        // spread retries, without a dependency on a random-number crate.
        let half = full / 2;
        let span = u64::try_from((full - half).as_millis()).unwrap_or(u64::MAX);
        let random = RandomState::new().hash_one(n) % span.saturating_add(1);
        half + Duration::from_millis(random)
    }
}

/// Runs `call` until it succeeds, fails with an error that is not
/// [`retryable`](crate::ErrorBody::retryable), or runs out of attempts or
/// time; returns the last result.
///
/// `call` gets the time left before `deadline`: bound each attempt's own
/// timeout by it. Between attempts `retry` waits the provider's
/// `retry_after_ms` if the error has one, else the backoff, both capped by
/// [`Backoff::max`] (`Retry-After` not, after [`Backoff::whole_retry_after`]);
/// it starts no wait that would end past the deadline (less
/// [`Backoff::reserve`]) and returns the error instead, so the host sees the
/// provider's error rather than "did not finish before its deadline".
///
/// ```
/// use std::time::Duration;
/// use certsmith_plugin_api::PluginError;
/// use certsmith_plugin_api::sdk::{Backoff, Deadline, retry};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let deadline = Deadline::from_now(Duration::from_secs(5));
/// let mut calls = 0;
/// let quick = Backoff::new(3, Duration::from_millis(1), Duration::from_millis(10));
/// let got = retry(deadline, quick, |left| {
///     calls += 1;
///     let n = calls;
///     async move {
///         assert!(left <= Duration::from_secs(5));
///         if n < 3 { Err(PluginError::transient("503")) } else { Ok(n) }
///     }
/// })
/// .await;
/// assert_eq!(got, Ok(3));
/// # });
/// ```
pub async fn retry<T, F, Fut>(
    deadline: Deadline,
    backoff: Backoff,
    mut call: F,
) -> Result<T, PluginError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, PluginError>>,
{
    let mut attempt = 1;
    loop {
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(PluginError::transient(
                "the call's deadline passed before the request could be sent",
            ));
        }
        let err = match call(left).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !err.retryable || attempt >= backoff.attempts {
            return Err(err);
        }
        let wait = match err.retry_after_ms.map(Duration::from_millis) {
            Some(asked) if !backoff.cap_retry_after => asked,
            Some(asked) => asked.min(backoff.max),
            None => backoff.wait(attempt).min(backoff.max),
        };
        if deadline.remaining() <= wait.saturating_add(backoff.reserve) {
            return Err(err);
        }
        log::debug!(
            "attempt {attempt} failed ({err}); retrying in {} ms",
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn stops_at_errors_that_are_not_retryable() {
        let mut calls = 0;
        let r: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_secs(5)),
            Backoff::default(),
            |_| {
                calls += 1;
                async { Err(PluginError::auth("no")) }
            },
        ));
        assert_eq!(r.map_err(|e| e.kind), Err(ErrorKind::Auth));
        assert_eq!(calls, 1);
    }

    #[test]
    fn gives_up_after_its_attempts_with_the_last_error() {
        let mut calls = 0;
        let r: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_secs(5)),
            Backoff::new(3, Duration::from_millis(1), Duration::from_millis(5)),
            |_| {
                calls += 1;
                let n = calls;
                async move { Err(PluginError::transient(format!("try {n}"))) }
            },
        ));
        assert_eq!(r.map_err(|e| e.message), Err("try 3".to_owned()));
        assert_eq!(calls, 3);
    }

    #[test]
    fn starts_no_wait_past_the_deadline() {
        let started = std::time::Instant::now();
        let mut calls = 0;
        let r: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_millis(300)),
            Backoff::new(10, Duration::from_secs(1), Duration::from_secs(1)),
            |_| {
                calls += 1;
                async { Err(PluginError::rate_limited("slow", Some(60_000))) }
            },
        ));
        assert_eq!(r.map_err(|e| e.kind), Err(ErrorKind::RateLimited));
        assert_eq!(calls, 1);
        assert!(started.elapsed() < Duration::from_millis(300));
        let expired: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::ZERO),
            Backoff::default(),
            |_| async { Ok(()) },
        ));
        assert!(expired.is_err());
    }

    #[test]
    fn keeps_the_reserve_free_before_the_deadline() {
        // 400 ms left: a 100 ms wait fits, but not with a 350 ms reserve.
        let mut calls = 0;
        let started = std::time::Instant::now();
        let r: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_millis(400)),
            Backoff::new(10, Duration::from_millis(100), Duration::from_millis(100))
                .with_reserve(Duration::from_millis(350)),
            |_| {
                calls += 1;
                async { Err(PluginError::transient("503")) }
            },
        ));
        assert_eq!(r.map_err(|e| e.message), Err("503".to_owned()));
        assert_eq!(calls, 1);
        assert!(started.elapsed() < Duration::from_millis(100));
        // Without it, the same policy retries until the deadline is near.
        let mut calls = 0;
        let _: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_millis(400)),
            Backoff::new(10, Duration::from_millis(100), Duration::from_millis(100)),
            |_| {
                calls += 1;
                async { Err(PluginError::transient("503")) }
            },
        ));
        assert!(calls >= 3, "{calls}");
    }

    #[test]
    fn whole_retry_after_waits_past_max_or_not_at_all() {
        // Capped (the default): a 300 ms Retry-After waits max (10 ms).
        let capped = Backoff::new(2, Duration::from_millis(1), Duration::from_millis(10));
        let rate_limited = || PluginError::rate_limited("429", Some(300));
        let started = std::time::Instant::now();
        let mut calls = 0;
        let _: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_secs(5)),
            capped,
            |_| {
                calls += 1;
                let e = rate_limited();
                async move { Err(e) }
            },
        ));
        assert_eq!(calls, 2);
        assert!(started.elapsed() < Duration::from_millis(250));
        // Whole: the same Retry-After is waited in full.
        let started = std::time::Instant::now();
        let mut calls = 0;
        let _: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_secs(5)),
            capped.whole_retry_after(),
            |_| {
                calls += 1;
                let e = rate_limited();
                async move { Err(e) }
            },
        ));
        assert_eq!(calls, 2);
        assert!(started.elapsed() >= Duration::from_millis(290));
        // A Retry-After past the deadline is not waited: the error comes
        // back at once, with the provider's wait.
        let started = std::time::Instant::now();
        let mut calls = 0;
        let r: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_secs(5)),
            Backoff::new(10, Duration::from_millis(1), Duration::from_millis(10))
                .whole_retry_after(),
            |_| {
                calls += 1;
                async { Err(PluginError::rate_limited("429", Some(3_600_000))) }
            },
        ));
        assert_eq!(r.map_err(|e| e.retry_after_ms), Err(Some(3_600_000)));
        assert_eq!(calls, 1);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn new_policies_keep_the_old_behaviour() {
        let b = Backoff::new(3, Duration::from_millis(1), Duration::from_millis(2));
        assert_eq!((b.reserve, b.cap_retry_after), (Duration::ZERO, true));
        let d = Backoff::default();
        assert_eq!((d.reserve, d.cap_retry_after), (Duration::ZERO, true));
        assert!(!b.equal_jitter && !d.equal_jitter);
    }

    #[test]
    fn equal_jitter_keeps_half_of_each_wait_and_spreads_the_rest() {
        let b = Backoff::new(10, Duration::from_millis(400), Duration::from_secs(10))
            .with_equal_jitter();
        for n in 1..=8 {
            let full = Backoff {
                equal_jitter: false,
                ..b
            }
            .wait(n);
            let waits: std::collections::BTreeSet<Duration> = (0..64).map(|_| b.wait(n)).collect();
            for w in &waits {
                assert!(
                    *w >= full / 2 && *w <= full,
                    "attempt {n}: {w:?} of {full:?}"
                );
            }
            // 64 draws from a span of at least 200 ms are not all equal.
            assert!(waits.len() > 1, "attempt {n}: no jitter");
        }
    }

    #[test]
    fn equal_jitter_does_not_touch_retry_after() {
        let b =
            Backoff::new(2, Duration::from_millis(1), Duration::from_secs(10)).with_equal_jitter();
        let started = std::time::Instant::now();
        let _: Result<(), _> = rt().block_on(retry(
            Deadline::from_now(Duration::from_secs(5)),
            b,
            |_| async { Err(PluginError::rate_limited("429", Some(200))) },
        ));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let b = Backoff::new(10, Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (1..=5).map(|n| b.wait(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(b.wait(64), Duration::from_millis(500));
    }
}
