//! [`Deadline`]: when the host stops waiting for a call, as a clock a
//! plugin can ask "how long is left?".

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::wire::{ChallengeRequest, CredentialsCheck};

/// How far ahead a deadline may lie. Later ones (a host clock far off, a
/// nonsensical `deadline_unix_ms`) are clamped here instead of overflowing
/// [`Instant`].
const FARTHEST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The moment the host stops waiting for the current `present` or
/// `cleanup` call.
///
/// Get one with [`ChallengeRequest::deadline`] (or
/// [`Deadline::from_unix_ms`] from a request's `deadline_unix_ms`). The
/// wall-clock time the host sent is converted once, on creation, into a
/// point on the monotonic clock, so a later change of the system clock does
/// not move it.
///
/// The SDK already cancels the solver's future when the deadline passes and
/// reports a `transient` error, so a plugin needs no timer of its own. Use
/// the deadline to size each request's timeout and to decide whether a
/// retry can still finish in time, so that the error the host sees is the
/// real one rather than "did not finish before its deadline":
///
/// ```
/// use std::time::Duration;
/// use certsmith_plugin_api::{ChallengeRequest, Deadline, PluginError};
///
/// const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
///
/// async fn send(timeout: Duration) -> Result<(), PluginError> {
///     # let _ = timeout;
///     // ... one HTTP request bounded by `timeout` ...
///     # Err(PluginError::transient("503"))
/// }
///
/// async fn with_retries(req: &ChallengeRequest) -> Result<(), PluginError> {
///     let deadline = req.deadline();
///     let mut wait = Duration::from_millis(250);
///     loop {
///         if deadline.is_expired() {
///             return Err(PluginError::transient("the call's deadline passed"));
///         }
///         let err = match send(deadline.remaining().min(REQUEST_TIMEOUT)).await {
///             Ok(()) => return Ok(()),
///             Err(e) => e,
///         };
///         // Start no wait that would leave no time for the next try.
///         if deadline.remaining() <= wait {
///             return Err(err);
///         }
///         tokio::time::sleep(wait).await;
///         wait *= 2;
///     }
/// }
/// # let past = Deadline::from_unix_ms(0);
/// # assert!(past.is_expired() && past.remaining().is_zero());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline `deadline_unix_ms` milliseconds after the Unix epoch
    /// (the wire format of [`ChallengeRequest::deadline_unix_ms`]). A time
    /// already past gives an expired deadline; one more than a century
    /// ahead is clamped to a century.
    pub fn from_unix_ms(deadline_unix_ms: u64) -> Self {
        // A system clock before 1970 counts as the epoch: the deadline is
        // then simply far away, and the host enforces its own.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::from_now(Duration::from_millis(
            deadline_unix_ms.saturating_sub(now_ms),
        ))
    }

    /// The deadline `left` from now (clamped to a century), e.g. for tests
    /// or for a budget of the plugin's own.
    pub fn from_now(left: Duration) -> Self {
        let now = Instant::now();
        Deadline {
            at: now.checked_add(left.min(FARTHEST)).unwrap_or(now),
        }
    }

    /// The time left before the deadline; [`Duration::ZERO`] once it has
    /// passed, never negative.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed (no time is left).
    pub fn is_expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The deadline on the monotonic clock, e.g. for
    /// `tokio::time::timeout_at(deadline.instant().into(), fut)`.
    pub fn instant(&self) -> Instant {
        self.at
    }
}

impl ChallengeRequest {
    /// When the host stops waiting for this call: [`deadline_unix_ms`]
    /// as a [`Deadline`]. Take it once at the start of the call and pass it
    /// down, rather than calling this again in a loop.
    ///
    /// [`deadline_unix_ms`]: ChallengeRequest::deadline_unix_ms
    pub fn deadline(&self) -> Deadline {
        Deadline::from_unix_ms(self.deadline_unix_ms)
    }
}

impl CredentialsCheck {
    /// When the host stops waiting for the check, as a [`Deadline`].
    pub fn deadline(&self) -> Deadline {
        Deadline::from_unix_ms(self.deadline_unix_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_unix_ms() -> u64 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the test machine's clock is after 1970");
        u64::try_from(d.as_millis()).expect("fits in u64")
    }

    #[test]
    fn a_past_deadline_has_nothing_left() {
        for ms in [0, 1, now_unix_ms().saturating_sub(1)] {
            let d = Deadline::from_unix_ms(ms);
            assert_eq!(d.remaining(), Duration::ZERO, "{ms}");
            assert!(d.is_expired(), "{ms}");
        }
        let d = Deadline::from_now(Duration::ZERO);
        assert!(d.is_expired() && d.remaining().is_zero());
    }

    #[test]
    fn a_future_deadline_has_at_most_the_distance_left() {
        let distance = Duration::from_secs(60);
        let ms = now_unix_ms() + 60_000;
        let d = Deadline::from_unix_ms(ms);
        let left = d.remaining();
        assert!(!d.is_expired());
        assert!(left > Duration::ZERO && left <= distance, "{left:?}");
        // A millisecond of rounding and a slow test machine, no more.
        assert!(left > distance - Duration::from_secs(5), "{left:?}");

        let d = Deadline::from_now(distance);
        let left = d.remaining();
        assert!(left > Duration::ZERO && left <= distance, "{left:?}");
        assert!(d.remaining() <= left, "time left only shrinks");
    }

    #[test]
    fn a_far_deadline_is_clamped_instead_of_overflowing() {
        let d = Deadline::from_unix_ms(u64::MAX);
        assert!(!d.is_expired());
        assert!(d.remaining() <= FARTHEST);
        assert!(Deadline::from_now(Duration::MAX).remaining() <= FARTHEST);
    }

    #[test]
    fn a_request_carries_its_deadline() {
        let req = ChallengeRequest {
            challenge_type: crate::ChallengeType::Dns01,
            identifier: "example.com".to_owned(),
            wildcard: false,
            token: "t".to_owned(),
            key_authorization: "t.x".to_owned(),
            deadline_unix_ms: now_unix_ms() + 30_000,
            dns: None,
        };
        let left = req.deadline().remaining();
        assert!(
            left > Duration::ZERO && left <= Duration::from_secs(30),
            "{left:?}"
        );
        let expired = ChallengeRequest {
            deadline_unix_ms: 5,
            ..req.clone()
        };
        assert!(expired.deadline().is_expired());
        assert!(expired.deadline() < req.deadline());
    }
}
