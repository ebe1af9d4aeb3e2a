//! No object wedges: a hostname held by a foreign record is reported while the Agent's other
//! steps still run (a deleted server re-created, a server powered off in the console powered
//! on), with one DNS create a resync, not ten a pass; Hetzner refusing a create for want of
//! room (`placement_error`, `resource_unavailable`) is retried with backoff, never a stall;
//! user data that cannot be rendered and a server name held by someone else's server stall
//! with a reason naming the cause, and clear when the cause does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crabglamp_operator::api::Agent;
use crabglamp_operator::cloud::cloudflare::{CloudflareClient, CloudflareConfig};
use crabglamp_operator::cloud::hetzner::{HetznerClient, HetznerConfig, ServerSpec};
use crabglamp_operator::cloud::{CloudMetrics, RateLimiter};
use crabglamp_sandbox::cloudflare::CloudflareSimConfig;
use crabglamp_sandbox::http::control::FaultRuleSpec;
use crabglamp_sandbox::http::{FaultPlan, FaultRule};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::fixture::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn cloudflare(op: &Operator) -> CloudflareClient {
    let sim = CloudflareSimConfig::default();
    CloudflareClient::new(
        CloudflareConfig::new(op.cloudflare.base_url.clone(), "cf-test", sim.account_id, sim.zone_id),
        Arc::new(RateLimiter::cloudflare_default()),
        CloudMetrics::default(),
    )
    .expect("Cloudflare client")
}

fn hetzner(op: &Operator) -> HetznerClient {
    HetznerClient::new(
        HetznerConfig::new(op.hetzner.base_url.clone(), "hz-test"),
        Arc::new(RateLimiter::hetzner_default()),
        CloudMetrics::default(),
    )
    .expect("Hetzner client")
}

/// The reason of a condition of the Agent.
fn reason(a: &Agent, type_: &str) -> Option<String> {
    a.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.clone())
}

fn server_id(a: &Agent) -> Option<i64> {
    a.status.as_ref()?.server.as_ref()?.id
}

/// Every server create answered so far, injected refusals included.
fn server_creates(op: &Operator) -> usize {
    op.hetzner.requests().iter().filter(|r| r.method == "POST" && r.path == "/v1/servers").count()
}

