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
//!
//! A server that answers no SOA at all (pebble-challtestsrv) is tolerated
//! when `--propagation-server` names the servers to check: the zone is then
//! taken to be the challenge name's parent, with a warning.
//!
//! Queries are built with `hickory-proto` and sent over our own UDP socket,
//! with a TCP retry when the answer is truncated: the checks need exact
//! control over the recursion bit and the server asked, which a caching
//! resolver is designed to hide.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// At most this many CNAMEs are followed from `_acme-challenge.<domain>`.
pub const MAX_CNAME_HOPS: usize = 16;

/// How certsmith talks to DNS.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Resolvers for SOA/NS/CNAME discovery; empty: those of `/etc/resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// Servers asked for propagation instead of the zone's nameservers
    /// (split horizon, tests); empty: the zone's authoritative nameservers.
    pub propagation_servers: Vec<SocketAddr>,
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
    #[error("no DNS resolver: /etc/resolv.conf lists none; pass --dns-resolver IP[:PORT]")]
    NoResolvers,
    /// A name is not a valid DNS name.
    #[error("'{0}' is not a valid DNS name")]
    BadName(String),
    /// No resolver answered.
    #[error("looking up {name} {rtype}: {reason}")]
    Lookup {
        /// The name queried.
        name: String,
        /// The record type.
        rtype: String,
        /// What the resolvers said, per server.
        reason: String,
    },
    /// The CNAME chain loops.
    #[error("CNAME loop at the challenge name: {}; fix the records or pass --no-follow-cname", .0.join(" → "))]
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
    #[error(
        "zone {zone} lists no nameserver with an address (NS: {ns}); pass --propagation-server IP[:PORT]"
    )]
    NoNameservers {
        /// The zone.
        zone: String,
        /// The NS names found.
        ns: String,
    },
    /// Not every nameserver served every value in time.
    #[error("{}", propagation_message(.fqdn, .waited, .servers))]
    PropagationTimeout {
        /// The record name.
        fqdn: String,
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

fn propagation_message(fqdn: &str, waited: &Duration, servers: &[ServerState]) -> String {
    let ready = servers.iter().filter(|s| s.ready).count();
    let mut s = format!(
        "the TXT record {fqdn} did not reach every authoritative nameserver within {}s ({ready}/{} serve it):",
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
        "\nraise --propagation-timeout, or check that the plugin writes to the zone these servers serve",
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
    /// Servers to ask for propagation: (label, address).
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

/// The resolvers of `/etc/resolv.conf`.
pub fn system_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default()
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Parses `IP` or `IP:PORT` (`[v6]:PORT`), port 53 by default.
pub fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// One DNS query to one server, UDP first, TCP when truncated.
async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    recursion: bool,
    timeout: Duration,
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

/// Asks the resolvers in turn until one gives an answer that is not a
/// server failure.
async fn resolve(opts: &DnsOptions, name: &Name, rtype: RecordType) -> Result<Message, DnsError> {
    let resolvers = if opts.resolvers.is_empty() {
        system_resolvers()
    } else {
        opts.resolvers.clone()
    };
    if resolvers.is_empty() {
        return Err(DnsError::NoResolvers);
    }
    let mut reasons = Vec::new();
    for attempt in 0..2 {
        for server in &resolvers {
            match query(*server, name, rtype, true, opts.query_timeout).await {
                Ok(m)
                    if matches!(
                        m.metadata.response_code,
                        ResponseCode::NoError | ResponseCode::NXDomain | ResponseCode::NotImp
                    ) =>
                {
                    return Ok(m);
                }
                Ok(m) => reasons.push(format!("{server}: {}", m.metadata.response_code)),
                Err(e) => reasons.push(format!("{server}: {e}")),
            }
        }
        if attempt == 0 {
            reasons.clear();
        }
    }
    Err(DnsError::Lookup {
        name: plain(name),
        rtype: rtype.to_string(),
        reason: reasons.join("; "),
    })
}

fn cname_target(msg: &Message, name: &Name) -> Option<Name> {
    msg.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) if r.name.to_lowercase() == name.to_lowercase() => Some(c.0.clone()),
        _ => None,
    })
}

