//! Cloudflare Tunnel routes (`/accounts/{account_id}/cfd_tunnel`): create, list, get, patch,
//! delete (deleted tunnels stay listable), token, configurations and connections.
//! Secrets are kept to derive tokens and are never rendered except in the token call.

use std::collections::BTreeMap;
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

use super::CfState;
use super::envelope::{CfError, Reply, body_object, now, ok, ok_page, q_get};
use crate::http::lock;

pub struct Tunnel {
    pub id: Uuid,
    pub name: String,
    pub created_at: String,
    pub deleted_at: Option<String>,
    pub config_src: String,
    secret: Vec<u8>,
    pub connections: Vec<Value>,
    pub config: Option<(i64, Value, String)>,
    /// Connectors the sandbox's cloudflared runs: origin name → the connector's `client_id`
    /// (its connections carry it). Connections made through the test hook have no origin.
    origins: BTreeMap<String, String>,
    /// When the tunnel last gained its first connection (null while it has none).
    conns_active_at: Option<String>,
    /// When it last lost its last connection; None while it never had one.
    conns_inactive_at: Option<String>,
}

/// How many connections one cloudflared opens (its `--ha-connections` default), spread over
/// two data centres.
const HA_CONNECTIONS: usize = 4;
const COLOS: [&str; 2] = ["fra06", "ams01"];

impl Tunnel {
    /// Cloudflare's statuses: `inactive` never ran, `healthy` has connections, `down` had
    /// some and has none now (`degraded`, some connections failing, is not simulated).
    pub fn status(&self) -> &'static str {
        match (self.connections.is_empty(), &self.conns_inactive_at) {
            (false, _) => "healthy",
            (true, None) => "inactive",
            (true, Some(_)) => "down",
        }
    }

    fn json(&self, account: &str) -> Value {
        json!({
            "id": self.id.to_string(),
            "account_tag": account,
            "name": self.name,
            "created_at": self.created_at,
            "deleted_at": self.deleted_at,
            "connections": self.connections,
            "conns_active_at": self.conns_active_at,
            // Never run: inactive since it was made.
            "conns_inactive_at": if self.connections.is_empty() {
                Value::String(self.conns_inactive_at.clone().unwrap_or_else(|| self.created_at.clone()))
            } else {
                Value::Null
            },
            "config_src": self.config_src,
            "remote_config": self.config_src == "cloudflare",
            "status": self.status(),
            "tun_type": "cfd_tunnel",
            "metadata": {},
        })
    }

    /// Whether `token` names this tunnel with its account and current secret, as the edge
    /// checks a connecting cloudflared.
    pub fn accepts(&self, account: &str, token: &super::TunnelToken) -> bool {
        self.deleted_at.is_none()
            && token.account_tag == account
            && token.tunnel_id == self.id.to_string()
            && B64.decode(&token.secret).is_ok_and(|s| s == self.secret)
    }

    /// One connector with its [`HA_CONNECTIONS`] connections; returns its client id.
    fn add_connector(&mut self, origin_ip: &str) -> String {
        let client_id = Uuid::new_v4().to_string();
        let opened_at = now();
        for i in 0..HA_CONNECTIONS {
            let conn_id = Uuid::new_v4().to_string();
            self.connections.push(json!({
                "id": conn_id,
                "uuid": conn_id,
                "client_id": client_id,
                "client_version": "2026.11.0",
                "colo_name": COLOS[i % COLOS.len()],
                "is_pending_reconnect": false,
                "origin_ip": origin_ip,
                "opened_at": opened_at,
            }));
        }
        if self.conns_active_at.is_none() {
            self.conns_active_at = Some(opened_at);
        }
        client_id
    }

    /// Drops the connections of one connector (every one when `client_id` is None).
    fn drop_connector(&mut self, client_id: Option<&str>) {
        let before = self.connections.len();
        match client_id {
            Some(client) => self.connections.retain(|c| c["client_id"] != client),
            None => self.connections.clear(),
        }
        self.origins.retain(|_, c| client_id.is_some_and(|id| id != c.as_str()));
        if self.connections.is_empty() && before > 0 {
            self.conns_active_at = None;
            self.conns_inactive_at = Some(now());
        }
    }

    fn config_json(&self, account: &str) -> Value {
        let (version, config, created_at) = match &self.config {
            Some((v, c, at)) => (*v, c.clone(), at.clone()),
            None => (0, Value::Null, self.created_at.clone()),
        };
        json!({
            "tunnel_id": self.id.to_string(),
            "account_id": account,
            "version": version,
            "config": config,
            "source": self.config_src,
            "created_at": created_at,
        })
    }
}

/// Deleted tunnels stay listable (as on Cloudflare) up to this many; the longest-deleted go
/// first, so a long-running sandbox does not grow without bound.
const KEPT_DELETED_TUNNELS: usize = 10_000;

#[derive(Default)]
pub struct Tunnels {
    by_id: BTreeMap<Uuid, Tunnel>,
}

impl Tunnels {
    /// Forgets the longest-deleted tunnels beyond [`KEPT_DELETED_TUNNELS`].
    fn forget_old_deleted(&mut self) {
        let mut deleted: Vec<(String, Uuid)> =
            self.by_id.values().filter_map(|t| t.deleted_at.clone().map(|at| (at, t.id))).collect();
        if deleted.len() <= KEPT_DELETED_TUNNELS {
            return;
        }
        // RFC 3339 timestamps of one format sort chronologically.
        deleted.sort();
        for (_, id) in &deleted[..deleted.len() - KEPT_DELETED_TUNNELS] {
            self.by_id.remove(id);
        }
    }

