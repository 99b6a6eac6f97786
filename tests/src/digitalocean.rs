//! A stand-in for the DigitalOcean API v2 domain records, for the
//! `digitalocean` solver, in the documented shapes:
//!
//! - `Authorization: Bearer <token>` on every call; missing or wrong →
//!   401 `{"id":"unauthorized","message":"Unable to authenticate you"}`;
//! - `GET /v2/domains/{domain}/records?type=&name=<fqdn>&page=&per_page=`
//!   (default 20 per page, at most 200 and at most
//!   [`CloudOpts::max_per_page`]) → `{"domain_records", "links": {"pages":
//!   {"first"?, "prev"?, "next"?, "last"?}}, "meta": {"total"}}`, records
//!   with integer ids and names relative to the domain (`@` at the apex);
//! - `POST .../records` `{type, name, data, ttl}` → 201
//!   `{"domain_record"}` (TTL below 30 → 422); `DELETE .../records/{id}`
//!   → 204; unknown domain or record → 404
//!   `{"id":"not_found","message":"The resource you were accessing could not be found."}`;
//! - `GET /v2/account` → `{"account": {droplet_limit, floating_ip_limit,
//!   email, uuid, email_verified, status: "active", status_message, team}}`;
//! - `GET /v2/domains/{domain}` → `{"domain": {name, ttl, zone_file}}`,
//!   unknown → 404 `not_found`;
//! - [`rate_limited`]: the hourly limit's 429, `{"id":"too_many_requests"}`
//!   with `ratelimit-limit`, `ratelimit-remaining: 0` and
//!   `ratelimit-reset` (a Unix time), no `Retry-After`.

use serde_json::{Value, json};

use crate::HarnessError;
use crate::standin::{
    Answer, CloudOpts, DnsState, Record, Request, StandIn, normalize, page_of, unix_now,
};

/// DigitalOcean's integer id for a stand-in record.
fn int_id(r: &Record) -> u64 {
    u64::from_str_radix(&r.id[..12], 16).unwrap_or(0)
}

