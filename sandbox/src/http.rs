//! HTTP plumbing the Hetzner and Cloudflare simulators share: serving and shutdown, bearer
//! auth, both error envelopes, the rate-limit bucket and its headers, fault injection, the
//! request log and counters, and the generic half of the control API ([`control`]). It owns no
//! provider resources and must never log, record or echo a token or any other secret.

pub mod control;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which API a simulator speaks: decides the error envelope, auth failures and rate headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Hetzner,
    Cloudflare,
}

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
    fn window(&self) -> Duration {
        if self.refill_per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(f64::from(self.capacity) / self.refill_per_sec).unwrap_or(Duration::MAX)
    }

    /// The window in whole seconds, as Cloudflare's `w=` parameter prints it.
    fn window_secs(&self) -> u64 {
        self.window().as_secs_f64().ceil() as u64
    }
}

/// An error a fault rule answers with instead of the real handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedError {
    ServerError,
    BadGateway,
    Unavailable,
    Timeout,
    /// Hetzner `conflict` (409): "resource changed mid-request, retry".
    Conflict,
    /// Hetzner `placement_error` (422, server create): no host could take the server now.
    Placement,
    /// Hetzner `resource_unavailable` (412): the type is sold out in the location for now.
    ResourceUnavailable,
    /// One of the four 5xx above, picked at random each time.
    Any5xx,
}

impl InjectedError {
    fn status(self) -> StatusCode {
        match self {
            InjectedError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            InjectedError::BadGateway => StatusCode::BAD_GATEWAY,
            InjectedError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            InjectedError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            InjectedError::Conflict => StatusCode::CONFLICT,
            InjectedError::Placement => StatusCode::UNPROCESSABLE_ENTITY,
            InjectedError::ResourceUnavailable => StatusCode::PRECONDITION_FAILED,
            InjectedError::Any5xx => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The name the control API and the `--fault` flag use.
    pub fn name(self) -> &'static str {
        match self {
            InjectedError::ServerError => "server_error",
            InjectedError::BadGateway => "bad_gateway",
            InjectedError::Unavailable => "unavailable",
            InjectedError::Timeout => "timeout",
            InjectedError::Conflict => "conflict",
            InjectedError::Placement => "placement_error",
            InjectedError::ResourceUnavailable => "resource_unavailable",
            InjectedError::Any5xx => "any_5xx",
        }
    }

    /// The error named `name` (see [`InjectedError::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            InjectedError::ServerError,
            InjectedError::BadGateway,
            InjectedError::Unavailable,
            InjectedError::Timeout,
            InjectedError::Conflict,
            InjectedError::Placement,
            InjectedError::ResourceUnavailable,
            InjectedError::Any5xx,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }

    fn hetzner_code(self) -> &'static str {
        match self {
            InjectedError::ServerError | InjectedError::Any5xx => "server_error",
            InjectedError::BadGateway => "bad_gateway",
            InjectedError::Unavailable => "unavailable",
            InjectedError::Timeout => "timeout",
            InjectedError::Conflict => "conflict",
            InjectedError::Placement => "placement_error",
            InjectedError::ResourceUnavailable => "resource_unavailable",
        }
    }
}

/// One fault rule: requests whose method matches (None = any), whose route template is
/// `route` (None = any) and whose concrete path contains `path_contains` fail with `error` at
/// probability `rate`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    pub method: Option<Method>,
    /// The route pattern with the base path, e.g. `/v1/servers/{id}` (not a concrete path).
    pub route: Option<String>,
    pub path_contains: String,
    pub rate: f64,
    pub error: InjectedError,
    /// The change is applied and only the answer is lost (as [`FaultPlan::fail_after_apply`]
    /// does for every rule).
    pub lose_answer: bool,
}

impl FaultRule {
    /// Any request fails with a random 5xx at probability `rate`.
    pub fn any_5xx(rate: f64) -> Vec<FaultRule> {
        vec![FaultRule {
            method: None,
            route: None,
            path_contains: String::new(),
            rate,
            error: InjectedError::Any5xx,
            lose_answer: false,
        }]
    }

    fn matches(&self, method: &Method, route: Option<&str>, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.route.as_deref().is_none_or(|r| Some(r) == route)
            && path.contains(&self.path_contains)
    }
}

