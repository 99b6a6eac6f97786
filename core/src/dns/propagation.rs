//! The propagation checks: hand-built queries to one exact server each,
//! with the recursion bit set only in `recursive` mode, until every server
//! serves every value.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

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

pub(super) fn propagation_message(
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

/// One DNS query to exactly `server`, UDP first, TCP when truncated: the
/// propagation checks' view of one server. `recursion` off asks an
/// authoritative server what it serves itself; on, asks a resolver what it
/// would tell a client.
pub(super) async fn query_direct(
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

/// Whether `server` answers authoritatively for `zone`: its SOA, asked
/// without recursion, answered with the AA bit. `Err` says why not (no
/// answer, a refusal, not authoritative), for a preflight check.
pub async fn serves_zone(server: SocketAddr, zone: &str, timeout: Duration) -> Result<(), String> {
    let name = to_name(zone).map_err(|e| e.to_string())?;
    let reply = query_direct(server, &name, RecordType::SOA, timeout, false).await?;
    let rcode = reply.metadata.response_code;
    if rcode != hickory_proto::op::ResponseCode::NoError {
        return Err(format!("it answered {rcode} to the SOA query for {zone}"));
    }
    if !reply.metadata.authoritative {
        return Err(format!("it is not authoritative for {zone} (no AA bit)"));
    }
    let has_soa = reply
        .answers
        .iter()
        .any(|r| r.record_type() == RecordType::SOA);
    if !has_soa {
        return Err(format!("its answer for {zone} holds no SOA record"));
    }
    Ok(())
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
pub(super) async fn served_values(
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
