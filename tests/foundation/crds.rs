//! `crds/` must be exactly what `crabglamp-operator crd` prints.

use std::path::Path;

use crabglamp_operator::api::{all_crds, crd_file_name, crd_yaml};

#[test]
fn committed_crds_are_not_stale() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in all_crds() {
        let file = dir.join(crd_file_name(&crd));
        let committed =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let generated = crd_yaml(&crd).expect("render CRD");
        assert!(
            committed == generated,
            "{} is stale: run `cargo run -- crd --out-dir crds` and commit the result",
            file.display()
        );
    }
    let files = std::fs::read_dir(&dir).expect("read crds/").count();
    assert_eq!(files, all_crds().len(), "crds/ holds files that no CRD generates");
}

#[test]
fn every_field_has_a_description() {
    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(child, &p, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    let mut missing = Vec::new();
    for crd in all_crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema to json");
        walk(&schema["openAPIV3Schema"], &crd.spec.names.kind, &mut missing);
    }
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}
