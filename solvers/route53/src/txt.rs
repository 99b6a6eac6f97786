//! TXT values and record names as Route53 spells them.
//!
//! Route53 stores a TXT record's value in zone-file syntax: one or more
//! quoted character-strings (`"abc"`, `"part one" "part two"`), with `"` and
//! `\` escaped inside. Names come back fully qualified with a trailing dot,
//! lower-cased, and with characters outside `[a-z0-9_-]` written as
//! `\ooo` octal escapes (`*` is `\052`).

/// `value` as one quoted character-string, the form Route53 expects.
/// dns-01 values are base64url and never need escaping, but a value that did
/// would still be written correctly.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether the stored value `raw` is `value`: quoted as we write it, or
/// bare (some tools store it unquoted, and Route53 then shows it so).
pub(crate) fn is_value(raw: &str, value: &str) -> bool {
    let raw = raw.trim();
    raw == quote(value) || raw == value
}

/// A domain name in the form used for comparisons: `\ooo` escapes decoded,
/// ASCII lower case, no trailing dot.
pub(crate) fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        let digits: String = chars.clone().take(3).collect();
        if digits.len() == 3
            && digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
            && let Ok(code) = u8::from_str_radix(&digits, 8)
        {
            out.push(char::from(code).to_ascii_lowercase());
            for _ in 0..3 {
                chars.next();
            }
        } else if let Some(next) = chars.next() {
            // `\.` and friends: the character itself.
            out.push(next.to_ascii_lowercase());
        }
    }
    if out.ends_with('.') {
        out.pop();
    }
    out
}

/// `name` fully qualified (with one trailing dot), for requests.
pub(crate) fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// A hosted zone id without the `/hostedzone/` prefix Route53 puts on ids
/// in responses (and accepts on input).
pub(crate) fn bare_zone_id(id: &str) -> &str {
    let id = id.trim();
    id.strip_prefix("/hostedzone/")
        .or_else(|| id.strip_prefix("hostedzone/"))
        .unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("abc-_09"), "\"abc-_09\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert!(is_value("\"abc\"", "abc"));
        assert!(is_value("abc", "abc"));
        assert!(is_value(" \"abc\" ", "abc"));
        assert!(!is_value("\"abcd\"", "abc"));
        assert!(!is_value("\"ab\" \"c\"", "abc"));
    }

    #[test]
    fn names() {
        assert_eq!(
            normalize_name("_ACME-challenge.Example.COM."),
            "_acme-challenge.example.com"
        );
        assert_eq!(normalize_name("\\052.example.com."), "*.example.com");
        assert_eq!(normalize_name("a\\.b.example.com"), "a.b.example.com");
        assert_eq!(normalize_name("example.com"), "example.com");
        assert_eq!(absolute("a.test"), "a.test.");
        assert_eq!(absolute("a.test."), "a.test.");
        assert_eq!(bare_zone_id("/hostedzone/Z123"), "Z123");
        assert_eq!(bare_zone_id("hostedzone/Z123"), "Z123");
        assert_eq!(bare_zone_id("Z123"), "Z123");
    }
}
