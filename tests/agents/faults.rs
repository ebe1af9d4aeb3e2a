//! Clouds that fail: with 30% of Hetzner and Cloudflare requests failing (some after the
//! change was applied, the answer lost), Agents still converge, with no duplicate server,
//! tunnel or DNS record, and delete cleanly.

use std::time::Duration;

use crabglamp_sandbox::http::{FaultPlan, FaultRule};
use kube::api::{DeleteParams, ListParams, PostParams};

use super::fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_failures_still_converge_without_duplicates() {
    let op = Operator::start().await;
    for sim in [&op.hetzner, &op.cloudflare] {
        // Every injected failure happens after the change was applied: the nastiest case.
        sim.set_faults(FaultPlan {
            rules: FaultRule::any_5xx(0.3),
            seed: 7,
            fail_after_apply: true,
            ..FaultPlan::default()
        });
    }
    op.create_namespace("faults").await;
    let api = op.agents("faults");
    const N: usize = 8;
    for i in 0..N {
        api.create(&PostParams::default(), &agent(&format!("bot-{i}"), "acct_a", true)).await.expect("create");
    }
    let start = tokio::time::Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        if list.items.iter().filter(|a| ready(a)).count() == N {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {N} Ready",
            list.items.iter().filter(|a| ready(a)).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for sim in [&op.hetzner, &op.cloudflare] {
        assert!(sim.requests().iter().any(|r| r.injected), "faults were injected");
    }
    let servers = crabglamp_sandbox::hetzner::server_names(&op.hetzner);
    assert_eq!(servers.len(), N, "one server each: {servers:?}");
    assert_eq!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).len(), N, "one tunnel each");
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), N, "one record each");

    for i in 0..N {
        api.delete(&format!("bot-{i}"), &DeleteParams::default()).await.expect("delete");
    }
    let start = tokio::time::Instant::now();
    while !api.list(&ListParams::default()).await.expect("list").items.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "deletes did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).is_empty());
    assert!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).is_empty());
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), 0);
    op.stop().await;
}
