//! The request budget shared by every caller of one account: a token bucket that starts from
//! the configured budget, is corrected by the provider's rate-limit headers, and pauses
//! everyone after a 429. Callers wait here; nothing in this module sends requests.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest wait any header may impose. Retry-After, `t=` and `w=` come from the network:
/// a malformed or hostile value (`Retry-After: 18446744073709551615`) must neither overflow
/// `Instant` arithmetic (a panic) nor park every caller of the account for centuries.
pub(crate) const MAX_HEADER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A duration in seconds, clamped to `MAX_HEADER_WAIT` (NaN and negatives become zero).
fn clamped_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).map_or(MAX_HEADER_WAIT, |d| d.min(MAX_HEADER_WAIT))
}

/// What one response said about the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateObservation {
    /// Without `window`: the burst size of the provider's own bucket (`RateLimit-Limit`).
    /// With `window`: a quota, at most `limit` requests in any `window` (Cloudflare's policy
    /// `q=` and `w=`).
    pub limit: Option<u32>,
    /// Requests left now (`RateLimit-Remaining`, Cloudflare's `r=`).
    pub remaining: Option<u32>,
    /// The quota's window (Cloudflare's policy `w=`); `None` for a bucket like Hetzner's.
    pub window: Option<Duration>,
}

/// How much longer than the provider's window a quota window is kept: a request is counted
/// when it leaves here, and one that spends a little longer on the way than a later one must
/// still not land in the same provider window.
const QUOTA_WINDOW_MARGIN: f64 = 1.02;

/// "At most `quota` requests in any `window`", kept exactly: the send times of the last
/// window. Unlike a bucket, which lets its burst *and* its refill through in one window (so
/// it must run at a fraction of the quota to stay under it), this spends the whole quota in
/// every window, and so converges a large fleet in the least time the quota allows.
#[derive(Clone, Debug)]
struct QuotaWindow {
    quota: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl QuotaWindow {
    fn new(quota: u32, window: Duration) -> Self {
        let window = clamped_secs(window.as_secs_f64() * QUOTA_WINDOW_MARGIN);
        QuotaWindow { quota: quota.max(1) as usize, window, sent: VecDeque::new() }
    }

    fn prune(&mut self, now: Instant) {
        while self.sent.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            self.sent.pop_front();
        }
    }

    fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        self.prune(now);
        if self.sent.len() < self.quota {
            self.sent.push_back(now);
            return Ok(());
        }
        let oldest = self.sent.front().copied().unwrap_or(now);
        Err((self.window.saturating_sub(now.saturating_duration_since(oldest))).max(Duration::from_micros(50)))
    }

    /// Someone else spends from the same quota: allow at most `remaining` more now.
    fn hold_at_most(&mut self, remaining: u32, now: Instant) {
        self.prune(now);
        let allowed = self.quota.saturating_sub(self.sent.len());
        for _ in 0..allowed.saturating_sub(remaining as usize) {
            self.sent.push_back(now);
        }
    }

    fn per_sec(&self) -> f64 {
        self.quota as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// The stricter of two policies: the lower rate; at the same rate, the smaller burst.
    fn stricter_than(&self, other: &QuotaWindow) -> bool {
        let (a, b) = (self.per_sec(), other.per_sec());
        a < b * (1.0 - 1e-9) || ((a - b).abs() <= b * 1e-9 && self.quota < other.quota)
    }
}

/// A continuous-refill token bucket on an explicit clock, so tests can drive it; or, once a
/// quota per window is known (Cloudflare's), that quota kept exactly.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    /// The configured budget's rate (capacity / window at construction). Kept apart from
    /// `capacity`: a provider header that reports a smaller burst (Hetzner's
    /// `RateLimit-Limit: 3600` under a raised hourly budget) caps the burst, never the rate.
    refill_per_sec: f64,
    tokens: f64,
    last: Instant,
    not_before: Option<Instant>,
    quota_window: Option<QuotaWindow>,
}

impl TokenBucket {
    /// A full bucket of `capacity` requests refilling completely in `window`.
    pub fn new(capacity: u32, window: Duration, now: Instant) -> Self {
        // `window` is how long the whole `capacity` takes to refill, so the refill rate is
        // capacity / window.
        TokenBucket {
            capacity: f64::from(capacity.max(1)),
            refill_per_sec: f64::from(capacity.max(1)) / window.as_secs_f64().max(1e-9),
            tokens: f64::from(capacity.max(1)),
            last: now,
            not_before: None,
            quota_window: None,
        }
    }

