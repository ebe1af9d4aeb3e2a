//! The simulated Hetzner project: servers, firewalls, SSH keys and actions, with time-driven
//! action completion and the JSON the real API renders for each. Advanced lazily on every
//! access (no background task), so a test sees a state that only depends on elapsed time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::catalog::{self, Image, Location, ServerType};
use super::labels::Selector;
use crate::http::now_rfc3339;

pub struct Server {
    pub id: i64,
    pub name: String,
    pub status: &'static str,
    pub created: String,
    pub labels: BTreeMap<String, String>,
    pub server_type: &'static ServerType,
    pub image: &'static Image,
    pub location: &'static Location,
    pub has_ipv4: bool,
    pub has_ipv6: bool,
    /// When the create action flips the status from `initializing` to `starting`.
    pub starting_at: Option<Instant>,
    /// The cloud-init `user_data` given at create (what a booted OS would run).
    pub user_data: Option<String>,
    /// When the server last turned `running` (its simulated OS boots from then on).
    pub running_since: Option<Instant>,
}

impl Server {
    /// Running, and the simulated OS has had `boot_delay` since power-on to finish booting.
    pub fn booted(&self, now: Instant, boot_delay: Duration) -> bool {
        self.status == "running" && self.running_since.is_some_and(|t| now.saturating_duration_since(t) >= boot_delay)
    }
}

#[derive(Clone)]
pub struct FirewallRule {
    pub direction: String,
    pub protocol: String,
    pub port: Option<String>,
    pub source_ips: Vec<String>,
    pub destination_ips: Vec<String>,
    pub description: Option<String>,
}

#[derive(Clone, PartialEq)]
pub enum AppliedTo {
    Server(i64),
    LabelSelector(String, Selector),
}

pub struct Firewall {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created: String,
    pub rules: Vec<FirewallRule>,
    pub applied_to: Vec<AppliedTo>,
}

pub struct SshKey {
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
    pub public_key: String,
    pub labels: BTreeMap<String, String>,
    pub created: String,
}

/// What completing an action changes.
#[derive(Clone, Copy)]
pub enum Effect {
    None,
    ServerStatus(i64, &'static str),
}

pub struct Action {
    pub id: i64,
    pub command: &'static str,
    pub started: String,
    pub started_at: Instant,
    pub duration: Duration,
    pub resources: Vec<(i64, &'static str)>,
    pub finished: Option<String>,
    pub effect: Effect,
    /// Ends in `error` instead of `success` (fault injection); its effect is not applied.
    pub fails: bool,
    /// What a failed action restores (the server status before it started).
    pub revert: Effect,
}

impl Action {
    pub fn running(&self) -> bool {
        self.finished.is_none()
    }

    fn touches(&self, id: i64, kind: &str) -> bool {
        self.resources.iter().any(|(i, k)| *i == id && *k == kind)
    }

    pub fn json(&self, now: Instant) -> Value {
        let progress = if self.running() {
            let elapsed = now.saturating_duration_since(self.started_at).as_secs_f64();
            let total = self.duration.as_secs_f64().max(f64::EPSILON);
            ((elapsed / total) * 100.0).clamp(0.0, 99.0) as i64
        } else {
            100
        };
        let resources: Vec<Value> = self.resources.iter().map(|(id, kind)| json!({"id": id, "type": kind})).collect();
        json!({
            "id": self.id,
            "command": self.command,
            "status": match (self.running(), self.fails) {
                (true, _) => "running",
                (false, true) => "error",
                (false, false) => "success",
            },
            "progress": progress,
            "started": self.started,
            "finished": self.finished,
            "resources": resources,
            "error": if self.fails && !self.running() {
                json!({"code": "action_failed", "message": "action failed (injected)"})
            } else {
                Value::Null
            },
        })
    }
}

/// Finished actions kept for `GET /actions`: older ones are forgotten, so a long-running
/// sandbox neither grows without bound nor scans an ever longer list on every tick.
const KEPT_ACTIONS: usize = 10_000;

pub struct World {
    next_id: i64,
    /// Servers ever created (deleted ones included): the duplicate check of fault tests.
    pub servers_created: u64,
    /// This many next actions will fail (fault injection).
    pub fail_next_actions: u32,
    pub action_duration: Duration,
    /// How long the simulated OS takes to boot once the server is `running`.
    pub boot_delay: Duration,
    pub server_limit: usize,
    pub servers: BTreeMap<i64, Server>,
    pub firewalls: BTreeMap<i64, Firewall>,
    pub ssh_keys: BTreeMap<i64, SshKey>,
    pub actions: BTreeMap<i64, Action>,
}

impl World {
    pub fn new(action_duration: Duration, server_limit: usize) -> Self {
        World {
            server_limit,
            next_id: 1000,
            servers_created: 0,
            fail_next_actions: 0,
            action_duration,
            boot_delay: action_duration,
            servers: BTreeMap::new(),
            firewalls: BTreeMap::new(),
            ssh_keys: BTreeMap::new(),
            actions: BTreeMap::new(),
        }
    }

