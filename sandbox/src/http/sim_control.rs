//! The control surface of one running simulator: its dialect and token, the fault plan and its
//! dice, the rate bucket and the request log. What tests reach through
//! `RunningSim::control` and the `/_sim` routes; it never hands out the token.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, header};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::budget::{RateBucket, RateBudget};
use super::dialect::Dialect;
use super::faults::{FaultPlan, InjectedError};
use super::log::{RequestLog, RequestRecord, RouteCount};
use super::mutex::lock;
use super::wire::bearer;

/// Shared control surface of one running simulator: config knobs, log and counters.
pub struct SimControl {
    dialect: Box<dyn Dialect>,
    token: String,
    /// e.g. `/v1`: fault rules may name routes with or without it.
    base_path: &'static str,
    log: Mutex<RequestLog>,
    faults: Mutex<(FaultPlan, StdRng)>,
    bucket: Mutex<RateBucket>,
}

impl SimControl {
    pub(super) fn new(dialect: Box<dyn Dialect>, token: String, budget: RateBudget, base_path: &'static str) -> Self {
        let bucket = RateBucket::new(budget, dialect.spent_budget_blocks_a_window());
        SimControl {
            dialect,
            token,
            base_path,
            log: Mutex::new(RequestLog::default()),
            faults: Mutex::new((FaultPlan::default(), StdRng::seed_from_u64(0))),
            bucket: Mutex::new(bucket),
        }
    }

    /// How the simulated API words the answers the plumbing gives.
    pub(super) fn dialect(&self) -> &dyn Dialect {
        self.dialect.as_ref()
    }

    /// Replaces the fault plan (and reseeds the dice from it). A rule's route may leave out
    /// the base path (`/servers` means `/v1/servers` on Hetzner).
    pub fn set_faults(&self, mut plan: FaultPlan) {
        for rule in &mut plan.rules {
            if let Some(route) = &mut rule.route
                && !route.starts_with(self.base_path)
            {
                *route = format!("{}{route}", self.base_path);
            }
        }
        let rng = StdRng::seed_from_u64(plan.seed);
        *lock(&self.faults) = (plan, rng);
    }

    /// The fault plan in force (`rate_limit_storm` is what is left of the storm).
    pub fn faults(&self) -> FaultPlan {
        lock(&self.faults).0.clone()
    }

    /// The rate budget in force.
    pub fn rate_budget(&self) -> RateBudget {
        lock(&self.bucket).budget()
    }

    /// Forgets the request log and every counter (positions keep counting up).
    pub fn reset(&self) {
        lock(&self.log).reset();
    }

    /// Request counts by method, route pattern and status, since the start or the last reset.
    pub fn route_counts(&self) -> Vec<RouteCount> {
        lock(&self.log).route_counts()
    }

    /// Requests since the start (or the last reset) answered with each status.
    pub fn status_counts(&self) -> BTreeMap<u16, u64> {
        lock(&self.log).status_counts()
    }

    /// Logged requests after position `since`, oldest first, at most `limit`.
    pub fn requests_since(&self, since: u64, limit: usize) -> Vec<RequestRecord> {
        lock(&self.log).requests_since(since, limit)
    }

    /// Starts a storm: the next `n` requests are answered 429.
    pub fn rate_limit_storm(&self, n: u32) {
        lock(&self.faults).0.rate_limit_storm = n;
    }

    /// Replaces the rate budget and refills the bucket.
    pub fn set_rate_budget(&self, budget: RateBudget) {
        *lock(&self.bucket) = RateBucket::new(budget, self.dialect.spent_budget_blocks_a_window());
    }

    /// The most recent requests (up to 100,000), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).requests()
    }

    /// Requests the budget allows right now (what `RateLimit-Remaining` would say).
    pub fn budget_remaining(&self) -> u32 {
        let mut bucket = lock(&self.bucket);
        bucket.refill(Instant::now());
        bucket.remaining()
    }

    /// All requests served since the start.
    pub fn total_requests(&self) -> u64 {
        lock(&self.log).total()
    }

    /// Requests answered with this status, since the start.
    pub fn count_status(&self, status: u16) -> usize {
        lock(&self.log).count_status(status)
    }

    /// Recent requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &Method, path_contains: &str) -> usize {
        lock(&self.log).count(method, path_contains)
    }

    pub(super) fn record(&self, record: RequestRecord) {
        lock(&self.log).record(record);
    }

    /// Whether the request carries the simulator's token in a form its API accepts; the
    /// dialect's answer when it does not.
    pub(super) fn auth_failure(&self, headers: &HeaderMap) -> Option<axum::response::Response> {
        self.dialect.auth_failure(&self.token, headers)
    }

    /// Whether the control API's caller holds the token (Bearer only: the control API has no
    /// legacy Cloudflare key auth).
    pub(super) fn control_authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .is_some_and(|t| t == self.token)
    }

    /// The bucket, locked: spends a request or reads it for the rate headers.
    pub(super) fn bucket(&self) -> std::sync::MutexGuard<'_, RateBucket> {
        lock(&self.bucket)
    }

    /// Decides whether this request is faulted: Some((error, applied_first)).
    pub(super) fn roll_fault(&self, method: &Method, route: Option<&str>, path: &str) -> Option<(InjectedError, bool)> {
        let mut guard = lock(&self.faults);
        let (plan, rng) = &mut *guard;
        for rule in &plan.rules {
            if !rule.matches(method, route, path) {
                continue;
            }
            if rng.random::<f64>() < rule.rate {
                let error = match rule.error {
                    InjectedError::Any5xx => [
                        InjectedError::ServerError,
                        InjectedError::BadGateway,
                        InjectedError::Unavailable,
                        InjectedError::Timeout,
                    ][rng.random_range(0..4)],
                    e => e,
                };
                let lose_answer = plan.fail_after_apply || rule.lose_answer;
                return Some((error, lose_answer && *method != Method::GET));
            }
        }
        None
    }

    pub(super) fn take_storm(&self) -> bool {
        let mut guard = lock(&self.faults);
        if guard.0.rate_limit_storm > 0 {
            guard.0.rate_limit_storm -= 1;
            true
        } else {
            false
        }
    }

    pub(super) fn latency(&self) -> Duration {
        lock(&self.faults).0.latency
    }
}
