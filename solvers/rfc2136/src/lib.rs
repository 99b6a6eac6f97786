//! certsmith's `rfc2136` solver: answers dns-01 challenges with RFC 2136
//! dynamic UPDATE messages signed with TSIG (RFC 8945).
//!
//! Every authoritative server worth running (BIND, Knot, PowerDNS, ...)
//! accepts signed updates, so this one plugin covers every self-hosted zone.
//! What it does, per docs/design.md §3:
//!
//! * **present** sends one UPDATE for `DnsTarget.zone` with no prerequisite
//!   and one TXT record to add (`fqdn`, `ttl`, `value`), RFC 2136 §2.5.1. A
//!   server ignores the addition of a record that already exists, so
//!   presenting twice leaves one record, and a second value at the same name
//!   (`example.com` and `*.example.com`) is added beside the first.
//! * **cleanup** sends one UPDATE that deletes exactly that record by its
//!   data (class NONE, RFC 2136 §2.5.4). A server ignores the deletion of a
//!   record that does not exist, so cleaning up twice succeeds, and the other
//!   values at the name stay.
//!
//! The server's answers are turned into errors a user can act on: a key the
//! server rejects (NOTAUTH with a TSIG error, BADKEY, BADSIG, BADTIME, or
//! REFUSED) is an `auth` error that says to check the key name, secret and
//! algorithm; a zone the server does not serve is a `config` error naming
//! both; SERVFAIL and timeouts are `transient`. The TSIG secret never
//! appears in a message, a log line or a `Debug` output.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, CredentialsCheck, CredentialsChecked, DnsTarget, PluginError,
    Presented, Secret, Solver, async_trait, log,
};
use futures_util::{Stream, StreamExt as _};
use hickory_net::DnsHandle as _;
use hickory_net::client::{Client, ClientHandle as _};
use hickory_net::proto::op::update_message::UpdateMessage as _;
use hickory_net::proto::op::{
    DnsRequest, DnsResponse, Message, OpCode, Query, ResponseCode, SerialMessage,
};
use hickory_net::proto::rr::rdata::TXT;
use hickory_net::proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_net::proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::xfer::DnsClientStream;
use hickory_net::{DnsMultiplexer, NetError};
use serde::Deserialize;

/// TSIG "fudge": how far apart the client's and the server's clocks may be,
/// seconds. 300 is what BIND's nsupdate and RFC 8945 §10 recommend.
const TSIG_FUDGE_S: u16 = 300;
/// `timeout_s` when the configuration has none.
const DEFAULT_TIMEOUT_S: u64 = 10;
/// The DNS port, for a `server` without one and for the SOA MNAME.
const DNS_PORT: u16 = 53;

/// The configuration (see `plugin.toml`). `Debug` never shows the secret.
#[derive(Clone, Deserialize)]
pub struct Rfc2136Config {
    /// `host[:port]` of the server that accepts updates; default: the zone's
    /// primary nameserver on port 53.
    #[serde(default)]
    pub server: Option<String>,
    /// The TSIG key's name, as the server knows it.
    pub tsig_key_name: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    #[serde(default)]
    pub tsig_algorithm: Option<String>,
    /// The key's secret, base64.
    pub tsig_secret: Secret,
    /// TTL of the TXT records, seconds; default: the TTL in the request.
    #[serde(default)]
    pub ttl: Option<i64>,
    /// How long to wait for one answer, seconds (default 10).
    #[serde(default)]
    pub timeout_s: Option<i64>,
}

impl fmt::Debug for Rfc2136Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136Config")
            .field("server", &self.server)
            .field("tsig_key_name", &self.tsig_key_name)
            .field("tsig_algorithm", &self.tsig_algorithm)
            .field("tsig_secret", &self.tsig_secret)
            .field("ttl", &self.ttl)
            .field("timeout_s", &self.timeout_s)
            .finish()
    }
}

/// The solver. `Debug` never shows the key.
pub struct Rfc2136 {
    server: Option<ServerSpec>,
    key_name: Name,
    algorithm: &'static str,
    signer: TSigner,
    ttl: Option<u32>,
    timeout: Duration,
}

impl fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("key_name", &self.key_name.to_string())
            .field("algorithm", &self.algorithm)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Which update to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Delete,
    /// A signed UPDATE whose only content is the prerequisite "the zone's
    /// SOA exists" (RFC 2136 §2.4.1): the server checks the key and its
    /// right to update the zone, and changes nothing.
    Probe,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Delete => "delete",
            Op::Probe => "check the key with a no-op update of",
        }
    }
}