/// What a simulator does wrong on purpose. Changed at run time through
/// [`RunningSim::set_faults`] or, from another process, `PUT /_sim/faults`.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    pub rules: Vec<FaultRule>,
    /// Added to every request before it is handled.
    pub latency: Duration,
    /// The next this-many requests are answered 429 whatever the budget says.
    pub rate_limit_storm: u32,
    /// Seed of the fault dice, so a failing run can be replayed.
    pub seed: u64,
    /// When true, a request that fails by injection has already been applied (the response
    /// was "lost"), the nastiest case for idempotency.
    pub fail_after_apply: bool,
}

/// One line of the request log. Never holds headers (they carry credentials); bodies only
/// as [`redact_body`] leaves them.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    /// Position in the log since the start (1, 2, ...), kept across [`SimControl::reset`]
    /// so a reader can ask for what came after the last line it saw.
    pub seq: u64,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    /// The route pattern the request matched (`/v1/servers/{id}`); None when none did.
    pub route: Option<String>,
    pub status: u16,
    pub injected: bool,
    /// When the request arrived (RFC 3339, milliseconds).
    pub at: String,
    /// The JSON body of a POST, PUT or PATCH, secrets replaced (see [`redact_body`]).
    pub body: Option<Value>,
}

/// How many requests with one method and route pattern got one status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCount {
    pub method: String,
    /// None for requests no route matched (answered 404).
    pub route: Option<String>,
    pub status: u16,
    pub count: u64,
}

/// Continuous-refill token bucket, the server side of a rate limit.
#[derive(Debug)]
struct ServerBucket {
    budget: RateBudget,
    tokens: f64,
    last: Instant,
    /// Cloudflare blocks every call for a whole window once the budget is spent.
    penalty: Option<Duration>,
    blocked_until: Option<Instant>,
}

impl ServerBucket {
    fn new(budget: RateBudget, dialect: Dialect) -> Self {
        // Cloudflare: "exceeding the limit blocks all calls for the next five minutes", i.e.
        // one whole window (scaled with the refill rate under a time scale).
        let penalty = match dialect {
            Dialect::Hetzner => None,
            Dialect::Cloudflare => Some(budget.window()),
        };
        ServerBucket { budget, tokens: f64::from(budget.capacity), last: Instant::now(), penalty, blocked_until: None }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.budget.refill_per_sec).min(f64::from(self.budget.capacity));
        self.last = now;
    }

    fn take(&mut self, now: Instant) -> bool {
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

    fn remaining(&self) -> u32 {
        self.tokens.max(0.0).floor() as u32
    }

    /// Seconds until the bucket is full again.
    fn secs_to_full(&self) -> u64 {
        if self.budget.refill_per_sec <= 0.0 {
            return 0;
        }
        ((f64::from(self.budget.capacity) - self.tokens).max(0.0) / self.budget.refill_per_sec).ceil() as u64
    }

    /// Seconds until one more request is allowed.
    fn secs_to_next(&self) -> u64 {
        if let Some(until) = self.blocked_until {
            return until.saturating_duration_since(Instant::now()).as_secs_f64().ceil().max(1.0) as u64;
        }
        if self.budget.refill_per_sec <= 0.0 {
            return 1;
        }
        ((1.0 - self.tokens).max(0.0) / self.budget.refill_per_sec).ceil().max(1.0) as u64
    }
}

/// The request log: the most recent requests in full, exact counters for all of them (a
/// long-running sandbox must not grow without bound).
#[derive(Default)]
struct RequestLog {
    recent: std::collections::VecDeque<RequestRecord>,
    total: u64,
    by_status: std::collections::BTreeMap<u16, u64>,
    by_route: std::collections::BTreeMap<(String, Option<String>, u16), u64>,
    /// Never reset: [`RequestRecord::seq`] keeps growing.
    seq: u64,
}

/// How many requests the log keeps in full.
const LOG_CAPACITY: usize = 100_000;

/// Shared control surface of one running simulator: config knobs, log and counters.
pub struct SimControl {
    dialect: Dialect,
    token: String,
    /// e.g. `/v1`: fault rules may name routes with or without it.
    base_path: &'static str,
    log: Mutex<RequestLog>,
    faults: Mutex<(FaultPlan, StdRng)>,
    bucket: Mutex<ServerBucket>,
}

