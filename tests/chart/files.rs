//! The chart's files: CRDs identical to the generated ones, `helm lint` clean with default and
//! with every value set, the version it packages, the optional objects behind their switches.

use super::helm::{self, chart_dir, full_values, one};
use crabglamp_testkit::repo;

#[test]
fn chart_crds_are_byte_identical_to_the_generated_ones() {
    let top = repo().join("crds");
    let mut names: Vec<String> = std::fs::read_dir(&top)
        .expect("crds/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut in_chart: Vec<String> = std::fs::read_dir(chart_dir().join("crds"))
        .expect("charts/crabglamp-operator/crds/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    in_chart.sort();
    assert_eq!(in_chart, names, "the chart's crds/ must hold exactly the files of crds/");
    assert_eq!(names.len(), crabglamp_operator::api::all_crds().len());
    for name in names {
        let a = std::fs::read(top.join(&name)).expect("read crd");
        let b = std::fs::read(chart_dir().join("crds").join(&name)).expect("read chart crd");
        assert!(
            a == b,
            "charts/crabglamp-operator/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/crabglamp-operator/crds/"
        );
    }
}

#[test]
fn helm_is_version_4_and_lints_default_and_full_values() {
    let version = helm::run(&["version", "--short"]).expect("helm version");
    assert!(version.starts_with("v4."), "helm 4 expected, got {version}");
    for (what, files) in [("default values", vec![]), ("ci/full-values.yaml", vec![full_values()])] {
        let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
        let out = helm::lint(&refs, &[]).unwrap_or_else(|e| panic!("helm lint with {what} failed:\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{what}: {out}");
    }
}

#[test]
fn chart_packages_this_version_of_the_operator() {
    let chart: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml parses");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"), "appVersion follows Cargo.toml");
    let deployment = one(&helm::defaults(), "Deployment").clone();
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().expect("image");
    assert!(image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))), "{image}");
}