/// Follows CNAMEs from `_acme-challenge.<identifier>`, finds the zone, its
/// primary and the servers to check.
pub async fn resolve_challenge_name(
    opts: &DnsOptions,
    identifier: &str,
) -> Result<ResolvedName, DnsError> {
    let requested = challenge_name(identifier).to_ascii_lowercase();
    let mut name = to_name(&requested)?;
    let mut chain = vec![requested.clone()];
    if opts.follow_cname {
        loop {
            let m = resolve(opts, &name, RecordType::CNAME).await?;
            let Some(target) = cname_target(&m, &name) else {
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
        let m = resolve(opts, &candidate, RecordType::SOA).await?;
        let is_cname = m.answers.iter().any(|r| matches!(r.data, RData::CNAME(_)));
        let soa = m
            .answers
            .iter()
            .find(|r| {
                matches!(r.data, RData::SOA(_)) && r.name.to_lowercase() == candidate.to_lowercase()
            })
            .or_else(|| {
                (!is_cname)
                    .then(|| {
                        m.authorities
                            .iter()
                            .find(|r| matches!(r.data, RData::SOA(_)))
                    })
                    .flatten()
                    .filter(|r| r.name.zone_of(&name))
            });
        if let Some(rec) = soa {
            let mname = match &rec.data {
                RData::SOA(s) => Some(plain(&s.mname)),
                _ => None,
            };
            break (plain(&rec.name), mname);
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
                "no SOA found above {effective}; assuming the zone is {parent} (--propagation-server is set)"
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

    let nameservers = if !opts.propagation_servers.is_empty() {
        opts.propagation_servers
            .iter()
            .map(|a| (a.to_string(), *a))
            .collect()
    } else {
        zone_nameservers(opts, &zone).await?
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

/// Every address of every NS of `zone`, on port 53.
async fn zone_nameservers(
    opts: &DnsOptions,
    zone: &str,
) -> Result<Vec<(String, SocketAddr)>, DnsError> {
    let zname = to_name(zone)?;
    let m = resolve(opts, &zname, RecordType::NS).await?;
    let ns_names: Vec<Name> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(ns) => Some(ns.0.clone()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for ns in &ns_names {
        let mut addrs = BTreeSet::new();
        // Glue first, then a lookup for each address family.
        for r in &m.additionals {
            if r.name.to_lowercase() == ns.to_lowercase() {
                match &r.data {
                    RData::A(a) => {
                        addrs.insert(IpAddr::V4(a.0));
                    }
                    RData::AAAA(a) => {
                        addrs.insert(IpAddr::V6(a.0));
                    }
                    _ => {}
                }
            }
        }
        for rtype in [RecordType::A, RecordType::AAAA] {
            if let Ok(a) = resolve(opts, ns, rtype).await {
                for r in &a.answers {
                    match &r.data {
                        RData::A(x) => {
                            addrs.insert(IpAddr::V4(x.0));
                        }
                        RData::AAAA(x) => {
                            addrs.insert(IpAddr::V6(x.0));
                        }
                        _ => {}
                    }
                }
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
    served_values(server, &name, timeout).await
}

/// The TXT values one server serves at `fqdn`, asked without recursion.
async fn served_values(
    server: SocketAddr,
    fqdn: &Name,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let m = query(server, fqdn, RecordType::TXT, false, timeout).await?;
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
        set.spawn(async move {
            let state = match served_values(addr, &name, timeout).await {
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
    fn resolv_conf_and_server_syntax() {
        let text =
            "# c\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nsearch x\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().expect("addr"),
                "[fe80::1]:53".parse::<SocketAddr>().expect("addr")
            ]
        );
        assert_eq!(parse_server("127.0.0.1"), "127.0.0.1:53".parse().ok());
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            "127.0.0.1:5353".parse().ok()
        );
        assert_eq!(parse_server("[::1]:54"), "[::1]:54".parse().ok());
        assert_eq!(parse_server("ns1.example.com"), None);
    }

    #[test]
    fn timeout_message_lists_every_server() {
        let e = DnsError::PropagationTimeout {
            fqdn: "_acme-challenge.a.test".into(),
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
