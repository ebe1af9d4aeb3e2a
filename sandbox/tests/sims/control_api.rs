//! The control API (`/_sim/`) from outside the process, as another program would use it: the
//! `crabglamp-sandbox` binary is started and driven over HTTP alone (no in-process handle):
//! counters, request log, fault rules, user_data, the sandbox's cloudflared and the time scale;
//! and the standalone `sim` command's flags as its control API reports them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Chosen so a server is created and booted within a few seconds, yet a create action is long
/// enough (30 s / 15 = 2 s) to measure within 25 % on a busy machine.
const TIME_SCALE: f64 = 15.0;
const CREATE_SECS: f64 = 30.0;

/// A running `crabglamp-sandbox` and what its info file says.
struct SandboxProcess {
    child: tokio::process::Child,
    info: Value,
    stdout: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl SandboxProcess {
    async fn start(extra: &[&str]) -> SandboxProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let info_path = dir.path().join("sandbox.json");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-sandbox"))
            .arg("--kubeconfig")
            .arg(dir.path().join("sandbox.kubeconfig"))
            .arg("--info")
            .arg(&info_path)
            .args(["--time-scale", &TIME_SCALE.to_string()])
            // The simulators alone: the operator's own requests would change the exact counts.
            .arg("--no-controllers")
            .args(extra)
            .current_dir(dir.path())
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the sandbox starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let seen = Arc::clone(&stdout);
        // Drained all along: the sandbox prints a line per connector change and must never
        // block on a full pipe.
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let is_ready = line.contains("Press Ctrl-C");
                seen.lock().expect("lines").push(line);
                if is_ready && let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
        });
        if tokio::time::timeout(Duration::from_secs(120), ready_rx).await.is_err() {
            panic!("the sandbox did not come up in time:\n{}", stdout.lock().expect("lines").join("\n"));
        }
        let info: Value = serde_json::from_str(&std::fs::read_to_string(&info_path).expect("info file")).expect("JSON");
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().expect("client");
        SandboxProcess { child, info, stdout, http, _dir: dir }
    }

    fn key(&self, key: &str) -> String {
        self.info[key].as_str().unwrap_or_else(|| panic!("{key} missing in {}", self.info)).to_owned()
    }

    fn banner(&self) -> String {
        self.stdout.lock().expect("lines").join("\n")
    }

    /// A call to the Hetzner API; (status, body).
    async fn hcloud(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.key("hcloud_endpoint"));
        send(self.http.request(method, url).bearer_auth(self.key("hcloud_token")), body).await
    }

    async fn cloudflare(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.key("cloudflare_endpoint"));
        send(self.http.request(method, url).bearer_auth(self.key("cloudflare_token")), body).await
    }

    /// A call to a control API: `which` is `hcloud` or `cloudflare`.
    async fn control(&self, which: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.key(&format!("{which}_control")));
        send(self.http.request(method, url).bearer_auth(self.key(&format!("{which}_token"))), body).await
    }

    /// Requests with this method and route pattern answered with this status.
    async fn count(&self, which: &str, method: &str, route: &str, status: u16) -> u64 {
        let (code, counters) = self.control(which, reqwest::Method::GET, "/counters", None).await;
        assert_eq!(code, 200, "{counters}");
        counters["by_route"]
            .as_array()
            .expect("by_route")
            .iter()
            .filter(|r| r["method"] == method && r["route"] == route && r["status"] == status)
            .map(|r| r["count"].as_u64().expect("count"))
            .sum()
    }

    async fn create_server(&self, name: &str, user_data: Option<&str>) -> (u16, Value) {
        let mut body = json!({"name": name, "server_type": "cpx22", "image": "ubuntu-24.04", "location": "hel1"});
        if let Some(ud) = user_data {
            body["user_data"] = json!(ud);
        }
        self.hcloud(reqwest::Method::POST, "/servers", Some(body)).await
    }

    async fn tunnel_status(&self, id: &str) -> (String, Value) {
        let account = self.key("cloudflare_account_id");
        let (code, body) =
            self.cloudflare(reqwest::Method::GET, &format!("/accounts/{account}/cfd_tunnel/{id}"), None).await;
        assert_eq!(code, 200, "{body}");
        (body["result"]["status"].as_str().expect("status").to_owned(), body["result"].clone())
    }

    /// Polls until the tunnel has `status`, or fails after `deadline`.
    async fn wait_tunnel(&self, id: &str, wanted: impl Fn(&str) -> bool, what: &str, deadline: Duration) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let (status, tunnel) = self.tunnel_status(id).await;
            if wanted(&status) {
                return tunnel;
            }
            assert!(Instant::now() < until, "tunnel {id} never {what}; last status {status}\n{}", self.banner());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT)
            .expect("SIGINT is delivered");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stops on SIGINT")
            .expect("wait");
        assert!(exit.success(), "sandbox exit status {exit}");
    }
}

