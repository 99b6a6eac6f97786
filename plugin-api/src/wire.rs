//! The JSON payloads that travel through [`crate::abi`].
//!
//! JSON keeps the boundary independent of Rust layouts: a field added later
//! carries `#[serde(default)]`, and no type uses `deny_unknown_fields`, so a
//! plugin built against an older crate reads a newer host's requests and
//! vice versa.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Method name of [`ChallengeRequest`] → [`Presented`].
pub const METHOD_PRESENT: &str = "present";
/// Method name of [`CleanupParams`] → `{}`.
pub const METHOD_CLEANUP: &str = "cleanup";
/// Method name of [`CredentialsCheck`] → [`CredentialsChecked`] (ABI 1.2,
/// optional: a plugin without it answers `STATUS_UNSUPPORTED`).
pub const METHOD_CHECK_CREDENTIALS: &str = "check_credentials";

/// An ACME challenge type ([RFC 8555 §8](https://www.rfc-editor.org/rfc/rfc8555#section-8),
/// [RFC 8737](https://www.rfc-editor.org/rfc/rfc8737)).
///
/// Non-exhaustive: a later version may add a type, so a `match` on it needs a
/// `_` arm (answer it with a `config` error: "this solver does not answer …").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChallengeType {
    /// A file served over HTTP on port 80.
    #[serde(rename = "http-01")]
    Http01,
    /// A TXT record at `_acme-challenge.<domain>`.
    #[serde(rename = "dns-01")]
    Dns01,
    /// A self-signed certificate served with ALPN `acme-tls/1` on port 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeType {
    /// The RFC name, e.g. `"http-01"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
            ChallengeType::TlsAlpn01 => "tls-alpn-01",
        }
    }

    /// Parses the RFC name.
    pub fn parse(s: &str) -> Option<ChallengeType> {
        match s {
            "http-01" => Some(ChallengeType::Http01),
            "dns-01" => Some(ChallengeType::Dns01),
            "tls-alpn-01" => Some(ChallengeType::TlsAlpn01),
            _ => None,
        }
    }
}

impl fmt::Display for ChallengeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One challenge to present (params of `present`).
///
/// Non-exhaustive: the host may send more fields in a later version, so
/// build one with [`ChallengeRequest::new`] (plus [`with_wildcard`] and
/// [`with_dns`]) rather than a struct literal. The fields stay public to
/// read.
///
/// [`with_wildcard`]: ChallengeRequest::with_wildcard
/// [`with_dns`]: ChallengeRequest::with_dns
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChallengeRequest {
    /// Which challenge to answer.
    pub challenge_type: ChallengeType,
    /// The identifier being validated, without a `*.` prefix.
    pub identifier: String,
    /// Whether the order asked for `*.<identifier>`.
    #[serde(default)]
    pub wildcard: bool,
    /// The challenge token (http-01: the file name).
    pub token: String,
    /// `token.thumbprint`: the http-01 file content, the tls-alpn-01
    /// certificate's digest input, the dns-01 digest input.
    pub key_authorization: String,
    /// When the host stops waiting for this call, in milliseconds since the
    /// Unix epoch. The SDK fails the call with a `transient` error then.
    /// With the SDK (feature `sdk`), `ChallengeRequest::deadline()` reads it
    /// as a `Deadline`.
    pub deadline_unix_ms: u64,
    /// Where to put the record, for dns-01 (filled by the core).
    #[serde(default)]
    pub dns: Option<DnsTarget>,
}

// The key authorization is not a secret in ACME (the CA and anyone who can
// reach the challenge URL see it), but keeping it out of debug logs keeps
// them short and avoids teaching plugin authors to log credentials-shaped
// strings.
impl fmt::Debug for ChallengeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeRequest")
            .field("challenge_type", &self.challenge_type)
            .field("identifier", &self.identifier)
            .field("wildcard", &self.wildcard)
            .field("token", &self.token)
            .field("deadline_unix_ms", &self.deadline_unix_ms)
            .field("dns", &self.dns)
            .finish_non_exhaustive()
    }
}

impl ChallengeRequest {
    /// The DNS target of this request, for a solver (`solver`: its code,
    /// for the message) that answers dns-01 only: a `config` error for
    /// another challenge type (a manifest that lists more types than the
    /// solver answers), an `internal` one for a dns-01 request that came
    /// without its target.
    pub fn dns01_target(&self, solver: &str) -> Result<&DnsTarget, PluginError> {
        if self.challenge_type != ChallengeType::Dns01 {
            return Err(PluginError::config(format!(
                "the {solver} solver answers dns-01 only, not {}",
                self.challenge_type
            )));
        }
        self.dns.as_ref().ok_or_else(|| {
            PluginError::internal(
                "a dns-01 request came without its DNS target (zone, name, value)",
            )
        })
    }

