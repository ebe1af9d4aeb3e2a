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
    // Longer than convergence takes, so the count shows what a real five-minute resync costs.
    config.resync = Duration::from_secs(6);
    config.fast_poll = Duration::from_millis(300);
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
        assert!(start.elapsed() < Duration::from_secs(120), "{} of {N} Ready", list.items.iter().filter(|a| ready(a)).count());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged_in = start.elapsed();
    let hz = op.hetzner.control().total_requests();
    let cf = op.cloudflare.control().total_requests();
    println!("{N} Agents Ready in {converged_in:?}: Hetzner {hz} requests ({:.2}/Agent), Cloudflare {cf} ({:.2}/Agent)", hz as f64 / N as f64, cf as f64 / N as f64);
    print_breakdown("Hetzner", &op.hetzner);
    print_breakdown("Cloudflare", &op.cloudflare);
    assert!(hz as f64 <= 1.1 * N as f64, "Hetzner: {hz} requests for {N} Agents");
    assert!(cf as f64 <= 3.2 * N as f64, "Cloudflare: {cf} requests for {N} Agents");
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), N, "no duplicate server");

    // Idle: ten resync periods.
    let rv = op.kube.resource_version();
    let hz_before = op.hetzner.control().total_requests();
    tokio::time::sleep(config.resync * 10).await;
    let hz_idle = op.hetzner.control().total_requests() - hz_before;
    println!("idle over 10 resyncs: Hetzner {hz_idle} requests, API server resourceVersion {} -> {}", rv, op.kube.resource_version());
    assert!(hz_idle <= 10 * N.div_ceil(50) as u64, "idle Hetzner requests: {hz_idle}");
    assert_eq!(op.kube.resource_version(), rv, "an idle fleet writes nothing to the API server");
    op.stop().await;
}

/// Requests by method, path shape (ids replaced by `{id}`) and status: what a failed budget
/// assertion needs to be understood.
fn print_breakdown(provider: &str, sim: &crabglamp_sandbox::http::RunningSim) {
    let mut counts = std::collections::BTreeMap::new();
    for r in sim.requests() {
        let shape: Vec<String> = r
            .path
            .split('/')
            .map(|seg| if seg.chars().any(|c| c.is_ascii_digit()) && seg.len() > 3 { "{id}".to_owned() } else { seg.to_owned() })
            .collect();
        *counts.entry(format!("{} {} {}", r.method, shape.join("/"), r.status)).or_insert(0u32) += 1;
    }
    for (k, v) in counts {
        println!("  {provider}: {v:5} {k}");
    }
}
