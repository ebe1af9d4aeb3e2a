//! The simulators' raw responses decode into the `hcloud` crate's own models (generated
//! from Hetzner's OpenAPI document): a mismatch is a simulator bug.

use hcloud::models;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crabglamp_testkit::cloud::*;

async fn fetch<T: DeserializeOwned>(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> T {
    let mut req = http.request(method, &url).bearer_auth(HZ_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: does not decode into the hcloud model: {e}\n{text}"))
}

#[tokio::test]
async fn hetzner_responses_decode_into_hcloud_models() {
    let sim = hetzner_sim(hz_config()).await;
    let http = reqwest::Client::new();
    let base = sim.base_url.clone();
    use reqwest::Method as M;

    let locations: models::ListLocationsResponse = fetch(&http, M::GET, format!("{base}/locations"), None).await;
    let names: Vec<_> = locations.locations.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"hel1") && names.contains(&"hil"), "{names:?}");
    let _: models::GetLocationResponse = fetch(&http, M::GET, format!("{base}/locations/3"), None).await;
    let types: models::ListServerTypesResponse =
        fetch(&http, M::GET, format!("{base}/server_types?per_page=50"), None).await;
    assert!(types.server_types.iter().all(|t| !t.prices.is_empty()));
    let _: models::GetServerTypeResponse = fetch(&http, M::GET, format!("{base}/server_types/112"), None).await;
    let images: models::ListImagesResponse =
        fetch(&http, M::GET, format!("{base}/images?name=ubuntu-24.04"), None).await;
    assert_eq!(images.images.len(), 2, "one per architecture");
    let _: models::GetImageResponse = fetch(&http, M::GET, format!("{base}/images/161547269"), None).await;

    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ0YXV0aWZ1bCBrZXkgZm9yIHRlc3Rpbmcgb25seSEh ops@example.com";
    let k: models::CreateSshKeyResponse =
        fetch(&http, M::POST, format!("{base}/ssh_keys"), Some(json!({"name": "ops", "public_key": key}))).await;
    assert_eq!(k.ssh_key.fingerprint.split(':').count(), 16, "an MD5 fingerprint");
    let _: models::ListSshKeysResponse =
        fetch(&http, M::GET, format!("{base}/ssh_keys?fingerprint={}", k.ssh_key.fingerprint), None).await;

    let fw: models::CreateFirewallResponse = fetch(
        &http,
        M::POST,
        format!("{base}/firewalls"),
        Some(json!({"name": "fw", "labels": {"a": "b"}, "rules": [
            {"direction": "in", "protocol": "tcp", "port": "22", "source_ips": ["0.0.0.0/0", "::/0"]},
            {"direction": "out", "protocol": "icmp", "destination_ips": ["0.0.0.0/0"]}
        ], "apply_to": [{"type": "label_selector", "label_selector": {"selector": "a=b"}}]})),
    )
    .await;
    let fw_id = fw.firewall.expect("firewall").id;

    let created: models::CreateServerResponse = fetch(
        &http,
        M::POST,
        format!("{base}/servers"),
        Some(json!({"name": "decode-1", "server_type": 112, "image": "ubuntu-24.04", "location": 3,
                    "labels": {"a": "b"}, "ssh_keys": ["ops"], "firewalls": [{"firewall": fw_id}],
                    "public_net": {"enable_ipv4": false, "enable_ipv6": true}})),
    )
    .await;
    assert!(created.root_password.is_none(), "an SSH key means no root password");
    assert!(created.server.public_net.ipv4.is_none());
    let id = created.server.id;
    let _: models::GetServerResponse = fetch(&http, M::GET, format!("{base}/servers/{id}"), None).await;
    let _: models::ListServersResponse =
        fetch(&http, M::GET, format!("{base}/servers?label_selector=a%3Db&sort=name:desc"), None).await;
    let _: models::ReplaceServerResponse =
        fetch(&http, M::PUT, format!("{base}/servers/{id}"), Some(json!({"labels": {"a": "b", "c": ""}}))).await;
    let action = created.action.id;
    let _: models::GetActionResponse = fetch(&http, M::GET, format!("{base}/actions/{action}"), None).await;
    let _: models::GetMultipleActionsResponse =
        fetch(&http, M::GET, format!("{base}/actions?id={action}&id=1&sort=status&sort=id"), None).await;
    let _: models::GetActionResponse =
        fetch(&http, M::GET, format!("{base}/servers/{id}/actions/{action}"), None).await;
    let listed: models::ListActionsResponse = fetch(&http, M::GET, format!("{base}/servers/{id}/actions"), None).await;
    assert!(listed.actions.iter().any(|a| a.id == action));
    let _: models::ListFirewallsResponse = fetch(&http, M::GET, format!("{base}/firewalls"), None).await;
    let got: models::GetFirewallResponse = fetch(&http, M::GET, format!("{base}/firewalls/{fw_id}"), None).await;
    let applied = &got.firewall.applied_to[0];
    assert_eq!(applied.applied_to_resources.as_ref().map(Vec::len), Some(1), "the selector matches the server");
    let _: models::SetRulesResponse =
        fetch(&http, M::POST, format!("{base}/firewalls/{fw_id}/actions/set_rules"), Some(json!({"rules": []}))).await;
    // Created with the firewall, so it is applied directly: remove it.
    let _: models::RemoveFromResourcesResponse = fetch(
        &http,
        M::POST,
        format!("{base}/firewalls/{fw_id}/actions/remove_from_resources"),
        Some(json!({"remove_from": [{"type": "server", "server": {"id": id}}]})),
    )
    .await;
    // The server is locked until its create and start actions finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list: models::ListActionsResponse =
            fetch(&http, M::GET, format!("{base}/servers/{id}/actions?status=running"), None).await;
        if list.actions.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "actions still running at the deadline");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _: models::ResetServerResponse =
        fetch(&http, M::POST, format!("{base}/servers/{id}/actions/reset"), None).await;
    let _: models::DeleteServerResponse = fetch(&http, M::DELETE, format!("{base}/servers/{id}"), None).await;
    sim.shutdown().await.unwrap();
}

