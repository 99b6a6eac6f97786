//! Rate limits the CA reported, kept so that no order it would refuse is
//! sent until they lift.
//!
//! Why this module exists: a CA that rate-limits one order will refuse the
//! next ones for the same registered domain (or, for a limit on new orders,
//! every one), and each refused request counts against the client. The
//! first `rateLimited` answer is recorded in the store with its scope and
//! `Retry-After`; the rest of the batch, and later runs, skip the orders it
//! covers until then, with the same exit class and the time.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

use super::{CertRequest, Engine, IssuedCert, check_request};
use crate::error::{CaProblem, IssueError};
use crate::store::RateLimitRecord;
use crate::timefmt::{parse_time, rfc3339};

/// How long a limit is kept when the CA gives no `Retry-After`.
pub(super) const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);

/// The registered domain of a name, as far as certsmith can tell without
/// the public suffix list: its last two labels. Over-broad for names under
/// a multi-label suffix (`example.co.uk` counts as `co.uk`), which skips
/// more, never less, than the CA would refuse.
pub fn registered_domain(name: &str) -> String {
    let name = name.trim_start_matches("*.").trim_end_matches('.');
    let labels: Vec<&str> = name.split('.').collect();
    labels[labels.len().saturating_sub(2)..].join(".")
}

/// The rate limits in force, shared by every order of an engine.
#[derive(Clone, Debug, Default)]
pub struct RateLimits(Arc<Mutex<Vec<RateLimitRecord>>>);

impl RateLimits {
    /// The limits remembered in the store.
    pub fn new(records: Vec<RateLimitRecord>) -> RateLimits {
        RateLimits(Arc::new(Mutex::new(records)))
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Vec<RateLimitRecord>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limit in force at `server` that covers an order for `domains`.
    pub fn blocking(&self, server: &str, domains: &[String]) -> Option<RateLimitRecord> {
        let now = OffsetDateTime::now_utc();
        let registered: Vec<String> = domains.iter().map(|d| registered_domain(d)).collect();
        self.records()
            .iter()
            .filter(|r| r.server == server)
            .filter(|r| parse_time(&r.until).is_some_and(|t| t > now))
            .find(|r| r.domains.is_empty() || r.domains.iter().any(|d| registered.contains(d)))
            .cloned()
    }

    /// Records the limit `error` reports for an order of `domains`, and
    /// returns it; `None` when `error` is no rate limit.
    pub fn learn(
        &self,
        server: &str,
        domains: &[String],
        error: &IssueError,
    ) -> Option<RateLimitRecord> {
        let IssueError::RateLimited {
            problem,
            retry_after,
            ..
        } = error
        else {
            return None;
        };
        let detail = problem.detail.clone().unwrap_or_default();
        // A limit that names the registered domain covers that domain; one
        // that names none (new orders per account) covers every order.
        let mut scope: Vec<String> = domains.iter().map(|d| registered_domain(d)).collect();
        scope.sort();
        scope.dedup();
        scope.retain(|d| detail.contains(d.as_str()));
        let until = retry_after.unwrap_or_else(|| SystemTime::now() + DEFAULT_RATE_LIMIT_WAIT);
        let record = RateLimitRecord {
            server: server.to_owned(),
            domains: scope,
            until: rfc3339(OffsetDateTime::from(until)),
            detail,
            recorded_at: rfc3339(OffsetDateTime::now_utc()),
        };
        self.records().push(record.clone());
        Some(record)
    }
}

impl Engine {
    /// Obtains and stores one certificate: not at all while a rate limit
    /// the CA reported covers it; a new `rateLimited` answer is remembered
    /// (for this engine's other orders and, in the store, for later runs).
    pub async fn issue(&self, req: CertRequest) -> Result<IssuedCert, IssueError> {
        check_request(&req, self.inner.options.max_names)?;
        let server = self.inner.client.directory_url().to_owned();
        let domains: Vec<String> = req.domains.iter().map(|d| d.as_str().to_owned()).collect();
        let limits = &self.inner.options.rate_limits;
        if let Some(record) = limits.blocking(&server, &domains) {
            return Err(skipped(&record));
        }
        let result = self.order_and_store(req).await;
        if let Err(e) = &result
            && let Some(record) = limits.learn(&server, &domains, e)
        {
            let store = self.inner.store.clone();
            let saved = tokio::task::spawn_blocking(move || store.record_rate_limit(&record)).await;
            if let Ok(Err(e)) = saved {
                log::warn!("could not remember the rate limit: {e}");
            }
        }
        result
    }
}

/// The error for an order not sent because of `record`.
pub(super) fn skipped(record: &RateLimitRecord) -> IssueError {
    let retry_after = parse_time(&record.until).map(SystemTime::from);
    IssueError::RateLimited {
        action: format!(
            "place the order (not sent: the CA's rate limit of {} holds until {})",
            record.recorded_at, record.until
        ),
        problem: CaProblem {
            problem_type: Some("urn:ietf:params:acme:error:rateLimited".to_owned()),
            detail: Some(record.detail.clone()),
            status: Some(429),
            subproblems: Vec::new(),
        },
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(detail: &str, retry_in: u64) -> IssueError {
        IssueError::RateLimited {
            action: "create the order".into(),
            problem: CaProblem {
                problem_type: Some("urn:ietf:params:acme:error:rateLimited".into()),
                detail: Some(detail.into()),
                status: Some(429),
                subproblems: Vec::new(),
            },
            retry_after: Some(SystemTime::now() + Duration::from_secs(retry_in)),
        }
    }

    #[test]
    fn registered_domains() {
        assert_eq!(registered_domain("*.a.b.example.com"), "example.com");
        assert_eq!(registered_domain("example.com."), "example.com");
        assert_eq!(registered_domain("localhost"), "localhost");
    }

    #[test]
    fn a_domain_limit_blocks_that_domain_and_an_account_limit_blocks_all() {
        let limits = RateLimits::default();
        let ca = "https://ca/dir";
        let one = vec!["www.example.com".to_owned()];
        let other = vec!["other.test".to_owned()];
        let r = limits
            .learn(
                ca,
                &one,
                &limited(
                    "too many certificates already issued for \"example.com\"",
                    60,
                ),
            )
            .expect("a rate limit");
        assert_eq!(r.domains, ["example.com"]);
        assert!(limits.blocking(ca, &["a.example.com".into()]).is_some());
        assert!(limits.blocking(ca, &other).is_none());
        assert!(limits.blocking("https://other-ca/dir", &one).is_none());

        let limits = RateLimits::default();
        let r = limits
            .learn(ca, &one, &limited("too many new orders recently", 60))
            .expect("a rate limit");
        assert!(r.domains.is_empty());
        assert!(limits.blocking(ca, &other).is_some());
        let e = skipped(&r);
        assert!(e.retry_after().is_some());
        assert!(e.to_string().contains("not sent"), "{e}");

        // Lifted limits block nothing.
        let limits = RateLimits::default();
        limits.learn(ca, &one, &limited("too many new orders recently", 0));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(limits.blocking(ca, &one).is_none());
        assert!(limits.learn(ca, &one, &IssueError::Cancelled).is_none());
    }
}
