//! A lego-httpreq-style hook server: the small web service people put in
//! front of a DNS lego has no provider for. `POST /present` and `POST
//! /cleanup` with `{"fqdn", "value"}` (lego's default mode) add and delete
//! that TXT value in a real [`Bind`] through `nsupdate`, so Pebble's VA sees
//! it. It checks HTTP basic authentication when given credentials, keeps a
//! request log, and answers injected failures (429/503 with `Retry-After`)
//! the way a rate-limiting proxy in front of such a hook would.
//! RAW-mode bodies (`{"domain", "token", "keyAuth"}`) are logged and
//! answered 400: computing the record is the hook's business, and this one
//! does not.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::conn_server::ConnServer;
use crate::mini_http::{read_request, respond};
use crate::nsupdate::Updater;
use crate::throttle_proxy::Throttle;
use crate::{Bind, HarnessError};

/// One request the hook received.
#[derive(Debug, Clone)]
pub struct HookRequest {
    /// `/present`, `/cleanup`, ...
    pub path: String,
    /// The JSON body.
    pub body: Value,
    /// Whether it carried the right credentials (always true without any).
    pub authorized: bool,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    failures: VecDeque<Throttle>,
    log: Vec<HookRequest>,
}

/// The running hook server; stopped on drop.
#[derive(Debug)]
pub struct HttpreqHook {
    server: ConnServer,
    state: Arc<Mutex<State>>,
    prefix: String,
}

impl HttpreqHook {
    /// Serves `<prefix>/present` and `<prefix>/cleanup` (prefix e.g.
    /// `/acme`, or empty), writing into `bind`; with `credentials`, every
    /// request must carry them as basic auth.
    pub fn start(
        bind: &Bind,
        prefix: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<Self, HarnessError> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: "binding the httpreq hook's port".into(),
                source,
            })?;
        let state = Arc::new(Mutex::new(State::default()));
        let updater = Updater::new(bind);
        let expected = credentials.map(|(u, p)| {
            format!(
                "Basic {}",
                crate::bind::base64(format!("{u}:{p}").as_bytes())
            )
        });
        let prefix = prefix.trim_end_matches('/').to_owned();
        let (st, pre) = (Arc::clone(&state), prefix.clone());
        let server = ConnServer::spawn(listener, "httpreq-hook", move |stream| {
            let _ = serve(stream, &st, &updater, expected.as_deref(), &pre);
        })?;
        Ok(HttpreqHook {
            server,
            state,
            prefix,
        })
    }

    /// The endpoint to configure (`HTTPREQ_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}{}", self.server.addr(), self.prefix)
    }

    /// Answers the next request with `f` instead of serving it.
    pub fn inject(&self, f: Throttle) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
            .push_back(f);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<HookRequest> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log
            .clone()
    }
}

fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    updater: &Updater,
    expected: Option<&str>,
    prefix: &str,
) -> std::io::Result<()> {
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let authorized = expected.is_none_or(|e| req.header("authorization") == Some(e));
    let injected = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .failures
        .pop_front();
    let action = req.path.strip_prefix(prefix).unwrap_or("");
    let (status, text, retry_after) = if let Some(Throttle {
        status,
        retry_after_secs,
    }) = injected
    {
        (status, "slow down".to_owned(), Some(retry_after_secs))
    } else if !authorized {
        (401, "Unauthorized".to_owned(), None)
    } else if req.method != "POST" || !matches!(action, "/present" | "/cleanup") {
        (404, "no such hook".to_owned(), None)
    } else {
        let fqdn = body.get("fqdn").and_then(Value::as_str);
        let value = body.get("value").and_then(Value::as_str);
        match (fqdn, value) {
            (Some(f), Some(v)) if f.ends_with('.') => {
                let done = if action == "/present" {
                    updater.add_txt(f, v)
                } else {
                    updater.delete_txt(f, v)
                };
                match done {
                    Ok(()) => (200, String::new(), None),
                    Err(e) => (500, format!("nsupdate failed: {e}"), None),
                }
            }
            (Some(f), Some(_)) => (400, format!("fqdn {f:?} has no trailing dot"), None),
            _ => (
                400,
                "this hook wants {\"fqdn\", \"value\"} (lego's default mode)".to_owned(),
                None,
            ),
        }
    };
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .log
        .push(HookRequest {
            path: req.path.clone(),
            body,
            authorized,
            status,
        });
    let extra: Vec<(&str, String)> = retry_after
        .map(|s| vec![("Retry-After", s.to_string())])
        .unwrap_or_default();
    respond(stream, status, &text, &extra)
}
