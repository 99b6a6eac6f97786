//! A stand-in for the Hetzner DNS API (`/api/v1`), for the `hetzner`
//! solver, in the documented shapes:
//!
//! - `Auth-API-Token: <token>` on every call (the gateway's answers:
//!   missing → 401 `{"message":"No API key found in request"}`, wrong →
//!   401 `{"message":"Invalid authentication credentials"}`);
//! - `GET /zones?name=` → `{"zones", "meta": {"pagination": {page,
//!   per_page, previous_page, next_page, last_page, total_entries}}}`, an
//!   unknown name → 404 `{"zones": [], "error": {"message": "zone not found", "code": 404}}`;
//! - `GET /records?zone_id=&page=&per_page=` (default 100, at most
//!   [`CloudOpts::max_per_page`]): the zone's records with relative names
//!   (`@` at the apex), paginated the same way;
//! - `POST /records` `{zone_id, type, name, value, ttl}` → 200 `{"record"}`;
//!   `DELETE /records/{id}` → 200, unknown → 404
//!   `{"error": {"message": "record not found", "code": 404}}`;
//! - [`rate_limited`]: the gateway's 429 `{"message":"API rate limit exceeded"}`
//!   with `Retry-After` and `RateLimit-*` headers.

use serde_json::{Value, json};

use crate::HarnessError;
use crate::standin::{Answer, CloudOpts, DnsState, Record, Request, StandIn, normalize, page_of};

/// The API's path prefix.
pub const API_PREFIX: &str = "/api/v1";
const CREATED: &str = "2026-01-01 00:00:00.000 +0000 UTC";

/// The gateway's rate-limit answer.
pub fn rate_limited(secs: u64) -> Answer {
    Answer::json(429, json!({"message": "API rate limit exceeded"}))
        .header("Retry-After", &secs.to_string())
        .header("RateLimit-Limit", "3600")
        .header("RateLimit-Remaining", "0")
        .header("RateLimit-Reset", &secs.to_string())
}

/// Starts the stand-in; `url() + API_PREFIX` is the solver's `api_base`.
pub fn start(opts: CloudOpts) -> Result<StandIn, HarnessError> {
    StandIn::start("hetzner", &opts, Box::new(route))
}

fn pagination(page: usize, per_page: usize, pages: usize, total: usize) -> Value {
    json!({"pagination": {"page": page, "per_page": per_page, "previous_page": page.saturating_sub(1).max(1),
                          "next_page": (page + 1).min(pages), "last_page": pages, "total_entries": total}})
}

fn relative(fqdn: &str, zone: &str) -> String {
    if fqdn == zone {
        "@".into()
    } else {
        fqdn.strip_suffix(&format!(".{zone}"))
            .unwrap_or(fqdn)
            .to_owned()
    }
}

fn record_json(r: &Record, zone_id: &str) -> Value {
    json!({"id": r.id, "type": "TXT", "name": relative(&r.fqdn, &r.zone), "value": r.value,
           "zone_id": zone_id, "ttl": r.ttl, "created": CREATED, "modified": CREATED})
}

fn route(st: &mut DnsState, req: &Request) -> Answer {
    match req.header("auth-api-token") {
        None => return Answer::json(401, json!({"message": "No API key found in request"})),
        Some(t) if t != st.secret => {
            return Answer::json(
                401,
                json!({"message": "Invalid authentication credentials"}),
            );
        }
        Some(_) => {}
    }
    let Some(path) = req.path.strip_prefix(API_PREFIX) else {
        return Answer::json(
            404,
            json!({"message": "no Route matched with those values"}),
        );
    };
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let page = req
        .param("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    let per_page = req
        .param("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100usize)
        .clamp(1, st.max_per_page);
    match (req.method.as_str(), seg.as_slice()) {
        ("GET", ["zones"]) => {
            let name = req.param("name").map(|n| normalize(&n));
            let zones: Vec<Value> = st
                .zones
                .iter()
                .filter(|z| !z.private && name.as_ref().is_none_or(|n| &z.name == n))
                .map(|z| {
                    json!({"id": z.id, "name": z.name, "ttl": 86400, "registrar": "", "legacy_dns_host": "",
                           "legacy_ns": [], "ns": ["hydrogen.ns.hetzner.com.", "oxygen.ns.hetzner.com.", "helium.ns.hetzner.de."],
                           "created": CREATED, "verified": CREATED, "modified": CREATED, "project": "", "owner": "",
                           "permission": "", "zone_type": {"id": "", "name": "", "description": "", "prices": null},
                           "status": "verified", "paused": false, "is_secondary_dns": false,
                           "txt_verification": {"name": "", "token": ""},
                           "records_count": st.records.iter().filter(|r| r.zone == z.name).count()})
                })
                .collect();
            if zones.is_empty() && name.is_some() {
                return Answer::json(
                    404,
                    json!({"zones": [], "error": {"message": "zone not found", "code": 404}}),
                );
            }
            let (slice, pages) = page_of(&zones, page, per_page);
            Answer::json(
                200,
                json!({"zones": slice, "meta": pagination(page, per_page, pages, zones.len())}),
            )
        }
        ("GET", ["records"]) => {
            let Some(zone) = req
                .param("zone_id")
                .and_then(|id| st.zones.iter().find(|z| z.id == id && !z.private).cloned())
            else {
                return Answer::json(
                    404,
                    json!({"records": [], "error": {"message": "zone not found", "code": 404}}),
                );
            };
            let all: Vec<Value> = st
                .records
                .iter()
                .filter(|r| r.zone == zone.name)
                .map(|r| record_json(r, &zone.id))
                .collect();
            let (slice, pages) = page_of(&all, page, per_page);
            Answer::json(
                200,
                json!({"records": slice, "meta": pagination(page, per_page, pages, all.len())}),
            )
        }
        ("POST", ["records"]) => {
            let Some(body) = req.json() else {
                return Answer::json(
                    400,
                    json!({"error": {"message": "invalid JSON", "code": 400}}),
                );
            };
            let field = |k: &str| {
                body.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let Some(zone) = st
                .zones
                .iter()
                .find(|z| z.id == field("zone_id") && !z.private)
                .cloned()
            else {
                return Answer::json(
                    422,
                    json!({"record": {}, "error": {"message": "422 Unprocessable Entity: zone not found", "code": 422}}),
                );
            };
            if !field("type").eq_ignore_ascii_case("TXT") || field("value").is_empty() {
                return Answer::json(
                    422,
                    json!({"record": {}, "error": {"message": "422 Unprocessable Entity: this stand-in holds TXT records with a value only", "code": 422}}),
                );
            }
            let name = normalize(&field("name"));
            let fqdn = if name == "@" {
                zone.name.clone()
            } else {
                format!("{name}.{}", zone.name)
            };
            let ttl = body.get("ttl").and_then(Value::as_u64).unwrap_or(86400);
            let r = st.add(&zone.name, &fqdn, &field("value"), ttl, false);
            Answer::json(200, json!({"record": record_json(&r, &zone.id)}))
        }
        ("DELETE", ["records", id]) => match st.remove(id) {
            Some(_) => Answer::empty(200),
            None => Answer::json(
                404,
                json!({"record": {}, "error": {"message": "record not found", "code": 404}}),
            ),
        },
        _ => Answer::json(
            404,
            json!({"message": "no Route matched with those values"}),
        ),
    }
}
