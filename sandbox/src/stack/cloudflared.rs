//! The sandbox's stand-in for `cloudflared` on every simulated server: a task that, on a short
//! interval, hands the Hetzner simulator's booted servers to the Cloudflare simulator
//! ([`cloudflare::sync_origins`]), which connects the tunnels their tokens open and drops the
//! connections of servers that stopped. It only wires the two simulators together (the
//! matching lives in the Cloudflare module) and never prints user_data or a token.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cloudflare::{self, Origin};
use crate::hetzner;
use crate::http::RunningSim;
use crate::time_scale::scaled;

/// How often the servers are looked at, in simulated time (a real cloudflared notices a dead
/// host about as fast).
const POLL_EVERY: Duration = Duration::from_secs(1);
/// No faster than this in real time, whatever the scale (it takes both simulators' locks).
const MIN_POLL: Duration = Duration::from_millis(50);

/// The stable name of a server as a tunnel origin.
fn origin_key(server_id: i64) -> String {
    format!("hcloud-server-{server_id}")
}

/// The origins now: every booted server with its user_data and public IPv4.
pub fn booted_origins(hcloud: &RunningSim) -> Vec<Origin> {
    hetzner::booted_servers(hcloud)
        .into_iter()
        .map(|s| Origin { key: origin_key(s.id), origin_ip: s.ipv4.unwrap_or_default(), user_data: s.user_data })
        .collect()
}

/// Starts the task; it runs until aborted. `connect_delay` is simulated time (scaled here).
pub fn start(hcloud: RunningSim, cloudflare: RunningSim, time_scale: f64, connect_delay: Duration) -> JoinHandle<()> {
    let poll = scaled(POLL_EVERY, time_scale).max(MIN_POLL);
    let connect_delay = scaled(connect_delay, time_scale);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let origins = booted_origins(&hcloud);
            for change in cloudflare::sync_origins(&cloudflare, &origins, connect_delay) {
                let verb = if change.connected { "connected" } else { "disconnected from" };
                println!(
                    "{} cloudflared on {} {verb} tunnel {}",
                    chrono::Utc::now().format("%H:%M:%S"),
                    change.origin,
                    change.tunnel_id
                );
            }
        }
    })
}
