//! Hetzner's error envelope, `{"error": {"code", "message", "details"}}`, and the error type
//! the routes answer with. The one place that words a Hetzner failure.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::http::json_response;

/// What a Hetzner route answers.
pub type Reply = Result<Response, ApiError>;

/// Hetzner's error envelope: `{"error": {"code", "message", "details"}}`.
pub fn hetzner_error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    json_response(status, &json!({"error": {"code": code, "message": message, "details": details}}))
}

/// A Hetzner error: status, code, message and `details` (null unless the code has some).
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Value::Null }
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    pub fn invalid_input(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_input",
            details: json!({"fields": [{"name": field, "messages": [message.clone()]}]}),
            message: format!("invalid input in field '{field}'"),
        }
    }
    pub fn uniqueness(field: &str) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "uniqueness_error",
            message: format!("{field} is already used"),
            details: json!({"fields": [{"name": field}]}),
        }
    }
    pub fn locked() -> Self {
        Self::new(StatusCode::LOCKED, "locked", "server is locked by a running action")
    }
    pub fn json_error(why: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "json_error", why)
    }
    pub fn code_422(code: &'static str, message: &str) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    /// A project limit: 403 `resource_limit_exceeded` naming the limit in `details.limits`,
    /// as Hetzner's error table documents.
    pub fn limit(name: &str, message: &str) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "resource_limit_exceeded",
            message: message.to_owned(),
            details: json!({"limits": [{"name": name}]}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        hetzner_error(self.status, self.code, &self.message, self.details)
    }
}
