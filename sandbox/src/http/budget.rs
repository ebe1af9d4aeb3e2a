//! Rate limits as the simulators enforce them: a budget and the token bucket that spends it.
//! The dialects read the bucket to print their own headers; only the gate spends it.

use std::time::{Duration, Instant};

/// A request budget: `capacity` requests in a burst, refilled continuously.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateBudget {
    pub capacity: u32,
    pub refill_per_sec: f64,
}

impl RateBudget {
    /// Hetzner's documented default: 3600 requests per hour, +1 per second.
    pub const HETZNER_DEFAULT: RateBudget = RateBudget { capacity: 3600, refill_per_sec: 1.0 };
    /// Cloudflare's documented default: 1200 requests per five minutes.
    pub const CLOUDFLARE_DEFAULT: RateBudget = RateBudget { capacity: 1200, refill_per_sec: 4.0 };

    /// The window in which the whole capacity refills (Cloudflare's five minutes, shorter
    /// under a time scale).
    pub fn window(&self) -> Duration {
        if self.refill_per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(f64::from(self.capacity) / self.refill_per_sec).unwrap_or(Duration::MAX)
    }

    /// The window in whole seconds, as Cloudflare's `w=` parameter prints it.
    pub fn window_secs(&self) -> u64 {
        self.window().as_secs_f64().ceil() as u64
    }
}

/// Continuous-refill token bucket, the server side of a rate limit.
#[derive(Debug)]
pub struct RateBucket {
    budget: RateBudget,
    tokens: f64,
    last: Instant,
    /// Some APIs (Cloudflare) block every call for a whole window once the budget is spent.
    penalty: Option<Duration>,
    blocked_until: Option<Instant>,
}

impl RateBucket {
    /// A full bucket; `blocks_a_window`: a spent budget blocks every call for one whole
    /// window (scaled with the refill rate under a time scale).
    pub(super) fn new(budget: RateBudget, blocks_a_window: bool) -> Self {
        let penalty = blocks_a_window.then(|| budget.window());
        RateBucket { budget, tokens: f64::from(budget.capacity), last: Instant::now(), penalty, blocked_until: None }
    }

    /// The budget this bucket spends.
    pub fn budget(&self) -> RateBudget {
        self.budget
    }

    pub(super) fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.budget.refill_per_sec).min(f64::from(self.budget.capacity));
        self.last = now;
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if let Some(until) = self.blocked_until {
            if now < until {
                return false;
            }
            self.blocked_until = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.blocked_until = self.penalty.and_then(|p| now.checked_add(p));
            false
        }
    }

    /// Requests the budget allows right now.
    pub fn remaining(&self) -> u32 {
        self.tokens.max(0.0).floor() as u32
    }

    /// Seconds until the bucket is full again.
    pub fn secs_to_full(&self) -> u64 {
        if self.budget.refill_per_sec <= 0.0 {
            return 0;
        }
        ((f64::from(self.budget.capacity) - self.tokens).max(0.0) / self.budget.refill_per_sec).ceil() as u64
    }

    /// Seconds until one more request is allowed.
    pub fn secs_to_next(&self) -> u64 {
        if let Some(until) = self.blocked_until {
            return until.saturating_duration_since(Instant::now()).as_secs_f64().ceil().max(1.0) as u64;
        }
        if self.budget.refill_per_sec <= 0.0 {
            return 1;
        }
        ((1.0 - self.tokens).max(0.0) / self.budget.refill_per_sec).ceil().max(1.0) as u64
    }
}
