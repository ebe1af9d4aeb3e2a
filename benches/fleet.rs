//! The call budget as figures: N Agents and N/2 PlainVMs applied at once against the stand-ins
//! (real PostgreSQL), then a restarted operator idling for ten resyncs. Prints time to all
//! Ready, requests per object against their floors (Agent: 1 Hetzner + 3 Cloudflare; PlainVM:
//! 2 Hetzner), the requests by route, idle traffic and API-server writes. Never fails on time.
//!
//! `cargo bench --bench fleet` (N = 100; `CRABGLAMP_BENCH_N=1000` for more). The stand-ins run
//! with 100 ms actions, so the time shown is the operator's own, not the clouds' physics.

use std::time::Duration;

use crabglamp_testkit::fixture::{self, *};
use kube::api::{ListParams, PostParams};

fn main() {
    let n: usize = std::env::var("CRABGLAMP_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    runtime.block_on(run(n));
}

async fn run(n: usize) {
    let vms = n / 2;
    let mut config = test_config();
    config.resync = Duration::from_secs(120);
    config.fast_poll = Duration::from_secs(2);
    let op = Operator::start_with(config).await;
    crabglamp_sandbox::hetzner::set_firewall_limit(&op.hetzner, vms + 1);
    crabglamp_sandbox::hetzner::set_server_limit(&op.hetzner, n + vms);
    // Beyond 1,000 Agents, a fleet no single Cloudflare account holds: the limit is lifted.
    crabglamp_sandbox::cloudflare::set_tunnel_limit(
        &op.cloudflare,
        n.max(crabglamp_sandbox::cloudflare::TUNNELS_PER_ACCOUNT),
    );
    op.create_namespace("bench").await;
    let agents = op.agents("bench");
    let plainvms = op.plainvms("bench");
    let started = tokio::time::Instant::now();
    for i in 0..n {
        agents.create(&PostParams::default(), &agent(&format!("ag-{i:05}"), "acct_a", true)).await.expect("create");
    }
    for i in 0..vms {
        let vm = plainvm(&format!("vm-{i:05}"), "acct_a", true, serde_json::json!([]));
        plainvms.create(&PostParams::default(), &vm).await.expect("create");
    }
    loop {
        let a = agents.list(&ListParams::default()).await.expect("list").items.iter().filter(|a| ready(a)).count();
        let v = plainvms.list(&ListParams::default()).await.expect("list").items.iter().filter(|v| vm_ready(v)).count();
        if a == n && v == vms {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            println!("gave up after 30 minutes: {a}/{n} Agents, {v}/{vms} PlainVMs Ready");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converged = started.elapsed();
    let hz = op.hetzner.control().total_requests() as f64;
    let cf = op.cloudflare.control().total_requests() as f64;
    println!("| figure | value | floor |");
    println!("| --- | --- | --- |");
    println!("| objects | {n} Agents, {vms} PlainVMs | |");
    println!("| time to all Ready | {converged:.1?} | |");
    println!(
        "| Hetzner requests per object | {:.2} | {:.2} |",
        hz / (n + vms) as f64,
        (n + 2 * vms) as f64 / (n + vms) as f64
    );
    println!("| Cloudflare requests per Agent | {:.2} | 3.00 |", cf / n as f64);
    println!(
        "| status writes (Agents, PlainVMs) | {}, {} | |",
        op.context.metrics().status_writes("Agent"),
        op.context.metrics().status_writes("PlainVM")
    );
    print_breakdown("Hetzner", &op.hetzner);
    print_breakdown("Cloudflare", &op.cloudflare);

    let mut idle = test_config();
    idle.resync = Duration::from_secs(2);
    let rv = op.kube.writes_by(fixture::OPERATOR_USER);
    let op = op.restart_with(idle.clone()).await;
    let start = tokio::time::Instant::now();
    while !(op.context.fleet().servers_known() && op.context.fleet().tunnels_known() && op.context.fleet().dns_known())
    {
        if start.elapsed() > Duration::from_secs(60) {
            println!("the restarted operator never listed the fleet");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = op.hetzner.control().total_requests();
    tokio::time::sleep(idle.resync * 10).await;
    let idle_hz = op.hetzner.control().total_requests() - before;
    println!(
        "| idle Hetzner requests per resync | {:.1} | {} (one page per 50 servers) |",
        idle_hz as f64 / 10.0,
        (n + vms).div_ceil(50)
    );
    println!(
        "| API-server writes at idle (10 resyncs, after a restart) | {} | 0 |",
        op.kube.writes_by(fixture::OPERATOR_USER) - rv
    );
    op.stop().await;
}
