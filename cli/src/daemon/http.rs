//! The daemon's HTTP endpoint (`--metrics-listen`): `/metrics` for
//! Prometheus, `/healthz` for a supervisor or a load balancer.
//!
//! Why this module exists: two read-only pages over HTTP/1.1 do not need
//! an HTTP server library; a request line, headers up to a blank line,
//! one response and `Connection: close` are enough for Prometheus, curl
//! and Kubernetes probes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::Shared;

/// The most a request head may take; a longer one is refused.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading the store may take before `/healthz` calls it stuck.
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves connections on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, shared.clone()));
            }
            Err(e) => {
                log::warn!("metrics endpoint: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, shared: Arc<Shared>) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => {
            let _ = respond(&mut stream, 400, "text/plain", "bad request\n", false).await;
            return;
        }
    };
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or_default();
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(&mut stream, 405, "text/plain", "use GET\n", false).await;
        return;
    }
    let (status, kind, body) = match path {
        "/metrics" => match shared.scrape().await {
            Ok(text) => (200, "text/plain; version=0.0.4; charset=utf-8", text),
            Err(why) => (503, "text/plain; charset=utf-8", format!("{why}\n")),
        },
        "/healthz" => match shared.health().await {
            Ok(()) => (200, "text/plain; charset=utf-8", "ok\n".to_owned()),
            Err(why) => (503, "text/plain; charset=utf-8", format!("{why}\n")),
        },
        _ => (
            404,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
    };
    let _ = respond(&mut stream, status, kind, &body, head_only).await;
}

/// The request head (up to the blank line), or `None` when the client
/// closed early or sent too much.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}
