//! The in-process test hooks of the Cloudflare simulator: tunnels and records that vanish
//! behind the API's back, connectors that connect, the sandbox's cloudflared stand-in, and
//! reads of the account that spend no request. The control API offers the same to another
//! process.

use std::time::{Duration, Instant};

use super::cloudflared::{ConnectorChange, Origin};
use super::state::CfState;
use crate::http::{RunningSim, lock};

/// Test hook: a connector connects to the tunnel (so delete without `cascade` is refused).
pub fn connect_tunnel(sim: &RunningSim, tunnel_id: &str) -> bool {
    sim.state::<CfState>().is_some_and(|st| lock(&st.tunnels).connect(tunnel_id))
}

/// Test hook: the account may hold at most `limit` tunnels from now on.
pub fn set_tunnel_limit(sim: &RunningSim, limit: usize) {
    if let Some(st) = sim.state::<CfState>() {
        st.tunnel_limit.store(limit, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Test hook: the account gains `count` tunnels made by someone else (another team, another
/// tool), named `<prefix>-<n>`, without spending a request: they count towards its limit.
pub fn add_foreign_tunnels(sim: &RunningSim, prefix: &str, count: usize) {
    if let Some(st) = sim.state::<CfState>() {
        let mut tunnels = lock(&st.tunnels);
        for n in 0..count {
            let tunnel = super::tunnels::Tunnel::new(&format!("{prefix}-{n}"), "cloudflare", vec![7; 32]);
            tunnels.by_id.insert(tunnel.id, tunnel);
        }
    }
}

/// Test hook: the zone may hold at most `limit` DNS records from now on (its plan's quota).
pub fn set_dns_record_limit(sim: &RunningSim, limit: usize) {
    if let Some(st) = sim.state::<CfState>() {
        st.dns_record_limit.store(limit, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Test hook: the zone gains `count` A records made by someone else, named
/// `<prefix>-<n>.<zone>`, without spending a request: they count towards its quota.
pub fn add_foreign_dns_records(sim: &RunningSim, prefix: &str, count: usize) {
    let Some(st) = sim.state::<CfState>() else { return };
    let mut records = lock(&st.dns);
    for n in 0..count {
        let body = serde_json::json!({"type": "A", "name": format!("{prefix}-{n}"), "content": "192.0.2.1"});
        let Some(body) = body.as_object() else { continue };
        if let Ok(record) = super::dns_routes::parse_record(body, None, &st.config.zone_name) {
            records.by_id.insert(record.id.clone(), record);
        }
    }
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

/// Brings the tunnels' connectors in line with the machines running now: a machine first seen
/// at T whose user_data carries a token the tunnel accepts (account, tunnel id and secret all
/// matching) connects it at T + `connect_delay` (cloudflared starting and dialling the edge);
/// a machine no longer listed (stopped, deleted) takes its connections with it. Wrong or
/// missing tokens connect nothing. Returns what changed; call it again and again (it keeps
/// its own memory of when each machine was first seen).
pub fn sync_origins(sim: &RunningSim, running: &[Origin], connect_delay: Duration) -> Vec<ConnectorChange> {
    let Some(st) = sim.state::<CfState>() else { return Vec::new() };
    st.sync_origins(running, connect_delay, Instant::now())
}
