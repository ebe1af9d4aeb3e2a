//! The Cloudflare half of the control API (`/_sim/...` on the simulator's port): tunnels and
//! DNS records that vanish, connectors that connect, and a summary of the account. Behind the
//! token like every control route ([`crate::http::control`]); it never renders a tunnel
//! secret or token.

use std::any::Any;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{delete, get, post};
use serde_json::json;

use super::CfState;
use crate::http::control::{ControlError, ControlReply, ok};
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

/// The routes, relative to `/_sim`; empty if `state` is not a Cloudflare simulator's.
pub(crate) fn router(state: Arc<dyn Any + Send + Sync>) -> Router {
    let Ok(st) = state.downcast::<CfState>() else { return Router::new() };
    Router::new()
        .route("/cloudflare", get(summary))
        .route("/tunnels/{id}", delete(vanish_tunnel))
        .route("/tunnels/{id}/connections", post(connect))
        .route("/dns_records/{id}", delete(vanish_record))
        .with_state(st)
}
