//! The chart's `shards` value on the real server: one release with two shards, each with its own
//! Cloudflare account and zone (the Hetzner project shared, as shards may share one), installs
//! with helm 4 into a namespace that enforces the restricted Pod Security Standard. Each shard
//! has its Deployment and PodDisruptionBudget, and each shard's Pod passes PodSecurity. Both
//! shard operators, run as their Deployments' containers would run them, take their own Leases
//! and reconcile only the Agents labelled with their shard, into their own account; an Agent
//! with no shard label is left to nobody, as the chart's README says; the real authorizer
//! refuses them nothing; `helm uninstall` removes every object of the release.

use std::time::Duration;

use base64::Engine;
use crabglamp_sandbox::cloudflare::{self as cfsim, CloudflareSimConfig};
use crabglamp_sandbox::hetzner::{self as hzsim, ActionDurations, HetznerSimConfig};
use crabglamp_sandbox::http::RunningSim;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};

use super::release::*;
use crate::db::TestDb;
use crate::kube_server::KubeServer;

const RELEASE: &str = "cgs";
const NAMESPACE: &str = "cg-shards";
/// Database URL and sealing key, shared by the shards.
const SHARED_SECRET: &str = "crabglamp-operator";
const SHARDS: [&str; 2] = ["eu-1", "eu-2"];
const AGENT_NAMESPACE: &str = "sharded-agents";
const DEADLINE: Duration = Duration::from_secs(120);

/// One shard's Cloudflare account, as simulated.
struct ShardAccount {
    name: &'static str,
    token: String,
    config: CloudflareSimConfig,
    sim: RunningSim,
    cloudflared: tokio::task::JoinHandle<()>,
}

