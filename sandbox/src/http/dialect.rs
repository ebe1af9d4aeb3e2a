//! What one simulated API sounds like to its clients: the contract each simulator fulfils so
//! the shared plumbing can answer in that API's own words (its error envelope, its auth
//! failures, its rate-limit headers) without knowing which API it serves.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::budget::RateBucket;
use super::faults::InjectedError;

/// The answers a simulator's API gives where the plumbing, not a route, decides: every one in
/// the real API's envelope, which is all an official client parses.
pub trait Dialect: Send + Sync + 'static {
    /// The answer to a request whose credentials are missing or wrong (`token` is the
    /// simulator's); `None` when they are fine.
    fn auth_failure(&self, token: &str, headers: &HeaderMap) -> Option<Response>;

    /// The answer for a path no route knows.
    fn not_found(&self) -> Response;

    /// A failure the router or an extractor answered itself, in plain text or none (a wrong
    /// method, a path segment that is not UTF-8, a body over the size limit), with its text.
    /// A 404 never comes here ([`Dialect::not_found`] answers it).
    fn rejection(&self, status: StatusCode, message: &str) -> Response;

    /// The 429 for a request the budget (or a storm) refuses.
    fn rate_limited(&self, bucket: &RateBucket) -> Response;

    /// The rate-limit headers every answer behind the budget carries.
    fn rate_headers(&self, bucket: &RateBucket, headers: &mut HeaderMap);

    /// The answer a fault rule gives instead of the route.
    fn injected(&self, error: InjectedError) -> Response;

    /// Whether spending the whole budget blocks every call for a whole window (Cloudflare:
    /// "exceeding the limit blocks all calls for the next five minutes").
    fn spent_budget_blocks_a_window(&self) -> bool {
        false
    }
}
