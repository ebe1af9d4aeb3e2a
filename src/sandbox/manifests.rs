//! Loading manifests from a directory for `sandbox --apply`: every YAML document of every
//! `*.yaml`/`*.yml`/`*.json` file (sorted by name, not recursive), server-side applied.
//! Reports each outcome; a refused manifest never stops the others.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::sim::kube::RunningKube;

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
            let last_applied = format!("{doc}\n");
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
