//! A stand-in for Azure DNS record sets (Azure Resource Manager) and the
//! Microsoft Entra ID token endpoint, for the `azure` solver, in the
//! documented shapes:
//!
//! - `POST /{tenant}/oauth2/v2.0/token`, client-credentials grant with
//!   `client_id`, `client_secret`, `scope`: an unknown tenant is 400
//!   `invalid_request` (AADSTS90002), an unknown client 400
//!   `unauthorized_client` (AADSTS700016), a wrong secret 401
//!   `invalid_client` (AADSTS7000215), another scope 400 `invalid_scope`;
//!   success `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token"}`;
//! - `Authorization: Bearer <issued token>` on every ARM call, else 401
//!   `{"error":{"code":"InvalidAuthenticationToken"}}` (or
//!   `AuthenticationFailed` when missing); `api-version` required
//!   (`MissingApiVersionParameter`);
//! - `GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/dnsZones/{zone}/TXT/{name}?api-version=2018-05-01`:
//!   unknown subscription `SubscriptionNotFound`, resource group
//!   `ResourceGroupNotFound`, zone `ParentResourceNotFound`, record set
//!   `{"code":"NotFound"}`, all 404; every set has an `etag`, and
//!   `If-Match` / `If-None-Match: *` are enforced (412
//!   `PreconditionFailed`); PUT answers 201 when it created the set, 200
//!   when it replaced it; DELETE answers 200, or 204 when there was none;
//! - `GET .../dnsZones/{zone}?api-version=` → the zone resource (`id`,
//!   `name`, `type: Microsoft.Network/dnszones`, `location: global`,
//!   `etag`, `properties` with `nameServers`, `numberOfRecordSets`,
//!   `zoneType: Public`), unknown → 404 `ResourceNotFound`; `GET
//!   .../dnsZones` → `{"value": [zones]}`;
//! - [`rate_limited`]: 429 `TooManyRequests` with `Retry-After`.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::HarnessError;
use crate::standin::{Answer, CloudOpts, DnsState, Request, StandIn, normalize, random_token};

/// The tenant the stand-in knows.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The client id it knows.
pub const CLIENT_ID: &str = "0f2b3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d";
/// The subscription.
pub const SUBSCRIPTION: &str = "3e5c7a91-2b4d-4f6a-8c1e-9d0b2a4c6e8f";
/// The resource group.
pub const RESOURCE_GROUP: &str = "certsmith-dns";

/// ARM's throttling answer.
pub fn rate_limited(secs: u64) -> Answer {
    Answer::json(
        429,
        json!({"error": {"code": "TooManyRequests", "message": "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:05:00."}}),
    )
    .header("Retry-After", &secs.to_string())
}

/// Starts the stand-in: `url()` is both the authority and the `api_base`.
/// The client secret it accepts is [`StandIn::secret`].
pub fn start(opts: CloudOpts) -> Result<StandIn, HarnessError> {
    let etags: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    StandIn::start(
        "azure",
        &opts,
        Box::new(move |st: &mut DnsState, req: &Request| {
            let mut e = etags
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            route(st, req, &mut e)
        }),
    )
}

/// What ARM answers a write whose `If-Match` no longer holds.
pub fn precondition_failed() -> Answer {
    arm_error(
        412,
        "PreconditionFailed",
        "The condition '\"0\"' in the If-Match header was not satisfied. The current was '\"1\"'.",
    )
}

fn aad_error(status: u16, error: &str, code: u32, description: &str) -> Answer {
    Answer::json(
        status,
        json!({"error": error, "error_description": format!("AADSTS{code}: {description} Trace ID: {} Correlation ID: {} Timestamp: 2026-01-01 00:00:00Z", random_token(8), random_token(8)),
               "error_codes": [code], "timestamp": "2026-01-01 00:00:00Z", "trace_id": random_token(8),
               "correlation_id": random_token(8), "error_uri": format!("https://login.microsoftonline.com/error?code={code}")}),
    )
}

fn arm_error(status: u16, code: &str, message: &str) -> Answer {
    Answer::json(status, json!({"error": {"code": code, "message": message}}))
}

