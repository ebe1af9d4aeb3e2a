//! Object metadata rules: server-owned fields, normalisation, `generation`, ages and times.
//! Pure functions; no storage, no I/O.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Now as RFC 3339 with seconds (metav1.Time).
pub fn now_time() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Now as RFC 3339 with microseconds (metav1.MicroTime).
pub fn now_micro() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A duration in `kubectl`'s short form: `45s`, `5m`, `3h20m`, `4d`.
pub fn human_age(since: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(since).ok()?;
    let secs = (Utc::now() - t.with_timezone(&Utc)).num_seconds().max(0);
    Some(match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    })
}

/// The `metadata` map of an object, created when absent.
pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = Value::Object(Map::new());
    }
    match object.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // The branch above made it an object.
        _ => unreachable!("metadata was just set to an object"),
    }
}

/// A string field of `metadata`.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// Drops empty finalizers, labels, annotations and ownerReferences: kube-rs's finalizer helper
/// tests `/metadata/finalizers` against null when it saw none.
pub fn normalise(object: &mut Value) {
    let meta = meta_mut(object);
    for key in ["finalizers", "labels", "annotations", "ownerReferences", "managedFields"] {
        let empty = match meta.get(key) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            meta.remove(key);
        }
    }
}

/// The finalizers of an object.
pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Whether a write from `old` to `new` bumps `generation`: anything outside `metadata` changed
/// (outside `status` too when status is a subresource).
pub fn spec_changed(old: &Value, new: &Value, status_subresource: bool) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if status_subresource {
            m.remove("status");
        }
        m
    };
    strip(old) != strip(new)
}

/// Copies the server-owned metadata of `stored` onto `object` (uid, creationTimestamp,
/// generation, deletion fields, managedFields), since clients may not change them.
pub fn keep_server_fields(object: &mut Value, stored: &Value) {
    let meta = meta_mut(object);
    for key in
        ["uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"]
    {
        match stored.get("metadata").and_then(|m| m.get(key)) {
            Some(v) => {
                meta.insert(key.into(), v.clone());
            }
            None => {
                meta.remove(key);
            }
        }
    }
}

/// An object's content without bookkeeping (resourceVersion, managedFields), to detect no-op writes.
pub fn content(object: &Value) -> Value {
    let mut v = object.clone();
    let meta = meta_mut(&mut v);
    meta.remove("resourceVersion");
    meta.remove("managedFields");
    v
}
