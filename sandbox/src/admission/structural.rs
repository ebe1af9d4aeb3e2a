//! The structural-schema half of admission: pruning unknown fields and checking types, enums,
//! required fields, patterns, bounds and formats, with Kubernetes' wording and field paths.
//!
//! CEL rules are not evaluated here (see `cel.rs`); kube-cel does not do any of this.

use std::collections::HashSet;

use base64::Engine;
use serde_json::{Map, Value};

use super::cause::{Cause, CauseReason, json_type, render_value};

/// The fields of `ObjectMeta`: everything else under `metadata` is pruned, as the API server does.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") }
}

/// Removes every field the schema does not declare (unless the node preserves unknown fields),
/// and explicit `null`s on non-nullable fields (so that defaulting can fill them). Pruned paths
/// are appended to `unknown`.
pub(super) fn prune(schema: &Value, value: &mut Value, path: &str, is_resource_root: bool, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => prune_object(schema, map, path, is_resource_root, unknown),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

fn prune_object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    is_resource_root: bool,
    unknown: &mut Vec<String>,
) {
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = is_resource_root || flag(schema, "x-kubernetes-embedded-resource");
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let field_path = join(path, &key);
        if embedded && (key == "apiVersion" || key == "kind") {
            continue;
        }
        if embedded && key == "metadata" {
            if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                meta.retain(|k, _| {
                    let known = OBJECT_META_FIELDS.contains(&k.as_str());
                    if !known {
                        unknown.push(join(&field_path, k));
                    }
                    known
                });
            }
            continue;
        }
        let child_schema = properties.and_then(|p| p.get(&key)).or(match additional {
            Some(s @ Value::Object(_)) => Some(s),
            _ => None,
        });
        match child_schema {
            Some(child) => {
                let is_null = map.get(&key).is_some_and(Value::is_null);
                if is_null && !flag(child, "nullable") {
                    map.remove(&key);
                } else if let Some(v) = map.get_mut(&key) {
                    prune(child, v, &field_path, false, unknown);
                }
            }
            None if preserve || matches!(additional, Some(Value::Bool(true))) => {}
            None => {
                map.remove(&key);
                unknown.push(field_path);
            }
        }
    }
}

/// Checks `value` against the structural schema. On an update, a subtree equal to the old one
/// is not checked again (ratcheting): an object stored under older rules stays updatable.
pub(super) fn check(schema: &Value, value: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_object_meta(value, &mut causes);
    check_node(schema, value, old, "", &mut causes);
    causes
}

/// [`check`] without the object name (built-in kinds check names by their own rules).
pub(super) fn check_values(schema: &Value, value: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_node(schema, value, old, "", &mut causes);
    causes
}

fn check_object_meta(value: &Value, causes: &mut Vec<Cause>) {
    let Some(name) = value.pointer("/metadata/name").and_then(Value::as_str) else { return };
    if let Some(message) = super::names::name_error(name, false) {
        causes.push(Cause::new(CauseReason::Invalid, "metadata.name", message));
    }
}

