//! Turning the `listen` / `tls_listen` settings into bound sockets.
//!
//! This is where "could not bind" turns into an error the operator can act
//! on. Ports 80 and 443 need privileges, are often taken by a web server, and
//! behave differently on dual-stack hosts, so the policy deserves a place of
//! its own rather than a `?` inside the servers:
//!
//! * every configured address must bind, and a failure is a `config` error
//!   that names the address, the setting and the fix;
//! * one exception keeps the default `["[::]:80", "0.0.0.0:80"]` working
//!   everywhere: on a dual-stack host the IPv6 wildcard socket also accepts
//!   IPv4, so the IPv4 wildcard on the same port then fails with
//!   `EADDRINUSE`, which means "already covered", not "taken". Likewise a
//!   host without IPv6 cannot create the IPv6 wildcard socket at all, which
//!   is fine when the IPv4 wildcard on that port is bound.
//!
//! The fixes suggested are built from the address that failed, never from
//! fixed example values, and never suggest what was already configured.

use std::io;
use std::net::SocketAddr;

use certsmith_plugin_api::{PluginError, log};
use tokio::net::{TcpListener, TcpSocket};

/// How many pending connections the kernel queues for us.
const BACKLOG: u32 = 1024;

/// Which setting a list of addresses came from, for messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Setting {
    /// The configuration key, e.g. `listen`.
    pub(crate) key: &'static str,
    /// The port the CA connects to, e.g. 80.
    pub(crate) public_port: u16,
}

/// An unprivileged port to suggest instead of `port`: 8080 for 80, 8443
/// for 443 (the usual alternates), `None` for a port that needs no
/// privileges already.
fn unprivileged(port: u16) -> Option<u16> {
    (port < 1024).then(|| port + 8000)
}

