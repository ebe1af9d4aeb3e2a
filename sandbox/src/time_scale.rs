//! The simulators' one time scale: how much faster than real time the simulated world runs.
//! Every simulated duration (an action, a boot, a rate-limit window) goes through [`scaled`],
//! so a benchmark at scale 60 runs an hour of real-world physics in a minute and its results
//! read back in real-world terms. It owns no clock and never sleeps.

use std::time::Duration;

/// `d` as it passes under `scale` (real-world duration divided by the scale): at 60, an
/// hour lasts a minute. A scale that is not finite and positive leaves `d` unchanged (real
/// time), and a result too long to represent saturates, so no input panics.
pub fn scaled(d: Duration, scale: f64) -> Duration {
    if !valid(scale) {
        return d;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() / scale).unwrap_or(Duration::MAX)
}

/// The real-world span that `elapsed` of wall time stands for under `scale` (the inverse of
/// [`scaled`]): what a benchmark at scale 60 reports for a run that took one minute (an
/// hour). Saturates, and treats an invalid scale as 1, like [`scaled`].
pub fn real_world(elapsed: Duration, scale: f64) -> Duration {
    if !valid(scale) {
        return elapsed;
    }
    Duration::try_from_secs_f64(elapsed.as_secs_f64() * scale).unwrap_or(Duration::MAX)
}

/// Whether `scale` is one the simulators accept (finite and positive).
pub fn valid(scale: f64) -> bool {
    scale.is_finite() && scale > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divides_and_never_panics() {
        assert_eq!(scaled(Duration::from_secs(3600), 60.0), Duration::from_secs(60));
        assert_eq!(scaled(Duration::from_secs(10), 1.0), Duration::from_secs(10));
        assert_eq!(scaled(Duration::from_secs(1), 0.5), Duration::from_secs(2));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(scaled(Duration::from_secs(7), bad), Duration::from_secs(7), "{bad}");
        }
        assert_eq!(scaled(Duration::MAX, 1e-300), Duration::MAX);
        assert_eq!(scaled(Duration::from_secs(1), 1e300), Duration::ZERO);
        assert_eq!(real_world(Duration::from_secs(60), 60.0), Duration::from_secs(3600));
        assert_eq!(real_world(scaled(Duration::from_secs(12), 100.0), 100.0), Duration::from_secs(12));
        assert_eq!(real_world(Duration::from_secs(7), f64::NAN), Duration::from_secs(7));
    }
}
