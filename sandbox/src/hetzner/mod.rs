//! A stateful simulator of the Hetzner Cloud API (`/v1`): servers, power actions, firewalls,
//! SSH keys, actions and the read-only catalog, faithful enough for the official clients,
//! with real-world timings ([`ActionDurations`]) run faster under one time scale.
//! It never reaches the network beyond its own listener.
//!
//! Choices where the public material is silent or unverified (judged by what hcloud-python,
//! hcloud-go and the `hcloud` crate's models accept):
//! - `create_server` and `start_server` finish together, so waiting for the create action
//!   (as the documented examples do) leaves a running, unlocked server.
//! - `shutdown` (ACPI) finishes once the signal is sent, as Hetzner documents; the server
//!   stays `running` until its guest powers off `acpi_shutdown` later, or forever when the
//!   guest ignores ACPI ([`set_ignores_acpi`]). `reboot` is ACPI too: an ignoring guest does
//!   not restart. A `poweron` while the guest shuts down changes nothing (it still runs);
//!   `poweroff` and `reset` override the pending shutdown.
//! - 429 carries `RateLimit-*` but no `Retry-After` (unverified for Hetzner; clients ignore it).
//! - Deleting a server detaches its firewalls at once; the server disappears immediately.
//! - `server_type.locations[]` carries `available`/`recommended` although the crate's model
//!   predates them; a type is listed only where it is sold (or everywhere once deprecated).
//! - `/datacenters` answers 410 `deprecated_api_endpoint` (removed 2026-10-01).
//! - Project limits answer 403 `resource_limit_exceeded` with `details.limits[{name}]`
//!   (Hetzner's error table); the per-server firewall limit is checked where a server gains
//!   a firewall by request (create, `apply_to_resources`), not when labels change later.
//! - `change_type` on a running server: 422 `server_not_stopped` (status unverified).

mod catalog;
// The Hetzner half of the control API (`/_sim/`), wired in by `crate::http::control`.
pub(crate) mod control;
pub mod labels;
mod physics;
mod routes;
mod world;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpListener;

pub use crate::http::RunningSim;
use crate::http::{Dialect, RateBudget, SimParts, lock, serve};
use crate::time_scale::{self, scaled};
pub use physics::{ActionDurations, Command, UnknownCommand};
use routes::HzState;
use world::World;
pub use world::{PowerChange, WorkCounts};

/// How a simulated Hetzner project behaves.
#[derive(Clone)]
pub struct HetznerSimConfig {
    /// The project's API token (compared, never logged).
    pub token: String,
    /// `RateLimit-Limit`: requests per hour (the burst size).
    pub rate_limit_per_hour: u32,
    /// Refill speed in simulated time; `None` = `rate_limit_per_hour / 3600` per second,
    /// like the real API. Multiplied by `time_scale` like every rate. Tests set it high to
    /// run a whole hour of budget in a second.
    pub rate_refill_per_sec: Option<f64>,
    /// How long each action and guest-OS step takes in real-world terms.
    pub durations: ActionDurations,
    /// How much faster than real time the project runs: every duration above and the
    /// rate-limit refill are divided by it (at 60, 3600 requests per hour refill in a
    /// minute and a 12 s create takes 0.2 s). Must be finite and positive.
    pub time_scale: f64,
    /// Most servers the project may hold.
    pub server_limit: usize,
    /// Most firewalls the project may hold (Hetzner's default: 50).
    pub firewall_limit: usize,
    /// Most firewalls that may apply to one server (Hetzner: 5).
    pub firewalls_per_server: usize,
    /// The project's guests ignore ACPI shutdown and reboot (per-server override:
    /// [`set_ignores_acpi`]).
    pub ignores_acpi: bool,
    /// Seed of the duration jitter: the same seed replays the same timings.
    pub seed: u64,
}

