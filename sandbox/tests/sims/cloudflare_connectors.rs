//! The Cloudflare simulator playing cloudflared ([`cfsim::sync_origins`]): which tokens
//! connect which tunnel, the statuses the API then reports, and Cloudflare's rate limit
//! under a time scale (the whole window blocked once spent).

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crabglamp_sandbox::cloudflare::{self as cfsim, CloudflareSimConfig, Origin};
use serde_json::{Value, json};

use crabglamp_testkit::cloud::*;

struct Account {
    http: reqwest::Client,
    base: String,
    account: String,
}

impl Account {
    fn new(sim: &cfsim::RunningSim) -> Self {
        Account {
            http: reqwest::Client::builder().no_proxy().build().expect("client"),
            base: sim.base_url.clone(),
            account: CloudflareSimConfig::default().account_id,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(CF_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("answered");
        (resp.status().as_u16(), resp.json().await.expect("JSON"))
    }

    /// A tunnel with `secret`; returns its id.
    async fn tunnel(&self, name: &str, secret: &[u8]) -> String {
        let body = json!({"name": name, "config_src": "cloudflare", "tunnel_secret": B64.encode(secret)});
        let (code, t) =
            self.call(reqwest::Method::POST, &format!("/accounts/{}/cfd_tunnel", self.account), Some(body)).await;
        assert_eq!(code, 200, "{t}");
        t["result"]["id"].as_str().expect("id").to_owned()
    }

    async fn get(&self, id: &str) -> Value {
        let (code, t) =
            self.call(reqwest::Method::GET, &format!("/accounts/{}/cfd_tunnel/{id}", self.account), None).await;
        assert_eq!(code, 200, "{t}");
        t["result"].clone()
    }

    fn token(&self, tunnel: &str, secret: &[u8]) -> String {
        B64.encode(json!({"a": self.account, "t": tunnel, "s": B64.encode(secret)}).to_string())
    }
}

fn origin(key: &str, user_data: Option<String>) -> Origin {
    Origin { key: key.into(), user_data: user_data.map(Into::into), origin_ip: "198.51.100.20".into() }
}

#[tokio::test]
async fn booted_machines_with_valid_tokens_connect_their_tunnels() {
    let sim = cloudflare_sim(cf_config()).await;
    let cf = Account::new(&sim);
    let good = cf.tunnel("good", &[1; 32]).await;
    let wrong_secret = cf.tunnel("wrong-secret", &[2; 32]).await;
    let wrong_account = cf.tunnel("wrong-account", &[3; 32]).await;
    assert_eq!(cf.get(&good).await["status"], "inactive", "never run");

    let foreign = B64.encode(json!({"a": "someone-else", "t": wrong_account, "s": B64.encode([3; 32])}).to_string());
    let machines = vec![
        origin(
            "vm-good",
            Some(format!("#cloud-config\nruncmd:\n  - cloudflared service install {}\n", cf.token(&good, &[1; 32]))),
        ),
        origin("vm-wrong-secret", Some(format!("TOKEN={}", cf.token(&wrong_secret, &[9; 32])))),
        origin("vm-wrong-account", Some(format!("TOKEN={foreign}"))),
        origin("vm-no-user-data", None),
    ];
    // Not before the connect delay has passed since the machine was first seen.
    let delay = Duration::from_millis(150);
    let first_seen = Instant::now();
    assert_eq!(cfsim::sync_origins(&sim, &machines, delay), vec![]);
    let changes = loop {
        let changes = cfsim::sync_origins(&sim, &machines, delay);
        if !changes.is_empty() {
            break changes;
        }
        assert!(first_seen.elapsed() < Duration::from_secs(10), "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(first_seen.elapsed() >= delay, "connected before the delay");
    assert_eq!(
        changes,
        vec![cfsim::ConnectorChange { origin: "vm-good".into(), tunnel_id: good.clone(), connected: true }],
        "only the matching token connects"
    );
    let t = cf.get(&good).await;
    assert_eq!(t["status"], "healthy");
    let conns = t["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 4, "cloudflared's four HA connections: {t}");
    assert!(conns.iter().all(|c| c["origin_ip"] == "198.51.100.20" && c["client_id"] == conns[0]["client_id"]));
    assert!(t["conns_inactive_at"].is_null() && t["conns_active_at"].is_string(), "{t}");
    for id in [&wrong_secret, &wrong_account] {
        assert_eq!(cf.get(id).await["status"], "inactive");
    }
    let (_, connectors) =
        cf.call(reqwest::Method::GET, &format!("/accounts/{}/cfd_tunnel/{good}/connections", cf.account), None).await;
    assert_eq!(connectors["result"].as_array().map(Vec::len), Some(1), "one connector: {connectors}");
    assert_eq!(connectors["result"][0]["conns"].as_array().map(Vec::len), Some(4));
    assert_eq!(cfsim::sync_origins(&sim, &machines, delay), vec![], "nothing changes while nothing does");

    // A connector the test hook made has no machine: syncing leaves it alone.
    assert!(cfsim::connect_tunnel(&sim, &wrong_secret));
    // The machine stops: its connections go, and the tunnel is down (it ran before).
    let changes = cfsim::sync_origins(&sim, &machines[1..], delay);
    assert_eq!(
        changes,
        vec![cfsim::ConnectorChange { origin: "vm-good".into(), tunnel_id: good.clone(), connected: false }]
    );
    let t = cf.get(&good).await;
    assert_eq!((t["status"].as_str(), t["connections"].as_array().map(Vec::len)), (Some("down"), Some(0)), "{t}");
    assert!(t["conns_inactive_at"].is_string() && t["conns_active_at"].is_null(), "{t}");
    assert_eq!(cf.get(&wrong_secret).await["status"], "healthy", "the hook's connector stays");
    assert_eq!(cfsim::tunnel_status(&sim, &good), Some("down"));

    // Back again (a new boot: the delay starts over), then the tunnel is deleted with cascade
    // while the machine still runs: it is not reconnected.
    let restarted = Instant::now();
    while cfsim::sync_origins(&sim, &machines, delay).is_empty() {
        assert!(restarted.elapsed() < Duration::from_secs(10), "never reconnected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(restarted.elapsed() >= delay);
    let (code, _) = cf
        .call(reqwest::Method::DELETE, &format!("/accounts/{}/cfd_tunnel/{good}?cascade=true", cf.account), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(cfsim::sync_origins(&sim, &machines, Duration::ZERO), vec![], "a deleted tunnel accepts no token");
    assert_eq!(cf.get(&good).await["connections"], json!([]));
    sim.shutdown().await.unwrap();
}

/// 1200 requests per five minutes per token on the real API; here 5 per 300 s at scale 100,
/// a three-second window. Once spent, every call is refused until the window is over (not
/// just until one request's worth has refilled), with Cloudflare's 429 body and headers.
#[tokio::test]
async fn the_rate_window_follows_the_time_scale_and_blocks_whole() {
    let sim = cloudflare_sim(CloudflareSimConfig { rate_limit: 5, time_scale: 100.0, ..cf_config() }).await;
    let cf = Account::new(&sim);
    let zone = CloudflareSimConfig::default().zone_id;
    let path = format!("/zones/{zone}/dns_records");
    let window = Duration::from_secs(3);
    for _ in 0..5 {
        assert_eq!(cf.call(reqwest::Method::GET, &path, None).await.0, 200);
    }
    let resp = cf.http.get(format!("{}{path}", cf.base)).bearer_auth(CF_TOKEN).send().await.expect("answered");
    let blocked_at = Instant::now();
    assert_eq!(resp.status(), 429);
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("ratelimit-policy").as_deref(), Some("\"burst\";q=5;w=3"));
    let retry_after: u64 = header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
    assert!((1..=3).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["success"], false);
    assert_eq!(body["errors"][0]["code"], 971);
    assert!(body["errors"][0]["message"].as_str().is_some_and(|m| m.starts_with("More than 5 requests per 3 seconds")));

    // Refused until the window is over, far longer than one request's refill (0.6 s).
    let unblocked = loop {
        let (code, _) = cf.call(reqwest::Method::GET, &path, None).await;
        if code == 200 {
            break blocked_at.elapsed();
        }
        assert_eq!(code, 429);
        assert!(blocked_at.elapsed() < window * 3, "still blocked long after the window");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(unblocked >= window.mul_f64(0.9), "unblocked after {unblocked:?}, the window is {window:?}");
    sim.shutdown().await.unwrap();
}
