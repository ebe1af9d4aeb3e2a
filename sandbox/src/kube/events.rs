//! The two faces of an Event: objects are stored as core/v1 Events (what `kubectl describe`
//! lists) and converted to and from events.k8s.io/v1 (what kube-rs's `Recorder` writes).
//! Pure field renames; never stores anything.

use serde_json::{Map, Value};

/// (events.k8s.io/v1 name, core/v1 name) of every renamed field.
const RENAMES: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
];

fn rename(object: &Value, to_core: bool) -> Value {
    let Some(map) = object.as_object() else { return object.clone() };
    let mut out = Map::new();
    for (k, v) in map {
        let mut name = k.as_str();
        for (v1, core) in RENAMES {
            if to_core && k == v1 {
                name = core;
            } else if !to_core && k == core {
                name = v1;
            }
        }
        out.insert(name.to_owned(), v.clone());
    }
    if to_core {
        out.insert("apiVersion".into(), Value::String("v1".into()));
    } else {
        out.insert("apiVersion".into(), Value::String("events.k8s.io/v1".into()));
    }
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// events.k8s.io/v1 → core/v1 (the storage form).
pub fn to_core(object: &Value) -> Value {
    rename(object, true)
}

/// core/v1 → events.k8s.io/v1.
pub fn to_events_v1(object: &Value) -> Value {
    rename(object, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "regarding": {"name": "a"}, "note": "hi", "reportingController": "c"});
        let core = to_core(&e);
        assert_eq!(core["involvedObject"]["name"], "a");
        assert_eq!(core["message"], "hi");
        assert_eq!(to_events_v1(&core), e);
    }
}
