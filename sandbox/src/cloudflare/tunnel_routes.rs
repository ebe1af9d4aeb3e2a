//! Cloudflare Tunnel routes (`/accounts/{account_id}/cfd_tunnel`): create, list, get, patch,
//! delete (deleted tunnels stay listable), token, configurations and connections.
//! Secrets are kept to derive tokens and are never rendered except in the token call.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use serde_json::{Value, json};
use uuid::Uuid;

use super::envelope::{CfError, Reply, body_object, now, ok, ok_page};
use super::state::CfState;
use super::tunnels::{Tunnel, Tunnels};
use crate::http::{lock, query_param};

type St = State<Arc<CfState>>;
type Q = Query<Vec<(String, String)>>;

pub fn router() -> Router<Arc<CfState>> {
    Router::new()
        .route("/accounts/{account}/cfd_tunnel", get(list).post(create))
        .route("/accounts/{account}/cfd_tunnel/{id}", get(get_one).patch(patch).delete(delete))
        .route("/accounts/{account}/cfd_tunnel/{id}/token", get(token))
        .route("/accounts/{account}/cfd_tunnel/{id}/configurations", get(get_config).put(put_config))
        .route("/accounts/{account}/cfd_tunnel/{id}/connections", get(connections).delete(drop_connections))
}

fn check_account(st: &CfState, account: &str) -> Result<(), CfError> {
    if account == st.config.account_id { Ok(()) } else { Err(CfError::forbidden()) }
}

fn not_found() -> CfError {
    CfError::new(StatusCode::NOT_FOUND, 1002, "Tunnel not found")
}

fn parse_secret(v: Option<&Value>) -> Result<Option<Vec<u8>>, CfError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let bytes = B64.decode(s).map_err(|_| CfError::bad_request(1003, "tunnel_secret must be base64"))?;
            if bytes.len() < 32 {
                return Err(CfError::bad_request(1003, "tunnel_secret must be at least 32 bytes"));
            }
            Ok(Some(bytes))
        }
        Some(_) => Err(CfError::bad_request(1003, "tunnel_secret must be a string")),
    }
}

/// The refusal of a tunnel beyond the account's limit. Cloudflare documents the limit (1,000
/// cloudflared tunnels per account) but not this error's code: the stand-in answers in
/// Cloudflare's envelope with a 400 and a message naming the limit, which is what the
/// operator reads (any permanent refusal of a create that names a limit).
pub(super) fn tunnel_limit_reached(limit: usize) -> CfError {
    CfError::bad_request(
        TUNNEL_LIMIT_CODE,
        format!("Tunnel limit reached: this account may hold at most {limit} cloudflared tunnels"),
    )
}

/// The error code of [`tunnel_limit_reached`].
pub const TUNNEL_LIMIT_CODE: u32 = 1014;

async fn create(State(st): St, Path(account): Path<String>, body: Bytes) -> Reply {
    check_account(&st, &account)?;
    let body = body_object(&body)?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CfError::bad_request(1001, "name is required"))?;
    let config_src = match body.get("config_src").and_then(Value::as_str) {
        None => "local",
        Some(s @ ("local" | "cloudflare")) => s,
        Some(_) => return Err(CfError::bad_request(1001, "config_src must be local or cloudflare")),
    };
    let secret = match parse_secret(body.get("tunnel_secret"))? {
        Some(s) => s,
        None => {
            let mut s = vec![0u8; 32];
            rand::rng().fill_bytes(&mut s);
            s
        }
    };
    let mut tunnels = lock(&st.tunnels);
    if tunnels.by_id.values().any(|t| t.deleted_at.is_none() && t.name == name) {
        return Err(CfError::new(StatusCode::CONFLICT, 1013, "Tunnel with name already exists"));
    }
    let limit = st.tunnel_limit.load(std::sync::atomic::Ordering::Relaxed);
    if tunnels.live_count() >= limit {
        return Err(tunnel_limit_reached(limit));
    }
    let tunnel = Tunnel::new(name, config_src, secret);
    let id = tunnel.id;
    let json = tunnel.json(&account);
    tunnels.by_id.insert(id, tunnel);
    ok(json)
}

fn bool_param(q: &[(String, String)], key: &str) -> Result<Option<bool>, CfError> {
    match query_param(q, key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(CfError::bad_request(1001, format!("{key} must be true or false"))),
    }
}

async fn list(State(st): St, Path(account): Path<String>, Query(q): Q) -> Reply {
    check_account(&st, &account)?;
    let is_deleted = bool_param(&q, "is_deleted")?;
    let tunnels = lock(&st.tunnels);
    let mut items: Vec<&Tunnel> = tunnels
        .by_id
        .values()
        .filter(|t| query_param(&q, "name").is_none_or(|n| n == t.name))
        .filter(|t| query_param(&q, "uuid").is_none_or(|u| u == t.id.to_string()))
        .filter(|t| match is_deleted {
            None => true,
            Some(d) => t.deleted_at.is_some() == d,
        })
        .filter(|t| {
            let include = query_param(&q, "include_prefix").or(query_param(&q, "name_prefix"));
            include.is_none_or(|p| t.name.starts_with(p))
        })
        .filter(|t| query_param(&q, "exclude_prefix").is_none_or(|p| !t.name.starts_with(p)))
        .collect();
    items.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let mut rendered: Vec<Value> = items.into_iter().map(|t| t.json(&account)).collect();
    if let Some(status) = query_param(&q, "status") {
        rendered.retain(|t| t["status"] == status);
    }
    ok_page(rendered, &q, 20, 1000)
}

