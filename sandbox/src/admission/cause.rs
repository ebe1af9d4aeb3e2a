//! Admission failures in the shape of a Kubernetes `StatusCause`, and the message the API server
//! builds from them, so kubectl prints them as it would a real server's.

use serde::Serialize;
use serde_json::Value;

/// The machine-readable reason of a cause (Kubernetes `CauseType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CauseReason {
    /// `FieldValueInvalid`: malformed or rule-breaking value.
    #[serde(rename = "FieldValueInvalid")]
    Invalid,
    /// `FieldValueRequired`: a required field is missing.
    #[serde(rename = "FieldValueRequired")]
    Required,
    /// `FieldValueNotSupported`: a value outside an enum.
    #[serde(rename = "FieldValueNotSupported")]
    NotSupported,
    /// `FieldValueForbidden`: not allowed in the current state.
    #[serde(rename = "FieldValueForbidden")]
    Forbidden,
    /// `FieldValueDuplicate`: a value that must be unique is repeated.
    #[serde(rename = "FieldValueDuplicate")]
    Duplicate,
    /// `FieldValueTypeInvalid`: the value has the wrong JSON type.
    #[serde(rename = "FieldValueTypeInvalid")]
    TypeInvalid,
    /// `FieldValueTooLong`: a string or list is too long.
    #[serde(rename = "FieldValueTooLong")]
    TooLong,
    /// `FieldValueTooMany`: a list has too many items.
    #[serde(rename = "FieldValueTooMany")]
    TooMany,
    /// `FieldValueNotFound`: a reference to something that does not exist.
    #[serde(rename = "FieldValueNotFound")]
    NotFound,
}

impl CauseReason {
    /// Parses the `reason` of an `x-kubernetes-validations` rule; unknown reasons are `Invalid`,
    /// as in the API server.
    pub fn from_rule_reason(reason: Option<&str>) -> Self {
        match reason {
            Some("FieldValueForbidden") => Self::Forbidden,
            Some("FieldValueRequired") => Self::Required,
            Some("FieldValueDuplicate") => Self::Duplicate,
            _ => Self::Invalid,
        }
    }
}

/// One reason to refuse an object: the field it concerns and a message without the field prefix
/// (e.g. field `spec.region`, message `Invalid value: "string": region is immutable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// Machine-readable reason.
    pub reason: CauseReason,
    /// Field path such as `spec.firewall.inbound[0].port`; empty for the object itself.
    pub field: String,
    /// Human-readable message, as Kubernetes renders it after the field path.
    pub message: String,
}

impl Cause {
    /// A cause at `field`.
    pub fn new(reason: CauseReason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason, field: field.into(), message: message.into() }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.field, self.message) }
    }
}

/// The top-level message of a `422 Invalid` Status, e.g.
/// `Agent.crabglamp.com "bot" is invalid: spec.region: Invalid value: "string": region is immutable`.
pub fn invalid_message(kind: &str, group: &str, name: &str, causes: &[Cause]) -> String {
    let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
    let listed = match causes {
        [one] => one.to_string(),
        many => format!("[{}]", many.iter().map(Cause::to_string).collect::<Vec<_>>().join(", ")),
    };
    format!("{qualified} \"{name}\" is invalid: {listed}")
}

/// Renders a value the way Kubernetes field errors quote it: strings quoted, scalars bare.
pub(crate) fn render_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

/// The JSON type name Kubernetes uses in type errors.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