fn agent(name: &str, shard: Option<&str>) -> Value {
    let mut agent = json!({
        "apiVersion": "crabglamp.com/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name, "namespace": AGENT_NAMESPACE},
        "spec": {"owner": "acct_a", "region": "eu", "serverType": "cpx22", "image": "ubuntu-24.04", "running": true,
                 "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsTestKey ops@example.com"],
                 "tunnel": {"service": "http://localhost:8080"}}
    });
    if let Some(shard) = shard {
        agent["metadata"]["labels"] = json!({"crabglamp.com/shard": shard});
    }
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_release_installs_and_each_shard_reconciles_its_own_agents_in_its_own_account() {
    let server = KubeServer::real().await;
    let KubeServer::Real(real) = &server else { unreachable!("KubeServer::real") };
    let plane = real.plane;
    let admin = server.client();
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path();
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind") };

    // One Hetzner project; one Cloudflare account and zone per shard. Tokens are random, so
    // the logs can be searched for them.
    let hz_token = format!("hz-{}", uuid::Uuid::new_v4().simple());
    let hz_config = HetznerSimConfig {
        token: hz_token.clone(),
        durations: ActionDurations::uniform(Duration::from_millis(100)),
        ..HetznerSimConfig::default()
    };
    let hetzner = hzsim::spawn(hz_config, listener().await).await.expect("Hetzner simulator");
    let mut accounts = Vec::new();
    for (index, name) in SHARDS.into_iter().enumerate() {
        let token = format!("cf-{}", uuid::Uuid::new_v4().simple());
        let config = CloudflareSimConfig {
            token: token.clone(),
            account_id: format!("{:032x}", 0xacc0_0000_u64 + index as u64),
            zone_id: format!("{:032x}", 0x20e0_0000_u64 + index as u64),
            zone_name: format!("{name}.agents.example.com"),
            ..CloudflareSimConfig::default()
        };
        let sim = cfsim::spawn(config.clone(), listener().await).await.expect("Cloudflare simulator");
        // Each account's cloudflared connects the servers whose tunnel token is for it.
        let cloudflared = crabglamp_sandbox::stack::cloudflared::start(
            hetzner.handle(),
            sim.handle(),
            1.0,
            Duration::from_millis(100),
        );
        accounts.push(ShardAccount { name, token, config, sim, cloudflared });
    }
    let db = TestDb::fresh().await;
    let sealing_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());

    create_restricted_namespace(plane, NAMESPACE);
    plane.kubectl(&["create", "namespace", AGENT_NAMESPACE], None);
    // What the shards share, and each shard's own tokens (under the chart's default keys).
    let shared = json!({"DATABASE_URL": db.url, "CRABGLAMP_SEALING_KEY": sealing_key});
    create_secret(plane, NAMESPACE, SHARED_SECRET, shared);
    for account in &accounts {
        let tokens = json!({"HCLOUD_TOKEN": hz_token, "CLOUDFLARE_API_TOKEN": account.token});
        create_secret(plane, NAMESPACE, &format!("shard-{}", account.name), tokens);
    }

    // The release: the shards as a values file, as a user would write it.
    let values = json!({
        "config": {"hcloudEndpoint": hetzner.base_url, "fastPollMs": 200, "resyncSeconds": 3},
        "shards": accounts.iter().map(|a| json!({
            "name": a.name,
            "existingSecret": format!("shard-{}", a.name),
            "cloudflare": {
                "accountId": a.config.account_id,
                "zoneId": a.config.zone_id,
                "zoneName": a.config.zone_name,
                "endpoint": a.sim.base_url,
            },
        })).collect::<Vec<_>>(),
    });
    let values_file = home.join("values.json");
    std::fs::write(&values_file, values.to_string()).expect("write values");
    let chart_path = chart().display().to_string();
    let values_arg = values_file.display().to_string();
    let install = ["install", RELEASE, &chart_path, "-n", NAMESPACE, "--server-side=true", "-f", &values_arg];
    let installed = helm_ok(plane, home, &install);
    assert!(installed.stdout.contains("STATUS: deployed"), "{}", installed.stdout);
    assert!(!installed.stderr.contains("PodSecurity"), "helm install warned:\n{}", installed.stderr);

    // One Deployment and one PodDisruptionBudget per shard, each selecting its shard's pods.
    let manifest = helm_ok(plane, home, &["get", "manifest", RELEASE, "-n", NAMESPACE]).stdout;
    let live: Value = serde_json::from_str(&plane.kubectl(&["get", "-f", "-", "-o", "json"], Some(&manifest)))
        .expect("kubectl prints JSON");
    let live = live["items"].as_array().cloned().unwrap_or_default();
    let of_kind = |kind: &str| live.iter().filter(|o| o["kind"] == kind).cloned().collect::<Vec<_>>();
    let deployments = of_kind("Deployment");
    let budgets = of_kind("PodDisruptionBudget");
    assert_eq!(deployments.len(), SHARDS.len(), "one Deployment per shard");
    assert_eq!(budgets.len(), SHARDS.len(), "one PodDisruptionBudget per shard");
    let shard_of =
        |o: &Value, path: &str| o.pointer(path).and_then(|l| l["crabglamp.com/shard"].as_str()).map(str::to_owned);
    for shard in SHARDS {
        let deployment = deployments
            .iter()
            .find(|d| shard_of(d, "/spec/selector/matchLabels").as_deref() == Some(shard))
            .unwrap_or_else(|| panic!("no Deployment selects shard {shard}"));
        let budget_selects =
            budgets.iter().any(|b| shard_of(b, "/spec/selector/matchLabels").as_deref() == Some(shard));
        assert!(budget_selects, "no PodDisruptionBudget selects shard {shard}");
        // Its Pod, judged by the real PodSecurity admission.
        let name = deployment["metadata"]["name"].as_str().expect("name");
        let deployment = kubectl_json(plane, &["get", "deployment", name, "-n", NAMESPACE]);
        let pod = pod_from_template(&deployment, &format!("pss-{shard}"));
        let admitted = dry_run(plane, &pod);
        assert!(admitted.ok && !admitted.stderr.contains("Warning"), "shard {shard}'s pod: {}", admitted.stderr);
    }

    // Both shards' operators, as their Deployments' containers would run them (one pod each).
    let account_name = deployments[0]["spec"]["template"]["spec"]["serviceAccountName"].as_str().expect("account");
    let user = format!("system:serviceaccount:{NAMESPACE}:{account_name}");
    let token = plane.kubectl(&["create", "token", account_name, "-n", NAMESPACE, "--duration", "1h"], None);
    let kubeconfig = home.join("operator.kubeconfig");
    std::fs::write(&kubeconfig, token_kubeconfig(plane, token.trim(), NAMESPACE)).expect("write kubeconfig");
    let mut operators = Vec::new();
    let mut pods = Vec::new();
    for deployment in &deployments {
        let name = deployment["metadata"]["name"].as_str().expect("name");
        let deployment = kubectl_json(plane, &["get", "deployment", name, "-n", NAMESPACE]);
        let pod = format!("{name}-5d8f7c9b6-x2x7q");
        let (args, env) = container_launch(plane, &deployment, &kubeconfig, &pod);
        operators.push(ContainerRun::spawn(&args, &env));
        pods.push(pod);
    }

    // One Agent per shard, and one with no shard label.
    let agents = [("on-eu-1", Some("eu-1")), ("on-eu-2", Some("eu-2")), ("unlabelled", None)];
    for (name, shard) in agents {
        plane.kubectl(&["create", "-f", "-"], Some(&agent(name, shard).to_string()));
    }
    let api = Api::<DynamicObject>::namespaced_with(admin.clone(), AGENT_NAMESPACE, &resource("Agent"));
    eventually(DEADLINE, "each shard's Agent Ready", || async {
        let mut waiting = Vec::new();
        for (name, _) in &agents[..2] {
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            if condition(&object, "Ready").is_none_or(|c| c["status"] != "True") {
                waiting.push(format!("{name}: {}", object.data["status"]));
            }
        }
        if waiting.is_empty() { Ok(()) } else { Err(waiting.join("; ")) }
    })
    .await;
    // Each shard worked in its own account only: one tunnel and one record in each zone.
    for account in &accounts {
        assert_eq!(cfsim::live_tunnel_names(&account.sim).len(), 1, "shard {}'s account", account.name);
        let records = cfsim::dns_records(&account.sim);
        assert_eq!(records.len(), 1, "shard {}'s zone: {records:?}", account.name);
        assert!(
            records[0].1.starts_with(&format!("on-{}", account.name)),
            "shard {}'s zone: {records:?}",
            account.name
        );
    }
    assert_eq!(hzsim::servers_created(&hetzner), 2, "one server per labelled Agent");
    // Nobody took the unlabelled Agent: no finalizer, no status.
    let unlabelled = api.get("unlabelled").await.expect("unlabelled Agent");
    assert!(unlabelled.metadata.finalizers.as_ref().is_none_or(Vec::is_empty), "a shard took the unlabelled Agent");
    assert!(unlabelled.data.get("status").is_none_or(Value::is_null), "{}", unlabelled.data["status"]);
    // Each shard's operator leads on its own Lease.
    let leases = kubectl_json(plane, &["get", "leases", "-n", NAMESPACE]);
    let holders: Vec<&str> = leases["items"]
        .as_array()
        .expect("leases")
        .iter()
        .filter_map(|l| l["spec"]["holderIdentity"].as_str())
        .collect();
    for pod in &pods {
        assert!(holders.contains(&pod.as_str()), "{pod} holds no Lease: {holders:?}");
    }

    // The labelled Agents go; their shards let their finalizers go.
    for (name, _) in &agents[..2] {
        plane.kubectl(&["delete", "agent", name, "-n", AGENT_NAMESPACE, "--wait=false"], None);
    }
    eventually(DEADLINE, "the labelled Agents gone", || async {
        let mut left = Vec::new();
        for (name, _) in &agents[..2] {
            if api.get_opt(name).await.map_err(|e| e.to_string())?.is_some() {
                left.push(*name);
            }
        }
        if left.is_empty() { Ok(()) } else { Err(left.join(", ")) }
    })
    .await;
    for operator in operators {
        let logs = operator.terminate().await;
        assert!(!logs.contains(&hz_token), "an operator logged the Hetzner token");
        for account in &accounts {
            assert!(!logs.contains(&account.token), "an operator logged shard {}'s Cloudflare token", account.name);
        }
    }
    let refused: Vec<String> = server
        .audit_events()
        .into_iter()
        .filter(|e| e.user.username == user && e.code() == 403)
        .map(|e| format!("{} {}", e.verb, path_of(&e.request_u_r_i)))
        .collect();
    assert!(refused.is_empty(), "the real server refused {user}: {refused:#?}");

    // Uninstall: every object of the release goes.
    uninstall(plane, home, RELEASE, NAMESPACE, &manifest).await;
    // The unlabelled Agent has no finalizer, so its namespace goes with it.
    for namespace in [AGENT_NAMESPACE, NAMESPACE] {
        plane.kubectl(&["delete", "namespace", namespace, "--wait=false", "--ignore-not-found"], None);
    }
    for account in accounts {
        account.cloudflared.abort();
        let _ = account.sim.shutdown().await;
    }
    let _ = hetzner.shutdown().await;
}
