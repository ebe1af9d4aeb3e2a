//! What a simulator does wrong on purpose: the errors it can inject, the rules that pick the
//! requests they hit, and the plan that holds them. Each dialect words an injected error in
//! its own envelope.

use std::time::Duration;

use axum::http::{Method, StatusCode};

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
    /// The status of the answer, in either API's envelope.
    pub fn status(self) -> StatusCode {
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

    pub(super) fn matches(&self, method: &Method, route: Option<&str>, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.route.as_deref().is_none_or(|r| Some(r) == route)
            && path.contains(&self.path_contains)
    }
}

/// What a simulator does wrong on purpose. Changed at run time through
/// `RunningSim::set_faults` or, from another process, `PUT /_sim/faults`.
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
