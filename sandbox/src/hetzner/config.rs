//! How a simulated Hetzner project is configured: its token, rate budget, action timings,
//! time scale and project limits. Only data and the budget it implies.

use crate::http::RateBudget;
use crate::time_scale::{self, scaled};

use super::physics::ActionDurations;

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
    /// The bucket the shared plumbing enforces: the burst stays `rate_limit_per_hour`, the refill runs
    /// `time_scale` times faster (the hour shrinks, the budget does not).
    pub(super) fn budget(&self) -> RateBudget {
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
