//! The Hetzner simulator's physics judged over its HTTP API: real-world durations under a
//! time scale, guests that boot and obey (or ignore) ACPI, `user_data` kept per server,
//! project limits, type changes and rebuilds, numbers typed as the API types them, and GETs
//! whose cost is their page (counted, not timed).

use std::future::Future;
use std::time::{Duration, Instant};

use crabglamp_sandbox::hetzner::{self as hzsim, ActionDurations, HetznerSimConfig};
use crabglamp_sandbox::http::RunningSim;
use hcloud::models;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crabglamp_testkit::cloud::*;

/// Long enough for a loaded two-core machine; conditions end the waits, never the clock.
const WAIT: Duration = Duration::from_secs(20);

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(sim: &RunningSim) -> Self {
        Api { http: reqwest::Client::new(), base: sim.base_url.clone() }
    }

    /// Status and raw body text (the tests read numbers as the wire carries them).
    async fn raw(&self, method: Method, path: &str, body: Option<Value>) -> (u16, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(HZ_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.raw(method, path, body).await;
        let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON body") };
        (status, value)
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {value}");
        value
    }

    async fn server(&self, id: i64) -> Value {
        self.ok(Method::GET, &format!("/servers/{id}"), None).await["server"].clone()
    }

    async fn status(&self, id: i64) -> String {
        self.server(id).await["status"].as_str().unwrap_or_default().to_owned()
    }

    async fn action_status(&self, id: i64) -> String {
        let a = self.ok(Method::GET, &format!("/actions/{id}"), None).await;
        a["action"]["status"].as_str().unwrap_or_default().to_owned()
    }

    async fn create(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "server_type": "cpx22", "image": "ubuntu-24.04", "location": "hel1"});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        self.ok(Method::POST, "/servers", Some(body)).await
    }

    /// Runs a server action and waits for it to succeed.
    async fn act(&self, id: i64, command: &str, body: Option<Value>) -> Value {
        let resp = self.ok(Method::POST, &format!("/servers/{id}/actions/{command}"), body).await;
        let action = resp["action"]["id"].as_i64().expect("action id");
        wait_for(&format!("{command} on {id}"), || async move { self.action_status(action).await == "success" }).await;
        resp
    }
}

async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not reached within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config(durations: ActionDurations) -> HetznerSimConfig {
    HetznerSimConfig { durations, ..hz_config() }
}

/// At scale 100 the documented real-world figures run 100 times faster: a 12 s create takes
/// ~0.12 s, the 15 s boot ~0.15 s after `running`; the order of events is the real one.
#[tokio::test]
async fn a_time_scale_runs_real_durations_faster_in_the_same_order() {
    let sim =
        hetzner_sim(HetznerSimConfig { durations: ActionDurations::default(), time_scale: 100.0, ..hz_config() }).await;
    let api = Api::new(&sim);
    let t0 = Instant::now();
    let created = api.create("scaled-1", json!({"user_data": "#cloud-config\nruncmd: [cloudflared]\n"})).await;
    let id = created["server"]["id"].as_i64().expect("id");
    assert_eq!(created["server"]["status"], "initializing");
    assert_eq!(created["action"]["status"], "running", "a 12 s create does not finish in 0 s");
    assert_eq!(created["next_actions"][0]["command"], "start_server");
    assert!(hzsim::booted_servers(&sim).is_empty());

    wait_for("running", || async { api.status(id).await == "running" }).await;
    let running_after = t0.elapsed();
    wait_for("booted", || async { !hzsim::booted_servers(&sim).is_empty() }).await;
    let booted_after = t0.elapsed();
    // 12 s -10% jitter at scale 100 at the earliest, then 15 s of boot at scale 100 (from
    // the moment it turned running, which the poll above sees a little later).
    assert!(running_after >= Duration::from_millis(108), "running after {running_after:?}");
    assert!(booted_after >= Duration::from_millis(108 + 150), "booted after {booted_after:?}");
    let booted = hzsim::booted_servers(&sim);
    assert_eq!(booted.len(), 1);
    assert_eq!((booted[0].id, booted[0].name.as_str()), (id, "scaled-1"));
    assert_eq!(booted[0].user_data.as_deref(), Some("#cloud-config\nruncmd: [cloudflared]\n"));

    // The hour of rate budget refills 100 times faster: 3600 requests in 36 s, so 20 spent
    // come back within a fraction of a second (at scale 1 that would take 20 s).
    let full = sim.control().budget_remaining();
    for _ in 0..20 {
        api.ok(Method::GET, "/locations", None).await;
    }
    assert!(sim.control().budget_remaining() < full);
    wait_for("budget refilled", || async { sim.control().budget_remaining() >= full }).await;
    sim.shutdown().await.unwrap();
}

