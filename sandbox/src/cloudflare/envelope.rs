//! Cloudflare's response envelope and error type for the simulator's handlers, plus the
//! shared query helpers. Success: `{success, errors: [], messages: [], result}`; failure:
//! `{success: false, errors, messages: [], result: null}`. The one place that words one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::http::{json_response, query_param};

pub type Reply = Result<Response, CfError>;

/// Cloudflare's failure envelope with one error.
pub fn cloudflare_error(status: StatusCode, code: u32, message: &str) -> Response {
    cloudflare_errors(status, json!([{"code": code, "message": message}]))
}

/// Cloudflare's failure envelope: `success: false, result: null`, `messages` always empty.
pub fn cloudflare_errors(status: StatusCode, errors: Value) -> Response {
    json_response(status, &json!({"success": false, "errors": errors, "messages": [], "result": null}))
}

/// A Cloudflare failure: status and one `{code, message}`.
#[derive(Debug)]
pub struct CfError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl CfError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        CfError { status, code, message: message.into() }
    }
    pub fn bad_request(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, 10000, "Authentication error")
    }
}

impl IntoResponse for CfError {
    fn into_response(self) -> Response {
        cloudflare_error(self.status, self.code, &self.message)
    }
}

pub fn ok(result: Value) -> Reply {
    Ok(json_response(StatusCode::OK, &json!({"success": true, "errors": [], "messages": [], "result": result})))
}

/// A page of `items`; pages past the end are empty (the Python SDK walks until one is).
pub fn ok_page(items: Vec<Value>, q: &[(String, String)], default_per_page: usize, max_per_page: usize) -> Reply {
    let page = match query_param(q, "page") {
        None => 1,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| CfError::bad_request(1004, "page must be a positive integer"))?,
    };
    let per_page = match query_param(q, "per_page") {
        None => default_per_page,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1 && *p <= max_per_page)
            .ok_or_else(|| CfError::bad_request(1004, format!("per_page must be between 1 and {max_per_page}")))?,
    };
    let total = items.len();
    let start = (page - 1).saturating_mul(per_page).min(total);
    let end = start.saturating_add(per_page).min(total);
    let slice = items[start..end].to_vec();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "success": true, "errors": [], "messages": [],
            "result": slice,
            "result_info": {
                "page": page, "per_page": per_page, "count": end - start,
                "total_count": total, "total_pages": total.div_ceil(per_page),
            },
        }),
    ))
}

pub fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, CfError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CfError::bad_request(9207, "Request body is invalid.")),
        Err(_) => Err(CfError::bad_request(9207, "Request body is invalid.")),
    }
}

/// Cloudflare's timestamp format (RFC 3339, microseconds, `Z`).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