/// Locks a mutex, recovering the data if a handler panicked while holding it: the simulator
/// state stays usable, which is what a test wants to inspect afterwards.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimControl {
    fn new(dialect: Dialect, token: String, budget: RateBudget, base_path: &'static str) -> Self {
        SimControl {
            dialect,
            token,
            base_path,
            log: Mutex::new(RequestLog::default()),
            faults: Mutex::new((FaultPlan::default(), StdRng::seed_from_u64(0))),
            bucket: Mutex::new(ServerBucket::new(budget, dialect)),
        }
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
        lock(&self.bucket).budget
    }

    /// Forgets the request log and every counter (positions keep counting up).
    pub fn reset(&self) {
        let mut log = lock(&self.log);
        let seq = log.seq;
        *log = RequestLog { seq, ..RequestLog::default() };
    }

    /// Request counts by method, route pattern and status, since the start or the last reset.
    pub fn route_counts(&self) -> Vec<RouteCount> {
        lock(&self.log)
            .by_route
            .iter()
            .map(|((method, route, status), count)| RouteCount {
                method: method.clone(),
                route: route.clone(),
                status: *status,
                count: *count,
            })
            .collect()
    }

    /// Requests since the start (or the last reset) answered with each status.
    pub fn status_counts(&self) -> std::collections::BTreeMap<u16, u64> {
        lock(&self.log).by_status.clone()
    }

    /// Logged requests after position `since`, oldest first, at most `limit`.
    pub fn requests_since(&self, since: u64, limit: usize) -> Vec<RequestRecord> {
        let log = lock(&self.log);
        let start = log.recent.partition_point(|r| r.seq <= since);
        log.recent.iter().skip(start).take(limit).cloned().collect()
    }

    /// Starts a storm: the next `n` requests are answered 429.
    pub fn rate_limit_storm(&self, n: u32) {
        lock(&self.faults).0.rate_limit_storm = n;
    }

    /// Replaces the rate budget and refills the bucket.
    pub fn set_rate_budget(&self, budget: RateBudget) {
        *lock(&self.bucket) = ServerBucket::new(budget, self.dialect);
    }

    /// The most recent requests (up to 100,000), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).recent.iter().cloned().collect()
    }

    /// Requests the budget allows right now (what `RateLimit-Remaining` would say).
    pub fn budget_remaining(&self) -> u32 {
        let mut bucket = lock(&self.bucket);
        bucket.refill(Instant::now());
        bucket.remaining()
    }

    /// All requests served since the start.
    pub fn total_requests(&self) -> u64 {
        lock(&self.log).total
    }

    /// Requests answered with this status, since the start.
    pub fn count_status(&self, status: u16) -> usize {
        lock(&self.log).by_status.get(&status).copied().unwrap_or(0) as usize
    }

    /// Recent requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &Method, path_contains: &str) -> usize {
        lock(&self.log).recent.iter().filter(|r| r.method == *method && r.path.contains(path_contains)).count()
    }

    fn record(&self, mut record: RequestRecord) {
        let mut log = lock(&self.log);
        log.seq += 1;
        record.seq = log.seq;
        log.total += 1;
        *log.by_status.entry(record.status).or_default() += 1;
        *log.by_route.entry((record.method.to_string(), record.route.clone(), record.status)).or_default() += 1;
        if log.recent.len() == LOG_CAPACITY {
            log.recent.pop_front();
        }
        log.recent.push_back(record);
    }

    /// Decides whether this request is faulted: Some((error, applied_first)).
    fn roll_fault(&self, method: &Method, route: Option<&str>, path: &str) -> Option<(InjectedError, bool)> {
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

    fn take_storm(&self) -> bool {
        let mut guard = lock(&self.faults);
        if guard.0.rate_limit_storm > 0 {
            guard.0.rate_limit_storm -= 1;
            true
        } else {
            false
        }
    }

    fn latency(&self) -> Duration {
        lock(&self.faults).0.latency
    }

    /// The answer to a request whose credentials are missing or wrong; `None` when they are fine.
    fn auth_failure(&self, headers: &HeaderMap) -> Option<Response> {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match (self.dialect, auth) {
            (Dialect::Hetzner, Some(v)) if bearer(v) == Some(self.token.as_str()) => None,
            (Dialect::Hetzner, _) => {
                Some(hetzner_error(StatusCode::UNAUTHORIZED, "unauthorized", "unable to authenticate", Value::Null))
            }
            // Legacy global-key auth: the simulator's token doubles as the key.
            (Dialect::Cloudflare, None) if headers.contains_key("x-auth-key") => {
                let key = headers.get("x-auth-key").and_then(|v| v.to_str().ok());
                let email = headers.get("x-auth-email").and_then(|v| v.to_str().ok());
                match (email, key) {
                    (Some(_), Some(k)) if k == self.token => None,
                    (None, _) => Some(cloudflare_error(StatusCode::BAD_REQUEST, 9106, "Missing X-Auth-Email header")),
                    _ => Some(cloudflare_error(StatusCode::FORBIDDEN, 9103, "Unknown X-Auth-Key or X-Auth-Email")),
                }
            }
            (Dialect::Cloudflare, None) => Some(cloudflare_errors(
                StatusCode::BAD_REQUEST,
                json!([{"code": 9106, "message": "Missing X-Auth-Email header"},
                       {"code": 9107, "message": "Missing X-Auth-Key header"}]),
            )),
            (Dialect::Cloudflare, Some(v)) => match bearer(v) {
                None => Some(cloudflare_errors(
                    StatusCode::BAD_REQUEST,
                    json!([{"code": 6003, "message": "Invalid request headers",
                            "error_chain": [{"code": 6111, "message": "Invalid format for Authorization header"}]}]),
                )),
                Some(t) if t == self.token => None,
                Some(_) => Some(cloudflare_error(StatusCode::UNAUTHORIZED, 1000, "Invalid API Token")),
            },
        }
    }

    /// The router and axum's extractors answer some requests themselves (wrong method: a bare
    /// 405; a path segment that is not UTF-8 or a body over the size limit: plain text); the
    /// real APIs answer every failure in their envelope, which is all an official client
    /// parses. Responses already in JSON pass through untouched.
    async fn envelope_rejection(&self, resp: Response) -> Response {
        let status = resp.status();
        let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/json");
        if !(status.is_client_error() || status.is_server_error()) || is_json {
            return resp;
        }
        // The rejection's text says what was wrong; it never holds a header or a body.
        let text = axum::body::to_bytes(resp.into_body(), 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default();
        let message = if text.is_empty() { status.canonical_reason().unwrap_or("invalid request") } else { &text };
        match (self.dialect, status) {
            (_, StatusCode::NOT_FOUND) => not_found(self.dialect),
            (Dialect::Hetzner, StatusCode::METHOD_NOT_ALLOWED) => {
                hetzner_error(status, "method_not_allowed", "method not allowed", Value::Null)
            }
            (Dialect::Hetzner, StatusCode::BAD_REQUEST) => hetzner_error(status, "json_error", message, Value::Null),
            (Dialect::Hetzner, _) => hetzner_error(status, "invalid_input", message, Value::Null),
            (Dialect::Cloudflare, StatusCode::METHOD_NOT_ALLOWED) => {
                cloudflare_error(status, 10405, "Method not allowed")
            }
            (Dialect::Cloudflare, _) => cloudflare_error(status, 10001, message),
        }
    }

    fn rate_limited_response(&self, bucket: &ServerBucket) -> Response {
        let mut resp = match self.dialect {
            Dialect::Hetzner => hetzner_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "limit of requests per hour reached",
                Value::Null,
            ),
            Dialect::Cloudflare => cloudflare_error(
                StatusCode::TOO_MANY_REQUESTS,
                971,
                &format!(
                    "More than {} requests per {} seconds reached. Please wait and consider throttling your request speed",
                    bucket.budget.capacity,
                    bucket.budget.window_secs()
                ),
            ),
        };
        // Cloudflare documents `Retry-After` on 429; for Hetzner it is unverified and the
        // official clients ignore it, so only `RateLimit-Reset` tells when the budget is back.
        if self.dialect == Dialect::Cloudflare
            && let Ok(v) = HeaderValue::from_str(&bucket.secs_to_next().to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }

    fn rate_headers(&self, bucket: &ServerBucket, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        match self.dialect {
            Dialect::Hetzner => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                put("ratelimit-limit", bucket.budget.capacity.to_string());
                put("ratelimit-remaining", bucket.remaining().to_string());
                put("ratelimit-reset", (now + bucket.secs_to_full()).to_string());
            }
            Dialect::Cloudflare => {
                put("ratelimit", format!("\"default\";r={};t={}", bucket.remaining(), bucket.secs_to_full()));
                put(
                    "ratelimit-policy",
                    format!("\"burst\";q={};w={}", bucket.budget.capacity, bucket.budget.window_secs()),
                );
            }
        }
    }

    fn injected_response(&self, error: InjectedError) -> Response {
        match self.dialect {
            Dialect::Hetzner => hetzner_error(error.status(), error.hetzner_code(), "injected fault", Value::Null),
            Dialect::Cloudflare => {
                cloudflare_error(error.status(), 10000 + u32::from(error.status().as_u16()), "injected fault")
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. An empty token is no token: a
/// simulator started with an empty `--token` must still refuse a bare `Bearer `.
fn bearer(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty())
}

/// Hetzner's error envelope: `{"error": {"code", "message", "details"}}`.
pub fn hetzner_error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    json_response(status, &json!({"error": {"code": code, "message": message, "details": details}}))
}

/// Cloudflare's failure envelope with one error.
pub fn cloudflare_error(status: StatusCode, code: u32, message: &str) -> Response {
    cloudflare_errors(status, json!([{"code": code, "message": message}]))
}

/// Cloudflare's failure envelope: `success: false, result: null`, `messages` always empty.
pub fn cloudflare_errors(status: StatusCode, errors: Value) -> Response {
    json_response(status, &json!({"success": false, "errors": errors, "messages": [], "result": null}))
}

/// A JSON response with `Content-Type` exactly `application/json` (cloudflared only reads
/// error bodies with that exact value).
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Bodies larger than this are logged as their size only (Hetzner's `user_data` alone may be
/// 32 KiB).
const LOGGED_BODY_LIMIT: u64 = 256 * 1024;

/// The middleware every simulator request passes (never the control API): latency, auth,
/// budget, faults, log. It runs after routing, so it knows the route pattern.
async fn gate(State(control): State<Arc<SimControl>>, req: Request, next: Next) -> Response {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let (req, body) = logged_body(req).await;
    let latency = control.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (response, injected) = handle_gated(&control, req, next, &method, route.as_deref(), &path).await;
    let status = response.status().as_u16();
    control.record(RequestRecord { seq: 0, method, path, query, route, status, injected, at, body });
    response
}

/// Reads the body of a write (POST, PUT, PATCH) for the log, redacted, and hands the request
/// on unchanged. Bodies of unknown or excessive length stay unread: the handler's own limits
/// and errors must not change because the log looked.
async fn logged_body(req: Request) -> (Request, Option<Value>) {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return (req, None);
    }
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match length {
        Some(0) | None => (req, None),
        Some(n) if n > LOGGED_BODY_LIMIT => (req, Some(json!(format!("<{n} bytes, not logged>")))),
        Some(n) => {
            let (parts, body) = req.into_parts();
            match axum::body::to_bytes(body, n as usize).await {
                Ok(bytes) => {
                    let logged = match serde_json::from_slice::<Value>(&bytes) {
                        Ok(v) => redact_body(v),
                        // Not JSON: it could be anything, secrets included.
                        Err(_) => json!(format!("<{} bytes, not JSON>", bytes.len())),
                    };
                    (Request::from_parts(parts, Body::from(bytes)), Some(logged))
                }
                // The client went away mid-body: the handler sees an empty body and the
                // client never reads the answer anyway.
                Err(_) => (Request::from_parts(parts, Body::empty()), None),
            }
        }
    }
}

/// What replaces a secret in a logged body.
const REDACTED: &str = "<redacted>";

/// Whether a JSON key names a secret wherever it appears (`tunnel_secret`, `token`,
/// `root_password`, `api_key`...).
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "token", "password", "passwd", "api_key", "apikey", "authorization", "credential", "private_key"]
        .iter()
        .any(|s| key.contains(s))
}

