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

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as NetDnsError, NetError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// What one nameserver answered for a record.
#[derive(Clone, Debug)]
pub struct ServerState {
    /// The server, `name (address)`.
    pub server: String,
    /// Whether it serves every expected value.
    pub ready: bool,
    /// What it returned: the values, or the error.
    pub observed: String,
}

fn propagation_message(
    fqdn: &str,
    waited: &Duration,
    servers: &[ServerState],
    recursive: bool,
) -> String {
    let ready = servers.iter().filter(|s| s.ready).count();
    let asked = if recursive {
        "resolver"
    } else {
        "authoritative nameserver"
    };
    let mut s = format!(
        "the TXT record {fqdn} did not reach every {asked} within {}s ({ready}/{} serve it):",
        waited.as_secs(),
        servers.len()
    );
    for st in servers {
        s.push_str(&format!(
            "\n  {} {}: {}",
            if st.ready { "ok  " } else { "MISS" },
            st.server,
            st.observed
        ));
    }
    s.push_str(
        "\nthe propagation timeout may be too short, or the plugin writes to a zone these servers do not serve",
    );
    s
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

/// The resolvers of the system configuration (`/etc/resolv.conf`), as
/// `hickory-resolver` reads it; empty when it cannot be read.
pub fn system_resolvers() -> Vec<SocketAddr> {
    hickory_resolver::system_conf::read_system_conf()
        .map(|(config, _)| server_addrs(&config))
        .unwrap_or_default()
}

/// Every (address, port) a resolver configuration sends to, each once.
fn server_addrs(config: &ResolverConfig) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for ns in config.name_servers() {
        for conn in &ns.connections {
            let addr = SocketAddr::new(ns.ip, conn.port);
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// Parses `IP` or `IP:PORT` (`[v6]:PORT`), port 53 by default.
pub fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// One DNS query to exactly `server`, UDP first, TCP when truncated: the
/// propagation checks' view of one server. `recursion` off asks an
/// authoritative server what it serves itself; on, asks a resolver what it
/// would tell a client.
async fn query_direct(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
    recursion: bool,
) -> Result<Message, String> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = recursion;
    msg.add_query(Query::query(name.clone(), rtype));
    let id = msg.metadata.id;
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;

    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let udp = async {
        let sock = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| e.to_string())?;
        sock.connect(server).await.map_err(|e| e.to_string())?;
        sock.send(&bytes).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == id => return Ok::<Message, String>(m),
                _ => continue,
            }
        }
    };
    let reply = tokio::time::timeout(timeout, udp)
        .await
        .map_err(|_| format!("no answer within {}ms", timeout.as_millis()))??;
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let tcp = async {
        let mut s = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_owned())?;
        s.write_all(&len.to_be_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let mut lenb = [0u8; 2];
        s.read_exact(&mut lenb).await.map_err(|e| e.to_string())?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
        s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        Message::from_vec(&body).map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, tcp)
        .await
        .map_err(|_| format!("no TCP answer within {}ms", timeout.as_millis()))?
}

/// The recursive side: one `hickory-resolver` built for one resolution.
struct Recursive {
    resolver: TokioResolver,
    /// The resolvers asked, for error messages.
    servers: String,
    /// The resolvers' addresses, for [`PropagationCheck::Recursive`].
    addrs: Vec<SocketAddr>,
}

/// What a recursive lookup found.
enum Answer {
    /// Records of the type asked (after any CNAMEs the resolver followed,
    /// which are kept in the answer section).
    Records(Lookup),
    /// None: NXDOMAIN or NODATA (or NOTIMP, which some test servers answer
    /// for types they do not serve).
    Empty {
        /// The name the final query asked: not the one looked up when the
        /// resolver followed a CNAME from it.
        queried: Name,
        /// The SOA of the negative answer's authority section, if any.
        soa: Option<Box<Record<SOA>>>,
    },
}

/// At most this many responses are cached by one resolution's resolver.
/// The cache only spares repeated questions within one walk; it is dropped
/// with the resolver at the end of [`resolve_challenge_name`].
const RESOLUTION_CACHE_SIZE: u64 = 64;