#[async_trait]
impl Solver for Rfc2136 {
    type Config = Rfc2136Config;

    fn new(config: Rfc2136Config) -> Result<Self, PluginError> {
        let server = config
            .server
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| ServerSpec::parse(s, "server"))
            .transpose()?;
        let key_name = parse_key_name(&config.tsig_key_name)?;
        let (algorithm, label) =
            parse_algorithm(config.tsig_algorithm.as_deref().unwrap_or("hmac-sha256"))?;
        let secret = decode_secret(config.tsig_secret.expose())?;
        let ttl = config
            .ttl
            .map(|t| {
                u32::try_from(t).ok().filter(|&t| t <= i32::MAX as u32).ok_or_else(|| {
                    PluginError::config(format!(
                        "ttl {t} is out of range: use 0 to 2147483647 seconds (60 is usual for dns-01)"
                    ))
                })
            })
            .transpose()?;
        let timeout_s = match config.timeout_s {
            None => DEFAULT_TIMEOUT_S,
            Some(t) if (1..=600).contains(&t) => t as u64,
            Some(t) => {
                return Err(PluginError::config(format!(
                    "timeout_s {t} is out of range: use 1 to 600 seconds"
                )));
            }
        };
        let signer = TSigner::new(secret, algorithm, key_name.clone(), TSIG_FUDGE_S)
            .map_err(|e| PluginError::config(format!("cannot use TSIG key {key_name}: {e}")))?;
        Ok(Rfc2136 {
            server,
            key_name,
            algorithm: label,
            signer,
            ttl,
            timeout: Duration::from_secs(timeout_s),
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        let target = req.dns01_target("rfc2136")?;
        let ttl = self.ttl.unwrap_or(target.ttl);
        let server = self.update(target, Op::Add, ttl).await?;
        log::debug!(
            "rfc2136: added TXT {} (ttl {ttl}) in zone {} on {server}",
            target.fqdn,
            target.zone
        );
        Ok(Presented::new(
            serde_json::json!({ "server": server, "zone": target.zone, "fqdn": target.fqdn }),
        )
        .with_ttl((ttl != target.ttl).then_some(ttl)))
    }

    /// A signed no-op UPDATE of every zone asked about (see [`Op::Probe`]):
    /// the server verifies the TSIG key and that the key may update the
    /// zone, as it will for `present`.
    async fn check_credentials(
        &self,
        req: &CredentialsCheck,
    ) -> Option<Result<CredentialsChecked, PluginError>> {
        Some(self.probe_all(req).await)
    }

    async fn cleanup(
        &self,
        req: &ChallengeRequest,
        _presented: &Presented,
    ) -> Result<(), PluginError> {
        // What to delete comes from the request (the value present added),
        // never from the handle, which is only journal data.
        let Some(target) = &req.dns else {
            return Ok(());
        };
        if req.challenge_type != ChallengeType::Dns01 {
            return Ok(());
        }
        let server = self.update(target, Op::Delete, 0).await?;
        log::debug!(
            "rfc2136: deleted TXT {} in zone {} on {server}",
            target.fqdn,
            target.zone
        );
        Ok(())
    }
}

impl Rfc2136 {
    async fn probe_all(&self, req: &CredentialsCheck) -> Result<CredentialsChecked, PluginError> {
        if req.zones.is_empty() {
            return Err(PluginError::config(
                "no zone to check the TSIG key against: no dns-01 name of this solver has a \
                 zone certsmith could find (fix the names, or the resolver with --dns-resolver)",
            ));
        }
        let mut checked = Vec::new();
        for z in &req.zones {
            let zone = z.zone.trim_end_matches('.');
            // The probe is an update of the zone apex: the target's name is
            // the zone itself; its value is never sent. The server is the
            // one `present` would use: `server`, else the SOA MNAME.
            let target =
                DnsTarget::new(zone, "@", zone, "", 0).with_primary_ns(z.primary_ns.clone());
            let server = self.update(&target, Op::Probe, 0).await?;
            checked.push(format!("{zone} on {server}"));
        }
        Ok(CredentialsChecked::new(format!(
            "TSIG key {} ({}) accepted for updates of {}",
            self.key_name.to_string().trim_end_matches('.'),
            self.algorithm,
            checked.join(", ")
        )))
    }

