//! A real `helm` binary (path in `HELM`) against the sandbox: install, upgrade with changed
//! values, rollback and uninstall of a chart of the built-in kinds a chart renders, checking
//! what the API server holds after each step; and `helm template` of the project's chart
//! applied to the sandbox (`kubectl apply --dry-run=server`, then for real), the validation CI
//! runs on the rendered manifests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::common::{Run, Sandbox, kubectl_132, repo, start};

/// helm from `HELM`; the test fails with directions when it is missing.
fn helm() -> PathBuf {
    let path = std::env::var("HELM").unwrap_or_else(|_| {
        panic!("HELM is not set: point it at a helm binary (scripts/test sets it; e.g. HELM=/root/.cache/helm-venv/bin/helm)")
    });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "HELM={} is not a file", path.display());
    path
}

async fn helm_run(sb: &Sandbox, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(helm());
    cmd.args(args)
        .arg("--kubeconfig")
        .arg(&sb.kubeconfig)
        .env("HOME", sb.dir.path())
        .env("HELM_CACHE_HOME", sb.dir.path().join("helm-cache"))
        .env("HELM_CONFIG_HOME", sb.dir.path().join("helm-config"))
        .env("HELM_DATA_HOME", sb.dir.path().join("helm-data"))
        .env_remove("KUBECONFIG")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("helm {args:?} did not finish within 120 s"))
        .expect("helm runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn helm_ok(sb: &Sandbox, args: &[&str]) -> String {
    let run = helm_run(sb, args).await;
    assert!(run.ok, "helm {args:?} failed:\nstdout: {}\nstderr: {}", run.stdout, run.stderr);
    run.stdout
}

const CHART_YAML: &str = "apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: \"1.0\"\n";

const VALUES: &str = r#"replicas: 1
image: demo:1.0
logLevel: info
extraEnv: true
pdb:
  enabled: false
networkPolicy:
  enabled: false
"#;

const TEMPLATES: &[(&str, &str)] = &[
    (
        "configmap.yaml",
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
  labels: {app: {{ .Release.Name }}}
data:
  level: {{ .Values.logLevel | quote }}
"#,
    ),
    (
        "secret.yaml",
        r#"apiVersion: v1
kind: Secret
metadata:
  name: {{ .Release.Name }}-token
type: Opaque
stringData:
  token: not-a-real-token
"#,
    ),
    (
        "serviceaccount.yaml",
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .Release.Name }}
"#,
    ),
    (
        "rbac.yaml",
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .Release.Name }}
rules:
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .Release.Name }}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: {{ .Release.Name }}}
subjects:
  - {kind: ServiceAccount, name: {{ .Release.Name }}, namespace: {{ .Release.Namespace }}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .Release.Name }}:agents
rules:
  - apiGroups: [crabglamp.com]
    resources: [agents, agents/status]
    verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .Release.Name }}:agents
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "{{ .Release.Name }}:agents"}
subjects:
  - {kind: ServiceAccount, name: {{ .Release.Name }}, namespace: {{ .Release.Namespace }}}
"#,
    ),
    (
        "service.yaml",
        r#"apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {app: {{ .Release.Name }}}
  ports:
    - {name: http, port: 80, targetPort: http}
"#,
    ),
    (
        "deployment.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {app: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      serviceAccountName: {{ .Release.Name }}
      containers:
        - name: app
          image: {{ .Values.image }}
          env:
            - {name: LOG_LEVEL, value: {{ .Values.logLevel | quote }}}
            {{- if .Values.extraEnv }}
            - {name: EXTRA, value: "yes"}
            {{- end }}
            - name: NAMESPACE
              valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            httpGet: {path: /readyz, port: http}
          volumeMounts:
            - {name: config, mountPath: /etc/demo}
      volumes:
        - name: config
          configMap: {name: {{ .Release.Name }}-config}
"#,
    ),
    (
        "pdb.yaml",
        r#"{{- if .Values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .Release.Name }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {app: {{ .Release.Name }}}
{{- end }}
"#,
    ),
    (
        "networkpolicy.yaml",
        r#"{{- if .Values.networkPolicy.enabled }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .Release.Name }}
spec:
  podSelector:
    matchLabels: {app: {{ .Release.Name }}}
  ingress:
    - ports: [{port: 8080}]
  egress:
    - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
{{- end }}
"#,
    ),
];

/// The demo chart, written into the sandbox's temp dir.
fn demo_chart(sb: &Sandbox) -> PathBuf {
    let dir = sb.dir.path().join("demo");
    std::fs::create_dir_all(dir.join("templates")).expect("chart dir");
    std::fs::write(dir.join("Chart.yaml"), CHART_YAML).expect("Chart.yaml");
    std::fs::write(dir.join("values.yaml"), VALUES).expect("values.yaml");
    for (name, body) in TEMPLATES {
        std::fs::write(dir.join("templates").join(name), body).expect("template");
    }
    dir
}