fn check_node(schema: &Value, value: &Value, old: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    if old == Some(value) {
        return;
    }
    if value.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            causes.push(type_error(schema, value, path));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        let ok = matches!(value, Value::String(_)) || value.as_i64().is_some() || value.as_u64().is_some();
        if !ok {
            causes.push(Cause::new(
                CauseReason::TypeInvalid,
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type integer-or-string: {:?}",
                    render_value(value),
                    json_type(value)
                ),
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !type_matches(expected, value)
    {
        causes.push(type_error(schema, value, path));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let listed = allowed.iter().map(render_value).collect::<Vec<_>>().join(", ");
        causes.push(Cause::new(
            CauseReason::NotSupported,
            path,
            format!("Unsupported value: {}: supported values: {listed}", render_value(value)),
        ));
    }
    match value {
        Value::String(s) => check_string(schema, s, value, path, causes),
        Value::Number(_) => check_number(schema, value, path, causes),
        Value::Array(items) => check_array(schema, items, value, path, causes),
        Value::Object(map) => check_map(schema, map, old, path, causes),
        _ => {}
    }
    if let Some(all_of) = schema.get("allOf").and_then(Value::as_array) {
        for sub in all_of {
            check_node(sub, value, old, path, causes);
        }
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => {
            value.as_i64().is_some() || value.as_u64().is_some() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

fn type_error(schema: &Value, value: &Value, path: &str) -> Cause {
    let expected = schema.get("type").and_then(Value::as_str).unwrap_or("object");
    Cause::new(
        CauseReason::TypeInvalid,
        path,
        format!(
            "Invalid value: {}: {path} in body must be of type {expected}: {:?}",
            render_value(value),
            json_type(value)
        ),
    )
}

fn invalid(path: &str, value: &Value, detail: String) -> Cause {
    Cause::new(CauseReason::Invalid, path, format!("Invalid value: {}: {path} in body {detail}", render_value(value)))
}

fn check_string(schema: &Value, s: &str, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        causes.push(Cause::new(CauseReason::TooLong, path, format!("Too long: may not be more than {max} bytes")));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        causes.push(invalid(path, value, format!("should be at least {min} chars long")));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => causes.push(invalid(path, value, format!("should match '{pattern}'"))),
            Ok(_) => {}
            Err(_) => causes.push(invalid(path, value, format!("has an unusable pattern '{pattern}'"))),
        }
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str)
        && !format_matches(format, s)
    {
        causes.push(invalid(path, value, format!("must be of type {format}: {s:?}")));
    }
}

/// The formats Kubernetes checks; others are accepted unchecked, as the API server does.
fn format_matches(format: &str, s: &str) -> bool {
    match format {
        "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.parse::<ipnet::IpNet>().is_ok(),
        "hostname" => super::names::name_error(s, false).is_none(),
        _ => true,
    }
}

fn check_number(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(n) = value.as_f64() else { return };
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        let fits = match format {
            "int32" => value.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            "int64" => value.as_i64().is_some(),
            _ => true,
        };
        if !fits {
            causes.push(invalid(path, value, format!("must be of type {format}")));
        }
    }
    let exclusive = |key: &str| flag(schema, key);
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if exclusive("exclusiveMinimum") && n <= min {
            causes.push(invalid(path, value, format!("should be greater than {min}")));
        } else if n < min {
            causes.push(invalid(path, value, format!("should be greater than or equal to {min}")));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        if exclusive("exclusiveMaximum") && n >= max {
            causes.push(invalid(path, value, format!("should be less than {max}")));
        } else if n > max {
            causes.push(invalid(path, value, format!("should be less than or equal to {max}")));
        }
    }
}

fn check_array(schema: &Value, items: &[Value], value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let len = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        causes.push(Cause::new(CauseReason::TooMany, path, format!("Too many: {len}: must have at most {max} items")));
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        causes.push(invalid(path, value, format!("should have at least {min} items")));
    }
    let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    if list_type == Some("set") || flag(schema, "uniqueItems") {
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item.to_string()) {
                causes.push(Cause::new(
                    CauseReason::Duplicate,
                    format!("{path}[{i}]"),
                    format!("Duplicate value: {}", render_value(item)),
                ));
            }
        }
    }
    if list_type == Some("map")
        && let Some(keys) = schema.get("x-kubernetes-list-map-keys").and_then(Value::as_array)
    {
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let key: Vec<String> = keys
                .iter()
                .filter_map(Value::as_str)
                .map(|k| item.get(k).map(Value::to_string).unwrap_or_default())
                .collect();
            if !seen.insert(key.clone()) {
                causes.push(Cause::new(
                    CauseReason::Duplicate,
                    format!("{path}[{i}]"),
                    format!("Duplicate value: {}", key.join(",")),
                ));
            }
        }
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check_node(item_schema, item, None, &format!("{path}[{i}]"), causes);
        }
    }
}