fn not_found() -> Answer {
    Answer::json(
        404,
        json!({"id": "not_found", "message": "The resource you were accessing could not be found."}),
    )
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

fn record_json(r: &Record) -> Value {
    json!({"id": int_id(r), "type": "TXT", "name": relative(&r.fqdn, &r.zone), "data": r.value,
           "priority": null, "port": null, "ttl": r.ttl, "weight": null, "flags": null, "tag": null})
}

/// The hourly rate limit's answer: reset `secs` from now.
pub fn rate_limited(secs: u64) -> Answer {
    Answer::json(
        429,
        json!({"id": "too_many_requests", "message": "API Rate limit exceeded."}),
    )
    .header("ratelimit-limit", "5000")
    .header("ratelimit-remaining", "0")
    .header("ratelimit-reset", &(unix_now() + secs).to_string())
}

/// Starts the stand-in; its [`StandIn::url`] is the solver's `api_base`.
pub fn start(opts: CloudOpts) -> Result<StandIn, HarnessError> {
    StandIn::start("digitalocean", &opts, Box::new(route))
}

fn route(st: &mut DnsState, req: &Request) -> Answer {
    let token = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "));
    if token != Some(st.secret.as_str()) {
        return Answer::json(
            401,
            json!({"id": "unauthorized", "message": "Unable to authenticate you"}),
        );
    }
    let seg = req.segments();
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    match (req.method.as_str(), seg.as_slice()) {
        ("GET", ["v2", "account"]) => {
            return Answer::json(
                200,
                json!({"account": {
                    "droplet_limit": 25, "floating_ip_limit": 3, "email": "ops@do.test",
                    "name": "Ops", "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                    "email_verified": true, "status": "active", "status_message": "",
                    "team": {"uuid": "5df3e3004a17e242b7c20ca6c9fc25b701a47ece", "name": "My Team"}
                }}),
            );
        }
        ("GET", ["v2", "domains", domain]) => {
            let domain = normalize(domain);
            if !st.zones.iter().any(|z| z.name == domain && !z.private) {
                return not_found();
            }
            return Answer::json(
                200,
                json!({"domain": {"name": domain, "ttl": 1800, "zone_file": format!(
                    "$ORIGIN {domain}.\n$TTL 1800\n{domain}. IN SOA ns1.digitalocean.com. hostmaster.{domain}. 1 10800 3600 604800 1800\n"
                )}}),
            );
        }
        _ => {}
    }
    let ["v2", "domains", domain, "records", rest @ ..] = seg.as_slice() else {
        return not_found();
    };
    let domain = normalize(domain);
    if !st.zones.iter().any(|z| z.name == domain && !z.private) {
        return not_found();
    }
    match (req.method.as_str(), rest) {
        ("GET", []) => {
            let name = req.param("name").map(|n| normalize(&n));
            let ty = req.param("type");
            let all: Vec<Record> = st
                .records
                .iter()
                .filter(|r| r.zone == domain)
                .filter(|r| name.as_ref().is_none_or(|n| &r.fqdn == n))
                .filter(|_| ty.as_ref().is_none_or(|t| t.eq_ignore_ascii_case("TXT")))
                .cloned()
                .collect();
            let per_page = req
                .param("per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(20usize)
                .clamp(1, 200)
                .min(st.max_per_page);
            let page = req
                .param("page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1usize)
                .max(1);
            let (slice, pages) = page_of(&all, page, per_page);
            let host = req.header("host").unwrap_or("127.0.0.1");
            let link = |p: usize| {
                let mut q = format!("page={p}&per_page={per_page}");
                if let Some(t) = &ty {
                    q.push_str(&format!("&type={t}"));
                }
                if let Some(n) = &name {
                    q.push_str(&format!("&name={n}"));
                }
                format!("http://{host}/v2/domains/{domain}/records?{q}")
            };
            let mut links = serde_json::Map::new();
            if page < pages {
                links.insert("last".into(), json!(link(pages)));
                links.insert("next".into(), json!(link(page + 1)));
            }
            if page > 1 {
                links.insert("first".into(), json!(link(1)));
                links.insert("prev".into(), json!(link(page - 1)));
            }
            Answer::json(
                200,
                json!({
                    "domain_records": slice.iter().map(record_json).collect::<Vec<_>>(),
                    "links": if links.is_empty() { json!({}) } else { json!({"pages": links}) },
                    "meta": {"total": all.len()},
                }),
            )
        }
        ("POST", []) => {
            let Some(body) = req.json() else {
                return Answer::json(
                    400,
                    json!({"id": "bad_request", "message": "unable to parse the request body"}),
                );
            };
            let field = |k: &str| {
                body.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            if !field("type").eq_ignore_ascii_case("TXT") {
                return Answer::json(
                    422,
                    json!({"id": "unprocessable_entity", "message": "this stand-in holds TXT records only"}),
                );
            }
            let ttl = body.get("ttl").and_then(Value::as_u64).unwrap_or(1800);
            if ttl < 30 {
                return Answer::json(
                    422,
                    json!({"id": "unprocessable_entity", "message": "TTL must be at least 30."}),
                );
            }
            let name = normalize(&field("name"));
            let fqdn = match name.as_str() {
                "@" | "" => domain.clone(),
                n if n == domain || n.ends_with(&format!(".{domain}")) => n.to_owned(),
                n => format!("{n}.{domain}"),
            };
            let data = field("data");
            if data.is_empty() {
                return Answer::json(
                    422,
                    json!({"id": "unprocessable_entity", "message": "Data needs to be set for TXT records."}),
                );
            }
            let r = st.add(&domain, &fqdn, &data, ttl, false);
            Answer::json(201, json!({"domain_record": record_json(&r)}))
        }
        ("DELETE", [id]) => {
            let found = st
                .records
                .iter()
                .find(|r| r.zone == domain && int_id(r).to_string() == *id)
                .map(|r| r.id.clone());
            match found {
                Some(hex) => {
                    st.remove(&hex);
                    Answer::empty(204)
                }
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}