/// Every server create refuses with `error` (a fault rule on `POST /servers`).
fn refuse_creates(op: &Operator, error: &str) {
    let spec: FaultRuleSpec = format!("POST /servers 1 {error}").parse().expect("fault rule");
    let rule = FaultRule::try_from(spec).expect("valid fault rule");
    op.hetzner.set_faults(FaultPlan { rules: vec![rule], ..FaultPlan::default() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_hostname_leaves_the_other_steps_running_and_is_asked_once_a_resync() {
    let op = Operator::start().await;
    op.create_namespace("wedge").await;
    let api = op.agents("wedge");
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    let first = server_id(&a).expect("server id");

    // Someone's own record holds the name the Agent is moved to.
    let taken = "taken.agents.example.com";
    cloudflare(&op).create_cname(taken, "elsewhere.example.net", Some("hand-made")).await.expect("foreign record");
    let moved_at = tokio::time::Instant::now();
    api.patch("bot", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tunnel": {"hostname": taken}}})))
        .await
        .expect("new hostname");
    wait_for(&api, "bot", DEADLINE, "DnsNameTaken", |a| reason(a, "DnsReady").as_deref() == Some("DnsNameTaken")).await;

    // The server deleted in the console is re-created all the same.
    assert!(crabglamp_sandbox::hetzner::vanish_server(&op.hetzner, first));
    let a = wait_for(&api, "bot", DEADLINE, "a new server", |a| server_id(a).is_some_and(|id| id != first)).await;
    let second = server_id(&a).expect("server id");
    wait_for_event(&op, "wedge", "ServerRecreated", DEADLINE).await;

    // A power-off in the console is undone all the same.
    let before = crabglamp_sandbox::hetzner::power_log(&op.hetzner).len();
    hetzner(&op).power_off(second).await.expect("power off");
    wait_until(DEADLINE, "the server stopped in the console is started again", || {
        let log = crabglamp_sandbox::hetzner::power_log(&op.hetzner);
        let changes: Vec<&str> = log.iter().skip(before).filter(|c| c.server_id == second).map(|c| c.change).collect();
        changes.ends_with(&["stop", "start"])
    })
    .await;
    let a = api.get("bot").await.expect("get");
    assert_eq!(reason(&a, "DnsReady").as_deref(), Some("DnsNameTaken"), "still reported");
    assert!(condition_message(&a, "DnsReady").contains(taken), "{}", condition_message(&a, "DnsReady"));

    // Cloudflare was asked for the taken name once when it changed and once a resync after
    // (the refusal is remembered that long), never again within a pass.
    let asks = op
        .cloudflare
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.body.as_ref().is_some_and(|b| b["name"] == taken))
        .count();
    let resyncs = moved_at.elapsed().as_secs() / test_config().resync.as_secs();
    assert!((1..=resyncs as usize + 2).contains(&asks), "{asks} creates of {taken} in {resyncs} resyncs");
    let records = crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare);
    let foreign: Vec<_> = records.iter().filter(|r| r.1 == taken).collect();
    assert_eq!(foreign.len(), 1, "the foreign record is left alone: {records:?}");
    assert_eq!(foreign[0].2.as_deref(), Some("hand-made"));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_refused_for_want_of_room_is_retried_with_backoff_never_stalled() {
    let op = Operator::start().await;
    op.create_namespace("room").await;
    let api = op.agents("room");
    refuse_creates(&op, "placement_error");
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create");
    let not_stalled = |a: &Agent| reason(a, "Stalled").is_none() && a.status.as_ref().and_then(|s| s.phase).is_some();
    for (error, named) in [("placement_error", "PlacementFailed"), ("resource_unavailable", "ServerTypeUnavailable")] {
        refuse_creates(&op, error);
        let tried = server_creates(&op);
        // Tried again and again (a stall would try once and wait for a spec change).
        wait_until(DEADLINE, "three more creates", || server_creates(&op) >= tried + 3).await;
        let a = wait_for(&api, "bot", DEADLINE, named, |a| reason(a, "Ready").as_deref() == Some(named)).await;
        assert!(not_stalled(&a), "{error} is not a stall: {:#?}", a.status);
        assert_eq!(a.status.as_ref().and_then(|s| s.phase), Some(crabglamp_operator::api::Phase::Provisioning));
    }
    // With backoff: a refused create is not repeated in a tight loop.
    let refused = server_creates(&op);
    assert!(refused < 40, "{refused} creates");
    // Room again: the next retry places the server.
    op.hetzner.set_faults(FaultPlan::default());
    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    assert!(server_id(&a).is_some());
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), 1);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_data_that_cannot_be_rendered_stalls_with_its_cause_and_sends_nothing() {
    let op = Operator::start().await;
    op.create_namespace("userdata").await;
    let api = op.agents("userdata");
    // Nine keys of 4,000 characters each: valid one by one, over Hetzner's 32 KiB together.
    let mut bot = agent("bot", "acct_a", true);
    bot.spec.ssh_keys = (0..9).map(|i| format!("ssh-rsa {} key-{i}", "A".repeat(3980))).collect();
    api.create(&PostParams::default(), &bot).await.expect("create");
    let a = wait_for(&api, "bot", DEADLINE, "Stalled", |a| reason(a, "Stalled").is_some()).await;
    assert_eq!(reason(&a, "Stalled").as_deref(), Some("UserDataInvalid"), "{:#?}", a.status);
    let why = condition_message(&a, "Stalled");
    assert!(why.contains("32768") && why.contains("SSH keys"), "{why}");
    assert_eq!(server_creates(&op), 0, "nothing sent");
    // The keys are immutable at admission (they are installed only at create): the fix is a
    // new Agent. The stalled one goes at once (nothing was made for it), and the new one,
    // whose spec renders, is created.
    api.delete("bot", &DeleteParams::default()).await.expect("delete the stalled Agent");
    wait_gone(&api, "bot", DEADLINE).await;
    assert_eq!(server_creates(&op), 0, "nothing sent for the stalled Agent");
    bot.spec.ssh_keys = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsTestKey ops@example.com".into()];
    bot.metadata.resource_version = None;
    api.create(&PostParams::default(), &bot).await.expect("create it again with keys that fit");
    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    assert!(reason(&a, "Stalled").is_none());
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_name_held_by_someone_else_stalls_with_the_name_until_it_is_freed() {
    let op = Operator::start().await;
    op.create_namespace("names").await;
    let api = op.agents("names");
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    let first = server_id(&a).expect("server id");
    let name = a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.name.clone()).expect("server name");

    // Paused while the server goes and a server of someone else's takes its name, so the
    // operator never sees the name free in between.
    let pause = |on: bool| {
        let value = if on { json!("true") } else { json!(null) };
        json!({"metadata": {"annotations": {"crabglamp.com/paused": value}}})
    };
    api.patch("bot", &PatchParams::default(), &Patch::Merge(pause(true))).await.expect("pause");
    wait_for(&api, "bot", DEADLINE, "Paused", |a| condition(a, "Paused").as_deref() == Some("True")).await;
    assert!(crabglamp_sandbox::hetzner::vanish_server(&op.hetzner, first));
    let hz = hetzner(&op);
    let foreign = hz
        .create_server(&ServerSpec {
            name: name.clone(),
            server_type: "cpx22".into(),
            image: "ubuntu-24.04".into(),
            location: "hel1".into(),
            labels: BTreeMap::from([("team".to_owned(), "someone-else".to_owned())]),
            user_data: None,
            ssh_keys: Vec::new(),
            firewalls: Vec::new(),
            start_after_create: true,
        })
        .await
        .expect("someone else's server");
    api.patch("bot", &PatchParams::default(), &Patch::Merge(pause(false))).await.expect("unpause");

    let a = wait_for(&api, "bot", DEADLINE, "Stalled", |a| reason(a, "Stalled").is_some()).await;
    assert_eq!(reason(&a, "Stalled").as_deref(), Some("ServerNameTaken"), "{:#?}", a.status);
    assert!(condition_message(&a, "Stalled").contains(&name), "{}", condition_message(&a, "Stalled"));
    assert_eq!(reason(&a, "Ready").as_deref(), Some("ServerNameTaken"));
    let servers = crabglamp_sandbox::hetzner::servers(&op.hetzner);
    assert_eq!(servers.len(), 1, "never adopted nor duplicated: {servers:?}");
    assert_eq!(servers[0]["labels"]["team"], "someone-else", "left untouched");

    // The name is freed: looked at again within a resync, and the server created.
    hz.delete_server(foreign.server.id).await.expect("delete someone else's server");
    let a = wait_for(&api, "bot", DEADLINE, "Ready with a new server", |a| {
        ready(a) && server_id(a).is_some_and(|id| id != first && id != foreign.server.id)
    })
    .await;
    assert!(reason(&a, "Stalled").is_none());
    op.stop().await;
}
