//! Reading a Hetzner API request: query parameters, ids, JSON bodies and their common
//! fields, answered with Hetzner's own validation errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::envelope::{ApiError, Reply};
use super::labels::validate_labels;
use super::state::HzState;
use crate::http::json_response;

/// The state every route extracts.
pub(super) type St = State<Arc<HzState>>;
/// The query string as pairs, repeated keys kept.
pub(super) type Q = Query<Vec<(String, String)>>;

pub(super) fn q_all<'a>(q: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    q.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

pub(super) fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| ApiError::not_found(what))
}

pub(super) fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::json_error("request body must be a JSON object")),
        Err(e) => Err(ApiError::json_error(&format!("invalid JSON: {e}"))),
    }
}

pub(super) fn labels_field(
    body: &serde_json::Map<String, Value>,
) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    match body.get("labels") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut labels = BTreeMap::new();
            for (k, v) in m {
                let v = v.as_str().ok_or_else(|| ApiError::invalid_input("labels", "label values must be strings"))?;
                labels.insert(k.clone(), v.to_owned());
            }
            validate_labels(&labels).map_err(|e| ApiError::invalid_input("labels", e))?;
            Ok(Some(labels))
        }
        Some(_) => Err(ApiError::invalid_input("labels", "labels must be an object")),
    }
}

pub(super) fn string_field<'a>(
    body: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_input(key, "must be a string")),
    }
}

/// RFC 1123 hostname, as Hetzner requires for server names.
pub(super) fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

pub(super) fn created(status: StatusCode, body: Value) -> Reply {
    Ok(json_response(status, &body))
}
