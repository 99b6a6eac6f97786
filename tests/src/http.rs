//! A minimal blocking HTTP/1.0 client for loopback management APIs.
//!
//! It exists so that [`crate::Pebble::start`] and [`crate::ChallTestSrv`] work
//! from plain `#[test]` functions as well as from inside a tokio runtime
//! (where `reqwest::blocking` panics). HTTP/1.0 with `Connection: close`
//! means the Go servers answer without chunked encoding and close the
//! connection after the body, so reading to EOF is the whole protocol.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// A response: status code and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send one request to `addr`. With `tls`, speak HTTPS and verify the server
/// against that configuration for the name `127.0.0.1`.
pub(crate) fn request(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    tcp.set_nodelay(true)?;

    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }

    let raw = match tls {
        None => {
            let mut tcp = tcp;
            tcp.write_all(&bytes)?;
            read_all(&mut tcp)?
        }
        Some(config) => {
            let name = ServerName::IpAddress(addr.ip().into());
            let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                .map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            stream.write_all(&bytes)?;
            stream.flush()?;
            read_all(&mut stream)?
        }
    };
    parse_response(&raw)
}

/// Read until EOF. A TLS peer that closes without `close_notify` is
/// accepted: the response carries its own length or ends at the close.
fn read_all(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad HTTP response: {what}"),
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status code"))?;
    let mut body = raw[split + 4..].to_vec();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            return Err(bad("chunked encoding in answer to an HTTP/1.0 request"));
        }
        if name.eq_ignore_ascii_case("content-length")
            && let Ok(len) = value.parse::<usize>()
        {
            if body.len() < len {
                return Err(bad("body shorter than Content-Length"));
            }
            body.truncate(len);
        }
    }
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_status() -> io::Result<()> {
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nabcdef")?;
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"abc");
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\nhello")?;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        Ok(())
    }
}
