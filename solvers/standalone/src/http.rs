//! The smallest HTTP/1.1 server that answers http-01 validation requests.
//!
//! A validation request is one `GET /.well-known/acme-challenge/<token>`
//! per connection, so a full HTTP stack (hyper and friends) would add a lot
//! of code and build time for nothing. This one reads a bounded request head
//! with a timeout, answers exactly one request, and closes the connection:
//!
//! * `GET`/`HEAD` of a presented token: 200, `text/plain`, the key
//!   authorization (headers only for `HEAD`);
//! * any other path or token: 404;
//! * other methods: 405; a malformed head: 400; a head over 8 KiB: 431.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certsmith_plugin_api::log;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::service::Entries;

/// The path prefix of every http-01 resource (RFC 8555 §8.3).
const PREFIX: &str = "/.well-known/acme-challenge/";
/// The largest request head we read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its head, and we to send the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener; more are closed at once, so a
/// flood cannot exhaust memory or file descriptors.
const MAX_CONNECTIONS: usize = 512;

/// Presented http-01 challenges: token → key authorization.
pub(crate) type HttpEntries = Entries<Arc<str>>;

/// Starts one accept loop per listener.
pub(crate) fn spawn(listeners: Vec<TcpListener>, entries: Arc<HttpEntries>) -> Vec<JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, entries.clone())))
        .collect()
}

async fn accept_loop(listener: TcpListener, entries: Arc<HttpEntries>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    log::warn!("http-01: too many connections, dropping one from {peer}");
                    continue;
                };
                let entries = entries.clone();
                tokio::spawn(async move {
                    serve(stream, peer, &entries).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("http-01: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why no request line could be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends the head, at most [`MAX_HEAD`] bytes.
/// Reading the whole head, not only the request line, matters: closing a
/// socket with unread input makes the kernel send a reset, which can destroy
/// the response before the client reads it.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&head[searched_from..]) {
            head.truncate(searched_from + end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The offset just past `\r\n\r\n` (or a bare `\n\n`), if present.
fn find_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    /// `GET` (`head == false`) or `HEAD` of a path.
    Get { head: bool, path: &'a str },
    /// Another method.
    OtherMethod,
    /// Not an HTTP/1.x request line.
    Malformed,
}

fn parse_request(head: &[u8]) -> Request<'_> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Request::Malformed;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || target.is_empty() {
        return Request::Malformed;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::OtherMethod,
    };
    // Absolute form (`GET http://host/path`), which proxies send.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    Request::Get { head, path }
}

/// The response to one request: status line and body.
fn respond(head: &[u8], entries: &HttpEntries) -> (&'static str, Option<Arc<str>>, bool) {
    match parse_request(head) {
        Request::Get { head, path } => {
            let answer = path
                .strip_prefix(PREFIX)
                .filter(|t| !t.is_empty())
                .and_then(|token| entries.read().get(token).cloned());
            match answer {
                Some(key_authorization) => ("200 OK", Some(key_authorization), head),
                None => ("404 Not Found", None, head),
            }
        }
        Request::OtherMethod => ("405 Method Not Allowed", None, false),
        Request::Malformed => ("400 Bad Request", None, false),
    }
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, entries: &HttpEntries) {
    let (status, body, head_only) =
        match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
            Ok(Ok(head)) => respond(&head, entries),
            Ok(Err(HeadError::TooLarge)) => ("431 Request Header Fields Too Large", None, false),
            Ok(Err(HeadError::Closed)) => return,
            Err(_) => {
                log::debug!("http-01: {peer} sent no complete request within {IO_TIMEOUT:?}");
                return;
            }
        };
    let body: Arc<str> = body.unwrap_or_else(|| Arc::from(format!("{status}\n").as_str()));
    log::debug!("http-01: {peer}: {status}");
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\nServer: certsmith\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(&body);
    }
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(IO_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        log::debug!("http-01: answering {peer} failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_origin_and_absolute_form() {
        assert_eq!(
            parse_request(b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Get {
                head: false,
                path: "/.well-known/acme-challenge/abc"
            }
        );
        assert_eq!(
            parse_request(b"HEAD http://example.com/a?b=c HTTP/1.0\r\n\r\n"),
            Request::Get {
                head: true,
                path: "/a"
            }
        );
        assert_eq!(
            parse_request(b"GET http://example.com HTTP/1.1\r\n\r\n"),
            Request::Get {
                head: false,
                path: "/"
            }
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\n\r\n"),
            Request::OtherMethod
        );
        assert_eq!(parse_request(b"GET /\r\n\r\n"), Request::Malformed);
        assert_eq!(parse_request(b"GET / SPDY/3\r\n\r\n"), Request::Malformed);
        assert_eq!(parse_request(b"\xff\xfe\r\n\r\n"), Request::Malformed);
    }

    #[test]
    fn finds_end_of_head() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn empty_token_is_not_found() {
        let entries = Entries::default();
        let (status, _, _) = respond(
            b"GET /.well-known/acme-challenge/ HTTP/1.1\r\n\r\n",
            &entries,
        );
        assert_eq!(status, "404 Not Found");
    }
}
