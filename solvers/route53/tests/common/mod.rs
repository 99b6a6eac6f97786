//! Helpers shared by the Route53 solver's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::{ChallengeRequest, ChallengeType, DnsTarget, Solver};
use certsmith_route53::{Route53, Route53Config};
use certsmith_tests::moto::Moto;

/// The dummy credentials moto accepts (any are accepted unless auth is
/// enforced). Given as options, so no test touches the process environment
/// and the AWS credential chain (which would probe EC2's metadata address)
/// never runs.
pub const ACCESS_KEY_ID: &str = "AKIDTESTING";
pub const SECRET_ACCESS_KEY: &str = "testing-secret-access-key";

/// A configuration pointing at `moto`'s proxy with dummy credentials.
pub fn config(moto: &Moto) -> Route53Config {
    Route53Config {
        endpoint_url: Some(moto.endpoint_url()),
        access_key_id: Some(ACCESS_KEY_ID.to_owned()),
        secret_access_key: Some(SECRET_ACCESS_KEY.into()),
        ..Route53Config::default()
    }
}

/// The solver, with certsmith's HTTP client attached (the solver sends its
/// requests through the host, ABI 1.3).
pub fn solver(config: Route53Config) -> Route53 {
    certsmith_tests::attach_plugin_host();
    Route53::new(config).expect("valid config")
}

pub fn start_moto() -> Moto {
    Moto::start().unwrap_or_else(|e| panic!("{e}"))
}

/// `_acme-challenge.<domain>`.
pub fn fqdn(domain: &str) -> String {
    format!("_acme-challenge.{domain}")
}

/// A dns-01 request for `domain` in `zone` carrying `value`, due in
/// `timeout`.
pub fn request_in(zone: &str, domain: &str, value: &str, timeout: Duration) -> ChallengeRequest {
    let deadline = SystemTime::now() + timeout;
    let name = fqdn(domain);
    let relative = name
        .strip_suffix(&format!(".{zone}"))
        .unwrap_or("@")
        .to_owned();
    ChallengeRequest::new(
        ChallengeType::Dns01,
        domain.to_owned(),
        format!("token-{value}"),
        format!("token-{value}.thumbprint"),
        deadline
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64,
    )
    .with_dns(Some(DnsTarget::new(
        zone.to_owned(),
        relative,
        name,
        value.to_owned(),
        60,
    )))
}

/// [`request_in`] with the domain as its own zone and a minute to go.
pub fn request(zone: &str, value: &str) -> ChallengeRequest {
    request_in(zone, zone, value, Duration::from_secs(60))
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
