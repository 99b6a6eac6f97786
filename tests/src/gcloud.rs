//! A stand-in for Google Cloud DNS v1 and Google's OAuth token endpoint,
//! for the `gcloud` solver, in the documented shapes:
//!
//! - `POST /token` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   and `assertion=<JWT>`: the RS256 signature is checked with the test
//!   service account's public key, and `iss`, `aud` (this endpoint),
//!   `scope` and `exp` are checked; failures are 400
//!   `{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`
//!   (or the matching description); success is
//!   `{"access_token","expires_in":3599,"token_type":"Bearer"}`;
//! - `Authorization: Bearer <issued token>` on every API call, else 401
//!   with Google's `{"error":{"code":401,"message":"Request had invalid authentication credentials...","errors":[{"reason":"authError"}],"status":"UNAUTHENTICATED"}}`;
//!   another project → 403 `forbidden`;
//! - `GET /dns/v1/projects/{p}/managedZones?dnsName=&pageToken=&maxResults=`
//!   (at most [`CloudOpts::max_per_page`] per page, `nextPageToken`),
//!   zones with `visibility` public or private;
//! - `GET .../managedZones/{zone}` → the managed zone resource;
//! - `GET .../managedZones/{zone}/rrsets?name=&type=`;
//! - `POST .../changes` `{additions, deletions}`: each deletion must match
//!   the current set exactly (else 412 `conditionNotMet`), an addition
//!   over an existing set not deleted is 409 `alreadyExists`; answered
//!   `pending`, and `GET .../changes/{id}` answers `done`;
//! - [`rate_limited`]: 429 `RESOURCE_EXHAUSTED` / `rateLimitExceeded`
//!   (Google sends no `Retry-After`).

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::HarnessError;
use crate::standin::{
    Answer, CloudOpts, DnsState, Request, StandIn, Zone, normalize, random_token, unix_now,
};

/// The project the stand-in serves.
pub const PROJECT: &str = "certsmith-test-project";
/// The API's path prefix.
pub const API_PREFIX: &str = "/dns/v1";
/// The service account's e-mail.
pub const CLIENT_EMAIL: &str = "certsmith-dns@certsmith-test-project.iam.gserviceaccount.com";

/// A service-account JSON key for `token_uri`, with a fresh RSA key; and
/// the key's public half (PKCS#1 DER).
pub fn service_account_key(token_uri: &str) -> Result<(String, Vec<u8>), HarnessError> {
    let fail = |what: &str| HarnessError::Io {
        context: format!("making a test service account key: {what}"),
        source: std::io::Error::other("aws-lc-rs"),
    };
    let key = KeyPair::generate(KeySize::Rsa2048).map_err(|_| fail("RSA key generation"))?;
    let der = key.as_der().map_err(|_| fail("PKCS#8 encoding"))?;
    let b64 = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let json = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": random_token(40).to_ascii_lowercase(),
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/certsmith-dns",
        "universe_domain": "googleapis.com",
    });
    Ok((json.to_string(), key.public_key().as_ref().to_vec()))
}

/// The 429 Cloud DNS answers when a quota is exhausted.
pub fn rate_limited() -> Answer {
    Answer::json(
        429,
        json!({"error": {"code": 429,
            "message": "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute' of service 'dns.googleapis.com'.",
            "errors": [{"message": "Rate limit exceeded", "domain": "usageLimits", "reason": "rateLimitExceeded"}],
            "status": "RESOURCE_EXHAUSTED"}}),
    )
}

/// Starts the stand-in accepting JWTs signed by the key whose public half
/// is `public_key`; `url() + "/token"` is the token endpoint and
/// `url() + API_PREFIX` the solver's `api_base`.
pub fn start(opts: CloudOpts, public_key: Vec<u8>) -> Result<StandIn, HarnessError> {
    let key = Arc::new(public_key);
    StandIn::start(
        "gcloud",
        &opts,
        Box::new(move |st: &mut DnsState, req: &Request| route(st, req, &key)),
    )
}

/// What Cloud DNS answers a change whose deletion no longer matches the
/// set (someone changed it in between).
pub fn condition_not_met() -> Answer {
    google_error(
        412,
        "Precondition not met for 'entity.change.deletions[0]'",
        "conditionNotMet",
        "FAILED_PRECONDITION",
    )
}

fn google_error(code: u16, message: &str, reason: &str, status: &str) -> Answer {
    Answer::json(
        code,
        json!({"error": {"code": code, "message": message,
                         "errors": [{"message": message, "domain": "global", "reason": reason}],
                         "status": status}}),
    )
}