/// `shutdown` finishes once the ACPI signal is sent; the guest powers off later, or never
/// when it ignores ACPI, and only `poweroff` then stops it (the operator's fallback).
#[tokio::test]
async fn acpi_shutdown_is_obeyed_after_the_os_delay_unless_ignored() {
    let durations = ActionDurations {
        acpi_shutdown: Duration::from_millis(1500),
        ..ActionDurations::uniform(Duration::from_millis(20))
    };
    let sim = hetzner_sim(config(durations)).await;
    let api = Api::new(&sim);
    let mut ids = Vec::new();
    for name in ["acpi-obeys", "acpi-ignores"] {
        let id = api.create(name, json!({})).await["server"]["id"].as_i64().expect("id");
        wait_for("running", || async { api.status(id).await == "running" }).await;
        ids.push(id);
    }
    let (obeys, ignores) = (ids[0], ids[1]);
    assert!(hzsim::set_ignores_acpi(&sim, ignores, true));
    assert!(!hzsim::set_ignores_acpi(&sim, 999_999, true), "no such server");

    // The ignoring guest is signalled first, so by the time the obeying one is off its own
    // delay has passed too.
    api.act(ignores, "shutdown", None).await;
    api.act(obeys, "shutdown", None).await;
    assert_eq!(api.status(obeys).await, "running", "the action finished before the guest powered off");
    assert!(!api.server(obeys).await["locked"].as_bool().unwrap_or(true), "not locked while the guest shuts down");
    wait_for("the obeying guest powers off", || async { api.status(obeys).await == "off" }).await;
    assert_eq!(api.status(ignores).await, "running", "a guest that ignores ACPI stays up");

    // The ACPI reboot is ignored as well; a hard power off is not.
    api.act(ignores, "reboot", None).await;
    assert_eq!(api.status(ignores).await, "running");
    api.act(ignores, "poweroff", None).await;
    assert_eq!(api.status(ignores).await, "off");
    sim.shutdown().await.unwrap();

    // The project default, with a per-server override back to obeying.
    let sim = hetzner_sim(HetznerSimConfig {
        ignores_acpi: true,
        ..config(ActionDurations::uniform(Duration::from_millis(20)))
    })
    .await;
    let api = Api::new(&sim);
    let a = api.create("default-ignores", json!({})).await["server"]["id"].as_i64().expect("id");
    let b = api.create("override-obeys", json!({})).await["server"]["id"].as_i64().expect("id");
    wait_for("both running", || async { api.status(a).await == "running" && api.status(b).await == "running" }).await;
    assert!(hzsim::set_ignores_acpi(&sim, b, false));
    api.act(a, "shutdown", None).await;
    api.act(b, "shutdown", None).await;
    wait_for("the overriding guest powers off", || async { api.status(b).await == "off" }).await;
    assert_eq!(api.status(a).await, "running");
    sim.shutdown().await.unwrap();
}

/// `user_data` is kept per server and capped at 32 KiB, as Hetzner caps it.
#[tokio::test]
async fn user_data_is_kept_per_server_and_capped_at_32_kib() {
    let sim = hetzner_sim(hz_config()).await;
    let api = Api::new(&sim);
    let at_cap = "#".repeat(32 * 1024);
    let with = api.create("ud-cap", json!({"user_data": at_cap})).await["server"]["id"].as_i64().expect("id");
    let without = api.create("ud-none", json!({})).await["server"]["id"].as_i64().expect("id");
    assert_eq!(hzsim::server_user_data(&sim, with), Some(Some(at_cap.clone())));
    assert_eq!(hzsim::server_user_data(&sim, without), Some(None));
    assert_eq!(hzsim::server_user_data(&sim, 424_242), None);

    let body =
        json!({"name": "ud-over", "server_type": "cpx22", "image": "ubuntu-24.04", "user_data": format!("{at_cap}#")});
    let (status, err) = api.call(Method::POST, "/servers", Some(body)).await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["code"], "invalid_input");
    assert_eq!(err["error"]["details"]["fields"][0]["name"], "user_data");
    assert_eq!(hzsim::server_names(&sim).len(), 2, "the refused create stored nothing");

    wait_for("booted", || async { hzsim::booted_servers(&sim).len() == 2 }).await;
    let booted = hzsim::booted_servers(&sim);
    assert_eq!(booted.iter().map(|b| b.user_data.is_some()).collect::<Vec<_>>(), [true, false]);
    // A rebuild may replace it (hcloud-go sends `user_data` there too).
    api.act(with, "rebuild", Some(json!({"image": "debian-12", "user_data": "#cloud-config\n"}))).await;
    assert_eq!(hzsim::server_user_data(&sim, with), Some(Some("#cloud-config\n".to_owned())));
    sim.shutdown().await.unwrap();
}

