//! Secrets never leak: after a whole life of an Agent with every log level of ours on, the
//! tunnel token, the tunnel secret inside it and the root password Hetzner answered appear in
//! no log line, no Event, no status; the token appears in the server's user data only.

use std::time::Duration;

use base64::Engine;
use kube::api::{DeleteParams, ListParams, PostParams};

use super::fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_secret_and_root_password_are_nowhere_but_the_user_data() {
    let op = Operator::start().await;
    op.create_namespace("secrets").await;
    let api = op.agents("secrets");
    let mut a = agent("bot", "acct_a", true);
    // No SSH keys: Hetzner then answers a root password.
    a.spec.ssh_keys.clear();
    api.create(&PostParams::default(), &a).await.expect("create");
    let a = wait_for(&api, "bot", Duration::from_secs(60), "Ready", ready).await;
    let id = a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).expect("server id");
    let user_data = crabglamp_sandbox::hetzner::server_user_data(&op.hetzner, id).flatten().expect("user data");
    let token = crabglamp_sandbox::cloudflare::find_tunnel_tokens(&user_data);
    assert_eq!(token.len(), 1, "the user data starts cloudflared with exactly one token");
    let token_text = {
        let at = user_data.find("TUNNEL_TOKEN=").expect("env file") + "TUNNEL_TOKEN=".len();
        user_data[at..]
            .split(|c: char| c == '\\' || c == '"' || c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let inner: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(&token_text).expect("base64"))
            .expect("json");
    let secret = inner["s"].as_str().expect("secret").to_owned();
    let password =
        crabglamp_sandbox::hetzner::server_root_password(&op.hetzner, id).expect("a root password was answered");

    api.delete("bot", &DeleteParams::default()).await.expect("delete");
    let start = tokio::time::Instant::now();
    while api.get_opt("bot").await.expect("get").is_some() {
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(op.client.clone(), "secrets");
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.expect("events").items).expect("json");
    let status = serde_json::to_string(&a.status).expect("json");
    let logs = captured_logs();
    assert!(logs.contains("server created"), "the logs were captured");
    for (what, value) in [
        ("tunnel token", token_text.as_str()),
        ("tunnel secret", secret.as_str()),
        ("root password", password.as_str()),
    ] {
        assert!(!logs.contains(value), "the {what} is in the logs");
        assert!(!events.contains(value), "the {what} is in an Event");
        assert!(!status.contains(value), "the {what} is in the status");
    }
    op.stop().await;
}