    /// Sends one UPDATE adding or deleting the TXT record of `target`.
    /// Returns the server, as shown to the user.
    async fn update(&self, target: &DnsTarget, op: Op, ttl: u32) -> Result<String, PluginError> {
        let zone = parse_name(&target.zone, "zone")?;
        let fqdn = parse_name(&target.fqdn, "record name")?;
        if !zone.zone_of(&fqdn) {
            return Err(PluginError::internal(format!(
                "the record name {} is not inside zone {}",
                target.fqdn, target.zone
            )));
        }
        let server = match &self.server {
            Some(s) => s.clone(),
            None => match target.primary_ns.as_deref().map(str::trim) {
                // An SOA MNAME is a name with a trailing dot.
                Some(ns) if !ns.trim_end_matches('.').is_empty() => {
                    ServerSpec::parse(ns.trim_end_matches('.'), "primary_ns")?
                }
                _ => {
                    return Err(PluginError::config(format!(
                        "no server to send updates for zone {} to: its SOA names no primary \
                         nameserver; set --solver-opt server=<host>[:<port>]",
                        target.zone
                    )));
                }
            },
        };
        let addrs = server.resolve().await?;
        let record =
            Record::from_rdata(fqdn, ttl, RData::TXT(TXT::new(vec![target.value.clone()])));
        let mut last_error = None;
        for addr in addrs {
            let shown = server.show(addr);
            match self.exchange(addr, &shown, &zone, record.clone(), op).await {
                Ok(response) => {
                    self.check_response(&response, &shown, &target.zone, op)?;
                    return Ok(shown);
                }
                // Only a server we could not reach is worth trying the next
                // address for; any answer is the answer.
                Err(Exchange::Unreachable(e)) => {
                    log::debug!("rfc2136: {e}");
                    last_error = Some(e);
                }
                Err(Exchange::Failed(e)) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| PluginError::transient(format!("{server} resolved to no address"))))
    }