/// Parses a configured address list. Runs in `Solver::new`, so a typo fails
/// before any order is placed.
pub(crate) fn parse(setting: Setting, list: &[String]) -> Result<Vec<SocketAddr>, PluginError> {
    if list.is_empty() {
        return Err(PluginError::config(format!(
            "{key} is empty: give at least one address, e.g. --solver-opt {key}=0.0.0.0:{port}",
            key = setting.key,
            port = setting.public_port,
        )));
    }
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
    for raw in list {
        let addr: SocketAddr = raw.trim().parse().map_err(|_| {
            PluginError::config(format!(
                "{key}: {raw:?} is not an IP address with a port; write e.g. \
                 \"0.0.0.0:{port}\" or \"[::]:{port}\"",
                key = setting.key,
                port = setting.public_port,
            ))
        })?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Why one address did not bind.
#[derive(Debug)]
struct BindFailure {
    /// Creating the socket failed: the address family is unavailable.
    no_socket: bool,
    error: io::Error,
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, BindFailure> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(|error| BindFailure {
        no_socket: true,
        error,
    })?;
    let bound = (|| {
        // Without SO_REUSEADDR a listener started again shortly after the
        // previous one closed fails while its old connections sit in
        // TIME_WAIT. It does not let two listeners share a port on Linux.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    })();
    bound.map_err(|error| BindFailure {
        no_socket: false,
        error,
    })
}

/// Whether the failure of `addr` is covered by another listener in `bound`
/// (see the module docs).
fn covered(addr: SocketAddr, failure: &BindFailure, bound: &[SocketAddr]) -> bool {
    if !addr.ip().is_unspecified() {
        return false;
    }
    let partner_bound = |want_v6: bool| {
        bound
            .iter()
            .any(|b| b.is_ipv6() == want_v6 && b.ip().is_unspecified() && b.port() == addr.port())
    };
    if addr.is_ipv4() {
        failure.error.kind() == io::ErrorKind::AddrInUse && partner_bound(true)
    } else {
        failure.no_socket && partner_bound(false)
    }
}

/// Binds every address synchronously (so that a cancelled caller never
/// leaves half a set behind) and applies the module's error policy.
/// Must run inside a tokio runtime.
pub(crate) fn bind_all(
    setting: Setting,
    addrs: &[SocketAddr],
) -> Result<Vec<TcpListener>, PluginError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut bound = Vec::with_capacity(addrs.len());
    let mut failures = Vec::new();
    for &addr in addrs {
        match bind_one(addr) {
            Ok(l) => {
                bound.push(addr);
                listeners.push(l);
            }
            Err(f) => failures.push((addr, f)),
        }
    }
    for (addr, failure) in failures {
        if covered(addr, &failure, &bound) {
            log::debug!(
                "{addr} not bound ({}); the other wildcard address on port {} covers it",
                failure.error,
                addr.port()
            );
            continue;
        }
        // Dropping `listeners` here closes whatever did bind.
        return Err(bind_error(setting, addr, &failure.error));
    }
    Ok(listeners)
}

fn bind_error(setting: Setting, addr: SocketAddr, e: &io::Error) -> PluginError {
    let Setting { key, public_port } = setting;
    // Another port on the same IP: only for a privileged port, since a
    // port that needs no privileges was chosen on purpose and any other
    // suggestion would be a guess.
    let elsewhere = unprivileged(addr.port()).map(|port| {
        let other = SocketAddr::new(addr.ip(), port);
        format!("pass --solver-opt {key}={other} and forward port {public_port} to it")
    });
    let fix = match (e.kind(), elsewhere) {
        (io::ErrorKind::PermissionDenied, Some(elsewhere)) => format!(
            "ports below 1024 need privileges: run as root, grant certsmith \
             CAP_NET_BIND_SERVICE, or {elsewhere}"
        ),
        (io::ErrorKind::PermissionDenied, None) => {
            "check that a firewall or security policy allows listening there".to_owned()
        }
        (io::ErrorKind::AddrInUse, Some(elsewhere)) => format!(
            "another program (a web server?) already listens there: stop it \
             while certificates are issued, use --solver webroot with its \
             document root, or {elsewhere}"
        ),
        (io::ErrorKind::AddrInUse, None) => format!(
            "another program already listens there: stop it, or pass a free \
             port with --solver-opt {key}=IP:PORT (where port {public_port} is \
             forwarded to)"
        ),
        (io::ErrorKind::AddrNotAvailable, _) => {
            let wildcard = if addr.is_ipv6() { "[::]" } else { "0.0.0.0" };
            format!(
                "that IP address is not assigned to this host: pick one of its \
                 addresses or a wildcard, e.g. --solver-opt {key}={wildcard}:{}",
                addr.port()
            )
        }
        (_, Some(elsewhere)) => format!("check the address, or {elsewhere}"),
        (_, None) => "check the address".to_owned(),
    };
    PluginError::config(format!("cannot listen on {addr} ({key}): {e}; {fix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP: Setting = Setting {
        key: "listen",
        public_port: 80,
    };

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parse_accepts_v4_v6_and_dedups() {
        let got = parse(HTTP, &strings(&["[::]:80", "0.0.0.0:80", " [::]:80 "])).expect("valid");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn parse_rejects_garbage_and_empty() {
        let e = parse(HTTP, &strings(&["localhost"])).expect_err("no port");
        assert_eq!(e.kind, certsmith_plugin_api::ErrorKind::Config);
        assert!(e.message.contains("localhost"), "{}", e.message);
        let e = parse(HTTP, &[]).expect_err("empty");
        assert!(e.message.contains("listen"), "{}", e.message);
    }

    #[tokio::test]
    async fn in_use_address_is_a_config_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = bind_all(HTTP, &[addr]).expect_err("in use");
        assert_eq!(e.kind, certsmith_plugin_api::ErrorKind::Config);
        assert!(e.message.contains(&addr.to_string()), "{}", e.message);
        // A high port was chosen on purpose: no other port is made up,
        // and the address that failed is not suggested back.
        assert!(
            !e.message.contains(&format!("listen={addr}")),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("pass a free port with --solver-opt listen=IP:PORT"),
            "{}",
            e.message
        );
    }

    #[test]
    fn fixes_are_built_from_the_address_that_failed() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let v4: SocketAddr = "192.0.2.7:80".parse().expect("addr");
        let e = bind_error(HTTP, v4, &denied);
        assert!(
            e.message
                .contains("pass --solver-opt listen=192.0.2.7:8080 and forward port 80 to it"),
            "{}",
            e.message
        );
        let tls = Setting {
            key: "tls_listen",
            public_port: 443,
        };
        let v6: SocketAddr = "[::]:443".parse().expect("addr");
        let e = bind_error(tls, v6, &io::Error::from(io::ErrorKind::AddrInUse));
        assert!(
            e.message
                .contains("--solver-opt tls_listen=[::]:8443 and forward port 443"),
            "{}",
            e.message
        );
        let foreign: SocketAddr = "[2001:db8::1]:8081".parse().expect("addr");
        let e = bind_error(
            HTTP,
            foreign,
            &io::Error::from(io::ErrorKind::AddrNotAvailable),
        );
        assert!(e.message.contains("listen=[::]:8081"), "{}", e.message);
        for msg in [
            bind_error(HTTP, v4, &denied).message,
            bind_error(tls, v6, &denied).message,
        ] {
            assert!(!msg.contains("5002") && !msg.contains("5001"), "{msg}");
        }
    }

    #[test]
    fn v4_wildcard_in_use_is_covered_only_by_a_bound_v6_wildcard() {
        let in_use = BindFailure {
            no_socket: false,
            error: io::Error::from(io::ErrorKind::AddrInUse),
        };
        let v4: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        let v6: SocketAddr = "[::]:80".parse().expect("addr");
        let v6_other_port: SocketAddr = "[::]:81".parse().expect("addr");
        assert!(covered(v4, &in_use, &[v6]));
        assert!(!covered(v4, &in_use, &[]));
        assert!(!covered(v4, &in_use, &[v6_other_port]));
        let denied = BindFailure {
            no_socket: false,
            error: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(!covered(v4, &denied, &[v6]));
        let specific: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert!(!covered(specific, &in_use, &[v6]));
        let no_v6 = BindFailure {
            no_socket: true,
            error: io::Error::from(io::ErrorKind::Unsupported),
        };
        assert!(covered(v6, &no_v6, &[v4]));
        assert!(!covered(v6, &in_use, &[v4]));
    }
}
