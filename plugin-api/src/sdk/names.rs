//! [`relative_name`]: a record name as DNS provider APIs want it, relative
//! to the zone they know it by (which need not be the zone the host found,
//! e.g. a zone name the user configured).

/// `fqdn` relative to `zone` (both without a trailing dot, same case):
/// `"@"` at the apex, `fqdn` unchanged when it is not inside `zone`.
///
/// ```
/// use certsmith_plugin_api::sdk::relative_name;
/// assert_eq!(relative_name("_acme-challenge.a.example.com", "example.com"), "_acme-challenge.a");
/// assert_eq!(relative_name("example.com", "example.com"), "@");
/// assert_eq!(relative_name("other.org", "example.com"), "other.org");
/// ```
pub fn relative_name(fqdn: &str, zone: &str) -> String {
    if fqdn == zone {
        return "@".to_owned();
    }
    fqdn.strip_suffix(zone)
        .and_then(|head| head.strip_suffix('.'))
        .unwrap_or(fqdn)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_labels_are_stripped() {
        assert_eq!(
            relative_name("_acme-challenge.do.test", "do.test"),
            "_acme-challenge"
        );
        assert_eq!(relative_name("hz.test", "hz.test"), "@");
        // "xdo.test" ends with "do.test" but is not inside it.
        assert_eq!(relative_name("xdo.test", "do.test"), "xdo.test");
    }
}
