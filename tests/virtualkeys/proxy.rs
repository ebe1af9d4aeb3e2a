//! The sandbox's reference proxy against the controller: a key from the Secret works until
//! its budget is spent, then the proxy refuses it; unknown keys and other models are refused.

use std::time::Duration;

use crabglamp_sandbox::llm_proxy::{self, ProxyConfig};
use kube::api::PostParams;
use serde_json::json;

use super::fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_the_proxy_spend_the_budget_then_are_refused() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    let mut config = ProxyConfig::new(redis_url());
    config.namespace = op.ns.clone();
    config.cost_micros_per_request = 250_000;
    let proxy = llm_proxy::spawn(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"))
        .await
        .expect("proxy starts");
    op.create_namespace("demo").await;
    let api = op.keys("demo");
    api.create(&PostParams::default(), &virtual_key("bot", "acct_d", "1.00")).await.expect("create");
    wait_for(&api, "bot", Duration::from_secs(30), "Ready", ready).await;
    let key = op.key_in_secret("demo", "bot-key").await;
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", proxy.base_url);
    let ask = |model: &str, key: Option<&str>| {
        let mut req = http.post(&url).json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_eq!(ask("gpt-4o", None).await.expect("send").status(), 401);
    assert_eq!(ask("gpt-4o", Some("cgk_not-a-key")).await.expect("send").status(), 401);
    let other = ask("claude-3", Some(&key)).await.expect("send");
    assert_eq!(other.status(), 403);
    assert_eq!(other.json::<serde_json::Value>().await.expect("json")["error"]["code"], json!("model_not_allowed"));
    for _ in 0..4 {
        let ok = ask("gpt-4o-mini", Some(&key)).await.expect("send");
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.json::<serde_json::Value>().await.expect("json")["object"], json!("chat.completion"));
    }
    let vk = wait_for(&api, "bot", Duration::from_secs(30), "blocked", blocked).await;
    assert_eq!(vk.status.and_then(|s| s.spend).map(|s| s.usd), Some("1.00".into()));
    let refused = ask("gpt-4o-mini", Some(&key)).await.expect("send");
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<serde_json::Value>().await.expect("json")["error"]["code"], json!("budget_exceeded"));
    drop(proxy);
    op.stop().await;
}