async fn send(req: reqwest::RequestBuilder, body: Option<Value>) -> (u16, Value) {
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let resp = req.send().await.expect("the request is answered");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
}

fn tunnel_token(account: &str, tunnel: &str, secret_b64: &str) -> String {
    B64.encode(json!({"a": account, "t": tunnel, "s": secret_b64}).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_driven_through_its_control_api_alone() {
    let create_duration = format!("create_server={CREATE_SECS}s");
    let sb = SandboxProcess::start(&["--action-duration", &create_duration]).await;
    use reqwest::Method;
    assert!(sb.banner().contains(&format!("{TIME_SCALE}x")), "the banner names the time scale:\n{}", sb.banner());
    assert_eq!(sb.info["time_scale"].as_f64(), Some(TIME_SCALE));
    // The keys the sandbox always wrote are checked by the kube `sandbox` test; these are new.
    for key in ["hcloud_control", "cloudflare_control"] {
        assert!(sb.key(key).starts_with("http://127.0.0.1:") && sb.key(key).ends_with("/_sim"), "{key}: {}", sb.info);
    }

    // --- Auth, counters, and control calls that count nothing.
    let (code, _) = send(sb.http.get(format!("{}/counters", sb.key("hcloud_control"))), None).await;
    assert_eq!(code, 401, "the control API wants the simulator's token");
    let (code, _) =
        send(sb.http.get(format!("{}/counters", sb.key("hcloud_control"))).bearer_auth("wrong"), None).await;
    assert_eq!(code, 401);
    let (code, counters) = sb.control("hcloud", Method::GET, "/counters", None).await;
    assert_eq!(code, 200, "{counters}");
    let baseline = counters["total"].as_u64().expect("total");
    for _ in 0..3 {
        assert_eq!(sb.hcloud(Method::GET, "/servers", None).await.0, 200);
    }
    assert_eq!(sb.hcloud(Method::GET, "/servers/424242", None).await.0, 404);
    assert_eq!(sb.count("hcloud", "GET", "/v1/servers", 200).await, 3);
    assert_eq!(sb.count("hcloud", "GET", "/v1/servers/{id}", 404).await, 1, "counted by route pattern");
    let (_, counters) = sb.control("hcloud", Method::GET, "/counters", None).await;
    assert_eq!(counters["total"].as_u64(), Some(baseline + 4), "control calls are not counted: {counters}");
    assert_eq!(sb.control("hcloud", Method::POST, "/reset", None).await.0, 200);
    let (_, counters) = sb.control("hcloud", Method::GET, "/counters", None).await;
    assert_eq!(counters["total"].as_u64(), Some(0), "{counters}");

    // --- A 50 % fault rule on server creates, seeded: about half fail, and the counters agree
    // exactly with what the client saw.
    let rule = json!({"rules": [{"method": "POST", "route": "/v1/servers", "rate": 0.5, "error": "unavailable"}],
                      "seed": 7});
    let (code, plan) = sb.control("hcloud", Method::PUT, "/faults", Some(rule)).await;
    assert_eq!(code, 200, "{plan}");
    const N: u64 = 40;
    let mut failed = 0;
    for i in 0..N {
        let (code, body) = sb.create_server(&format!("fault-{i}"), None).await;
        match code {
            201 => {}
            503 => {
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
                failed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!((N / 4..=3 * N / 4).contains(&failed), "{failed} of {N} creates failed at a 50 % rate");
    assert_eq!(sb.count("hcloud", "POST", "/v1/servers", 503).await, failed);
    assert_eq!(sb.count("hcloud", "POST", "/v1/servers", 201).await, N - failed);
    let (code, plan) = sb.control("hcloud", Method::DELETE, "/faults", None).await;
    assert!(code == 200 && plan["rules"] == json!([]), "{plan}");
    let (code, body) = sb.create_server("after-faults", None).await;
    assert_eq!(code, 201, "faults cleared: {body}");
    let obeys_acpi = body["server"]["id"].as_i64().expect("id");

    // --- user_data: readable through its own endpoint, never in the request log.
    let user_data = "#cloud-config\nruncmd:\n  - echo s3cr3t-marker\n";
    let (code, created) = sb.create_server("with-user-data", Some(user_data)).await;
    assert_eq!(code, 201, "{created}");
    let id = created["server"]["id"].as_i64().expect("id");
    let (code, read) = sb.control("hcloud", Method::GET, &format!("/servers/{id}/user_data"), None).await;
    assert_eq!(code, 200, "{read}");
    assert_eq!(read["user_data"], user_data);
    let (_, log) = sb.control("hcloud", Method::GET, "/requests", None).await;
    let log_text = log.to_string();
    assert!(!log_text.contains("s3cr3t-marker"), "user_data leaked into the request log");
    assert!(!log_text.contains(&sb.key("hcloud_token")), "the token leaked into the request log");
    let entry = log["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .rev()
        .find(|r| r["method"] == "POST" && r["body"]["name"] == "with-user-data")
        .unwrap_or_else(|| panic!("the create is logged with its body: {log}"))
        .clone();
    assert_eq!((entry["route"].as_str(), entry["status"].as_u64()), (Some("/v1/servers"), Some(201)), "{entry}");
    assert!(entry["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{entry}");

    // --- The sandbox plays cloudflared: a server whose user_data has the tunnel's token makes
    // it healthy once booted; a wrong secret connects nothing; deleting the server takes the
    // connection away.
    let account = sb.key("cloudflare_account_id");
    let secret = B64.encode([7u8; 32]);
    let (code, tunnel) = sb
        .cloudflare(
            Method::POST,
            &format!("/accounts/{account}/cfd_tunnel"),
            Some(json!({"name": "control-api-tunnel", "config_src": "cloudflare", "tunnel_secret": secret})),
        )
        .await;
    assert_eq!(code, 200, "{tunnel}");
    let tunnel_id = tunnel["result"]["id"].as_str().expect("tunnel id").to_owned();
    let (code, other) = sb
        .cloudflare(
            Method::POST,
            &format!("/accounts/{account}/cfd_tunnel"),
            Some(json!({"name": "wrong-secret-tunnel", "tunnel_secret": B64.encode([9u8; 32])})),
        )
        .await;
    assert_eq!(code, 200, "{other}");
    let other_id = other["result"]["id"].as_str().expect("tunnel id").to_owned();
    let (_, cf_log) = sb.control("cloudflare", Method::GET, "/requests", None).await;
    assert!(!cf_log.to_string().contains(&secret), "tunnel_secret leaked into the request log");

    let token = tunnel_token(&account, &tunnel_id, &secret);
    let wrong = tunnel_token(&account, &other_id, &B64.encode([8u8; 32]));
    let ud = format!("#cloud-config\nruncmd:\n  - cloudflared service install {token}\n");
    let (code, created) = sb.create_server("tunnel-host", Some(&ud)).await;
    assert_eq!(code, 201, "{created}");
    let host = created["server"]["id"].as_i64().expect("id");
    let (code, created) = sb
        .create_server("wrong-token-host", Some(&format!("#!/bin/sh\ncloudflared tunnel run --token {wrong}\n")))
        .await;
    assert_eq!(code, 201, "{created}");
    let (_, log) = sb.control("hcloud", Method::GET, "/requests", None).await;
    assert!(!log.to_string().contains(&token), "a tunnel token leaked into the request log");
    assert_eq!(sb.tunnel_status(&tunnel_id).await.0, "inactive", "not before the server booted");

    let healthy = sb.wait_tunnel(&tunnel_id, |s| s == "healthy", "healthy", Duration::from_secs(60)).await;
    let conns = healthy["connections"].as_array().expect("connections");
    assert!(!conns.is_empty(), "{healthy}");
    for conn in conns {
        for key in ["colo_name", "id", "uuid", "client_id", "client_version", "origin_ip", "opened_at"] {
            assert!(conn[key].as_str().is_some_and(|v| !v.is_empty()), "{key} in {conn}");
        }
        assert_eq!(conn["is_pending_reconnect"], false);
    }
    assert!(healthy["conns_active_at"].is_string() && healthy["conns_inactive_at"].is_null(), "{healthy}");
    let (code, server) = sb.hcloud(Method::GET, &format!("/servers/{host}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(conns[0]["origin_ip"], server["server"]["public_net"]["ipv4"]["ip"], "connections come from the server");
    assert_eq!(sb.tunnel_status(&other_id).await.0, "inactive", "a wrong secret connects nothing");

    let (code, _) = sb.hcloud(Method::DELETE, &format!("/servers/{host}"), None).await;
    assert_eq!(code, 200);
    let gone = sb.wait_tunnel(&tunnel_id, |s| s != "healthy", "stopped being healthy", Duration::from_secs(30)).await;
    assert_eq!(gone["status"], "down", "had connections, has none: {gone}");
    assert_eq!(gone["connections"], json!([]));

    // --- The time scale: a create action takes its configured duration / scale (within 25 %).
    let expected = Duration::from_secs_f64(CREATE_SECS / TIME_SCALE);
    let sent = Instant::now();
    let (code, created) = sb.create_server("timed", None).await;
    assert_eq!(code, 201, "{created}");
    let action = created["action"]["id"].as_i64().expect("action id");
    let elapsed = loop {
        let (_, a) = sb.hcloud(Method::GET, &format!("/actions/{action}"), None).await;
        if a["action"]["status"] == "success" {
            break sent.elapsed();
        }
        assert!(sent.elapsed() < expected * 4, "the create action never finished: {a}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ratio = elapsed.as_secs_f64() / expected.as_secs_f64();
    assert!((0.75..=1.25).contains(&ratio), "create took {elapsed:?}, expected {expected:?} (x{ratio:.2})");

    // --- A guest that ignores ACPI stays up through a shutdown; one that obeys goes off.
    let ignores_acpi = created["server"]["id"].as_i64().expect("id");
    let (code, set) = sb
        .control(
            "hcloud",
            Method::PUT,
            &format!("/servers/{ignores_acpi}/ignores_acpi"),
            Some(json!({"ignores_acpi": true})),
        )
        .await;
    assert_eq!(code, 200, "{set}");
    for server in [obeys_acpi, ignores_acpi] {
        let (code, body) = sb.hcloud(Method::POST, &format!("/servers/{server}/actions/shutdown"), None).await;
        assert_eq!(code, 201, "{body}");
    }
    let until = Instant::now() + Duration::from_secs(30);
    while sb.hcloud(Method::GET, &format!("/servers/{obeys_acpi}"), None).await.1["server"]["status"] != "off" {
        assert!(Instant::now() < until, "the obeying guest never shut down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, server) = sb.hcloud(Method::GET, &format!("/servers/{ignores_acpi}"), None).await;
    assert_eq!(server["server"]["status"], "running", "the guest ignoring ACPI is still up");

    // --- Project limits, read and set.
    let (code, limits) = sb.control("hcloud", Method::GET, "/limits", None).await;
    assert_eq!(code, 200, "{limits}");
    let (_, project) = sb.control("hcloud", Method::GET, "/hetzner", None).await;
    let held = project["servers"].as_array().expect("servers").len();
    let (code, _) = sb.control("hcloud", Method::PUT, "/limits", Some(json!({"servers": held}))).await;
    assert_eq!(code, 200);
    let (code, body) = sb.create_server("over-the-limit", None).await;
    assert_eq!((code, body["error"]["code"].as_str()), (403, Some("resource_limit_exceeded")), "{body}");
    let (_, restored) = sb.control("hcloud", Method::PUT, "/limits", Some(json!({"servers": limits["servers"]}))).await;
    assert_eq!(restored, limits);

    // --- Vanishing resources and storms, through the control API.
    let (code, _) = sb.control("hcloud", Method::DELETE, &format!("/servers/{id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(sb.hcloud(Method::GET, &format!("/servers/{id}"), None).await.0, 404, "the server vanished");
    assert_eq!(sb.control("hcloud", Method::DELETE, &format!("/servers/{id}"), None).await.0, 404);
    let (code, _) = sb.control("cloudflare", Method::DELETE, &format!("/tunnels/{other_id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(
        sb.cloudflare(Method::GET, &format!("/accounts/{account}/cfd_tunnel/{other_id}"), None).await.0,
        404,
        "the tunnel vanished without a trace"
    );
    let (code, _) = sb.control("hcloud", Method::POST, "/rate_limit/storm", Some(json!({"requests": 2}))).await;
    assert_eq!(code, 200);
    assert_eq!(sb.hcloud(Method::GET, "/servers", None).await.0, 429);
    assert_eq!(sb.hcloud(Method::GET, "/servers", None).await.0, 429);
    assert_eq!(sb.hcloud(Method::GET, "/servers", None).await.0, 200, "the storm is over");
    assert_eq!(sb.count("hcloud", "GET", "/v1/servers", 429).await, 2);

    assert!(sb.banner().contains(&format!("cloudflared on hcloud-server-{host} connected tunnel {tunnel_id}")));
    assert!(!sb.banner().contains(&token), "the token was printed");
    sb.stop().await;
}

/// `sim cloudflare` standalone: its flags set the fault plan and the scaled rate window, and
/// its control API answers on the printed base URL's port.
#[tokio::test]
async fn standalone_simulator_flags_reach_its_control_api() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-sandbox"))
        .args(["sim", "cloudflare", "--listen", "127.0.0.1:0", "--token", "t0k", "--account-id", "acc"])
        .args(["--zone-id", "zone", "--rate-limit", "5", "--time-scale", "100"])
        .args(["--fault", "GET /accounts/{account}/cfd_tunnel 1.0 unavailable", "--fault-seed", "3"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("base URL printed within 20 s")
        .expect("read stdout")
        .expect("a line");
    let control = format!("{}/_sim", base.trim_end_matches("/client/v4"));
    let http = reqwest::Client::builder().no_proxy().build().expect("client");

    let (code, plan) = send(http.get(format!("{control}/faults")).bearer_auth("t0k"), None).await;
    assert_eq!(code, 200, "{plan}");
    assert_eq!(plan["seed"], 3);
    assert_eq!(plan["rules"][0]["route"], "/client/v4/accounts/{account}/cfd_tunnel", "base path added: {plan}");
    let (code, body) = send(http.get(format!("{base}/accounts/acc/cfd_tunnel")).bearer_auth("t0k"), None).await;
    assert_eq!((code, body["success"].as_bool()), (503, Some(false)), "{body}");
    let (code, budget) = send(http.get(format!("{control}/rate_limit")).bearer_auth("t0k"), None).await;
    assert_eq!(code, 200);
    assert_eq!((budget["capacity"].as_u64(), budget["window_secs"].as_f64()), (Some(5), Some(3.0)), "{budget}");
    let (_, counters) = send(http.get(format!("{control}/counters")).bearer_auth("t0k"), None).await;
    assert_eq!(counters["by_status"], json!({"503": 1}), "{counters}");
    child.kill().await.expect("stopped");
}