/// A request body as the request log keeps it: every value under a secret-looking key
/// replaced, `user_data` (cloud-init, which may carry a tunnel token) reduced to its size, and
/// token-like strings (base64 JSON such as cloudflared tokens and JWTs) cut out of every other
/// string. The one redaction function of the simulators.
pub fn redact_body(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k == "user_data" {
                        match v {
                            Value::String(s) => {
                                json!(format!("<{} bytes, read it at /_sim/servers/{{id}}/user_data>", s.len()))
                            }
                            Value::Null => Value::Null,
                            _ => json!(REDACTED),
                        }
                    } else if secret_key(&k) && !v.is_null() {
                        json!(REDACTED)
                    } else {
                        redact_body(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact_body).collect()),
        Value::String(s) => Value::String(redact_tokens(&s)),
        other => other,
    }
}

/// The shortest base64 run taken for a token: `{"a":"x"}` is already 12 characters.
const MIN_TOKEN_LEN: usize = 16;

/// Runs of base64 (standard or URL-safe) characters that start like base64 of a JSON object
/// (`eyJ` = `{"`): cloudflared tunnel tokens and JWTs look like this. Returned as byte ranges
/// of `text`.
pub fn token_like_runs(text: &str) -> Vec<std::ops::Range<usize>> {
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'.');
    let bytes = text.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_b64(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_b64(bytes[i]) {
            i += 1;
        }
        // A token starts at a non-base64 boundary, so `xeyJ...` is not mistaken for one, or
        // right after the `=` of an assignment (`TUNNEL_TOKEN=eyJ...` in an environment file).
        let begins =
            (start..i).find(|&p| text[p..i].starts_with("eyJ") && (p == start || (bytes[p - 1] == b'=' && p + 1 < i)));
        if let Some(p) = begins.filter(|&p| i - p >= MIN_TOKEN_LEN) {
            runs.push(p..i);
        }
    }
    runs
}

