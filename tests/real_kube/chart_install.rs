//! The chart on the real server: `helm install` (helm 4, server-side apply) puts the chart and
//! its own `crds/` into a fresh namespace that enforces the restricted Pod Security Standard;
//! the real PodSecurity admission plugin admits a Pod made of the installed Deployment's pod
//! template, with no warning, and refuses a copy that breaks the profile; `helm upgrade`,
//! `helm rollback` and `helm history` work on the release. The operator binary, run outside the
//! cluster as the release's ServiceAccount with exactly the arguments and environment the
//! installed Deployment gives its container (Secret references resolved as the kubelet would),
//! converges `examples/` and lets their finalizers go, while the real authorizer refuses it
//! nothing (no 403 for that account in the audit log). `helm uninstall` then removes every
//! object of the release and leaves the CRDs, as Helm promises.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use crabglamp_sandbox::cloudflare::{self as cfsim, CloudflareSimConfig};
use crabglamp_sandbox::hetzner::{self as hzsim, ActionDurations, HetznerSimConfig};
use kube::api::{Api, DynamicObject};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

use super::release::*;
use crate::db::TestDb;
use crate::kube_server::{ControlPlane, KubeServer, run_kubectl};

/// Not `crabglamp-operator`: the tests' fixture applies the chart's RBAC under that release name
/// in namespace `crabglamp`, and this release must own every object it creates.
const RELEASE: &str = "cg";
const NAMESPACE: &str = "cg-system";
/// The Secret the chart reads every credential from by default (`secrets.*.existingSecret`).
const SECRET: &str = "crabglamp-operator";
const ZONE: &str = "agents.example.com";
/// The namespace of examples/virtualkey.yaml: the chart's Secret access is there only.
const VIRTUAL_KEY_NAMESPACE: &str = "team-a";
/// The binary has no flag for its Redis key namespace (always `cgk:`, what the proxy reads), so
/// this test gives it a Redis database of its own instead: other tests share database 0, each
/// under a key namespace of its own.
const REDIS_DB: u32 = 11;
/// The pod name the downward API would give the container (`POD_NAME`).
const POD_NAME: &str = "cg-crabglamp-operator-5d8f7c9b6-x2x7q";

/// If the test fails between deleting the CRDs and helm installing them, the next tests of
/// this binary still find them (from `crds/`, as the control plane installed them).
struct CrdsBack<'a>(&'a ControlPlane);

impl Drop for CrdsBack<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let crds = repo().join("crds").display().to_string();
            let args = ["apply", "--server-side", "--force-conflicts", "-f", &crds];
            let _ = run_kubectl(&kubectl_path(), &self.0.kubeconfig, &args, None);
        }
    }
}

/// One object of `examples/`.
#[derive(Debug, Clone)]
struct Example {
    kind: String,
    namespace: String,
    name: String,
    file: PathBuf,
}

/// The objects in `examples/*.yaml` (not the subdirectories: gitops and invalid manifests).
fn examples() -> Vec<Example> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read example");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let object = Value::deserialize(doc).expect("example parses");
            if object.is_null() {
                continue;
            }
            out.push(Example {
                kind: object["kind"].as_str().unwrap_or_default().to_owned(),
                namespace: object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                name: object["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                file: file.clone(),
            });
        }
    }
    out
}

