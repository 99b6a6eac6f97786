//! Times as certsmith writes and reads them: RFC 3339, UTC.
//!
//! Why this module exists: lineages, journal entries, JSON output and
//! messages all carry times, and they must all look alike and parse back.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats a time as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Now, as [`rfc3339`] formats it.
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_in_utc_and_back() {
        let t = parse_time("2025-01-02T03:04:05.678+02:00").expect("parses");
        assert_eq!(rfc3339(t), "2025-01-02T01:04:05Z");
        assert_eq!(parse_time(&rfc3339(t)), t.replace_nanosecond(0).ok());
        assert!(parse_time("yesterday").is_none());
    }
}
