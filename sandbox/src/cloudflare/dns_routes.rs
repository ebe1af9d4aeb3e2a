//! DNS record routes of the one simulated zone (`/zones/{zone_id}/dns_records`): create,
//! list with the old (`name=`) and new (`name.exact=`...) filters, get, patch, put, delete,
//! and Cloudflare's conflict rules between CNAME and A/AAAA records.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use uuid::Uuid;

use super::dns::{Record, Records, TYPES};
use super::envelope::{CfError, Reply, body_object, now, ok, ok_page};
use super::state::CfState;
use crate::http::{lock, query_param};

/// Cloudflare's code for a create past the zone's DNS records quota ("Record quota exceeded.").
pub const DNS_QUOTA_CODE: u32 = 81045;

type St = State<Arc<CfState>>;
type Q = Query<Vec<(String, String)>>;

pub fn router() -> Router<Arc<CfState>> {
    Router::new()
        .route("/zones/{zone}/dns_records", get(list).post(create))
        .route("/zones/{zone}/dns_records/{id}", get(get_one).patch(patch).put(put).delete(delete))
}

fn check_zone(st: &CfState, zone: &str) -> Result<(), CfError> {
    if zone == st.config.zone_id { Ok(()) } else { Err(CfError::forbidden()) }
}

fn not_found() -> CfError {
    CfError::new(StatusCode::NOT_FOUND, 81044, "Record does not exist.")
}

/// Full lower-case name inside the zone: `@` is the apex, relative names get the zone appended.
fn full_name(name: &str, zone: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "@" || name == zone {
        zone.to_owned()
    } else if name.ends_with(&format!(".{zone}")) {
        name
    } else {
        format!("{name}.{zone}")
    }
}