    /// One signed UPDATE over one TCP connection.
    ///
    /// TCP, always: an UPDATE must be applied once and answered once, and
    /// over TCP there is no retransmission that sends it again, no answer
    /// that can be lost on the way back, no truncation round trip and no
    /// spoofed reply to weed out. It costs one round trip for the handshake,
    /// which is nothing next to the propagation wait, and every server that
    /// accepts updates listens on TCP (zone transfers need it). certbot's
    /// dns-rfc2136 plugin does the same.
    async fn exchange(
        &self,
        addr: SocketAddr,
        shown: &str,
        zone: &Name,
        record: Record,
        op: Op,
    ) -> Result<DnsResponse, Exchange> {
        let provider = TokioRuntimeProvider::new();
        let (connect, handle) = TcpClientStream::new(addr, None, Some(self.timeout), provider);
        let stream = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(Exchange::Unreachable(PluginError::transient(format!(
                    "cannot connect to {shown} over TCP: {}",
                    net_error_text(&e)
                ))));
            }
            Err(_) => {
                return Err(Exchange::Unreachable(PluginError::transient(format!(
                    "cannot connect to {shown} over TCP: no answer within {} s",
                    self.timeout.as_secs()
                ))));
            }
        };
        let tap = Tap::new(stream);
        let last_answer = tap.last.clone();
        let multiplexer = DnsMultiplexer::new(tap, handle)
            .with_timeout(self.timeout)
            .with_signer(self.signer.clone());
        let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(multiplexer);
        // Ends by itself once `client` is dropped.
        tokio::spawn(background);
        // No EDNS: an UPDATE and its answer are small and travel over TCP,
        // so there is no UDP payload size to negotiate, and an OPT record
        // is one thing fewer for an old server to object to.
        client.disable_edns();
        let sent = async {
            match op {
                Op::Add => client.append(record, zone.clone(), false).await,
                Op::Delete => client.delete_by_rdata(record, zone.clone()).await,
                Op::Probe => match client
                    .send(DnsRequest::from(probe_message(zone)))
                    .next()
                    .await
                {
                    Some(r) => r,
                    None => Err(NetError::Timeout),
                },
            }
        };
        let outcome = tokio::time::timeout(self.timeout + Duration::from_secs(1), sent).await;
        let answer = last_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(Exchange::Failed(self.net_error(&e, answer, shown, op))),
            Err(_) => Err(Exchange::Failed(PluginError::transient(format!(
                "{shown} did not answer the update within {} s",
                self.timeout.as_secs()
            )))),
        }
    }

    /// Turns a failed exchange into an error a user can act on.
    ///
    /// hickory verifies the TSIG of the answer before handing it back, and
    /// reports a failed verification as a bare string. A server that rejects
    /// the key (BADKEY, BADSIG) answers with an empty MAC, which hickory
    /// calls a "truncated HMAC" and asks the user to file an issue about:
    /// true, and useless. So the raw answer the server sent is kept (see
    /// [`Tap`]) and read here to say what the server said.
    fn net_error(&self, e: &NetError, answer: Option<Vec<u8>>, shown: &str, op: Op) -> PluginError {
        let text = net_error_text(e);
        match e {
            NetError::Timeout => PluginError::transient(format!(
                "{shown} did not answer the update within {} s",
                self.timeout.as_secs()
            )),
            NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
                PluginError::transient(format!("update sent to {shown} failed: {text}"))
            }
            _ => {
                if let Some(msg) = answer.as_deref().and_then(|b| Message::from_vec(b).ok()) {
                    let rcode = msg.metadata.response_code;
                    let tsig_error = msg.signature().and_then(|s| s.data.error);
                    let code = match (tsig_error, rcode) {
                        (Some(t), _) => tsig_error_name(t),
                        (None, ResponseCode::NoError) => {
                            "the answer is not signed with this key".to_owned()
                        }
                        (None, r) => format!(
                            "{}, and the answer is not signed with this key",
                            rcode_name(r)
                        ),
                    };
                    return self.key_rejected(shown, &code);
                }
                if text.contains("truncated HMAC") || text.to_ascii_lowercase().contains("tsig") {
                    return self.key_rejected(
                        shown,
                        "BADKEY or BADSIG: the answer carries no valid TSIG for this key",
                    );
                }
                PluginError::internal(format!(
                    "could not {} the TXT record through {shown}: {text}",
                    op.verb()
                ))
            }
        }
    }

    /// Maps a verified answer to success or an error.
    fn check_response(
        &self,
        response: &DnsResponse,
        shown: &str,
        zone: &str,
        op: Op,
    ) -> Result<(), PluginError> {
        let rcode = response.metadata.response_code;
        let tsig_error = response.signature().and_then(|s| s.data.error);
        if let Some(t) = tsig_error {
            return Err(self.key_rejected(shown, &tsig_error_name(t)));
        }
        match rcode {
            ResponseCode::NoError => Ok(()),
            // A verified answer with no TSIG error: NOTAUTH is RFC 2136's "not
            // authoritative for the zone in the Zone section".
            ResponseCode::NotAuth => Err(PluginError::config(format!(
                "zone {zone} is not served by {shown} (NOTAUTH: it is not authoritative for the \
                 zone); point --solver-opt server= at the zone's primary nameserver"
            ))),
            ResponseCode::Refused => Err(PluginError::auth(format!(
                "TSIG key rejected by {shown}: check key name, secret and algorithm (REFUSED); the \
                 server refused the update, so also check that the zone {zone} lets this key \
                 update it (BIND: allow-update {{ key \"<name>\"; }}; or an update-policy)"
            ))),
            ResponseCode::NotZone => Err(PluginError::config(format!(
                "zone {zone} is not served by {shown} (NOTZONE: the record name is outside the \
                 zone it serves)"
            ))),
            ResponseCode::BADSIG | ResponseCode::BADKEY | ResponseCode::BADTIME => {
                Err(self.key_rejected(shown, &rcode_name(rcode)))
            }
            ResponseCode::ServFail => Err(PluginError::transient(format!(
                "{shown} failed to {} the TXT record (SERVFAIL); see the server's log",
                op.verb()
            ))),
            ResponseCode::NotImp => Err(PluginError::config(format!(
                "{shown} does not implement dynamic updates (NOTIMP); send them to the zone's \
                 primary nameserver"
            ))),
            other => Err(PluginError::internal(format!(
                "{shown} answered the update with {} for zone {zone}",
                rcode_name(other)
            ))),
        }
    }

    fn key_rejected(&self, shown: &str, code: &str) -> PluginError {
        PluginError::auth(format!(
            "TSIG key rejected by {shown}: check key name, secret and algorithm ({code}); \
             this configuration uses key {} with {}",
            self.key_name, self.algorithm
        ))
    }
}