fn find<'a>(tunnels: &'a Tunnels, id: &str) -> Result<&'a Tunnel, CfError> {
    Uuid::parse_str(id).ok().and_then(|id| tunnels.by_id.get(&id)).ok_or_else(not_found)
}

fn find_mut<'a>(tunnels: &'a mut Tunnels, id: &str) -> Result<&'a mut Tunnel, CfError> {
    Uuid::parse_str(id).ok().and_then(|id| tunnels.by_id.get_mut(&id)).ok_or_else(not_found)
}

async fn get_one(State(st): St, Path((account, id)): Path<(String, String)>) -> Reply {
    check_account(&st, &account)?;
    let tunnels = lock(&st.tunnels);
    ok(find(&tunnels, &id)?.json(&account))
}

async fn patch(State(st): St, Path((account, id)): Path<(String, String)>, body: Bytes) -> Reply {
    check_account(&st, &account)?;
    let body = body_object(&body)?;
    let secret = parse_secret(body.get("tunnel_secret"))?;
    let name = body.get("name").and_then(Value::as_str);
    let mut tunnels = lock(&st.tunnels);
    let uuid = find(&tunnels, &id)?.id;
    if let Some(n) = name
        && tunnels.by_id.values().any(|t| t.deleted_at.is_none() && t.name == n && t.id != uuid)
    {
        return Err(CfError::new(StatusCode::CONFLICT, 1013, "Tunnel with name already exists"));
    }
    let t = find_mut(&mut tunnels, &id)?;
    if t.deleted_at.is_some() {
        return Err(not_found());
    }
    if let Some(n) = name {
        t.name = n.to_owned();
    }
    if let Some(s) = secret {
        t.secret = s;
    }
    ok(t.json(&account))
}

async fn delete(State(st): St, Path((account, id)): Path<(String, String)>, Query(q): Q) -> Reply {
    check_account(&st, &account)?;
    let cascade = bool_param(&q, "cascade")?.unwrap_or(false);
    let mut tunnels = lock(&st.tunnels);
    let t = find_mut(&mut tunnels, &id)?;
    if t.deleted_at.is_some() {
        return Err(CfError::bad_request(1003, "Tunnel has already been deleted"));
    }
    if !t.connections.is_empty() && !cascade {
        return Err(CfError::bad_request(1022, "Cannot delete tunnel because it has active connections"));
    }
    t.drop_connector(None);
    t.deleted_at = Some(now());
    let answer = t.json(&account);
    tunnels.forget_old_deleted();
    ok(answer)
}

async fn token(State(st): St, Path((account, id)): Path<(String, String)>) -> Reply {
    check_account(&st, &account)?;
    let tunnels = lock(&st.tunnels);
    let t = find(&tunnels, &id)?;
    if t.deleted_at.is_some() {
        return Err(not_found());
    }
    let inner = json!({"a": account, "t": t.id.to_string(), "s": B64.encode(&t.secret)});
    ok(Value::String(B64.encode(inner.to_string())))
}

async fn get_config(State(st): St, Path((account, id)): Path<(String, String)>) -> Reply {
    check_account(&st, &account)?;
    let tunnels = lock(&st.tunnels);
    ok(find(&tunnels, &id)?.config_json(&account))
}

async fn put_config(State(st): St, Path((account, id)): Path<(String, String)>, body: Bytes) -> Reply {
    check_account(&st, &account)?;
    let body = body_object(&body)?;
    let config = match body.get("config") {
        Some(c @ Value::Object(_)) => c.clone(),
        _ => return Err(CfError::bad_request(1001, "config is required")),
    };
    if let Some(ingress) = config.get("ingress") {
        let rules = ingress.as_array().ok_or_else(|| CfError::bad_request(1001, "config.ingress must be a list"))?;
        for rule in rules {
            if rule.get("service").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(CfError::bad_request(1001, "every ingress rule needs a service"));
            }
        }
        // The catch-all last rule is enforced by cloudflared, not (verifiably) by the API,
        // so it is not required here.
    }
    let mut tunnels = lock(&st.tunnels);
    let t = find_mut(&mut tunnels, &id)?;
    if t.deleted_at.is_some() {
        return Err(not_found());
    }
    // cloudflared ignores a configuration whose version is not newer than its own.
    let version = t.config.as_ref().map_or(0, |(v, _, _)| *v) + 1;
    t.config = Some((version, config, now()));
    ok(t.config_json(&account))
}

async fn connections(State(st): St, Path((account, id)): Path<(String, String)>) -> Reply {
    check_account(&st, &account)?;
    let tunnels = lock(&st.tunnels);
    let t = find(&tunnels, &id)?;
    // One connector (a cloudflared process, by client_id) holds several connections.
    let mut connectors: Vec<Value> = Vec::new();
    for c in &t.connections {
        match connectors.iter_mut().find(|k| k["id"] == c["client_id"]) {
            Some(k) => {
                if let Some(conns) = k["conns"].as_array_mut() {
                    conns.push(c.clone());
                }
            }
            None => connectors.push(json!({
                "id": c["client_id"], "features": ["ha-origin"], "version": c["client_version"],
                "arch": "linux_amd64", "run_at": c["opened_at"], "conns": [c],
            })),
        }
    }
    ok(Value::Array(connectors))
}

async fn drop_connections(State(st): St, Path((account, id)): Path<(String, String)>, Query(q): Q) -> Reply {
    check_account(&st, &account)?;
    let mut tunnels = lock(&st.tunnels);
    let t = find_mut(&mut tunnels, &id)?;
    t.drop_connector(query_param(&q, "client_id"));
    ok(Value::Null)
}