    fn refill_per_sec(&self) -> f64 {
        self.refill_per_sec
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec()).min(self.capacity);
        self.last = now;
    }

    /// Takes one token, or says how long to wait before trying again.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(t) = self.not_before {
            if now < t {
                return Err(t - now);
            }
            self.not_before = None;
        }
        if let Some(quota) = &mut self.quota_window {
            return quota.try_acquire(now);
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.refill_per_sec();
            Err(clamped_secs(wait).max(Duration::from_micros(50)))
        }
    }

    /// Takes the provider's word: it may be shared with other processes, so the bucket
    /// only ever gets more cautious from what a response says.
    pub fn observe(&mut self, obs: RateObservation, now: Instant) {
        self.refill(now);
        // The burst is the smaller of ours and the provider's: a configured burst below the
        // provider's leaves headroom for requests that bunch up in flight.
        match (obs.limit.filter(|l| *l > 0), obs.window.filter(|w| !w.is_zero())) {
            (Some(quota), Some(window)) => self.fit_quota(quota, window.min(MAX_HEADER_WAIT)),
            (Some(limit), None) => {
                self.capacity = self.capacity.min(f64::from(limit));
                self.tokens = self.tokens.min(self.capacity);
            }
            _ => {}
        }
        if let Some(remaining) = obs.remaining {
            self.tokens = self.tokens.min(f64::from(remaining));
            if let Some(quota) = &mut self.quota_window {
                quota.hold_at_most(remaining, now);
            }
        }
    }

    /// From now on, no stretch of `window` holds more than `quota` requests (Cloudflare
    /// blocks every call for five minutes once its quota is exceeded). Kept exactly, as a
    /// window of send times, and only ever made stricter: between ours and the provider's,
    /// the lower rate wins, and at the same rate the smaller burst. The sends already made
    /// count against the new window.
    pub fn fit_quota(&mut self, quota: u32, window: Duration) {
        let mut candidate = QuotaWindow::new(quota, window);
        match &self.quota_window {
            Some(current) if !candidate.stricter_than(current) => {}
            current => {
                if let Some(current) = current {
                    candidate.sent = current.sent.clone();
                }
                self.quota_window = Some(candidate);
            }
        }
    }

    /// After a 429: nobody sends before `now + wait`, and the bucket restarts empty.
    pub fn pause(&mut self, wait: Duration, now: Instant) {
        self.refill(now);
        self.tokens = 0.0;
        let until = now.checked_add(wait.min(MAX_HEADER_WAIT)).unwrap_or(now);
        self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
    }

    /// Time for one token to come back (how long a 429 without `Retry-After` should pause).
    pub fn one_token(&self) -> Duration {
        let per_sec = self.quota_window.as_ref().map_or_else(|| self.refill_per_sec(), QuotaWindow::per_sec);
        clamped_secs(1.0 / per_sec)
    }
}

/// The async face of [`TokenBucket`], shared (in an `Arc`) by all callers of one account.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<TokenBucket>,
}

impl RateLimiter {
    pub fn new(capacity: u32, window: Duration) -> Self {
        RateLimiter { bucket: Mutex::new(TokenBucket::new(capacity, window, Instant::now())) }
    }

    /// Hetzner's default budget: 3600 requests per hour.
    pub fn hetzner_default() -> Self {
        Self::new(3600, Duration::from_secs(3600))
    }

    /// Cloudflare's default budget: at most 1200 requests in any five minutes (kept exactly,
    /// see [`TokenBucket::fit_quota`]).
    pub fn cloudflare_default() -> Self {
        Self::cloudflare(1200)
    }

