//! Loading manifests from a directory for `sandbox --apply`: every YAML document of every
//! `*.yaml`/`*.yml`/`*.json` file (sorted by name, not recursive), server-side applied.
//! Reports each outcome; a refused manifest never stops the others.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::kube::RunningKube;

/// Every document in `text` (a YAML stream; empty documents skipped).
pub fn documents(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// JSON as Go's `encoding/json` writes it (what kubectl stores in the last-applied annotation):
/// object keys sorted whatever serde_json's map order, `<`, `>`, `&`, U+2028 and U+2029 escaped.
pub fn go_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> =
                keys.into_iter().map(|k| format!("{}:{}", go_string(k), go_json(&m[k.as_str()]))).collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(go_json).collect::<Vec<_>>().join(",")),
        Value::String(s) => go_string(s),
        other => other.to_string(),
    }
}

fn go_string(s: &str) -> String {
    Value::String(s.to_owned())
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Applies every manifest in `dir`; one line per object or failure.
pub fn apply_dir(kube: &RunningKube, dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            .collect(),
        Err(e) => return vec![format!("cannot read {}: {e}", dir.display())],
    };
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                out.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let docs = match documents(&text) {
            Ok(d) => d,
            Err(e) => {
                out.push(format!("{}: not YAML: {e}", file.display()));
                continue;
            }
        };
        for mut doc in docs {
            // The annotation `kubectl apply` keeps, rendered as kubectl does (sorted keys,
            // `annotations: {}` present, trailing newline), so a later `kubectl apply -f` of the
            // same files finds them unchanged instead of warning about a missing annotation.
            if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
            }
            let last_applied = format!("{}\n", go_json(&doc));
            if let Some(a) = doc.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
                a.insert("kubectl.kubernetes.io/last-applied-configuration".into(), Value::String(last_applied));
            }
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?").to_lowercase();
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?").to_owned();
            match kube.apply(&doc, "sandbox-apply") {
                Ok(_) => out.push(format!("{kind}/{name} applied ({})", file.display())),
                Err(e) => out.push(format!("{kind}/{name} refused ({}): {}", file.display(), e.message)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_like_go() {
        let v = json!({"b": 1, "a": {"z": "x<y&z", "c": [true, null]}});
        assert_eq!(go_json(&v), r#"{"a":{"c":[true,null],"z":"x\u003cy\u0026z"},"b":1}"#);
    }
}
