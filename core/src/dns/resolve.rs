//! The recursive lookups before a record is written: CNAMEs at the
//! challenge name, the zone (SOA) and its nameservers, through
//! hickory-resolver and the system configuration or the given resolvers.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as NetDnsError, NetError};

use super::*;

/// The resolvers of the system configuration (`/etc/resolv.conf`), as
/// `hickory-resolver` reads it; empty when it cannot be read.
pub fn system_resolvers() -> Vec<SocketAddr> {
    hickory_resolver::system_conf::read_system_conf()
        .map(|(config, _)| server_addrs(&config))
        .unwrap_or_default()
}

/// Every (address, port) a resolver configuration sends to, each once.
pub(super) fn server_addrs(config: &ResolverConfig) -> Vec<SocketAddr> {
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

/// The recursive side: one `hickory-resolver` built for one resolution.
pub(super) struct Recursive {
    resolver: TokioResolver,
    /// The resolvers asked, for error messages.
    servers: String,
    /// The resolvers' addresses, for [`PropagationCheck::Recursive`].
    addrs: Vec<SocketAddr>,
}

/// What a recursive lookup found.
pub(super) enum Answer {
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
pub(super) const RESOLUTION_CACHE_SIZE: u64 = 64;

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
pub(super) fn user_config(resolvers: &[SocketAddr]) -> ResolverConfig {
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

pub(super) fn same_name(a: &Name, b: &Name) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

pub(super) fn cname_target(answers: &[Record], name: &Name) -> Option<Name> {
    answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) if same_name(&r.name, name) => Some(c.0.clone()),
        _ => None,
    })
}

/// The zone apex and SOA MNAME an SOA answer for `candidate` names, if it
/// is the zone of `name` (the record's name).
pub(super) fn soa_of(answer: &Answer, candidate: &Name, name: &Name) -> Option<(Name, Name)> {
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

/// The IPv4 and IPv6 addresses of `host`, as the resolvers of `opts` (or
/// the system's) answer: where a CA's http-01 validation would connect.
pub async fn lookup_addresses(
    opts: &DnsOptions,
    host: &str,
) -> Result<Vec<std::net::IpAddr>, DnsError> {
    let name = to_name(host)?;
    let recursive = Recursive::new(opts)?;
    let mut out = Vec::new();
    for rtype in [RecordType::A, RecordType::AAAA] {
        if let Answer::Records(found) = recursive.lookup(&name, rtype).await? {
            for r in found.answers() {
                match &r.data {
                    RData::A(a) => out.push(std::net::IpAddr::V4(a.0)),
                    RData::AAAA(a) => out.push(std::net::IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
    }
    Ok(out)
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
pub(super) fn addresses(records: &[Record], owner: Option<&Name>) -> impl Iterator<Item = IpAddr> {
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
pub(super) async fn zone_nameservers(
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
