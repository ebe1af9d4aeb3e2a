//! The control API both simulators serve under `/_sim/` on their own port (no real API uses
//! that prefix): what the in-process tests do through `RunningSim` and the provider hooks, for
//! a process elsewhere. This module owns the generic half (request log, counters, reset, fault
//! plan, rate budget) and the auth in front of all of it; each simulator hands over its own
//! routes (`SimParts::control`). Documented in `sandbox/CONTROL-API.md`.
//!
//! Control requests are never logged, counted, rate limited nor faulted, and no answer here
//! ever carries a credential (the request log is redacted before it is stored).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::budget::RateBudget;
use super::faults::{FaultPlan, FaultRule, InjectedError};
use super::log::RequestRecord;
use super::sim_control::SimControl;
use super::wire::json_response;

/// Where the control API lives on each simulator's port.
pub const PREFIX: &str = "/_sim";

/// A refused control request: a status and a message, as `{"error": message}` (the same
/// shape on both simulators, unlike their API envelopes).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub status: StatusCode,
    pub message: String,
}

impl ControlError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ControlError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ControlError { status: StatusCode::NOT_FOUND, message: message.into() }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        json_response(self.status, &json!({"error": self.message}))
    }
}

/// What a control handler answers.
pub type ControlReply = Result<Response, ControlError>;

/// 200 with a JSON body.
pub fn ok(body: Value) -> ControlReply {
    Ok(json_response(StatusCode::OK, &body))
}

/// The JSON body of a control request; an empty body reads as `{}`.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ControlError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    // serde's message names the field and the problem, never a value it could not parse.
    serde_json::from_slice(body).map_err(|e| ControlError::bad_request(format!("invalid body: {e}")))
}

/// One fault rule as the control API and `--fault-file` write it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultRuleSpec {
    /// `GET`, `POST`...; absent = any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A route pattern (`/v1/servers/{id}`; the base path may be left out); absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// A substring of the concrete path; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    /// Probability 0..1 that a matching request fails.
    pub rate: f64,
    /// `server_error`, `bad_gateway`, `unavailable`, `timeout`, `conflict`, `placement_error`,
    /// `resource_unavailable` or `any_5xx` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Apply the change, then lose the answer (writes only).
    #[serde(default)]
    pub lose_answer: bool,
}

/// A whole fault plan as the control API and `--fault-file` write it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultPlanSpec {
    #[serde(default)]
    pub rules: Vec<FaultRuleSpec>,
    /// Added to every API request, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// The next this-many API requests are answered 429.
    #[serde(default)]
    pub rate_limit_storm: u32,
    /// Seed of the fault dice.
    #[serde(default)]
    pub seed: u64,
    /// Every injected failure of a write happens after the write was applied.
    #[serde(default)]
    pub fail_after_apply: bool,
}

impl TryFrom<FaultRuleSpec> for FaultRule {
    type Error = ControlError;

    fn try_from(spec: FaultRuleSpec) -> Result<Self, ControlError> {
        if !(0.0..=1.0).contains(&spec.rate) {
            return Err(ControlError::bad_request(format!("rate must be between 0 and 1, not {}", spec.rate)));
        }
        let method = match spec.method.as_deref() {
            None | Some("*") => None,
            Some(m) => Some(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| ControlError::bad_request(format!("unknown method {m:?}")))?,
            ),
        };
        let error = match spec.error.as_deref() {
            None => InjectedError::Any5xx,
            Some(name) => InjectedError::from_name(name).ok_or_else(|| {
                ControlError::bad_request(format!(
                    "unknown error {name:?} (server_error, bad_gateway, unavailable, timeout, conflict, placement_error, resource_unavailable, any_5xx)"
                ))
            })?,
        };
        let route = spec.route.filter(|r| r != "*");
        if let Some(r) = &route
            && !r.starts_with('/')
        {
            return Err(ControlError::bad_request(format!("route {r:?} must start with /")));
        }
        Ok(FaultRule {
            method,
            route,
            path_contains: spec.path_contains.unwrap_or_default(),
            rate: spec.rate,
            error,
            lose_answer: spec.lose_answer,
        })
    }
}

impl From<&FaultRule> for FaultRuleSpec {
    fn from(rule: &FaultRule) -> Self {
        FaultRuleSpec {
            method: rule.method.as_ref().map(Method::to_string),
            route: rule.route.clone(),
            path_contains: Some(rule.path_contains.clone()).filter(|p| !p.is_empty()),
            rate: rule.rate,
            error: Some(rule.error.name().to_owned()),
            lose_answer: rule.lose_answer,
        }
    }
}

