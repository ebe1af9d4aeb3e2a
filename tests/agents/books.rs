//! An Agent's books close on every path. `Orphan` takes our marks off the server and the DNS
//! record the ids in status name even when the fleet view lacks them at that instant. An
//! Agent deleted without its finalizer (removed by hand) after a transfer has its server swept
//! with its timeline closed and one destroy event, naming the sweeper, billed to the owner the
//! transfer trail ends at.

use std::time::Duration;

use crabglamp_operator::api::{Agent, DeletionPolicy};
use crabglamp_operator::controllers::agent::PAUSE_ANNOTATION;
use crabglamp_operator::store::{audit, usage};
use crabglamp_sandbox::http::{FaultPlan, FaultRule, InjectedError};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::fixture::*;

const NS: &str = "books";
const DEADLINE: Duration = Duration::from_secs(60);

async fn set_paused(api: &Api<Agent>, name: &str, on: bool) {
    let value = if on { json!("true") } else { Value::Null };
    let patch = json!({"metadata": {"annotations": {PAUSE_ANNOTATION: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("pause annotation");
    if on {
        wait_for(api, name, DEADLINE, "Paused", |a| condition(a, "Paused").as_deref() == Some("True")).await;
    }
}

/// GETs on `route` (a route pattern: a list, not one item by id) fail; everything else answers.
fn lists_fail(route: &str) -> FaultPlan {
    FaultPlan {
        rules: vec![FaultRule {
            method: Some(reqwest::Method::GET),
            route: Some(route.to_owned()),
            path_contains: String::new(),
            rate: 1.0,
            error: InjectedError::Unavailable,
            lose_answer: false,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orphaned_agent_is_unmarked_by_the_ids_in_status() {
    let op = Operator::start().await;
    op.create_namespace(NS).await;
    let api = op.agents(NS);
    let mut keep = agent("keep", "acct_a", true);
    keep.spec.deletion_policy = DeletionPolicy::Orphan;
    api.create(&PostParams::default(), &keep).await.expect("create");
    let kept = wait_for(&api, "keep", DEADLINE, "Ready", ready).await;
    let uid = kept.uid().expect("uid");
    let status = kept.status.clone().expect("status");
    let server_id = status.server.and_then(|s| s.id).expect("server id");
    let record_id = status.tunnel.and_then(|t| t.dns_record_id).expect("record id");

    // Paused while the fleet view comes to lack its server and record and no list refills it.
    set_paused(&api, "keep", true).await;
    op.hetzner.set_faults(lists_fail("/servers"));
    op.cloudflare.set_faults(lists_fail("/zones/{zone}/dns_records"));
    op.context.fleet().forget_server(&uid);
    op.context.fleet().forget_dns(&uid);
    api.delete("keep", &DeleteParams::default()).await.expect("delete");
    set_paused(&api, "keep", false).await;
    wait_gone(&api, "keep", DEADLINE).await;

    let server = server_in_hetzner(&op, server_id).expect("the orphaned server stays");
    let labels = server["labels"].as_object().cloned().unwrap_or_default();
    assert!(labels.keys().all(|k| !k.starts_with("crabglamp.com/")), "our marks are off the server: {server}");
    let record = crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare)
        .into_iter()
        .find(|r| r.0 == record_id)
        .expect("the orphaned record stays");
    assert!(
        record.2.as_deref().is_none_or(|c| !c.starts_with(crabglamp_operator::controllers::names::DNS_MARK_PREFIX)),
        "our mark is off the record: {record:?}"
    );
    let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.kind == "agent.destroyed").count(), 1);
    op.hetzner.set_faults(FaultPlan::default());
    op.cloudflare.set_faults(FaultPlan::default());
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_swept_after_a_transfer_bills_the_new_owner_and_names_the_sweeper() {
    let op = Operator::start().await;
    op.create_namespace(NS).await;
    let api = op.agents(NS);
    api.create(&PostParams::default(), &agent("moved", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "moved", DEADLINE, "Ready", ready).await;
    let uid = a.uid().expect("uid");
    let server_id = a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).expect("server id");
    api.patch("moved", &PatchParams::default(), &Patch::Merge(json!({"spec": {"owner": "acct_b"}})))
        .await
        .expect("transfer");
    wait_for(&api, "moved", DEADLINE, "transferred", |a| {
        a.status.as_ref().and_then(|s| s.owner.as_deref()) == Some("acct_b")
    })
    .await;

    // Its finalizer removed by hand: paused first, so the controller puts it back no more.
    set_paused(&api, "moved", true).await;
    let unfinalize = json!({"metadata": {"finalizers": null}});
    api.patch("moved", &PatchParams::default(), &Patch::Merge(unfinalize)).await.expect("unfinalize");
    api.delete("moved", &DeleteParams::default()).await.expect("delete");
    wait_gone(&api, "moved", DEADLINE).await;
    wait_until(DEADLINE, "the sweeper removes the server", || server_in_hetzner(&op, server_id).is_none()).await;

    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    assert_eq!(rows.last().map(|r| (r.transition.as_str(), r.owner.as_str())), Some(("stop", "acct_b")), "{rows:?}");
    let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    let destroyed: Vec<_> = events.iter().filter(|e| e.kind == "agent.destroyed").collect();
    assert_eq!(destroyed.len(), 1, "exactly one destroy event: {events:#?}");
    assert_eq!(destroyed[0].details["actor"], "sweeper");
    assert_eq!(destroyed[0].owners, ["acct_b"], "the owner the transfer trail ends at");
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("agent.destroyed"), "nothing after the destroy event");
    op.stop().await;
}