    /// A Cloudflare budget of `quota` requests in any five minutes (a plan with a raised limit).
    pub fn cloudflare(quota: u32) -> Self {
        let mut bucket = TokenBucket::new(quota, Duration::from_secs(300), Instant::now());
        bucket.fit_quota(quota, Duration::from_secs(300));
        RateLimiter { bucket: Mutex::new(bucket) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let mut guard = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Waits until the budget allows one more request; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        loop {
            match self.with(|b| b.try_acquire(Instant::now())) {
                Ok(()) => return started.elapsed(),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Like [`acquire`](Self::acquire), but gives up without waiting when the budget is back
    /// only after `max_wait`: `Err(wait)` says when to come back.
    pub async fn acquire_within(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let started = Instant::now();
        loop {
            match self.with(|b| b.try_acquire(Instant::now())) {
                Ok(()) => return Ok(started.elapsed()),
                Err(wait) if wait > max_wait => return Err(wait),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    pub fn observe(&self, obs: RateObservation) {
        self.with(|b| b.observe(obs, Instant::now()));
    }

    pub fn pause(&self, wait: Duration) {
        self.with(|b| b.pause(wait, Instant::now()));
    }

    pub fn one_token(&self) -> Duration {
        self.with(|b| b.one_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10,000 callers against a 100-request bucket refilling 100 per simulated second: every
    /// one gets through, and no one-second window ever sees more than the budget allows.
    #[test]
    fn burst_of_10000_stays_within_budget() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, Duration::from_secs(1), start);
        let mut now = start;
        let mut sent: Vec<Instant> = Vec::with_capacity(10_000);
        while sent.len() < 10_000 {
            match bucket.try_acquire(now) {
                Ok(()) => sent.push(now),
                Err(wait) => now += wait,
            }
        }
        // Any window of length w may hold at most capacity + refill * w requests.
        let mut lo = 0;
        for hi in 0..sent.len() {
            while sent[hi] - sent[lo] > Duration::from_secs(1) {
                lo += 1;
            }
            let in_window = hi - lo + 1;
            assert!(in_window <= 201, "{in_window} requests in one second");
        }
        let took = now - start;
        assert!(took >= Duration::from_secs(98) && took <= Duration::from_secs(101), "{took:?}");
    }

    /// The most requests a bucket lets through in any stretch of `window`, driven greedily.
    fn busiest_window(mut bucket: TokenBucket, start: Instant, requests: usize, window: Duration) -> usize {
        let mut now = start;
        let mut sent: Vec<Instant> = Vec::with_capacity(requests);
        while sent.len() < requests {
            match bucket.try_acquire(now) {
                Ok(()) => sent.push(now),
                Err(wait) => now += wait,
            }
        }
        let (mut lo, mut most) = (0, 0);
        for hi in 0..sent.len() {
            while sent[hi] - sent[lo] >= window {
                lo += 1;
            }
            most = most.max(hi - lo + 1);
        }
        most
    }

    /// Cloudflare counts 1200 per five minutes: neither our default nor a bucket corrected
    /// by the policy header ever puts more than that into any five-minute stretch.
    #[test]
    fn cloudflare_quota_holds_in_every_window() {
        let start = Instant::now();
        let five_minutes = Duration::from_secs(300);
        let default = RateLimiter::cloudflare_default().with(|b| b.clone());
        let default = TokenBucket { last: start, ..default };
        let most = busiest_window(default, start, 5000, five_minutes);
        assert!((1150..=1200).contains(&most), "{most} requests in five minutes");

        let mut observed = TokenBucket::new(1200, five_minutes, start);
        let policy = RateObservation { limit: Some(1200), remaining: None, window: Some(five_minutes) };
        observed.observe(policy, start);
        let most = busiest_window(observed, start, 5000, five_minutes);
        assert!((1150..=1200).contains(&most), "{most} requests in five minutes");

        // A smaller account quota seen in the header wins over our default.
        let mut small = TokenBucket::new(1200, five_minutes, start);
        small.observe(RateObservation { limit: Some(300), remaining: None, window: Some(five_minutes) }, start);
        assert!(busiest_window(small, start, 2000, five_minutes) <= 300);
    }

    /// A fleet's worth of Cloudflare calls takes the least time the quota allows: the whole
    /// quota in every window (3000 requests: 1200 at once, 1200 a window later, the rest two
    /// windows later), where a bucket kept under the quota needed half as long again.
    #[test]
    fn a_quota_window_spends_the_whole_quota_in_every_window() {
        let start = Instant::now();
        let five_minutes = Duration::from_secs(300);
        let mut bucket = RateLimiter::cloudflare_default().with(|b| b.clone());
        let mut now = start;
        let mut sent = 0;
        while sent < 3000 {
            match bucket.try_acquire(now) {
                Ok(()) => sent += 1,
                Err(wait) => now += wait,
            }
        }
        let took = now - start;
        let expected = five_minutes.mul_f64(2.0 * QUOTA_WINDOW_MARGIN);
        let off_by = took.max(expected) - took.min(expected);
        assert!(off_by <= Duration::from_millis(1), "{took:?}");
    }

    /// Under a time scale ours says 24,000 per five minutes and the provider 1200 per 15 s:
    /// the same rate, and the provider's smaller burst wins, counting what was already sent.
    #[test]
    fn the_stricter_quota_wins_and_keeps_the_sends_made() {
        let start = Instant::now();
        let mut bucket = RateLimiter::cloudflare(24_000).with(|b| b.clone());
        for _ in 0..200 {
            assert!(bucket.try_acquire(start).is_ok());
        }
        let policy = RateObservation { limit: Some(1200), remaining: None, window: Some(Duration::from_secs(15)) };
        bucket.observe(policy, start);
        let most = busiest_window(bucket.clone(), start, 5000, Duration::from_secs(15));
        assert!(most <= 1200, "{most} in 15 s");
        let mut allowed = 0;
        while bucket.try_acquire(start).is_ok() {
            allowed += 1;
        }
        assert_eq!(allowed, 1000, "the 200 sent before the header count");
        // A looser policy seen later changes nothing.
        bucket.observe(
            RateObservation { limit: Some(5000), remaining: None, window: Some(Duration::from_secs(15)) },
            start,
        );
        assert!(bucket.try_acquire(start).is_err());
        // Another process spending from the same token: `remaining` holds us back.
        let mut shared = RateLimiter::cloudflare(1200).with(|b| b.clone());
        shared.observe(RateObservation { limit: None, remaining: Some(2), window: None }, start);
        assert!(shared.try_acquire(start).is_ok() && shared.try_acquire(start).is_ok());
        assert!(shared.try_acquire(start).is_err());
    }

    #[test]
    fn extreme_headers_neither_panic_nor_park_forever() {
        let now = Instant::now();
        let mut b = TokenBucket::new(10, Duration::from_secs(10), now);
        b.observe(RateObservation { limit: Some(1), remaining: Some(0), window: Some(Duration::MAX) }, now);
        let wait = b.try_acquire(now).unwrap_err();
        assert!(wait <= MAX_HEADER_WAIT, "{wait:?}");
        assert!(b.one_token() <= MAX_HEADER_WAIT);
        b.pause(Duration::MAX, now);
        let wait = b.try_acquire(now).unwrap_err();
        assert!(wait <= MAX_HEADER_WAIT, "{wait:?}");
        let mut tiny = TokenBucket::new(1, Duration::MAX, now);
        assert!(tiny.try_acquire(now).is_ok());
        assert!(tiny.try_acquire(now).unwrap_err() <= MAX_HEADER_WAIT);
    }

    /// A raised budget of 72,000 an hour (20 a second) against Hetzner's reported burst of
    /// 3600: once the burst is spent, the refill is still the budget's 20 a second.
    #[test]
    fn a_smaller_reported_burst_caps_the_burst_not_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(72_000, Duration::from_secs(3600), start);
        b.observe(RateObservation { limit: Some(3600), remaining: None, window: None }, start);
        let mut burst = 0;
        while b.try_acquire(start).is_ok() {
            burst += 1;
        }
        assert_eq!(burst, 3600, "the reported burst caps the bucket");
        let later = start + Duration::from_secs(10);
        let mut refilled = 0;
        while b.try_acquire(later).is_ok() {
            refilled += 1;
        }
        assert_eq!(refilled, 200, "10 s at the budget's 20 a second");
    }

    #[test]
    fn headers_only_make_it_more_cautious() {
        let now = Instant::now();
        let mut b = TokenBucket::new(100, Duration::from_secs(100), now);
        b.observe(RateObservation { limit: Some(50), remaining: Some(3), window: None }, now);
        for _ in 0..3 {
            assert!(b.try_acquire(now).is_ok());
        }
        assert!(b.try_acquire(now).is_err());
        b.pause(Duration::from_secs(5), now);
        assert_eq!(b.try_acquire(now + Duration::from_secs(4)), Err(Duration::from_secs(1)));
    }
}
