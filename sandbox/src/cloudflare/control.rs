//! The Cloudflare half of the control API (`/_sim/...` on the simulator's port): tunnels and
//! DNS records that vanish, connectors that connect, and a summary of the account. Behind the
//! token like every control route ([`crate::http::control`]); it never renders a tunnel
//! secret or token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::cloudflared::Origin;
use super::state::CfState;
use crate::http::control::{ControlError, ControlReply, ok, parse_body};
use crate::http::lock;

type St = State<Arc<CfState>>;

async fn summary(State(st): St) -> ControlReply {
    let tunnels = lock(&st.tunnels).summary();
    let dns_records = lock(&st.dns).len();
    ok(json!({"tunnels": tunnels, "dns_record_count": dns_records}))
}

async fn vanish_tunnel(State(st): St, Path(id): Path<String>) -> ControlReply {
    if lock(&st.tunnels).vanish(&id) {
        ok(json!({"vanished": id}))
    } else {
        Err(ControlError::not_found("no such tunnel"))
    }
}

async fn connect(State(st): St, Path(id): Path<String>) -> ControlReply {
    if lock(&st.tunnels).connect(&id) {
        ok(json!({"connected": id}))
    } else {
        Err(ControlError::not_found("no such live tunnel"))
    }
}

async fn vanish_record(State(st): St, Path(id): Path<String>) -> ControlReply {
    if lock(&st.dns).vanish(&id) {
        ok(json!({"vanished": id}))
    } else {
        Err(ControlError::not_found("no such DNS record"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginSpec {
    key: String,
    #[serde(default)]
    user_data: Option<String>,
    #[serde(default)]
    origin_ip: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Running {
    origins: Vec<OriginSpec>,
    #[serde(default)]
    connect_delay_ms: u64,
}

/// The machines running now, for a simulator whose machines live in another process: what
/// the sandbox's cloudflared does in-process ([`super::hooks::sync_origins`]).
async fn running_origins(State(st): St, body: Bytes) -> ControlReply {
    let running: Running = parse_body(&body)?;
    let origins: Vec<Origin> = running
        .origins
        .into_iter()
        .map(|o| Origin { key: o.key, user_data: o.user_data.map(Arc::from), origin_ip: o.origin_ip })
        .collect();
    let changes: Vec<Value> = st
        .sync_origins(&origins, Duration::from_millis(running.connect_delay_ms), Instant::now())
        .into_iter()
        .map(|c| json!({"origin": c.origin, "tunnel_id": c.tunnel_id, "connected": c.connected}))
        .collect();
    ok(json!({"changes": changes}))
}

/// The routes, relative to `/_sim`, that the plumbing serves beside its generic ones.
pub(super) fn router(st: Arc<CfState>) -> Router {
    Router::new()
        .route("/cloudflare", get(summary))
        .route("/tunnels/{id}", delete(vanish_tunnel))
        .route("/tunnels/{id}/connections", post(connect))
        .route("/dns_records/{id}", delete(vanish_record))
        .route("/origins", post(running_origins))
        .with_state(st)
}