    /// A request without a DNS target and not for a wildcard; the fields
    /// added later take their defaults.
    pub fn new(
        challenge_type: ChallengeType,
        identifier: impl Into<String>,
        token: impl Into<String>,
        key_authorization: impl Into<String>,
        deadline_unix_ms: u64,
    ) -> Self {
        ChallengeRequest {
            challenge_type,
            identifier: identifier.into(),
            wildcard: false,
            token: token.into(),
            key_authorization: key_authorization.into(),
            deadline_unix_ms,
            dns: None,
        }
    }

    /// Sets [`wildcard`](ChallengeRequest::wildcard).
    #[must_use]
    pub fn with_wildcard(mut self, wildcard: bool) -> Self {
        self.wildcard = wildcard;
        self
    }

    /// Sets [`dns`](ChallengeRequest::dns).
    #[must_use]
    pub fn with_dns(mut self, dns: Option<DnsTarget>) -> Self {
        self.dns = dns;
        self
    }

    /// Sets [`deadline_unix_ms`](ChallengeRequest::deadline_unix_ms).
    #[must_use]
    pub fn with_deadline_unix_ms(mut self, deadline_unix_ms: u64) -> Self {
        self.deadline_unix_ms = deadline_unix_ms;
        self
    }
}

/// Where a dns-01 TXT value goes. The core computed all of it; a plugin only
/// appends `value` at `name` in `zone` and later deletes exactly that value.
///
/// Non-exhaustive: build one with [`DnsTarget::new`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsTarget {
    /// The zone (apex) that holds the record, without a trailing dot.
    pub zone: String,
    /// The record name relative to `zone`, `"@"` for the apex.
    pub name: String,
    /// The fully qualified record name, without a trailing dot.
    pub fqdn: String,
    /// The TXT value: base64url(SHA-256(key authorization)).
    pub value: String,
    /// The TTL to use, in seconds: always the plugin's own `[defaults] ttl`
    /// from its manifest (60 unless it says otherwise); users cannot change
    /// it. A plugin whose users need another TTL declares an integer option
    /// of its own (say `ttl`, with `min`/`max`) and uses that instead. Use
    /// it if the provider accepts it; otherwise use the nearest allowed
    /// value and report it in [`Presented::ttl`].
    pub ttl: u32,
    /// The zone's primary nameserver (SOA MNAME), if known.
    #[serde(default)]
    pub primary_ns: Option<String>,
}

impl DnsTarget {
    /// A target without a known primary nameserver.
    pub fn new(
        zone: impl Into<String>,
        name: impl Into<String>,
        fqdn: impl Into<String>,
        value: impl Into<String>,
        ttl: u32,
    ) -> Self {
        DnsTarget {
            zone: zone.into(),
            name: name.into(),
            fqdn: fqdn.into(),
            value: value.into(),
            ttl,
            primary_ns: None,
        }
    }

    /// Sets [`primary_ns`](DnsTarget::primary_ns).
    #[must_use]
    pub fn with_primary_ns(mut self, primary_ns: Option<String>) -> Self {
        self.primary_ns = primary_ns;
        self
    }
}

/// What `present` returns: an opaque handle handed back to `cleanup`.
///
/// Non-exhaustive: build one with [`Presented::new`] or
/// [`Presented::default`] (a null handle).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[non_exhaustive]
pub struct Presented {
    /// Opaque plugin data, e.g. record ids. Stored in the host's journal, so
    /// it must not contain secrets.
    #[serde(default)]
    pub handle: serde_json::Value,
    /// The TTL actually used, if it differs from the requested one. The
    /// host stores it in its cleanup journal with the handle and hands it
    /// back to `cleanup`; it does not change how long the host waits for
    /// propagation (that is `[defaults] propagation_timeout_s`).
    #[serde(default)]
    pub ttl: Option<u32>,
}

impl Presented {
    /// A result carrying `handle` (record ids, say) for `cleanup`.
    pub fn new(handle: serde_json::Value) -> Self {
        Presented { handle, ttl: None }
    }

    /// Sets [`ttl`](Presented::ttl): the TTL actually used.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Option<u32>) -> Self {
        self.ttl = ttl;
        self
    }
}

/// Params of `cleanup`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CleanupParams {
    /// The request that was presented.
    pub request: ChallengeRequest,
    /// What `present` returned (a default handle if it never returned).
    #[serde(default)]
    pub presented: Presented,
}

/// Params of `check_credentials` (ABI 1.2): `certsmith doctor` asks whether
/// the configured credentials are accepted, before any certificate is
/// ordered. The check must change nothing at the provider.
///
/// Non-exhaustive: build one with [`CredentialsCheck::new`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialsCheck {
    /// Unix time in milliseconds by which the check must have answered.
    pub deadline_unix_ms: u64,
    /// The DNS zones that the certificates configured with this solver
    /// will write to, when the host could find them; a solver whose
    /// credentials are per zone checks these. May be empty.
    #[serde(default)]
    pub zones: Vec<CheckZone>,
}