fn limit_name(err: &Value) -> &str {
    err["error"]["details"]["limits"][0]["name"].as_str().unwrap_or_default()
}

/// Firewalls per project and per server are settings; beyond them Hetzner answers 403
/// `resource_limit_exceeded` naming the limit, and nothing changes.
#[tokio::test]
async fn firewall_limits_answer_resource_limit_exceeded() {
    let sim = hetzner_sim(HetznerSimConfig { firewall_limit: 4, firewalls_per_server: 2, ..hz_config() }).await;
    let api = Api::new(&sim);
    let server =
        api.create("fw-limits", json!({"labels": {"role": "web"}})).await["server"]["id"].as_i64().expect("id");
    let direct = json!([{"type": "server", "server": {"id": server}}]);
    let fw1 = api.ok(Method::POST, "/firewalls", Some(json!({"name": "fw1", "apply_to": direct}))).await;
    let by_label = json!([{"type": "label_selector", "label_selector": {"selector": "role=web"}}]);
    api.ok(Method::POST, "/firewalls", Some(json!({"name": "fw2", "apply_to": by_label}))).await;
    let fw1 = fw1["firewall"]["id"].as_i64().expect("id");

    // A third firewall for the same server: refused on create and on apply.
    let (status, err) = api.call(Method::POST, "/firewalls", Some(json!({"name": "fw3", "apply_to": direct}))).await;
    assert_eq!(
        (status, err["error"]["code"].as_str(), limit_name(&err)),
        (403, Some("resource_limit_exceeded"), "firewalls_per_server")
    );
    let fw3 =
        api.ok(Method::POST, "/firewalls", Some(json!({"name": "fw3"}))).await["firewall"]["id"].as_i64().expect("id");
    let (status, err) = api
        .call(Method::POST, &format!("/firewalls/{fw3}/actions/apply_to_resources"), Some(json!({"apply_to": direct})))
        .await;
    assert_eq!((status, limit_name(&err)), (403, "firewalls_per_server"));
    let (status, err) = api
        .call(
            Method::POST,
            &format!("/firewalls/{fw3}/actions/apply_to_resources"),
            Some(json!({"apply_to": by_label})),
        )
        .await;
    assert_eq!((status, limit_name(&err)), (403, "firewalls_per_server"), "a selector reaching it counts too");
    // A new server asking for three firewalls (two direct, one by its labels).
    let body = json!({"name": "fw-limits-2", "server_type": "cpx22", "image": "ubuntu-24.04", "labels": {"role": "web"},
                      "firewalls": [{"firewall": fw1}, {"firewall": fw3}]});
    let (status, err) = api.call(Method::POST, "/servers", Some(body)).await;
    assert_eq!((status, limit_name(&err)), (403, "firewalls_per_server"));
    assert_eq!(hzsim::server_names(&sim).len(), 1);
    // Re-applying through the firewall that already reaches it is not a new firewall.
    let (status, err) = api
        .call(
            Method::POST,
            &format!("/firewalls/{fw1}/actions/apply_to_resources"),
            Some(json!({"apply_to": by_label})),
        )
        .await;
    assert_eq!(status, 201, "{err}");

    // The project limit: four firewalls, the fifth refused.
    api.ok(Method::POST, "/firewalls", Some(json!({"name": "fw4"}))).await;
    assert_eq!(hzsim::firewall_count(&sim), 4);
    let (status, err) = api.call(Method::POST, "/firewalls", Some(json!({"name": "fw5"}))).await;
    assert_eq!(
        (status, err["error"]["code"].as_str(), limit_name(&err)),
        (403, Some("resource_limit_exceeded"), "firewall_limit")
    );
    assert_eq!(hzsim::firewall_count(&sim), 4);
    sim.shutdown().await.unwrap();

    let d = HetznerSimConfig::default();
    assert_eq!((d.firewall_limit, d.firewalls_per_server), (50, 5), "Hetzner's defaults");
}

