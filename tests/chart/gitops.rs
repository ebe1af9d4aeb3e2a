//! examples/gitops: the Argo CD Applications and the Flux objects point at paths that exist,
//! their Helm values pass the chart's schema and render, and every Agent of the fleet passes
//! admission as the API server would judge it.

use std::path::Path;

use crabglamp_sandbox::admission::CrdValidator;
use serde_json::Value;

use super::helm::{self, documents};
use crabglamp_testkit::repo;

fn gitops() -> std::path::PathBuf {
    repo().join("examples/gitops")
}

fn read(path: &Path) -> Vec<Value> {
    documents(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Renders the chart with `values` (a JSON object) as a values file.
fn renders_with(values: &Value, what: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), serde_json::to_string(values).expect("values")).expect("write values");
    let objects = helm::template(&[file.path()], &[]).unwrap_or_else(|e| panic!("{what}: helm template failed:\n{e}"));
    assert!(objects.iter().any(|o| o["kind"] == "Deployment"), "{what}");
}

#[test]
fn argo_cd_applications_and_flux_objects_deploy_the_chart_and_the_fleet() {
    let operator = read(&gitops().join("argocd/operator.yaml")).remove(0);
    assert_eq!(operator["kind"], "Application");
    let chart_path = operator["spec"]["source"]["path"].as_str().expect("path");
    assert_eq!(repo().join(chart_path), helm::chart_dir());
    renders_with(&operator["spec"]["source"]["helm"]["valuesObject"], "the Argo CD Application's values");
    let agents = read(&gitops().join("argocd/agents.yaml")).remove(0);
    assert_eq!(agents["spec"]["source"]["path"], "examples/gitops/agents");
    let wave = |o: &Value| o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"].as_str().map(str::to_owned);
    assert!(wave(&operator) < wave(&agents), "the Agents sync after the operator");

    let release = read(&gitops().join("flux/operator.yaml")).remove(0);
    assert_eq!(release["kind"], "HelmRelease");
    let chart = release["spec"]["chart"]["spec"]["chart"].as_str().expect("chart");
    assert_eq!(repo().join(chart.trim_start_matches("./")), helm::chart_dir());
    renders_with(&release["spec"]["values"], "the HelmRelease's values");
    let kustomization = read(&gitops().join("flux/agents.yaml")).remove(0);
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["spec"]["path"], "./examples/gitops/agents");
    assert_eq!(kustomization["spec"]["wait"], true);
    let source = read(&gitops().join("flux/source.yaml")).remove(0);
    assert_eq!(source["kind"], "GitRepository");
    assert_eq!(kustomization["spec"]["sourceRef"]["name"], source["metadata"]["name"]);
    assert_eq!(release["spec"]["chart"]["spec"]["sourceRef"]["name"], source["metadata"]["name"]);
}

#[test]
fn every_agent_of_the_fleet_passes_admission() {
    let dir = gitops().join("agents");
    let kustomization = read(&dir.join("kustomization.yaml")).remove(0);
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file").to_owned())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("agents/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest of the directory");
    let crd =
        crabglamp_operator::api::all_crds().into_iter().find(|c| c.spec.names.kind == "Agent").expect("Agent CRD");
    let validator = CrdValidator::new(&crd).expect("the CRD compiles");
    let namespace = kustomization["namespace"].as_str().expect("namespace");
    let mut agents = 0;
    for file in &listed {
        for mut doc in read(&dir.join(file)).into_iter().filter(|d| d["kind"] == "Agent") {
            doc["metadata"]["namespace"] = namespace.into();
            validator.admit("v1alpha1", &doc, None).unwrap_or_else(|causes| panic!("{file} refused: {causes:?}"));
            agents += 1;
        }
    }
    assert!(agents >= 3, "a fleet, not one Agent");
}