fn redact_tokens(text: &str) -> String {
    let runs = token_like_runs(text);
    if runs.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for run in runs {
        out.push_str(&text[last..run.start]);
        out.push_str(REDACTED);
        last = run.end;
    }
    out.push_str(&text[last..]);
    out
}

async fn handle_gated(
    control: &SimControl,
    req: Request,
    next: Next,
    method: &Method,
    route: Option<&str>,
    path: &str,
) -> (Response, bool) {
    if let Some(resp) = control.auth_failure(req.headers()) {
        return (resp, false);
    }
    // Every authenticated request counts against the budget, failed ones included, as on
    // both real APIs.
    let allowed = lock(&control.bucket).take(Instant::now());
    let storm = control.take_storm();
    if !allowed || storm {
        let bucket = lock(&control.bucket);
        let mut resp = control.rate_limited_response(&bucket);
        control.rate_headers(&bucket, resp.headers_mut());
        return (resp, storm);
    }
    let fault = control.roll_fault(method, route, path);
    let (mut resp, injected) = match fault {
        Some((error, true)) => {
            // The change happens, the answer is lost.
            let _ = next.run(req).await;
            (control.injected_response(error), true)
        }
        Some((error, false)) => (control.injected_response(error), true),
        None => (control.envelope_rejection(next.run(req).await).await, false),
    };
    let bucket = lock(&control.bucket);
    control.rate_headers(&bucket, resp.headers_mut());
    (resp, injected)
}

