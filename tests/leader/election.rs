//! Two instances elected on one Lease: one reconciles, the other stands by; a leader stopped
//! as SIGTERM stops it hands over within seconds, one killed hands over once its lease
//! expires, and a leader that loses its Lease stops; the fleet converges with no duplicate.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::support::{LEASE, LEASE_NAMESPACE, eventually, holder, lease, servers_of};
use crate::fixture::{Operator, agent, ready, test_config, wait_for};
use crabglamp_operator::operator::Ending;

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_reconciles_and_a_stopped_leader_hands_over_within_seconds() {
    let op = Operator::start_idle().await;
    op.create_namespace("team-a").await;
    // A long lease: a hand-over that waited for it to expire would take 15 s.
    let duration = Duration::from_secs(15);
    let a = op.instance(test_config(), Some(lease("a", duration))).await;
    eventually(Duration::from_secs(10), "a leads", || async { a.leading() }).await;
    let b = op.instance(test_config(), Some(lease("b", duration))).await;
    eventually(Duration::from_secs(10), "the standby is ready to take over", || async {
        b.get("/readyz").await.0 == 200
    })
    .await;
    assert!(!b.leading(), "two leaders");
    assert_eq!(holder(&op, LEASE).await.as_deref(), Some("a"));

    let agents = op.agents("team-a");
    agents.create(&PostParams::default(), &agent("first", "alice", true)).await.expect("create");
    wait_for(&agents, "first", SETTLE, "first Ready", ready).await;
    assert!(a.reconciles("Agent") > 0);
    assert_eq!(b.reconciles("Agent"), 0, "the standby reconciles nothing");
    assert!(b.get("/metrics").await.1.contains("\ncrabglamp_leader 0\n"));

    // SIGTERM's path: drain, then release. Work created meanwhile waits for the next leader.
    assert_eq!(a.stop().await, Ending::Stopped);
    let released = Instant::now();
    agents.create(&PostParams::default(), &agent("second", "alice", true)).await.expect("create");
    eventually(Duration::from_secs(5), "the standby takes over", || async { b.leading() }).await;
    let took = released.elapsed();
    assert!(took < Duration::from_secs(3), "hand-over took {took:?}: it waited for the lease to expire");
    assert_eq!(holder(&op, LEASE).await.as_deref(), Some("b"));

    wait_for(&agents, "second", SETTLE, "second Ready", ready).await;
    wait_for(&agents, "first", SETTLE, "first still Ready", ready).await;
    eventually(Duration::from_secs(10), "the new leader reconciled the old leader's Agent", || async {
        b.reconciles("Agent") >= 2
    })
    .await;
    assert_eq!(servers_of(&op, "first"), 1, "no duplicate after the hand-over");
    assert_eq!(servers_of(&op, "second"), 1);
    assert_eq!(crabglamp_sandbox::hetzner::servers_created(&op.hetzner), 2);
    assert!(b.get("/metrics").await.1.contains("\ncrabglamp_leader 1\n"));
    b.stop().await;
    assert_eq!(holder(&op, LEASE).await, None, "the last leader released the lease too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_once_its_lease_expires() {
    let op = Operator::start_idle().await;
    op.create_namespace("team-a").await;
    let duration = Duration::from_secs(3);
    let a = op.instance(test_config(), Some(lease("a", duration))).await;
    eventually(Duration::from_secs(10), "a leads", || async { a.leading() }).await;
    let b = op.instance(test_config(), Some(lease("b", duration))).await;
    let agents = op.agents("team-a");
    agents.create(&PostParams::default(), &agent("early", "alice", true)).await.expect("create");
    wait_for(&agents, "early", SETTLE, "early Ready", ready).await;
    assert_eq!(b.reconciles("Agent"), 0);

    // SIGKILL: no drain, no release. The Lease still names the dead leader.
    a.kill().await;
    let killed = Instant::now();
    assert_eq!(holder(&op, LEASE).await.as_deref(), Some("a"));
    agents.create(&PostParams::default(), &agent("late", "alice", true)).await.expect("create");
    eventually(duration * 4, "the standby takes over", || async { b.leading() }).await;
    let took = killed.elapsed();
    // Its last look saw a renewal at most one retry period (200 ms) before the kill.
    assert!(took >= duration - Duration::from_millis(500), "took over after {took:?}, before the lease expired");
    wait_for(&agents, "late", SETTLE, "late Ready", ready).await;
    assert_eq!(servers_of(&op, "early"), 1, "no duplicate after the take-over");
    assert_eq!(servers_of(&op, "late"), 1);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_loses_its_lease_stops_reconciling() {
    let op = Operator::start_idle().await;
    op.create_namespace("team-a").await;
    let a = op.instance(test_config(), Some(lease("a", Duration::from_secs(15)))).await;
    eventually(Duration::from_secs(10), "a leads", || async { a.leading() }).await;
    // Someone else holds it now (a partition healed the other way, a person's edit).
    let api: Api<Lease> = Api::namespaced(op.client.clone(), LEASE_NAMESPACE);
    let taken = serde_json::json!({"spec": {"holderIdentity": "intruder", "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now())}});
    api.patch(LEASE, &PatchParams::default(), &Patch::Merge(&taken)).await.expect("patch lease");
    eventually(Duration::from_secs(5), "the instance ends", || async { a.ended() }).await;
    assert!(!a.leading());
    assert_eq!(a.stop().await, Ending::LostLeadership);
    assert_eq!(holder(&op, LEASE).await.as_deref(), Some("intruder"), "a lost leader releases nothing");
}