impl Default for HetznerSimConfig {
    fn default() -> Self {
        HetznerSimConfig {
            token: "sim-hetzner-token".to_owned(),
            rate_limit_per_hour: 3600,
            rate_refill_per_sec: None,
            durations: ActionDurations::default(),
            time_scale: 1.0,
            server_limit: 100,
            firewall_limit: 50,
            firewalls_per_server: 5,
            ignores_acpi: false,
            seed: 0,
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
            .field("durations", &self.durations)
            .field("time_scale", &self.time_scale)
            .field("server_limit", &self.server_limit)
            .field("firewall_limit", &self.firewall_limit)
            .field("firewalls_per_server", &self.firewalls_per_server)
            .field("ignores_acpi", &self.ignores_acpi)
            .field("seed", &self.seed)
            .finish()
    }
}

/// Hetzner's rate-limit window: the whole budget refills in an hour.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

impl HetznerSimConfig {
    /// The bucket `http.rs` enforces: the burst stays `rate_limit_per_hour`, the refill runs
    /// `time_scale` times faster (the hour shrinks, the budget does not).
    fn budget(&self) -> RateBudget {
        let refill = match self.rate_refill_per_sec {
            Some(per_sec) if time_scale::valid(self.time_scale) => per_sec * self.time_scale,
            Some(per_sec) => per_sec,
            None => {
                let window = scaled(RATE_WINDOW, self.time_scale).as_secs_f64().max(f64::EPSILON);
                f64::from(self.rate_limit_per_hour) / window
            }
        };
        RateBudget { capacity: self.rate_limit_per_hour, refill_per_sec: refill }
    }
}

/// Serves a fresh, empty project on `listener`; the base URL ends in `/v1`. A time scale
/// that is not finite and positive is refused (`InvalidInput`).
pub async fn spawn(config: HetznerSimConfig, listener: TcpListener) -> std::io::Result<RunningSim> {
    if !time_scale::valid(config.time_scale) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("time_scale must be finite and positive, not {}", config.time_scale),
        ));
    }
    let state = Arc::new(HzState { world: Mutex::new(World::new(&config)) });
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

/// Runs `f` on the project, advanced to now; `None` if `sim` is not a Hetzner simulator.
fn with_world<T>(sim: &RunningSim, f: impl FnOnce(&mut World) -> T) -> Option<T> {
    let st = sim.state::<HzState>()?;
    let mut w = lock(&st.world);
    w.advance(Instant::now());
    Some(f(&mut w))
}

/// Fault hook: the server disappears behind everyone's back (as if deleted in the console).
/// Returns whether it existed.
pub fn vanish_server(sim: &RunningSim, id: i64) -> bool {
    with_world(sim, |w| w.remove_server(id).is_some()).unwrap_or(false)
}

/// Names of all servers now in the project (tests check for duplicates with it).
pub fn server_names(sim: &RunningSim) -> Vec<String> {
    with_world(sim, |w| w.servers.values().map(|s| s.name.clone()).collect()).unwrap_or_default()
}

/// Every server now in the project as the API renders it (id, name, status, labels, ...), in
/// id order: what an invariant check compares with the objects, without spending a request.
pub fn servers(sim: &RunningSim) -> Vec<serde_json::Value> {
    with_world(sim, |w| w.servers.values().map(|s| w.server_json(s)).collect()).unwrap_or_default()
}

/// Every power transition the project's servers really made so far, in order (deleted
/// servers' included): the truth a usage timeline is checked against.
pub fn power_log(sim: &RunningSim) -> Vec<PowerChange> {
    with_world(sim, |w| w.power_log.clone()).unwrap_or_default()
}

/// Number of firewalls now in the project.
pub fn firewall_count(sim: &RunningSim) -> usize {
    with_world(sim, |w| w.firewalls.len()).unwrap_or_default()
}

/// Every firewall now in the project as the API renders it (id, name, labels, rules,
/// applied_to), in id order: what a test compares with a spec, without spending a request.
pub fn firewalls(sim: &RunningSim) -> Vec<serde_json::Value> {
    with_world(sim, |w| {
        let mut ids: Vec<i64> = w.firewalls.keys().copied().collect();
        ids.sort_unstable();
        ids.iter().filter_map(|id| w.firewalls.get(id).map(|f| w.firewall_json(f))).collect()
    })
    .unwrap_or_default()
}