fn check_map(schema: &Value, map: &Map<String, Value>, old: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(field) {
                causes.push(Cause::new(CauseReason::Required, join(path, field), "Required value"));
            }
        }
    }
    let count = map.len() as u64;
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && count > max
    {
        causes.push(Cause::new(
            CauseReason::TooMany,
            path,
            format!("Too many: {count}: must have at most {max} items"),
        ));
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|s| s.is_object());
    for (key, child) in map {
        let child_old = old.and_then(|o| o.get(key));
        if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
            check_node(child_schema, child, child_old, &join(path, key), causes);
        } else if let Some(child_schema) = additional {
            check_node(child_schema, child, child_old, &format!("{path}[{key}]"), causes);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["region"],
                    "properties": {
                        "region": {"type": "string", "enum": ["us", "eu"]},
                        "running": {"type": "boolean", "default": true},
                        "port": {"type": "string", "pattern": "^[0-9]+$"},
                        "count": {"type": "integer", "minimum": 0, "format": "int32"},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "when": {"type": "string", "format": "date-time"},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }
            }
        })
    }

    fn messages(value: Value) -> Vec<String> {
        check(&schema(), &value, None).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn prunes_unknown_fields_but_keeps_resource_envelope_and_preserved_subtrees() {
        let mut v = json!({
            "apiVersion": "x/v1", "kind": "K",
            "metadata": {"name": "a", "bogusMeta": 1},
            "spec": {"region": "us", "bogus": 1, "free": {"anything": [1]}},
            "extra": true
        });
        let mut unknown = Vec::new();
        prune(&schema(), &mut v, "", true, &mut unknown);
        unknown.sort();
        assert_eq!(unknown, vec!["extra", "metadata.bogusMeta", "spec.bogus"]);
        assert_eq!(v["spec"]["free"]["anything"], json!([1]));
        assert_eq!(v["apiVersion"], "x/v1");
    }

    #[test]
    fn explicit_null_on_non_nullable_field_is_pruned() {
        let mut v = json!({"spec": {"region": "us", "running": null}});
        prune(&schema(), &mut v, "", true, &mut Vec::new());
        assert_eq!(v, json!({"spec": {"region": "us"}}));
    }

    #[test]
    fn reports_kubernetes_style_messages() {
        assert_eq!(messages(json!({"spec": {}})), vec!["spec.region: Required value"]);
        assert_eq!(
            messages(json!({"spec": {"region": "mars"}})),
            vec![r#"spec.region: Unsupported value: "mars": supported values: "us", "eu""#]
        );
        assert_eq!(
            messages(json!({"spec": {"region": "us", "running": "yes"}})),
            vec![r#"spec.running: Invalid value: "yes": spec.running in body must be of type boolean: "string""#]
        );
        assert_eq!(
            messages(json!({"spec": {"region": "us", "port": "x"}})),
            vec![r#"spec.port: Invalid value: "x": spec.port in body should match '^[0-9]+$'"#]
        );
        assert_eq!(
            messages(json!({"spec": {"region": "us", "count": -1}})),
            vec!["spec.count: Invalid value: -1: spec.count in body should be greater than or equal to 0"]
        );
        assert_eq!(
            messages(json!({"spec": {"region": "us", "tags": ["a", "b", "c"]}})),
            vec!["spec.tags: Too many: 3: must have at most 2 items"]
        );
        assert_eq!(
            messages(json!({"spec": {"region": "us", "when": "yesterday"}})),
            vec![r#"spec.when: Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday""#]
        );
        assert_eq!(messages(json!({"metadata": {"name": "Bad_Name"}, "spec": {"region": "us"}})).len(), 1);
    }

    #[test]
    fn unchanged_values_are_ratcheted_on_update() {
        let old = json!({"spec": {"region": "us", "port": "x"}});
        let new = json!({"spec": {"region": "eu", "port": "x"}});
        assert!(check(&schema(), &new, Some(&old)).is_empty());
        let worse = json!({"spec": {"region": "eu", "port": "y"}});
        assert_eq!(check(&schema(), &worse, Some(&old)).len(), 1);
    }
}