    pub fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Completes every action whose time has come and applies its effect.
    pub fn advance(&mut self, now: Instant) {
        let mut effects = Vec::new();
        for action in self.actions.values_mut().filter(|a| a.running()) {
            if now.saturating_duration_since(action.started_at) >= action.duration {
                action.finished = Some(now_rfc3339());
                let at = action.started_at + action.duration;
                effects.push((at, if action.fails { action.revert } else { action.effect }));
            }
        }
        for (at, effect) in effects {
            if let Effect::ServerStatus(id, status) = effect
                && let Some(server) = self.servers.get_mut(&id)
            {
                if status == "running" && server.status != "running" {
                    server.running_since = Some(at);
                }
                server.status = status;
            }
        }
        for server in self.servers.values_mut() {
            if server.status == "initializing" && server.starting_at.is_some_and(|t| now >= t) {
                server.status = "starting";
            }
        }
    }

    /// Starts an action; returns its id.
    pub fn start_action(&mut self, command: &'static str, resources: Vec<(i64, &'static str)>, effect: Effect) -> i64 {
        let id = self.next_id();
        let fails = self.fail_next_actions > 0;
        self.fail_next_actions = self.fail_next_actions.saturating_sub(1);
        self.actions.insert(
            id,
            Action {
                id,
                command,
                started: now_rfc3339(),
                started_at: Instant::now(),
                duration: self.action_duration,
                resources,
                finished: None,
                effect,
                fails,
                revert: Effect::None,
            },
        );
        self.forget_old_actions();
        id
    }

    /// Drops the oldest finished actions beyond [`KEPT_ACTIONS`]; running ones always stay.
    fn forget_old_actions(&mut self) {
        while self.actions.len() > KEPT_ACTIONS {
            let Some(oldest) = self.actions.iter().find(|(_, a)| !a.running()).map(|(id, _)| *id) else { break };
            self.actions.remove(&oldest);
        }
    }

    pub fn action_json(&self, id: i64, now: Instant) -> Value {
        self.actions.get(&id).map(|a| a.json(now)).unwrap_or(Value::Null)
    }

    /// True while an action runs on the server (the API's `locked`).
    pub fn server_locked(&self, id: i64) -> bool {
        self.actions.values().any(|a| a.running() && a.touches(id, "server"))
    }

    /// Firewalls that apply to a server, directly or by selector, with their status.
    fn server_firewalls(&self, server: &Server) -> Vec<Value> {
        self.firewalls
            .values()
            .filter(|fw| applies_to(fw, server))
            .map(|fw| {
                let pending = self.actions.values().any(|a| {
                    a.running()
                        && a.touches(server.id, "server")
                        && (a.command == "create_server" || a.touches(fw.id, "firewall"))
                });
                json!({"id": fw.id, "status": if pending { "pending" } else { "applied" }})
            })
            .collect()
    }

