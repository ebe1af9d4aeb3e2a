//! A chart release on the real control plane, as the chart tests drive it: helm 4 runs as the
//! admin, the Pod a Deployment's template would make, and the operator binary run outside the
//! cluster exactly as a Deployment's container would run it (its ServiceAccount, args and
//! environment), with its log kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::kube_server::{ControlPlane, KubectlRun, run_kubectl};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart() -> PathBuf {
    repo().join("charts/crabglamp-operator")
}

/// What one helm run printed.
pub struct HelmRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs helm 4 ($HELM) as the admin, with its caches and config in `home` (never the user's).
pub fn helm(plane: &ControlPlane, home: &Path, args: &[&str]) -> HelmRun {
    let helm = std::env::var_os("HELM").filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("HELM is not set: this test runs the real helm 4 (scripts/test installs it and exports HELM)")
    });
    let out = std::process::Command::new(&helm)
        .args(args)
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", PathBuf::from(&helm).display()));
    HelmRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn helm_ok(plane: &ControlPlane, home: &Path, args: &[&str]) -> HelmRun {
    let run = helm(plane, home, args);
    assert!(run.ok, "helm {} failed: {}{}", args.join(" "), run.stderr, run.stdout);
    run
}

pub fn kubectl_json(plane: &ControlPlane, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&plane.kubectl(&all, None)).expect("kubectl prints JSON")
}

/// Polls `check` until it answers `Ok`; after `deadline`, panics with `what` and its last `Err`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() > deadline => panic!("{what}: not within {deadline:?}; last: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn resource(kind: &str) -> ApiResource {
    ApiResource {
        group: "crabglamp.com".into(),
        version: "v1alpha1".into(),
        api_version: "crabglamp.com/v1alpha1".into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    }
}

pub fn condition<'a>(object: &'a DynamicObject, kind: &str) -> Option<&'a Value> {
    object.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// A Pod made of a Deployment's pod template, as the ReplicaSet controller would create it.
pub fn pod_from_template(deployment: &Value, name: &str) -> Value {
    let template = &deployment["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": deployment["metadata"]["namespace"], "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    })
}

/// The command line and environment the Deployment's container would run with: its args
/// (the image's entrypoint is the binary), with `--kubeconfig` standing in for the in-cluster
/// service account mount and the metrics address on loopback (a pod has its own network;
/// this host may have 8080 taken); its env, with `fieldRef`s answered as the downward API
/// would for a pod named `pod_name` and `secretKeyRef`s read from the Secrets in the cluster
/// as the kubelet would.
pub fn container_launch(
    plane: &ControlPlane,
    deployment: &Value,
    kubeconfig: &Path,
    pod_name: &str,
) -> (Vec<String>, Vec<(String, String)>) {
    let namespace = deployment["metadata"]["namespace"].as_str().expect("the Deployment's namespace");
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "the chart runs one container");
    let container = &containers[0];
    assert!(container.get("command").is_none(), "the container overrides the image's entrypoint");
    let args: Vec<String> =
        container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("arg").to_owned()).collect();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    let mut command = vec!["run".to_owned(), "--kubeconfig".to_owned(), kubeconfig.display().to_string()];
    for arg in &args[1..] {
        if arg.starts_with("--metrics-addr=") {
            command.push("--metrics-addr=127.0.0.1:0".to_owned());
        } else {
            command.push(arg.clone());
        }
    }
    let mut env = Vec::new();
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => pod_name.to_owned(),
                "metadata.namespace" => namespace.to_owned(),
                other => panic!("{name}: the test does not answer fieldRef {other}"),
            }
        } else if let Some(reference) = var["valueFrom"].get("secretKeyRef") {
            let secret_name = reference["name"].as_str().expect("secretKeyRef name");
            let key = reference["key"].as_str().expect("secretKeyRef key");
            let secret = kubectl_json(plane, &["get", "secret", secret_name, "-n", namespace]);
            let encoded = secret["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: Secret {secret_name} has no key {key}: the pod would not start"));
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("Secret data is base64");
            String::from_utf8(bytes).expect("Secret value is UTF-8")
        } else {
            panic!("{name}: an env source the test does not resolve: {}", var["valueFrom"]);
        };
        env.push((name, value));
    }
    (command, env)
}

