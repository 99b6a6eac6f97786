//! Domain names as the CA will see them, checked before any request is sent.
//!
//! Why this module exists: a name the CA rejects costs a round trip, an order
//! and, at Let's Encrypt, a slot in the failed-validation rate limit. Every
//! rule the CA would apply to the *syntax* of a name is applied here first,
//! and each error names the domain and what is wrong with it, so that the
//! operator can fix the command line without reading a problem document.
//!
//! Rules (a DNS identifier of [RFC 8555 §7.1.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.4)):
//!
//! * host name syntax of [RFC 1123 §2.1](https://www.rfc-editor.org/rfc/rfc1123#section-2.1)
//!   ("LDH": letters, digits, hyphen), labels of 1-63 octets, at most 253
//!   octets in all ([RFC 1035 §2.3.4](https://www.rfc-editor.org/rfc/rfc1035#section-2.3.4)),
//!   no label starting or ending with `-`, at least two labels;
//! * a wildcard only as the whole leftmost label, once (`*.example.com`;
//!   [RFC 8555 §7.1.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3));
//! * internationalized names are converted to their A-label (punycode) form
//!   with UTS #46 ([RFC 5891](https://www.rfc-editor.org/rfc/rfc5891)), as the
//!   CA only accepts ASCII;
//! * everything is lowercased, and duplicates are dropped (keeping the
//!   first occurrence, whose position decides the default certificate name).

use std::fmt;

use certsmith_plugin_api::{ChallengeType, Manifest};

/// Longest DNS name, in octets, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label, in octets.
const MAX_LABEL_LEN: usize = 63;

/// A checked DNS identifier: lowercase ASCII, possibly `*.`-prefixed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    /// The full ASCII form, `*.example.com` for a wildcard.
    name: String,
    /// What the user typed, for messages (differs for IDNs and case).
    input: String,
}

impl Identifier {
    /// The ASCII form sent to the CA, e.g. `*.xn--bcher-kva.example`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Whether this is an IP address identifier
    /// ([RFC 8738](https://www.rfc-editor.org/rfc/rfc8738)).
    pub fn is_ip(&self) -> bool {
        self.name.parse::<std::net::IpAddr>().is_ok()
    }

    /// Whether this is a `*.` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.name.starts_with("*.")
    }

    /// The name without a `*.` prefix: what the CA validates.
    pub fn base(&self) -> &str {
        self.name.strip_prefix("*.").unwrap_or(&self.name)
    }

    /// What the user typed.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a domain was rejected. Each message names the domain as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifierError {
    /// No domain was given at all.
    #[error("no domain given")]
    Empty,
    /// The name is empty or only dots.
    #[error("invalid domain '{domain}': the name is empty")]
    EmptyName {
        /// The domain as given.
        domain: String,
    },
    /// A label (between dots) is empty, e.g. `a..b` or `.a.b`.
    #[error(
        "invalid domain '{domain}': it has an empty label (two dots in a row, or a leading dot)"
    )]
    EmptyLabel {
        /// The domain as given.
        domain: String,
    },
    /// A label is longer than 63 octets.
    #[error(
        "invalid domain '{domain}': label '{label}' is {len} characters long; a label may have at most 63"
    )]
    LabelTooLong {
        /// The domain as given.
        domain: String,
        /// The label (ASCII form).
        label: String,
        /// Its length.
        len: usize,
    },
    /// The whole name is longer than 253 octets.
    #[error(
        "invalid domain '{}': it is {len} characters long; a DNS name may have at most 253",
        shorten(.domain)
    )]
    NameTooLong {
        /// The domain as given.
        domain: String,
        /// Its length (ASCII form).
        len: usize,
    },
    /// A label has a character outside letters, digits and `-`.
    #[error(
        "invalid domain '{domain}': label '{label}' contains {}; only letters, digits and '-' are allowed",
        describe_char(*.ch)
    )]
    BadCharacter {
        /// The domain as given.
        domain: String,
        /// The offending label.
        label: String,
        /// The offending character.
        ch: char,
    },
    /// A label starts or ends with `-`.
    #[error("invalid domain '{domain}': label '{label}' must not start or end with '-'")]
    BadHyphen {
        /// The domain as given.
        domain: String,
        /// The offending label.
        label: String,
    },
    /// A single label, e.g. `localhost` or `com`.
    #[error(
        "invalid domain '{domain}': a certificate name needs at least two labels (like example.com)"
    )]
    SingleLabel {
        /// The domain as given.
        domain: String,
    },
    /// The name looks like an IP address but is not a valid one.
    #[error(
        "invalid domain '{domain}': it is neither a DNS name nor a valid IP address; give a DNS name, an IPv4 address (192.0.2.1) or an IPv6 address (2001:db8::1)"
    )]
    IpAddress {
        /// The domain as given.
        domain: String,
    },
    /// `*` anywhere but as the whole leftmost label, or more than once.
    #[error(
        "invalid domain '{domain}': a wildcard is allowed only once, as the whole leftmost label ('*.example.com')"
    )]
    BadWildcard {
        /// The domain as given.
        domain: String,
    },
    /// More names than the CA accepts in one certificate.
    #[error("{count} names in one certificate; the CA accepts at most {max}")]
    TooMany {
        /// How many were given.
        count: usize,
        /// The CA's limit.
        max: usize,
    },
    /// The internationalized name could not be converted to punycode.
    #[error("invalid domain '{domain}': it is not a valid internationalized name ({reason})")]
    Idna {
        /// The domain as given.
        domain: String,
        /// The converter's reason.
        reason: String,
    },
    /// An IP address with a solver that answers neither http-01 nor
    /// tls-alpn-01 (dns-01 cannot validate an address, RFC 8738 §7).
    #[error(
        "'{domain}' is an IP address, validated only with http-01 or tls-alpn-01; solver '{solver}' offers {offers}; use standalone or webroot"
    )]
    IpNeedsHttpOrTls {
        /// The address.
        domain: String,
        /// The solver code.
        solver: String,
        /// The challenge types it offers, comma-separated.
        offers: String,
    },
    /// A wildcard with a solver that cannot answer dns-01.
    #[error(
        "'{domain}' needs dns-01; solver '{solver}' offers {offers}; use a DNS solver such as cloudflare, route53, rfc2136"
    )]
    WildcardNeedsDns {
        /// The wildcard domain.
        domain: String,
        /// The solver code.
        solver: String,
        /// The challenge types it offers, comma-separated.
        offers: String,
    },
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 60 {
        let head: String = s.chars().take(40).collect();
        format!("{head}...")
    } else {
        s.to_owned()
    }
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        '_' => "'_' (underscore)".to_owned(),
        c if c.is_control() => format!("the control character U+{:04X}", c as u32),
        c => format!("'{c}'"),
    }
}

