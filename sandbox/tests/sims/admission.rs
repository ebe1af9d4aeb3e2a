//! The admission module against every manifest in `examples/` and `examples/invalid/`.

use std::path::{Path, PathBuf};

use crabglamp_operator::api::all_crds;
use crabglamp_sandbox::admission::{Cause, CrdValidator};
use serde::Deserialize;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).to_path_buf()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("parse {}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Admits a custom resource against the CRD of its kind, as the API server would.
fn admit(object: &Value, old: Option<&Value>) -> Result<Value, Vec<Cause>> {
    let kind = object["kind"].as_str().expect("kind");
    let crd = all_crds().into_iter().find(|c| c.spec.names.kind == kind).unwrap_or_else(|| panic!("no CRD for {kind}"));
    let validator = CrdValidator::new(&crd).expect("CRD compiles");
    validator.admit("v1alpha1", object, old).map(|a| a.object)
}

fn is_custom_resource(doc: &Value) -> bool {
    doc["apiVersion"].as_str().is_some_and(|v| v.starts_with("crabglamp.com/"))
}

/// The `# key: value` header lines of an invalid example.
fn header(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).expect("read example");
    let prefix = format!("# {key}:");
    text.lines().find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
}

#[test]
fn every_valid_example_is_admitted_and_defaulted() {
    let mut admitted = 0;
    for file in yaml_files(&examples_dir()) {
        for doc in documents(&file).into_iter().filter(is_custom_resource) {
            let object = admit(&doc, None).unwrap_or_else(|causes| panic!("{} refused: {causes:?}", file.display()));
            if doc["kind"] != "VirtualKey" {
                assert!(object["spec"]["deletionPolicy"].is_string(), "defaults applied in {}", file.display());
                assert!(object["spec"]["running"].is_boolean(), "defaults applied in {}", file.display());
            }
            admitted += 1;
        }
    }
    assert!(admitted >= 3, "expected at least an Agent, a PlainVM and a VirtualKey, admitted {admitted}");
}

#[test]
fn every_invalid_example_is_refused_by_the_rule_it_names() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(files.len() >= 15, "one invalid example per admission rule");
    for file in files {
        let rule = header(&file, "rule").unwrap_or_else(|| panic!("{} lacks a '# rule:' line", file.display()));
        let field = header(&file, "field").unwrap_or_else(|| panic!("{} lacks a '# field:' line", file.display()));
        let docs = documents(&file);
        assert_eq!(docs.len(), 1, "{}: one manifest per file", file.display());
        let old = header(&file, "update-of").map(|base| {
            let base_doc = documents(&examples_dir().join(base)).remove(0);
            admit(&base_doc, None).expect("the base of an update is valid")
        });
        if old.is_some() {
            // Without the old object the same manifest is a valid create: only the transition breaks it.
            assert!(admit(&docs[0], None).is_ok(), "{} must be valid as a create", file.display());
        }
        let causes = match admit(&docs[0], old.as_ref()) {
            Ok(_) => panic!("{} was admitted but breaks: {rule}", file.display()),
            Err(causes) => causes,
        };
        assert!(
            causes.iter().any(|c| c.message.contains(&rule) && c.field == field),
            "{}: expected a cause at {field:?} containing {rule:?}, got {causes:?}",
            file.display()
        );
    }
}

#[test]
fn unknown_fields_are_pruned_and_reported() {
    let mut doc = documents(&examples_dir().join("agent.yaml")).remove(0);
    doc["spec"]["bogus"] = Value::from(1);
    let crd = all_crds().remove(0);
    let admitted = CrdValidator::new(&crd).expect("compiles").admit("v1alpha1", &doc, None).expect("admitted");
    assert_eq!(admitted.unknown_fields, vec!["spec.bogus".to_owned()]);
    assert!(admitted.object["spec"].get("bogus").is_none());
}

#[test]
fn an_agent_may_change_owner_but_not_region() {
    let old = admit(&documents(&examples_dir().join("agent.yaml")).remove(0), None).expect("valid");
    let mut transfer = old.clone();
    transfer["spec"]["owner"] = Value::from("acct_9c2e");
    assert!(admit(&transfer, Some(&old)).is_ok(), "an owner change on an Agent is a transfer, not an error");
    let mut moved = old.clone();
    moved["spec"]["region"] = Value::from("eu");
    let causes = admit(&moved, Some(&old)).expect_err("region change refused");
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].field, "spec.region");
    assert_eq!(
        causes[0].message,
        "Invalid value: \"string\": spec.region is immutable: an Agent stays in the region it was created in"
    );
}

#[test]
fn nested_defaults_fill_an_absent_tunnel() {
    let doc = documents(&examples_dir().join("agent-eu-stopped.yaml")).remove(0);
    let object = admit(&doc, None).expect("valid");
    assert_eq!(object["spec"]["tunnel"]["service"], "http://localhost:8080");
    assert_eq!(object["spec"]["serverType"], "cpx22");
    assert_eq!(object["spec"]["running"], false);
}