fn token_error(error: &str, description: &str) -> Answer {
    Answer::json(
        400,
        json!({"error": error, "error_description": description}),
    )
}

fn token(st: &mut DnsState, req: &Request, public_key: &[u8]) -> Answer {
    let form = req.form();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return token_error(
            "unsupported_grant_type",
            &format!("Invalid grant_type: {}", get("grant_type")),
        );
    }
    let assertion = get("assertion");
    let parts: Vec<&str> = assertion.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return token_error(
            "invalid_request",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).ok();
    let (Some(header), Some(claims), Some(sig)) = (decode(h), decode(c), decode(s)) else {
        return token_error("invalid_request", "Invalid JWT: not base64url");
    };
    let header: Value = serde_json::from_slice(&header).unwrap_or(Value::Null);
    let claims: Value = serde_json::from_slice(&claims).unwrap_or(Value::Null);
    if header["alg"] != "RS256" {
        return token_error("invalid_request", "Invalid JWT: alg must be RS256");
    }
    let signed = format!("{h}.{c}");
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(signed.as_bytes(), &sig)
        .is_err()
    {
        return token_error("invalid_grant", "Invalid JWT Signature.");
    }
    if claims["iss"] != CLIENT_EMAIL {
        return token_error("invalid_grant", "Invalid grant: account not found");
    }
    let host = req.header("host").unwrap_or_default();
    if claims["aud"] != format!("http://{host}/token") {
        return token_error("invalid_grant", "Invalid JWT: Failed audience check.");
    }
    let now = unix_now();
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if exp <= now || exp > iat + 3600 || iat > now + 60 {
        return token_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    if !claims["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .any(|s| {
            s == "https://www.googleapis.com/auth/ndev.clouddns.readwrite"
                || s == "https://www.googleapis.com/auth/cloud-platform"
        })
    {
        return token_error(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let access = format!("ya29.{}", random_token(60));
    st.tokens.push(access.clone());
    Answer::json(
        200,
        json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}),
    )
}

fn zone_name(name: &str, private: bool) -> String {
    let base = name.replace('.', "-");
    if private {
        format!("{base}-private")
    } else {
        base
    }
}

fn rrset_json(st: &DnsState, fqdn: &str) -> Option<Value> {
    let recs: Vec<_> = st.records.iter().filter(|r| r.fqdn == fqdn).collect();
    let first = recs.first()?;
    Some(
        json!({"kind": "dns#resourceRecordSet", "name": format!("{fqdn}."), "type": "TXT", "ttl": first.ttl,
                "rrdatas": recs.iter().map(|r| format!("\"{}\"", r.value)).collect::<Vec<_>>()}),
    )
}

fn unquote(rdata: &str) -> String {
    rdata
        .trim()
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect()
}

fn route(st: &mut DnsState, req: &Request, public_key: &[u8]) -> Answer {
    if req.method == "POST" && req.path == "/token" {
        return token(st, req, public_key);
    }
    let authorized = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| st.tokens.iter().any(|k| k == t));
    if !authorized {
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "authError",
            "UNAUTHENTICATED",
        );
    }
    let Some(path) = req.path.strip_prefix(API_PREFIX) else {
        return google_error(404, "Not Found", "notFound", "NOT_FOUND");
    };
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let ["projects", project, "managedZones", rest @ ..] = seg.as_slice() else {
        return google_error(404, "Not Found", "notFound", "NOT_FOUND");
    };
    if *project != PROJECT {
        return google_error(403, "Forbidden", "forbidden", "PERMISSION_DENIED");
    }
    match (req.method.as_str(), rest) {
        ("GET", []) => {
            let dns_name = req.param("dnsName").map(|n| normalize(&n));
            let all: Vec<Value> = st
                .zones
                .iter()
                .filter(|z| dns_name.as_ref().is_none_or(|n| &z.name == n))
                .map(zone_json)
                .collect();
            let start: usize = req
                .param("pageToken")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let per_page = req
                .param("maxResults")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1000usize)
                .clamp(1, st.max_per_page);
            let slice: Vec<Value> = all.iter().skip(start).take(per_page).cloned().collect();
            let mut body = json!({"kind": "dns#managedZonesListResponse", "managedZones": slice});
            if start + per_page < all.len() {
                body["nextPageToken"] = json!((start + per_page).to_string());
            }
            Answer::json(200, body)
        }
        (method, [zone, tail @ ..]) => {
            let Some(z) = st
                .zones
                .iter()
                .find(|z| zone_name(&z.name, z.private) == *zone)
                .cloned()
            else {
                return google_error(
                    404,
                    &format!(
                        "The 'parameters.managedZone' resource named '{zone}' does not exist."
                    ),
                    "notFound",
                    "NOT_FOUND",
                );
            };
            match (method, tail) {
                ("GET", ["rrsets"]) => {
                    let name = req.param("name").map(|n| normalize(&n));
                    let mut names: Vec<String> = st
                        .records
                        .iter()
                        .filter(|r| r.zone == z.name)
                        .map(|r| r.fqdn.clone())
                        .filter(|f| name.as_ref().is_none_or(|n| f == n))
                        .collect();
                    names.sort();
                    names.dedup();
                    let sets: Vec<Value> = names.iter().filter_map(|n| rrset_json(st, n)).collect();
                    Answer::json(
                        200,
                        json!({"kind": "dns#resourceRecordSetsListResponse", "rrsets": sets}),
                    )
                }
                ("GET", []) => Answer::json(200, zone_json(&z)),
                ("POST", ["changes"]) => change(st, &z.name, req),
                ("GET", ["changes", id]) => Answer::json(
                    200,
                    json!({"kind": "dns#change", "id": id, "status": "done",
                                                                       "startTime": "2026-01-01T00:00:00.000Z"}),
                ),
                _ => google_error(404, "Not Found", "notFound", "NOT_FOUND"),
            }
        }
        _ => google_error(404, "Not Found", "notFound", "NOT_FOUND"),
    }
}