/// Parses and checks one domain.
pub fn parse_domain(input: &str) -> Result<Identifier, IdentifierError> {
    let domain = || input.to_owned();
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() || trimmed.chars().all(|c| c == '.') {
        return Err(IdentifierError::EmptyName { domain: domain() });
    }
    // An IP address identifier (RFC 8738), IPv6 also in brackets; its
    // text is the canonical one (RFC 5952 for IPv6), as the CA writes it.
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<std::net::IpAddr>() {
        return Ok(Identifier {
            name: ip.to_string(),
            input: input.to_owned(),
        });
    }
    if unbracketed.len() != trimmed.len() {
        return Err(IdentifierError::IpAddress { domain: domain() });
    }

    let (wildcard, rest) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if rest.contains('*') {
        return Err(IdentifierError::BadWildcard { domain: domain() });
    }

    // Check the ASCII labels as given first, so that messages quote what
    // the user typed; only non-ASCII names go through UTS #46.
    let ascii = if rest.is_ascii() {
        let lower = rest.to_ascii_lowercase();
        check_labels(input, &lower)?;
        if lower.split('.').any(|l| l.starts_with("xn--")) {
            // Validate A-labels by round-tripping them.
            let (_, result) = idna::domain_to_unicode(&lower);
            if result.is_err() {
                return Err(IdentifierError::Idna {
                    domain: domain(),
                    reason: idna_reason(&lower),
                });
            }
        }
        lower
    } else {
        let converted = idna::domain_to_ascii_cow(rest.as_bytes(), idna::AsciiDenyList::STD3)
            .map_err(|_| IdentifierError::Idna {
                domain: domain(),
                reason: idna_reason(rest),
            })?
            .into_owned();
        check_labels(input, &converted)?;
        converted
    };

    let name = if wildcard {
        format!("*.{ascii}")
    } else {
        ascii
    };
    if name.len() > MAX_NAME_LEN {
        return Err(IdentifierError::NameTooLong {
            domain: domain(),
            len: name.len(),
        });
    }
    Ok(Identifier {
        name,
        input: input.to_owned(),
    })
}

