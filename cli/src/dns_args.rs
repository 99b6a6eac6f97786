//! The DNS flags shared by every command that may answer dns-01
//! challenges.

use std::net::SocketAddr;
use std::time::Duration;

use certsmith_core::dns::{DnsOptions, PropagationCheck, parse_server};

/// How dns-01 records are located and checked.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DnsArgs {
    /// A resolver for SOA/NS/CNAME discovery, IP[:PORT] (repeatable)
    /// [default: those of /etc/resolv.conf].
    #[arg(long = "dns-resolver", value_name = "IP[:PORT]", value_parser = parse_addr)]
    pub(crate) dns_resolvers: Vec<SocketAddr>,
    /// Ask these servers, IP[:PORT], whether a record has propagated,
    /// instead of the zone's authoritative nameservers (repeatable; for
    /// split-horizon DNS and tests; authoritative check only).
    #[arg(long = "propagation-server", value_name = "IP[:PORT]", value_parser = parse_addr)]
    pub(crate) propagation_servers: Vec<SocketAddr>,
    /// How to know a record has propagated: `authoritative` asks every
    /// nameserver of the zone directly; `recursive` asks the
    /// --dns-resolver resolvers (or the system's) when the nameservers
    /// cannot be reached; `wait:SECS` checks nothing and waits SECS
    /// [default: authoritative, or the config file's propagation_check;
    /// this flag wins over the config file].
    #[arg(long, value_name = "MODE", value_parser = parse_check)]
    pub(crate) propagation_check: Option<PropagationCheck>,
    /// Give up waiting for a record to reach every nameserver after SECS
    /// [default: the solver's propagation_timeout_s].
    #[arg(long, value_name = "SECS")]
    pub(crate) propagation_timeout: Option<u64>,
    /// Write the record at _acme-challenge.<domain> even if it is a CNAME.
    #[arg(long)]
    pub(crate) no_follow_cname: bool,
}

fn parse_check(s: &str) -> Result<PropagationCheck, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    parse_server(s)
        .ok_or_else(|| format!("'{s}' is not IP or IP:PORT (e.g. 192.0.2.53 or 127.0.0.1:5353)"))
}

impl DnsArgs {
    /// The engine's DNS options.
    pub(crate) fn options(&self) -> DnsOptions {
        if let Some(check) = self.propagation_check
            && check != PropagationCheck::Authoritative
            && !self.propagation_servers.is_empty()
        {
            log::warn!(
                "--propagation-server is not asked with --propagation-check {check}; it only replaces the nameservers of the authoritative check"
            );
        }
        DnsOptions {
            resolvers: self.dns_resolvers.clone(),
            propagation_servers: self.propagation_servers.clone(),
            propagation_check: self.propagation_check,
            follow_cname: !self.no_follow_cname,
            propagation_timeout: self.propagation_timeout.map(Duration::from_secs),
            ..DnsOptions::default()
        }
    }
}