/// Builds a record from a request body; `base` supplies missing fields (PATCH).
pub(super) fn parse_record(
    body: &serde_json::Map<String, Value>,
    base: Option<&Record>,
    zone: &str,
) -> Result<Record, CfError> {
    let str_field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let kind = str_field("type")
        .or_else(|| base.map(|b| b.kind.clone()))
        .ok_or_else(|| CfError::bad_request(9000, "DNS record type is invalid."))?
        .to_ascii_uppercase();
    if !TYPES.contains(&kind.as_str()) {
        return Err(CfError::bad_request(9000, "DNS record type is invalid."));
    }
    let name = str_field("name")
        .or_else(|| base.map(|b| b.name.clone()))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CfError::bad_request(9005, "DNS name is invalid."))?;
    let content = str_field("content")
        .or_else(|| base.map(|b| b.content.clone()))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| CfError::bad_request(9007, "Content for the record is invalid."))?;
    let ttl = match body.get("ttl") {
        None => base.map_or(1, |b| b.ttl),
        Some(v) => v.as_i64().ok_or_else(|| CfError::bad_request(9021, "Invalid TTL."))?,
    };
    if ttl != 1 && !(60..=86400).contains(&ttl) {
        return Err(CfError::bad_request(
            9021,
            "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.",
        ));
    }
    let proxied = match body.get("proxied") {
        None => base.is_some_and(|b| b.proxied),
        Some(v) => v.as_bool().ok_or_else(|| CfError::bad_request(9003, "proxied must be a boolean"))?,
    };
    if proxied && !matches!(kind.as_str(), "A" | "AAAA" | "CNAME") {
        return Err(CfError::bad_request(9004, "This record type cannot be proxied."));
    }
    let comment = match body.get("comment") {
        None => base.and_then(|b| b.comment.clone()),
        Some(Value::Null) => None,
        Some(v) => Some(v.as_str().ok_or_else(|| CfError::bad_request(9101, "comment must be a string"))?.to_owned()),
    };
    let tags = match body.get("tags") {
        None => base.map(|b| b.tags.clone()).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .filter(|t| t.contains(':'))
                    .map(str::to_owned)
                    .ok_or_else(|| CfError::bad_request(9102, "tags must be name:value strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(CfError::bad_request(9102, "tags must be a list")),
    };
    let stamp = now();
    Ok(Record {
        id: base.map_or_else(|| Uuid::new_v4().simple().to_string(), |b| b.id.clone()),
        kind,
        name: full_name(&name, zone),
        content,
        proxied,
        ttl,
        comment,
        tags,
        created_on: base.map_or_else(|| stamp.clone(), |b| b.created_on.clone()),
        comment_modified_on: if body.contains_key("comment") {
            Some(stamp.clone())
        } else {
            base.and_then(|b| b.comment_modified_on.clone())
        },
        tags_modified_on: if body.contains_key("tags") {
            Some(stamp.clone())
        } else {
            base.and_then(|b| b.tags_modified_on.clone())
        },
        modified_on: stamp,
    })
}

/// Cloudflare's rules: a CNAME shares its name with nothing of type A/AAAA/CNAME, and no
/// two records are identical.
fn check_conflicts(records: &Records, r: &Record) -> Result<(), CfError> {
    for other in records.by_id.values().filter(|o| o.id != r.id && o.name == r.name) {
        if other.kind == r.kind && other.content == r.content {
            return Err(CfError::bad_request(81058, "An identical record already exists."));
        }
        let address = |k: &str| matches!(k, "A" | "AAAA");
        if r.kind == "CNAME" && (address(&other.kind) || other.kind == "CNAME") {
            return Err(CfError::bad_request(81053, "An A, AAAA, or CNAME record with that host already exists."));
        }
        if address(&r.kind) && other.kind == "CNAME" {
            return Err(CfError::bad_request(81054, "A CNAME record with that host already exists."));
        }
    }
    Ok(())
}

async fn create(State(st): St, Path(zone): Path<String>, body: Bytes) -> Reply {
    check_zone(&st, &zone)?;
    let body = body_object(&body)?;
    let record = parse_record(&body, None, &st.config.zone_name)?;
    let mut records = lock(&st.dns);
    check_conflicts(&records, &record)?;
    if records.len() >= st.dns_record_limit.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(CfError::bad_request(DNS_QUOTA_CODE, "Record quota exceeded."));
    }
    let json = record.json(&zone, &st.config.zone_name);
    records.by_id.insert(record.id.clone(), record);
    ok(json)
}

/// A test one string filter applies to a field's value.
type Matcher = Box<dyn Fn(&str) -> bool>;

/// One string filter, `field=` (exact) or `field.exact|contains|startswith|endswith=`,
/// case-insensitive as documented.
fn string_filters(q: &[(String, String)], field: &str) -> Vec<Matcher> {
    let mut out: Vec<Matcher> = Vec::new();
    for (k, v) in q {
        let v = v.to_ascii_lowercase();
        let op = if k == field { Some("exact") } else { k.strip_prefix(field).and_then(|r| r.strip_prefix('.')) };
        match op {
            Some("exact") => out.push(Box::new(move |s: &str| s.to_ascii_lowercase() == v)),
            Some("contains") => out.push(Box::new(move |s: &str| s.to_ascii_lowercase().contains(&v))),
            Some("startswith") => out.push(Box::new(move |s: &str| s.to_ascii_lowercase().starts_with(&v))),
            Some("endswith") => out.push(Box::new(move |s: &str| s.to_ascii_lowercase().ends_with(&v))),
            _ => {}
        }
    }
    out
}

