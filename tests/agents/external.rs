//! `crabglamp-operator run`, the production binary, pointed at the sandbox from outside (the
//! sandbox started without its in-process controllers): an Agent turns Ready; the JSON logs
//! carry the object in their span and no token; SIGTERM stops it within a bounded time.

use std::time::Duration;

use crabglamp_sandbox::stack::{Sandbox, SandboxOptions};
use kube::api::PostParams;
use tokio::io::AsyncReadExt;

use super::fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_binary_runs_against_the_sandbox_and_stops_on_sigterm() {
    let mut options = SandboxOptions::default();
    options.hetzner.durations = crabglamp_sandbox::hetzner::ActionDurations::uniform(Duration::from_millis(100));
    let sandbox = Sandbox::start(options).await.expect("sandbox starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sandbox.kube.kubeconfig_yaml()).expect("kubeconfig");
    let cloudflared = crabglamp_sandbox::stack::cloudflared::start(
        sandbox.hcloud.handle(),
        sandbox.cloudflare.handle(),
        1.0,
        Duration::from_millis(100),
    );

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"))
        .args(["--log-format", "json", "run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--resync-seconds", "3", "--fast-poll-ms", "200", "--drain-seconds", "10"])
        // Any free port: the default 0.0.0.0:8080 may be taken on a test machine.
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &sandbox.database_url)
        .env("HCLOUD_ENDPOINT", &sandbox.hcloud.base_url)
        .env("HCLOUD_TOKEN", &sandbox.hetzner_config.token)
        .env("CLOUDFLARE_ENDPOINT", &sandbox.cloudflare.base_url)
        .env("CLOUDFLARE_API_TOKEN", &sandbox.cloudflare_config.token)
        .env("CLOUDFLARE_ACCOUNT_ID", &sandbox.cloudflare_config.account_id)
        .env("CLOUDFLARE_ZONE_ID", &sandbox.cloudflare_config.zone_id)
        .env("CLOUDFLARE_ZONE_NAME", &sandbox.cloudflare_config.zone_name)
        .env("CRABGLAMP_SEALING_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .env("RUST_LOG", "info,crabglamp_operator=debug")
        .env_remove("KUBECONFIG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crabglamp-operator starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        all
    });

    let client = sandbox.kube.client().expect("client");
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": "ext"}})).expect("namespace");
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let api: kube::Api<crabglamp_operator::api::Agent> = kube::Api::namespaced(client, "ext");
    api.create(&PostParams::default(), &agent("outside", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "outside", Duration::from_secs(90), "Ready via crabglamp-operator run", ready).await;
    let id = a.status.and_then(|s| s.server).and_then(|s| s.id).expect("server id");
    let user_data = crabglamp_sandbox::hetzner::server_user_data(&sandbox.hcloud, id).flatten().expect("user data");
    let token_start = user_data.find("TUNNEL_TOKEN=").expect("token") + "TUNNEL_TOKEN=".len();
    let token: String =
        user_data[token_start..].chars().take_while(|c| c.is_ascii_alphanumeric() || "+/=".contains(*c)).collect();

    let pid = child.id().expect("pid");
    let asked = tokio::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits after SIGTERM").expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(asked.elapsed() < Duration::from_secs(30));
    let logs = logs.await.expect("logs");
    assert!(!logs.contains(&token), "the tunnel token is in the operator's logs");
    let reconcile_line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["span"]["name"] == "reconcile")
        .unwrap_or_else(|| panic!("no JSON line inside a reconcile span:\n{logs}"));
    assert_eq!(reconcile_line["span"]["kind"], "Agent", "{reconcile_line}");
    assert_eq!(reconcile_line["span"]["namespace"], "ext");
    assert_eq!(reconcile_line["span"]["object_name"], "outside");
    cloudflared.abort();
    sandbox.stop().await;
}
