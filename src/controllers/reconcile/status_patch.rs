//! The smallest JSON merge patch (RFC 7386) that turns one status into another: fields that
//! disappeared become `null` (a plain merge patch of the new status would leave them behind),
//! unchanged fields are left out. `None` when there is no difference, so no write is made.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// `{"status": <difference>}`, or `None` when `old` and `new` serialise the same.
pub fn status_merge_patch<S: Serialize>(old: &S, new: &S) -> Option<Value> {
    let old = serde_json::to_value(old).ok()?;
    let new = serde_json::to_value(new).ok()?;
    diff(&old, &new).map(|d| json!({ "status": d }))
}

fn diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = diff(ov, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        // Lists (conditions) and scalars are replaced whole, as merge patch does.
        _ => (old != new).then(|| new.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_fields_become_null_and_equal_gives_none() {
        let old = json!({"phase": "Running", "server": {"id": 1, "ipv4": "1.2.3.4"}, "owner": "a"});
        let new = json!({"phase": "Running", "server": {"id": 2}, "owner": "a"});
        assert_eq!(status_merge_patch(&old, &new), Some(json!({"status": {"server": {"id": 2, "ipv4": null}}})));
        assert_eq!(status_merge_patch(&old, &old), None);
    }
}