/// The UPDATE of [`Op::Probe`]: zone section `zone SOA`, one
/// prerequisite "an SOA RRset exists at the apex" (class ANY, TTL 0, no
/// RDATA), no update section.
fn probe_message(zone: &Name) -> Message {
    let mut query = Query::new();
    query
        .set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    message.add_zone(query);
    let mut exists = Record::update0(zone.clone(), 0, RecordType::SOA);
    exists.dns_class = DNSClass::ANY;
    message.add_pre_requisite(exists.into_record_of_rdata());
    message
}

/// How an exchange failed.
enum Exchange {
    /// Nothing reached the server: the next address may do better.
    Unreachable(PluginError),
    /// The server answered (or the exchange broke after sending).
    Failed(PluginError),
}

fn tsig_error_name(e: TsigError) -> String {
    match e {
        TsigError::BadSig => "BADSIG".to_owned(),
        TsigError::BadKey => "BADKEY".to_owned(),
        TsigError::BadTime => {
            "BADTIME: the clocks of this machine and the server differ by more than 5 minutes"
                .to_owned()
        }
        TsigError::BadTrunc => "BADTRUNC".to_owned(),
        TsigError::Unknown(code) => format!("TSIG error {code}"),
    }
}

/// The mnemonic of an rcode (hickory's `Display` gives prose).
fn rcode_name(r: ResponseCode) -> String {
    let name = match r {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADSIG => "BADSIG",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        other => return format!("rcode {}", u16::from(other)),
    };
    name.to_owned()
}

/// hickory's error text, which for a few variants is empty or terse.
fn net_error_text(e: &NetError) -> String {
    let text = e.to_string();
    if text.is_empty() {
        format!("{e:?}")
    } else {
        text
    }
}

/// Where updates go: a host (name or IP) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServerSpec {
    host: String,
    port: u16,
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ServerSpec {
    /// Parses `host`, `host:port`, `ip`, `[ipv6]` or `[ipv6]:port`.
    fn parse(s: &str, key: &str) -> Result<ServerSpec, PluginError> {
        let bad = |why: &str| {
            PluginError::config(format!(
                "{key} {s:?} is not host[:port] ({why}); e.g. ns1.example.com, 192.0.2.1:5353 or [2001:db8::1]:53"
            ))
        };
        let port_of = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("the port must be 1-65535")),
            Ok(p) => Ok(p),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
            if host.parse::<IpAddr>().is_err() {
                return Err(bad("[...] must hold an IPv6 address"));
            }
            let port = match after {
                "" => DNS_PORT,
                p => port_of(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)?,
            };
            (host.to_owned(), port)
        } else if s.parse::<IpAddr>().is_ok() {
            (s.to_owned(), DNS_PORT)
        } else if let Some((host, port)) = s.rsplit_once(':') {
            if host.contains(':') {
                return Err(bad("write an IPv6 address with a port as [address]:port"));
            }
            (host.to_owned(), port_of(port)?)
        } else {
            (s.to_owned(), DNS_PORT)
        };
        let host = host.trim_end_matches('.').to_owned();
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
        if !name_ok {
            return Err(bad("not a host name or IP address"));
        }
        Ok(ServerSpec { host, port })
    }

    /// The addresses to try, in order.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, PluginError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    Err(PluginError::transient(format!(
                        "the RFC 2136 server name {} has no address",
                        self.host
                    )))
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => Err(PluginError::transient(format!(
                "cannot resolve the RFC 2136 server name {}: {e}; set --solver-opt \
                 server=<ip>[:<port>] if this machine cannot resolve it",
                self.host
            ))),
        }
    }

    /// How the server is named in messages: as configured, plus the address
    /// used when the configuration named a host.
    fn show(&self, addr: SocketAddr) -> String {
        if self.host.parse::<IpAddr>().is_ok() {
            addr.to_string()
        } else {
            format!("{self} ({addr})")
        }
    }
}

fn parse_name(s: &str, what: &str) -> Result<Name, PluginError> {
    let mut name = Name::from_ascii(s).map_err(|e| {
        PluginError::internal(format!(
            "the host sent a {what} {s:?} that is not a DNS name: {e}"
        ))
    })?;
    name.set_fqdn(true);
    Ok(name)
}

