//! The plugin conformance run behind `certsmith plugin check`.
//!
//! A plugin author's fastest feedback loop: before any CA is involved, run
//! the solver contract (docs/design.md §3) on synthetic challenges: present,
//! present again (idempotent), cleanup, cleanup again (missing is success),
//! and for http-01 fetch the token over HTTP to prove it is really served.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certsmith_plugin_api::{ChallengeRequest, ChallengeType, DnsTarget, Presented};
use serde::Serialize;

use super::error::CallError;
use super::instance::SolverInstance;

/// What to check against.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The identifier used in the synthetic challenges.
    pub domain: String,
    /// Where http-01 tokens should be reachable, e.g. `http://127.0.0.1:5002`.
    pub http_base: String,
    /// The deadline given to each call.
    pub call_timeout: Duration,
    /// For dns-01: a server to ask (without recursion) whether the record is
    /// really served after present and gone after cleanup. Without
    /// [`zone`](CheckOptions::zone), the zone is also found by asking it
    /// for the SOA of `_acme-challenge.<domain>` (after CNAMEs), as a real
    /// run does.
    pub dns_server: Option<std::net::SocketAddr>,
    /// For dns-01: the zone to put in the request. `None`: found by SOA
    /// through `dns_server`, else `domain` itself.
    pub zone: Option<String>,
}

/// Where the synthetic dns-01 record goes: (zone, name relative to it,
/// fqdn, primary nameserver).
type Placement = (String, String, String, Option<String>);

/// The zone of `_acme-challenge.<domain>`: `opts.zone`, else found by SOA
/// through `opts.dns_server`, else the domain. The second value is the
/// outcome of the SOA lookup, when one was made.
async fn place(opts: &CheckOptions) -> (Placement, Option<Result<String, String>>) {
    let fqdn = format!("_acme-challenge.{}", opts.domain);
    let relative_to = |zone: &str| {
        fqdn.strip_suffix(zone)
            .and_then(|r| r.strip_suffix('.'))
            .map_or_else(|| "@".to_owned(), str::to_owned)
    };
    if let Some(zone) = &opts.zone {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        return ((zone.clone(), relative_to(&zone), fqdn.clone(), None), None);
    }
    let fallback = (
        opts.domain.clone(),
        "_acme-challenge".to_owned(),
        fqdn.clone(),
        None,
    );
    let Some(server) = opts.dns_server else {
        return (fallback, None);
    };
    let dns = crate::dns::DnsOptions {
        resolvers: vec![server],
        // Only the zone is wanted: no nameserver lookups.
        propagation_check: Some(crate::dns::PropagationCheck::Wait(Duration::ZERO)),
        follow_cname: true,
        ..Default::default()
    };
    match crate::dns::resolve_challenge_name(&dns, &opts.domain).await {
        Ok(r) => {
            let detail = format!(
                "{server}: {} is in zone {} (name {}{})",
                r.effective,
                r.zone,
                r.relative,
                r.primary_ns
                    .as_deref()
                    .map(|ns| format!(", primary {ns}"))
                    .unwrap_or_default()
            );
            (
                (r.zone, r.relative, r.effective, r.primary_ns),
                Some(Ok(detail)),
            )
        }
        Err(e) => (
            fallback,
            Some(Err(format!(
                "asking {server} for the SOA of {fqdn}: {e}; using {} as the zone",
                opts.domain
            ))),
        ),
    }
}

/// The outcome of one step.
#[derive(Clone, Debug, Serialize)]
pub struct CheckStep {
    /// The challenge type exercised.
    pub challenge_type: String,
    /// What was done, e.g. "present (again)".
    pub step: String,
    /// Whether it met the contract.
    pub ok: bool,
    /// Details: what was observed, or what went wrong.
    pub detail: String,
}

/// The `http_base` implied by a configuration: its first `listen` address
/// with wildcard hosts mapped to loopback, else `http://127.0.0.1`.
pub fn default_http_base(instance: &SolverInstance) -> String {
    let first = instance
        .config()
        .get("listen")
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str());
    match first {
        Some(addr) => {
            let addr = addr
                .replace("0.0.0.0", "127.0.0.1")
                .replace("[::]", "[::1]");
            let addr = if addr.starts_with(':') {
                format!("127.0.0.1{addr}")
            } else {
                addr
            };
            format!("http://{addr}")
        }
        None => "http://127.0.0.1".to_owned(),
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    // An all-zero token would still exercise the contract; the RNG failing
    // is not worth aborting a check for.
    let _ = aws_lc_rs::rand::fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn synthetic_request(
    ty: ChallengeType,
    opts: &CheckOptions,
    ttl: u32,
    placement: &Placement,
) -> ChallengeRequest {
    let token = random_token();
    let thumbprint = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"certsmith plugin check").as_ref(),
    );
    let key_authorization = format!("{token}.{thumbprint}");
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        + opts.call_timeout.as_millis() as u64;
    let (zone, name, fqdn, primary_ns) = placement.clone();
    let dns = (ty == ChallengeType::Dns01).then(|| {
        DnsTarget::new(
            zone,
            name,
            fqdn,
            URL_SAFE_NO_PAD.encode(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes())
                    .as_ref(),
            ),
            ttl,
        )
        .with_primary_ns(primary_ns)
    });
    ChallengeRequest::new(ty, opts.domain.clone(), token, key_authorization, deadline).with_dns(dns)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let resp = client.get(url).send().await.map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        s
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn call_detail(e: &CallError) -> String {
    match e {
        CallError::Plugin(b) => format!("{} error: {}", b.kind, b.message),
        other => other.to_string(),
    }
}

