//! Strategic merge patch (`application/strategic-merge-patch+json`) of built-in kinds, as
//! apimachinery's `strategicpatch` applies it: lists whose field has `patchStrategy: merge`
//! merge by their `patchMergeKey` (containers by name, ports by containerPort...), primitive
//! lists with that strategy are unions, other lists are replaced; `null` deletes a field; and
//! the directives kubectl and Helm 3 send: `$patch: replace|delete|merge`, `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.
//!
//! Hand-written: no maintained crate implements strategic merge patch. Pure functions.

use serde_json::{Map, Value};

use super::schema;

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Why a patch cannot be applied (the API server answers 422 with this).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

fn strategy(schema: &Value) -> (bool, bool, Option<&str>) {
    let s = schema.get("x-kubernetes-patch-strategy").and_then(Value::as_str).unwrap_or_default();
    let key = schema.get("x-kubernetes-patch-merge-key").and_then(Value::as_str).filter(|k| !k.is_empty());
    (s.split(',').any(|p| p == "merge"), s.split(',').any(|p| p == "retainKeys"), key)
}

/// Applies `patch` to `doc` under the kind's `schema`.
pub fn apply(schema: &Value, doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError("strategic merge patch: the patch must be a JSON object".into()));
    };
    merge_object(schema, doc, patch)
}

fn merge_object(schema: &Value, doc: &mut Value, patch: &Map<String, Value>) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *doc = Value::Object(without_directives(patch));
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError(format!("unknown patch type: {other}"))),
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        let child = schema::child(schema, key).unwrap_or_else(|| schema::open());
        let Some(target) = doc.as_object_mut() else { break };
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(p) => {
                let existing = target.entry(key.clone()).or_insert(Value::Null);
                merge_object(child, existing, p)?;
                if existing.is_null() {
                    target.remove(key);
                }
            }
            Value::Array(items) => {
                let existing = target.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                merge_list(child, existing, items)?;
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
    let Some(target) = doc.as_object_mut() else { return Ok(()) };
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE)
            && let (Some(Value::Array(list)), Some(gone)) = (target.get_mut(field), value.as_array())
        {
            list.retain(|v| !gone.contains(v));
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ORDER)
            && let Some(order) = value.as_array()
        {
            let child = schema::child(schema, field).unwrap_or_else(|| schema::open());
            if let Some(Value::Array(list)) = target.get_mut(field) {
                set_order(child, list, order);
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn without_directives(patch: &Map<String, Value>) -> Map<String, Value> {
    patch.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip(v))).collect()
}

fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(without_directives(m)),
        Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
        other => other.clone(),
    }
}

fn merge_list(schema: &Value, doc: &mut Value, patch: &[Value]) -> Result<(), PatchError> {
    let (merge, _, key) = strategy(schema);
    // `[{"$patch": "replace"}, ...]`: the rest of the list replaces the live one.
    let replace = patch.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if !merge || replace || !doc.is_array() {
        let items = patch.iter().filter(|i| i.get("$patch").is_none()).map(strip).collect();
        *doc = Value::Array(items);
        return Ok(());
    }
    let Some(list) = doc.as_array_mut() else { return Ok(()) };
    let Some(key) = key else {
        // A primitive list merged as a union.
        for item in patch {
            if !list.contains(item) {
                list.push(item.clone());
            }
        }
        return Ok(());
    };
    let item_schema = schema::items(schema);
    for item in patch {
        let Some(fields) = item.as_object() else {
            return Err(PatchError(format!("strategic merge patch: an item of a list merged by {key:?} is no object")));
        };
        let Some(id) = fields.get(key) else {
            return Err(PatchError(format!(
                "map: {} does not contain declared merge key: {key}",
                Value::Object(fields.clone())
            )));
        };
        let position = list.iter().position(|l| l.get(key) == Some(id));
        match (fields.get("$patch").and_then(Value::as_str), position) {
            (Some("delete"), Some(i)) => {
                list.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => merge_object(item_schema, &mut list[i], fields)?,
            (_, None) => list.push(Value::Object(without_directives(fields))),
        }
    }
    Ok(())
}

/// `$setElementOrder`: the named items come in this order; items it does not name (added by
/// someone else) follow in their current order.
fn set_order(schema: &Value, list: &mut Vec<Value>, order: &[Value]) {
    let (_, _, key) = strategy(schema);
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let mut rest = std::mem::take(list);
    for wanted in order {
        let wanted = id(wanted);
        if let Some(i) = rest.iter().position(|v| id(v) == wanted) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn helm_three_way_patch_merges_by_key_and_obeys_directives() {
        let schema = schema::builtin("apps", "Deployment").unwrap_or_else(|| panic!("schema"));
        let mut doc = json!({"spec": {"replicas": 1, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
        "template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "s:1"}
        ]}}}});
        let patch = json!({"spec": {"replicas": 3, "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
        "template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
            "containers": [
                {"name": "app", "image": "a:2", "$setElementOrder/env": [{"name": "A"}], "env": [{"$patch": "delete", "name": "B"}]}
            ]}}}});
        apply(&schema, &mut doc, &patch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc["spec"]["replicas"], 3);
        assert_eq!(doc["spec"]["strategy"], json!({"type": "Recreate"}));
        let containers = &doc["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "sidecar");
        assert_eq!(containers[1]["image"], "a:2");
        assert_eq!(containers[1]["env"], json!([{"name": "A", "value": "1"}]));
    }

    #[test]
    fn lists_without_a_strategy_are_replaced_and_finalizers_merge() {
        let schema = schema::builtin("rbac.authorization.k8s.io", "Role").unwrap_or_else(|| panic!("schema"));
        let mut doc = json!({"metadata": {"finalizers": ["a"]}, "rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]});
        let patch = json!({"metadata": {"finalizers": ["b"]}, "rules": [{"verbs": ["watch"]}]});
        apply(&schema, &mut doc, &patch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc["rules"], json!([{"verbs": ["watch"]}]));
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b"]));
    }
}
