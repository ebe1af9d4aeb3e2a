//! The `x-kubernetes-validations` half of admission: kube-cel evaluates the rules, this module
//! turns its errors into Kubernetes causes and ratchets rules that do not look at `oldSelf`.

use kube_cel::{ErrorKind, RootContext};
use serde_json::Value;

use super::cause::{Cause, CauseReason};

/// One path step of a kube-cel field path such as `spec.inbound[0].port`.
enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Step::Field(name));
        }
        while let Some(end) = rest.find(']') {
            let inner = &rest[1..end];
            match inner.parse() {
                Ok(i) => out.push(Step::Index(i)),
                Err(_) => out.push(Step::Field(inner)),
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

fn value_at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    steps(path).into_iter().try_fold(value, |v, step| match step {
        Step::Field(f) => v.get(f),
        Step::Index(i) => v.get(i),
    })
}

/// The schema `type` of the node a field path points to, as Kubernetes (up to 1.34) quotes it
/// in `Invalid value: "<type>": <message>`.
fn schema_type_at(schema: &Value, path: &str) -> String {
    let node = steps(path).into_iter().try_fold(schema, |s, step| match step {
        Step::Field(f) => s
            .get("properties")
            .and_then(|p| p.get(f))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object())),
        Step::Index(_) => s.get("items"),
    });
    node.and_then(|n| n.get("type")).and_then(Value::as_str).unwrap_or("object").to_owned()
}

/// One served version of a CRD: its schema and its rules, compiled once.
pub(super) struct VersionSchema {
    pub(super) schema: Value,
    pub(super) compiled: kube_cel::CompiledSchema,
}

/// The causes the rules of `vs` find in `object` (an update of `old`), for a CRD of `group`
/// and `kind`, evaluated by `evaluator`.
pub(super) fn check(
    evaluator: &kube_cel::Validator,
    group: &str,
    kind: &str,
    vs: &VersionSchema,
    object: &Value,
    old: Option<&Value>,
) -> Vec<Cause> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let root = RootContext { api_version, api_group: group.to_owned(), kind: kind.to_owned() };
    let Err(errors) = evaluator.validate_compiled_with_context(&vs.compiled, object, old, Some(&root)) else {
        return Vec::new();
    };
    errors
        .into_vec()
        .into_iter()
        .filter(|e| !ratcheted(e, object, old))
        .map(|e| {
            let reason = CauseReason::from_rule_reason(e.reason.as_deref());
            let message = match (e.kind, reason) {
                (ErrorKind::ValidationFailure, CauseReason::Forbidden) => format!("Forbidden: {}", e.message),
                (ErrorKind::ValidationFailure, CauseReason::Required) => format!("Required value: {}", e.message),
                (ErrorKind::ValidationFailure, CauseReason::Duplicate) => format!("Duplicate value: {}", e.message),
                (ErrorKind::ValidationFailure, _) => {
                    format!("Invalid value: {:?}: {}", schema_type_at(&vs.schema, &e.field_path), e.message)
                }
                (_, _) => format!(
                    "Invalid value: {:?}: rule could not be evaluated: {}",
                    schema_type_at(&vs.schema, &e.field_path),
                    e.message
                ),
            };
            Cause::new(reason, e.field_path.clone(), message)
        })
        .collect()
}

/// A rule without `oldSelf` that fails on a value the update did not change is not enforced,
/// so objects stored under older rules remain updatable (CRD validation ratcheting).
fn ratcheted(error: &kube_cel::ValidationError, object: &Value, old: Option<&Value>) -> bool {
    let Some(old) = old else { return false };
    if error.kind != ErrorKind::ValidationFailure || error.rule.contains("oldSelf") {
        return false;
    }
    match (value_at(object, &error.field_path), value_at(old, &error.field_path)) {
        (Some(new), Some(previous)) => new == previous,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_values_and_schema_types_by_field_path() {
        let obj = json!({"spec": {"inbound": [{"port": "22"}, {"port": "x"}]}});
        assert_eq!(value_at(&obj, "spec.inbound[1].port"), Some(&json!("x")));
        assert_eq!(value_at(&obj, ""), Some(&obj));
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "inbound": {"type": "array", "items": {"type": "object", "properties": {"port": {"type": "string"}}}}}}}});
        assert_eq!(schema_type_at(&schema, "spec.inbound[1].port"), "string");
        assert_eq!(schema_type_at(&schema, "spec.inbound[1]"), "object");
        assert_eq!(schema_type_at(&schema, ""), "object");
    }
}