/// Checks the labels of a lowercase ASCII name (without `*.`).
fn check_labels(input: &str, ascii: &str) -> Result<(), IdentifierError> {
    let domain = || input.to_owned();
    if ascii.len() > MAX_NAME_LEN {
        return Err(IdentifierError::NameTooLong {
            domain: domain(),
            len: ascii.len(),
        });
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(IdentifierError::EmptyLabel { domain: domain() });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(IdentifierError::LabelTooLong {
                domain: domain(),
                label: (*label).to_owned(),
                len: label.len(),
            });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(IdentifierError::BadCharacter {
                domain: domain(),
                label: (*label).to_owned(),
                ch,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(IdentifierError::BadHyphen {
                domain: domain(),
                label: (*label).to_owned(),
            });
        }
    }
    if labels.len() < 2 {
        return Err(IdentifierError::SingleLabel { domain: domain() });
    }
    // An all-numeric last label is never a valid TLD; such names are IPv4
    // addresses in disguise (e.g. 10.1.2.3 with a typo).
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(IdentifierError::IpAddress { domain: domain() });
    }
    Ok(())
}

/// Parses, checks and dedupes a list of domains, keeping the order of first
/// occurrence.
pub fn parse_domains<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<Identifier>, IdentifierError> {
    if inputs.is_empty() {
        return Err(IdentifierError::Empty);
    }
    let mut out: Vec<Identifier> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let id = parse_domain(input.as_ref())?;
        if !out.iter().any(|o| o.name == id.name) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Checks that a solver can answer what the identifiers need: a wildcard
/// can only be validated with dns-01
/// ([RFC 8555 §8.4](https://www.rfc-editor.org/rfc/rfc8555#section-8.4)).
///
/// An IP address can only be validated with http-01 or tls-alpn-01
/// ([RFC 8738 §7](https://www.rfc-editor.org/rfc/rfc8738#section-7)).
pub fn check_solver(ids: &[Identifier], manifest: &Manifest) -> Result<(), IdentifierError> {
    let offers = || {
        manifest
            .challenge_types
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !manifest.supports(ChallengeType::Http01)
        && !manifest.supports(ChallengeType::TlsAlpn01)
        && let Some(ip) = ids.iter().find(|i| i.is_ip())
    {
        return Err(IdentifierError::IpNeedsHttpOrTls {
            domain: ip.as_str().to_owned(),
            solver: manifest.code.clone(),
            offers: offers(),
        });
    }
    if manifest.supports(ChallengeType::Dns01) {
        return Ok(());
    }
    if let Some(w) = ids.iter().find(|i| i.is_wildcard()) {
        let offers = offers();
        return Err(IdentifierError::WildcardNeedsDns {
            domain: w.as_str().to_owned(),
            solver: manifest.code.clone(),
            offers,
        });
    }
    Ok(())
}

/// The default certificate name for a set of identifiers: the first one;
/// a wildcard first is named `_.` and its base (`*.example.com` gives
/// `_.example.com`) unless the set also holds the base itself, so that a
/// wildcard-only certificate never takes the name of the apex certificate
/// (`example.com` with `*.example.com` is named `example.com`).
///
/// An IP address names a certificate as itself when IPv4
/// (`192.0.2.1`); an IPv6 one has its eight groups in hex joined by `-`
/// (`::1` gives `0-0-0-0-0-0-0-1`), since `:` is no file name character
/// everywhere and a compressed `::` would start or end a name with `-`.
pub fn default_cert_name(ids: &[Identifier]) -> Option<String> {
    let first = ids.first()?;
    if let Ok(std::net::IpAddr::V6(v6)) = first.as_str().parse::<std::net::IpAddr>() {
        let groups: Vec<String> = v6.segments().iter().map(|g| format!("{g:x}")).collect();
        return Some(groups.join("-"));
    }
    let base = first.base();
    if first.is_wildcard() && !ids.iter().any(|i| i.as_str() == base) {
        Some(format!("_.{base}"))
    } else {
        Some(base.to_owned())
    }
}

/// Why `name` is not a valid internationalized domain name, in words
/// (the idna crate's error says only that it is not).
fn idna_reason(name: &str) -> String {
    let allowed = |c: char| {
        let mut buf = [0u8; 4];
        idna::domain_to_ascii_cow(
            c.encode_utf8(&mut buf).as_bytes(),
            idna::AsciiDenyList::STD3,
        )
        .is_ok()
    };
    for label in name.split('.') {
        let unicode = match label.get(..4) {
            Some(prefix) if prefix.eq_ignore_ascii_case("xn--") => {
                match idna::punycode::decode_to_string(&label[4..]) {
                    Some(u) => u,
                    None => return format!("label '{label}' is not valid punycode"),
                }
            }
            _ => label.to_owned(),
        };
        if let Some(c) = unicode.chars().find(|&c| !allowed(c)) {
            return format!(
                "'{c}' (U+{:04X}) in label '{label}' is not allowed in a domain name",
                u32::from(c)
            );
        }
        if idna::domain_to_ascii_cow(unicode.as_bytes(), idna::AsciiDenyList::STD3).is_err() {
            return format!(
                "label '{label}' breaks the rules for internationalized names (UTS #46: e.g. a leading combining mark, a misplaced joiner, or mixed right-to-left text)"
            );
        }
    }
    "it breaks the rules for internationalized names (UTS #46)".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        match parse_domain(s) {
            Ok(id) => id.as_str().to_owned(),
            Err(e) => panic!("{s:?} should be accepted: {e}"),
        }
    }

    fn err(s: &str) -> IdentifierError {
        match parse_domain(s) {
            Ok(id) => panic!("{s:?} should be rejected, got {id}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_and_normalizes() {
        assert_eq!(ok("Example.COM"), "example.com");
        assert_eq!(ok("example.com."), "example.com");
        assert_eq!(ok("a-b.c0.example"), "a-b.c0.example");
        assert_eq!(ok("*.Example.com"), "*.example.com");
        assert_eq!(ok("xn--bcher-kva.example"), "xn--bcher-kva.example");
    }

    #[test]
    fn idn_errors_say_why() {
        for (input, want) in [
            ("\u{0301}abc.example", "label"),
            ("b\u{00fc}\u{2028}cher.example", "U+2028"),
            ("xn--a-ecp.example", "xn--a-ecp"),
        ] {
            let e = parse_domain(input).expect_err(input).to_string();
            assert!(!e.contains("Errors"), "{input}: {e}");
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn idn_to_punycode() {
        assert_eq!(ok("Bücher.example"), "xn--bcher-kva.example");
        assert_eq!(ok("*.bücher.example"), "*.xn--bcher-kva.example");
        let id = parse_domain("bücher.example").expect("idn");
        assert_eq!(id.input(), "bücher.example");
    }

    #[test]
    fn rejects_bad_syntax_naming_the_domain() {
        let e = err("ex ample.com");
        assert!(matches!(e, IdentifierError::BadCharacter { ch: ' ', .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("'ex ample.com'") && msg.contains("a space"),
            "{msg}"
        );

        assert!(matches!(
            err("a_b.example"),
            IdentifierError::BadCharacter { ch: '_', .. }
        ));
        assert!(matches!(
            err("a..example"),
            IdentifierError::EmptyLabel { .. }
        ));
        assert!(matches!(
            err(".example.com"),
            IdentifierError::EmptyLabel { .. }
        ));
        assert!(matches!(
            err("-a.example"),
            IdentifierError::BadHyphen { .. }
        ));
        assert!(matches!(
            err("a-.example"),
            IdentifierError::BadHyphen { .. }
        ));
        assert!(matches!(
            err("localhost"),
            IdentifierError::SingleLabel { .. }
        ));
        assert!(matches!(err(""), IdentifierError::EmptyName { .. }));
        assert!(matches!(err("."), IdentifierError::EmptyName { .. }));
        assert!(matches!(
            err("10.1.2.300"),
            IdentifierError::IpAddress { .. }
        ));
        assert!(matches!(err("[::g]"), IdentifierError::IpAddress { .. }));
    }

    /// IP addresses are identifiers of their own (RFC 8738), in canonical
    /// text, and name their certificate with file-name-safe characters.
    #[test]
    fn ip_addresses_are_identifiers_with_safe_default_names() {
        assert_eq!(ok("192.0.2.1"), "192.0.2.1");
        assert_eq!(ok("::1"), "::1");
        assert_eq!(ok("[::1]"), "::1");
        assert_eq!(ok("2001:DB8:0:0::1"), "2001:db8::1");
        assert!(parse_domain("127.0.0.1").expect("ip").is_ip());
        assert!(!parse_domain("example.com").expect("dns").is_ip());
        let name = |s: &str| default_cert_name(&parse_domains(&[s]).expect("ok")).expect("name");
        assert_eq!(name("127.0.0.1"), "127.0.0.1");
        assert_eq!(name("::1"), "0-0-0-0-0-0-0-1");
        assert_eq!(name("2001:db8::1"), "2001-db8-0-0-0-0-0-1");
        for n in [name("::1"), name("2001:db8::1"), name("192.0.2.1")] {
            assert!(crate::store::check_cert_name(&n).is_ok(), "{n}");
        }
    }

    #[test]
    fn lengths() {
        let label63 = "a".repeat(63);
        assert!(parse_domain(&format!("{label63}.example")).is_ok());
        let e = err(&format!("{}a.example", label63));
        assert!(
            matches!(e, IdentifierError::LabelTooLong { len: 64, .. }),
            "{e}"
        );

        // 4 * 63 + 3 dots = 255 > 253
        let long = [label63.as_str(); 4].join(".");
        assert!(matches!(err(&long), IdentifierError::NameTooLong { .. }));
        // a 300-character name, as in the test list
        let n300 = format!("{}.example.com", vec!["a".repeat(50); 6].join("."));
        assert!(n300.len() > 253);
        let msg = err(&n300).to_string();
        assert!(msg.contains("at most 253"), "{msg}");
        assert!(
            msg.len() < 200,
            "the long name is shortened in the message: {msg}"
        );

        // exactly 253
        let l61 = "b".repeat(61);
        let exact = format!("{label63}.{label63}.{label63}.{l61}");
        assert_eq!(exact.len(), 253);
        assert!(parse_domain(&exact).is_ok());
        assert!(matches!(
            err(&format!("*.{exact}")),
            IdentifierError::NameTooLong { .. }
        ));
    }

    #[test]
    fn wildcards() {
        for bad in [
            "*.*.example.com",
            "a.*.example.com",
            "a*.example.com",
            "*example.com",
            "*",
        ] {
            let e = err(bad);
            assert!(
                matches!(
                    e,
                    IdentifierError::BadWildcard { .. }
                        | IdentifierError::BadCharacter { ch: '*', .. }
                        | IdentifierError::SingleLabel { .. }
                ),
                "{bad}: {e}"
            );
        }
        assert!(matches!(
            err("*.*.example.com"),
            IdentifierError::BadWildcard { .. }
        ));
        assert!(matches!(err("*.com"), IdentifierError::SingleLabel { .. }));
        let id = parse_domain("*.example.com").expect("wildcard");
        assert!(id.is_wildcard());
        assert_eq!(id.base(), "example.com");
    }

    #[test]
    fn dedupes_keeping_first() {
        let ids =
            parse_domains(&["B.example", "a.example", "b.example.", "*.a.example"]).expect("valid");
        let names: Vec<&str> = ids.iter().map(Identifier::as_str).collect();
        assert_eq!(names, ["b.example", "a.example", "*.a.example"]);
        assert_eq!(default_cert_name(&ids).as_deref(), Some("b.example"));
        assert_eq!(parse_domains::<&str>(&[]), Err(IdentifierError::Empty));
        let wild = parse_domains(&["*.w.example"]).expect("valid");
        assert_eq!(default_cert_name(&wild).as_deref(), Some("_.w.example"));
        let both = parse_domains(&["*.w.example", "w.example"]).expect("valid");
        assert_eq!(default_cert_name(&both).as_deref(), Some("w.example"));
    }

    #[test]
    fn wildcard_needs_dns_solver() {
        let manifest = Manifest::parse(
            "code = \"standalone\"\nname = \"S\"\nversion = \"0.1.0\"\nchallenge_types = [\"http-01\", \"tls-alpn-01\"]\n",
        )
        .expect("manifest");
        let ids = parse_domains(&["x.example", "*.x.example"]).expect("valid");
        let e = check_solver(&ids, &manifest).expect_err("wildcard with http-01 solver");
        assert_eq!(
            e.to_string(),
            "'*.x.example' needs dns-01; solver 'standalone' offers http-01, tls-alpn-01; use a DNS solver such as cloudflare, route53, rfc2136"
        );
        let plain = parse_domains(&["x.example"]).expect("valid");
        assert!(check_solver(&plain, &manifest).is_ok());
    }

    #[test]
    fn ip_address_needs_http_or_tls_solver() {
        let dns = Manifest::parse(
            "code = \"rfc2136\"\nname = \"R\"\nversion = \"0.1.0\"\nchallenge_types = [\"dns-01\"]\n",
        )
        .expect("manifest");
        let ids = parse_domains(&["192.0.2.1"]).expect("valid");
        let e = check_solver(&ids, &dns).expect_err("ip with a dns-01 solver");
        assert!(matches!(e, IdentifierError::IpNeedsHttpOrTls { .. }));
        assert!(e.to_string().contains("http-01 or tls-alpn-01"), "{e}");
    }
}
