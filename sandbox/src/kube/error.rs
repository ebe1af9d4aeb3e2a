//! Failures of API requests, rendered as the Kubernetes `Status` bodies clients parse.
//!
//! Every error the server returns goes through [`ApiError`]; nothing else may build an error
//! response, so every client sees the same shape (`kind: Status`, `reason`, `code`, `details`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::admission::Cause;

/// A failed request: HTTP code, Kubernetes reason and message, optional details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `reason` of the Status (`NotFound`, `Conflict`...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details` of the Status, if any.
    pub details: Option<Value>,
    /// `metadata` of the Status (a ListMeta: an expired list's fresh `continue` token).
    pub list_meta: Option<Value>,
}

impl ApiError {
    /// A failure without details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, list_meta: None }
    }

    /// Attaches `details`.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Attaches the Status's `metadata`.
    pub fn with_list_meta(mut self, meta: Value) -> Self {
        self.list_meta = Some(meta);
        self
    }

    /// 504 for a resourceVersion the server has not reached after waiting for it
    /// (`storage.NewTooLargeResourceVersionError` of k8s.io/apiserver).
    pub fn too_large_resource_version(asked: u64, current: u64) -> Self {
        Self::new(504, "Timeout", format!("Timeout: Too large resource version: {asked}, current: {current}")).with_details(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for a path that names no resource.
    pub fn unknown_path() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    /// 404 for a missing object; `resource` is the plural, `group` may be empty.
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(resource, group)))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 409 AlreadyExists on create.
    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(resource, group)))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 409 Conflict for a stale resourceVersion or failed precondition.
    pub fn conflict(resource: &str, group: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(resource, group)
            ),
        )
        .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 422 Invalid with one cause per failed check; `kind` is the Kind, as real servers do.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[Cause]) -> Self {
        let causes_json: Vec<Value> =
            causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
        Self::new(422, "Invalid", crate::admission::invalid_message(kind, group, name, causes))
            .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes_json}))
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed() -> Self {
        Self::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    /// 415 for a patch type the resource does not accept.
    pub fn unsupported_media_type(accepted: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: {accepted}"),
        )
    }

    /// The Status object as JSON (also used inside watch ERROR events).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = omit_empty(details);
        }
        if let Some(meta) = &self.list_meta {
            status["metadata"] = meta.clone();
        }
        status
    }
}

/// `details` as Go encodes `StatusDetails`: every field is `omitempty` (no `"group": ""` for
/// the core group, no `"name": ""` for an options error, no empty `causes`), and so are the
/// fields of each cause.
fn omit_empty(details: &Value) -> Value {
    let empty = |v: &Value| v.as_str() == Some("") || v.as_array().is_some_and(Vec::is_empty);
    let mut details = details.clone();
    if let Some(map) = details.as_object_mut() {
        map.retain(|_, v| !empty(v));
        for cause in map.get_mut("causes").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(cause) = cause.as_object_mut() {
                cause.retain(|_, v| !empty(v));
            }
        }
    }
    details
}

/// `agents.crabglamp.com` or `secrets` (core group).
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() { resource.to_owned() } else { format!("{resource}.{group}") }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        super::response::json_response(code, &self.to_status(), &[])
    }
}