impl CredentialsCheck {
    /// A check that must answer by `deadline_unix_ms`, for `zones`.
    pub fn new(deadline_unix_ms: u64, zones: Vec<CheckZone>) -> Self {
        CredentialsCheck {
            deadline_unix_ms,
            zones,
        }
    }
}

/// A zone in a [`CredentialsCheck`], as the host found it for a dns-01
/// name (the same values a [`DnsTarget`] would carry).
///
/// Non-exhaustive: build one with [`CheckZone::new`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckZone {
    /// The zone's apex, without the trailing dot, e.g. `example.com`.
    pub zone: String,
    /// The zone's primary nameserver (its SOA MNAME), when known.
    #[serde(default)]
    pub primary_ns: Option<String>,
}

impl CheckZone {
    /// The zone `zone`, with its primary nameserver when known.
    pub fn new(zone: impl Into<String>, primary_ns: Option<String>) -> Self {
        CheckZone {
            zone: zone.into(),
            primary_ns,
        }
    }
}

/// What a successful `check_credentials` returns.
///
/// Non-exhaustive: build one with [`CredentialsChecked::new`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialsChecked {
    /// What was checked and found good, for the operator ("the API token is
    /// active", "hosted zone example.com found"). Never a secret.
    #[serde(default)]
    pub detail: String,
}

impl CredentialsChecked {
    /// A success described by `detail`.
    pub fn new(detail: impl Into<String>) -> Self {
        CredentialsChecked {
            detail: detail.into(),
        }
    }
}

/// The class of a plugin failure, which decides what the host does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is wrong; retrying will not help.
    Config,
    /// The credentials were rejected.
    Auth,
    /// A zone, record or resource does not exist.
    NotFound,
    /// The provider rate-limited us; see `retry_after_ms`.
    RateLimited,
    /// A temporary failure; retrying may help.
    Transient,
    /// A bug or an unexpected state in the plugin.
    Internal,
}

impl ErrorKind {
    /// The wire name, e.g. `"not_found"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Auth => "auth",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Transient => "transient",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON error body of `STATUS_ERROR` and `STATUS_PANICKED` completions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ErrorBody {
    /// What went wrong, as a class.
    pub kind: ErrorKind,
    /// A message for the user: what failed and what to do. Never a secret.
    pub message: String,
    /// Whether the same call may succeed later.
    #[serde(default)]
    pub retryable: bool,
    /// How long to wait before retrying, if the provider said.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// The error type plugin authors return; the same shape as [`ErrorBody`].
pub type PluginError = ErrorBody;

impl ErrorBody {
    /// An error of `kind` with `message`; `retryable` follows the kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            kind,
            message: message.into(),
            retryable: matches!(kind, ErrorKind::Transient | ErrorKind::RateLimited),
            retry_after_ms: None,
        }
    }

    /// A [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// An [`ErrorKind::Auth`] error.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Auth, message)
    }
    /// A [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// A [`ErrorKind::Transient`] error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// An [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// A [`ErrorKind::RateLimited`] error with the provider's wait time.
    pub fn rate_limited(message: impl Into<String>, retry_after_ms: Option<u64>) -> Self {
        let mut e = Self::new(ErrorKind::RateLimited, message);
        e.retry_after_ms = retry_after_ms;
        e
    }
}

/// ABI 1.3: the head of an HTTP request a plugin asks the host to send
/// through [`HostApi::http`](crate::abi::HostApi::http). The body travels
/// beside it as raw bytes.
///
/// `Debug` shows header names, never their values (they carry tokens).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HttpRequestHead {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` …
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// Header names and values, in order; a name may repeat.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The longest the whole exchange may take; the host's default (30 s)
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How the host names the request when no answer came
    /// (`"{label} failed: {why}"`); the method and the URL without its query
    /// or user info when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl HttpRequestHead {
    /// A request with no headers and the host's default timeout.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        HttpRequestHead {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            timeout_ms: None,
            label: None,
        }
    }
}

impl fmt::Debug for HttpRequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpRequestHead")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("header_names", &names)
            .field("timeout_ms", &self.timeout_ms)
            .field("label", &self.label)
            .finish()
    }
}

/// ABI 1.3: the head of the answer to an [`HttpRequestHead`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HttpResponseHead {
    /// The HTTP status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order; values that are not
    /// UTF-8 are left out.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

impl HttpResponseHead {
    /// A head with `status` and no headers.
    pub fn new(status: u16) -> Self {
        HttpResponseHead {
            status,
            headers: Vec::new(),
        }
    }
}

