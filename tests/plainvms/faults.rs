//! A failing cloud: with 30% of Hetzner requests failing after the change was applied (the
//! answer lost), PlainVMs still converge with one server and one firewall each, every server
//! behind its own, and delete cleanly.

use std::time::Duration;

use crabglamp_sandbox::http::{FaultPlan, FaultRule};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, PostParams};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_failures_still_converge_without_duplicates() {
    let op = Operator::start().await;
    op.hetzner.set_faults(FaultPlan {
        rules: FaultRule::any_5xx(0.3),
        seed: 11,
        fail_after_apply: true,
        ..FaultPlan::default()
    });
    op.create_namespace("faults").await;
    let api = op.plainvms("faults");
    const N: usize = 6;
    for i in 0..N {
        api.create(&PostParams::default(), &plainvm(&format!("vm-{i}"), "acct_a", true, two_rules()))
            .await
            .expect("create");
    }
    let start = tokio::time::Instant::now();
    let vms = loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        if list.items.iter().filter(|v| vm_ready(v)).count() == N {
            break list.items;
        }
        let ready = list.items.iter().filter(|v| vm_ready(v)).count();
        assert!(start.elapsed() < Duration::from_secs(120), "{ready} of {N} Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(op.hetzner.requests().iter().any(|r| r.injected), "faults were injected");
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), N, "one server each");
    for vm in &vms {
        let uid = vm.uid().expect("uid");
        let fw = vm_firewall(&op, &uid).expect("a firewall each");
        let server = vm.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).expect("server");
        assert_eq!(applied_servers(&fw), vec![server]);
    }
    assert_eq!(crabglamp_sandbox::hetzner::firewall_count(&op.hetzner), N + 1, "one firewall each and the fleet's");

    for i in 0..N {
        api.delete(&format!("vm-{i}"), &DeleteParams::default()).await.expect("delete");
    }
    let start = tokio::time::Instant::now();
    while !api.list(&ListParams::default()).await.expect("list").items.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "deletes did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).is_empty());
    assert_eq!(crabglamp_sandbox::hetzner::firewall_count(&op.hetzner), 1, "only the fleet firewall");
    op.stop().await;
}
