//! How a cloud client retries one call (the wait between attempts is [`crate::backoff`]'s).

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
    /// Delay before retry number `retry` (0-based), by the operator's one backoff formula.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        crate::backoff::delay(retry, self.base, self.cap, rng)
    }
}
