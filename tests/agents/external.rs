//! `crabglamp-operator run`, the production binary, pointed at the sandbox from outside (the
//! sandbox started without its in-process controllers): an Agent turns Ready; the JSON logs
//! carry the object in their span and no token; SIGTERM stops it within a bounded time; the
//! trail it wrote verifies against its anchor with the sandbox's env file alone but for the
//! database: one the owner migrated, reached as the README's least-privilege role, so `run` and
//! `audit verify` prove they never need more (nor to create anything).

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
    let db = crate::db::TestDb::for_operator().await;
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
        // The sandbox's env file is what a user sources to point the binary at it.
        .envs(env_file_vars(&sandbox.env_file(&kubeconfig)))
        .env("DATABASE_URL", &db.operator_url)
        .env("RUST_LOG", "info,crabglamp_operator=debug")
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

    // A destroy event, so the trail the binary anchors holds one of its own.
    api.delete("outside", &Default::default()).await.expect("delete");
    wait_gone(&api, "outside", Duration::from_secs(60)).await;

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

    // The trail the binary wrote verifies against the anchor it published, with nothing but
    // the env file (the sealing key authenticates the anchor) and the operator's role.
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"))
        .args(["audit", "verify"])
        .envs(env_file_vars(&sandbox.env_file(&kubeconfig)))
        .env("DATABASE_URL", &db.operator_url)
        .output()
        .expect("audit verify runs");
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert_eq!(verify.status.code(), Some(0), "audit verify with the sandbox's env file: {said}");
    assert!(said.contains("anchor"), "the anchor was checked: {said}");
    cloudflared.abort();
    sandbox.stop().await;
}

/// `NAME='value'` lines as the shell would read them (the values carry no quote).
fn env_file_vars(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.trim_matches('\'').to_owned()))
        .collect()
}
