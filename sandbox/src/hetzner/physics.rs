//! How long things take in the simulated Hetzner project, in real-world terms: one duration
//! per action command, the guest OS's boot and ACPI shutdown, and a little seeded jitter.
//! Only figures and their arithmetic live here; the world divides them by the time scale and
//! never reads a clock through this module.
//!
//! The defaults, and why (Hetzner publishes no timings; these are what its Cloud Console and
//! the official clients' polling show for small shared cx/cpx servers in 2025-2026):
//! - `create_server` 12 s: a cx/cpx server reports `running` roughly 10-20 s after the
//!   `POST /servers`; `start_server` (in `next_actions`) finishes together with it.
//! - `start_server` 4 s: power on is a few seconds of hypervisor work.
//! - `shutdown_server` 1 s: Hetzner finishes the action once the ACPI signal is sent;
//!   `acpi_shutdown` 10 s is the guest's own shutdown (systemd stopping services on a small
//!   Ubuntu) before it powers off, which the action does not wait for.
//! - `stop_server` 3 s and `reset_server` 2 s: hard power off and reset are immediate at
//!   the hypervisor; the action's bookkeeping takes a couple of seconds.
//! - `reboot_server` 2 s: like shutdown, an ACPI signal; the guest then boots again.
//! - `delete_server` 4 s: the server is gone from listings at once, its action runs on.
//! - `change_server_type` 60 s: a type change migrates the stopped server (30 s to minutes,
//!   longer with a disk upgrade).
//! - `rebuild_server` 20 s: writing a fresh image is comparable to a create.
//! - `apply_firewall` / `remove_firewall` 4 s, `set_firewall_rules` 3 s: firewall changes
//!   reach the hypervisors "within seconds" (Hetzner's firewall FAQ).
//! - `boot` 15 s: from `running` until the guest OS is up (network, sshd, cloud-init's first
//!   stage), on a small Ubuntu image.
//! - `jitter` 0.1: each action lasts its figure times a seeded factor in [0.9, 1.1].

use std::time::Duration;

use rand::Rng;

/// An action command the simulator runs (Hetzner's `action.command`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    CreateServer,
    StartServer,
    StopServer,
    ShutdownServer,
    RebootServer,
    ResetServer,
    DeleteServer,
    ChangeServerType,
    RebuildServer,
    ApplyFirewall,
    RemoveFirewall,
    SetFirewallRules,
}

/// A name that is no action command the simulator runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action command {0:?} (known: {known})", known = Command::ALL.map(Command::name).join(", "))]
pub struct UnknownCommand(pub String);

impl Command {
    pub const ALL: [Command; 12] = [
        Command::CreateServer,
        Command::StartServer,
        Command::StopServer,
        Command::ShutdownServer,
        Command::RebootServer,
        Command::ResetServer,
        Command::DeleteServer,
        Command::ChangeServerType,
        Command::RebuildServer,
        Command::ApplyFirewall,
        Command::RemoveFirewall,
        Command::SetFirewallRules,
    ];

    /// The command Hetzner names `name` (`create_server`, `stop_server`, ...).
    pub fn from_name(name: &str) -> Result<Command, UnknownCommand> {
        Command::ALL.into_iter().find(|c| c.name() == name).ok_or_else(|| UnknownCommand(name.to_owned()))
    }

    /// The name Hetzner reports in `action.command`.
    pub fn name(self) -> &'static str {
        match self {
            Command::CreateServer => "create_server",
            Command::StartServer => "start_server",
            Command::StopServer => "stop_server",
            Command::ShutdownServer => "shutdown_server",
            Command::RebootServer => "reboot_server",
            Command::ResetServer => "reset_server",
            Command::DeleteServer => "delete_server",
            Command::ChangeServerType => "change_server_type",
            Command::RebuildServer => "rebuild_server",
            Command::ApplyFirewall => "apply_firewall",
            Command::RemoveFirewall => "remove_firewall",
            Command::SetFirewallRules => "set_firewall_rules",
        }
    }
}

/// How long each action and each guest-OS step takes, in real-world terms (before the time
/// scale). See the module documentation for where each default comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionDurations {
    /// `POST /servers` until the server runs (or is `off` without `start_after_create`).
    pub create_server: Duration,
    /// `poweron`.
    pub start_server: Duration,
    /// `poweroff` (hard).
    pub stop_server: Duration,
    /// `shutdown`: until the ACPI signal is delivered (not until the server is off).
    pub shutdown_server: Duration,
    /// `reboot` (ACPI): until the signal is delivered.
    pub reboot_server: Duration,
    /// `reset` (hard).
    pub reset_server: Duration,
    /// `DELETE /servers/{id}`.
    pub delete_server: Duration,
    /// `change_type`.
    pub change_server_type: Duration,
    /// `rebuild`.
    pub rebuild_server: Duration,
    /// One `apply_firewall` action (per server, or per label selector).
    pub apply_firewall: Duration,
    /// One `remove_firewall` action.
    pub remove_firewall: Duration,
    /// `set_rules` (its `set_firewall_rules` action; each server's `apply_firewall` takes
    /// `apply_firewall`).
    pub set_firewall_rules: Duration,
    /// The guest OS, from the ACPI signal to powering off (unless it ignores ACPI).
    pub acpi_shutdown: Duration,
    /// The guest OS, from `running` (power on, reset, reboot, rebuild) to booted.
    pub boot: Duration,
    /// Each action lasts its figure times a factor drawn from `[1 - jitter, 1 + jitter]`
    /// (clamped to `0..=1`); 0 makes every run exactly repeatable without a seed.
    pub jitter: f64,
}