/// A kubeconfig holding `token` (what a pod of the release would mount), its namespace the
/// release's.
pub fn token_kubeconfig(plane: &ControlPlane, token: &str, namespace: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {"server": plane.server, "certificate-authority": plane.ca_file}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "operator", "namespace": namespace}}],
        "current-context": "testenv",
    })
    .to_string()
}

/// A request URI without its query.
pub fn path_of(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

/// The operator binary running as a Deployment's container would, its log lines kept.
pub struct ContainerRun {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl ContainerRun {
    /// Starts `crabglamp-operator` with these args and nothing of this test's environment:
    /// the Deployment's environment alone must do.
    pub fn spawn(args: &[String], env: &[(String, String)]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"))
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("crabglamp-operator starts");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = Arc::clone(&lines);
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                sink.lock().expect("log lines").push(line);
            }
        });
        ContainerRun { child, lines, reader }
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.lines.lock().expect("log lines").join("\n")
    }

    /// Where it serves /metrics, /healthz and /readyz (from its JSON log), once it does.
    pub async fn endpoints_addr(&self) -> String {
        eventually(Duration::from_secs(60), "the operator logs where it serves", || async {
            let seen = self.logs();
            seen.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["fields"]["message"] == "serving /metrics, /healthz and /readyz")
                .and_then(|l| l["fields"]["addr"].as_str().map(str::to_owned))
                .ok_or(seen)
        })
        .await
    }

    /// SIGTERM as the kubelet sends it; asserts that it drains and exits cleanly, and returns
    /// its whole log.
    pub async fn terminate(mut self) -> String {
        let pid = self.child.id().expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait");
        let _ = self.reader.await;
        let logs = self.lines.lock().expect("log lines").join("\n");
        assert!(status.success(), "the operator exited with {status}:\n{logs}");
        logs
    }
}

/// The `kubectl` the tests run as the admin ($KUBECTL, or the one on PATH).
pub fn kubectl_path() -> PathBuf {
    PathBuf::from(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
}

/// A namespace enforcing the restricted Pod Security Standard. Enforcement judges Pods only;
/// `warn` also judges a Deployment's template, so helm prints a template that breaks it.
pub fn create_restricted_namespace(plane: &ControlPlane, name: &str) {
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        }},
    });
    plane.kubectl(&["create", "-f", "-"], Some(&namespace.to_string()));
}

/// A Secret holding `data` (as its `stringData`), made before the release that reads it.
pub fn create_secret(plane: &ControlPlane, namespace: &str, name: &str, data: Value) {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    });
    plane.kubectl(&["create", "-f", "-"], Some(&secret.to_string()));
}

/// The real server's judgement of creating `object` (a server-side dry run: admission
/// included, PodSecurity among it).
pub fn dry_run(plane: &ControlPlane, object: &Value) -> KubectlRun {
    run_kubectl(
        &kubectl_path(),
        &plane.kubeconfig,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&object.to_string()),
    )
}

/// `helm uninstall`, then waits until no object of `manifest` (the release's, from `helm get
/// manifest`) is left.
pub async fn uninstall(plane: &ControlPlane, home: &Path, release: &str, namespace: &str, manifest: &str) {
    helm_ok(plane, home, &["uninstall", release, "-n", namespace]);
    eventually(Duration::from_secs(60), "the release's objects are gone", || async {
        let args = ["get", "-f", "-", "--ignore-not-found", "-o", "name"];
        let run = run_kubectl(&kubectl_path(), &plane.kubeconfig, &args, Some(manifest));
        if run.ok && run.stdout.trim().is_empty() { Ok(()) } else { Err(format!("{}{}", run.stdout, run.stderr)) }
    })
    .await;
}
