//! The two faces of an Event: objects are stored as core/v1 Events (what `kubectl describe`
//! lists) and converted to and from events.k8s.io/v1 (what kube-rs's `Recorder` writes).
//! Pure field renames and the field labels both APIs select by; never stores anything.

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

/// The field labels of core/v1 Events (`pkg/registry/core/event`, `ToSelectableFields`), each
/// with the paths it reads in the stored form (the first non-empty one wins).
const CORE_LABELS: [(&str, &[&str]); 13] = [
    ("metadata.name", &["metadata.name"]),
    ("metadata.namespace", &["metadata.namespace"]),
    ("involvedObject.kind", &["involvedObject.kind"]),
    ("involvedObject.namespace", &["involvedObject.namespace"]),
    ("involvedObject.name", &["involvedObject.name"]),
    ("involvedObject.uid", &["involvedObject.uid"]),
    ("involvedObject.apiVersion", &["involvedObject.apiVersion"]),
    ("involvedObject.resourceVersion", &["involvedObject.resourceVersion"]),
    ("involvedObject.fieldPath", &["involvedObject.fieldPath"]),
    ("reason", &["reason"]),
    ("reportingComponent", &["reportingComponent"]),
    // `source` is the source component, or the reporting controller when there is none.
    ("source", &["source.component", "reportingComponent"]),
    ("type", &["type"]),
];

/// The field labels of events.k8s.io/v1 Events and the core labels they stand for
/// (`pkg/apis/events/v1`, `AddFieldLabelConversionsForEvent`).
const V1_LABELS: [(&str, &str); 12] = [
    ("metadata.name", "metadata.name"),
    ("metadata.namespace", "metadata.namespace"),
    ("regarding.kind", "involvedObject.kind"),
    ("regarding.namespace", "involvedObject.namespace"),
    ("regarding.name", "involvedObject.name"),
    ("regarding.uid", "involvedObject.uid"),
    ("regarding.apiVersion", "involvedObject.apiVersion"),
    ("regarding.resourceVersion", "involvedObject.resourceVersion"),
    ("regarding.fieldPath", "involvedObject.fieldPath"),
    ("reason", "reason"),
    ("reportingController", "reportingComponent"),
    ("type", "type"),
];

/// The stored-form paths a field label of an Event reads (`events_v1`: the label is one of
/// events.k8s.io/v1), or `None` when the API does not support that label.
pub fn field_label(events_v1: bool, label: &str) -> Option<&'static [&'static str]> {
    let core = if events_v1 { V1_LABELS.iter().find(|(v1, _)| *v1 == label)?.1 } else { label };
    CORE_LABELS.iter().find(|(l, _)| *l == core).map(|(_, paths)| *paths)
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
