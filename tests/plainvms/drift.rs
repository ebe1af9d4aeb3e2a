//! The world changed behind the operator's back: the firewall detached from the server, a
//! rule edited in the console, the server deleted. Noticed from the shared lists (no GET per
//! VM): a detachment or a deletion at the next resync, a rule edit at the next firewall audit,
//! repaired, and reported with an Event. An orphaned PlainVM leaves server and firewall,
//! unmarked; a marked server and firewall whose object is gone are swept.

use std::time::Duration;

use crabglamp_operator::controllers::ControllerConfig;
use crabglamp_operator::store::audit;
use hcloud::models::{Rule, rule};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::support::*;

const DEADLINE: Duration = Duration::from_secs(60);

/// An operator with `config` and one Ready PlainVM `web` in `ns`: its UID, server and firewall.
async fn one_ready_vm(config: ControllerConfig, ns: &str) -> (Operator, String, i64, i64) {
    let op = Operator::start_with(config).await;
    op.create_namespace(ns).await;
    let api = op.plainvms(ns);
    api.create(&PostParams::default(), &plainvm("web", "acct_a", true, two_rules())).await.expect("create");
    let vm = wait_for(&api, "web", DEADLINE, "Ready", vm_ready).await;
    let uid = vm.uid().expect("uid");
    let server_id = vm.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).expect("server");
    let fw_id = vm.status.as_ref().and_then(|s| s.firewall.as_ref()).and_then(|f| f.id).expect("firewall");
    (op, uid, server_id, fw_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_detached_firewall_an_edited_rule_and_a_deleted_server_are_repaired() {
    // Rules are re-read every other resync here (6 s), not every twelfth.
    let mut config = test_config();
    config.firewall_audit_every = 2;
    let (op, uid, server_id, fw_id) = one_ready_vm(config, "drift").await;
    let api = op.plainvms("drift");
    let want = rules_of(&vm_firewall(&op, &uid).expect("firewall"));

    // Detached in the console (through the API, as the console does).
    op.context.clients().hetzner.remove_firewall(fw_id, server_id).await.expect("detach");
    wait_until(DEADLINE, "re-attached", || {
        vm_firewall(&op, &uid).is_some_and(|f| applied_servers(&f) == vec![server_id])
    })
    .await;
    wait_for_event(&op, "drift", "FirewallReattached", DEADLINE).await;

    // A rule edited in the console: everything open.
    let mut open = Rule::new(rule::Direction::In, rule::Protocol::Tcp);
    open.port = Some(Some("1-65535".into()));
    open.source_ips = Some(vec!["0.0.0.0/0".into()]);
    op.context.clients().hetzner.set_firewall_rules(fw_id, &[open]).await.expect("edit");
    wait_until(DEADLINE, "rules set back", || vm_firewall(&op, &uid).is_some_and(|f| rules_of(&f) == want)).await;
    wait_for(&api, "web", DEADLINE, "Ready again", vm_ready).await;
    wait_for_event(&op, "drift", "FirewallRulesRepaired", DEADLINE).await;
    assert_eq!(vm_firewall(&op, &uid).and_then(|f| f["id"].as_i64()), Some(fw_id), "the same firewall");
    // The server deleted in the console: a new one, created behind the same firewall.
    assert!(crabglamp_sandbox::hetzner::vanish_server(&op.hetzner, server_id));
    let vm = wait_for(&api, "web", DEADLINE, "a new server", |v| {
        vm_ready(v)
            && v.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).is_some_and(|id| id != server_id)
    })
    .await;
    let new_id = vm.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).expect("server");
    assert_eq!(vm_firewall(&op, &uid).map(|f| applied_servers(&f)), Some(vec![new_id]), "behind the same firewall");
    wait_for_event(&op, "drift", "ServerRecreated", DEADLINE).await;
    assert_eq!(hz_requests(&op, "POST", "/firewalls"), 2, "no new firewall (ours and the fleet's)");

    // Observed through the shared list: no per-object firewall or server GET ever.
    let gets = op
        .hetzner
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.route.as_deref().is_some_and(|p| p.ends_with("{id}")))
        .count();
    assert_eq!(gets, 0, "no GET of one object");
    op.stop().await;
}

