//! The settings `run` refuses at start: values that would make the controllers remove what an
//! object is still creating, kill guests or spin, instead of quietly clamping them. Each
//! refusal names the flag and its environment variable.

use std::time::Duration;

use crate::controllers::config::ControllerConfig;

/// A setting refused at start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag} ({env}) {problem}")]
pub struct BadSetting {
    /// The flag of `crabglamp-operator run`.
    pub flag: &'static str,
    /// The environment variable that sets it.
    pub env: &'static str,
    /// What is wrong and what it would do; never echoes anything but the value's bound.
    pub problem: String,
}

/// The shortest fast poll: the shared lists must not run back to back.
pub const MIN_FAST_POLL: Duration = Duration::from_millis(50);

impl ControllerConfig {
    /// Every timing the controllers need to be safe, or the first one that is not.
    ///
    /// The sweeper grace must be above zero: the sweeper lists the live objects, then reads
    /// the fleet view, so a resource an object made between the two (the object created just
    /// after the list) looks orphaned once. A grace above zero means a second sweep, with a
    /// fresh list that shows the object, judges it before anything is removed; a grace of
    /// zero removes it at first sight (and sweeps every 200 ms).
    pub fn check(&self) -> Result<(), BadSetting> {
        let at_least = |value: Duration, min: Duration, flag, env, why: &str| {
            if value >= min {
                Ok(())
            } else {
                Err(BadSetting { flag, env, problem: format!("must be at least {min:?} (got {value:?}): {why}") })
            }
        };
        at_least(
            self.sweeper_grace,
            Duration::from_secs(1),
            "--sweeper-grace-seconds",
            "CRABGLAMP_SWEEPER_GRACE_SECONDS",
            "with 0 the sweeper removes a resource the first time one sweep sees it without its object, \
             which is how a resource of an object being created looks for a moment",
        )?;
        at_least(
            self.resync,
            Duration::from_secs(1),
            "--resync-seconds",
            "CRABGLAMP_RESYNC_SECONDS",
            "with 0 every settled object and the shared cloud lists would be looked at in a loop",
        )?;
        at_least(
            self.fast_poll,
            MIN_FAST_POLL,
            "--fast-poll-ms",
            "CRABGLAMP_FAST_POLL_MS",
            "the shared cloud lists would run back to back while an object waits",
        )?;
        at_least(
            self.shutdown_timeout,
            Duration::from_secs(1),
            "--shutdown-timeout-seconds",
            "CRABGLAMP_SHUTDOWN_TIMEOUT_SECONDS",
            "with 0 every stop would be a hard power-off, with no time for the guest to shut down",
        )?;
        at_least(
            self.removal_settle_timeout,
            Duration::from_secs(1),
            "--removal-settle-timeout-seconds",
            "CRABGLAMP_REMOVAL_SETTLE_TIMEOUT_SECONDS",
            "with 0 a server still being created or powered would be removed before the usage timeline records it",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ControllerConfig {
        ControllerConfig::new("z.io")
    }

    #[test]
    fn the_defaults_pass() {
        assert_eq!(config().check(), Ok(()));
    }

    #[test]
    fn each_unsafe_timing_is_refused_by_its_flag() {
        type Set = fn(&mut ControllerConfig);
        let cases: [(Set, &str, &str); 6] = [
            (|c| c.sweeper_grace = Duration::ZERO, "--sweeper-grace-seconds", "CRABGLAMP_SWEEPER_GRACE_SECONDS"),
            (
                |c| c.sweeper_grace = Duration::from_millis(999),
                "--sweeper-grace-seconds",
                "CRABGLAMP_SWEEPER_GRACE_SECONDS",
            ),
            (|c| c.resync = Duration::ZERO, "--resync-seconds", "CRABGLAMP_RESYNC_SECONDS"),
            (|c| c.fast_poll = Duration::from_millis(10), "--fast-poll-ms", "CRABGLAMP_FAST_POLL_MS"),
            (
                |c| c.shutdown_timeout = Duration::ZERO,
                "--shutdown-timeout-seconds",
                "CRABGLAMP_SHUTDOWN_TIMEOUT_SECONDS",
            ),
            (
                |c| c.removal_settle_timeout = Duration::ZERO,
                "--removal-settle-timeout-seconds",
                "CRABGLAMP_REMOVAL_SETTLE_TIMEOUT_SECONDS",
            ),
        ];
        for (set, flag, env) in cases {
            let mut c = config();
            set(&mut c);
            let refused = c.check().expect_err(flag);
            assert_eq!((refused.flag, refused.env), (flag, env));
            let message = refused.to_string();
            assert!(message.starts_with(&format!("{flag} ({env}) must be at least")), "{message}");
        }
    }

    #[test]
    fn the_shortest_allowed_timings_pass() {
        let mut c = config();
        c.sweeper_grace = Duration::from_secs(1);
        c.resync = Duration::from_secs(1);
        c.fast_poll = MIN_FAST_POLL;
        c.shutdown_timeout = Duration::from_secs(1);
        c.removal_settle_timeout = Duration::from_secs(1);
        assert_eq!(c.check(), Ok(()));
    }
}
