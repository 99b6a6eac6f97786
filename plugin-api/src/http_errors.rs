//! [`PluginError`]s from HTTP answers and transport failures: the mapping
//! every provider plugin needs, in one place.
//!
//! The SDK depends on no HTTP client: pass the status as a `u16` and the
//! client's error as a `std::error::Error` (reqwest, hyper, ureq … all
//! qualify).
//!
//! ```
//! use certsmith_plugin_api::{ErrorKind, PluginError};
//!
//! let e = PluginError::from_http_status(403, "GET https://api.example/zones", "bad token", None);
//! assert_eq!(e.kind, ErrorKind::Auth);
//! let e = PluginError::from_http_status(429, "POST /records", "", Some("7"));
//! assert_eq!((e.kind, e.retry_after_ms), (ErrorKind::RateLimited, Some(7000)));
//! let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! let e = PluginError::from_transport("POST http://127.0.0.1:9/x", &io);
//! assert_eq!(e.kind, ErrorKind::Transient);
//! assert!(e.message.contains("connection refused"));
//! ```

use std::error::Error;
use std::fmt;

use crate::wire::{ErrorBody, ErrorKind};

/// At most this many characters of a response body go into a message.
const BODY_EXCERPT: usize = 200;

impl ErrorBody {
    /// The error for a non-success HTTP answer to `request` (e.g.
    /// `"POST https://api.example/records"`), with up to 200 characters of
    /// the response `body` and the `Retry-After` header, if any:
    ///
    /// | status | kind | retryable |
    /// |---|---|---|
    /// | 401, 403 | `auth` | no |
    /// | 404, 410 | `not_found` | no |
    /// | 429 | `rate_limited`, `retry_after_ms` from `Retry-After` (seconds) | yes |
    /// | 408, 425, 5xx | `transient` (with `retry_after_ms` if given) | yes |
    /// | other 4xx | `config`: the provider refused what the options asked | no |
    /// | anything else | `internal` | no |
    ///
    /// Refine it afterwards where the provider says more (an error code in
    /// the body that means "zone not found", say). The body is the
    /// provider's text: it must not echo credentials (the host redacts
    /// declared secrets from every message anyway).
    pub fn from_http_status(
        status: u16,
        request: impl fmt::Display,
        body: &str,
        retry_after: Option<&str>,
    ) -> ErrorBody {
        let excerpt: String = body.trim().chars().take(BODY_EXCERPT).collect();
        let said = if excerpt.is_empty() {
            String::new()
        } else {
            format!(": {excerpt}")
        };
        let message = format!("{request} answered HTTP {status}{said}");
        let retry_after_ms = retry_after.and_then(parse_retry_after);
        match status {
            401 | 403 => ErrorBody::auth(format!("{message} (check the credentials)")),
            404 | 410 => ErrorBody::not_found(message),
            429 => ErrorBody::rate_limited(message, retry_after_ms),
            408 | 425 | 500..=599 => {
                let mut e = ErrorBody::transient(message);
                e.retry_after_ms = retry_after_ms;
                e
            }
            400..=499 => ErrorBody::new(ErrorKind::Config, message),
            _ => ErrorBody::internal(message),
        }
    }

    /// The error for a `request` that got no HTTP answer: `transient`
    /// (retryable), with the whole chain of `error`'s sources in the
    /// message and "connection refused" / "timed out" said plainly when an
    /// I/O error in the chain says so.
    pub fn from_transport(request: impl fmt::Display, error: &(dyn Error + 'static)) -> ErrorBody {
        let mut chain = error.to_string();
        let mut refused = false;
        let mut timed_out = false;
        let mut source: Option<&(dyn Error + 'static)> = Some(error);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            }
            let text = s.to_string();
            timed_out |= text.contains("timed out");
            if !chain.contains(&text) {
                chain.push_str(": ");
                chain.push_str(&text);
            }
            source = s.source();
        }
        let why = if refused {
            "connection refused; is the service running at that address?".to_owned()
        } else if timed_out {
            format!("timed out ({chain})")
        } else {
            chain
        };
        ErrorBody::transient(format!("{request} failed: {why}"))
    }
}

/// A `Retry-After` value in milliseconds: whole seconds (`"7"`), as most
/// APIs send it. HTTP dates are not understood (`None`).
// Re-exported as `sdk::parse_retry_after`; unreachable without the SDK.
#[cfg_attr(not(feature = "sdk"), allow(unreachable_pub))]
pub fn parse_retry_after(value: &str) -> Option<u64> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        for (status, kind, retryable) in [
            (401, ErrorKind::Auth, false),
            (403, ErrorKind::Auth, false),
            (404, ErrorKind::NotFound, false),
            (429, ErrorKind::RateLimited, true),
            (500, ErrorKind::Transient, true),
            (503, ErrorKind::Transient, true),
            (408, ErrorKind::Transient, true),
            (400, ErrorKind::Config, false),
            (422, ErrorKind::Config, false),
            (302, ErrorKind::Internal, false),
        ] {
            let e = ErrorBody::from_http_status(status, "GET /x", " oops ", None);
            assert_eq!((e.kind, e.retryable), (kind, retryable), "{status}");
            assert!(
                e.message
                    .starts_with(&format!("GET /x answered HTTP {status}: oops"))
            );
        }
        let e = ErrorBody::from_http_status(503, "GET /x", &"y".repeat(1000), Some(" 2 "));
        assert_eq!(e.retry_after_ms, Some(2000));
        assert!(e.message.len() < 300);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn transport_failures_are_transient_with_their_cause() {
        let e = ErrorBody::from_transport(
            "POST http://h/x",
            &Outer(std::io::ErrorKind::ConnectionRefused.into()),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.retryable);
        assert!(e.message.contains("connection refused"), "{}", e.message);
        let e = ErrorBody::from_transport(
            "POST http://h/x",
            &Outer(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "deadline",
            )),
        );
        assert!(e.message.contains("timed out"), "{}", e.message);
        assert!(
            e.message.contains("error sending request: deadline"),
            "{}",
            e.message
        );
    }
}
