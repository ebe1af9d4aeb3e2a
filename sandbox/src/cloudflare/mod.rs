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
pub(crate) mod control;
mod dns;
mod envelope;
mod tunnels;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use cloudflared::{ConnectorChange, Origin, TunnelToken, find_tunnel_tokens, sync_origins};

use axum::Router;
use tokio::net::TcpListener;

pub use crate::http::RunningSim;
use crate::http::{Dialect, RateBudget, SimParts, lock, serve};
use crate::time_scale::scaled;

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
    /// Refill speed; `None` = `rate_limit` per five minutes (divided by `time_scale`).
    pub rate_refill_per_sec: Option<f64>,
    /// How much faster than real time the simulated world runs: the five-minute window lasts
    /// `300 s / time_scale`, as Hetzner's actions do under the same scale.
    pub time_scale: f64,
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
            time_scale: 1.0,
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
            .field("time_scale", &self.time_scale)
            .finish()
    }
}

/// Cloudflare's rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(300);

impl CloudflareSimConfig {
    fn budget(&self) -> RateBudget {
        let window = scaled(RATE_WINDOW, self.time_scale).as_secs_f64().max(f64::EPSILON);
        RateBudget {
            capacity: self.rate_limit,
            refill_per_sec: self.rate_refill_per_sec.unwrap_or(f64::from(self.rate_limit) / window),
        }
    }
}

pub(crate) struct CfState {
    pub config: CloudflareSimConfig,
    pub tunnels: Mutex<tunnels::Tunnels>,
    pub dns: Mutex<dns::Records>,
    /// Machines seen running cloudflared and since when ([`sync_origins`]).
    pub origins: Mutex<cloudflared::Origins>,
}

/// Serves a fresh account and zone on `listener`; the base URL ends in `/client/v4`.
pub async fn spawn(config: CloudflareSimConfig, listener: TcpListener) -> std::io::Result<RunningSim> {
    let budget = config.budget();
    let state = Arc::new(CfState {
        config: config.clone(),
        tunnels: Mutex::new(tunnels::Tunnels::default()),
        dns: Mutex::new(dns::Records::default()),
        origins: Mutex::new(cloudflared::Origins::default()),
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

/// Every DNS record of the zone as (id, name, comment), in id order: what an invariant check
/// compares with the objects.
pub fn dns_records(sim: &RunningSim) -> Vec<(String, String, Option<String>)> {
    sim.state::<CfState>().map(|st| lock(&st.dns).summary()).unwrap_or_default()
}

/// Fault hook: the tunnel disappears behind everyone's back. Returns whether it existed.
pub fn vanish_tunnel(sim: &RunningSim, tunnel_id: &str) -> bool {
    sim.state::<CfState>().is_some_and(|st| lock(&st.tunnels).vanish(tunnel_id))
}

/// Fault hook: the DNS record disappears behind everyone's back. Returns whether it existed.
pub fn vanish_dns_record(sim: &RunningSim, record_id: &str) -> bool {
    sim.state::<CfState>().is_some_and(|st| lock(&st.dns).vanish(record_id))
}

/// The status the API reports for a tunnel (`inactive`, `healthy`, `down`), if it exists.
pub fn tunnel_status(sim: &RunningSim, tunnel_id: &str) -> Option<&'static str> {
    sim.state::<CfState>().and_then(|st| lock(&st.tunnels).status_of(tunnel_id))
}
