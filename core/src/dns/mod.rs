//! The DNS side of dns-01, done once in the core for every DNS plugin
//! ([RFC 8555 §8.4](https://www.rfc-editor.org/rfc/rfc8555#section-8.4)).
//!
//! Plugins only append and delete one TXT value. Everything that decides
//! *where* and *when* lives here, because every established client gets some
//! of it wrong in its own way:
//!
//! * the name: `_acme-challenge.<domain without "*.">`, and the value:
//!   base64url(SHA-256(key authorization));
//! * **CNAME delegation**: `_acme-challenge.app.example.com CNAME
//!   _acme-challenge.validation.example.net` moves the record into a zone
//!   made for validation. Followed for at most 16 hops, loops reported;
//! * **the zone**: found by walking up to the SOA, so plugins are handed the
//!   zone apex and the relative name instead of guessing them;
//! * **propagation**: instead of sleeping a fixed time, ask *every address of
//!   every authoritative nameserver* directly (recursion off, so no cache is
//!   in the way) until all of them serve every value expected at the name.
//!   That is the default [`PropagationCheck::Authoritative`]; where the
//!   authoritative servers cannot be reached from this host (firewalled
//!   nameservers, split-horizon DNS), [`PropagationCheck::Recursive`] asks
//!   the resolvers instead, and [`PropagationCheck::Wait`] only waits.
//!
//! A server that answers no SOA at all (pebble-challtestsrv) is tolerated
//! when `--propagation-server` names the servers to check: the zone is then
//! taken to be the challenge name's parent, with a warning.
//!
//! Two kinds of queries, two mechanisms (see docs/design.md §3):
//!
//! * the **recursive lookups** before anything is written (CNAME, SOA, NS,
//!   nameserver addresses) go through `hickory-resolver`: the resolvers given
//!   with `--dns-resolver`, else those of the system configuration
//!   (`/etc/resolv.conf`). One resolver is built per [`resolve_challenge_name`]
//!   call, so its cache lives for one resolution and never serves an answer
//!   from before a record was written;
//! * the **propagation checks** are built with `hickory-proto` and sent over
//!   our own UDP socket (TCP when truncated) to one exact server with the
//!   recursion bit off: a resolver is designed to hide both.

mod propagation;
mod resolve;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::rr::Name;
use hickory_resolver::net::NetError;

use propagation::propagation_message;
pub use propagation::{
    PropagationTarget, ServerState, check_once, serves_zone, txt_values_at, wait_for_propagation,
};
pub use resolve::{lookup_addresses, resolve_challenge_name, system_resolvers};

/// At most this many CNAMEs are followed from `_acme-challenge.<domain>`.
pub const MAX_CNAME_HOPS: usize = 16;

/// The longest fixed wait [`PropagationCheck::Wait`] accepts: an hour is
/// far beyond any DNS provider's propagation delay, and a pending
/// authorization should not be held longer.
pub const MAX_PROPAGATION_WAIT: Duration = Duration::from_secs(3600);

/// How certsmith decides that a dns-01 record can be seen before it asks
/// the CA to validate.
///
/// The CA validates through its own resolvers, which certsmith cannot ask;
/// what it can ask is the next best thing, and each mode trades certainty
/// for reach:
///
/// * `Authoritative` (the default): every address of every authoritative
///   nameserver of the zone (or the configured propagation servers), asked
///   without recursion, must serve every value. Exact, and no cache is in
///   the way; needs the nameservers reachable from this host.
/// * `Recursive`: every configured resolver (or every resolver of the system
///   configuration), asked *with* recursion, must serve every value. For
///   hosts that can only reach a resolver (firewalled nameservers, split
///   horizon). A resolver may have cached the name's absence from before the
///   record was written (the lookups that found the zone): the check then
///   lasts until that negative answer expires (the zone's SOA minimum TTL).
/// * `Wait(d)`: no query at all; wait `d` after the records are written.
///   For when no server that sees the public records is reachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PropagationCheck {
    /// Ask every authoritative nameserver directly, without recursion.
    #[default]
    Authoritative,
    /// Ask the resolvers, with recursion.
    Recursive,
    /// Do not check: wait this long after the records are written.
    Wait(Duration),
}

/// A propagation check that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PropagationCheckError {
    /// Not one of the modes.
    #[error("'{0}' is not a propagation check: use authoritative, recursive or wait:SECONDS")]
    Unknown(String),
    /// `wait:` without a number of seconds.
    #[error("'{0}': wait takes a whole number of seconds, e.g. wait:30")]
    BadSeconds(String),
    /// A wait longer than [`MAX_PROPAGATION_WAIT`].
    #[error("'{0}': a fixed wait can be at most {secs} seconds", secs = MAX_PROPAGATION_WAIT.as_secs())]
    TooLong(String),
}

impl std::str::FromStr for PropagationCheck {
    type Err = PropagationCheckError;

    /// `authoritative`, `recursive` or `wait:SECONDS` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "authoritative" => return Ok(PropagationCheck::Authoritative),
            "recursive" => return Ok(PropagationCheck::Recursive),
            _ => {}
        }
        let Some(secs) = t.strip_prefix("wait:") else {
            return Err(PropagationCheckError::Unknown(s.to_owned()));
        };
        let secs: u64 = secs
            .trim()
            .parse()
            .map_err(|_| PropagationCheckError::BadSeconds(s.to_owned()))?;
        let wait = Duration::from_secs(secs);
        if wait > MAX_PROPAGATION_WAIT {
            return Err(PropagationCheckError::TooLong(s.to_owned()));
        }
        Ok(PropagationCheck::Wait(wait))
    }
}

