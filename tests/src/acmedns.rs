//! An acme-dns stand-in (joohoi/acme-dns is not packaged for Debian): its
//! HTTP API as acme-dns 1.0 implements it (`api.go`, `auth.go`,
//! `validation.go`), with what it serves written into a real [`Bind`]
//! zone through `nsupdate`, so Pebble's VA resolves the CNAMEs users
//! create and sees the values.
//!
//! * `POST /register` (optional `{"allowfrom": [CIDR]}`) → 201
//!   `{username (UUID), password (40 characters), fulldomain, subdomain
//!   (UUID), allowfrom}`; a malformed CIDR → 400
//!   `{"error": "invalid_allowfrom_cidr"}`;
//! * `POST /update` with `X-Api-User` and `X-Api-Key` and `{subdomain,
//!   txt}` → 200 `{"txt": ...}`; unknown user, wrong key or another
//!   account's subdomain → 401 `{"error": "forbidden"}`; a value that is
//!   not 43 characters → 400 `{"error": "bad_txt"}`. Like acme-dns, each
//!   account keeps its **two most recent** values (an update replaces the
//!   older one) and nothing is ever deleted;
//! * `GET /health` → 200.
//!
//! Injected failures (429/503 with `Retry-After`) stand for a proxy in
//! front of it.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use crate::conn_server::ConnServer;
use crate::mini_http::{read_request, respond};
use crate::nsupdate::Updater;
use crate::throttle_proxy::Throttle;
use crate::{Bind, HarnessError};

#[derive(Debug, Clone)]
struct Account {
    password: String,
    subdomain: String,
    /// Oldest first, at most two.
    values: VecDeque<String>,
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct AcmeDnsRequest {
    /// `/register`, `/update`, ...
    pub path: String,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<String, Account>,
    failures: VecDeque<Throttle>,
    log: Vec<AcmeDnsRequest>,
}

/// The running stand-in; stopped on drop.
#[derive(Debug)]
pub struct AcmeDnsStandIn {
    server: ConnServer,
    state: Arc<Mutex<State>>,
    zone: String,
}

impl AcmeDnsStandIn {
    /// Serves accounts under `zone` (e.g. `auth.test`, a zone of `bind`).
    pub fn start(bind: &Bind, zone: &str) -> Result<Self, HarnessError> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| HarnessError::Io {
                context: "binding the acme-dns stand-in's port".into(),
                source,
            })?;
        let state = Arc::new(Mutex::new(State::default()));
        let updater = Updater::new(bind);
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let (st, z) = (Arc::clone(&state), zone.clone());
        let server = ConnServer::spawn(listener, "acme-dns", move |stream| {
            let _ = serve(stream, &st, &updater, &z);
        })?;
        Ok(AcmeDnsStandIn {
            server,
            state,
            zone,
        })
    }

    /// The API base (`ACME_DNS_API_BASE`).
    pub fn api_base(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The zone accounts live under.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Answers the next request with `f`.
    pub fn inject(&self, f: Throttle) {
        self.state().failures.push_back(f);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<AcmeDnsRequest> {
        self.state().log.clone()
    }

    /// The values an account's subdomain serves, oldest first.
    pub fn values(&self, subdomain: &str) -> Vec<String> {
        self.state()
            .accounts
            .values()
            .find(|a| a.subdomain == subdomain)
            .map(|a| a.values.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Registers an account as a client would (`POST /register`); the
    /// answer's JSON, exactly what certbot's acme-dns hook stores.
    pub fn register(&self) -> Result<Value, HarnessError> {
        let (status, body) =
            crate::mini_http::send(self.server.addr(), "POST", "/register", &[], None).map_err(
                |e| HarnessError::Http {
                    method: "POST",
                    url: format!("{}/register", self.api_base()),
                    message: e.to_string(),
                    log_path: "(in-process acme-dns stand-in)".into(),
                },
            )?;
        serde_json::from_str(&body).map_err(|e| HarnessError::Http {
            method: "POST",
            url: format!("{}/register", self.api_base()),
            message: format!("status {status}, {e}: {body}"),
            log_path: "(in-process acme-dns stand-in)".into(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    let bytes = crate::bind::random_bytes(n).unwrap_or_else(|_| vec![7; n]);
    bytes
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
        .collect()
}

fn uuid() -> String {
    let h = random_from(b"0123456789abcdef", 32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits <= 32,
        Ok(std::net::IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

fn error(e: &str) -> String {
    json!({ "error": e }).to_string()
}

fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    updater: &Updater,
    zone: &str,
) -> std::io::Result<()> {
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    let injected = st.failures.pop_front();
    let (status, body, retry_after) = match (injected, req.method.as_str(), req.path.as_str()) {
        (
            Some(Throttle {
                status,
                retry_after_secs,
            }),
            _,
            _,
        ) => (status, error("try_later"), Some(retry_after_secs)),
        (None, "GET", "/health") => (200, String::new(), None),
        (None, "POST", "/register") => {
            let asked: Value = if req.body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&req.body).unwrap_or(Value::Null)
            };
            let allow: Vec<String> = asked
                .get("allowfrom")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if asked.is_null() {
                (400, error("malformed_json_payload"), None)
            } else if !allow.iter().all(|c| valid_cidr(c)) {
                (400, error("invalid_allowfrom_cidr"), None)
            } else {
                let username = uuid();
                let subdomain = uuid();
                let password = random_from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                    40,
                );
                st.accounts.insert(
                    username.clone(),
                    Account {
                        password: password.clone(),
                        subdomain: subdomain.clone(),
                        values: VecDeque::new(),
                    },
                );
                let answer = json!({
                    "allowfrom": allow,
                    "fulldomain": format!("{subdomain}.{zone}"),
                    "password": password,
                    "subdomain": subdomain,
                    "username": username,
                });
                (201, answer.to_string(), None)
            }
        }
        (None, "POST", "/update") => {
            let user = req.header("x-api-user").unwrap_or_default().to_owned();
            let key = req.header("x-api-key").unwrap_or_default().to_owned();
            let asked: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let sub = asked.get("subdomain").and_then(Value::as_str).unwrap_or("");
            let txt = asked
                .get("txt")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            match st.accounts.get_mut(&user) {
                Some(a) if a.password == key && a.subdomain == sub => {
                    if txt.chars().count() != 43 {
                        (400, error("bad_txt"), None)
                    } else {
                        a.values.push_back(txt.clone());
                        while a.values.len() > 2 {
                            a.values.pop_front();
                        }
                        let values: Vec<String> = a.values.iter().cloned().collect();
                        let fqdn = format!("{}.{zone}", a.subdomain);
                        match updater.set_txt(&fqdn, &values) {
                            Ok(()) => (200, json!({ "txt": txt }).to_string(), None),
                            Err(_) => (500, error("db_error"), None),
                        }
                    }
                }
                _ => (401, error("forbidden"), None),
            }
        }
        _ => (404, "404 page not found".to_owned(), None),
    };
    st.log.push(AcmeDnsRequest {
        path: req.path.clone(),
        status,
    });
    drop(st);
    let extra: Vec<(&str, String)> = retry_after
        .map(|s| vec![("Retry-After", s.to_string())])
        .unwrap_or_default();
    respond(stream, status, &body, &extra)
}