/// `change_type` needs a stopped server and never shrinks its disk; `rebuild` answers a root
/// password and returns the server to its state. Both decode into the `hcloud` crate models.
#[tokio::test]
async fn change_type_and_rebuild() {
    let sim = hetzner_sim(hz_config()).await;
    let api = Api::new(&sim);
    let id = api.create("retype", json!({})).await["server"]["id"].as_i64().expect("id");
    wait_for("running", || async { api.status(id).await == "running" }).await;
    let (status, err) = api
        .call(
            Method::POST,
            &format!("/servers/{id}/actions/change_type"),
            Some(json!({"server_type": "cpx32", "upgrade_disk": true})),
        )
        .await;
    assert_eq!((status, err["error"]["code"].as_str()), (422, Some("server_not_stopped")));

    api.act(id, "poweroff", None).await;
    let resp = api.act(id, "change_type", Some(json!({"server_type": "cpx32", "upgrade_disk": true}))).await;
    let _: models::ChangeTypeOfServerResponse = serde_json::from_value(resp).expect("hcloud model");
    let server = api.server(id).await;
    assert_eq!(
        (server["server_type"]["name"].as_str(), server["primary_disk_size"].as_i64()),
        (Some("cpx32"), Some(160))
    );
    let (status, err) = api
        .call(Method::POST, &format!("/servers/{id}/actions/change_type"), Some(json!({"server_type": "cpx12"})))
        .await;
    assert_eq!((status, err["error"]["code"].as_str()), (422, Some("invalid_server_type")), "160 GB do not fit in 40");
    // Without a disk upgrade the disk stays, so the server can go back down.
    api.act(id, "change_type", Some(json!({"server_type": "cpx42", "upgrade_disk": false}))).await;
    assert_eq!(api.server(id).await["primary_disk_size"], 160);

    let resp = api.act(id, "rebuild", Some(json!({"image": "debian-12"}))).await;
    assert!(resp["root_password"].is_string(), "created without SSH keys: {resp}");
    assert_eq!(resp["action"]["command"], "rebuild_server");
    let _: models::RebuildServerFromImageResponse = serde_json::from_value(resp).expect("hcloud model");
    let server = api.server(id).await;
    assert_eq!((server["image"]["name"].as_str(), server["status"].as_str()), (Some("debian-12"), Some("off")));
    sim.shutdown().await.unwrap();
}

/// hcloud-go's schema types (`int`/`int64`/`uint64` fields refuse `40.0`), cut to the
/// numbers: what a strict Go decoder needs from the simulator.
#[derive(Deserialize)]
struct GoServerType {
    #[allow(dead_code)]
    id: i64,
    cores: i32,
    #[allow(dead_code)]
    memory: f32,
    disk: i32,
    prices: Vec<GoPrice>,
}

#[derive(Deserialize)]
struct GoPrice {
    included_traffic: u64,
    price_hourly: GoAmount,
    price_monthly: GoAmount,
    price_per_tb_traffic: GoAmount,
}

#[derive(Deserialize)]
struct GoAmount {
    net: String,
    gross: String,
}

#[derive(Deserialize)]
struct GoServer {
    id: i64,
    included_traffic: u64,
    outgoing_traffic: Option<u64>,
    ingoing_traffic: Option<u64>,
    primary_disk_size: i32,
    server_type: GoServerType,
    image: GoImage,
    location: GoLocation,
}

#[derive(Deserialize)]
struct GoImage {
    #[allow(dead_code)]
    id: i64,
    image_size: Option<f32>,
    #[allow(dead_code)]
    disk_size: f32,
}

#[derive(Deserialize)]
struct GoLocation {
    #[allow(dead_code)]
    id: i64,
    #[allow(dead_code)]
    latitude: f64,
    #[allow(dead_code)]
    longitude: f64,
}