fn token(st: &mut DnsState, req: &Request, tenant: &str) -> Answer {
    let form = req.form();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if tenant != TENANT {
        return aad_error(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    if get("grant_type") != "client_credentials" {
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if get("client_id") != CLIENT_ID {
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory '{tenant}'.",
                get("client_id")
            ),
        );
    }
    if get("client_secret") != st.secret {
        return aad_error(
            401,
            "invalid_client",
            7000215,
            &format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."
            ),
        );
    }
    if get("scope") != "https://management.azure.com/.default" {
        return aad_error(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid.",
        );
    }
    let access = format!("eyJ0eXAiOiJKV1Qi.{}", random_token(80));
    st.tokens.push(access.clone());
    Answer::json(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access}),
    )
}

fn route(st: &mut DnsState, req: &Request, etags: &mut Vec<(String, String)>) -> Answer {
    let seg = req.segments();
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    if let [tenant, "oauth2", "v2.0", "token"] = seg.as_slice() {
        return token(st, req, tenant);
    }
    match req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
    {
        None => {
            return arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            );
        }
        Some(t) if !st.tokens.iter().any(|k| k == t) => {
            return arm_error(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            );
        }
        Some(_) => {}
    }
    if req.param("api-version").is_none() {
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    if let [
        "subscriptions",
        sub,
        "resourceGroups",
        rg,
        "providers",
        "Microsoft.Network",
        "dnsZones",
        zone @ ..,
    ] = seg.as_slice()
        && zone.len() <= 1
        && req.method == "GET"
    {
        return zones(st, sub, rg, zone.first().copied());
    }
    let [
        "subscriptions",
        sub,
        "resourceGroups",
        rg,
        "providers",
        "Microsoft.Network",
        "dnsZones",
        zone,
        "TXT",
        name,
    ] = seg.as_slice()
    else {
        return arm_error(
            404,
            "InvalidResourceType",
            "The resource type could not be found in the namespace 'Microsoft.Network' for api version '2018-05-01'.",
        );
    };
    if *sub != SUBSCRIPTION {
        return arm_error(
            404,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        );
    }
    if !rg.eq_ignore_ascii_case(RESOURCE_GROUP) {
        return arm_error(
            404,
            "ResourceGroupNotFound",
            &format!("Resource group '{rg}' could not be found."),
        );
    }
    let zone = normalize(zone);
    if !st.zones.iter().any(|z| z.name == zone && !z.private) {
        return arm_error(
            404,
            "ParentResourceNotFound",
            &format!(
                "Can not perform requested operation on nested resource. Parent resource '{zone}' not found."
            ),
        );
    }
    let name = name.to_ascii_lowercase();
    let fqdn = if name == "@" {
        zone.clone()
    } else {
        format!("{name}.{zone}")
    };
    let values = st.values(&fqdn);
    let exists = !values.is_empty();
    let etag = etags
        .iter()
        .find(|(n, _)| *n == fqdn)
        .map(|(_, e)| e.clone());
    let etag = match (exists, etag) {
        (true, Some(e)) => Some(e),
        (true, None) => {
            // A set someone else made: give it an etag now.
            let e = new_etag();
            etags.push((fqdn.clone(), e.clone()));
            Some(e)
        }
        (false, _) => None,
    };
    let set_json = |values: &[String], ttl: u64, etag: &str| {
        json!({"id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/dnszones/{zone}/TXT/{name}"),
               "name": name, "type": "Microsoft.Network/dnszones/TXT", "etag": etag,
               "properties": {"metadata": {}, "fqdn": format!("{fqdn}."), "TTL": ttl,
                              "TXTRecords": values.iter().map(|v| json!({"value": [v]})).collect::<Vec<_>>(),
                              "targetResource": {}, "provisioningState": "Succeeded"}})
    };
    let not_found = || {
        Answer::json(
            404,
            json!({"code": "NotFound", "message": format!("The resource record '{name}' does not exist in resource group '{rg}' of subscription '{sub}'.")}),
        )
    };
    // Conditions.
    let if_match = req.header("if-match");
    let if_none = req.header("if-none-match");
    let failed = match (if_match, if_none, &etag) {
        (Some("*"), _, None) => true,
        (Some(m), _, Some(e)) if m != "*" && m != e => true,
        (Some(m), _, None) if m != "*" => true,
        (_, Some("*"), Some(_)) => true,
        _ => false,
    };
    let ttl = st
        .records
        .iter()
        .find(|r| r.fqdn == fqdn)
        .map_or(3600, |r| r.ttl);
    match req.method.as_str() {
        "GET" => match etag {
            Some(e) => Answer::json(200, set_json(&values, ttl, &e)),
            None => not_found(),
        },
        "PUT" | "DELETE" if failed => arm_error(
            412,
            "PreconditionFailed",
            &format!(
                "The condition '{}' in the If-Match header was not satisfied. The current was '{}'.",
                if_match.or(if_none).unwrap_or_default(),
                etag.unwrap_or_default()
            ),
        ),
        "PUT" => {
            let Some(body) = req.json() else {
                return arm_error(
                    400,
                    "InvalidRequestContent",
                    "The request content was invalid and could not be deserialized.",
                );
            };
            let props = &body["properties"];
            let new: Vec<String> = props["TXTRecords"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            r["value"]
                                .as_array()
                                .map(|v| v.iter().filter_map(Value::as_str).collect::<String>())
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let Some(ttl) = props["TTL"].as_u64() else {
                return arm_error(
                    400,
                    "BadRequest",
                    "The value for record type TTL is required.",
                );
            };
            st.set_values(&zone, &fqdn, &new, ttl);
            let e = new_etag();
            etags.retain(|(n, _)| *n != fqdn);
            etags.push((fqdn.clone(), e.clone()));
            Answer::json(if exists { 200 } else { 201 }, set_json(&new, ttl, &e))
        }
        "DELETE" => {
            if !exists {
                return Answer::empty(204);
            }
            st.set_values(&zone, &fqdn, &[], 0);
            etags.retain(|(n, _)| *n != fqdn);
            Answer::empty(200)
        }
        _ => arm_error(
            405,
            "MethodNotAllowed",
            "The requested method is not allowed.",
        ),
    }
}

