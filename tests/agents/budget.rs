//! The call budget: converging 100 Agents at once costs at most 1.1 Hetzner and 3.2
//! Cloudflare requests per Agent, everything included; over 10 resync periods afterwards the
//! Hetzner requests stay within 10 x ceil(100/50) and the operator writes nothing to the API
//! server. Counts, not timings: the simulators count every request they serve.

use std::time::Duration;

use kube::api::{ListParams, PostParams};

use super::fixture::*;

const N: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_agents_within_the_call_budget() {
    let mut config = test_config();
    // Longer than convergence takes, as a five-minute resync is in production.
    config.resync = Duration::from_secs(60);
    // One shared tunnel list every two seconds while Agents wait for their connectors (five
    // in production): the count then holds on a loaded two-core machine too.
    config.fast_poll = Duration::from_secs(2);
    let op = Operator::start_with(config.clone()).await;
    op.create_namespace("fleet").await;
    let api = op.agents("fleet");
    for i in 0..N {
        api.create(&PostParams::default(), &agent(&format!("bot-{i:03}"), "acct_a", true)).await.expect("create");
    }
    let start = tokio::time::Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        if list.items.len() == N && list.items.iter().all(ready) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {N} Ready",
            list.items.iter().filter(|a| ready(a)).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged_in = start.elapsed();
    let hz = op.hetzner.control().total_requests();
    let cf = op.cloudflare.control().total_requests();
    println!(
        "{N} Agents Ready in {converged_in:?}: Hetzner {hz} requests ({:.2}/Agent), Cloudflare {cf} ({:.2}/Agent)",
        hz as f64 / N as f64,
        cf as f64 / N as f64
    );
    print_breakdown("Hetzner", &op.hetzner);
    print_breakdown("Cloudflare", &op.cloudflare);
    assert!(op.context.clients().hetzner.metrics().remaining("hetzner") > 0, "the remaining budget is exported");
    assert!(hz as f64 <= 1.1 * N as f64, "Hetzner: {hz} requests for {N} Agents");
    assert!(cf as f64 <= 3.2 * N as f64, "Cloudflare: {cf} requests for {N} Agents");
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), N, "no duplicate server");

    // A restarted operator (no memory) with a short resync: it adopts the fleet from the
    // lists, writes nothing, and idles at one list page per 50 servers per resync.
    let mut config = test_config();
    config.resync = Duration::from_secs(2);
    let rv = op.kube.writes_by(OPERATOR_USER);
    let before = serde_json::to_value(api.get("bot-000").await.expect("get")).expect("json");
    let creates = crabglamp_sandbox::hetzner::servers_created(&op.hetzner);
    let op = op.restart_with(config.clone()).await;
    wait_until(Duration::from_secs(30), "the restarted operator's first lists", || {
        op.context.fleet().servers_known() && op.context.fleet().tunnels_known() && op.context.fleet().dns_known()
    })
    .await;
    let hz_before = op.hetzner.control().total_requests();
    tokio::time::sleep(config.resync * 10).await;
    let hz_idle = op.hetzner.control().total_requests() - hz_before;
    println!(
        "idle over 10 resyncs: Hetzner {hz_idle} requests, API-server writes by the operator {} -> {}",
        rv,
        op.kube.writes_by(OPERATOR_USER)
    );
    assert!(hz_idle <= 10 * N.div_ceil(50) as u64, "idle Hetzner requests: {hz_idle}");
    let after = serde_json::to_value(api.get("bot-000").await.expect("get")).expect("json");
    assert_eq!(after["status"], before["status"], "status unchanged");
    assert_eq!(op.kube.writes_by(OPERATOR_USER), rv, "an idle fleet writes nothing to the API server");
    assert_eq!(
        crabglamp_sandbox::hetzner::servers_created(&op.hetzner),
        creates,
        "no server created after the restart"
    );
    op.stop().await;
}