fn parse_key_name(s: &str) -> Result<Name, PluginError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(PluginError::config(
            "tsig_key_name is empty: set it to the key's name as the server knows it \
             (BIND: key \"<name>\" { ... };)",
        ));
    }
    let mut name = Name::from_ascii(s).map_err(|e| {
        PluginError::config(format!("tsig_key_name {s:?} is not a valid DNS name: {e}"))
    })?;
    name.set_fqdn(true);
    Ok(name)
}

/// The algorithm for a configured name, and its canonical spelling.
fn parse_algorithm(s: &str) -> Result<(TsigAlgorithm, &'static str), PluginError> {
    let normalized = s.trim().trim_end_matches('.').to_ascii_lowercase();
    match normalized.as_str() {
        "hmac-sha256" => Ok((TsigAlgorithm::HmacSha256, "hmac-sha256")),
        "hmac-sha384" => Ok((TsigAlgorithm::HmacSha384, "hmac-sha384")),
        "hmac-sha512" => Ok((TsigAlgorithm::HmacSha512, "hmac-sha512")),
        "hmac-sha224" | "hmac-sha1" => Err(PluginError::config(format!(
            "tsig_algorithm {normalized} is not supported: hickory-dns 0.26, the DNS library \
             of this plugin, signs with hmac-sha256, hmac-sha384 and hmac-sha512 only; create \
             an hmac-sha256 key for certsmith (tsig-keygen -a hmac-sha256 <name>) and allow \
             it to update the zone"
        ))),
        _ => Err(PluginError::config(format!(
            "tsig_algorithm {s:?} is unknown: use hmac-sha256 (the default), hmac-sha384 or \
             hmac-sha512"
        ))),
    }
}

/// Decodes a BIND-style base64 secret. The message never contains it.
fn decode_secret(s: &str) -> Result<Vec<u8>, PluginError> {
    // BIND key files may split a long secret; whitespace is not part of it.
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(PluginError::config(
            "tsig_secret is empty: set it (or RFC2136_TSIG_SECRET) to the base64 secret of the \
             key, as in the BIND key file's secret \"...\"; line",
        ));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    match engine.decode(compact.as_bytes()) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(PluginError::config(
            "tsig_secret is not valid base64: copy it exactly from the key file's secret \
             \"...\"; line (standard base64 with + and /, padded with =)",
        )),
    }
}

/// A TCP client stream that keeps a copy of the last message the server
/// sent, so that an answer hickory refuses (a TSIG it cannot verify) can
/// still be read for its rcode and TSIG error. One connection carries one
/// update, so "the last message" is the answer to it.
struct Tap<S> {
    inner: S,
    last: Arc<Mutex<Option<Vec<u8>>>>,
}

impl<S> Tap<S> {
    fn new(inner: S) -> Self {
        Tap {
            inner,
            last: Arc::new(Mutex::new(None)),
        }
    }
}

impl<S: DnsClientStream> Stream for Tap<S> {
    type Item = Result<SerialMessage, NetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(msg))) = &next {
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(msg.bytes().to_vec());
        }
        next
    }
}

impl<S: DnsClientStream> DnsClientStream for Tap<S> {
    type Time = S::Time;

    fn name_server_addr(&self) -> SocketAddr {
        self.inner.name_server_addr()
    }
}

certsmith_plugin_api::export_solver!(Rfc2136, manifest = include_str!("../plugin.toml"));

#[cfg(test)]
mod tests {
    use super::*;
    use certsmith_plugin_api::{ErrorKind, Manifest};

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=";

    fn config() -> Rfc2136Config {
        Rfc2136Config {
            server: Some("127.0.0.1:5353".into()),
            tsig_key_name: "certsmith.".into(),
            tsig_algorithm: None,
            tsig_secret: Secret::new(SECRET),
            ttl: Some(60),
            timeout_s: None,
        }
    }

    #[test]
    fn manifest_parses_and_marks_the_secret() -> Result<(), String> {
        let m = Manifest::parse(include_str!("../plugin.toml")).map_err(|e| e.to_string())?;
        assert_eq!(m.code, "rfc2136");
        assert!(m.supports(ChallengeType::Dns01));
        let secret = &m.config["tsig_secret"];
        assert!(secret.secret && secret.required);
        assert_eq!(secret.env.as_deref(), Some("RFC2136_TSIG_SECRET"));
        assert_eq!(m.defaults.ttl, 60);
        assert_eq!(m.defaults.propagation_timeout_s, 60);
        assert_eq!(m.defaults.polling_interval_s, 1);
        Ok(())
    }

