//! The `crabglamp-sandbox` command end to end: it starts, applies `examples/`, writes
//! its kubeconfig and info file, serves real kubectl, and stops on Ctrl-C (SIGINT).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{clear_proxies, kubectl_132, repo};

async fn kubectl(kubeconfig: &std::path::Path, cache: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(kubectl_132())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(cache.join(uuid::Uuid::new_v4().simple().to_string()))
            .args(args)
            .current_dir(repo())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl finished in time")
    .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A GET on the sandbox's Hetzner endpoint with its token (what `hcloud` would show).
async fn hetzner_get(info: &serde_json::Value, path: &str) -> serde_json::Value {
    let base = info["hcloud_endpoint"].as_str().expect("hcloud_endpoint").trim_end_matches('/');
    let token = info["hcloud_token"].as_str().expect("hcloud_token");
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("Hetzner answers")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_command_applies_examples_and_serves_kubectl() {
    clear_proxies();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("sandbox.kubeconfig");
    let info = dir.path().join("sandbox.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-sandbox"))
        .arg("--apply")
        .arg("examples/")
        .arg("--time-scale")
        .arg("20")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--info")
        .arg(&info)
        .arg("--env-file")
        .arg(dir.path().join("sandbox.env"))
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sandbox starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Press Ctrl-C") {
                return;
            }
        }
        panic!("the sandbox exited early:\n{banner}");
    })
    .await
    .unwrap_or_else(|_| panic!("the sandbox did not come up in time"));
    assert!(banner.contains("Controllers: running in this process"), "{banner}");
    assert!(banner.contains("agent/research-bot applied"), "{banner}");

    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info).expect("info file")).expect("JSON");
    for key in [
        "kubeconfig",
        "hcloud_endpoint",
        "hcloud_token",
        "cloudflare_endpoint",
        "cloudflare_token",
        "cloudflare_account_id",
        "cloudflare_zone_id",
        "cloudflare_zone_name",
        "database_url",
        "redis_url",
        "sealing_key",
        "sealing_key_id",
    ] {
        assert!(info.get(key).and_then(|v| v.as_str()).is_some_and(|v| !v.is_empty()), "{key} missing in {info}");
    }
    let env_file = std::fs::read_to_string(dir.path().join("sandbox.env")).expect("env file");
    for name in ["KUBECONFIG", "DATABASE_URL", "HCLOUD_TOKEN", "CLOUDFLARE_API_TOKEN", "CRABGLAMP_SEALING_KEY"] {
        assert!(env_file.lines().any(|l| l.starts_with(&format!("{name}='"))), "{name} missing in {env_file}");
    }

    let cache = dir.path();
    let (ok, out, err) = kubectl(&kubeconfig, cache, &["get", "agents", "-n", "team-a"]).await;
    assert!(ok && out.contains("research-bot"), "{out}{err}");
    let (ok, out, err) = kubectl(&kubeconfig, cache, &["apply", "-f", "examples/"]).await;
    if !out.contains("research-bot unchanged") {
        let (_, live, _) =
            kubectl(&kubeconfig, cache, &["get", "agent", "research-bot", "-n", "team-a", "-o", "json"]).await;
        let (_, verbose, verr) = kubectl(&kubeconfig, cache, &["apply", "-f", "examples/agent.yaml", "-v=8"]).await;
        panic!("{out}{err}\nlive: {live}\nverbose: {verbose}{verr}");
    }
    assert!(ok, "{out}{err}");
    assert!(!err.contains("missing the kubectl.kubernetes.io/last-applied-configuration"), "{err}");
    let (ok, _, err) =
        kubectl(&kubeconfig, cache, &["apply", "-f", "examples/invalid/agent-unknown-region.yaml"]).await;
    assert!(!ok && err.contains("supported values"), "{err}");

    // From here on the sandbox's output is drained by a task, so a full pipe never blocks it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The controllers make the example Agent real: Ready, with its IP and hostname in the table.
    let (ok, out, err) = kubectl(
        &kubeconfig,
        cache,
        &["wait", "--for=condition=Ready", "agent/research-bot", "-n", "team-a", "--timeout=120s"],
    )
    .await;
    assert!(ok, "kubectl wait: {out}{err}");
    let (ok, out, err) = kubectl(&kubeconfig, cache, &["get", "agents", "-n", "team-a"]).await;
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    for column in ["REGION", "PHASE", "SERVER-IP", "HOSTNAME"] {
        assert!(header.contains(column), "{column} missing: {out}");
    }
    let row = out.lines().find(|l| l.starts_with("research-bot")).unwrap_or_default().to_owned();
    assert!(row.contains("Running") && row.contains("research-bot.agents.example.com"), "{out}");
    assert!(row.split_whitespace().any(|w| w.parse::<std::net::Ipv4Addr>().is_ok()), "no IPv4 in {row}");

    // Stopping is a patch; the server goes off.
    let (ok, _, err) = kubectl(
        &kubeconfig,
        cache,
        &["patch", "agent", "research-bot", "-n", "team-a", "--type=merge", "-p", r#"{"spec":{"running":false}}"#],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(
        &kubeconfig,
        cache,
        &["wait", "--for=jsonpath={.status.server.status}=off", "agent/research-bot", "-n", "team-a", "--timeout=120s"],
    )
    .await;
    assert!(ok, "the server did not stop: {out}{err}");

    // A region change is refused by the API server with the rule's message.
    let (ok, _, err) = kubectl(
        &kubeconfig,
        cache,
        &["patch", "agent", "research-bot", "-n", "team-a", "--type=merge", "-p", r#"{"spec":{"region":"eu"}}"#],
    )
    .await;
    assert!(!ok && err.contains("spec.region is immutable"), "{err}");

    // The example PlainVM: Ready, one server in hel1 behind one firewall with the spec's rules.
    let (ok, out, err) = kubectl(
        &kubeconfig,
        cache,
        &["wait", "--for=condition=Ready", "plainvm/build-box", "-n", "team-a", "--timeout=120s"],
    )
    .await;
    assert!(ok, "kubectl wait plainvm: {out}{err}");
    let selector = "?label_selector=crabglamp.com/kind%3Dplainvm";
    let servers = hetzner_get(&info, &format!("/servers{selector}")).await;
    let servers = servers["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["location"]["name"], "hel1", "{servers:?}");
    let firewalls = hetzner_get(&info, &format!("/firewalls{selector}")).await;
    let firewalls = firewalls["firewalls"].as_array().cloned().unwrap_or_default();
    assert_eq!(firewalls.len(), 1, "{firewalls:?}");
    let fw_id = firewalls[0]["id"].as_i64().expect("firewall id");
    assert_eq!(firewalls[0]["rules"].as_array().map(Vec::len), Some(3), "the example's three rules");
    assert_eq!(firewalls[0]["applied_to"][0]["server"]["id"], servers[0]["id"], "applied to its server");

    // A rule patch changes the same firewall in place.
    let one_rule =
        r#"{"spec":{"firewall":{"inbound":[{"protocol":"tcp","port":"22","sourceIPs":["203.0.113.0/24"]}]}}}"#;
    let (ok, _, err) =
        kubectl(&kubeconfig, cache, &["patch", "plainvm", "build-box", "-n", "team-a", "--type=merge", "-p", one_rule])
            .await;
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(
        &kubeconfig,
        cache,
        &["wait", "--for=jsonpath={.status.firewall.rules}=1", "plainvm/build-box", "-n", "team-a", "--timeout=120s"],
    )
    .await;
    assert!(ok, "the rules did not change: {out}{err}");
    let firewalls = hetzner_get(&info, &format!("/firewalls{selector}")).await;
    assert_eq!(firewalls["firewalls"][0]["id"].as_i64(), Some(fw_id), "the same firewall: {firewalls}");
    assert_eq!(firewalls["firewalls"][0]["rules"].as_array().map(Vec::len), Some(1), "{firewalls}");

    // An owner change is refused with the rule's message.
    let (ok, _, err) = kubectl(
        &kubeconfig,
        cache,
        &["patch", "plainvm", "build-box", "-n", "team-a", "--type=merge", "-p", r#"{"spec":{"owner":"acct_other"}}"#],
    )
    .await;
    assert!(!ok && err.contains("spec.owner is immutable"), "{err}");

    // Delete: no server, no firewall, one plainvm.destroyed row.
    let (ok, vm_uid, err) =
        kubectl(&kubeconfig, cache, &["get", "plainvm", "build-box", "-n", "team-a", "-o", "jsonpath={.metadata.uid}"])
            .await;
    assert!(ok && !vm_uid.is_empty(), "{err}");
    let (ok, out, err) =
        kubectl(&kubeconfig, cache, &["delete", "plainvm", "build-box", "-n", "team-a", "--timeout=120s"]).await;
    assert!(ok, "kubectl delete plainvm: {out}{err}");
    let servers = hetzner_get(&info, &format!("/servers{selector}")).await;
    assert_eq!(servers["servers"].as_array().map(Vec::len), Some(0), "{servers}");
    let firewalls = hetzner_get(&info, &format!("/firewalls{selector}")).await;
    assert_eq!(firewalls["firewalls"].as_array().map(Vec::len), Some(0), "{firewalls}");
    let database_url = info["database_url"].as_str().expect("database_url");
    let vm_pool = crabglamp_operator::store::connect(database_url, 1).await.expect("sandbox database");
    let events = crabglamp_operator::store::audit::events_for_resource(&vm_pool, &vm_uid).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.kind == "plainvm.destroyed").count(), 1, "{events:?}");

    // The activity log shows what kubectl changed.
    let (ok, _, err) =
        kubectl(&kubeconfig, cache, &["label", "agent", "research-bot", "-n", "team-a", "tried=yes"]).await;
    assert!(ok, "{err}");
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = rx.recv().await {
            if line.contains("agent team-a/research-bot applied") {
                return;
            }
        }
        panic!("the sandbox exited early");
    })
    .await
    .unwrap_or_else(|_| panic!("no activity line for the label change"));

    // Delete returns once the finalizer ran; PostgreSQL holds exactly one destroy event for it,
    // and the audit chain verifies.
    let (ok, uid, err) = kubectl(
        &kubeconfig,
        cache,
        &["get", "agent", "research-bot", "-n", "team-a", "-o", "jsonpath={.metadata.uid}"],
    )
    .await;
    assert!(ok && !uid.is_empty(), "{err}");
    let (ok, out, err) =
        kubectl(&kubeconfig, cache, &["delete", "agent", "research-bot", "-n", "team-a", "--timeout=120s"]).await;
    assert!(ok, "kubectl delete: {out}{err}");
    let database_url = info["database_url"].as_str().expect("database_url");
    let pool = crabglamp_operator::store::connect(database_url, 2).await.expect("sandbox database");
    let events = crabglamp_operator::store::audit::events_for_resource(&pool, &uid).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.kind == "agent.destroyed").count(), 1, "{events:?}");
    let report = crabglamp_operator::store::audit::verify_chain(&pool).await.expect("verify");
    assert!(report.first_break.is_none(), "{:?}", report.first_break);

    // The signal goes from Rust: a minimal Debian has no `kill` program (procps).
    let pid = child.id().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT is delivered");
    let exit =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("stops on SIGINT").expect("wait");
    assert!(exit.success(), "sandbox exit status {exit}");
}
