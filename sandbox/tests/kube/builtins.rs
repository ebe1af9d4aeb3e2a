//! Built-in kinds a Helm chart renders (Deployment, Service, ServiceAccount, RBAC, ConfigMap,
//! Secret, PodDisruptionBudget, NetworkPolicy) through real kubectl 1.32: stored and validated
//! as a real API server does, server-side apply with list merge keys, conflicts between
//! managers, `--force-conflicts`, removal of what a manager stopped applying, and client-side
//! apply's strategic merge patches.

use std::path::Path;

use serde_json::{Value, json};

use super::common::{Sandbox, kubectl_132, start};

fn deployment(env: &[(&str, &str)], image: &str) -> String {
    let env: Vec<Value> = env.iter().map(|(n, v)| json!({"name": n, "value": v})).collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "app", "image": image, "env": env,
                    "ports": [{"name": "http", "containerPort": 8080}]
                }]}
            }
        }
    })
    .to_string()
}

async fn apply_file(sb: &Sandbox, kubectl: &Path, name: &str, body: &str, args: &[&str]) -> super::common::Run {
    let path = sb.dir.path().join(name);
    std::fs::write(&path, body).expect("write manifest");
    let file = path.to_string_lossy().into_owned();
    let mut all = vec!["apply", "-f", file.as_str()];
    all.extend_from_slice(args);
    sb.kubectl_run(kubectl, &all).await
}

async fn get_json(sb: &Sandbox, kubectl: &Path, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    serde_json::from_str(&sb.kubectl(kubectl, &args).await).expect("kubectl prints JSON")
}

fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_owned(),
                e["operation"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn env_of(d: &Value) -> Vec<(String, String)> {
    d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (e["name"].as_str().unwrap_or_default().to_owned(), e["value"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_side_apply_of_a_deployment_merges_lists_by_key() {
    let sb = start().await;
    let kubectl = kubectl_132();

    let run =
        apply_file(&sb, &kubectl, "web.json", &deployment(&[("A", "1"), ("B", "2")], "web:1"), &["--server-side"])
            .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("deployment.apps/web serverside-applied"), "{}", run.stdout);
    let d = get_json(&sb, &kubectl, &["deployment", "web"]).await;
    assert_eq!(managers(&d), [("kubectl".to_owned(), "Apply".to_owned())]);
    let fields = &d["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
    let app = &fields["k:{\"name\":\"app\"}"];
    assert!(app["f:env"]["k:{\"name\":\"B\"}"]["f:value"].is_object(), "env owned per entry: {fields}");
    assert!(
        app["f:ports"]["k:{\"containerPort\":8080,\"protocol\":\"TCP\"}"].is_object(),
        "ports by containerPort+protocol: {fields}"
    );
    // Defaults a real server applies, unowned.
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(d["metadata"]["generation"], 1);

    // A second manager adds an env entry of its own: merged by name, no conflict.
    let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "C", "value": "3"}]}]}}}});
    let run =
        apply_file(&sb, &kubectl, "other.json", &other.to_string(), &["--server-side", "--field-manager=ops"]).await;
    assert!(run.ok, "{}", run.stderr);
    let d = get_json(&sb, &kubectl, &["deployment", "web"]).await;
    assert_eq!(env_of(&d).len(), 3, "{:?}", env_of(&d));

    // ...but a different image is a conflict with the manager that owns it.
    let steal = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:evil", "env": [{"name": "C", "value": "3"}]}]}}}});
    let run =
        apply_file(&sb, &kubectl, "steal.json", &steal.to_string(), &["--server-side", "--field-manager=ops"]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("conflict with \"kubectl\""), "{}", run.stderr);
    assert!(run.stderr.contains(".spec.template.spec.containers[name=\"app\"].image"), "{}", run.stderr);
    let d = get_json(&sb, &kubectl, &["deployment", "web"]).await;
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "web:1", "a refused apply changes nothing");

    // --force-conflicts takes the field over.
    let run = apply_file(
        &sb,
        &kubectl,
        "steal.json",
        &steal.to_string(),
        &["--server-side", "--field-manager=ops", "--force-conflicts"],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let d = get_json(&sb, &kubectl, &["deployment", "web"]).await;
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "web:evil");
    let kubectl_entry =
        d["metadata"]["managedFields"].as_array().into_iter().flatten().find(|e| e["manager"] == "kubectl").cloned();
    let kubectl_app = kubectl_entry
        .map(|e| e["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"].clone());
    assert!(kubectl_app.is_some_and(|a| a.get("f:image").is_none()), "kubectl lost the image");

    // The first manager stops applying env B (and the image it no longer owns): B goes, C
    // (owned by ops) stays, A stays.
    let run = apply_file(&sb, &kubectl, "web.json", &deployment(&[("A", "1")], "web:evil"), &["--server-side"]).await;
    assert!(run.ok, "{}", run.stderr);
    let d = get_json(&sb, &kubectl, &["deployment", "web"]).await;
    let names: Vec<String> = env_of(&d).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["A", "C"]);
    assert_eq!(d["metadata"]["generation"], 4, "every spec change counted: {}", d["metadata"]);

    // kubectl get renders the kind's columns.
    let table = sb.kubectl(&kubectl, &["get", "deployments"]).await;
    assert!(table.contains("UP-TO-DATE") && table.contains("web"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_side_apply_of_built_ins_uses_strategic_merge() {
    let sb = start().await;
    let kubectl = kubectl_132();
    let service = |ports: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": ports}})
        .to_string()
    };
    let two = json!([{"name": "http", "port": 80, "targetPort": "http"}, {"name": "metrics", "port": 9090}]);
    let run = apply_file(&sb, &kubectl, "svc.json", &service(two), &[]).await;
    assert!(run.ok, "{}", run.stderr);
    let s = get_json(&sb, &kubectl, &["service", "web"]).await;
    let ip = s["spec"]["clusterIP"].as_str().unwrap_or_default().to_owned();
    assert!(ip.starts_with("10.96."), "a cluster IP is allocated: {s}");
    assert_eq!(s["spec"]["type"], "ClusterIP");
    assert_eq!(s["spec"]["ports"][1]["targetPort"], 9090, "targetPort defaults to port");

    // Drop the metrics port, change the http port's target: kubectl sends a strategic merge
    // patch with a `$patch: delete` item and `$setElementOrder/ports`.
    let one = json!([{"name": "http", "port": 80, "targetPort": 8080}]);
    let run = apply_file(&sb, &kubectl, "svc.json", &service(one), &[]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("service/web configured"), "{}", run.stdout);
    let s = get_json(&sb, &kubectl, &["service", "web"]).await;
    assert_eq!(s["spec"]["ports"], json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]));
    assert_eq!(s["spec"]["clusterIP"], ip.as_str(), "the allocated address survives the update");
    let run =
        apply_file(&sb, &kubectl, "svc.json", &service(json!([{"name": "http", "port": 80, "targetPort": 8080}])), &[])
            .await;
    assert!(run.stdout.contains("service/web unchanged"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_built_ins_are_refused_with_the_field_named() {
    let sb = start().await;
    let kubectl = kubectl_132();
    let refused = |body: Value, name: &'static str| {
        let sb = &sb;
        let kubectl = &kubectl;
        async move {
            let run = apply_file(sb, kubectl, name, &body.to_string(), &["--server-side"]).await;
            assert!(!run.ok, "{name} was accepted");
            run.stderr
        }
    };
    let mut d: Value = serde_json::from_str(&deployment(&[], "web:1")).unwrap_or_default();
    d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
    let err = refused(d, "mismatch.json").await;
    assert!(err.contains("`selector` does not match template `labels`"), "{err}");

    let mut d: Value = serde_json::from_str(&deployment(&[], "web:1")).unwrap_or_default();
    d["spec"]["template"]["spec"]["containers"][0]["bogus"] = json!(true);
    let err = refused(d, "unknown.json").await;
    assert!(err.contains("unknown field \"spec.template.spec.containers[0].bogus\""), "{err}");

    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"]}]});
    let err = refused(role, "role.json").await;
    assert!(err.contains("rules[0].verbs: Required value"), "{err}");

    let binding = |role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "default"}]})
    };
    let run = apply_file(&sb, &kubectl, "rb.json", &binding("r1").to_string(), &["--server-side"]).await;
    assert!(run.ok, "{}", run.stderr);
    let err = refused(binding("r2"), "rb.json").await;
    assert!(err.contains("cannot change roleRef"), "{err}");

    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "p", "namespace": "default"},
        "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}});
    let err = refused(pdb, "pdb.json").await;
    assert!(err.contains("minAvailable and maxUnavailable cannot be both set"), "{err}");

    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
        "spec": {"ports": [{"port": 70000}]}});
    let err = refused(svc, "svc.json").await;
    assert!(err.contains("spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"), "{err}");

    // A ServiceMonitor needs its CRD, as on a real cluster.
    let monitor = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m", "namespace": "default"}, "spec": {}});
    let err = refused(monitor, "monitor.json").await;
    assert!(err.contains("ServiceMonitor") || err.contains("could not find the requested resource"), "{err}");
}