impl TryFrom<FaultPlanSpec> for FaultPlan {
    type Error = ControlError;

    fn try_from(spec: FaultPlanSpec) -> Result<Self, ControlError> {
        Ok(FaultPlan {
            rules: spec.rules.into_iter().map(FaultRule::try_from).collect::<Result<_, _>>()?,
            latency: Duration::from_millis(spec.latency_ms),
            rate_limit_storm: spec.rate_limit_storm,
            seed: spec.seed,
            fail_after_apply: spec.fail_after_apply,
        })
    }
}

impl From<&FaultPlan> for FaultPlanSpec {
    fn from(plan: &FaultPlan) -> Self {
        FaultPlanSpec {
            rules: plan.rules.iter().map(FaultRuleSpec::from).collect(),
            latency_ms: u64::try_from(plan.latency.as_millis()).unwrap_or(u64::MAX),
            rate_limit_storm: plan.rate_limit_storm,
            seed: plan.seed,
            fail_after_apply: plan.fail_after_apply,
        }
    }
}

impl std::str::FromStr for FaultRuleSpec {
    type Err = ControlError;

    /// The `--fault` flag: `METHOD ROUTE RATE [ERROR] [lost]`, `*` for any method or route,
    /// e.g. `POST /v1/servers 0.5` or `* * 0.1 unavailable`.
    fn from_str(text: &str) -> Result<Self, ControlError> {
        let usage = || {
            ControlError::bad_request(format!(
                "fault rule {text:?}: expected `METHOD ROUTE RATE [ERROR] [lost]`, e.g. `POST /v1/servers 0.5`"
            ))
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let [method, route, rate, rest @ ..] = words.as_slice() else { return Err(usage()) };
        let rate = rate.parse::<f64>().map_err(|_| usage())?;
        let mut spec = FaultRuleSpec {
            method: Some((*method).to_owned()),
            route: Some((*route).to_owned()),
            rate,
            ..FaultRuleSpec::default()
        };
        for word in rest {
            match *word {
                "lost" => spec.lose_answer = true,
                e if spec.error.is_none() => spec.error = Some(e.to_owned()),
                _ => return Err(usage()),
            }
        }
        // Validates method, route, rate and error now, not at the first request.
        FaultRule::try_from(spec.clone())?;
        Ok(spec)
    }
}

fn record_json(r: &RequestRecord) -> Value {
    json!({
        "seq": r.seq,
        "method": r.method.as_str(),
        "path": r.path,
        "query": r.query,
        "route": r.route,
        "status": r.status,
        "injected": r.injected,
        "at": r.at,
        "body": r.body,
    })
}

fn budget_json(c: &SimControl) -> Value {
    let budget = c.rate_budget();
    json!({
        "capacity": budget.capacity,
        "refill_per_sec": budget.refill_per_sec,
        "window_secs": budget.window().as_secs_f64(),
        "remaining": c.budget_remaining(),
    })
}

type Ctl = State<Arc<SimControl>>;

async fn requests(State(c): Ctl, Query(q): Query<Vec<(String, String)>>) -> ControlReply {
    let number = |key: &str, default: u64| -> Result<u64, ControlError> {
        q.iter().find(|(k, _)| k == key).map_or(Ok(default), |(_, v)| {
            v.parse().map_err(|_| ControlError::bad_request(format!("{key} must be a number")))
        })
    };
    let since = number("since", 0)?;
    let limit = usize::try_from(number("limit", 1000)?).unwrap_or(usize::MAX);
    let records: Vec<Value> = c.requests_since(since, limit).iter().map(record_json).collect();
    ok(json!({"requests": records}))
}

async fn counters(State(c): Ctl) -> ControlReply {
    let by_status: serde_json::Map<String, Value> =
        c.status_counts().into_iter().map(|(status, n)| (status.to_string(), json!(n))).collect();
    let by_route: Vec<Value> = c
        .route_counts()
        .into_iter()
        .map(|r| json!({"method": r.method, "route": r.route, "status": r.status, "count": r.count}))
        .collect();
    ok(json!({"total": c.total_requests(), "by_status": by_status, "by_route": by_route}))
}

async fn reset(State(c): Ctl) -> ControlReply {
    c.reset();
    ok(json!({}))
}

async fn get_faults(State(c): Ctl) -> ControlReply {
    ok(json!(FaultPlanSpec::from(&c.faults())))
}

async fn put_faults(State(c): Ctl, body: Bytes) -> ControlReply {
    let plan = FaultPlan::try_from(parse_body::<FaultPlanSpec>(&body)?)?;
    c.set_faults(plan);
    ok(json!(FaultPlanSpec::from(&c.faults())))
}

async fn clear_faults(State(c): Ctl) -> ControlReply {
    c.set_faults(FaultPlan::default());
    ok(json!(FaultPlanSpec::from(&c.faults())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Storm {
    requests: u32,
}

async fn storm(State(c): Ctl, body: Bytes) -> ControlReply {
    let storm: Storm = parse_body(&body)?;
    c.rate_limit_storm(storm.requests);
    ok(json!({"rate_limit_storm": storm.requests}))
}

async fn get_rate_limit(State(c): Ctl) -> ControlReply {
    ok(budget_json(&c))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetSpec {
    capacity: u32,
    refill_per_sec: f64,
}

async fn put_rate_limit(State(c): Ctl, body: Bytes) -> ControlReply {
    let spec: BudgetSpec = parse_body(&body)?;
    if !spec.refill_per_sec.is_finite() || spec.refill_per_sec < 0.0 {
        return Err(ControlError::bad_request("refill_per_sec must be a non-negative number"));
    }
    c.set_rate_budget(RateBudget { capacity: spec.capacity, refill_per_sec: spec.refill_per_sec });
    ok(budget_json(&c))
}

/// The simulator's own token, as on its API (Bearer only: the control API has no legacy
/// Cloudflare key auth). The answer never says what was expected.
async fn authenticate(State(c): Ctl, req: Request, next: Next) -> Response {
    if c.control_authorized(req.headers()) {
        next.run(req).await
    } else {
        ControlError {
            status: StatusCode::UNAUTHORIZED,
            message: "Authorization: Bearer <simulator token> required".into(),
        }
        .into_response()
    }
}

/// The whole control API of one simulator: the generic routes here, the simulator's own
/// (`own`, relative to [`PREFIX`]) beside them, every one behind the token.
pub(super) fn router(control: Arc<SimControl>, own: Router) -> Router {
    let generic = Router::new()
        .route("/requests", get(requests))
        .route("/counters", get(counters))
        .route("/reset", post(reset))
        .route("/faults", get(get_faults).put(put_faults).delete(clear_faults))
        .route("/rate_limit", get(get_rate_limit).put(put_rate_limit))
        .route("/rate_limit/storm", post(storm))
        .with_state(Arc::clone(&control));
    generic
        .merge(own)
        .fallback(|| async { ControlError::not_found("no such control endpoint (see sandbox/CONTROL-API.md)") })
        .layer(middleware::from_fn_with_state(control, authenticate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_flag_syntax() {
        let spec: FaultRuleSpec = "POST /v1/servers 0.5".parse().expect("parses");
        let rule = FaultRule::try_from(spec).expect("valid");
        assert_eq!(rule.method, Some(Method::POST));
        assert_eq!(rule.route.as_deref(), Some("/v1/servers"));
        assert_eq!(rule.error, InjectedError::Any5xx);
        let rule =
            FaultRule::try_from("* * 0.1 timeout lost".parse::<FaultRuleSpec>().expect("parses")).expect("valid");
        assert_eq!((rule.method, rule.route, rule.error, rule.lose_answer), (None, None, InjectedError::Timeout, true));
        assert!("POST /v1/servers".parse::<FaultRuleSpec>().is_err(), "rate missing");
        assert!("POST /v1/servers 1.5".parse::<FaultRuleSpec>().is_err(), "rate above 1");
        assert!("POST /v1/servers 0.5 teapot".parse::<FaultRuleSpec>().is_err(), "unknown error");
        assert!("POST servers 0.5".parse::<FaultRuleSpec>().is_err(), "route without /");
    }

    #[test]
    fn plans_round_trip_through_their_spec() {
        let spec = FaultPlanSpec {
            rules: vec!["GET /v1/servers/{id} 0.25 conflict".parse().expect("parses")],
            latency_ms: 20,
            rate_limit_storm: 3,
            seed: 7,
            fail_after_apply: true,
        };
        let plan = FaultPlan::try_from(spec.clone()).expect("valid");
        assert_eq!(FaultPlanSpec::from(&plan), spec);
    }
}