    pub fn server_json(&self, s: &Server) -> Value {
        let ipv4 = s.has_ipv4.then(|| {
            let ip = format!("198.51.{}.{}", (s.id / 250) % 250, s.id % 250 + 1);
            json!({
                "id": s.id + 500_000, "ip": ip, "blocked": false,
                "dns_ptr": format!("static.{}.clients.your-server.de", ip),
            })
        });
        let ipv6 = s.has_ipv6.then(|| {
            json!({
                "id": s.id + 600_000, "ip": format!("2001:db8:{:x}::/64", s.id), "blocked": false,
                "dns_ptr": [],
            })
        });
        json!({
            "id": s.id,
            "name": s.name,
            "status": s.status,
            "created": s.created,
            "labels": s.labels,
            "locked": self.server_locked(s.id),
            "backup_window": null,
            "image": catalog::image_json(s.image),
            "iso": null,
            "included_traffic": 21_990_232_555_520_i64,
            "ingoing_traffic": 0,
            "outgoing_traffic": 0,
            "location": catalog::location_json(s.location),
            "server_type": catalog::server_type_json(s.server_type),
            "primary_disk_size": s.server_type.disk as i64,
            "private_net": [],
            "protection": {"delete": false, "rebuild": false},
            "rescue_enabled": false,
            "public_net": {
                "ipv4": ipv4,
                "ipv6": ipv6,
                "floating_ips": [],
                "firewalls": self.server_firewalls(s),
            },
            "load_balancers": [],
            "volumes": [],
            "placement_group": null,
        })
    }

    pub fn firewall_json(&self, fw: &Firewall) -> Value {
        let applied_to: Vec<Value> = fw
            .applied_to
            .iter()
            .map(|a| match a {
                AppliedTo::Server(id) => json!({"type": "server", "server": {"id": id}}),
                AppliedTo::LabelSelector(text, sel) => {
                    let matched: Vec<Value> = self
                        .servers
                        .values()
                        .filter(|s| sel.matches(&s.labels))
                        .map(|s| json!({"type": "server", "server": {"id": s.id}}))
                        .collect();
                    json!({
                        "type": "label_selector",
                        "label_selector": {"selector": text},
                        "applied_to_resources": matched,
                    })
                }
            })
            .collect();
        let rules: Vec<Value> = fw.rules.iter().map(rule_json).collect();
        json!({
            "id": fw.id,
            "name": fw.name,
            "labels": fw.labels,
            "created": fw.created,
            "rules": rules,
            "applied_to": applied_to,
        })
    }

    /// Servers a firewall currently reaches (direct entries and selector matches).
    pub fn firewall_servers(&self, fw: &Firewall) -> BTreeSet<i64> {
        self.servers.values().filter(|s| applies_to(fw, s)).map(|s| s.id).collect()
    }

    /// Removes a server and every direct firewall attachment to it (what delete does).
    pub fn remove_server(&mut self, id: i64) -> Option<Server> {
        let server = self.servers.remove(&id)?;
        for fw in self.firewalls.values_mut() {
            fw.applied_to.retain(|a| *a != AppliedTo::Server(id));
        }
        Some(server)
    }
}

fn applies_to(fw: &Firewall, server: &Server) -> bool {
    fw.applied_to.iter().any(|a| match a {
        AppliedTo::Server(id) => *id == server.id,
        AppliedTo::LabelSelector(_, sel) => sel.matches(&server.labels),
    })
}

pub fn rule_json(r: &FirewallRule) -> Value {
    json!({
        "direction": r.direction,
        "protocol": r.protocol,
        "port": r.port,
        "source_ips": r.source_ips,
        "destination_ips": r.destination_ips,
        "description": r.description,
    })
}

pub fn ssh_key_json(k: &SshKey) -> Value {
    json!({
        "id": k.id, "name": k.name, "fingerprint": k.fingerprint, "public_key": k.public_key,
        "labels": k.labels, "created": k.created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_finished_actions_are_forgotten_running_ones_kept() {
        let mut world = World::new(Duration::from_secs(3600), 10);
        let first = world.start_action("start_server", vec![], Effect::None);
        world.action_duration = Duration::ZERO;
        for _ in 0..KEPT_ACTIONS + 5 {
            world.start_action("start_server", vec![], Effect::None);
        }
        world.advance(Instant::now());
        world.start_action("start_server", vec![], Effect::None);
        assert_eq!(world.actions.len(), KEPT_ACTIONS);
        assert!(world.actions.contains_key(&first), "the running action is never forgotten");
    }
}