impl Recursive {
    /// A resolver on `opts.resolvers` (UDP and TCP, nothing else), or on the
    /// system configuration when there are none.
    fn new(opts: &DnsOptions) -> Result<Self, DnsError> {
        let (config, mut ropts) = if opts.resolvers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                DnsError::SystemConfig {
                    source: Box::new(e),
                }
            })?
        } else {
            (user_config(&opts.resolvers), ResolverOpts::default())
        };
        if config.name_servers().is_empty() {
            return Err(DnsError::NoResolvers);
        }
        let addrs = server_addrs(&config);
        let servers = addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        ropts.timeout = opts.query_timeout;
        ropts.cache_size = RESOLUTION_CACHE_SIZE;
        // DNS answers only: a nameserver's address from /etc/hosts is not
        // where the zone is served.
        ropts.use_hosts_file = ResolveHosts::Never;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(ropts)
            .build()
            .map_err(|e| DnsError::Resolver {
                source: Box::new(e),
            })?;
        Ok(Recursive {
            resolver,
            servers,
            addrs,
        })
    }

    /// Looks `name` up; NXDOMAIN and NODATA are answers, not errors.
    async fn lookup(&self, name: &Name, rtype: RecordType) -> Result<Answer, DnsError> {
        match self.resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => Ok(Answer::Records(lookup)),
            Err(NetError::Dns(NetDnsError::NoRecordsFound(none))) => Ok(Answer::Empty {
                queried: none.query.name().clone(),
                soa: none.soa,
            }),
            Err(NetError::Dns(NetDnsError::ResponseCode(ResponseCode::NotImp))) => {
                Ok(Answer::Empty {
                    queried: name.clone(),
                    soa: None,
                })
            }
            Err(e) => Err(DnsError::Lookup {
                name: plain(name),
                rtype: rtype.to_string(),
                resolvers: self.servers.clone(),
                source: Box::new(e),
            }),
        }
    }
}

/// `resolvers` exactly, each over UDP and TCP on its own port.
fn user_config(resolvers: &[SocketAddr]) -> ResolverConfig {
    let on_port = |mut conn: ConnectionConfig, port: u16| {
        conn.port = port;
        conn
    };
    ResolverConfig::from_name_servers(
        resolvers
            .iter()
            .map(|a| {
                NameServerConfig::new(
                    a.ip(),
                    true,
                    vec![
                        on_port(ConnectionConfig::udp(), a.port()),
                        on_port(ConnectionConfig::tcp(), a.port()),
                    ],
                )
            })
            .collect(),
    )
}

fn same_name(a: &Name, b: &Name) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

fn cname_target(answers: &[Record], name: &Name) -> Option<Name> {
    answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) if same_name(&r.name, name) => Some(c.0.clone()),
        _ => None,
    })
}

/// The zone apex and SOA MNAME an SOA answer for `candidate` names, if it
/// is the zone of `name` (the record's name).
fn soa_of(answer: &Answer, candidate: &Name, name: &Name) -> Option<(Name, Name)> {
    match answer {
        Answer::Records(lookup) => {
            if let Some(found) = lookup.answers().iter().find_map(|r| match &r.data {
                RData::SOA(s) if same_name(&r.name, candidate) => {
                    Some((r.name.clone(), s.mname.clone()))
                }
                _ => None,
            }) {
                return Some(found);
            }
            // An SOA in the authority section belongs to the answer's last
            // name: after a CNAME, that is some other zone.
            if lookup
                .answers()
                .iter()
                .any(|r| matches!(r.data, RData::CNAME(_)))
            {
                return None;
            }
            lookup.authorities().iter().find_map(|r| match &r.data {
                RData::SOA(s) if r.name.zone_of(name) => Some((r.name.clone(), s.mname.clone())),
                _ => None,
            })
        }
        // A negative answer carries the zone's SOA in its authority
        // section, unless the resolver followed a CNAME away from
        // `candidate`.
        Answer::Empty { queried, soa } => soa
            .as_ref()
            .filter(|rec| same_name(queried, candidate) && rec.name.zone_of(name))
            .map(|rec| (rec.name.clone(), rec.data.mname.clone())),
    }
}