async fn get(sb: &Sandbox, kubectl: &Path, what: &str, ns: &str) -> Option<Value> {
    let run = sb.kubectl_run(kubectl, &["get", what, "-n", ns, "-o", "json", "--show-managed-fields"]).await;
    if !run.ok {
        assert!(run.stderr.contains("NotFound") || run.stderr.contains("not found"), "get {what}: {}", run.stderr);
        return None;
    }
    Some(serde_json::from_str(&run.stdout).expect("JSON"))
}

/// Names and `status` labels of the release's Secrets, by revision.
async fn releases(sb: &Sandbox, kubectl: &Path, ns: &str) -> Vec<(String, String)> {
    let list = sb.kubectl(kubectl, &["get", "secrets", "-n", ns, "-l", "owner=helm", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&list).expect("JSON");
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            assert_eq!(s["type"], "helm.sh/release.v1");
            let name = s["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            (name, s["metadata"]["labels"]["status"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    out.sort();
    out
}

fn env_of(d: &Value) -> Vec<String> {
    d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}={}", e["name"].as_str().unwrap_or_default(), e["value"].as_str().unwrap_or("<from>")))
        .collect()
}

fn has_manager(object: &Value, manager: &str, operation: &str) -> bool {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["manager"] == manager && e["operation"] == operation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_upgrade_rollback_uninstall() {
    let helm_path = helm();
    let sb = start().await;
    let kubectl = kubectl_132();
    let chart = demo_chart(&sb);
    let chart = chart.to_string_lossy().into_owned();
    let version = helm_ok(&sb, &["version", "--short"]).await;
    // Helm 4 applies server-side, Helm 3 creates and patches: both as manager `helm` (Helm 3's
    // from its User-Agent).
    let (manager, operation) = if version.starts_with("v3.") { ("helm", "Update") } else { ("helm", "Apply") };
    eprintln!("helm {} at {}", version.trim(), helm_path.display());
    sb.kubectl(&kubectl, &["create", "namespace", "demo"]).await;

    helm_ok(&sb, &["install", "demo", &chart, "-n", "demo"]).await;
    assert_eq!(
        releases(&sb, &kubectl, "demo").await,
        [("sh.helm.release.v1.demo.v1".to_owned(), "deployed".to_owned())]
    );
    let d = get(&sb, &kubectl, "deployment/demo", "demo").await.expect("deployment installed");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(env_of(&d), ["LOG_LEVEL=info", "EXTRA=yes", "NAMESPACE=<from>"]);
    assert!(has_manager(&d, manager, operation), "{}", d["metadata"]["managedFields"]);
    for what in [
        "service/demo",
        "serviceaccount/demo",
        "role/demo",
        "rolebinding/demo",
        "configmap/demo-config",
        "secret/demo-token",
    ] {
        let o = get(&sb, &kubectl, what, "demo").await.unwrap_or_else(|| panic!("{what} installed"));
        assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm", "{what}");
        assert_eq!(o["metadata"]["annotations"]["meta.helm.sh/release-name"], "demo", "{what}");
    }
    assert!(get(&sb, &kubectl, "clusterrole/demo:agents", "demo").await.is_some());
    assert!(get(&sb, &kubectl, "clusterrolebinding/demo:agents", "demo").await.is_some());
    assert!(get(&sb, &kubectl, "poddisruptionbudget/demo", "demo").await.is_none());

    helm_ok(
        &sb,
        &[
            "upgrade",
            "demo",
            &chart,
            "-n",
            "demo",
            "--set",
            "replicas=3",
            "--set",
            "logLevel=debug",
            "--set",
            "extraEnv=false",
            "--set",
            "pdb.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
        ],
    )
    .await;
    assert_eq!(
        releases(&sb, &kubectl, "demo").await,
        [
            ("sh.helm.release.v1.demo.v1".to_owned(), "superseded".to_owned()),
            ("sh.helm.release.v1.demo.v2".to_owned(), "deployed".to_owned())
        ]
    );
    let d = get(&sb, &kubectl, "deployment/demo", "demo").await.expect("deployment");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(env_of(&d), ["LOG_LEVEL=debug", "NAMESPACE=<from>"], "EXTRA removed, LOG_LEVEL changed in place");
    assert_eq!(d["metadata"]["generation"], 2);
    let cm = get(&sb, &kubectl, "configmap/demo-config", "demo").await.expect("configmap");
    assert_eq!(cm["data"]["level"], "debug");
    let pdb = get(&sb, &kubectl, "poddisruptionbudget/demo", "demo").await.expect("PDB after upgrade");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let np = get(&sb, &kubectl, "networkpolicy/demo", "demo").await.expect("NetworkPolicy after upgrade");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]), "defaulted by the server");

    helm_ok(&sb, &["rollback", "demo", "1", "-n", "demo"]).await;
    let revisions = releases(&sb, &kubectl, "demo").await;
    assert_eq!(revisions.len(), 3, "{revisions:?}");
    assert_eq!(revisions[2], ("sh.helm.release.v1.demo.v3".to_owned(), "deployed".to_owned()));
    let d = get(&sb, &kubectl, "deployment/demo", "demo").await.expect("deployment");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(env_of(&d), ["LOG_LEVEL=info", "EXTRA=yes", "NAMESPACE=<from>"]);
    assert!(get(&sb, &kubectl, "poddisruptionbudget/demo", "demo").await.is_none(), "rollback removes the PDB");
    assert!(get(&sb, &kubectl, "networkpolicy/demo", "demo").await.is_none(), "rollback removes the NetworkPolicy");

    helm_ok(&sb, &["uninstall", "demo", "-n", "demo"]).await;
    assert!(releases(&sb, &kubectl, "demo").await.is_empty());
    for what in [
        "deployment/demo",
        "service/demo",
        "serviceaccount/demo",
        "role/demo",
        "rolebinding/demo",
        "configmap/demo-config",
        "secret/demo-token",
    ] {
        assert!(get(&sb, &kubectl, what, "demo").await.is_none(), "{what} uninstalled");
    }
    assert!(get(&sb, &kubectl, "clusterrole/demo:agents", "demo").await.is_none());
}