/// Runs the contract for every challenge type the plugin declares.
pub async fn run_checks(instance: &SolverInstance, opts: &CheckOptions) -> Vec<CheckStep> {
    let mut steps = Vec::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .ok();
    for &ty in &instance.manifest().challenge_types {
        let mut placement = None;
        if ty == ChallengeType::Dns01 {
            let (p, looked_up) = place(opts).await;
            if let Some(outcome) = looked_up {
                // A server that answers no SOA (a mock such as
                // pebble-challtestsrv) is not the plugin's fault: the check
                // goes on with the domain as the zone and says so.
                let detail = match outcome {
                    Ok(d) | Err(d) => d,
                };
                let ok = true;
                steps.push(CheckStep {
                    challenge_type: ty.to_string(),
                    step: "zone found by SOA".to_owned(),
                    ok,
                    detail,
                });
            }
            placement = Some(p);
        }
        let placement = placement.unwrap_or_default();
        let req = synthetic_request(ty, opts, instance.manifest().defaults.ttl, &placement);
        let url = format!(
            "{}/.well-known/acme-challenge/{}",
            opts.http_base.trim_end_matches('/'),
            req.token
        );
        let mut push = |step: &str, ok: bool, detail: String| {
            steps.push(CheckStep {
                challenge_type: ty.to_string(),
                step: step.to_owned(),
                ok,
                detail,
            });
        };

        let mut presented = Presented::default();
        let mut present_ok = true;
        for step in ["present", "present (again, must be idempotent)"] {
            match instance.present(&req).await {
                Ok(p) => {
                    push(step, true, format!("handle {}", p.handle));
                    presented = p;
                }
                Err(e) => {
                    push(step, false, call_detail(&e));
                    present_ok = false;
                    break;
                }
            }
            if let (Some(server), Some(d)) = (opts.dns_server, &req.dns) {
                let step = "TXT record served by the DNS server";
                match crate::dns::txt_values_at(server, &d.fqdn, Duration::from_secs(2)).await {
                    Ok(v) if v.contains(&d.value) => push(
                        step,
                        true,
                        format!("{server} serves {} at {}", d.value, d.fqdn),
                    ),
                    Ok(v) => push(
                        step,
                        false,
                        format!("{server} serves {:?} at {}, not {}", v, d.fqdn, d.value),
                    ),
                    Err(e) => push(step, false, format!("asking {server}: {e}")),
                }
            }
            if ty == ChallengeType::Http01 {
                match &client {
                    Some(c) => match fetch(c, &url).await {
                        Ok((200, body)) if body.trim_end() == req.key_authorization => {
                            push("token served over HTTP", true, format!("GET {url} → 200"))
                        }
                        Ok((200, _)) => push(
                            "token served over HTTP",
                            false,
                            format!("GET {url} → 200 but the body is not the key authorization"),
                        ),
                        Ok((status, _)) => push(
                            "token served over HTTP",
                            false,
                            format!(
                                "GET {url} → {status}; the token is not served there (pass --http-base with the URL where this plugin's files are served)"
                            ),
                        ),
                        Err(e) => push(
                            "token served over HTTP",
                            false,
                            format!(
                                "GET {url} failed: {e} (pass --http-base with the URL where this plugin's files are served)"
                            ),
                        ),
                    },
                    None => push(
                        "token served over HTTP",
                        false,
                        "no HTTP client could be built".to_owned(),
                    ),
                }
            }
        }

        // Clean up even after a failed present: that is the contract too.
        for step in ["cleanup", "cleanup (again, missing must be success)"] {
            match instance.cleanup(&req, &presented).await {
                Ok(()) => push(step, true, String::new()),
                Err(e) => push(step, false, call_detail(&e)),
            }
        }
        if let (true, Some(server), Some(d)) = (present_ok, opts.dns_server, &req.dns) {
            let step = "TXT record gone after cleanup";
            match crate::dns::txt_values_at(server, &d.fqdn, Duration::from_secs(2)).await {
                Ok(v) if v.contains(&d.value) => push(
                    step,
                    false,
                    format!("{server} still serves {} at {}", d.value, d.fqdn),
                ),
                Ok(_) => push(step, true, format!("{server} no longer serves it")),
                Err(e) => push(step, false, format!("asking {server}: {e}")),
            }
        }
        if present_ok
            && ty == ChallengeType::Http01
            && let Some(c) = &client
        {
            match fetch(c, &url).await {
                Ok((200, _)) => push(
                    "token gone after cleanup",
                    false,
                    format!("GET {url} still answers 200"),
                ),
                Ok((status, _)) => push(
                    "token gone after cleanup",
                    true,
                    format!("GET {url} → {status}"),
                ),
                Err(_) => push(
                    "token gone after cleanup",
                    true,
                    format!("GET {url} → nothing listening"),
                ),
            }
        }
    }
    steps
}