/// Frames an answer for [`HostApi::http`](crate::abi::HostApi::http)'s
/// completion: the head as JSON, one zero byte, the body.
pub fn encode_http_response(head: &HttpResponseHead, body: &[u8]) -> Vec<u8> {
    // A struct of a u16 and strings always serializes.
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// Splits what [`encode_http_response`] framed into the head and the body.
/// The error says what is wrong with the frame.
pub fn decode_http_response(frame: &[u8]) -> Result<(HttpResponseHead, &[u8]), String> {
    let split = frame
        .iter()
        .position(|b| *b == 0)
        .ok_or("no zero byte after the head")?;
    let head = serde_json::from_slice(&frame[..split]).map_err(|e| format!("bad head: {e}"))?;
    Ok((head, &frame[split + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_tolerates_unknown_fields() {
        let json = r#"{"challenge_type":"dns-01","identifier":"example.com","wildcard":true,
            "token":"t","key_authorization":"t.x","deadline_unix_ms":5,
            "dns":{"zone":"example.com","name":"_acme-challenge","fqdn":"_acme-challenge.example.com",
                   "value":"v","ttl":60,"future_field":1},
            "another_future_field":[1,2]}"#;
        let req: ChallengeRequest = serde_json::from_str(json).expect("parses");
        assert_eq!(req.challenge_type, ChallengeType::Dns01);
        assert!(req.wildcard);
        let dns = req.dns.as_ref().expect("dns");
        assert_eq!(dns.primary_ns, None);
        assert_eq!(dns.name, "_acme-challenge");
        let back: ChallengeRequest =
            serde_json::from_str(&serde_json::to_string(&req).expect("ser")).expect("de");
        assert!(back == req);
    }

    #[test]
    fn optional_fields_default() {
        let req: ChallengeRequest = serde_json::from_str(
            r#"{"challenge_type":"http-01","identifier":"a","token":"t","key_authorization":"k","deadline_unix_ms":1}"#,
        )
        .expect("parses");
        assert!(!req.wildcard);
        assert!(req.dns.is_none());
        let p: Presented = serde_json::from_str("{}").expect("parses");
        assert_eq!(p, Presented::default());
    }

    #[test]
    fn error_body_wire_shape() {
        let e = ErrorBody::rate_limited("slow down", Some(1500));
        let v = serde_json::to_value(&e).expect("ser");
        assert_eq!(
            v,
            serde_json::json!({"kind":"rate_limited","message":"slow down","retryable":true,"retry_after_ms":1500})
        );
        let e: ErrorBody =
            serde_json::from_str(r#"{"kind":"auth","message":"no"}"#).expect("minimal body parses");
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(!e.retryable);
    }

    #[test]
    fn credentials_check_wire_shape_and_defaults() {
        let req = CredentialsCheck::new(
            7,
            vec![CheckZone::new(
                "example.com",
                Some("ns1.example.com.".into()),
            )],
        );
        assert_eq!(
            serde_json::to_value(&req).expect("ser"),
            serde_json::json!({"deadline_unix_ms": 7,
                "zones": [{"zone": "example.com", "primary_ns": "ns1.example.com."}]})
        );
        let bare: CredentialsCheck =
            serde_json::from_str(r#"{"deadline_unix_ms":1,"later":true}"#).expect("parses");
        assert!(bare.zones.is_empty());
        let zone: CheckZone = serde_json::from_str(r#"{"zone":"a.test"}"#).expect("parses");
        assert_eq!(zone.primary_ns, None);
        let done: CredentialsChecked = serde_json::from_str("{}").expect("parses");
        assert_eq!(done.detail, "");
    }

    #[test]
    fn debug_hides_key_authorization() {
        let req = ChallengeRequest::new(ChallengeType::Http01, "a.test", "tok", "tok.SECRETISH", 0);
        assert!(!format!("{req:?}").contains("SECRETISH"));
    }

    #[test]
    fn http_frames_round_trip_and_heads_hide_header_values() {
        let mut head = HttpResponseHead::new(201);
        head.headers.push(("retry-after".into(), "3".into()));
        let body = b"{\"a\":0}\0binary\xff";
        let frame = encode_http_response(&head, body);
        let (back, rest) = decode_http_response(&frame).expect("decode");
        assert_eq!(back, head);
        assert_eq!(rest, body);
        assert!(decode_http_response(b"{\"status\":200}").is_err());
        assert!(decode_http_response(b"nope\0").is_err());

        let mut req = HttpRequestHead::new("GET", "https://api.example/zones");
        req.headers
            .push(("Authorization".into(), "Bearer s3cret".into()));
        let dbg = format!("{req:?}");
        assert!(
            dbg.contains("Authorization") && !dbg.contains("s3cret"),
            "{dbg}"
        );
        let json = serde_json::to_value(&req).expect("ser");
        assert_eq!(json["headers"][0][1], "Bearer s3cret");
        assert!(json.get("timeout_ms").is_none());
    }
}