/// Limit hook: the most firewalls the project may hold from now on (as Hetzner support
/// raising or a test lowering it); what exists already stays.
pub fn set_firewall_limit(sim: &RunningSim, limit: usize) {
    with_world(sim, |w| w.firewall_limit = limit);
}

/// Limit hook: the most servers the project may hold from now on (a raised quota).
pub fn set_server_limit(sim: &RunningSim, limit: usize) {
    with_world(sim, |w| w.server_limit = limit);
}

/// Servers ever created in this project, deleted ones included.
pub fn servers_created(sim: &RunningSim) -> u64 {
    with_world(sim, |w| w.servers_created).unwrap_or_default()
}

/// Fault hook: the next `n` actions started end in status `error` (code `action_failed`)
/// and change nothing.
pub fn fail_next_actions(sim: &RunningSim, n: u32) {
    with_world(sim, |w| w.fail_next_actions = n);
}

/// Guest-OS hook: whether server `id`'s OS ignores ACPI shutdown and reboot (overriding the
/// project's `ignores_acpi`), so an operator's hard power-off fallback can be exercised.
/// Returns whether the server exists.
pub fn set_ignores_acpi(sim: &RunningSim, server_id: i64, ignores: bool) -> bool {
    with_world(sim, |w| w.set_ignores_acpi(server_id, ignores)).unwrap_or(false)
}

/// What the simulator has rendered and examined to answer requests so far (tests prove with
/// it that a GET costs its page, not the project).
pub fn work_counts(sim: &RunningSim) -> WorkCounts {
    with_world(sim, |w| w.work()).unwrap_or_default()
}

/// A server whose simulated OS has finished booting: what a guest agent (cloud-init running
/// `cloudflared`, say) would see as "up", with the `user_data` it was created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootedServer {
    pub id: i64,
    pub name: String,
    /// Shared with the simulator's record: a poll over thousands of servers copies no text.
    pub user_data: Option<Arc<str>>,
    /// Its public IPv4 (what its connections come from), if it has one.
    pub ipv4: Option<String>,
}

/// The root password the create call answered for a server (none when created with SSH keys):
/// what a leak test looks for in logs, Events and status.
pub fn server_root_password(sim: &RunningSim, id: i64) -> Option<String> {
    sim.state::<HzState>().and_then(|st| lock(&st.world).servers.get(&id).and_then(|s| s.root_password.clone()))
}

/// The `user_data` a server was created with: `None` when there is no such server,
/// `Some(None)` when it was created without any.
pub fn server_user_data(sim: &RunningSim, id: i64) -> Option<Option<String>> {
    with_world(sim, |w| w.servers.get(&id).map(|s| s.user_data.as_deref().map(str::to_owned))).flatten()
}

/// Servers that are `running` and whose simulated OS finished booting (`durations.boot`
/// after turning `running`, scaled like every simulated duration), in id order.
pub fn booted_servers(sim: &RunningSim) -> Vec<BootedServer> {
    let now = Instant::now();
    with_world(sim, |w| {
        w.servers
            .values()
            .filter(|s| s.booted(now, w.boot_delay))
            .map(|s| BootedServer {
                id: s.id,
                name: s.name.clone(),
                user_data: s.user_data.clone(),
                ipv4: s.has_ipv4.then(|| world::public_ipv4(s.id)),
            })
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_scale_speeds_the_refill_not_the_burst() {
        let real = HetznerSimConfig::default().budget();
        assert_eq!((real.capacity, real.refill_per_sec), (3600, 1.0), "3600 an hour, +1 a second");
        let fast = HetznerSimConfig { time_scale: 60.0, ..HetznerSimConfig::default() }.budget();
        assert_eq!((fast.capacity, fast.refill_per_sec), (3600, 60.0), "the hour lasts a minute");
        let explicit =
            HetznerSimConfig { rate_refill_per_sec: Some(10.0), time_scale: 6.0, ..HetznerSimConfig::default() };
        assert_eq!(explicit.budget().refill_per_sec, 60.0);
    }
}
