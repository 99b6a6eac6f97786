//! Helpers shared by the standalone solver's integration tests: requests,
//! free ports and a raw HTTP client (no HTTP library, to see the bytes).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::{ChallengeRequest, ChallengeType, Solver};
use certsmith_standalone::{Standalone, StandaloneConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port nobody listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
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
