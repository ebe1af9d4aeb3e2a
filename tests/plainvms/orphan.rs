//! Orphaning and sweeping close their books. An `Orphan` deletion takes our marks off the
//! server and firewall the ids in status name even when the fleet view does not hold them at
//! that instant, so the sweeper leaves them alone afterwards. A PlainVM deleted without its
//! finalizer (removed by hand) has its server swept with its timeline closed and exactly one
//! destroy event, naming the sweeper.

use std::time::{Duration, Instant};

use crabglamp_operator::api::{DeletionPolicy, PlainVM};
use crabglamp_operator::controllers::agent::PAUSE_ANNOTATION;
use crabglamp_operator::store::{audit, usage};
use crabglamp_sandbox::http::{FaultPlan, FaultRule, InjectedError};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::support::*;

const NS: &str = "orphans";
const DEADLINE: Duration = Duration::from_secs(60);

fn paused(v: &PlainVM) -> bool {
    vm_condition(v, "Paused").is_some_and(|(status, _)| status == "True")
}

async fn set_paused(api: &Api<PlainVM>, name: &str, on: bool) {
    let value = if on { json!("true") } else { Value::Null };
    let patch = json!({"metadata": {"annotations": {PAUSE_ANNOTATION: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("pause annotation");
}

/// Deletes the PlainVM without its finalizer, as a careless admin would: paused first (so the
/// controller adds the finalizer back no more), then unfinalized, then deleted.
async fn delete_without_finalizer(api: &Api<PlainVM>, name: &str) {
    set_paused(api, name, true).await;
    wait_for(api, name, DEADLINE, "Paused", paused).await;
    let unfinalize = json!({"metadata": {"finalizers": null}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(unfinalize)).await.expect("unfinalize");
    api.delete(name, &DeleteParams::default()).await.expect("delete");
    wait_gone(api, name, DEADLINE).await;
}

fn our_labels(resource: &Value) -> Vec<String> {
    resource["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .filter(|k| k.starts_with("crabglamp.com/"))
        .collect()
}

/// Every list of servers and firewalls fails (the view keeps what it holds); reads of one
/// server or firewall by id still answer.
fn lists_fail(op: &Operator) {
    let list = |route: &str| FaultRule {
        method: Some(reqwest::Method::GET),
        route: Some(route.to_owned()),
        path_contains: String::new(),
        rate: 1.0,
        error: InjectedError::Unavailable,
        lose_answer: false,
    };
    op.hetzner.set_faults(FaultPlan { rules: vec![list("/servers"), list("/firewalls")], ..Default::default() });
}

fn ids(v: &PlainVM) -> (i64, i64) {
    let status = v.status.as_ref().expect("status");
    (
        status.server.as_ref().and_then(|s| s.id).expect("server id"),
        status.firewall.as_ref().and_then(|f| f.id).expect("firewall id"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orphan_deletion_unmarks_by_the_ids_in_status_and_the_sweeper_leaves_them() {
    let op = Operator::start().await;
    op.create_namespace(NS).await;
    let api = op.plainvms(NS);
    let mut keep = plainvm("keep", "acct_a", true, two_rules());
    keep.spec.deletion_policy = DeletionPolicy::Orphan;
    api.create(&PostParams::default(), &keep).await.expect("create");
    // Two real orphans to come: when the later one is swept, the sweep that removed the
    // earlier one is over, and that sweep would have removed a server still marked as ours.
    for name in ["lost-1", "lost-2"] {
        api.create(&PostParams::default(), &plainvm(name, "acct_a", true, json!([]))).await.expect("create");
    }
    let kept = wait_for(&api, "keep", DEADLINE, "Ready", vm_ready).await;
    let (server_id, firewall_id) = ids(&kept);
    let lost: Vec<i64> = {
        let mut lost = Vec::new();
        for name in ["lost-1", "lost-2"] {
            lost.push(ids(&wait_for(&api, name, DEADLINE, "Ready", vm_ready).await).0);
        }
        lost
    };

    // While it is paused, the fleet view comes to lack its server and firewall (as a list that
    // has not shown them yet, or a page that shifted, leaves it) and no list refills it.
    set_paused(&api, "keep", true).await;
    wait_for(&api, "keep", DEADLINE, "Paused", paused).await;
    lists_fail(&op);
    let uid = kept.uid().expect("uid");
    op.context.fleet().forget_server(&uid);
    op.context.fleet().forget_firewall(&uid);
    api.delete("keep", &DeleteParams::default()).await.expect("delete");
    set_paused(&api, "keep", false).await;
    wait_gone(&api, "keep", DEADLINE).await;

    // Left in place, found by the ids in status, without a mark of ours.
    let server = server_in_hetzner(&op, server_id).expect("the orphaned server stays");
    assert_eq!(our_labels(&server), Vec::<String>::new(), "our marks are off the server: {server}");
    let firewall = firewall_in_hetzner(&op, firewall_id).expect("the orphaned firewall stays");
    assert_eq!(our_labels(&firewall), Vec::<String>::new(), "our marks are off the firewall: {firewall}");
    let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    let destroyed: Vec<_> = events.iter().filter(|e| e.kind == "plainvm.destroyed").collect();
    assert_eq!(destroyed.len(), 1);
    assert_eq!(destroyed[0].details["orphaned"], json!(true));

    // The lists come back; real orphans made after they have are swept one after the other.
    op.hetzner.set_faults(FaultPlan::default());
    let back = Instant::now();
    wait_until(DEADLINE, "a server list after the fault", || op.context.fleet().servers_listed_since(back)).await;
    for (name, id) in ["lost-1", "lost-2"].into_iter().zip(lost) {
        delete_without_finalizer(&api, name).await;
        wait_until(DEADLINE, "the sweeper removes the real orphan", || server_in_hetzner(&op, id).is_none()).await;
    }
    assert!(server_in_hetzner(&op, server_id).is_some(), "the sweeper left the orphaned server alone");
    assert!(firewall_in_hetzner(&op, firewall_id).is_some(), "the sweeper left the orphaned firewall alone");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_swept_after_its_finalizer_was_removed_by_hand_closes_its_books() {
    let op = Operator::start().await;
    op.create_namespace(NS).await;
    let api = op.plainvms(NS);
    api.create(&PostParams::default(), &plainvm("gone", "acct_a", true, two_rules())).await.expect("create");
    let vm = wait_for(&api, "gone", DEADLINE, "Ready", vm_ready).await;
    let uid = vm.uid().expect("uid");
    let (server_id, _) = ids(&vm);
    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    assert_eq!(rows.iter().map(|r| r.transition.as_str()).collect::<Vec<_>>(), ["start"], "billed while it runs");

    delete_without_finalizer(&api, "gone").await;
    wait_until(DEADLINE, "the sweeper removes the server", || server_in_hetzner(&op, server_id).is_none()).await;

    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    let billed: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (r.transition.as_str(), r.owner.as_str(), r.price_cell.as_str())).collect();
    assert_eq!(
        billed,
        [("start", "acct_a", "plainvm-eu-cx23"), ("stop", "acct_a", "plainvm-eu-cx23")],
        "the timeline is closed"
    );
    let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    let destroyed: Vec<_> = events.iter().filter(|e| e.kind == "plainvm.destroyed").collect();
    assert_eq!(destroyed.len(), 1, "exactly one destroy event: {events:#?}");
    let event = destroyed[0];
    assert_eq!(event.details["actor"], "sweeper", "{event:#?}");
    assert_eq!(event.owners, ["acct_a"]);
    assert_eq!(event.cloud_ids["server_id"], server_id);
    assert_eq!(
        (event.resource.kind.as_str(), event.resource.namespace.as_str(), event.resource.name.as_str()),
        ("PlainVM", NS, "gone")
    );
    assert_eq!(event.region.as_deref(), Some("eu"));
    assert!(rows.last().is_some_and(|stop| stop.occurred_at <= event.occurred_at), "the row comes before the event");

    // More sweeps write nothing more: the firewall goes too, and the books stay as they are.
    let firewall_id = vm.status.as_ref().and_then(|s| s.firewall.as_ref()).and_then(|f| f.id).expect("firewall");
    wait_until(DEADLINE, "the sweeper removes the firewall", || firewall_in_hetzner(&op, firewall_id).is_none()).await;
    let again = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    assert_eq!(again.len(), events.len());
    assert_eq!(usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline").len(), 2);
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    op.stop().await;
}
