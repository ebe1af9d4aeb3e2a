//! A stateful simulator of the Cloudflare API (`/client/v4`): Cloudflare Tunnels with their
//! remote configuration and token, and DNS records of one zone, in Cloudflare's envelope.
//! It never reaches the network beyond its own listener and never logs a tunnel secret.
//!
//! Choices where the public material is silent or unverified: an unknown token gets 401 code
//! 1000; deleting an already deleted tunnel 400 code 1003; the catch-all ingress rule is not
//! enforced API-side (cloudflared enforces it); once the budget is spent every call gets 429
//! for a whole window, with `Retry-After`.

mod account;
mod dns;
mod envelope;
mod tunnels;

use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::net::TcpListener;

pub use crate::http::RunningSim;
use crate::http::{Dialect, RateBudget, SimParts, lock, serve};

/// The account and zone a simulated token may use.
#[derive(Clone)]
pub struct CloudflareSimConfig {
    /// The API token (compared, never logged).
    pub token: String,
    pub account_id: String,
    pub zone_id: String,
    pub zone_name: String,
    /// Requests per window (1200 per 300 s on the real API).
    pub rate_limit: u32,
    /// Refill speed; `None` = `rate_limit / 300` per second.
    pub rate_refill_per_sec: Option<f64>,
}

impl Default for CloudflareSimConfig {
    fn default() -> Self {
        CloudflareSimConfig {
            token: "sim-cloudflare-token".to_owned(),
            account_id: "023e105f4ecef8ad9ca31a8372d0c353".to_owned(),
            zone_id: "023e105f4ecef8ad9ca31a8372d0c354".to_owned(),
            zone_name: "example.com".to_owned(),
            rate_limit: 1200,
            rate_refill_per_sec: None,
        }
    }
}

/// By hand so the token never shows (the sandbox prints its configuration).
impl std::fmt::Debug for CloudflareSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareSimConfig")
            .field("token", &"<redacted>")
            .field("account_id", &self.account_id)
            .field("zone_id", &self.zone_id)
            .field("zone_name", &self.zone_name)
            .field("rate_limit", &self.rate_limit)
            .field("rate_refill_per_sec", &self.rate_refill_per_sec)
            .finish()
    }
}

pub(crate) struct CfState {
    pub config: CloudflareSimConfig,
    pub tunnels: Mutex<tunnels::Tunnels>,
    pub dns: Mutex<dns::Records>,
}

/// Serves a fresh account and zone on `listener`; the base URL ends in `/client/v4`.
pub async fn spawn(config: CloudflareSimConfig, listener: TcpListener) -> std::io::Result<RunningSim> {
    let budget = RateBudget {
        capacity: config.rate_limit,
        refill_per_sec: config.rate_refill_per_sec.unwrap_or(f64::from(config.rate_limit) / 300.0),
    };
    let state = Arc::new(CfState {
        config: config.clone(),
        tunnels: Mutex::new(tunnels::Tunnels::default()),
        dns: Mutex::new(dns::Records::default()),
    });
    let router = Router::new()
        .merge(account::router())
        .merge(tunnels::router())
        .merge(dns::router())
        .with_state(Arc::clone(&state));
    serve(
        SimParts { dialect: Dialect::Cloudflare, token: config.token, budget, base_path: "/client/v4", router, state },
        listener,
    )
    .await
}

/// Test hook: a connector connects to the tunnel (so delete without `cascade` is refused).
pub fn connect_tunnel(sim: &RunningSim, tunnel_id: &str) -> bool {
    sim.state::<CfState>().is_some_and(|st| lock(&st.tunnels).connect(tunnel_id))
}

/// Names of the tunnels not deleted (tests check for duplicates with it).
pub fn live_tunnel_names(sim: &RunningSim) -> Vec<String> {
    sim.state::<CfState>().map(|st| lock(&st.tunnels).live_names()).unwrap_or_default()
}

/// Number of DNS records in the zone.
pub fn dns_record_count(sim: &RunningSim) -> usize {
    sim.state::<CfState>().map(|st| lock(&st.dns).len()).unwrap_or_default()
}

/// Fault hook: the tunnel disappears behind everyone's back. Returns whether it existed.
pub fn vanish_tunnel(sim: &RunningSim, tunnel_id: &str) -> bool {
    sim.state::<CfState>().is_some_and(|st| lock(&st.tunnels).vanish(tunnel_id))
}
