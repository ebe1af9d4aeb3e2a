//! The two faces of an Event: objects are stored as core/v1 Events (what `kubectl describe`
//! lists) and converted to and from events.k8s.io/v1 (what kube-rs's `Recorder` writes).
//! Pure field renames and the field labels both APIs select by; never stores anything.

use serde_json::{Map, Value};

use crate::admission::{Cause, CauseReason};

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

/// `object` (an Event of core/v1, or of events.k8s.io/v1 when `events_v1`) with what Go's
/// encoding of the API type writes whatever was stored: `null` for unset times, `{}` for unset
/// structs, `""` for the core strings without `omitempty`; events.k8s.io/v1 omits its empty
/// strings.
pub fn with_go_zero_values(object: &Value, events_v1: bool) -> Value {
    let mut out = object.clone();
    let Some(map) = out.as_object_mut() else { return out };
    let (defaults, omitted): (&[(&str, Value)], &[&str]) = if events_v1 {
        (
            &[
                ("eventTime", Value::Null),
                ("deprecatedFirstTimestamp", Value::Null),
                ("deprecatedLastTimestamp", Value::Null),
                ("deprecatedSource", Value::Object(Map::new())),
                ("regarding", Value::Object(Map::new())),
            ],
            &["action", "reason", "note", "type", "reportingController", "reportingInstance"],
        )
    } else {
        (
            &[
                ("eventTime", Value::Null),
                ("firstTimestamp", Value::Null),
                ("lastTimestamp", Value::Null),
                ("source", Value::Object(Map::new())),
                ("involvedObject", Value::Object(Map::new())),
                ("reportingComponent", Value::String(String::new())),
                ("reportingInstance", Value::String(String::new())),
            ],
            &[],
        )
    };
    for (key, zero) in defaults {
        map.entry(*key).or_insert_with(|| zero.clone());
    }
    map.retain(|k, v| !(omitted.contains(&k.as_str()) && v.as_str() == Some("")));
    out
}

/// Length limits of `pkg/apis/core/validation` for Events.
const REPORTING_INSTANCE_MAX: usize = 128;
const ACTION_MAX: usize = 128;
const REASON_MAX: usize = 128;
const NOTE_MAX: usize = 1024;

/// `validation.IsDNS1123Subdomain`'s messages for `value`.
fn dns_subdomain_errors(value: &str) -> Vec<String> {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push("must be no more than 253 characters".to_owned());
    }
    if !value.split('.').all(label) {
        errors.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned());
    }
    errors
}

/// `validation.IsQualifiedName`'s messages for `value`.
fn qualified_name_errors(value: &str) -> Vec<String> {
    const NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                errors.extend(dns_subdomain_errors(prefix).into_iter().map(|why| format!("prefix part {why}")));
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {NAME_RULE} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errors.push("name part must be no more than 63 characters".to_owned());
    }
    let valid = name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if !valid {
        errors.push(format!("name part {NAME_RULE}"));
    }
    errors
}

/// kube-apiserver's checks of an Event written through `events_v1` (events.k8s.io/v1) or core/v1,
/// on its core form in `namespace`: `legacyValidateEvent` for every write, plus on a create
/// through events.k8s.io/v1 the strict rules of `ValidateEventCreate` (the series rule also on
/// updates that change the series). Immutable fields of updates are not checked.
pub fn validate(event: &Value, namespace: &str, events_v1: bool, old: Option<&Value>) -> Vec<Cause> {
    let s = |p: &str| event.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let set = |p: &str| event.pointer(p).is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
    let invalid = |field: &str, value: &str, why: &str| {
        Cause::new(CauseReason::Invalid, field, format!("Invalid value: {value:?}: {why}"))
    };
    let required = |field: &str| Cause::new(CauseReason::Required, field, "Required value");
    let mut causes = Vec::new();
    let controller_field = if events_v1 { "reportingController" } else { "reportingComponent" };
    let involved_ns = s("/involvedObject/namespace");
    if !set("/eventTime") {
        // An old-style event: its namespace and its object's agree ("default" may hold events
        // of cluster-scoped objects).
        let matches =
            if involved_ns.is_empty() { matches!(namespace, "" | "default") } else { namespace == involved_ns };
        if !matches {
            causes.push(invalid("involvedObject.namespace", involved_ns, "does not match event.namespace"));
        }
    } else {
        if involved_ns.is_empty() && !matches!(namespace, "default" | "kube-system") {
            causes.push(invalid("involvedObject.namespace", involved_ns, "does not match event.namespace"));
        }
        let controller = s("/reportingComponent");
        if controller.is_empty() {
            causes.push(required(controller_field));
        }
        causes.extend(qualified_name_errors(controller).iter().map(|why| invalid(controller_field, controller, why)));
        let limited = |field: &str, path: &str, max: usize, causes: &mut Vec<Cause>, needed: bool| {
            let value = s(path);
            if needed && value.is_empty() {
                causes.push(required(field));
            }
            if value.len() > max {
                causes.push(invalid(field, "", &format!("can have at most {max} characters")));
            }
        };
        limited("reportingInstance", "/reportingInstance", REPORTING_INSTANCE_MAX, &mut causes, true);
        limited("action", "/action", ACTION_MAX, &mut causes, true);
        limited("reason", "/reason", REASON_MAX, &mut causes, true);
        limited("message", "/message", NOTE_MAX, &mut causes, false);
    }
    if !events_v1 {
        return causes;
    }
    let series_changed = old.is_none_or(|o| o.get("series") != event.get("series"));
    if series_changed && let Some(series) = event.get("series").filter(|v| v.is_object()) {
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            causes.push(invalid("series.count", "", "should be at least 2"));
        }
        if series.get("lastObservedTime").is_none_or(Value::is_null) {
            causes.push(required("series.lastObservedTime"));
        }
    }
    if old.is_some() {
        return causes;
    }
    if !set("/eventTime") {
        causes.push(required("eventTime"));
    }
    let kind = s("/type");
    if !matches!(kind, "Normal" | "Warning") {
        causes.push(invalid("type", "", &format!("has invalid value: {kind}")));
    }
    for (field, path) in [("firstTimestamp", "/firstTimestamp"), ("lastTimestamp", "/lastTimestamp")] {
        if set(path) {
            causes.push(invalid(field, "", "needs to be unset"));
        }
    }
    if event.get("count").and_then(Value::as_i64).is_some_and(|c| c != 0) {
        causes.push(invalid("count", "", "needs to be unset"));
    }
    if set("/source/component") || set("/source/host") {
        causes.push(invalid("source", "", "needs to be unset"));
    }
    causes
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
