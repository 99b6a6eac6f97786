//! What can go wrong while obtaining a certificate, sorted into the classes
//! that decide certsmith's exit code.
//!
//! Why this module exists: a CI pipeline must tell "fix your input" from
//! "the CA said no" from "the network is down" without parsing messages
//! (docs/design.md §5). Every failure of the engine is an [`IssueError`], and
//! [`IssueError::class`] maps it to one [`ErrorClass`]. Messages name what
//! failed and, through [`IssueError::hint`], what to do; none contains a
//! secret (account key, EAB key, solver credentials, certificate key).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::identifiers::IdentifierError;
use crate::keys::KeyError;
use crate::plugin::{CallError, PluginHostError};
use crate::store::StoreError;

/// The class of a failure; the CLI maps each to an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorClass {
    /// Bad input: identifiers, options, server URL, terms not agreed.
    Usage,
    /// A solver plugin could not be loaded, configured, or it failed.
    Solver,
    /// The CA refused a validation, the order or the account.
    CaRefused,
    /// The CA rate-limited us.
    RateLimited,
    /// The CA or network could not be reached, or did not answer in time.
    Network,
    /// The state directory could not be read or written.
    Store,
    /// A bug.
    Internal,
    /// The run was cancelled (Ctrl-C).
    Cancelled,
    /// A dns-01 record did not reach every authoritative nameserver in time.
    PropagationTimeout,
    /// A hook failed (a pre-hook: the certificate was not ordered).
    Hook,
}

impl ErrorClass {
    /// A stable snake_case name, for JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Usage => "usage",
            ErrorClass::Solver => "solver",
            ErrorClass::CaRefused => "ca_refused",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Network => "network",
            ErrorClass::Store => "store",
            ErrorClass::Internal => "internal",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::PropagationTimeout => "propagation_timeout",
            ErrorClass::Hook => "hook",
        }
    }
}

/// The URN prefix of ACME error types
/// ([RFC 8555 §6.7](https://www.rfc-editor.org/rfc/rfc8555#section-6.7)).
pub const ACME_ERROR_PREFIX: &str = "urn:ietf:params:acme:error:";

/// A problem document sent by the CA
/// ([RFC 7807](https://www.rfc-editor.org/rfc/rfc7807),
/// [RFC 8555 §6.7](https://www.rfc-editor.org/rfc/rfc8555#section-6.7)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CaProblem {
    /// The problem type URI, e.g. `urn:ietf:params:acme:error:connection`.
    #[serde(rename = "type")]
    pub problem_type: Option<String>,
    /// The CA's explanation.
    pub detail: Option<String>,
    /// The HTTP status.
    pub status: Option<u16>,
    /// Per-identifier problems
    /// ([RFC 8555 §6.7.1](https://www.rfc-editor.org/rfc/rfc8555#section-6.7.1)).
    pub subproblems: Vec<CaSubproblem>,
}

/// One identifier's part of a [`CaProblem`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CaSubproblem {
    /// The identifier it concerns.
    pub identifier: Option<String>,
    /// The problem type URI.
    #[serde(rename = "type")]
    pub problem_type: Option<String>,
    /// The CA's explanation.
    pub detail: Option<String>,
}

impl CaProblem {
    /// The ACME error name without its URN prefix, e.g. `connection`.
    pub fn short_type(&self) -> Option<&str> {
        short(self.problem_type.as_deref())
    }

    /// Whether this is the ACME error `name` (without prefix).
    pub fn is(&self, name: &str) -> bool {
        self.short_type() == Some(name)
    }
}

fn short(t: Option<&str>) -> Option<&str> {
    t.map(|t| t.strip_prefix(ACME_ERROR_PREFIX).unwrap_or(t))
}

