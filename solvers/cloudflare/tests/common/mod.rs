//! Helpers shared by the Cloudflare solver's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_cloudflare::{Cloudflare, CloudflareConfig};
use certsmith_plugin_api::{ChallengeRequest, ChallengeType, DnsTarget, Solver};
use certsmith_tests::cloudflare::{CloudflareStandIn, LoggedRequest};

/// A solver talking to `cf` with its full-access token.
pub fn solver(cf: &CloudflareStandIn) -> Cloudflare {
    solver_with_token(cf, cf.token())
}

/// A solver talking to `cf` with `token`.
pub fn solver_with_token(cf: &CloudflareStandIn, token: &str) -> Cloudflare {
    solver_with_config(config(cf, token))
}

/// A solver with `config`, whose requests go through certsmith's HTTP
/// client as when certsmith loads the plugin. Every solver of these tests
/// is made here: without a host attached, each request fails.
pub fn solver_with_config(config: CloudflareConfig) -> Cloudflare {
    certsmith_tests::attach_plugin_host();
    Cloudflare::new(config).expect("valid config")
}

/// The configuration for `cf` with `token`.
pub fn config(cf: &CloudflareStandIn, token: &str) -> CloudflareConfig {
    let mut c = CloudflareConfig::new(token);
    c.api_base = cf.api_base();
    c
}

/// `_acme-challenge.<zone>`.
pub fn fqdn(zone: &str) -> String {
    format!("_acme-challenge.{zone}")
}

/// A dns-01 request for `value` at `_acme-challenge.<zone>`, due in 30 s.
pub fn request(zone: &str, value: &str) -> ChallengeRequest {
    request_due_in(zone, value, Duration::from_secs(30))
}

/// A dns-01 request whose deadline is `due` from now.
pub fn request_due_in(zone: &str, value: &str, due: Duration) -> ChallengeRequest {
    let deadline = SystemTime::now() + due;
    ChallengeRequest::new(
        ChallengeType::Dns01,
        zone.to_owned(),
        "tok".to_owned(),
        "tok.thumbprint".to_owned(),
        deadline
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64,
    )
    .with_dns(Some(DnsTarget::new(
        zone.to_owned(),
        "_acme-challenge".to_owned(),
        fqdn(zone),
        value.to_owned(),
        120,
    )))
}

/// "METHOD /path" of each request, in order.
pub fn calls(log: &[LoggedRequest]) -> Vec<String> {
    log.iter()
        .map(|r| format!("{} {} → {}", r.method, r.path, r.status))
        .collect()
}