/// Follows CNAMEs from `_acme-challenge.<identifier>`, finds the zone, its
/// primary and the servers to check for `opts`' propagation check (the
/// zone's nameservers are looked up only when they are to be asked).
pub async fn resolve_challenge_name(
    opts: &DnsOptions,
    identifier: &str,
) -> Result<ResolvedName, DnsError> {
    let requested = challenge_name(identifier).to_ascii_lowercase();
    let mut name = to_name(&requested)?;
    let recursive = Recursive::new(opts)?;
    let mut chain = vec![requested.clone()];
    if opts.follow_cname {
        loop {
            let Answer::Records(m) = recursive.lookup(&name, RecordType::CNAME).await? else {
                break;
            };
            let Some(target) = cname_target(m.answers(), &name) else {
                break;
            };
            let t = plain(&target);
            if chain.contains(&t) {
                chain.push(t);
                return Err(DnsError::CnameLoop(chain));
            }
            chain.push(t);
            if chain.len() > MAX_CNAME_HOPS + 1 {
                return Err(DnsError::TooManyCnames(chain));
            }
            name = target;
        }
    }
    let effective = plain(&name);

    // Walk up to the SOA. An authoritative "no such name / no data" answer
    // carries the zone's SOA in its authority section, which usually ends
    // the walk at the first step.
    let mut candidate = name.clone();
    let (zone, mname) = loop {
        let answer = recursive.lookup(&candidate, RecordType::SOA).await?;
        if let Some((apex, mname)) = soa_of(&answer, &candidate, &name) {
            break (plain(&apex), Some(plain(&mname)));
        }
        if candidate.num_labels() <= 1 {
            // Test DNS servers such as pebble-challtestsrv serve records but
            // no SOA. When the user named the servers to check, the zone is
            // only informational for most plugins: take the parent of the
            // challenge label and say so.
            if opts.propagation_servers.is_empty() {
                return Err(DnsError::NoZone(effective));
            }
            let parent = effective
                .split_once('.')
                .map(|(_, p)| p.to_owned())
                .unwrap_or_else(|| effective.clone());
            log::warn!(
                "no SOA found above {effective}; assuming the zone is {parent} (propagation servers are given)"
            );
            break (parent, None);
        }
        candidate = candidate.base_name();
    };
    let relative = if effective == zone {
        "@".to_owned()
    } else {
        effective
            .strip_suffix(&format!(".{zone}"))
            .unwrap_or(&effective)
            .to_owned()
    };

    let nameservers = match opts.propagation_check.unwrap_or_default() {
        PropagationCheck::Wait(_) => Vec::new(),
        PropagationCheck::Recursive => recursive
            .addrs
            .iter()
            .map(|a| (format!("resolver {a}"), *a))
            .collect(),
        PropagationCheck::Authoritative if !opts.propagation_servers.is_empty() => opts
            .propagation_servers
            .iter()
            .map(|a| (a.to_string(), *a))
            .collect(),
        PropagationCheck::Authoritative => zone_nameservers(&recursive, &zone).await?,
    };
    Ok(ResolvedName {
        requested,
        effective,
        chain,
        zone,
        relative,
        primary_ns: mname,
        nameservers,
    })
}

/// The IP addresses among `records`.
fn addresses(records: &[Record], owner: Option<&Name>) -> impl Iterator<Item = IpAddr> {
    records
        .iter()
        .filter(move |r| owner.is_none_or(|o| same_name(&r.name, o)))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
}