/// What an ACME error type means, in plain words.
pub fn explain_problem_type(short_type: &str) -> Option<&'static str> {
    Some(match short_type {
        "accountDoesNotExist" => "the CA does not know this account",
        "alreadyRevoked" => "the certificate is already revoked",
        "badCSR" => "the CA rejected the certificate request",
        "badNonce" => "the CA rejected a request as replayed (bad nonce)",
        "badPublicKey" => "the CA does not accept this key",
        "badRevocationReason" => "the CA does not accept this revocation reason",
        "badSignatureAlgorithm" => "the CA does not accept this signature algorithm",
        "caa" => "a CAA record in DNS forbids this CA to issue for the name",
        "compound" => "several problems",
        "connection" => "the CA could not connect to the server answering the challenge",
        "dns" => "the CA's DNS lookup failed",
        "externalAccountRequired" => "the CA requires external account binding (EAB)",
        "incorrectResponse" => "the CA received a wrong challenge response",
        "invalidContact" => "the CA rejected the contact address",
        "malformed" => "the CA rejected a malformed request",
        "orderNotReady" => "the order is not ready to be finalized",
        "rateLimited" => "the CA rate-limited the request",
        "rejectedIdentifier" => "the CA will not issue for this name",
        "serverInternal" => "the CA had an internal error",
        "tls" => "the TLS connection from the CA failed",
        "unauthorized" => "the CA did not accept the proof of authorization",
        "unsupportedContact" => "the CA does not support this contact address",
        "unsupportedIdentifier" => "the CA does not support this kind of identifier",
        "userActionRequired" => "the CA requires an action by the account holder (e.g. new terms)",
        _ => return None,
    })
}

fn fmt_one(
    f: &mut fmt::Formatter<'_>,
    problem_type: Option<&str>,
    detail: Option<&str>,
) -> fmt::Result {
    let name = short(problem_type);
    let plain = name.and_then(explain_problem_type);
    match (plain, detail) {
        (Some(p), Some(d)) => write!(f, "{p}: {d}")?,
        (Some(p), None) => f.write_str(p)?,
        (None, Some(d)) => f.write_str(d)?,
        (None, None) => f.write_str("no detail given")?,
    }
    if let Some(t) = problem_type {
        write!(f, " [{t}]")?;
    }
    Ok(())
}

impl fmt::Display for CaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_one(f, self.problem_type.as_deref(), self.detail.as_deref())?;
        for sub in &self.subproblems {
            f.write_str("; ")?;
            if let Some(id) = &sub.identifier {
                write!(f, "{id}: ")?;
            }
            fmt_one(f, sub.problem_type.as_deref(), sub.detail.as_deref())?;
        }
        Ok(())
    }
}

/// One authorization the CA did not validate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthzFailure {
    /// The identifier, `*.`-prefixed for a wildcard.
    pub domain: String,
    /// The challenge type tried, if known.
    pub challenge: Option<String>,
    /// The CA's problem for the challenge, if it gave one.
    pub problem: Option<CaProblem>,
}

