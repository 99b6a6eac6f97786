//! A plain-HTTP proxy that answers like a rate-limiting gateway in front of
//! an API that has no rate limits of its own (PowerDNS's webserver): the
//! next requests get the injected 429/503 with `Retry-After`, every other
//! request is forwarded to the upstream as it came (method, path,
//! `X-API-Key`, `Authorization`, body) and its answer returned.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

use crate::HarnessError;
use crate::conn_server::ConnServer;
use crate::mini_http::{read_request, respond, send};

/// A rate-limit answer a stand-in gives instead of serving the next
/// request: `status` (429 or 503) with `Retry-After: retry_after_secs`.
/// The httpreq hook, the acme-dns stand-in and [`ThrottleProxy`] take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// The status.
    pub status: u16,
    /// Seconds.
    pub retry_after_secs: u64,
}

#[derive(Debug, Default)]
struct State {
    failures: VecDeque<Throttle>,
    /// (method, path, status) of every request.
    log: Vec<(String, String, u16)>,
}

/// The running proxy; stopped on drop.
#[derive(Debug)]
pub struct ThrottleProxy {
    server: ConnServer,
    state: Arc<Mutex<State>>,
}

impl ThrottleProxy {
    /// A proxy forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Self, HarnessError> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: "binding the throttle proxy's port".into(),
                source,
            })?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        let server = ConnServer::spawn(listener, "throttle-proxy", move |stream| {
            let _ = serve(stream, &st, upstream);
        })?;
        Ok(ThrottleProxy { server, state })
    }

    /// `http://<proxy>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Answers the next request with `f` instead of forwarding it.
    pub fn inject(&self, f: Throttle) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
            .push_back(f);
    }

    /// (method, path, status) of every request so far.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log
            .clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, upstream: SocketAddr) -> std::io::Result<()> {
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let injected = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .failures
        .pop_front();
    let (status, body, extra) = match injected {
        Some(Throttle {
            status,
            retry_after_secs,
        }) => (
            status,
            "{\"error\": \"slow down\"}".to_owned(),
            vec![("Retry-After", retry_after_secs.to_string())],
        ),
        None => {
            let headers: Vec<(&str, &str)> = ["x-api-key", "authorization"]
                .into_iter()
                .filter_map(|h| req.header(h).map(|v| (h, v)))
                .collect();
            let body = (!req.body.is_empty()).then_some(req.body.as_slice());
            match send(upstream, &req.method, &req.path, &headers, body) {
                Ok((s, b)) => (s, b, Vec::new()),
                Err(e) => (502, format!("{{\"error\": \"upstream: {e}\"}}"), Vec::new()),
            }
        }
    };
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .log
        .push((req.method.clone(), req.path.clone(), status));
    respond(stream, status, &body, &extra)
}
