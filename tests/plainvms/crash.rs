//! Crash safety: the controllers are killed right after the k-th Hetzner request of a
//! PlainVM's create and of its delete (whether or not its answer was read) and restarted with
//! no memory. Each time there is exactly one server and one firewall, the server behind it,
//! and the delete leaves neither, with exactly one destroy event.

use std::time::Duration;

use crabglamp_operator::store::audit;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};

use super::support::*;

const DEADLINE: Duration = Duration::from_secs(60);

async fn until_served(op: &Operator, n: u64) -> bool {
    let start = tokio::time::Instant::now();
    while op.hetzner.control().total_requests() < n {
        if start.elapsed() > Duration::from_secs(20) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

fn ours(op: &Operator, name: &str) -> Vec<String> {
    crabglamp_sandbox::hetzner::server_names(&op.hetzner)
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_each_step_of_create_and_delete() {
    let mut op = Operator::start().await;
    op.create_namespace("crash").await;
    let api = op.plainvms("crash");
    first_lists(&op).await;
    let mut points = 0;
    // Create is two requests (firewall, server); delete two or three (server, firewall, a retry).
    for k in 1..=3u64 {
        let name = format!("crash-{k}");
        let base = op.hetzner.control().total_requests();
        api.create(&PostParams::default(), &plainvm(&name, "acct_a", true, two_rules())).await.expect("create");
        if until_served(&op, base + k).await {
            points += 1;
        }
        op = op.crash_and_restart().await;
        let vm = wait_for(&api, &name, DEADLINE, "Ready after a crash in create", vm_ready).await;
        let uid = vm.uid().expect("uid");
        assert_eq!(ours(&op, &name).len(), 1, "k={k}: one server");
        let firewalls: Vec<_> = crabglamp_sandbox::hetzner::firewalls(&op.hetzner)
            .into_iter()
            .filter(|f| f["labels"]["crabglamp.com/uid"] == uid.as_str())
            .collect();
        assert_eq!(firewalls.len(), 1, "k={k}: one firewall");
        let server_id = vm.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).expect("server id");
        assert_eq!(applied_servers(&firewalls[0]), vec![server_id], "k={k}: the server is behind it");

        let base = op.hetzner.control().total_requests();
        api.delete(&name, &DeleteParams::default()).await.expect("delete");
        if until_served(&op, base + k).await {
            points += 1;
        }
        op = op.crash_and_restart().await;
        wait_gone(&api, &name, DEADLINE).await;
        assert!(ours(&op, &name).is_empty(), "k={k}: no server left");
        assert!(vm_firewall(&op, &uid).is_none(), "k={k}: no firewall left");
        let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
        assert_eq!(events.iter().filter(|e| e.kind == "plainvm.destroyed").count(), 1, "k={k}: one destroy event");
    }
    assert!(points >= 4, "the kills hit the steps ({points} of 6)");
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    op.stop().await;
}
