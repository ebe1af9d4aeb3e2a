//! How the simulated Hetzner API answers where the shared plumbing decides: Bearer auth, its
//! error envelope for 404s, rejections, 429s and injected faults, and its `RateLimit-*`
//! headers.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::envelope::hetzner_error;
use crate::http::{Dialect, InjectedError, RateBucket, bearer, set_header};

/// The Hetzner Cloud API's dialect.
pub struct HetznerDialect;

/// The `error.code` Hetzner answers an injected error with: its name, a random 5xx being
/// Hetzner's generic `server_error`.
fn code(error: InjectedError) -> &'static str {
    match error {
        InjectedError::Any5xx => "server_error",
        named => named.name(),
    }
}

impl Dialect for HetznerDialect {
    fn auth_failure(&self, token: &str, headers: &HeaderMap) -> Option<Response> {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match auth.and_then(bearer) {
            Some(t) if t == token => None,
            _ => Some(hetzner_error(StatusCode::UNAUTHORIZED, "unauthorized", "unable to authenticate", Value::Null)),
        }
    }

    fn not_found(&self) -> Response {
        hetzner_error(StatusCode::NOT_FOUND, "not_found", "not found", Value::Null)
    }

    fn rejection(&self, status: StatusCode, message: &str) -> Response {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                hetzner_error(status, "method_not_allowed", "method not allowed", Value::Null)
            }
            StatusCode::BAD_REQUEST => hetzner_error(status, "json_error", message, Value::Null),
            _ => hetzner_error(status, "invalid_input", message, Value::Null),
        }
    }

    /// No `Retry-After`: unverified for Hetzner and the official clients ignore it, so only
    /// `RateLimit-Reset` tells when the budget is back.
    fn rate_limited(&self, _bucket: &RateBucket) -> Response {
        hetzner_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "limit of requests per hour reached",
            Value::Null,
        )
    }

    fn rate_headers(&self, bucket: &RateBucket, headers: &mut HeaderMap) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        set_header(headers, "ratelimit-limit", &bucket.budget().capacity.to_string());
        set_header(headers, "ratelimit-remaining", &bucket.remaining().to_string());
        set_header(headers, "ratelimit-reset", &(now + bucket.secs_to_full()).to_string());
    }

    fn injected(&self, error: InjectedError) -> Response {
        hetzner_error(error.status(), code(error), "injected fault", Value::Null)
    }
}