    #[test]
    fn server_specs() {
        let ok = |s: &str| ServerSpec::parse(s, "server").map(|v| v.to_string()).ok();
        assert_eq!(ok("ns1.example.com").as_deref(), Some("ns1.example.com:53"));
        assert_eq!(
            ok("ns1.example.com.").as_deref(),
            Some("ns1.example.com:53")
        );
        assert_eq!(ok("127.0.0.1:5353").as_deref(), Some("127.0.0.1:5353"));
        assert_eq!(ok("192.0.2.1").as_deref(), Some("192.0.2.1:53"));
        assert_eq!(ok("2001:db8::1").as_deref(), Some("[2001:db8::1]:53"));
        assert_eq!(ok("[2001:db8::1]:54").as_deref(), Some("[2001:db8::1]:54"));
        assert_eq!(ok("[::1]").as_deref(), Some("[::1]:53"));
        for bad in [
            "", "a:0", "a:x", "a:70000", "[::1", "[x]:1", "[::1]x", "a b", "a/b",
        ] {
            assert!(ok(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn algorithms() {
        for (name, label) in [
            ("hmac-sha256", "hmac-sha256"),
            ("HMAC-SHA384.", "hmac-sha384"),
            ("hmac-sha512", "hmac-sha512"),
        ] {
            assert_eq!(parse_algorithm(name).map(|a| a.1).ok(), Some(label));
        }
        for unsupported in ["hmac-sha224", "hmac-sha1"] {
            let e = parse_algorithm(unsupported).err();
            assert!(
                e.as_ref()
                    .is_some_and(|e| e.kind == ErrorKind::Config && e.message.contains("hickory")),
                "{e:?}"
            );
        }
        assert!(parse_algorithm("hmac-md5").is_err());
    }

    #[test]
    fn bad_secret_is_a_config_error_without_the_value() {
        let mut c = config();
        c.tsig_secret = Secret::new("not*base64!SENSITIVE");
        let e = Rfc2136::new(c).err();
        let e = e.as_ref().map(|e| (e.kind, e.message.clone()));
        assert!(
            e.as_ref().is_some_and(|(k, m)| *k == ErrorKind::Config
                && m.contains("tsig_secret")
                && !m.contains("SENSITIVE")),
            "{e:?}"
        );
        let mut c = config();
        c.tsig_secret = Secret::new("  ");
        assert!(Rfc2136::new(c).is_err());
    }

    #[test]
    fn secret_is_split_like_in_bind_key_files() {
        assert_eq!(
            decode_secret("c2Vj cmV0\n").ok().as_deref(),
            Some(&b"secret"[..])
        );
    }

    #[test]
    fn debug_never_shows_the_secret() -> Result<(), PluginError> {
        let c = config();
        assert!(!format!("{c:?}").contains(SECRET));
        let s = Rfc2136::new(c)?;
        let shown = format!("{s:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("secret-secret"),
            "{shown}"
        );
        Ok(())
    }

    #[test]
    fn hickorys_truncated_hmac_error_is_translated() -> Result<(), PluginError> {
        // What hickory 0.26 reports when a server rejects the key (its answer
        // has an empty MAC), here without the raw answer to read.
        let raw = NetError::from(hickory_net::proto::ProtoError::from(
            "Please file an issue with https://github.com/hickory-dns/hickory-dns to support \
             truncated HMACs with TSIG",
        ));
        let solver = Rfc2136::new(config())?;
        let e = solver.net_error(&raw, None, "127.0.0.1:5353", Op::Add);
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(
            e.message.starts_with(
                "TSIG key rejected by 127.0.0.1:5353: check key name, secret and algorithm (BADKEY or BADSIG"
            ),
            "{}",
            e.message
        );
        assert!(!e.message.contains("file an issue"), "{}", e.message);
        // Timeouts are transient.
        let e = solver.net_error(&NetError::Timeout, None, "127.0.0.1:5353", Op::Delete);
        assert_eq!(e.kind, ErrorKind::Transient);
        Ok(())
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = config();
        c.ttl = Some(-1);
        assert!(Rfc2136::new(c).is_err());
        let mut c = config();
        c.timeout_s = Some(0);
        assert!(Rfc2136::new(c).is_err());
        let mut c = config();
        c.tsig_key_name = " ".into();
        assert!(Rfc2136::new(c).is_err());
    }
}