/// Every address of every NS of `zone`, on port 53.
async fn zone_nameservers(
    recursive: &Recursive,
    zone: &str,
) -> Result<Vec<(String, SocketAddr)>, DnsError> {
    let zname = to_name(zone)?;
    let (ns_names, glue): (Vec<Name>, Vec<Record>) =
        match recursive.lookup(&zname, RecordType::NS).await? {
            Answer::Records(m) => (
                m.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::NS(ns) => Some(ns.0.clone()),
                        _ => None,
                    })
                    .collect(),
                m.additionals().to_vec(),
            ),
            Answer::Empty { .. } => (Vec::new(), Vec::new()),
        };
    let mut out = Vec::new();
    for ns in &ns_names {
        // Glue first, then a lookup for each address family; a failed
        // lookup only means fewer addresses.
        let mut addrs: BTreeSet<IpAddr> = addresses(&glue, Some(ns)).collect();
        for rtype in [RecordType::A, RecordType::AAAA] {
            match recursive.lookup(ns, rtype).await {
                Ok(Answer::Records(a)) => addrs.extend(addresses(a.answers(), None)),
                Ok(Answer::Empty { .. }) => {}
                Err(e) => log::debug!("{e}"),
            }
        }
        for ip in addrs {
            out.push((format!("{} ({ip})", plain(ns)), SocketAddr::new(ip, 53)));
        }
    }
    if out.is_empty() {
        return Err(DnsError::NoNameservers {
            zone: zone.to_owned(),
            ns: ns_names.iter().map(plain).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(out)
}

/// The TXT values `server` serves at `fqdn`, asked without recursion.
pub async fn txt_values_at(
    server: SocketAddr,
    fqdn: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let name = to_name(fqdn).map_err(|e| e.to_string())?;
    served_values(server, &name, timeout, false).await
}

/// The TXT values one server serves at `fqdn`, asked with or without
/// recursion.
async fn served_values(
    server: SocketAddr,
    fqdn: &Name,
    timeout: Duration,
    recursion: bool,
) -> Result<Vec<String>, String> {
    let m = query_direct(server, fqdn, RecordType::TXT, timeout, recursion).await?;
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        other => return Err(other.to_string()),
    }
    Ok(m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

/// A record to wait for: every value at one name, on these servers.
#[derive(Clone, Debug)]
pub struct PropagationTarget {
    /// The record name.
    pub fqdn: String,
    /// Every value that must be served.
    pub values: Vec<String>,
    /// The servers to ask.
    pub nameservers: Vec<(String, SocketAddr)>,
    /// Whether they are resolvers, asked with recursion
    /// ([`PropagationCheck::Recursive`]), rather than authoritative servers.
    pub recursive: bool,
}

impl fmt::Display for PropagationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} values)", self.fqdn, self.values.len())
    }
}

/// Checks every server once; returns each server's state.
pub async fn check_once(target: &PropagationTarget, timeout: Duration) -> Vec<ServerState> {
    let Ok(name) = to_name(&target.fqdn) else {
        return Vec::new();
    };
    // All servers at once: one slow or dead server must not delay the others.
    let mut set = tokio::task::JoinSet::new();
    for (i, (label, addr)) in target.nameservers.iter().enumerate() {
        let (name, label, addr) = (name.clone(), label.clone(), *addr);
        let values = target.values.clone();
        let recursion = target.recursive;
        set.spawn(async move {
            let state = match served_values(addr, &name, timeout, recursion).await {
                Ok(got) => {
                    let missing = values.iter().filter(|v| !got.contains(v)).count();
                    ServerState {
                        server: label,
                        ready: missing == 0,
                        observed: if got.is_empty() {
                            "no TXT value".to_owned()
                        } else if missing == 0 {
                            format!("serves all {} values", values.len())
                        } else {
                            format!(
                                "serves {} of {} values (has {})",
                                values.len() - missing,
                                values.len(),
                                got.join(", ")
                            )
                        },
                    }
                }
                Err(e) => ServerState {
                    server: label,
                    ready: false,
                    observed: format!("error: {e}"),
                },
            };
            (i, state)
        });
    }
    let mut out: Vec<(usize, ServerState)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, s)| s).collect()
}

