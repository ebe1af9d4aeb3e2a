//! The Hetzner half of the control API (`/_sim/...` on the simulator's port): servers and
//! firewalls that vanish, a server's `user_data`, guests that ignore ACPI, failing actions,
//! project limits and a summary of the project. Behind the token like every control route
//! ([`crate::http::control`]). `user_data` (which may carry a tunnel token) leaves only
//! through its own endpoint, never in a summary or the request log.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::HzState;
use super::world::World;
use crate::http::control::{ControlError, ControlReply, ok, parse_body};
use crate::http::lock;

type St = State<Arc<HzState>>;

fn server_id(raw: &str) -> Result<i64, ControlError> {
    raw.parse().map_err(|_| ControlError::bad_request("server id must be an integer"))
}

async fn summary(State(st): St) -> ControlReply {
    let now = Instant::now();
    let mut w = lock(&st.world);
    w.advance(now);
    let boot_delay = w.boot_delay;
    let servers: Vec<Value> = w
        .servers
        .values()
        .map(|s| json!({"id": s.id, "name": s.name, "status": s.status, "booted": s.booted(now, boot_delay)}))
        .collect();
    ok(json!({
        "servers": servers,
        "firewall_count": w.firewalls.len(),
        "servers_created": w.servers_created,
        "limits": limits_json(&w),
    }))
}

fn limits_json(w: &World) -> Value {
    json!({"servers": w.server_limit, "firewalls": w.firewall_limit, "firewalls_per_server": w.firewalls_per_server})
}

async fn vanish_server(State(st): St, Path(id): Path<String>) -> ControlReply {
    let id = server_id(&id)?;
    match lock(&st.world).remove_server(id) {
        Some(_) => ok(json!({"vanished": id})),
        None => Err(ControlError::not_found("no such server")),
    }
}

async fn user_data(State(st): St, Path(id): Path<String>) -> ControlReply {
    let id = server_id(&id)?;
    let w = lock(&st.world);
    let server = w.servers.get(&id).ok_or_else(|| ControlError::not_found("no such server"))?;
    ok(json!({"id": id, "user_data": server.user_data.as_deref()}))
}

async fn vanish_firewall(State(st): St, Path(id): Path<String>) -> ControlReply {
    let id: i64 = id.parse().map_err(|_| ControlError::bad_request("firewall id must be an integer"))?;
    match lock(&st.world).firewalls.remove(&id) {
        Some(_) => ok(json!({"vanished": id})),
        None => Err(ControlError::not_found("no such firewall")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Count {
    count: u32,
}

async fn fail_next_actions(State(st): St, body: Bytes) -> ControlReply {
    let Count { count } = parse_body(&body)?;
    lock(&st.world).fail_next_actions = count;
    ok(json!({"fail_next_actions": count}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    servers: Option<usize>,
    firewalls: Option<usize>,
    firewalls_per_server: Option<usize>,
}

async fn get_limits(State(st): St) -> ControlReply {
    ok(limits_json(&lock(&st.world)))
}

async fn put_limits(State(st): St, body: Bytes) -> ControlReply {
    let limits: Limits = parse_body(&body)?;
    let mut w = lock(&st.world);
    w.server_limit = limits.servers.unwrap_or(w.server_limit);
    w.firewall_limit = limits.firewalls.unwrap_or(w.firewall_limit);
    w.firewalls_per_server = limits.firewalls_per_server.unwrap_or(w.firewalls_per_server);
    ok(limits_json(&w))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Acpi {
    ignores_acpi: bool,
}

async fn set_ignores_acpi(State(st): St, Path(id): Path<String>, body: Bytes) -> ControlReply {
    let id = server_id(&id)?;
    let Acpi { ignores_acpi } = parse_body(&body)?;
    if lock(&st.world).set_ignores_acpi(id, ignores_acpi) {
        ok(json!({"id": id, "ignores_acpi": ignores_acpi}))
    } else {
        Err(ControlError::not_found("no such server"))
    }
}

/// The routes, relative to `/_sim`, that the plumbing serves beside its generic ones.
pub(super) fn router(st: Arc<HzState>) -> Router {
    Router::new()
        .route("/hetzner", get(summary))
        .route("/servers/{id}", delete(vanish_server))
        .route("/servers/{id}/user_data", get(user_data))
        .route("/servers/{id}/ignores_acpi", put(set_ignores_acpi))
        .route("/firewalls/{id}", delete(vanish_firewall))
        .route("/actions/fail_next", post(fail_next_actions))
        .route("/limits", get(get_limits).put(put_limits))
        .with_state(st)
}
