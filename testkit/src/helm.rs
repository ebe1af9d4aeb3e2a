//! Runs the real `helm` on the chart and parses what it renders.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The release namespace every render uses: the one the real-server tests install the chart's
/// RBAC into, so both judge the same names.
pub const NAMESPACE: &str = crate::kube_server::RELEASE_NAMESPACE;
/// The release name every render uses (and the real-server tests install under).
pub const RELEASE: &str = crate::kube_server::RELEASE;

/// The helm binary scripts/test installs; a clear failure when it is not set.
pub fn helm() -> PathBuf {
    match std::env::var_os("HELM") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "HELM is not set: these tests run the real helm 4. Run scripts/test (it installs helm with \
             scripts/lib/helm.sh), or `source scripts/lib/services.sh; source scripts/lib/helm.sh; ensure_helm` \
             and export HELM"
        ),
    }
}

pub fn chart_dir() -> PathBuf {
    crate::repo().join("charts/crabglamp-operator")
}

pub fn full_values() -> PathBuf {
    chart_dir().join("ci/full-values.yaml")
}

/// What helm printed: success with standard output, or failure with standard error.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("crabglamp-helm-cache"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm().display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() { Ok(stdout) } else { Err(format!("{stderr}{stdout}")) }
}

fn value_args<'a>(files: &'a [&'a Path], sets: &'a [&'a str]) -> Vec<String> {
    let mut args = Vec::new();
    for f in files {
        args.push("--values".to_owned());
        args.push(f.display().to_string());
    }
    for s in sets {
        args.push("--set".to_owned());
        args.push((*s).to_owned());
    }
    args
}

/// `helm template` with these values files and `--set`s: the rendered objects.
pub fn template(files: &[&Path], sets: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", RELEASE, chart.as_str(), "--namespace", NAMESPACE];
    let extra = value_args(files, sets);
    args.extend(extra.iter().map(String::as_str));
    let text = run(&args)?;
    Ok(documents(&text))
}

/// `helm lint --strict` with these values.
pub fn lint(files: &[&Path], sets: &[&str]) -> Result<String, String> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["lint", "--strict", chart.as_str(), "--namespace", NAMESPACE];
    let extra = value_args(files, sets);
    args.extend(extra.iter().map(String::as_str));
    run(&args)
}

/// The non-empty documents of a YAML stream.
pub fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{text}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The one rendered object of `kind`.
pub fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}, got {}", found.len());
    found[0]
}

/// Renders with default values (panics with helm's message when it fails).
pub fn defaults() -> Vec<Value> {
    template(&[], &[]).unwrap_or_else(|e| panic!("helm template with default values failed:\n{e}"))
}

/// Renders with ci/full-values.yaml.
pub fn full() -> Vec<Value> {
    template(&[&full_values()], &[]).unwrap_or_else(|e| panic!("helm template with full values failed:\n{e}"))
}