/// A firewall detached and then deleted in the console: the next server list shows the
/// detachment, the attach answers 404, and that alone (the firewall list is far off here) makes
/// the operator create a new firewall and attach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_firewall_deleted_outside_is_created_again_without_waiting_for_the_audit() {
    let mut config = test_config();
    config.firewall_audit_every = 1000;
    let (op, uid, server_id, fw_id) = one_ready_vm(config, "gone").await;
    let api = op.plainvms("gone");

    op.context.clients().hetzner.remove_firewall(fw_id, server_id).await.expect("detach");
    op.context.clients().hetzner.delete_firewall(fw_id).await.expect("delete");
    let vm = wait_for(&api, "web", DEADLINE, "Ready behind a new firewall", |v| {
        vm_ready(v)
            && v.status.as_ref().and_then(|s| s.firewall.as_ref()).and_then(|f| f.id).is_some_and(|id| id != fw_id)
    })
    .await;
    let new_id = vm.status.as_ref().and_then(|s| s.firewall.as_ref()).and_then(|f| f.id).expect("firewall");
    let fw = vm_firewall(&op, &uid).expect("the new firewall");
    assert_eq!(fw["id"].as_i64(), Some(new_id));
    assert_eq!(applied_servers(&fw), vec![server_id], "guarding the same server");
    wait_for_event(&op, "gone", "FirewallRecreated", DEADLINE).await;
    assert_eq!(
        hz_requests(&op, "GET", "/firewalls"),
        3,
        "the start-up lists only (the fleet's, those with old marks to re-mark, and ours)"
    );
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_policy_unmarks_both_and_the_sweeper_removes_true_orphans() {
    let op = Operator::start().await;
    op.create_namespace("orphans").await;
    let api = op.plainvms("orphans");
    let mut kept = plainvm("kept", "acct_a", true, two_rules());
    kept.spec.deletion_policy = crabglamp_operator::api::DeletionPolicy::Orphan;
    api.create(&PostParams::default(), &kept).await.expect("create kept");
    api.create(&PostParams::default(), &plainvm("lost", "acct_a", true, two_rules())).await.expect("create lost");
    let kept = wait_for(&api, "kept", DEADLINE, "kept Ready", vm_ready).await;
    let lost = wait_for(&api, "lost", DEADLINE, "lost Ready", vm_ready).await;
    let (kept_uid, lost_uid) = (kept.uid().expect("uid"), lost.uid().expect("uid"));

    // Orphan: both stay, without our labels; one destroy event.
    api.delete("kept", &DeleteParams::default()).await.expect("delete kept");
    wait_gone(&api, "kept", DEADLINE).await;
    let fw = vm_firewall(&op, &kept_uid).expect("the orphaned firewall stays");
    assert!(fw["labels"].as_object().is_none_or(|l| l.keys().all(|k| !k.starts_with("crabglamp.com/"))), "{fw}");
    assert!(!applied_servers(&fw).is_empty(), "still guarding its server");
    let events = audit::events_for_resource(&op.db.pool, &kept_uid).await.expect("events");
    let destroyed: Vec<_> = events.iter().filter(|e| e.kind == "plainvm.destroyed").collect();
    assert_eq!(destroyed.len(), 1);
    assert_eq!(destroyed[0].details["orphaned"], json!(true));

    // A finalizer removed by hand: the object is gone, its server and firewall are swept.
    api.patch("lost", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("drop the finalizer");
    api.delete("lost", &DeleteParams::default()).await.expect("delete lost");
    wait_gone(&api, "lost", DEADLINE).await;
    wait_until(DEADLINE, "swept", || vm_firewall(&op, &lost_uid).is_none()).await;
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), 1, "only the orphaned one is left");
    assert!(vm_firewall(&op, &kept_uid).is_some(), "the sweeper leaves unmarked resources alone");
    op.stop().await;
}
