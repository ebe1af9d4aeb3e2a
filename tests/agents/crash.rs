//! Crash safety with no human step: the controllers are killed at 12 points of a create and 12
//! of a delete (right after the k-th cloud request was served, whether or not its answer was
//! read; for the teardown's last steps a few milliseconds later) and restarted with no memory.
//! Each time the Agent converges with exactly one server, one tunnel and one DNS record, and
//! its deletion leaves nothing and exactly one destroy event.

use std::time::Duration;

use crabglamp_operator::store::audit;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};

use super::fixture::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn served(op: &Operator) -> u64 {
    op.hetzner.control().total_requests() + op.cloudflare.control().total_requests()
}

async fn until_served(op: &Operator, n: u64) -> bool {
    let start = tokio::time::Instant::now();
    while served(op) < n {
        if start.elapsed() > Duration::from_secs(20) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_every_step_of_create_and_delete() {
    let mut op = Operator::start().await;
    op.create_namespace("crash").await;
    let api = op.agents("crash");
    // The operator's own start-up requests (fleet firewall, first lists) come first.
    let start = tokio::time::Instant::now();
    while !(op.context.fleet.servers_known() && op.context.fleet.tunnels_known() && op.context.fleet.dns_known()) {
        assert!(start.elapsed() < DEADLINE, "first lists");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut points = 0;
    for k in 1..=12u64 {
        let name = format!("crash-{k}");
        // Create, killed after the k-th cloud request of this Agent's create.
        let base = served(&op);
        api.create(&PostParams::default(), &agent(&name, "acct_a", true)).await.expect("create");
        if until_served(&op, base + k).await {
            points += 1;
        }
        op = op.crash_and_restart().await;
        let a = wait_for(&api, &name, DEADLINE, "Ready after a crash in create", ready).await;
        let uid = a.uid().expect("uid");
        let servers: Vec<_> = crabglamp_sandbox::hetzner::server_names(&op.hetzner)
            .into_iter()
            .filter(|n| n.starts_with(&format!("{name}-")))
            .collect();
        assert_eq!(servers.len(), 1, "k={k}: one server, no duplicate: {servers:?}");
        assert_eq!(
            crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare)
                .iter()
                .filter(|t| t.contains(&uid))
                .count(),
            1,
            "k={k}: one tunnel"
        );

        // Delete, killed after the k-th cloud request of the teardown.
        let base = served(&op);
        api.delete(&name, &DeleteParams::default()).await.expect("delete");
        // A teardown makes three cloud requests (record, tunnel, server); points past the third
        // fall a few milliseconds apart into what follows: the destroy transaction and the
        // finalizer's release.
        until_served(&op, base + k.min(3)).await;
        if k > 3 {
            tokio::time::sleep(Duration::from_millis(3 * (k - 3))).await;
        }
        op = op.crash_and_restart().await;
        let start = tokio::time::Instant::now();
        while api.get_opt(&name).await.expect("get").is_some() {
            assert!(start.elapsed() < DEADLINE, "k={k}: finalizer not released after a crash in delete");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !crabglamp_sandbox::hetzner::server_names(&op.hetzner).iter().any(|n| n.starts_with(&format!("{name}-"))),
            "k={k}: server leaked"
        );
        assert!(
            !crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).iter().any(|t| t.contains(&uid)),
            "k={k}: tunnel leaked"
        );
        let destroyed = audit::events_for_resource(&op.db.pool, &uid)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "agent.destroyed")
            .count();
        assert_eq!(destroyed, 1, "k={k}: exactly one destroy event");
    }
    assert!(points >= 10, "only {points} distinct crash points were reached in create");
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), 0, "no DNS record leaked");
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none());
    op.stop().await;
}