fn change(st: &mut DnsState, zone: &str, req: &Request) -> Answer {
    let Some(body) = req.json() else {
        return google_error(
            400,
            "Invalid JSON payload received.",
            "invalid",
            "INVALID_ARGUMENT",
        );
    };
    let list = |k: &str| {
        body.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (additions, deletions) = (list("additions"), list("deletions"));
    let name_of = |s: &Value| normalize(s["name"].as_str().unwrap_or_default());
    for (i, d) in deletions.iter().enumerate() {
        let fqdn = name_of(d);
        if d["type"] != "TXT"
            || rrset_json(st, &fqdn)
                .as_ref()
                .is_none_or(|cur| cur["ttl"] != d["ttl"] || cur["rrdatas"] != d["rrdatas"])
        {
            return google_error(
                412,
                &format!("Precondition not met for 'entity.change.deletions[{i}]'"),
                "conditionNotMet",
                "FAILED_PRECONDITION",
            );
        }
    }
    for (i, a) in additions.iter().enumerate() {
        let fqdn = name_of(a);
        if rrset_json(st, &fqdn).is_some() && !deletions.iter().any(|d| name_of(d) == fqdn) {
            return google_error(
                409,
                &format!(
                    "The resource 'entity.change.additions[{i}]' named '{fqdn}. (TXT)' already exists"
                ),
                "alreadyExists",
                "ALREADY_EXISTS",
            );
        }
        if a["type"] != "TXT" || !(fqdn == zone || fqdn.ends_with(&format!(".{zone}"))) {
            return google_error(
                400,
                &format!("Invalid value for 'entity.change.additions[{i}].name': '{fqdn}.'"),
                "invalid",
                "INVALID_ARGUMENT",
            );
        }
    }
    // One write per name: what the additions hold, or nothing (records
    // holding a kept value keep their identity).
    let mut names: Vec<String> = deletions.iter().chain(&additions).map(name_of).collect();
    names.sort();
    names.dedup();
    for fqdn in names {
        let added = additions.iter().find(|a| name_of(a) == fqdn);
        let values: Vec<String> = added
            .and_then(|a| a["rrdatas"].as_array())
            .map(|v| v.iter().filter_map(Value::as_str).map(unquote).collect())
            .unwrap_or_default();
        let ttl = added.and_then(|a| a["ttl"].as_u64()).unwrap_or(300);
        st.set_values(zone, &fqdn, &values, ttl);
    }
    st.serial += 1;
    Answer::json(
        200,
        json!({"kind": "dns#change", "id": st.serial.to_string(), "status": "pending",
                             "startTime": "2026-01-01T00:00:00.000Z", "additions": additions, "deletions": deletions}),
    )
}

/// A managed zone resource (`dns#managedZone`).
fn zone_json(z: &Zone) -> Value {
    json!({"kind": "dns#managedZone", "name": zone_name(&z.name, z.private),
           "dnsName": format!("{}.", z.name), "id": u64::from_str_radix(&z.id[..12], 16).unwrap_or(1).to_string(),
           "visibility": if z.private { "private" } else { "public" },
           "nameServers": ["ns-cloud-a1.googledomains.com."],
           "creationTime": "2026-01-01T00:00:00.000Z", "description": ""})
}