fn fmt_failures(failures: &[AuthzFailure]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|a| {
            let mut s = a.domain.clone();
            if let Some(c) = &a.challenge {
                s.push_str(&format!(" ({c})"));
            }
            match &a.problem {
                Some(p) => s.push_str(&format!(": {p}")),
                None => s.push_str(": the CA gave no reason"),
            }
            s
        })
        .collect();
    parts.join("; ")
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// A domain is invalid, or needs a challenge the solver lacks.
    #[error(transparent)]
    Identifier(#[from] IdentifierError),
    /// The server argument is neither a known shortcut nor an https URL.
    #[error("invalid ACME server '{server}': {reason}")]
    BadServer {
        /// What was given.
        server: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The extra CA bundle could not be read or holds no certificate.
    #[error("cannot use the CA bundle {path}: {reason}")]
    CaCert {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The EAB options are incomplete or malformed. The key is never shown.
    #[error("external account binding: {0}")]
    Eab(String),
    /// The CA publishes terms of service and `--agree-tos` was not given.
    #[error("the CA's terms of service must be accepted to create an account: {url}")]
    TermsNotAgreed {
        /// The terms' URL.
        url: String,
    },
    /// The CA requires external account binding and none was given.
    #[error("the CA {server} requires external account binding (EAB)")]
    EabRequired {
        /// The directory URL.
        server: String,
    },
    /// The certificate name is unusable or the request is inconsistent.
    #[error("{0}")]
    InvalidRequest(String),
    /// An operation needs the stored account of a CA, and none is stored.
    #[error("no account is stored for {server} (looked for {})", location.display())]
    NoStoredAccount {
        /// The ACME directory URL.
        server: String,
        /// Where it was looked for.
        location: std::path::PathBuf,
    },
    /// The stored account was deactivated (`certsmith account deactivate`);
    /// the CA will never accept it again.
    #[error("the account {url} was deactivated on {at} and cannot be used again")]
    AccountDeactivated {
        /// The account URL.
        url: String,
        /// When it was deactivated, RFC 3339.
        at: String,
        /// Its `account.json`.
        path: std::path::PathBuf,
    },
    /// No challenge offered by the CA is one the solver can answer.
    #[error(
        "the CA offers {} for '{domain}', but solver '{solver}' answers only {}",
        .offered.join(", "), .supported.join(", ")
    )]
    NoUsableChallenge {
        /// The identifier.
        domain: String,
        /// What the CA offered.
        offered: Vec<String>,
        /// The solver code.
        solver: String,
        /// What the solver supports.
        supported: Vec<String>,
    },
    /// None of the challenge types asked for (the request's preference
    /// order) is one the solver of a name answers.
    #[error(
        "the challenge types asked for ({challenge}) are not answered by solver '{solver}', which answers only {}",
        .supported.join(", ")
    )]
    UnsupportedChallenge {
        /// The challenge types asked for, comma-separated.
        challenge: String,
        /// The solver code.
        solver: String,
        /// What the solver supports, from its manifest.
        supported: Vec<String>,
    },
    /// The names of the user's CSR are not the names asked for.
    #[error(
        "the CSR asks for {} but the names given are {}",
        .csr.join(", "), .domains.join(", ")
    )]
    CsrNames {
        /// The CSR's names.
        csr: Vec<String>,
        /// The names given (or stored).
        domains: Vec<String>,
    },
    /// The user's CSR cannot be used.
    #[error("{path}: {source}")]
    Csr {
        /// Where it was read from.
        path: String,
        /// Why.
        source: crate::keys::KeyError,
    },
    /// A wildcard among the names, and dns-01 not among the challenge
    /// types asked for (a wildcard is validated only with dns-01).
    #[error(
        "'{domain}' can only be validated with dns-01, but the challenge types asked for are {}",
        .asked.join(", ")
    )]
    WildcardChallenge {
        /// The wildcard.
        domain: String,
        /// The challenge types asked for.
        asked: Vec<String>,
    },
    /// The ACME profile asked for is not among those the CA's directory
    /// lists (`meta.profiles`), or the CA lists none.
    #[error(
        "the CA {server} {}",
        if .available.is_empty() {
            format!("offers no certificate profiles, so profile '{profile}' cannot be asked for")
        } else {
            format!("has no profile '{profile}'; it offers {}", .available.join(", "))
        }
    )]
    UnknownProfile {
        /// The profile asked for.
        profile: String,
        /// The directory URL.
        server: String,
        /// The profiles the CA offers, sorted; empty when it offers none.
        available: Vec<String>,
    },
    /// Finding where a dns-01 record goes failed (CNAME loop, no zone, DNS
    /// unreachable).
    #[error("dns-01 for '{domain}': {source}")]
    Dns {
        /// The identifier.
        domain: String,
        /// What went wrong.
        source: crate::dns::DnsError,
    },
    /// A dns-01 record did not reach every authoritative nameserver in time.
    #[error("dns-01 for '{domain}': {source}")]
    Propagation {
        /// The identifier(s) sharing the record name.
        domain: String,
        /// The per-nameserver report.
        source: crate::dns::DnsError,
    },
    /// The plugin host failed (unknown solver, bad options, load error).
    #[error(transparent)]
    Plugin(#[from] PluginHostError),
    /// A solver call failed.
    #[error(
        "solver '{solver}' failed to {operation} the {challenge} challenge for '{domain}': {source}"
    )]
    Solver {
        /// The solver code.
        solver: String,
        /// "present" or "clean up".
        operation: &'static str,
        /// The challenge type.
        challenge: String,
        /// The identifier.
        domain: String,
        /// The host's error (already redacted).
        source: Box<CallError>,
    },
    /// The CA did not validate one or more authorizations.
    #[error("the CA did not validate {}", fmt_failures(.failures))]
    ValidationFailed {
        /// One entry per failed authorization.
        failures: Vec<AuthzFailure>,
    },
    /// The CA refused a request with a problem document.
    #[error("the CA refused to {action}: {problem}")]
    CaRefused {
        /// What we asked, e.g. "create the order".
        action: String,
        /// The CA's problem document.
        problem: CaProblem,
    },
    /// The CA rate-limited a request.
    #[error("the CA rate-limited the request to {action}: {problem}{}", fmt_retry(.retry_after))]
    RateLimited {
        /// What we asked.
        action: String,
        /// The CA's problem document.
        problem: CaProblem,
        /// When the CA says to try again, if it said.
        retry_after: Option<SystemTime>,
    },
    /// The CA could not be reached or answered nonsense.
    ///
    /// Inside the crate it is built with `IssueError::network` (an
    /// underlying error) or `IssueError::bad_answer` (an answer wrong in
    /// itself).
    #[error("cannot {action} at {server}: {message}")]
    Network {
        /// What we tried, e.g. "fetch the directory".
        action: String,
        /// The server (directory URL or request URL).
        server: String,
        /// What went wrong, in words: when there is a `source`, its message
        /// chain (so the one line a user sees names the cause), possibly
        /// with what it means.
        message: String,
        /// The underlying error (connection, TLS, timeout, unparsable
        /// answer), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The CA did not reach a final state in time.
    #[error("timed out after {}s waiting for the CA to {what}", .after.as_secs())]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The state directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key or CSR could not be made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The certificate's pre-hook failed: nothing was ordered for it (its
    /// post-hook ran).
    #[error(transparent)]
    PreHook(crate::hooks::HookError),
    /// The run was cancelled before this certificate was obtained.
    #[error("cancelled")]
    Cancelled,
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An error and its sources, joined with ": ", without repeats (a source
/// whose text its wrapper already shows is left out).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn fmt_retry(at: &Option<SystemTime>) -> String {
    match at {
        Some(t) => {
            let dt = time::OffsetDateTime::from(*t);
            let when = dt
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| format!("{dt}"));
            format!(" (retry after {when})")
        }
        None => String::new(),
    }
}