/// The `hcloud` crate's own generated API functions, aimed at the simulator by remapping
/// the public base URL (only the endpoint changes), drive a whole server lifecycle.
#[tokio::test]
async fn hcloud_crate_apis_drive_the_simulator() {
    use hcloud::apis::configuration::Configuration;
    use hcloud::apis::{Error, actions_api, firewalls_api, servers_api};

    let sim = hetzner_sim(hz_config()).await;
    let mut conf = Configuration::new();
    conf.base_path_mapping.insert("https://api.hetzner.cloud/v1".into(), sim.base_url.clone());
    conf.bearer_access_token = Some(HZ_TOKEN.into());

    let labels: std::collections::HashMap<String, String> =
        [("crabglamp.com/kind".to_string(), "agent".to_string())].into();
    let request = models::CreateServerRequest {
        name: "crate-1".into(),
        server_type: "cpx22".into(),
        image: "ubuntu-24.04".into(),
        location: Some("hil".into()),
        labels: Some(labels.clone()),
        user_data: Some("#cloud-config\n".into()),
        ..Default::default()
    };
    let created =
        servers_api::create_server(&conf, servers_api::CreateServerParams { create_server_request: request.clone() })
            .await
            .expect("create through the hcloud crate");
    assert_eq!(created.server.location.name, "hil");
    match servers_api::create_server(&conf, servers_api::CreateServerParams { create_server_request: request }).await {
        Err(Error::ResponseError(r)) => {
            assert_eq!(r.status.as_u16(), 409);
            assert!(r.content.contains("uniqueness_error"), "{}", r.content);
        }
        other => panic!("duplicate name accepted: {other:?}"),
    }

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut ids = vec![created.action.id];
    ids.extend(created.next_actions.iter().map(|a| a.id));
    for id in ids {
        loop {
            let a = actions_api::get_action(&conf, actions_api::GetActionParams { id }).await.expect("get action");
            if a.action.status == models::action::Status::Success {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "action {id} still running");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    let listed = servers_api::list_servers(
        &conf,
        servers_api::ListServersParams {
            label_selector: Some("crabglamp.com/kind=agent".into()),
            ..Default::default()
        },
    )
    .await
    .expect("list");
    assert_eq!(listed.servers.len(), 1);
    assert_eq!(listed.servers[0].status, models::server::Status::Running);

    servers_api::power_off_server(&conf, servers_api::PowerOffServerParams { id: created.server.id })
        .await
        .expect("power off");
    let fw = firewalls_api::create_firewall(
        &conf,
        firewalls_api::CreateFirewallParams {
            create_firewall_request: models::CreateFirewallRequest { name: "crate-fw".into(), ..Default::default() },
        },
    )
    .await
    .expect("create firewall");
    let fw_id = fw.firewall.expect("firewall").id;
    servers_api::delete_server(&conf, servers_api::DeleteServerParams { id: created.server.id }).await.expect("delete");
    firewalls_api::delete_firewall(&conf, firewalls_api::DeleteFirewallParams { id: fw_id }).await.expect("delete fw");
    sim.shutdown().await.unwrap();
}