async fn list(State(st): St, Path(zone): Path<String>, Query(q): Q) -> Reply {
    check_zone(&st, &zone)?;
    let zone_name = st.config.zone_name.clone();
    // Exact name filters may be relative; compare against the full name.
    let q: Vec<(String, String)> = q
        .into_iter()
        .map(|(k, v)| if k == "name" || k == "name.exact" { (k, full_name(&v, &zone_name)) } else { (k, v) })
        .collect();
    let name_f = string_filters(&q, "name");
    let content_f = string_filters(&q, "content");
    let comment_f = string_filters(&q, "comment");
    let kind = query_param(&q, "type").map(str::to_ascii_uppercase);
    let proxied = match query_param(&q, "proxied") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(CfError::bad_request(1004, "proxied must be true or false")),
    };
    let tag = query_param(&q, "tag").or(query_param(&q, "tag.exact")).map(str::to_owned);
    let any = query_param(&q, "match") == Some("any");
    let records = lock(&st.dns);
    let mut items: Vec<&Record> = records
        .by_id
        .values()
        .filter(|r| {
            let mut checks: Vec<bool> = Vec::new();
            checks.extend(name_f.iter().map(|f| f(&r.name)));
            checks.extend(content_f.iter().map(|f| f(&r.content)));
            checks.extend(comment_f.iter().map(|f| f(r.comment.as_deref().unwrap_or(""))));
            if let Some(k) = &kind {
                checks.push(&r.kind == k);
            }
            if let Some(p) = proxied {
                checks.push(r.proxied == p);
            }
            if let Some(t) = &tag {
                checks.push(r.tags.iter().any(|x| x == t || x.split(':').next() == Some(t.as_str())));
            }
            if checks.is_empty() {
                true
            } else if any {
                checks.iter().any(|c| *c)
            } else {
                checks.iter().all(|c| *c)
            }
        })
        .collect();
    let order = query_param(&q, "order").unwrap_or("type");
    items.sort_by(|a, b| {
        let key = |r: &Record| match order {
            "name" => r.name.clone(),
            "content" => r.content.clone(),
            "ttl" => format!("{:010}", r.ttl),
            "proxied" => r.proxied.to_string(),
            _ => r.kind.clone(),
        };
        key(a).cmp(&key(b)).then(a.created_on.cmp(&b.created_on))
    });
    if query_param(&q, "direction") == Some("desc") {
        items.reverse();
    }
    let rendered = items.into_iter().map(|r| r.json(&zone, &zone_name)).collect();
    ok_page(rendered, &q, 100, 5_000_000)
}

async fn get_one(State(st): St, Path((zone, id)): Path<(String, String)>) -> Reply {
    check_zone(&st, &zone)?;
    let records = lock(&st.dns);
    let r = records.by_id.get(&id).ok_or_else(not_found)?;
    ok(r.json(&zone, &st.config.zone_name))
}

async fn update(st: &CfState, zone: &str, id: &str, body: &[u8], partial: bool) -> Reply {
    check_zone(st, zone)?;
    let body = body_object(body)?;
    let mut records = lock(&st.dns);
    let current = records.by_id.get(id).ok_or_else(not_found)?.clone();
    let record = if partial {
        parse_record(&body, Some(&current), &st.config.zone_name)?
    } else {
        // PUT replaces the record: only identity and creation time carry over.
        let mut fresh = parse_record(&body, None, &st.config.zone_name)?;
        fresh.id = current.id.clone();
        fresh.created_on = current.created_on.clone();
        fresh
    };
    check_conflicts(&records, &record)?;
    let json = record.json(zone, &st.config.zone_name);
    records.by_id.insert(record.id.clone(), record);
    ok(json)
}

async fn patch(State(st): St, Path((zone, id)): Path<(String, String)>, body: Bytes) -> Reply {
    update(&st, &zone, &id, &body, true).await
}

async fn put(State(st): St, Path((zone, id)): Path<(String, String)>, body: Bytes) -> Reply {
    update(&st, &zone, &id, &body, false).await
}

async fn delete(State(st): St, Path((zone, id)): Path<(String, String)>) -> Reply {
    check_zone(&st, &zone)?;
    let mut records = lock(&st.dns);
    records.by_id.remove(&id).ok_or_else(not_found)?;
    ok(json!({"id": id}))
}