#[test]
fn optional_objects_follow_their_switches() {
    let kinds = |objects: &[serde_json::Value]| {
        let mut k: Vec<String> = objects.iter().map(|o| o["kind"].as_str().unwrap_or_default().to_owned()).collect();
        k.sort();
        k
    };
    assert_eq!(
        kinds(&helm::defaults()),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            // The release namespace's, and kube-system's (the installation is derived from it).
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    // A named installation needs no read of kube-system.
    let full = helm::full();
    assert_eq!(
        kinds(&full),
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    let dashboard = one(&full, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    let json = dashboard["data"]["crabglamp-operator.json"].as_str().expect("dashboard JSON");
    let parsed: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let monitor = one(&full, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
}

#[test]
fn deployment_takes_settings_from_values_and_credentials_from_existing_secrets() {
    let deployment = one(&helm::full(), "Deployment").clone();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
    assert_eq!(
        args,
        [
            "run",
            "--log-format=text",
            "--metrics-addr=0.0.0.0:9090",
            "--drain-seconds=30",
            "--leader-election",
            "--lease-name=crabglamp-eu-leader",
            "--installation=prod-eu",
            "--shard=eu-1",
            "--watch-namespace=team-a",
            "--virtual-key-namespaces=team-a"
        ]
    );
    let env = container["env"].as_array().expect("env");
    let by_name = |n: &str| env.iter().find(|e| e["name"] == n).unwrap_or_else(|| panic!("no {n} in env"));
    for (name, secret, key) in [
        ("HCLOUD_TOKEN", "hcloud-eu-1", "token"),
        ("CLOUDFLARE_API_TOKEN", "cloudflare", "api-token"),
        ("DATABASE_URL", "crabglamp-db", "url"),
        ("CRABGLAMP_SEALING_KEY", "crabglamp-sealing", "current"),
        ("CRABGLAMP_SEALING_PREVIOUS_KEYS", "crabglamp-sealing", "previous"),
        ("REDIS_URL", "llm-proxy-redis", "url"),
    ] {
        let e = by_name(name);
        assert!(e.get("value").is_none(), "{name} must never be a plain value");
        assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], secret, "{name}");
        assert_eq!(e["valueFrom"]["secretKeyRef"]["key"], key, "{name}");
    }
    assert_eq!(by_name("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(by_name("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    for (name, value) in [
        ("CLOUDFLARE_ACCOUNT_ID", "0123456789abcdef0123456789abcdef"),
        ("CLOUDFLARE_ZONE_ID", "fedcba9876543210fedcba9876543210"),
        ("CLOUDFLARE_ZONE_NAME", "agents.example.com"),
        ("HCLOUD_ENDPOINT", "https://api.hetzner.cloud/v1"),
        ("CRABGLAMP_SEALING_KEY_ID", "k2"),
        ("CRABGLAMP_RESYNC_SECONDS", "120"),
        ("CRABGLAMP_HETZNER_REQUESTS_PER_HOUR", "7200"),
        ("RUST_LOG", "crabglamp_operator=debug,kube=info"),
        ("HTTPS_PROXY", "http://proxy.internal:3128"),
    ] {
        assert_eq!(by_name(name)["value"], value, "{name}");
    }
    assert_eq!(container["ports"][0]["name"], "http-metrics");
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    // The operator appends -<shard> to --lease-name: the Role names that Lease.
    let full = helm::full();
    let self_role = full
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == helm::NAMESPACE)
        .expect("the release-namespace Role");
    assert!(
        self_role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r["resources"][0] == "leases"
                && r["resourceNames"] == serde_json::json!(["crabglamp-eu-leader-eu-1"])),
        "{self_role}"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http-metrics");

    // Defaults: JSON logs, the optional credentials left out, two replicas under leader election.
    let deployment = one(&helm::defaults(), "Deployment").clone();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
    assert!(args.contains(&"--log-format=json") && args.contains(&"--leader-election"), "{args:?}");
    assert!(args.contains(&"--metrics-addr=0.0.0.0:8080"), "{args:?}");
    let names: Vec<&str> =
        container["env"].as_array().expect("env").iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(!names.contains(&"REDIS_URL") && !names.contains(&"CRABGLAMP_SEALING_PREVIOUS_KEYS"), "{names:?}");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
}

/// The dotted paths of a values tree's leaves (an empty map or list is a leaf).
fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    match v.as_object() {
        Some(map) if !map.is_empty() => {
            for (k, child) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaves(&path, child, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn the_readme_documents_every_value() {
    let values: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"))
            .expect("values.yaml parses");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("README.md");
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    assert!(paths.len() > 50, "{paths:?}");
    let undocumented: Vec<&String> = paths
        .iter()
        .filter(|p| {
            let mut candidates = vec![format!("| `{p}` |")];
            let parts: Vec<&str> = p.split('.').collect();
            for n in 1..parts.len() {
                let parent = parts[..n].join(".");
                candidates.push(format!("| `{parent}.*` |"));
                candidates.push(format!("| `{parent}` |"));
            }
            !candidates.iter().any(|c| readme.contains(c.as_str()))
        })
        .collect();
    assert!(undocumented.is_empty(), "values missing from the README's table: {undocumented:?}");
}

#[test]
fn shards_render_one_deployment_lease_and_budget_each_with_their_own_account() {
    let sets = [
        "shards[0].name=eu-1",
        "shards[0].existingSecret=crabglamp-shard-eu-1",
        "shards[0].cloudflare.accountId=00000000000000000000000000000001",
        "shards[0].cloudflare.zoneName=agents-1.example.com",
        "shards[1].name=eu-2",
    ];
    let objects = helm::template(&[], &sets).expect("render");
    let of_kind = |kind: &str| objects.iter().filter(|o| o["kind"] == kind).cloned().collect::<Vec<_>>();
    let deployments = of_kind("Deployment");
    let names: Vec<&str> = deployments.iter().filter_map(|d| d["metadata"]["name"].as_str()).collect();
    // The release's full name, as the single Deployment of the defaults carries it.
    let base = one(&helm::defaults(), "Deployment")["metadata"]["name"].as_str().expect("name").to_owned();
    assert_eq!(names, [format!("{base}-eu-1"), format!("{base}-eu-2")]);
    for (deployment, shard) in deployments.iter().zip(["eu-1", "eu-2"]) {
        // Selectors that cannot overlap: each Deployment owns its shard's pods only.
        assert_eq!(deployment["spec"]["selector"]["matchLabels"]["crabglamp.com/shard"], shard);
        assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["crabglamp.com/shard"], shard);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
        assert!(args.contains(&format!("--shard={shard}").as_str()), "{args:?}");
        let env = container["env"].as_array().expect("env");
        let by_name = |n: &str| env.iter().find(|e| e["name"] == n).cloned().unwrap_or_default();
        let token_secret = if shard == "eu-1" { "crabglamp-shard-eu-1" } else { "crabglamp-operator" };
        for name in ["HCLOUD_TOKEN", "CLOUDFLARE_API_TOKEN"] {
            assert_eq!(by_name(name)["valueFrom"]["secretKeyRef"]["name"], token_secret, "{shard} {name}");
        }
        assert_eq!(by_name("DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"], "crabglamp-operator", "shared");
        if shard == "eu-1" {
            assert_eq!(by_name("CLOUDFLARE_ACCOUNT_ID")["value"], "00000000000000000000000000000001");
            assert_eq!(by_name("CLOUDFLARE_ZONE_NAME")["value"], "agents-1.example.com");
        }
    }
    let budgets = of_kind("PodDisruptionBudget");
    assert_eq!(budgets.len(), 2, "one budget per shard's Deployment");
    // Each shard's leader elects on its own Lease: the Role names every one of them.
    let self_role = objects
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == helm::NAMESPACE)
        .expect("the release-namespace Role");
    let leases = self_role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["resources"][0] == "leases" && r.get("resourceNames").is_some())
        .map(|r| r["resourceNames"].clone());
    assert_eq!(leases, Some(serde_json::json!([format!("{base}-eu-1"), format!("{base}-eu-2")])));
    // One shard or several, never both.
    let both = helm::template(&[], &["shard=eu-1", "shards[0].name=eu-2"]).expect_err("shard and shards together");
    assert!(both.contains("set either shard"), "{both}");
}