impl Default for ActionDurations {
    fn default() -> Self {
        ActionDurations {
            create_server: Duration::from_secs(12),
            start_server: Duration::from_secs(4),
            stop_server: Duration::from_secs(3),
            shutdown_server: Duration::from_secs(1),
            reboot_server: Duration::from_secs(2),
            reset_server: Duration::from_secs(2),
            delete_server: Duration::from_secs(4),
            change_server_type: Duration::from_secs(60),
            rebuild_server: Duration::from_secs(20),
            apply_firewall: Duration::from_secs(4),
            remove_firewall: Duration::from_secs(4),
            set_firewall_rules: Duration::from_secs(3),
            acpi_shutdown: Duration::from_secs(10),
            boot: Duration::from_secs(15),
            jitter: 0.1,
        }
    }
}

impl ActionDurations {
    /// Every action takes `d`, with no jitter, and the guest OS boots and obeys ACPI at once:
    /// the profile of client tests that only care that actions take *some* time.
    pub fn uniform(d: Duration) -> Self {
        ActionDurations {
            create_server: d,
            start_server: d,
            stop_server: d,
            shutdown_server: d,
            reboot_server: d,
            reset_server: d,
            delete_server: d,
            change_server_type: d,
            rebuild_server: d,
            apply_firewall: d,
            remove_firewall: d,
            set_firewall_rules: d,
            acpi_shutdown: Duration::ZERO,
            boot: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// The real-world figure for `command`, before jitter and time scale.
    pub fn of(&self, command: Command) -> Duration {
        match command {
            Command::CreateServer => self.create_server,
            Command::StartServer => self.start_server,
            Command::StopServer => self.stop_server,
            Command::ShutdownServer => self.shutdown_server,
            Command::RebootServer => self.reboot_server,
            Command::ResetServer => self.reset_server,
            Command::DeleteServer => self.delete_server,
            Command::ChangeServerType => self.change_server_type,
            Command::RebuildServer => self.rebuild_server,
            Command::ApplyFirewall => self.apply_firewall,
            Command::RemoveFirewall => self.remove_firewall,
            Command::SetFirewallRules => self.set_firewall_rules,
        }
    }

    /// Sets the figure of the command Hetzner names `command` (what a `create_server=15s`
    /// flag means).
    pub fn set(&mut self, command: &str, d: Duration) -> Result<(), UnknownCommand> {
        let slot = match Command::from_name(command)? {
            Command::CreateServer => &mut self.create_server,
            Command::StartServer => &mut self.start_server,
            Command::StopServer => &mut self.stop_server,
            Command::ShutdownServer => &mut self.shutdown_server,
            Command::RebootServer => &mut self.reboot_server,
            Command::ResetServer => &mut self.reset_server,
            Command::DeleteServer => &mut self.delete_server,
            Command::ChangeServerType => &mut self.change_server_type,
            Command::RebuildServer => &mut self.rebuild_server,
            Command::ApplyFirewall => &mut self.apply_firewall,
            Command::RemoveFirewall => &mut self.remove_firewall,
            Command::SetFirewallRules => &mut self.set_firewall_rules,
        };
        *slot = d;
        Ok(())
    }

    /// `d` stretched by a jitter factor drawn from `rng` (seeded by the world, so a run
    /// replays exactly). Draws nothing when there is no jitter, so turning jitter off does
    /// not shift the other dice.
    pub fn jittered(&self, d: Duration, rng: &mut impl Rng) -> Duration {
        let j = if self.jitter.is_finite() { self.jitter.clamp(0.0, 1.0) } else { 0.0 };
        if j == 0.0 || d.is_zero() {
            return d;
        }
        let factor = rng.random_range(1.0 - j..=1.0 + j);
        Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(d)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn jitter_stays_in_bounds_and_replays_by_seed() {
        let d = ActionDurations::default();
        let base = Duration::from_secs(10);
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).map(|_| d.jittered(base, &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "the same seed replays the same durations");
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|x| *x >= Duration::from_secs(9) && *x <= Duration::from_secs(11)), "{a:?}");
        let flat = ActionDurations::uniform(base);
        assert_eq!(flat.jittered(base, &mut StdRng::seed_from_u64(1)), base);
    }

    #[test]
    fn every_command_is_named_and_settable() {
        let mut d = ActionDurations::uniform(Duration::ZERO);
        for (i, c) in Command::ALL.into_iter().enumerate() {
            assert_eq!(Command::from_name(c.name()), Ok(c));
            d.set(c.name(), Duration::from_secs(i as u64 + 1)).expect("known command");
            assert_eq!(d.of(c), Duration::from_secs(i as u64 + 1));
        }
        let err = d.set("launch_rocket", Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("create_server"), "{err}");
    }
}
