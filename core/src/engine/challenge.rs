//! Choosing a challenge per authorization and describing it to the solver.

use std::time::{SystemTime, UNIX_EPOCH};

use certsmith_plugin_api::{ChallengeRequest, ChallengeType, DnsTarget, Manifest};

use crate::acme::{AuthzInfo, ChallengeInfo};
use crate::dns::{self, ResolvedName};
use crate::error::IssueError;

/// The challenge type the engine will pick for an identifier, if the CA
/// offers every type: http-01, then tls-alpn-01, then dns-01; only dns-01
/// for a wildcard ([RFC 8555 §8.4](https://www.rfc-editor.org/rfc/rfc8555#section-8.4)).
pub(super) fn preference(wildcard: bool) -> &'static [ChallengeType] {
    if wildcard {
        &[ChallengeType::Dns01]
    } else {
        &[
            ChallengeType::Http01,
            ChallengeType::TlsAlpn01,
            ChallengeType::Dns01,
        ]
    }
}

/// The one place a dns-01 [`DnsTarget`] is computed (docs/design.md §3 steps
/// 1-3): the value from the key authorization, the name after CNAMEs, the
/// zone and its primary from the SOA walk.
pub(super) fn dns_target(
    resolved: &ResolvedName,
    challenge: &ChallengeInfo,
    manifest: &Manifest,
) -> DnsTarget {
    DnsTarget::new(
        resolved.zone.clone(),
        resolved.relative.clone(),
        resolved.effective.clone(),
        dns::txt_value(&challenge.key_authorization),
        manifest.defaults.ttl,
    )
    .with_primary_ns(resolved.primary_ns.clone())
}

pub(super) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long one solver call may take, from the manifest.
pub(crate) fn call_timeout(manifest: &Manifest) -> std::time::Duration {
    std::time::Duration::from_secs(manifest.defaults.call_timeout_s)
}

/// The deadline of one solver call, from the manifest's call timeout.
pub(super) fn call_deadline(manifest: &Manifest) -> u64 {
    now_unix_ms().saturating_add(manifest.defaults.call_timeout_s.saturating_mul(1000))
}

/// Picks the challenge to answer for `authz` among those the CA offers:
/// the first of `wanted` (the request's preference order; empty: the
/// default order) that the solver answers and the CA offers.
pub(super) fn choose_challenge<'a>(
    authz: &'a AuthzInfo,
    manifest: &Manifest,
    wanted: &[ChallengeType],
) -> Result<(ChallengeType, &'a ChallengeInfo), IssueError> {
    let order = if wanted.is_empty() {
        preference(authz.wildcard)
    } else {
        wanted
    };
    for &t in order {
        if authz.wildcard && t != ChallengeType::Dns01 {
            continue;
        }
        if !manifest.supports(t) {
            continue;
        }
        if let Some(c) = authz
            .challenges
            .iter()
            .find(|c| c.challenge_type == Some(t))
        {
            return Ok((t, c));
        }
    }
    Err(IssueError::NoUsableChallenge {
        domain: authz.domain(),
        offered: authz
            .challenges
            .iter()
            .map(|c| c.type_name.clone())
            .collect(),
        solver: manifest.code.clone(),
        supported: manifest
            .challenge_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect(),
    })
}

/// Builds what the solver receives for one challenge; `resolved` is where
/// the dns-01 record goes (required for dns-01).
pub(super) fn challenge_request(
    authz: &AuthzInfo,
    challenge_type: ChallengeType,
    challenge: &ChallengeInfo,
    manifest: &Manifest,
    resolved: Option<&ResolvedName>,
) -> Result<ChallengeRequest, IssueError> {
    let dns = match (challenge_type, resolved) {
        (ChallengeType::Dns01, Some(r)) => Some(dns_target(r, challenge, manifest)),
        (ChallengeType::Dns01, None) => {
            return Err(IssueError::Internal(format!(
                "no DNS target resolved for '{}'",
                authz.domain()
            )));
        }
        (_, _) => None,
    };
    Ok(ChallengeRequest::new(
        challenge_type,
        authz.identifier.clone(),
        challenge.token.clone(),
        challenge.key_authorization.clone(),
        call_deadline(manifest),
    )
    .with_wildcard(authz.wildcard)
    .with_dns(dns))
}
