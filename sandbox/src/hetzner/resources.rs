//! The resources of a simulated Hetzner project as the world stores them (servers,
//! firewalls and their rules, SSH keys, actions and the effects they have once finished), with
//! the JSON of those that render without the rest of the project.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::catalog::{Image, Location, ServerType};
use super::labels::Selector;
use super::physics::Command;

/// A server's public IPv4: derived from its id, so it is stable and unique without a pool.
pub fn public_ipv4(id: i64) -> String {
    format!("198.51.{}.{}", (id / 250) % 250, id % 250 + 1)
}

pub struct Server {
    pub id: i64,
    pub name: String,
    pub status: &'static str,
    pub created: String,
    pub labels: BTreeMap<String, String>,
    pub server_type: &'static ServerType,
    pub image: &'static Image,
    pub location: &'static Location,
    /// GB; follows the type only when a type change upgrades the disk (Hetzner keeps the
    /// smaller disk otherwise, so the server can go back down).
    pub primary_disk_size: i64,
    pub has_ipv4: bool,
    pub has_ipv6: bool,
    /// The cloud-init `user_data` given at create (or at the last rebuild that gave one).
    pub user_data: Option<Arc<str>>,
    /// Created with SSH keys (then no root password is ever answered).
    pub has_ssh_keys: bool,
    /// The root password the create answered, kept so tests can prove it leaked nowhere.
    pub root_password: Option<String>,
    /// When the server last turned `running` or its OS last restarted: it is booted
    /// `boot_delay` later.
    pub running_since: Option<Instant>,
    /// When the guest, having accepted an ACPI shutdown, will power off.
    pub acpi_off_at: Option<Instant>,
    /// Per-server override of the project's `ignores_acpi` (a guest without acpid, say).
    pub ignores_acpi: Option<bool>,
}

impl Server {
    /// Running, and the simulated OS has had `boot_delay` since power-on to finish booting.
    pub fn booted(&self, now: Instant, boot_delay: Duration) -> bool {
        self.status == "running" && self.running_since.is_some_and(|t| now.saturating_duration_since(t) >= boot_delay)
    }
}

/// What a server create stores; the world fills in the rest.
pub struct NewServer {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub server_type: &'static ServerType,
    pub image: &'static Image,
    pub location: &'static Location,
    pub has_ipv4: bool,
    pub has_ipv6: bool,
    pub user_data: Option<Arc<str>>,
    pub has_ssh_keys: bool,
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
    /// The server turns `status`; `boots` restarts its guest OS (power on, reset).
    Power {
        server: i64,
        status: &'static str,
        boots: bool,
    },
    /// The ACPI signal arrived: the guest powers off `acpi_shutdown` later, unless it
    /// ignores ACPI (the action succeeds either way, as on Hetzner).
    AcpiShutdown(i64),
    /// The ACPI reboot signal arrived: the guest restarts unless it ignores ACPI.
    AcpiReboot(i64),
    /// A type change: the new type, and whether the disk grows with it.
    ChangeType {
        server: i64,
        to: &'static ServerType,
        upgrade_disk: bool,
    },
    /// A rebuild: the new image; the server returns to `status` (booting if running).
    Rebuild {
        server: i64,
        image: &'static Image,
        status: &'static str,
    },
}

pub struct Action {
    pub id: i64,
    pub command: Command,
    pub started: SystemTime,
    pub started_at: Instant,
    pub duration: Duration,
    pub resources: Vec<(i64, &'static str)>,
    pub finished: Option<SystemTime>,
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

    pub fn touches(&self, id: i64, kind: &str) -> bool {
        self.resources.iter().any(|(i, k)| *i == id && *k == kind)
    }

    pub fn status(&self) -> &'static str {
        match (self.running(), self.fails) {
            (true, _) => "running",
            (false, true) => "error",
            (false, false) => "success",
        }
    }

    /// Whole percent (hcloud-go decodes `progress` as an int), 100 only once finished.
    pub fn progress(&self, now: Instant) -> i64 {
        if !self.running() {
            return 100;
        }
        let elapsed = now.saturating_duration_since(self.started_at).as_secs_f64();
        let total = self.duration.as_secs_f64().max(f64::EPSILON);
        ((elapsed / total) * 100.0).clamp(0.0, 99.0) as i64
    }

    pub(super) fn json(&self, now: Instant) -> Value {
        let resources: Vec<Value> = self.resources.iter().map(|(id, kind)| json!({"id": id, "type": kind})).collect();
        json!({
            "id": self.id,
            "command": self.command.name(),
            "status": self.status(),
            "progress": self.progress(now),
            "started": rfc3339(self.started),
            "finished": self.finished.map(rfc3339),
            "resources": resources,
            "error": if self.fails && !self.running() {
                json!({"code": "action_failed", "message": "action failed (injected)"})
            } else {
                Value::Null
            },
        })
    }
}

/// Hetzner's timestamp format (`2026-12-01T20:41:00+00:00`).
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

pub fn applies_to(fw: &Firewall, server: &Server) -> bool {
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
