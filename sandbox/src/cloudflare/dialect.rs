//! How the simulated Cloudflare API answers where the shared plumbing decides: Bearer or
//! legacy key auth, its envelope for 404s, rejections, 429s and injected faults, its
//! `ratelimit` headers, and the whole window a spent budget blocks.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::envelope::{cloudflare_error, cloudflare_errors};
use crate::http::{Dialect, InjectedError, RateBucket, bearer, set_header};

/// The Cloudflare API's dialect.
pub struct CloudflareDialect;

impl Dialect for CloudflareDialect {
    fn auth_failure(&self, token: &str, headers: &HeaderMap) -> Option<Response> {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match auth {
            // Legacy global-key auth: the simulator's token doubles as the key.
            None if headers.contains_key("x-auth-key") => {
                let key = headers.get("x-auth-key").and_then(|v| v.to_str().ok());
                let email = headers.get("x-auth-email").and_then(|v| v.to_str().ok());
                match (email, key) {
                    (Some(_), Some(k)) if k == token => None,
                    (None, _) => Some(cloudflare_error(StatusCode::BAD_REQUEST, 9106, "Missing X-Auth-Email header")),
                    _ => Some(cloudflare_error(StatusCode::FORBIDDEN, 9103, "Unknown X-Auth-Key or X-Auth-Email")),
                }
            }
            None => Some(cloudflare_errors(
                StatusCode::BAD_REQUEST,
                json!([{"code": 9106, "message": "Missing X-Auth-Email header"},
                       {"code": 9107, "message": "Missing X-Auth-Key header"}]),
            )),
            Some(v) => match bearer(v) {
                None => Some(cloudflare_errors(
                    StatusCode::BAD_REQUEST,
                    json!([{"code": 6003, "message": "Invalid request headers",
                            "error_chain": [{"code": 6111, "message": "Invalid format for Authorization header"}]}]),
                )),
                Some(t) if t == token => None,
                Some(_) => Some(cloudflare_error(StatusCode::UNAUTHORIZED, 1000, "Invalid API Token")),
            },
        }
    }

    fn not_found(&self) -> Response {
        cloudflare_error(StatusCode::NOT_FOUND, 7003, "Could not route to the requested path")
    }

    fn rejection(&self, status: StatusCode, message: &str) -> Response {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => cloudflare_error(status, 10405, "Method not allowed"),
            _ => cloudflare_error(status, 10001, message),
        }
    }

    /// Cloudflare documents `Retry-After` on 429.
    fn rate_limited(&self, bucket: &RateBucket) -> Response {
        let budget = bucket.budget();
        let mut resp = cloudflare_error(
            StatusCode::TOO_MANY_REQUESTS,
            971,
            &format!(
                "More than {} requests per {} seconds reached. Please wait and consider throttling your request speed",
                budget.capacity,
                budget.window_secs()
            ),
        );
        set_header(resp.headers_mut(), "retry-after", &bucket.secs_to_next().to_string());
        resp
    }

    fn rate_headers(&self, bucket: &RateBucket, headers: &mut HeaderMap) {
        let budget = bucket.budget();
        set_header(headers, "ratelimit", &format!("\"default\";r={};t={}", bucket.remaining(), bucket.secs_to_full()));
        set_header(headers, "ratelimit-policy", &format!("\"burst\";q={};w={}", budget.capacity, budget.window_secs()));
    }

    fn injected(&self, error: InjectedError) -> Response {
        cloudflare_error(error.status(), 10000 + u32::from(error.status().as_u16()), "injected fault")
    }

    fn spent_budget_blocks_a_window(&self) -> bool {
        true
    }
}