/// A ServiceMonitor CRD (prometheus-operator's kind, open schema): the chart's optional
/// ServiceMonitor only applies where one is installed, as on a real cluster.
fn service_monitor_crd() -> String {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor", "listKind": "ServiceMonitorList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    })
    .to_string()
}

/// Renders `chart` with `values` (if any) and applies the output, dry run first: every
/// refusal fails the test with kubectl's message.
async fn validate_rendering(sb: &Sandbox, kubectl: &Path, chart: &Path, values: Option<&Path>, extra: &[&str]) -> Run {
    let chart_arg = chart.to_string_lossy().into_owned();
    let mut args = vec!["template", "rel", chart_arg.as_str(), "--namespace", "rel-ns"];
    let values_arg = values.map(|v| v.to_string_lossy().into_owned());
    if let Some(v) = &values_arg {
        args.extend_from_slice(&["-f", v.as_str()]);
    }
    args.extend_from_slice(extra);
    let rendered = helm_ok(sb, &args).await;
    let file = sb.dir.path().join(format!("rendered-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, &rendered).expect("write rendering");
    // Namespaces the rendering names must exist, as they would on the target cluster.
    for line in rendered.lines() {
        if let Some(ns) = line.trim().strip_prefix("namespace: ") {
            let ns = ns.trim_matches('"');
            let _ = sb.kubectl_run(kubectl, &["create", "namespace", ns]).await;
        }
    }
    let file = file.to_string_lossy().into_owned();
    // No `-n`: every object goes where the rendering says (kubectl refuses a mismatch).
    let dry = sb.kubectl_run(kubectl, &["apply", "--dry-run=server", "-f", &file]).await;
    if !dry.ok {
        return dry;
    }
    sb.kubectl_run(kubectl, &["apply", "--server-side", "-f", &file]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rendered_charts_are_accepted_by_the_api_server() {
    helm();
    let sb = start().await;
    let kubectl = kubectl_132();
    sb.kubectl(&kubectl, &["create", "namespace", "rel-ns"]).await;
    let crd = sb.dir.path().join("servicemonitor-crd.json");
    std::fs::write(&crd, service_monitor_crd()).expect("write CRD");
    sb.kubectl(&kubectl, &["apply", "-f", &crd.to_string_lossy()]).await;
    sb.kubectl(&kubectl, &["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com"]).await;

    let demo = demo_chart(&sb);
    let run = validate_rendering(
        &sb,
        &kubectl,
        &demo,
        None,
        &["--set", "pdb.enabled=true", "--set", "networkPolicy.enabled=true"],
    )
    .await;
    assert!(run.ok, "the demo chart is refused:\n{}", run.stderr);
    // The check can fail: a rendering the API server must refuse is refused.
    let run = validate_rendering(&sb, &kubectl, &demo, None, &["--set", "replicas=-1"]).await;
    assert!(!run.ok && run.stderr.contains("spec.replicas: Invalid value: -1"), "{}", run.stderr);

    // The project's chart, with default values and with every value set.
    let chart = repo().join("charts/crabglamp-operator");
    if chart.is_dir() {
        let run = validate_rendering(&sb, &kubectl, &chart, None, &[]).await;
        assert!(run.ok, "charts/crabglamp-operator (default values) is refused:\n{}", run.stderr);
        let full = chart.join("ci/full-values.yaml");
        let run = validate_rendering(&sb, &kubectl, &chart, Some(&full), &[]).await;
        assert!(run.ok, "charts/crabglamp-operator (ci/full-values.yaml) is refused:\n{}", run.stderr);
    } else {
        eprintln!("charts/crabglamp-operator is not in this tree yet: only the demo chart was validated");
    }
}