/// A simulator serving on a local socket. Dropping it does not stop the server: call
/// [`RunningSim::shutdown`] (tests) or let the process end (CLI).
pub struct RunningSim {
    /// Base URL clients are pointed at, e.g. `http://127.0.0.1:4000/v1`.
    pub base_url: String,
    pub addr: SocketAddr,
    control: Arc<SimControl>,
    state: Arc<dyn Any + Send + Sync>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningSim {
    pub fn control(&self) -> &SimControl {
        &self.control
    }

    /// A second handle on the same simulator, for a task that watches or drives it (the
    /// sandbox's cloudflared): it sees the same state; its `shutdown` and `wait` do nothing.
    pub fn handle(&self) -> RunningSim {
        RunningSim {
            base_url: self.base_url.clone(),
            addr: self.addr,
            control: Arc::clone(&self.control),
            state: Arc::clone(&self.state),
            shutdown: None,
            task: None,
        }
    }

    /// Base URL of the control API (`http://ADDR/_sim`).
    pub fn control_url(&self) -> String {
        format!("http://{}{}", self.addr, control::PREFIX)
    }

    pub fn set_faults(&self, plan: FaultPlan) {
        self.control.set_faults(plan);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.control.requests()
    }

    /// The provider state, for the provider module's test hooks (downcast there).
    pub(crate) fn state<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        Arc::clone(&self.state).downcast::<T>().ok()
    }

