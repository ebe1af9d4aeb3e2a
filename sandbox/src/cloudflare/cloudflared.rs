//! The simulator playing `cloudflared` for machines simulated elsewhere: connecting or
//! disconnecting the tunnels whose tokens the machines' user_data carries as the machines
//! come and go. It owns the "which machine runs which connector" bookkeeping and
//! must never render a token or secret it found (not even in `Debug`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tunnel_token::find_tunnel_tokens;
use super::tunnels::Tunnels;

/// A simulated machine that would run cloudflared with whatever token its user_data holds.
#[derive(Clone)]
pub struct Origin {
    /// Stable name of the machine, e.g. `hcloud-server-1001`.
    pub key: String,
    /// Its cloud-init user_data (may hold a token: never printed). Shared, not copied: the
    /// sandbox hands every booted server over at every poll.
    pub user_data: Option<Arc<str>>,
    /// The address its connections come from.
    pub origin_ip: String,
}

/// By hand so user_data (a token carrier) never shows.
impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("key", &self.key).field("origin_ip", &self.origin_ip).finish_non_exhaustive()
    }
}

/// A connector that came or went in one [`sync`] pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorChange {
    pub origin: String,
    pub tunnel_id: String,
    /// true: connected; false: disconnected.
    pub connected: bool,
}

/// Since when each machine has been running, as last reported.
#[derive(Default)]
pub struct Origins {
    first_seen: BTreeMap<String, Instant>,
}

/// Brings the tunnels' connectors in line with the machines running now: a machine first seen
/// at T whose user_data carries a token the tunnel accepts (account, tunnel id and secret all
/// matching) connects it at T + `connect_delay` (cloudflared starting and dialling the edge);
/// a machine no longer listed (stopped, deleted) takes its connections with it. Wrong or
/// missing tokens connect nothing. Returns what changed; call it again and again (`origins`
/// keeps its memory of when each machine was first seen).
pub fn sync(
    origins: &mut Origins,
    tunnels: &mut Tunnels,
    account: &str,
    running: &[Origin],
    connect_delay: Duration,
    now: Instant,
) -> Vec<ConnectorChange> {
    let mut changes = Vec::new();
    // Sets, not scans: this runs every poll over every booted machine and every tunnel.
    let running_keys: HashSet<&str> = running.iter().map(|o| o.key.as_str()).collect();
    origins.first_seen.retain(|key, _| running_keys.contains(key.as_str()));
    let mut connected: HashMap<String, uuid::Uuid> = tunnels.connected_origins().into_iter().collect();
    connected.retain(|origin, tunnel| {
        let still_running = running_keys.contains(origin.as_str());
        if !still_running {
            tunnels.disconnect_origin(origin);
            changes.push(ConnectorChange { origin: origin.clone(), tunnel_id: tunnel.to_string(), connected: false });
        }
        still_running
    });
    for machine in running {
        // Looked up before inserting: the key is cloned once per machine, not once per poll.
        let seen = match origins.first_seen.get(&machine.key) {
            Some(seen) => *seen,
            None => {
                origins.first_seen.insert(machine.key.clone(), now);
                now
            }
        };
        if now.saturating_duration_since(seen) < connect_delay || connected.contains_key(&machine.key) {
            continue;
        }
        // cloudflared runs one tunnel: the first token the edge accepts.
        let tokens = machine.user_data.as_deref().map(find_tunnel_tokens).unwrap_or_default();
        if let Some(tunnel) = tokens.iter().find_map(|t| tunnels.accepting(account, t)) {
            tunnels.connect_origin(tunnel, &machine.key, &machine.origin_ip);
            changes.push(ConnectorChange {
                origin: machine.key.clone(),
                tunnel_id: tunnel.to_string(),
                connected: true,
            });
        }
    }
    changes
}
