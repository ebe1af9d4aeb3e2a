//! The gate every simulator API request passes (never the control API): latency, auth,
//! budget, faults and the request log, in that order, each answered in the simulator's
//! dialect. It never logs a header and only redacted bodies.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::dialect::Dialect;
use super::log::RequestRecord;
use super::redact::redact_body;
use super::sim_control::SimControl;

/// Bodies larger than this are logged as their size only (Hetzner's `user_data` alone may be
/// 32 KiB).
const LOGGED_BODY_LIMIT: u64 = 256 * 1024;

/// The middleware every simulator request passes (never the control API): latency, auth,
/// budget, faults, log. It runs after routing, so it knows the route pattern.
pub(super) async fn gate(State(control): State<Arc<SimControl>>, req: Request, next: Next) -> Response {
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
    let dialect = control.dialect();
    let allowed = control.bucket().take(Instant::now());
    let storm = control.take_storm();
    if !allowed || storm {
        let bucket = control.bucket();
        let mut resp = dialect.rate_limited(&bucket);
        dialect.rate_headers(&bucket, resp.headers_mut());
        return (resp, storm);
    }
    let fault = control.roll_fault(method, route, path);
    let (mut resp, injected) = match fault {
        Some((error, true)) => {
            // The change happens, the answer is lost.
            let _ = next.run(req).await;
            (dialect.injected(error), true)
        }
        Some((error, false)) => (dialect.injected(error), true),
        None => (envelope_rejection(dialect, next.run(req).await).await, false),
    };
    dialect.rate_headers(&control.bucket(), resp.headers_mut());
    (resp, injected)
}

/// The router and axum's extractors answer some requests themselves (wrong method: a bare
/// 405; a path segment that is not UTF-8 or a body over the size limit: plain text); the
/// real APIs answer every failure in their envelope, which is all an official client
/// parses. Responses already in JSON pass through untouched.
async fn envelope_rejection(dialect: &dyn Dialect, resp: Response) -> Response {
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
    if status == StatusCode::NOT_FOUND { dialect.not_found() } else { dialect.rejection(status, message) }
}
