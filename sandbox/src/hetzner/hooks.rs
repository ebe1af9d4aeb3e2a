//! The in-process test hooks of the Hetzner simulator: faults behind the API's back (a server
//! that vanishes, failing actions, guests that ignore ACPI), limits, and reads of the project
//! that spend no request. The control API offers the same to another process.

use std::sync::Arc;
use std::time::Instant;

use super::resources::public_ipv4;
use super::state::HzState;
use super::world::{PowerChange, WorkCounts, World};
use crate::http::{RunningSim, lock};

/// Runs `f` on the project, advanced to now; `None` if `sim` is not a Hetzner simulator.
fn with_world<T>(sim: &RunningSim, f: impl FnOnce(&mut World) -> T) -> Option<T> {
    let st = sim.state::<HzState>()?;
    let mut w = st.world();
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
                ipv4: s.has_ipv4.then(|| public_ipv4(s.id)),
            })
            .collect()
    })
    .unwrap_or_default()
}
