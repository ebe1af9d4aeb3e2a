//! A stateful simulator of the Hetzner Cloud API (`/v1`): servers, power actions, firewalls,
//! SSH keys, actions and the read-only catalog, faithful enough for the official clients.
//! It never reaches the network beyond its own listener.
//!
//! Choices where the public material is silent or unverified (judged by what hcloud-python,
//! hcloud-go and the `hcloud` crate's models accept):
//! - `create_server` and `start_server` finish together, so waiting for the create action
//!   (as the documented examples do) leaves a running, unlocked server.
//! - 429 carries `RateLimit-*` but no `Retry-After` (unverified for Hetzner; clients ignore it).
//! - Deleting a server detaches its firewalls at once; the server disappears immediately.
//! - `server_type.locations[]` carries `available`/`recommended` although the crate's model
//!   predates them; a type is listed only where it is sold (or everywhere once deprecated).
//! - `/datacenters` answers 410 `deprecated_api_endpoint` (removed 2026-10-01).

mod catalog;
// The Hetzner half of the control API (`/_sim/`), wired in by `crate::http::control`.
pub(crate) mod control;
pub mod labels;
mod routes;
mod world;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

pub use crate::http::RunningSim;
use crate::http::{Dialect, RateBudget, SimParts, lock, serve};
use routes::HzState;
use world::World;

/// How a simulated Hetzner project behaves.
#[derive(Clone)]
pub struct HetznerSimConfig {
    /// The project's API token (compared, never logged).
    pub token: String,
    /// `RateLimit-Limit`: requests per hour (the burst size).
    pub rate_limit_per_hour: u32,
    /// Refill speed; `None` = `rate_limit_per_hour / 3600` per second, like the real API.
    /// Tests set it high to run a whole hour of budget in a second.
    pub rate_refill_per_sec: Option<f64>,
    /// How long every action takes to finish.
    pub action_duration: Duration,
    /// Most servers the project may hold (`resource_limit_exceeded` beyond it).
    pub server_limit: usize,
}

impl Default for HetznerSimConfig {
    fn default() -> Self {
        HetznerSimConfig {
            token: "sim-hetzner-token".to_owned(),
            rate_limit_per_hour: 3600,
            rate_refill_per_sec: None,
            action_duration: Duration::from_millis(500),
            server_limit: 100,
        }
    }
}

/// By hand so the token never shows (the sandbox prints its configuration).
impl std::fmt::Debug for HetznerSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HetznerSimConfig")
            .field("token", &"<redacted>")
            .field("rate_limit_per_hour", &self.rate_limit_per_hour)
            .field("rate_refill_per_sec", &self.rate_refill_per_sec)
            .field("action_duration", &self.action_duration)
            .field("server_limit", &self.server_limit)
            .finish()
    }
}

impl HetznerSimConfig {
    fn budget(&self) -> RateBudget {
        RateBudget {
            capacity: self.rate_limit_per_hour,
            refill_per_sec: self.rate_refill_per_sec.unwrap_or(f64::from(self.rate_limit_per_hour) / 3600.0),
        }
    }
}

/// Serves a fresh, empty project on `listener`; the base URL ends in `/v1`.
pub async fn spawn(config: HetznerSimConfig, listener: TcpListener) -> std::io::Result<RunningSim> {
    let state = Arc::new(HzState { world: Mutex::new(World::new(config.action_duration, config.server_limit)) });
    serve(
        SimParts {
            dialect: Dialect::Hetzner,
            token: config.token.clone(),
            budget: config.budget(),
            base_path: "/v1",
            router: routes::router(Arc::clone(&state)),
            state,
        },
        listener,
    )
    .await
}

/// Fault hook: the server disappears behind everyone's back (as if deleted in the console).
/// Returns whether it existed.
pub fn vanish_server(sim: &RunningSim, id: i64) -> bool {
    sim.state::<HzState>().is_some_and(|st| lock(&st.world).remove_server(id).is_some())
}

/// Names of all servers now in the project (tests check for duplicates with it).
pub fn server_names(sim: &RunningSim) -> Vec<String> {
    sim.state::<HzState>()
        .map(|st| lock(&st.world).servers.values().map(|s| s.name.clone()).collect())
        .unwrap_or_default()
}

/// Number of firewalls now in the project.
pub fn firewall_count(sim: &RunningSim) -> usize {
    sim.state::<HzState>().map(|st| lock(&st.world).firewalls.len()).unwrap_or_default()
}

/// Servers ever created in this project, deleted ones included.
pub fn servers_created(sim: &RunningSim) -> u64 {
    sim.state::<HzState>().map(|st| lock(&st.world).servers_created).unwrap_or_default()
}

/// Fault hook: the next `n` actions started end in status `error` (code `action_failed`)
/// and change nothing.
pub fn fail_next_actions(sim: &RunningSim, n: u32) {
    if let Some(st) = sim.state::<HzState>() {
        lock(&st.world).fail_next_actions = n;
    }
}

/// A server whose simulated OS has finished booting: what a guest agent (cloud-init running
/// `cloudflared`, say) would see as "up", with the `user_data` it was created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootedServer {
    pub id: i64,
    pub name: String,
    pub user_data: Option<String>,
}

/// The `user_data` a server was created with: `None` when there is no such server,
/// `Some(None)` when it was created without any.
pub fn server_user_data(sim: &RunningSim, id: i64) -> Option<Option<String>> {
    let st = sim.state::<HzState>()?;
    let w = lock(&st.world);
    w.servers.get(&id).map(|s| s.user_data.clone())
}

/// Servers that are `running` and whose simulated OS finished booting (the boot delay after
/// turning `running`, scaled like every simulated duration), in id order.
pub fn booted_servers(sim: &RunningSim) -> Vec<BootedServer> {
    let Some(st) = sim.state::<HzState>() else { return Vec::new() };
    let now = Instant::now();
    let mut w = lock(&st.world);
    w.advance(now);
    let boot_delay = w.boot_delay;
    w.servers
        .values()
        .filter(|s| s.booted(now, boot_delay))
        .map(|s| BootedServer { id: s.id, name: s.name.clone(), user_data: s.user_data.clone() })
        .collect()
}
