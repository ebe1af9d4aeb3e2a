//! Capped exponential backoff with jitter for retryable errors. Pure arithmetic: the caller
//! sleeps; this module never does.

use std::time::Duration;

use rand::Rng;

/// How a client retries one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Like hcloud-python: a handful of retries, capped so a reconcile is not stuck.
        RetryPolicy { max_attempts: 6, base: Duration::from_millis(500), cap: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (0-based): "equal jitter", half fixed and half
    /// random, so retries of many callers spread out but never fire at once.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let exp = self.base.saturating_mul(2u32.saturating_pow(retry.min(20)));
        let ceiling = exp.min(self.cap);
        let half = ceiling / 2;
        let jitter_nanos = rng.random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_and_caps() {
        let p = RetryPolicy { max_attempts: 10, base: Duration::from_millis(100), cap: Duration::from_secs(2) };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for retry in 0..12 {
            let d = p.delay(retry, &mut rng);
            let ceiling = (Duration::from_millis(100) * 2u32.pow(retry)).min(Duration::from_secs(2));
            assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
        }
    }
}
