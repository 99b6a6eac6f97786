//! Helpers shared by the standalone solver's integration tests: requests,
//! free ports and a raw HTTP client (no HTTP library, to see the bytes).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::{ChallengeRequest, ChallengeType, Solver};
use certsmith_standalone::{Standalone, StandaloneConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port nobody listens on right now, taken below the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`). The solver binds it only when a
/// challenge is presented, and a port from that range, once released, can
/// be given at once to a connection another test opens (nextest runs them
/// side by side), which failed a present with "Address already in use".
/// Each test is a process of its own, so the starting point is drawn from
/// the process id and the clock, and a counter keeps two calls of one
/// process apart.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(FIRST).max(1);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = std::process::id()
        .wrapping_mul(7_919)
        .wrapping_add(nanos)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(101));
    (0..span)
        .filter_map(|i| u16::try_from(FIRST + (start.wrapping_add(i)) % span).ok())
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free TCP port on 127.0.0.1 below the ephemeral range")
}

/// A solver whose http-01 and tls-alpn-01 listeners use fresh loopback ports.
pub fn solver() -> (Standalone, SocketAddr, SocketAddr) {
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let s = Standalone::new(StandaloneConfig {
        listen: vec![http.to_string()],
        tls_listen: vec![tls.to_string()],
    })
    .expect("valid config");
    (s, http, tls)
}

pub fn request(ty: ChallengeType, identifier: &str, token: &str) -> ChallengeRequest {
    let deadline = SystemTime::now() + Duration::from_secs(60);
    ChallengeRequest::new(
        ty,
        identifier.to_owned(),
        token.to_owned(),
        format!("{token}.thumbprint-of-{identifier}"),
        deadline
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64,
    )
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD path` over a fresh connection and reads until close.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> Response {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("server closes the connection")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a blank line ends the head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .expect("HTTP/1.1 status line");
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Whether anything accepts connections on `addr`.
pub async fn is_open(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_ok()
}
