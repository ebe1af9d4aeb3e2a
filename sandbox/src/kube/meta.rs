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

/// The age of a time in `duration.HumanDuration`'s short form (what kube-apiserver's printers
/// and kubectl show): `45s`, `5m`, `5m3s`, `3h20m`, `4d`, `2y30d`.
pub fn human_age(since: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(since).ok()?;
    let secs = (Utc::now() - t.with_timezone(&Utc)).num_seconds();
    // Up to two seconds in the future is clock skew, "now".
    if secs < -1 {
        return Some("<invalid>".into());
    }
    let secs = secs.max(0);
    let (minutes, hours, days) = (secs / 60, secs / 3600, secs / 86400);
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 { format!("{big}{unit}") } else { format!("{big}{unit}{small}{small_unit}") }
    };
    Some(match secs {
        s if s < 120 => format!("{s}s"),
        _ if minutes < 10 => with(minutes, "m", secs % 60, "s"),
        _ if minutes < 3 * 60 => format!("{minutes}m"),
        _ if hours < 8 => with(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => with(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => with(days / 365, "y", days % 365, "d"),
        _ => format!("{}y", days / 365),
    })
}

/// `v` as a map, replacing anything else by an empty one. Writes refuse non-object bodies
/// before they get here; this keeps a slip from turning into a panic that drops the connection.
fn as_map(v: &mut Value) -> &mut Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => {
            *other = Value::Object(Map::new());
            as_map(other)
        }
    }
}

/// The `metadata` map of an object, created when absent (or not a map).
pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    as_map(as_map(object).entry("metadata").or_insert_with(|| Value::Object(Map::new())))
}

/// Sets (`Some`) or removes (`None`) a top-level field of an object.
pub fn set_field(object: &mut Value, key: &str, value: Option<Value>) {
    let root = as_map(object);
    match value {
        Some(v) => {
            root.insert(key.to_owned(), v);
        }
        None => {
            root.remove(key);
        }
    }
}

/// Why `object` cannot be decoded as a Kubernetes object (not a JSON object, or `metadata`
/// fields of the wrong type), in the words of Go's decoder; None when it can. Stored objects
/// must always decode: one a typed client cannot parse breaks every watcher of its kind.
pub fn decode_error(object: &Value) -> Option<String> {
    let Some(root) = object.as_object() else {
        return Some(format!("cannot unmarshal {} into an object", json_type(object)));
    };
    if nesting_exceeds(object, MAX_NESTING) {
        return Some(format!("the object is nested deeper than {MAX_NESTING} levels"));
    }
    let meta = match root.get("metadata") {
        None | Some(Value::Null) => return None,
        Some(Value::Object(m)) => m,
        Some(other) => return Some(wrong_type("metadata", other, "ObjectMeta")),
    };
    use GoType::{Int64, ObjectList, String as Str, StringList, StringMap};
    let fields = [
        ("name", Str),
        ("generateName", Str),
        ("namespace", Str),
        ("uid", Str),
        ("resourceVersion", Str),
        ("creationTimestamp", Str),
        ("deletionTimestamp", Str),
        ("generation", Int64),
        ("deletionGracePeriodSeconds", Int64),
        ("labels", StringMap),
        ("annotations", StringMap),
        ("finalizers", StringList),
        ("ownerReferences", ObjectList("[]OwnerReference")),
        ("managedFields", ObjectList("[]ManagedFieldsEntry")),
    ];
    fields.into_iter().find_map(|(key, go_type)| match meta.get(key) {
        None | Some(Value::Null) => None,
        Some(v) if go_type.accepts(v) => None,
        Some(v) => Some(wrong_type(&format!("metadata.{key}"), v, go_type.name())),
    })
}

/// The Go types of ObjectMeta's fields, as far as JSON can get them wrong.
#[derive(Clone, Copy)]
enum GoType {
    String,
    Int64,
    StringMap,
    StringList,
    ObjectList(&'static str),
}

impl GoType {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Self::String => v.is_string(),
            Self::Int64 => v.is_i64(),
            Self::StringMap => v.as_object().is_some_and(|m| m.values().all(|x| x.is_string() || x.is_null())),
            Self::StringList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Self::ObjectList(_) => v.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int64 => "int64",
            Self::StringMap => "map[string]string",
            Self::StringList => "[]string",
            Self::ObjectList(name) => name,
        }
    }
}

/// How deep a stored object may nest. Request bodies cannot exceed serde_json's 128 levels, but
/// JSON patches can add nesting to nesting; an object deeper than that limit (minus the list,
/// watch and Table wrappers around it) is one kube-rs cannot decode, and every watcher of its
/// kind would fail on it.
pub const MAX_NESTING: usize = 100;

/// Whether `v` nests arrays and objects deeper than `limit` (iterative: no deep recursion).
fn nesting_exceeds(v: &Value, limit: usize) -> bool {
    let mut pending = vec![(v, 1usize)];
    while let Some((v, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        pending.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn wrong_type(field: &str, v: &Value, go_type: &str) -> String {
    format!("json: cannot unmarshal {} into Go struct field {field} of type {go_type}", json_type(v))
}

pub use crate::admission::name_error;

/// The object's `metadata.name`, empty when it has none.
pub fn name_of(object: &Value) -> String {
    meta_str(object, "name").unwrap_or_default().to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decode_errors_name_the_field_as_go_does() {
        assert_eq!(decode_error(&json!({"metadata": {"name": "a", "labels": {"x": "y"}}})), None);
        assert_eq!(decode_error(&json!({"metadata": null})), None);
        assert_eq!(decode_error(&json!([])).as_deref(), Some("cannot unmarshal array into an object"));
        let labels = decode_error(&json!({"metadata": {"labels": "x"}})).unwrap_or_default();
        assert_eq!(
            labels,
            "json: cannot unmarshal string into Go struct field metadata.labels of type map[string]string"
        );
        assert!(decode_error(&json!({"metadata": {"finalizers": [1]}})).is_some());
        assert!(decode_error(&json!({"metadata": {"generation": "1"}})).is_some());
        let mut deep = json!("leaf");
        for _ in 0..MAX_NESTING {
            deep = json!({ "a": deep });
        }
        assert_eq!(decode_error(&deep), None, "exactly {MAX_NESTING} levels");
        assert!(decode_error(&json!({ "a": deep })).is_some());
    }

    #[test]
    fn names_of_built_ins() {
        assert_eq!(name_error("db-creds.v2", false), None);
        assert_eq!(name_error("team-a", true), None);
        for bad in ["", "a/b", "..", "Upper", "-x", "x-", &"a".repeat(254)] {
            assert!(name_error(bad, false).is_some(), "{bad:?}");
        }
        assert!(name_error("a.b", true).is_some());
        assert!(name_error(&"a".repeat(64), true).is_some());
    }

    #[test]
    fn meta_mut_never_panics() {
        let mut v = json!([1]);
        meta_mut(&mut v).insert("name".into(), json!("a"));
        assert_eq!(v, json!({"metadata": {"name": "a"}}));
        let mut v = json!({"metadata": "x"});
        meta_mut(&mut v);
        assert_eq!(v, json!({"metadata": {}}));
    }
}