fn redis_url() -> String {
    let base = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut url = url::Url::parse(&base).expect("REDIS_URL is a URL");
    url.set_path(&format!("/{REDIS_DB}"));
    url.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_installs_upgrades_rolls_back_and_uninstalls_and_its_operator_converges_the_examples() {
    let server = KubeServer::real().await;
    let KubeServer::Real(real) = &server else { unreachable!("KubeServer::real") };
    let plane = real.plane;
    let admin = server.client();
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path();

    // The clouds and the database the release will be configured for. Tokens are random, so
    // the logs can be searched for them.
    let hz_token = format!("hz-{}", uuid::Uuid::new_v4().simple());
    let cf_token = format!("cf-{}", uuid::Uuid::new_v4().simple());
    let sealing_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let hz_config = HetznerSimConfig {
        token: hz_token.clone(),
        durations: ActionDurations::uniform(Duration::from_millis(100)),
        ..HetznerSimConfig::default()
    };
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let hetzner = hzsim::spawn(hz_config, listener().await).await.expect("Hetzner simulator");
    let cf_config =
        CloudflareSimConfig { token: cf_token.clone(), zone_name: ZONE.into(), ..CloudflareSimConfig::default() };
    let cloudflare = cfsim::spawn(cf_config.clone(), listener().await).await.expect("Cloudflare simulator");
    // The sandbox plays cloudflared on the booted servers, so the Agents' tunnels connect.
    let cloudflared = crabglamp_sandbox::stack::cloudflared::start(
        hetzner.handle(),
        cloudflare.handle(),
        1.0,
        Duration::from_millis(100),
    );
    // Migrated first, with the owner's role, as the chart's README says.
    let db = TestDb::fresh().await;

    // (1) The chart with its own CRDs: the control plane installed `crds/` when it started, so
    // take them away (no object of ours exists at the start of a turn) to install as a first
    // `helm install` on a new cluster does. Helm 4 applies `crds/` server-side even over
    // existing CRDs, so a stale copy in the chart would fail either way.
    let crd_names: Vec<String> = {
        let mut names: Vec<String> = std::fs::read_dir(chart().join("crds"))
            .expect("the chart's crds/")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".yaml").map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    assert_eq!(crd_names.len(), 3, "{crd_names:?}");
    let crds_back = CrdsBack(plane);
    let mut delete = vec!["delete", "crd", "--wait=true"];
    delete.extend(crd_names.iter().map(String::as_str));
    plane.kubectl(&delete, None);

    create_restricted_namespace(plane, NAMESPACE);
    // The examples' namespace, where their VirtualKey lives: the chart's Secret Role goes there,
    // so it exists before the install (as the README asks).
    plane.kubectl(&["create", "namespace", VIRTUAL_KEY_NAMESPACE], None);
    // The chart never holds a secret: the credentials' Secret comes first (its values are
    // the simulators', this test's database and Redis database, and a fresh sealing key).
    create_secret(
        plane,
        NAMESPACE,
        SECRET,
        json!({
            "HCLOUD_TOKEN": hz_token,
            "CLOUDFLARE_API_TOKEN": cf_token,
            "DATABASE_URL": db.url,
            "CRABGLAMP_SEALING_KEY": sealing_key,
            "REDIS_URL": redis_url(),
        }),
    );

    let chart_path = chart().display().to_string();
    let sets = [
        format!("config.hcloudEndpoint={}", hetzner.base_url),
        format!("config.cloudflare.endpoint={}", cloudflare.base_url),
        format!("config.cloudflare.accountId={}", cf_config.account_id),
        format!("config.cloudflare.zoneId={}", cf_config.zone_id),
        format!("config.cloudflare.zoneName={ZONE}"),
        // Test timings (seconds-long runs), set as a user would set them: through the chart.
        "config.fastPollMs=200".to_owned(),
        "config.resyncSeconds=3".to_owned(),
        format!("secrets.redisUrl.existingSecret={SECRET}"),
        format!("virtualKeys.namespaces={{{VIRTUAL_KEY_NAMESPACE}}}"),
    ];
    let mut install = vec!["install", RELEASE, chart_path.as_str(), "-n", NAMESPACE, "--server-side=true"];
    for set in &sets {
        install.extend(["--set", set.as_str()]);
    }
    // No --wait: this control plane has no nodes, so the pods are never scheduled.
    let installed = helm_ok(plane, home, &install);
    assert!(installed.stdout.contains("STATUS: deployed"), "{}", installed.stdout);
    // Helm prints the server's warnings: the namespace's `warn` label would show a template
    // that breaks the profile here.
    assert!(!installed.stderr.contains("PodSecurity"), "helm install warned:\n{}", installed.stderr);
    // The CRDs are back, established, and put there by helm from the chart's crds/.
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s", "crd"];
    wait.extend(crd_names.iter().map(String::as_str));
    plane.kubectl(&wait, None);
    for name in &crd_names {
        let crd = kubectl_json(plane, &["get", "crd", name, "--show-managed-fields"]);
        let appliers: Vec<&str> = crd["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .filter(|f| f["operation"] == "Apply")
            .filter_map(|f| f["manager"].as_str())
            .collect();
        assert_eq!(appliers, ["helm"], "{name}: not (only) applied by helm");
    }
    drop(crds_back);
    // Every object of the release exists, applied server-side by helm.
    let manifest = helm_ok(plane, home, &["get", "manifest", RELEASE, "-n", NAMESPACE]).stdout;
    let live: Value = serde_json::from_str(
        &plane.kubectl(&["get", "-f", "-", "-o", "json", "--show-managed-fields"], Some(&manifest)),
    )
    .expect("kubectl prints JSON");
    let live = live["items"].as_array().cloned().unwrap_or_else(|| vec![live.clone()]);
    let kinds: Vec<&str> = live.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in ["Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service"]
    {
        assert!(kinds.contains(&kind), "the release has no {kind}: {kinds:?}");
    }
    for object in &live {
        let by_helm = object["metadata"]["managedFields"]
            .as_array()
            .is_some_and(|fields| fields.iter().any(|f| f["manager"] == "helm" && f["operation"] == "Apply"));
        assert!(by_helm, "{} {}: not server-side applied by helm", object["kind"], object["metadata"]["name"]);
    }

    // (2) The pod the Deployment would create, judged by the real PodSecurity admission in the
    // restricted namespace (a Deployment's template is only warned about, never enforced: the
    // Pod is what enforcement sees).
    let deployment_name = live
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .and_then(|o| o["metadata"]["name"].as_str())
        .expect("Deployment name")
        .to_owned();
    let deployment = kubectl_json(plane, &["get", "deployment", &deployment_name, "-n", NAMESPACE]);
    let kubectl = kubectl_path();
    let dry_run = |pod: &Value| dry_run(plane, pod);
    let pod = pod_from_template(&deployment, "pss-probe");
    let admitted = dry_run(&pod);
    assert!(admitted.ok, "the real server refuses the chart's pod: {}{}", admitted.stderr, admitted.stdout);
    assert!(admitted.stdout.contains("created (server dry run)"), "{}", admitted.stdout);
    assert!(
        !admitted.stderr.contains("PodSecurity") && !admitted.stderr.contains("Warning"),
        "the chart's pod draws a warning: {}",
        admitted.stderr
    );
    // The same check refuses a pod that breaks the profile, so its success above means something.
    // (A privileged container never reaches PodSecurity here: this kube-apiserver runs with
    // --allow-privileged=false and its validation refuses it first.)
    let mut as_root = pod.clone();
    as_root["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
    let mut escalating = pod.clone();
    escalating["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    for (broken, rule) in [(as_root, "runAsNonRoot != true"), (escalating, "allowPrivilegeEscalation != false")] {
        let refused = dry_run(&broken);
        assert!(!refused.ok, "PodSecurity admitted a pod with {rule}: {}", refused.stdout);
        assert!(
            refused.stderr.contains("violates PodSecurity \"restricted:latest\"") && refused.stderr.contains(rule),
            "expected the PodSecurity refusal for {rule}, got: {}",
            refused.stderr
        );
    }

    // (3) Upgrade (a value changes the pod template), roll back to the first revision, and the
    // history shows all three.
    let rust_log = |deployment: &Value| -> Option<String> {
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == "RUST_LOG")
            .and_then(|v| v["value"].as_str().map(str::to_owned))
    };
    assert_eq!(rust_log(&deployment), None, "logLevel is empty by default");
    let upgrade = ["upgrade", RELEASE, &chart_path, "-n", NAMESPACE, "--server-side=true", "--reuse-values"];
    helm_ok(plane, home, &[&upgrade[..], &["--set", "logLevel=debug"]].concat());
    let upgraded = kubectl_json(plane, &["get", "deployment", &deployment_name, "-n", NAMESPACE]);
    assert_eq!(rust_log(&upgraded).as_deref(), Some("debug"), "the upgrade did not reach the Deployment");
    helm_ok(plane, home, &["rollback", RELEASE, "1", "-n", NAMESPACE, "--server-side=true"]);
    let deployment = kubectl_json(plane, &["get", "deployment", &deployment_name, "-n", NAMESPACE]);
    assert_eq!(rust_log(&deployment), None, "the rollback left the upgrade's RUST_LOG");
    assert!(
        deployment["metadata"]["generation"].as_i64() > upgraded["metadata"]["generation"].as_i64(),
        "the rollback did not change the Deployment"
    );
    let history: Value =
        serde_json::from_str(&helm_ok(plane, home, &["history", RELEASE, "-n", NAMESPACE, "-o", "json"]).stdout)
            .expect("helm history JSON");
    let revisions: Vec<(i64, String, String)> = history
        .as_array()
        .expect("history list")
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (r["revision"].as_i64().unwrap_or_default(), text("status"), text("description"))
        })
        .collect();
    assert_eq!(
        revisions,
        [
            (1, "superseded".to_owned(), "Install complete".to_owned()),
            (2, "superseded".to_owned(), "Upgrade complete".to_owned()),
            (3, "deployed".to_owned(), "Rollback to 1".to_owned()),
        ],
        "helm history"
    );

    // (4) The operator as the release's pods would run it: the Deployment's ServiceAccount (a
    // token as the kubelet would project one), args and environment, after the rollback.
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"].as_str().expect("serviceAccountName");
    let user = format!("system:serviceaccount:{NAMESPACE}:{account}");
    let token = plane.kubectl(&["create", "token", account, "-n", NAMESPACE, "--duration", "1h"], None);
    let kubeconfig = home.join("operator.kubeconfig");
    std::fs::write(&kubeconfig, token_kubeconfig(plane, token.trim(), NAMESPACE)).expect("write kubeconfig");
    // One request the account may not make, so the audit check below is shown to see this
    // account's refusals: it must be the only 403 in the end.
    let probe = run_kubectl(Path::new(&kubectl), &kubeconfig, &["get", "pods", "-n", NAMESPACE, "-o", "name"], None);
    assert!(!probe.ok && probe.stderr.contains("Forbidden"), "the account may list pods: {}", probe.stderr);
    let probe_request = format!("list /api/v1/namespaces/{NAMESPACE}/pods");

    let (args, env) = container_launch(plane, &deployment, &kubeconfig, POD_NAME);
    for name in ["HCLOUD_TOKEN", "CLOUDFLARE_API_TOKEN", "DATABASE_URL", "CRABGLAMP_SEALING_KEY", "REDIS_URL"] {
        assert!(env.iter().any(|(n, _)| n == name), "the Deployment does not give the operator {name}");
    }
    let operator = ContainerRun::spawn(&args, &env);
    // The chart asks for JSON lines; the endpoints' address is in one of them.
    let addr = operator.endpoints_addr().await;
    // The Deployment's probes answer 200 on the running binary.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("HTTP client");
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().expect("probe path").to_owned();
        let url = format!("http://{addr}{path}");
        eventually(Duration::from_secs(60), &format!("the {probe} ({path}) passes"), || {
            let request = http.get(&url);
            async move {
                match request.send().await {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!("{}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
    }

    let examples = examples();
    let objects: Vec<&Example> =
        examples.iter().filter(|e| ["Agent", "PlainVM", "VirtualKey"].contains(&e.kind.as_str())).collect();
    for kind in ["Agent", "PlainVM", "VirtualKey"] {
        assert!(objects.iter().any(|e| e.kind == kind), "examples/ holds no {kind}");
    }
    let dir_arg = repo().join("examples").display().to_string();
    plane.kubectl(&["apply", "--server-side", "-f", &dir_arg], None);
    let api = |e: &Example| Api::<DynamicObject>::namespaced_with(admin.clone(), &e.namespace, &resource(&e.kind));
    // A refusal is the likeliest reason for an example never to turn Ready: say so at once.
    let forbidden = || -> Vec<String> {
        server
            .audit_events()
            .into_iter()
            .filter(|e| e.user.username == user && e.code() == 403)
            .map(|e| format!("{} {}", e.verb, path_of(&e.request_u_r_i)))
            .filter(|r| *r != probe_request)
            .collect()
    };
    eventually(Duration::from_secs(120), "every example Ready", || async {
        let refused = forbidden();
        assert!(refused.is_empty(), "the real server refused {user}: {refused:#?}");
        let mut waiting = Vec::new();
        for e in &objects {
            let object = api(e).get_opt(&e.name).await.map_err(|err| err.to_string())?;
            if object.as_ref().and_then(|o| condition(o, "Ready")).is_none_or(|c| c["status"] != "True") {
                let status = object.map(|o| o.data["status"].clone()).unwrap_or_default();
                waiting.push(format!("{} {}/{}: status {status}", e.kind, e.namespace, e.name));
            }
        }
        if waiting.is_empty() { Ok(()) } else { Err(waiting.join("; ")) }
    })
    .await;

    // The VirtualKey's key reached its Secret and the Redis of the chart's REDIS_URL.
    let key = objects.iter().find(|e| e.kind == "VirtualKey").expect("a VirtualKey");
    let vk = api(key).get(&key.name).await.expect("VirtualKey");
    let secret_name = vk.data["spec"]["secretName"].as_str().expect("secretName");
    let key_secret = kubectl_json(plane, &["get", "secret", secret_name, "-n", &key.namespace]);
    let plaintext = base64::engine::general_purpose::STANDARD
        .decode(key_secret["data"]["apiKey"].as_str().expect("the Secret holds the key"))
        .expect("base64");
    let auth_key = format!("cgk:auth:{}", hex::encode(sha2::Sha256::digest(&plaintext)));
    let mut redis = redis::Client::open(redis_url())
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis connects");
    let entry: Option<String> = redis.get(&auth_key).await.expect("Redis GET");
    let uid = vk.metadata.uid.clone().expect("uid");
    assert!(
        entry.as_deref().is_some_and(|e| e.contains(&uid)),
        "no auth entry for the VirtualKey in Redis database {REDIS_DB}"
    );

    // Deleting the examples: the operator's finalizers let them go (the namespace last, so no
    // object is ever written in a terminating namespace).
    let mut files: Vec<String> = objects.iter().map(|e| e.file.display().to_string()).collect();
    files.dedup();
    let mut delete = vec!["delete", "--wait=false"];
    for file in &files {
        delete.extend(["-f", file.as_str()]);
    }
    plane.kubectl(&delete, None);
    eventually(Duration::from_secs(120), "the examples are gone", || async {
        let mut left = Vec::new();
        for e in &objects {
            if api(e).get_opt(&e.name).await.map_err(|err| err.to_string())?.is_some() {
                left.push(format!("{} {}/{}", e.kind, e.namespace, e.name));
            }
        }
        if left.is_empty() { Ok(()) } else { Err(left.join(", ")) }
    })
    .await;
    let entry: Option<String> = redis.get(&auth_key).await.expect("Redis GET");
    assert_eq!(entry, None, "the deleted VirtualKey's key is still published");
    // What the proxy's contract leaves behind (spend counters, restore markers) expires by
    // itself; this test's go now.
    let leftovers: Vec<String> = redis.keys(format!("cgk:*{uid}*")).await.expect("Redis KEYS");
    if !leftovers.is_empty() {
        let _: () = redis.del(leftovers).await.expect("Redis DEL");
    }

    // SIGTERM as the kubelet sends it: the operator drains and exits cleanly.
    let logs = operator.terminate().await;
    for (what, secret) in [("Hetzner token", &hz_token), ("Cloudflare token", &cf_token), ("sealing key", &sealing_key)]
    {
        assert!(!logs.contains(secret.as_str()), "the operator logged the {what}");
    }
    plane.kubectl(&["delete", "namespace", "team-a", "--wait=false", "--ignore-not-found"], None);

    // The real authorizer refused the operator nothing: the only 403 of its account is the probe.
    let events: Vec<_> = server.audit_events().into_iter().filter(|e| e.user.username == user).collect();
    let refused: Vec<String> = events
        .iter()
        .filter(|e| e.code() == 403)
        .map(|e| format!("{} {}", e.verb, path_of(&e.request_u_r_i)))
        .collect();
    assert_eq!(refused, std::slice::from_ref(&probe_request), "403s for {user}");
    // And the log holds the operator's work, so the check above looked at something.
    for plural in ["agents", "plainvms", "virtualkeys"] {
        let patched_status = events.iter().any(|e| {
            e.verb == "patch"
                && e.object_ref
                    .as_ref()
                    .is_some_and(|o| o.resource == plural && o.subresource.as_deref() == Some("status"))
        });
        assert!(patched_status, "no status patch of {plural} by {user} in the audit log");
    }
    assert!(
        events.iter().any(|e| e.object_ref.as_ref().is_some_and(|o| o.resource == "leases")),
        "the operator never touched its Lease"
    );

    // (5) Uninstall: every object of the release goes; the CRDs stay (Helm never deletes them).
    uninstall(plane, home, RELEASE, NAMESPACE, &manifest).await;
    let releases = helm_ok(plane, home, &["list", "-n", NAMESPACE, "-q"]).stdout;
    assert!(releases.trim().is_empty(), "helm still lists: {releases}");
    // Its history went with it (no --keep-history).
    let history = helm(plane, home, &["history", RELEASE, "-n", NAMESPACE]);
    assert!(!history.ok && history.stderr.contains("not found"), "{}{}", history.stdout, history.stderr);
    let mut get_crds = vec!["get", "crd", "-o", "name"];
    get_crds.extend(crd_names.iter().map(String::as_str));
    let kept = plane.kubectl(&get_crds, None);
    assert_eq!(kept.lines().count(), crd_names.len(), "uninstall took CRDs: {kept}");

    cloudflared.abort();
    let _ = hetzner.shutdown().await;
    let _ = cloudflare.shutdown().await;
}
