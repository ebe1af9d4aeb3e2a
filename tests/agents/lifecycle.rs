//! One Agent's whole life: created closed behind the fleet firewall and Ready through its own
//! tunnel; stopped and started (two timeline rows); transferred twice (two events); deleted
//! (nothing left, one destroy event, an intact chain); and secrets nowhere in status.

use std::time::Duration;

use crabglamp_operator::store::{audit, usage};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::fixture::*;

const NS: &str = "team-a";
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_power_transfer_delete() {
    let op = Operator::start().await;
    op.create_namespace(NS).await;
    let api = op.agents(NS);
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create agent");

    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    let status = a.status.clone().expect("status");
    let uid = a.uid().expect("uid");
    let server = status.server.clone().expect("server status");
    let server_id = server.id.expect("server id");
    assert!(server.ipv4.is_some(), "{server:?}");
    let tunnel = status.tunnel.clone().expect("tunnel status");
    assert_eq!(tunnel.hostname.as_deref(), Some("bot--team-a.agents.example.com"));
    assert!(tunnel.dns_record_id.is_some());
    assert_eq!(status.price_cell.as_deref(), Some("agent-eu-cpx22"));
    assert_eq!(status.owner.as_deref(), Some("acct_a"));
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), 1);
    // Closed from the first instant: the fleet firewall (no inbound rule) is in the create call
    // itself, and nothing is ever attached afterwards.
    let fleet_firewall = op.context.fleet_firewall().expect("fleet firewall");
    let log = op.hetzner.requests();
    let create = log.iter().find(|r| r.method == "POST" && r.path.ends_with("/servers")).expect("server create");
    let body = create.body.clone().expect("create body");
    assert_eq!(body["firewalls"], json!([{"firewall": fleet_firewall}]), "the closed firewall is in the create call");
    assert!(!log.iter().any(|r| r.path.ends_with("/actions/apply_to_resources")), "never attached after the fact");
    let firewall = crabglamp_sandbox::hetzner::firewalls(&op.hetzner)
        .into_iter()
        .find(|f| f["id"] == fleet_firewall)
        .expect("the fleet firewall exists");
    assert_eq!(firewall["rules"], json!([]), "no inbound rule: the tunnel is the only way in");
    assert_eq!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).len(), 1);
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), 1);
    // The user data carries the token; the status must not.
    let user_data = crabglamp_sandbox::hetzner::server_user_data(&op.hetzner, server_id).flatten().expect("user data");
    let token = user_data
        .split_whitespace()
        .find_map(|w| w.trim_matches('"').strip_prefix("TUNNEL_TOKEN=").map(str::to_owned))
        .or_else(|| {
            user_data
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '=' || c == '+' || c == '/'))
                .find(|w| w.starts_with("eyJ"))
                .map(str::to_owned)
        })
        .expect("a tunnel token in the user data");
    // The server's own user data passes the real cloud-init validator and starts cloudflared
    // with this Agent's tunnel.
    crate::cloud_init_schema::assert_valid("created-server", &user_data);
    let tokens = crabglamp_sandbox::cloudflare::find_tunnel_tokens(&user_data);
    assert_eq!(
        tokens.iter().map(|t| t.tunnel_id.as_str()).collect::<Vec<_>>(),
        [tunnel.id.as_deref().unwrap_or_default()]
    );
    let status_text = serde_json::to_string(&a.status).expect("json");
    assert!(!status_text.contains(&token), "the token is in the status");

    // Stop, then start: exactly two more timeline rows after the first start.
    api.patch("bot", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": false}}))).await.expect("stop");
    wait_for(&api, "bot", DEADLINE, "stopped", |a| {
        ready(a) && a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.status.as_deref()) == Some("off")
    })
    .await;
    api.patch("bot", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": true}}))).await.expect("start");
    wait_for(&api, "bot", DEADLINE, "running again", |a| {
        ready(a)
            && a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.status.as_deref()) == Some("running")
    })
    .await;
    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    let kinds: Vec<&str> = rows.iter().map(|r| r.transition.as_str()).collect();
    assert_eq!(kinds, ["start", "stop", "start"], "{rows:?}");

    // Two transfers: two events; status.owner follows.
    for to in ["acct_b", "acct_c"] {
        api.patch("bot", &PatchParams::default(), &Patch::Merge(json!({"spec": {"owner": to}})))
            .await
            .expect("transfer");
        wait_for(&api, "bot", DEADLINE, "owner recorded", |a| {
            a.status.as_ref().and_then(|s| s.owner.as_deref()) == Some(to)
        })
        .await;
    }
    let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    let transfers: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "agent.transferred")
        .map(|e| (e.details["from"].clone(), e.details["to"].clone()))
        .collect();
    assert_eq!(transfers, [(json!("acct_a"), json!("acct_b")), (json!("acct_b"), json!("acct_c"))]);

    // Delete: nothing left in either cloud, one destroy event, the chain intact.
    api.delete("bot", &DeleteParams::default()).await.expect("delete");
    let start = tokio::time::Instant::now();
    while api.get_opt("bot").await.expect("get").is_some() {
        assert!(start.elapsed() < DEADLINE, "the finalizer was not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).is_empty());
    assert!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).is_empty());
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), 0);
    let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.kind == "agent.destroyed").count(), 1);
    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    assert_eq!(rows.last().map(|r| r.transition.as_str()), Some("stop"), "deletion closes the timeline");
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    op.stop().await;
}