fn new_etag() -> String {
    let t = crate::standin::hex_id();
    format!(
        "{}-{}-{}-{}-{}",
        &t[..8],
        &t[8..12],
        &t[12..16],
        &t[16..20],
        &t[20..32]
    )
}

/// `GET` of one zone resource (`zone`) or of the resource group's zones.
fn zones(st: &DnsState, sub: &str, rg: &str, zone: Option<&str>) -> Answer {
    if sub != SUBSCRIPTION {
        return arm_error(
            404,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        );
    }
    if !rg.eq_ignore_ascii_case(RESOURCE_GROUP) {
        return arm_error(
            404,
            "ResourceGroupNotFound",
            &format!("Resource group '{rg}' could not be found."),
        );
    }
    let resource = |name: &str| {
        let count = st.records.iter().filter(|r| r.zone == name).count() + 2;
        json!({
            "id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/dnszones/{name}"),
            "name": name,
            "type": "Microsoft.Network/dnszones",
            "location": "global",
            "etag": "00000002-0000-0000-76c2-f7ad90b5d101",
            "tags": {},
            "properties": {
                "maxNumberOfRecordSets": 10000,
                "numberOfRecordSets": count,
                "nameServers": ["ns1-01.azure-dns.com.", "ns2-01.azure-dns.net."],
                "zoneType": "Public"
            }
        })
    };
    let public = st.zones.iter().filter(|z| !z.private);
    match zone {
        None => Answer::json(
            200,
            json!({"value": public.map(|z| resource(&z.name)).collect::<Vec<_>>()}),
        ),
        Some(zone) => {
            let zone = normalize(zone);
            if st.zones.iter().any(|z| z.name == zone && !z.private) {
                Answer::json(200, resource(&zone))
            } else {
                arm_error(
                    404,
                    "ResourceNotFound",
                    &format!(
                        "The Resource 'Microsoft.Network/dnszones/{zone}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
                    ),
                )
            }
        }
    }
}