    /// Removes a tunnel without a trace (not even as deleted), as if purged out of band.
    pub fn vanish(&mut self, id: &str) -> bool {
        Uuid::parse_str(id).ok().and_then(|id| self.by_id.remove(&id)).is_some()
    }

    /// A connector with no origin machine connects (the test hook): it stays until the
    /// tunnel is deleted or its connections are dropped through the API.
    pub fn connect(&mut self, id: &str) -> bool {
        let Some(t) = Uuid::parse_str(id).ok().and_then(|id| self.by_id.get_mut(&id)) else {
            return false;
        };
        if t.deleted_at.is_some() {
            return false;
        }
        t.add_connector("198.51.100.7");
        true
    }

    /// The live tunnel `token` opens, if any.
    pub fn accepting(&self, account: &str, token: &super::TunnelToken) -> Option<Uuid> {
        let id = Uuid::parse_str(&token.tunnel_id).ok()?;
        self.by_id.get(&id).filter(|t| t.accepts(account, token)).map(|t| t.id)
    }

    /// Every origin with a connector, and its tunnel.
    pub fn connected_origins(&self) -> Vec<(String, Uuid)> {
        self.by_id.values().flat_map(|t| t.origins.keys().map(|o| (o.clone(), t.id))).collect()
    }

    /// `origin`'s cloudflared connects to tunnel `id`.
    pub fn connect_origin(&mut self, id: Uuid, origin: &str, origin_ip: &str) {
        if let Some(t) = self.by_id.get_mut(&id) {
            let client_id = t.add_connector(origin_ip);
            t.origins.insert(origin.to_owned(), client_id);
        }
    }

    /// `origin`'s cloudflared is gone (its machine stopped): its connections close.
    pub fn disconnect_origin(&mut self, origin: &str) -> Option<Uuid> {
        let t = self.by_id.values_mut().find(|t| t.origins.contains_key(origin))?;
        let client_id = t.origins.get(origin).cloned();
        t.drop_connector(client_id.as_deref());
        Some(t.id)
    }

    /// (id, name, status, connections) of every tunnel, deleted ones included.
    pub fn summary(&self) -> Vec<Value> {
        self.by_id
            .values()
            .map(|t| {
                json!({
                    "id": t.id.to_string(), "name": t.name, "status": t.status(),
                    "deleted": t.deleted_at.is_some(), "connections": t.connections.len(),
                    "origins": t.origins.keys().collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    pub fn status_of(&self, id: &str) -> Option<&'static str> {
        Uuid::parse_str(id).ok().and_then(|id| self.by_id.get(&id)).map(Tunnel::status)
    }

    pub fn live_names(&self) -> Vec<String> {
        self.by_id.values().filter(|t| t.deleted_at.is_none()).map(|t| t.name.clone()).collect()
    }
}

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
    let id = Uuid::new_v4();
    let tunnel = Tunnel {
        id,
        name: name.to_owned(),
        created_at: now(),
        deleted_at: None,
        config_src: config_src.to_owned(),
        secret,
        connections: Vec::new(),
        config: None,
        origins: BTreeMap::new(),
        conns_active_at: None,
        conns_inactive_at: None,
    };
    let json = tunnel.json(&account);
    tunnels.by_id.insert(id, tunnel);
    ok(json)
}

fn bool_param(q: &[(String, String)], key: &str) -> Result<Option<bool>, CfError> {
    match q_get(q, key) {
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
        .filter(|t| q_get(&q, "name").is_none_or(|n| n == t.name))
        .filter(|t| q_get(&q, "uuid").is_none_or(|u| u == t.id.to_string()))
        .filter(|t| match is_deleted {
            None => true,
            Some(d) => t.deleted_at.is_some() == d,
        })
        .filter(|t| {
            let include = q_get(&q, "include_prefix").or(q_get(&q, "name_prefix"));
            include.is_none_or(|p| t.name.starts_with(p))
        })
        .filter(|t| q_get(&q, "exclude_prefix").is_none_or(|p| !t.name.starts_with(p)))
        .collect();
    items.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let mut rendered: Vec<Value> = items.into_iter().map(|t| t.json(&account)).collect();
    if let Some(status) = q_get(&q, "status") {
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
    t.drop_connector(q_get(&q, "client_id"));
    ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(n: usize, deleted_at: Option<String>) -> Tunnel {
        Tunnel {
            id: Uuid::new_v4(),
            name: format!("t{n}"),
            created_at: now(),
            deleted_at,
            config_src: "cloudflare".into(),
            secret: vec![0; 32],
            connections: Vec::new(),
            config: None,
            origins: BTreeMap::new(),
            conns_active_at: None,
            conns_inactive_at: None,
        }
    }

    #[test]
    fn only_the_longest_deleted_tunnels_are_forgotten() {
        let mut tunnels = Tunnels::default();
        let live = tunnel(0, None);
        let live_id = live.id;
        tunnels.by_id.insert(live_id, live);
        let oldest = tunnel(1, Some("2026-01-01T00:00:00Z".into()));
        let oldest_id = oldest.id;
        tunnels.by_id.insert(oldest_id, oldest);
        for n in 0..KEPT_DELETED_TUNNELS {
            let t = tunnel(n + 2, Some(format!("2026-06-01T00:00:00.{n:06}Z")));
            tunnels.by_id.insert(t.id, t);
        }
        tunnels.forget_old_deleted();
        assert_eq!(tunnels.by_id.len(), KEPT_DELETED_TUNNELS + 1);
        assert!(tunnels.by_id.contains_key(&live_id), "live tunnels are never forgotten");
        assert!(!tunnels.by_id.contains_key(&oldest_id), "the longest-deleted goes first");
    }
}