impl IssueError {
    /// An [`IssueError::Network`] caused by `source`; its message is the
    /// source's message chain (see [`error_chain`]).
    pub(crate) fn network(
        action: impl Into<String>,
        server: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> IssueError {
        let source = source.into();
        IssueError::Network {
            action: action.into(),
            server: server.into(),
            message: error_chain(source.as_ref()),
            source: Some(source),
        }
    }

    /// An [`IssueError::Network`] for an answer that is wrong in itself
    /// (an HTTP error status, a missing header): there is no underlying
    /// error.
    pub(crate) fn bad_answer(
        action: impl Into<String>,
        server: impl Into<String>,
        message: impl Into<String>,
    ) -> IssueError {
        IssueError::Network {
            action: action.into(),
            server: server.into(),
            message: message.into(),
            source: None,
        }
    }

    /// The failure class, which decides the exit code.
    pub fn class(&self) -> ErrorClass {
        match self {
            IssueError::Identifier(_)
            | IssueError::BadServer { .. }
            | IssueError::CaCert { .. }
            | IssueError::Eab(_)
            | IssueError::TermsNotAgreed { .. }
            | IssueError::EabRequired { .. }
            | IssueError::InvalidRequest(_)
            | IssueError::NoStoredAccount { .. }
            | IssueError::AccountDeactivated { .. }
            | IssueError::NoUsableChallenge { .. }
            | IssueError::UnsupportedChallenge { .. }
            | IssueError::CsrNames { .. }
            | IssueError::WildcardChallenge { .. }
            | IssueError::Csr { .. }
            | IssueError::UnknownProfile { .. } => ErrorClass::Usage,
            IssueError::Dns { source, .. } => match source {
                crate::dns::DnsError::NoResolvers
                | crate::dns::DnsError::SystemConfig { .. }
                | crate::dns::DnsError::Lookup { .. } => ErrorClass::Network,
                _ => ErrorClass::Usage,
            },
            IssueError::Propagation { .. } => ErrorClass::PropagationTimeout,
            IssueError::Plugin(e) if e.is_usage() => ErrorClass::Usage,
            IssueError::Plugin(_) | IssueError::Solver { .. } => ErrorClass::Solver,
            IssueError::ValidationFailed { .. } | IssueError::CaRefused { .. } => {
                ErrorClass::CaRefused
            }
            IssueError::RateLimited { .. } => ErrorClass::RateLimited,
            IssueError::Network { .. } | IssueError::Timeout { .. } => ErrorClass::Network,
            IssueError::Store(_) => ErrorClass::Store,
            IssueError::Key(_) | IssueError::Internal(_) => ErrorClass::Internal,
            IssueError::Cancelled => ErrorClass::Cancelled,
            IssueError::PreHook(_) => ErrorClass::Hook,
        }
    }

    /// When the CA asked us to come back, for rate limits.
    pub fn retry_after(&self) -> Option<SystemTime> {
        match self {
            IssueError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_in_plain_words_with_subproblems() {
        let p = CaProblem {
            problem_type: Some("urn:ietf:params:acme:error:compound".into()),
            detail: Some("Errors during validation".into()),
            status: Some(403),
            subproblems: vec![CaSubproblem {
                identifier: Some("a.example".into()),
                problem_type: Some("urn:ietf:params:acme:error:connection".into()),
                detail: Some("Connection refused".into()),
            }],
        };
        let s = p.to_string();
        assert!(
            s.contains("several problems: Errors during validation"),
            "{s}"
        );
        assert!(
            s.contains("a.example: the CA could not connect to the server answering the challenge: Connection refused [urn:ietf:params:acme:error:connection]"),
            "{s}"
        );
        assert!(p.is("compound"));
    }

    /// A network failure keeps its cause as its source, and the one line a
    /// user sees still names it.
    #[test]
    fn network_errors_keep_their_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = IssueError::network("fetch the ACME directory", "https://ca/dir", Outer(io));
        assert_eq!(
            e.to_string(),
            "cannot fetch the ACME directory at https://ca/dir: error sending request: connection refused"
        );
        assert_eq!(e.class(), ErrorClass::Network);
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<Outer>().is_some(), "{source:?}");
        let root = source.source().expect("its own source");
        assert_eq!(root.to_string(), "connection refused");

        let e = IssueError::bad_answer(
            "get a nonce",
            "https://ca/nonce",
            "the answer has no Replay-Nonce header",
        );
        assert_eq!(
            e.to_string(),
            "cannot get a nonce at https://ca/nonce: the answer has no Replay-Nonce header"
        );
        assert_eq!(e.class(), ErrorClass::Network);
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn classes() {
        let e = IssueError::TermsNotAgreed {
            url: "https://x/tos".into(),
        };
        assert_eq!(e.class(), ErrorClass::Usage);
        assert!(e.to_string().contains("https://x/tos"));
        let e = IssueError::RateLimited {
            action: "create the order".into(),
            problem: CaProblem::default(),
            retry_after: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        };
        assert_eq!(e.class(), ErrorClass::RateLimited);
        assert!(
            e.to_string().contains("retry after 2023-11-14T22:13:20Z"),
            "{e}"
        );
        let e = IssueError::ValidationFailed {
            failures: vec![AuthzFailure {
                domain: "a.example".into(),
                challenge: Some("http-01".into()),
                problem: None,
            }],
        };
        assert_eq!(e.class(), ErrorClass::CaRefused);
        assert_eq!(
            e.to_string(),
            "the CA did not validate a.example (http-01): the CA gave no reason"
        );
    }
}
