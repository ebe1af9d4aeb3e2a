//! A stateful simulator of the Cloudflare API (`/client/v4`): Cloudflare Tunnels with their
//! remote configuration and token, and DNS records of one zone, in Cloudflare's envelope.
//! It never reaches the network beyond its own listener and never logs a tunnel secret.
//!
//! Choices where the public material is silent or unverified: an unknown token gets 401 code
//! 1000; deleting an already deleted tunnel 400 code 1003; the catch-all ingress rule is not
//! enforced API-side (cloudflared enforces it); once the budget is spent every call gets 429
//! for a whole window, with `Retry-After`.
//!
//! It can also play `cloudflared` for machines someone else simulates ([`sync_origins`]): a
//! machine whose user_data carries a valid tunnel token connects that tunnel.

mod account;
mod cloudflared;
mod config;
// The Cloudflare half of the control API (`/_sim/`), handed to the shared plumbing by `spawn`.
mod control;
mod dialect;
mod dns;
mod dns_routes;
mod envelope;
mod hooks;
mod state;
mod tunnel_routes;
mod tunnel_token;
mod tunnels;

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use crate::http::RunningSim;
use crate::http::{SimParts, serve};
pub use cloudflared::{ConnectorChange, Origin};
pub use config::{CloudflareSimConfig, DNS_RECORDS_PER_ZONE, TUNNELS_PER_ACCOUNT};
use dialect::CloudflareDialect;
pub use dns_routes::DNS_QUOTA_CODE;
pub use hooks::{
    add_foreign_dns_records, add_foreign_tunnels, connect_tunnel, dns_record_count, dns_records, live_tunnel_names,
    set_dns_record_limit, set_tunnel_limit, sync_origins, tunnel_status, vanish_dns_record, vanish_tunnel,
};
use state::CfState;
pub use tunnel_routes::TUNNEL_LIMIT_CODE;
pub use tunnel_token::{TunnelToken, find_tunnel_tokens};

/// Serves a fresh account and zone on `listener`; the base URL ends in `/client/v4`.
pub async fn spawn(config: CloudflareSimConfig, listener: TcpListener) -> std::io::Result<RunningSim> {
    let token = config.token.clone();
    let budget = config.budget();
    let state = Arc::new(CfState::new(config));
    let api = Router::new()
        .merge(account::router())
        .merge(tunnel_routes::router())
        .merge(dns_routes::router())
        .with_state(Arc::clone(&state));
    serve(
        SimParts {
            dialect: Box::new(CloudflareDialect),
            token,
            budget,
            base_path: "/client/v4",
            api,
            control: control::router(Arc::clone(&state)),
            state,
        },
        listener,
    )
    .await
}
