//! Servers and firewalls as the API renders them: what only the whole project knows (locks,
//! the firewalls that reach a server and their status, the servers a selector reaches). Every
//! rendering is tallied, so tests can prove a list costs its page, not the project.

use serde_json::{Value, json};

use super::catalog;
use super::physics::Command;
use super::resources::{Action, AppliedTo, Firewall, Server, public_ipv4, rule_json};
use super::world::World;

impl World {
    /// Firewalls that apply to a server, with their status: `pending` while the server's
    /// create or the firewall's `apply_firewall` on it still runs.
    fn server_firewalls(&self, server: &Server) -> Vec<Value> {
        let running: Vec<&Action> = self.running_on("server", server.id).collect();
        self.firewalls_of(server)
            .map(|fw| {
                let pending =
                    running.iter().any(|a| a.command == Command::CreateServer || a.touches(fw.id, "firewall"));
                json!({"id": fw.id, "status": if pending { "pending" } else { "applied" }})
            })
            .collect()
    }

    /// A server as the API renders it.
    pub fn server_json(&self, s: &Server) -> Value {
        self.tally(|w| w.servers_rendered += 1);
        let ipv4 = s.has_ipv4.then(|| {
            let ip = public_ipv4(s.id);
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
            "included_traffic": catalog::included_traffic(s.location),
            "ingoing_traffic": 0,
            "outgoing_traffic": 0,
            "location": catalog::location_json(s.location),
            "server_type": catalog::server_type_json(s.server_type),
            "primary_disk_size": s.primary_disk_size,
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

    /// A firewall as the API renders it, every server its selectors reach listed.
    pub fn firewall_json(&self, fw: &Firewall) -> Value {
        self.tally(|w| w.firewalls_rendered += 1);
        let applied_to: Vec<Value> = fw
            .applied_to
            .iter()
            .map(|a| match a {
                AppliedTo::Server(id) => json!({"type": "server", "server": {"id": id}}),
                AppliedTo::LabelSelector(text, sel) => {
                    // The answer lists every match, so this walk is as long as the answer.
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
}
