//! Cloudflare Tunnels as the simulated account holds them: each tunnel's secret, remote
//! configuration and connections, and which simulated machine runs which connector. Secrets
//! are kept to derive tokens and are never rendered except in the token call.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use uuid::Uuid;

use super::envelope::now;
use super::tunnel_token::TunnelToken;

pub struct Tunnel {
    pub id: Uuid,
    pub name: String,
    pub created_at: String,
    pub deleted_at: Option<String>,
    pub config_src: String,
    pub(super) secret: Vec<u8>,
    pub connections: Vec<Value>,
    pub config: Option<(i64, Value, String)>,
    /// Connectors the sandbox's cloudflared runs: origin name → the connector's `client_id`
    /// (its connections carry it). Connections made through the test hook have no origin.
    pub(super) origins: BTreeMap<String, String>,
    /// When the tunnel last gained its first connection (null while it has none).
    pub(super) conns_active_at: Option<String>,
    /// When it last lost its last connection; None while it never had one.
    pub(super) conns_inactive_at: Option<String>,
}

/// How many connections one cloudflared opens (its `--ha-connections` default), spread over
/// two data centres.
const HA_CONNECTIONS: usize = 4;
const COLOS: [&str; 2] = ["fra06", "ams01"];

impl Tunnel {
    /// A tunnel just created: no connections, no remote configuration.
    pub fn new(name: &str, config_src: &str, secret: Vec<u8>) -> Self {
        Tunnel {
            id: Uuid::new_v4(),
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
        }
    }

    /// Cloudflare's statuses: `inactive` never ran, `healthy` has connections, `down` had
    /// some and has none now (`degraded`, some connections failing, is not simulated).
    pub fn status(&self) -> &'static str {
        match (self.connections.is_empty(), &self.conns_inactive_at) {
            (false, _) => "healthy",
            (true, None) => "inactive",
            (true, Some(_)) => "down",
        }
    }

    pub(super) fn json(&self, account: &str) -> Value {
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
    pub fn accepts(&self, account: &str, token: &TunnelToken) -> bool {
        self.deleted_at.is_none()
            && token.account_tag == account
            && token.tunnel_id == self.id.to_string()
            && B64.decode(&token.secret).is_ok_and(|s| s == self.secret)
    }

    /// One connector with its [`HA_CONNECTIONS`] connections; returns its client id.
    pub(super) fn add_connector(&mut self, origin_ip: &str) -> String {
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
    pub(super) fn drop_connector(&mut self, client_id: Option<&str>) {
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

    pub(super) fn config_json(&self, account: &str) -> Value {
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
    pub(super) by_id: BTreeMap<Uuid, Tunnel>,
}

impl Tunnels {
    /// Forgets the longest-deleted tunnels beyond [`KEPT_DELETED_TUNNELS`].
    pub(super) fn forget_old_deleted(&mut self) {
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
    pub fn accepting(&self, account: &str, token: &TunnelToken) -> Option<Uuid> {
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

    /// How many tunnels the account holds (deleted ones do not count against its limit).
    pub fn live_count(&self) -> usize {
        self.by_id.values().filter(|t| t.deleted_at.is_none()).count()
    }

    pub fn live_names(&self) -> Vec<String> {
        self.by_id.values().filter(|t| t.deleted_at.is_none()).map(|t| t.name.clone()).collect()
    }
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