impl fmt::Display for PropagationCheck {
    /// The form [`str::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropagationCheck::Authoritative => f.write_str("authoritative"),
            PropagationCheck::Recursive => f.write_str("recursive"),
            PropagationCheck::Wait(d) => write!(f, "wait:{}", d.as_secs()),
        }
    }
}

/// How certsmith talks to DNS.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Resolvers for SOA/NS/CNAME discovery; empty: those of the system
    /// configuration (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// Servers asked for propagation instead of the zone's nameservers
    /// (split horizon, tests); empty: the zone's authoritative nameservers.
    /// Only [`PropagationCheck::Authoritative`] asks them.
    pub propagation_servers: Vec<SocketAddr>,
    /// How propagation is checked, for every request. `None`: as each
    /// request says ([`crate::engine::CertRequest::propagation_check`]),
    /// else [`PropagationCheck::Authoritative`]. Set by whoever speaks for
    /// the whole run (the command line), so it wins over the requests.
    pub propagation_check: Option<PropagationCheck>,
    /// Follow CNAMEs at `_acme-challenge.<domain>`.
    pub follow_cname: bool,
    /// Overrides the plugin's `propagation_timeout_s`.
    pub propagation_timeout: Option<Duration>,
    /// How long one query may take.
    pub query_timeout: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            resolvers: Vec::new(),
            propagation_servers: Vec::new(),
            propagation_check: None,
            follow_cname: true,
            propagation_timeout: None,
            query_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a DNS step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// No resolver is configured and `/etc/resolv.conf` names none.
    #[error("no DNS resolver: /etc/resolv.conf lists none")]
    NoResolvers,
    /// The system DNS configuration (`/etc/resolv.conf`) could not be read
    /// or names no resolver.
    #[error("no usable DNS resolver in the system configuration (/etc/resolv.conf): {source}")]
    SystemConfig {
        /// Why reading it failed.
        #[source]
        source: Box<NetError>,
    },
    /// The resolver could not be set up from its configuration.
    #[error("setting up the DNS resolver: {source}")]
    Resolver {
        /// What the resolver reported.
        #[source]
        source: Box<NetError>,
    },
    /// A name is not a valid DNS name.
    #[error("'{0}' is not a valid DNS name")]
    BadName(String),
    /// No resolver gave a usable answer (timeout, SERVFAIL, REFUSED, ...).
    #[error("looking up {name} {rtype} through {resolvers}: {source}")]
    Lookup {
        /// The name queried.
        name: String,
        /// The record type.
        rtype: String,
        /// The resolvers asked, `IP:PORT, ...`.
        resolvers: String,
        /// What the resolver reported.
        #[source]
        source: Box<NetError>,
    },
    /// The CNAME chain loops.
    #[error("CNAME loop at the challenge name: {}", .0.join(" → "))]
    CnameLoop(Vec<String>),
    /// The CNAME chain is longer than [`MAX_CNAME_HOPS`].
    #[error("more than {MAX_CNAME_HOPS} CNAMEs from the challenge name: {}", .0.join(" → "))]
    TooManyCnames(Vec<String>),
    /// Walking up from the name found no SOA.
    #[error(
        "found no DNS zone (SOA) for {0}; is the domain delegated, and do the resolvers see it?"
    )]
    NoZone(String),
    /// The zone's nameservers have no addresses.
    #[error("zone {zone} lists no nameserver with an address (NS: {ns})")]
    NoNameservers {
        /// The zone.
        zone: String,
        /// The NS names found.
        ns: String,
    },
    /// Not every nameserver (or resolver) served every value in time.
    #[error("{}", propagation_message(.fqdn, .waited, .servers, *.recursive))]
    PropagationTimeout {
        /// The record name.
        fqdn: String,
        /// Whether resolvers were asked ([`PropagationCheck::Recursive`]),
        /// not authoritative nameservers.
        recursive: bool,
        /// How long certsmith waited.
        waited: Duration,
        /// What each server returned last.
        servers: Vec<ServerState>,
    },
}

/// `_acme-challenge.<identifier without "*.">`.
pub fn challenge_name(identifier: &str) -> String {
    let base = identifier.strip_prefix("*.").unwrap_or(identifier);
    format!("_acme-challenge.{}", base.trim_end_matches('.'))
}

/// The TXT value for a key authorization: base64url(SHA-256(ka)).
pub fn txt_value(key_authorization: &str) -> String {
    URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes())
            .as_ref(),
    )
}

/// Where a challenge name's record really goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedName {
    /// `_acme-challenge.<domain>`.
    pub requested: String,
    /// The name after following CNAMEs (equal to `requested` without any).
    pub effective: String,
    /// The CNAME chain followed, `requested` first.
    pub chain: Vec<String>,
    /// The zone holding `effective`.
    pub zone: String,
    /// `effective` relative to `zone` (`@` for the apex).
    pub relative: String,
    /// The zone's SOA MNAME.
    pub primary_ns: Option<String>,
    /// Servers to ask for propagation: (label, address). The authoritative
    /// nameservers (or the configured propagation servers), the resolvers
    /// for [`PropagationCheck::Recursive`], none for
    /// [`PropagationCheck::Wait`].
    pub nameservers: Vec<(String, SocketAddr)>,
}

fn to_name(s: &str) -> Result<Name, DnsError> {
    let fq = if s.ends_with('.') {
        s.to_owned()
    } else {
        format!("{s}.")
    };
    Name::from_ascii(&fq).map_err(|_| DnsError::BadName(s.to_owned()))
}

fn plain(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Parses `IP` or `IP:PORT` (`[v6]:PORT`), port 53 by default.
pub fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}
