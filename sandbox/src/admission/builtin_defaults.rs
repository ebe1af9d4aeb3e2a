//! The defaults kube-apiserver's `SetDefaults_*` give the built-in kinds the sandbox
//! validates, the ones clients read back (a Deployment's strategy, a Service's ClusterIP
//! policy, a Pod template's restart and DNS policy...).

use serde_json::{Value, json};

/// The defaults of kube-apiserver's `SetDefaults_*` that clients read back.
pub(super) fn defaults(kind: &str, object: &mut Value, old: Option<&Value>) {
    if matches!(kind, "RoleBinding" | "ClusterRoleBinding")
        && let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut)
    {
        for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
            let group = if s.get("kind") == Some(&json!("ServiceAccount")) { "" } else { "rbac.authorization.k8s.io" };
            s.entry("apiGroup").or_insert(json!(group));
        }
    }
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let mut set = |key: &str, value: Value| {
        spec.entry(key.to_owned()).or_insert(value);
    };
    match kind {
        "Deployment" => {
            set("replicas", json!(1));
            set("revisionHistoryLimit", json!(10));
            set("progressDeadlineSeconds", json!(600));
            set("strategy", json!({}));
            if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                strategy.entry("type").or_insert(json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let rolling = strategy.entry("rollingUpdate").or_insert(json!({}));
                    if let Some(r) = rolling.as_object_mut() {
                        r.entry("maxSurge").or_insert(json!("25%"));
                        r.entry("maxUnavailable").or_insert(json!("25%"));
                    }
                }
            }
            if let Some(pod) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                pod_defaults(pod);
            }
        }
        "Service" => service_defaults(spec, old),
        "NetworkPolicy" => {
            if !spec.contains_key("policyTypes") {
                let mut types = vec![json!("Ingress")];
                if spec.get("egress").and_then(Value::as_array).is_some() {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
            for direction in ["ingress", "egress"] {
                let Some(rules) = spec.get_mut(direction).and_then(Value::as_array_mut) else { continue };
                for ports in rules.iter_mut().filter_map(|r| r.get_mut("ports")).filter_map(Value::as_array_mut) {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        port.entry("protocol").or_insert(json!("TCP"));
                    }
                }
            }
        }
        _ => {}
    }
}

fn pod_defaults(pod: &mut Value) {
    let Some(spec) = pod.as_object_mut() else { return };
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
    ] {
        spec.entry(k).or_insert(v);
    }
    for list in ["containers", "initContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut)
        {
            c.entry("terminationMessagePath").or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let tag = image.rsplit('/').next().unwrap_or_default();
            let latest = !image.contains('@') && tag.split_once(':').is_none_or(|(_, t)| t == "latest");
            c.entry("imagePullPolicy").or_insert(json!(if latest { "Always" } else { "IfNotPresent" }));
            for port in
                c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut)
            {
                port.entry("protocol").or_insert(json!("TCP"));
            }
            for env in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(field_ref) = env.pointer_mut("/valueFrom/fieldRef").and_then(Value::as_object_mut) {
                    field_ref.entry("apiVersion").or_insert(json!("v1"));
                }
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) else { continue };
                for (k, v) in
                    [("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)]
                {
                    p.entry(k).or_insert(json!(v));
                }
                if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                    get.entry("scheme").or_insert(json!("HTTP"));
                }
            }
        }
    }
}

fn service_defaults(spec: &mut serde_json::Map<String, Value>, old: Option<&Value>) {
    spec.entry("type").or_insert(json!("ClusterIP"));
    let external_name = spec.get("type") == Some(&json!("ExternalName"));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    // An update that leaves the allocated address out keeps it, as the real server does.
    let old_spec = old.and_then(|o| o.get("spec"));
    for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        if !spec.contains_key(key)
            && let Some(v) = old_spec.and_then(|s| s.get(key))
        {
            spec.insert(key.into(), v.clone());
        }
    }
    if !external_name {
        if spec.get("clusterIP").and_then(Value::as_str).is_none_or(str::is_empty) {
            // Any free-looking address of the default service range (10.96.0.0/12).
            let n = uuid::Uuid::new_v4().as_u128();
            let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, (n & 0xfd) + 2);
            spec.insert("clusterIP".into(), json!(ip));
        }
        let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
        spec.entry("clusterIPs").or_insert(json!([ip]));
        if ip != json!("None") {
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
        }
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        spec.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
    }
    for port in
        spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut)
    {
        port.entry("protocol").or_insert(json!("TCP"));
        if let Some(p) = port.get("port").cloned() {
            port.entry("targetPort").or_insert(p);
        }
    }
}