/// Every occurrence of these keys, anywhere in `v`, is an integer (or null where the API
/// allows it); of the float keys, a float. Returns how many were checked.
fn check_number_types(v: &Value, path: &str) -> usize {
    const INTEGERS: &[&str] = &[
        "id",
        "cores",
        "disk",
        "primary_disk_size",
        "included_traffic",
        "ingoing_traffic",
        "outgoing_traffic",
        "progress",
        "page",
        "per_page",
        "previous_page",
        "next_page",
        "last_page",
        "total_entries",
        "server",
        "firewall",
    ];
    const FLOATS: &[&str] = &["memory", "disk_size", "image_size", "latitude", "longitude"];
    let mut checked = 0;
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{path}.{k}");
                if INTEGERS.contains(&k.as_str()) && x.is_number() {
                    assert!(x.is_i64() || x.is_u64(), "{here} = {x} must be an integer");
                    checked += 1;
                }
                if FLOATS.contains(&k.as_str()) && !x.is_null() {
                    assert!(x.is_f64(), "{here} = {x} must be a float, as Hetzner renders it");
                    checked += 1;
                }
                if k == "net" || k == "gross" {
                    let s = x.as_str().unwrap_or_else(|| panic!("{here} = {x} must be a decimal string"));
                    assert!(s.parse::<f64>().is_ok() && s.contains('.'), "{here} = {s}");
                    checked += 1;
                }
                checked += check_number_types(x, &here);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                checked += check_number_types(x, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
    checked
}

/// Numbers are typed as the Hetzner API types them: `"disk":40`, not `40.0`; memory a
/// float; prices decimal strings; ids, traffic and progress integers.
#[tokio::test]
async fn numbers_are_typed_as_the_api_types_them() {
    let sim = hetzner_sim(hz_config()).await;
    let api = Api::new(&sim);
    let (_, text) = api.raw(Method::GET, "/server_types?name=cpx22", None).await;
    for exact in [r#""cores":2"#, r#""memory":4.0"#, r#""disk":80"#, r#""included_traffic":21990232555520"#] {
        assert!(text.contains(exact), "{exact} missing in {text}");
    }
    assert!(!text.contains(r#""disk":80.0"#) && !text.contains(r#""cores":2.0"#), "{text}");
    // cpx22 costs 7.99 EUR net a month in the EU; Hetzner prints 10 decimals net, 16 gross.
    assert!(text.contains(r#""net":"7.9900000000""#) && text.contains(r#""gross":"9.5081000000000000""#), "{text}");

    let (_, text) = api.raw(Method::GET, "/images/161547269", None).await;
    assert!(text.contains(r#""disk_size":5.0"#) && text.contains(r#""image_size":null"#), "{text}");
    let (_, text) = api.raw(Method::GET, "/locations/3", None).await;
    assert!(text.contains(r#""latitude":60.169855"#) && text.contains(r#""id":3"#), "{text}");

    let fw = api.ok(Method::POST, "/firewalls", Some(json!({"name": "numbers"}))).await["firewall"]["id"].clone();
    let created = api.create("numbers-1", json!({"firewalls": [{"firewall": fw}]})).await;
    let id = created["server"]["id"].as_i64().expect("id");
    let (_, text) = api.raw(Method::GET, &format!("/servers/{id}"), None).await;
    assert!(text.contains(r#""primary_disk_size":80"#) && text.contains(r#""ingoing_traffic":0"#), "{text}");
    let server: GoServer = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::from_value(v["server"].clone()).ok())
        .expect("decodes with hcloud-go's integer types");
    assert_eq!(
        (server.id, server.primary_disk_size, server.server_type.disk, server.server_type.cores),
        (id, 80, 80, 2)
    );
    assert_eq!(
        (server.included_traffic, server.ingoing_traffic, server.outgoing_traffic),
        (21_990_232_555_520, Some(0), Some(0))
    );
    assert!(server.image.image_size.is_none() && server.location.latitude > 60.0);
    let eu = &server.server_type.prices[0];
    assert_eq!(eu.included_traffic, 21_990_232_555_520);
    for amount in [&eu.price_hourly, &eu.price_monthly, &eu.price_per_tb_traffic] {
        assert_eq!(
            (amount.net.split('.').nth(1).map(str::len), amount.gross.split('.').nth(1).map(str::len)),
            (Some(10), Some(16))
        );
    }

    // Every number of every response the operator and the official clients read.
    let action = created["action"]["id"].as_i64().expect("action id");
    let mut checked = check_number_types(&created, "create");
    for path in [
        "/servers?per_page=1".to_owned(),
        format!("/servers/{id}"),
        format!("/servers/{id}/actions"),
        format!("/actions?id={action}"),
        format!("/actions/{action}"),
        "/firewalls".to_owned(),
        "/server_types?per_page=50".to_owned(),
        "/images".to_owned(),
        "/locations".to_owned(),
    ] {
        checked += check_number_types(&api.ok(Method::GET, &path, None).await, &path);
    }
    assert!(checked > 500, "only {checked} numbers checked");
    sim.shutdown().await.unwrap();
}

/// With 5,000 servers and 10,000 actions stored, a GET renders its page and looks at no
/// action beyond the ones it answers with (the old scan looked at every action for every
/// server rendered: 50 x 10,000 for one page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_costs_its_page_not_the_project() {
    let _cpu_heavy = TIMING.read().await;
    let sim = hetzner_sim(HetznerSimConfig {
        durations: ActionDurations::uniform(Duration::ZERO),
        server_limit: 5000,
        rate_limit_per_hour: 1_000_000,
        ..hz_config()
    })
    .await;
    let api = Api::new(&sim);
    let mut first = None;
    for i in 0..5000 {
        let labels = json!({"fleet": "big", "parity": if i % 2 == 0 { "even" } else { "odd" }});
        let created = api.create(&format!("big-{i}"), json!({"labels": labels})).await;
        first.get_or_insert((
            created["server"]["id"].as_i64().expect("id"),
            created["action"]["id"].as_i64().expect("action"),
        ));
    }
    let (id, action) = first.expect("created");
    assert_eq!(hzsim::servers_created(&sim), 5000);

    let cost = async |path: &str| {
        let before = hzsim::work_counts(&sim);
        let body = api.ok(Method::GET, path, None).await;
        let after = hzsim::work_counts(&sim);
        (
            body,
            (
                after.servers_rendered - before.servers_rendered,
                after.actions_examined - before.actions_examined,
                after.actions_rendered - before.actions_rendered,
            ),
        )
    };
    let (body, work) = cost("/servers?page=7&per_page=50").await;
    assert_eq!(body["meta"]["pagination"]["total_entries"], 5000);
    assert_eq!(work, (50, 0, 0), "(servers rendered, actions examined, actions rendered)");
    let (body, work) = cost("/servers?label_selector=parity%3Dodd&sort=name:desc").await;
    assert_eq!(
        (body["servers"].as_array().map(Vec::len), &body["meta"]["pagination"]["total_entries"]),
        (Some(25), &json!(2500))
    );
    assert_eq!(work, (25, 0, 0));
    let (body, work) = cost("/servers?name=big-4321").await;
    assert_eq!(body["servers"][0]["name"], "big-4321");
    assert_eq!(work, (1, 0, 0));
    let (_, work) = cost(&format!("/servers/{id}")).await;
    assert_eq!(work, (1, 0, 0));
    // Its create_server and start_server, from the per-server index.
    let (body, work) = cost(&format!("/servers/{id}/actions")).await;
    assert_eq!(body["actions"].as_array().map(Vec::len), Some(2));
    assert_eq!(work, (0, 2, 2));
    let (_, work) = cost(&format!("/actions?id={action}&id={}", action + 1)).await;
    assert_eq!(work, (0, 2, 2));
    sim.shutdown().await.unwrap();
}

/// A create whose actions fail (fault injection) leaves the server `off` and unlocked, not
/// `starting` for ever.
#[tokio::test]
async fn a_failed_create_leaves_the_server_off() {
    let sim = hetzner_sim(hz_config()).await;
    let api = Api::new(&sim);
    hzsim::fail_next_actions(&sim, 2);
    let created = api.create("fails-1", json!({})).await;
    let id = created["server"]["id"].as_i64().expect("id");
    let start = created["next_actions"][0]["id"].as_i64().expect("start action");
    wait_for("the start fails", || async { api.action_status(start).await == "error" }).await;
    let server = api.server(id).await;
    assert_eq!((server["status"].as_str(), server["locked"].as_bool()), (Some("off"), Some(false)));
    assert!(hzsim::booted_servers(&sim).is_empty());
    sim.shutdown().await.unwrap();
}