    /// Stops accepting requests and waits for the server task to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// Serves until the server task ends (used by the CLI, which ends on Ctrl-C).
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

/// Everything a provider module hands over to be served.
pub(crate) struct SimParts {
    pub dialect: Dialect,
    pub token: String,
    pub budget: RateBudget,
    /// e.g. `/v1`; the base URL is `http://ADDR{base_path}`.
    pub base_path: &'static str,
    pub router: Router,
    pub state: Arc<dyn Any + Send + Sync>,
}

/// Serves `parts.router` under its base path behind [`gate`], and the control API under
/// [`control::PREFIX`] beside it (never behind the gate: not logged, counted, limited nor
/// faulted).
pub(crate) async fn serve(parts: SimParts, listener: TcpListener) -> std::io::Result<RunningSim> {
    let addr = listener.local_addr()?;
    let control = Arc::new(SimControl::new(parts.dialect, parts.token, parts.budget, parts.base_path));
    let dialect = parts.dialect;
    let gated = middleware::from_fn_with_state(Arc::clone(&control), gate);
    // Paths no route knows pass the same gate (auth, budget, log) as the real APIs' 404s.
    let unknown = Router::new().fallback(move || async move { not_found(dialect) }).layer(gated.clone());
    let app = Router::new()
        .nest(parts.base_path, parts.router)
        // After routing, so the gate knows the matched pattern (`/v1/servers/{id}`).
        .route_layer(gated)
        .nest(control::PREFIX, control::router(Arc::clone(&control), dialect, Arc::clone(&parts.state)))
        .fallback_service(unknown);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningSim {
        base_url: format!("http://{addr}{}", parts.base_path),
        addr,
        control,
        state: parts.state,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// The answer for a path no route knows.
pub fn not_found(dialect: Dialect) -> Response {
    match dialect {
        Dialect::Hetzner => hetzner_error(StatusCode::NOT_FOUND, "not_found", "not found", Value::Null),
        Dialect::Cloudflare => cloudflare_error(StatusCode::NOT_FOUND, 7003, "Could not route to the requested path"),
    }
}

/// Answers a request whose body is not valid JSON (or not the expected shape).
pub fn bad_json(dialect: Dialect, why: &str) -> Response {
    match dialect {
        Dialect::Hetzner => hetzner_error(StatusCode::BAD_REQUEST, "json_error", why, Value::Null),
        Dialect::Cloudflare => cloudflare_error(StatusCode::BAD_REQUEST, 9207, why),
    }
}

/// Current time as RFC 3339 with a `+00:00` offset, as both APIs print it.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn logged_bodies_keep_no_secret() {
        let token = "eyJhIjoiYWNjIiwidCI6InR1bm5lbCIsInMiOiJjMlZqY21WMCJ9";
        let body = json!({
            "name": "web-1",
            "tunnel_secret": "c2VjcmV0c2VjcmV0",
            "user_data": format!("#cloud-config\nruncmd: [cloudflared service install {token}]"),
            "nested": [{"api_token": "t0k", "root_password": "pw", "public_key": "ssh-ed25519 AAAA"}],
            "comment": format!("token {token} inside"),
            "none": null,
        });
        let logged = super::redact_body(body).to_string();
        for secret in ["c2VjcmV0c2VjcmV0", token, "t0k", "\"pw\"", "cloud-config"] {
            assert!(!logged.contains(secret), "{secret} in {logged}");
        }
        for kept in ["web-1", "ssh-ed25519 AAAA", "token <redacted> inside", "\"none\":null"] {
            assert!(logged.contains(kept), "{kept} missing in {logged}");
        }
    }

    #[test]
    fn token_runs_start_at_a_boundary() {
        assert_eq!(super::token_like_runs("x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.c2ln y"), vec![2..40]);
        assert!(super::token_like_runs("xeyJhbGciOiJIUzI1NiJ9").is_empty(), "not at a boundary");
        assert!(super::token_like_runs("eyJhYg").is_empty(), "too short to be a token");
        let env = "TUNNEL_TOKEN=eyJhIjoiYWNjIiwidCI6InR1bm5lbCJ9";
        assert_eq!(super::token_like_runs(env), vec![13..env.len()], "after an assignment's =");
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(super::bearer("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer("Bearer  abc "), Some("abc"));
        assert_eq!(super::bearer("Bearer "), None, "an empty token authenticates nobody");
        assert_eq!(super::bearer("Basic abc"), None);
    }
}