/// Waits until every server serves every value: first check at once, then at
/// intervals growing from 250 ms to `max_interval`, until `timeout`.
/// `progress` is told "k/n nameservers serve <name>" whenever that changes.
pub async fn wait_for_propagation(
    target: &PropagationTarget,
    timeout: Duration,
    max_interval: Duration,
    query_timeout: Duration,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), DnsError> {
    let started = Instant::now();
    let mut interval = Duration::from_millis(250).min(max_interval);
    let mut last_ready = usize::MAX;
    loop {
        let states = check_once(target, query_timeout).await;
        let ready = states.iter().filter(|s| s.ready).count();
        if ready != last_ready {
            progress(ready, states.len());
            last_ready = ready;
        }
        if !states.is_empty() && ready == states.len() {
            return Ok(());
        }
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            return Err(DnsError::PropagationTimeout {
                fqdn: target.fqdn.clone(),
                recursive: target.recursive,
                waited: elapsed,
                servers: states,
            });
        }
        tokio::time::sleep(interval.min(timeout - elapsed)).await;
        interval = (interval * 2).min(max_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS};

    #[test]
    fn names_and_values() {
        assert_eq!(
            challenge_name("*.example.com"),
            "_acme-challenge.example.com"
        );
        assert_eq!(
            challenge_name("example.com."),
            "_acme-challenge.example.com"
        );
        // RFC 8555 §8.4 example: the digest of a known key authorization.
        assert_eq!(
            txt_value("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"),
            URL_SAFE_NO_PAD.encode(
                aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    b"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
                )
                .as_ref()
            )
        );
        assert_eq!(txt_value("x").len(), 43);
    }

    #[test]
    fn server_syntax() {
        assert_eq!(parse_server("127.0.0.1"), "127.0.0.1:53".parse().ok());
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            "127.0.0.1:5353".parse().ok()
        );
        assert_eq!(parse_server("[::1]:54"), "[::1]:54".parse().ok());
        assert_eq!(parse_server("ns1.example.com"), None);
    }

    /// What the fake resolver answers for one question.
    #[derive(Default)]
    struct Reply {
        code: Option<ResponseCode>,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        additionals: Vec<Record>,
    }

    fn n(s: &str) -> Name {
        to_name(s).expect("name")
    }

    fn rec(name: &str, data: RData) -> Record {
        Record::from_rdata(n(name), 60, data)
    }

    fn soa(zone: &str) -> Record {
        rec(
            zone,
            RData::SOA(SOA::new(
                n(&format!("ns1.{zone}")),
                n(&format!("hostmaster.{zone}")),
                1,
                3600,
                600,
                86400,
                60,
            )),
        )
    }

    /// A recursive resolver on 127.0.0.1 answering from `answer`, over UDP.
    async fn fake_resolver(
        answer: impl Fn(&str, RecordType) -> Reply + Send + 'static,
    ) -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = sock.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = sock.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(query) = q.queries.first().cloned() else {
                    continue;
                };
                let r = answer(&plain(query.name()), query.query_type());
                let mut m = Message::response(q.metadata.id, q.metadata.op_code);
                m.metadata.recursion_desired = q.metadata.recursion_desired;
                m.metadata.recursion_available = true;
                m.metadata.response_code = r.code.unwrap_or(ResponseCode::NoError);
                m.add_query(query);
                m.add_answers(r.answers);
                m.add_authorities(r.authorities);
                m.add_additionals(r.additionals);
                if let Ok(bytes) = m.to_vec() {
                    let _ = sock.send_to(&bytes, peer).await;
                }
            }
        });
        addr
    }

    fn on(resolver: SocketAddr) -> DnsOptions {
        DnsOptions {
            resolvers: vec![resolver],
            ..DnsOptions::default()
        }
    }

    #[tokio::test]
    async fn cname_zone_and_nameservers_through_the_resolver() {
        let resolver = fake_resolver(|name, rtype| match (name, rtype) {
            ("_acme-challenge.app.example.test", RecordType::CNAME) => Reply {
                answers: vec![rec(
                    "_acme-challenge.app.example.test",
                    RData::CNAME(CNAME(n("_acme-challenge.App.Validation.test"))),
                )],
                ..Reply::default()
            },
            ("_acme-challenge.app.validation.test", _) => Reply {
                code: Some(ResponseCode::NXDomain),
                authorities: vec![soa("validation.test")],
                ..Reply::default()
            },
            ("validation.test", RecordType::NS) => Reply {
                answers: vec![
                    rec("validation.test", RData::NS(NS(n("ns1.validation.test")))),
                    rec("validation.test", RData::NS(NS(n("ns2.other.test")))),
                ],
                additionals: vec![rec("ns1.validation.test", RData::A(A::new(192, 0, 2, 1)))],
                ..Reply::default()
            },
            ("ns1.validation.test", RecordType::A) => Reply {
                answers: vec![rec("ns1.validation.test", RData::A(A::new(192, 0, 2, 1)))],
                ..Reply::default()
            },
            ("ns2.other.test", RecordType::A) => Reply {
                answers: vec![rec("ns2.other.test", RData::A(A::new(192, 0, 2, 2)))],
                ..Reply::default()
            },
            ("ns2.other.test", RecordType::AAAA) => Reply {
                answers: vec![rec(
                    "ns2.other.test",
                    RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
                )],
                ..Reply::default()
            },
            (_, _) => Reply {
                authorities: vec![soa("test")],
                ..Reply::default()
            },
        })
        .await;
        let r = resolve_challenge_name(&on(resolver), "*.app.example.test")
            .await
            .expect("resolve");
        assert_eq!(r.effective, "_acme-challenge.app.validation.test");
        assert_eq!(
            r.chain,
            vec![
                "_acme-challenge.app.example.test",
                "_acme-challenge.app.validation.test"
            ]
        );
        assert_eq!(r.zone, "validation.test");
        assert_eq!(r.relative, "_acme-challenge.app");
        assert_eq!(r.primary_ns.as_deref(), Some("ns1.validation.test"));
        let ns: Vec<String> = r
            .nameservers
            .iter()
            .map(|(label, addr)| format!("{label} {addr}"))
            .collect();
        assert_eq!(
            ns,
            vec![
                "ns1.validation.test (192.0.2.1) 192.0.2.1:53",
                "ns2.other.test (192.0.2.2) 192.0.2.2:53",
                "ns2.other.test (2001:db8::2) [2001:db8::2]:53",
            ]
        );
    }

    #[tokio::test]
    async fn cname_loops_and_long_chains_are_reported() {
        let resolver = fake_resolver(|name, rtype| {
            let target = match name {
                "_acme-challenge.loop1.test" => "_acme-challenge.loop2.test".to_owned(),
                "_acme-challenge.loop2.test" => "_acme-challenge.loop1.test".to_owned(),
                long => match long.strip_prefix("hop").and_then(|r| r.split_once('.')) {
                    Some((i, _)) => format!("hop{}.test", i.parse::<u32>().unwrap_or(0) + 1),
                    None => "hop0.test".to_owned(),
                },
            };
            match rtype {
                RecordType::CNAME => Reply {
                    answers: vec![rec(name, RData::CNAME(CNAME(n(&target))))],
                    ..Reply::default()
                },
                _ => Reply::default(),
            }
        })
        .await;
        let e = resolve_challenge_name(&on(resolver), "loop1.test")
            .await
            .expect_err("loop");
        let DnsError::CnameLoop(chain) = &e else {
            panic!("{e}")
        };
        assert_eq!(
            chain,
            &vec![
                "_acme-challenge.loop1.test",
                "_acme-challenge.loop2.test",
                "_acme-challenge.loop1.test"
            ]
        );
        let e = resolve_challenge_name(&on(resolver), "long.test")
            .await
            .expect_err("too long");
        let DnsError::TooManyCnames(chain) = &e else {
            panic!("{e}")
        };
        assert_eq!(chain.len(), MAX_CNAME_HOPS + 2, "{e}");
    }

    #[tokio::test]
    async fn a_server_without_soa_needs_propagation_servers() {
        // Like pebble-challtestsrv: no SOA anywhere, NOTIMP for SOA.
        let resolver = fake_resolver(|_, rtype| Reply {
            code: (rtype == RecordType::SOA).then_some(ResponseCode::NotImp),
            ..Reply::default()
        })
        .await;
        let e = resolve_challenge_name(&on(resolver), "a.b.test")
            .await
            .expect_err("no zone");
        assert!(
            matches!(&e, DnsError::NoZone(n) if n == "_acme-challenge.a.b.test"),
            "{e}"
        );

        let check: SocketAddr = "127.0.0.1:8053".parse().expect("addr");
        let opts = DnsOptions {
            propagation_servers: vec![check],
            ..on(resolver)
        };
        let r = resolve_challenge_name(&opts, "a.b.test")
            .await
            .expect("tolerated");
        assert_eq!(r.zone, "a.b.test");
        assert_eq!(r.relative, "_acme-challenge");
        assert_eq!(r.primary_ns, None);
        assert_eq!(r.nameservers, vec![(check.to_string(), check)]);
    }

    #[tokio::test]
    async fn a_failing_resolver_is_a_lookup_error_naming_it() {
        let resolver = fake_resolver(|_, _| Reply {
            code: Some(ResponseCode::ServFail),
            ..Reply::default()
        })
        .await;
        let e = resolve_challenge_name(&on(resolver), "a.test")
            .await
            .expect_err("servfail");
        assert!(matches!(e, DnsError::Lookup { .. }), "{e}");
        let s = e.to_string();
        assert!(
            s.starts_with("looking up _acme-challenge.a.test CNAME through "),
            "{s}"
        );
        assert!(s.contains(&resolver.to_string()), "{s}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn propagation_checks_parse_and_print_back() {
        for (text, check) in [
            ("authoritative", PropagationCheck::Authoritative),
            ("Recursive", PropagationCheck::Recursive),
            ("wait:30", PropagationCheck::Wait(Duration::from_secs(30))),
            ("wait:0", PropagationCheck::Wait(Duration::ZERO)),
        ] {
            assert_eq!(text.parse::<PropagationCheck>(), Ok(check), "{text}");
            assert_eq!(
                check.to_string().parse::<PropagationCheck>(),
                Ok(check),
                "{check}"
            );
        }
        assert_eq!(PropagationCheck::default(), PropagationCheck::Authoritative);
        assert!(matches!(
            "wait".parse::<PropagationCheck>(),
            Err(PropagationCheckError::Unknown(_))
        ));
        assert!(matches!(
            "wait:30s".parse::<PropagationCheck>(),
            Err(PropagationCheckError::BadSeconds(_))
        ));
        assert!(matches!(
            "wait:3601".parse::<PropagationCheck>(),
            Err(PropagationCheckError::TooLong(_))
        ));
    }

    /// A zone whose nameserver has an address: what an authoritative check
    /// would ask.
    fn zone_with_a_nameserver(name: &str, rtype: RecordType) -> Reply {
        match (name, rtype) {
            ("example.test", RecordType::NS) => Reply {
                answers: vec![rec("example.test", RData::NS(NS(n("ns1.example.test"))))],
                ..Reply::default()
            },
            ("ns1.example.test", RecordType::A) => Reply {
                answers: vec![rec("ns1.example.test", RData::A(A::new(192, 0, 2, 1)))],
                ..Reply::default()
            },
            (_, _) => Reply {
                code: Some(ResponseCode::NXDomain),
                authorities: vec![soa("example.test")],
                ..Reply::default()
            },
        }
    }

    #[tokio::test]
    async fn each_check_asks_its_own_servers() {
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<RecordType>::new()));
        let log = asked.clone();
        let resolver = fake_resolver(move |name, rtype| {
            if let Ok(mut l) = log.lock() {
                l.push(rtype);
            }
            zone_with_a_nameserver(name, rtype)
        })
        .await;
        let with = |check| DnsOptions {
            propagation_check: Some(check),
            ..on(resolver)
        };
        let r = resolve_challenge_name(&with(PropagationCheck::Authoritative), "a.example.test")
            .await
            .expect("authoritative");
        assert_eq!(
            r.nameservers,
            vec![(
                "ns1.example.test (192.0.2.1)".to_owned(),
                "192.0.2.1:53".parse().expect("addr")
            )]
        );
        let ns_lookups = |asked: &std::sync::Mutex<Vec<RecordType>>| {
            asked
                .lock()
                .map(|l| l.iter().filter(|t| **t == RecordType::NS).count())
                .unwrap_or(usize::MAX)
        };
        assert_eq!(ns_lookups(&asked), 1);

        // The recursive check asks the resolvers, the wait asks nobody:
        // neither looks the nameservers up.
        let r = resolve_challenge_name(&with(PropagationCheck::Recursive), "a.example.test")
            .await
            .expect("recursive");
        assert_eq!(
            r.nameservers,
            vec![(format!("resolver {resolver}"), resolver)]
        );
        assert_eq!(r.zone, "example.test");
        let wait = PropagationCheck::Wait(Duration::from_secs(5));
        let r = resolve_challenge_name(&with(wait), "a.example.test")
            .await
            .expect("wait");
        assert!(r.nameservers.is_empty());
        assert_eq!(ns_lookups(&asked), 1, "no NS lookup but the first");
    }

    #[tokio::test]
    async fn the_recursive_check_asks_with_recursion() {
        // A resolver that only answers clients asking for recursion, as a
        // resolver in front of unreachable nameservers would; an
        // authoritative-style query gets REFUSED.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = sock.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = sock.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(query) = q.queries.first().cloned() else {
                    continue;
                };
                let mut m = Message::response(q.metadata.id, q.metadata.op_code);
                m.metadata.recursion_available = true;
                if q.metadata.recursion_desired {
                    m.add_answer(rec(
                        &plain(query.name()),
                        RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["v1".to_owned()])),
                    ));
                } else {
                    m.metadata.response_code = ResponseCode::Refused;
                }
                m.add_query(query);
                if let Ok(bytes) = m.to_vec() {
                    let _ = sock.send_to(&bytes, peer).await;
                }
            }
        });
        let target = |recursive| PropagationTarget {
            fqdn: "_acme-challenge.a.test".to_owned(),
            values: vec!["v1".to_owned()],
            nameservers: vec![(format!("resolver {addr}"), addr)],
            recursive,
        };
        let states = check_once(&target(true), Duration::from_secs(2)).await;
        assert!(states.iter().all(|s| s.ready), "{states:?}");
        let e = wait_for_propagation(
            &target(false),
            Duration::ZERO,
            Duration::from_millis(10),
            Duration::from_secs(2),
            |_, _| {},
        )
        .await
        .expect_err("refused without recursion");
        assert!(
            e.to_string().contains("every authoritative nameserver"),
            "{e}"
        );
        let e = DnsError::PropagationTimeout {
            fqdn: "x".into(),
            recursive: true,
            waited: Duration::ZERO,
            servers: Vec::new(),
        };
        assert!(
            e.to_string().contains("did not reach every resolver"),
            "{e}"
        );
    }

    #[test]
    fn user_resolvers_keep_their_ports() {
        let a: SocketAddr = "127.0.0.1:5353".parse().expect("addr");
        let b: SocketAddr = "[::1]:54".parse().expect("addr");
        assert_eq!(server_addrs(&user_config(&[a, b])), vec![a, b]);
    }

    #[test]
    fn timeout_message_lists_every_server() {
        let e = DnsError::PropagationTimeout {
            fqdn: "_acme-challenge.a.test".into(),
            recursive: false,
            waited: Duration::from_secs(3),
            servers: vec![
                ServerState {
                    server: "ns1 (192.0.2.1)".into(),
                    ready: true,
                    observed: "serves all 1 values".into(),
                },
                ServerState {
                    server: "ns2 (192.0.2.2)".into(),
                    ready: false,
                    observed: "error: no answer within 2000ms".into(),
                },
            ],
        };
        let s = e.to_string();
        assert!(s.contains("(1/2 serve it)"), "{s}");
        assert!(s.contains("MISS ns2 (192.0.2.2): error: no answer"), "{s}");
        assert!(s.contains("ok   ns1 (192.0.2.1)"), "{s}");
    }
}
