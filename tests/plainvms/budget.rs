//! The call budget: converging 50 PlainVMs costs at most 2.2 Hetzner requests per PlainVM,
//! everything included (the operator's start-up, the shared lists, the firewall and server
//! creates: the floor is 2). Counted by the simulator, which serves every request.

use std::time::Duration;

use kube::api::{ListParams, PostParams};

use super::support::*;

const N: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_plainvms_within_the_call_budget() {
    let mut config = test_config();
    // Longer than convergence takes, as a five-minute resync is in production.
    config.resync = Duration::from_secs(60);
    // One shared server list a second while servers boot.
    config.fast_poll = Duration::from_secs(1);
    let op = Operator::start_with(config).await;
    // 50 VMs and the Agents' fleet firewall: one more than Hetzner's default.
    crabglamp_sandbox::hetzner::set_firewall_limit(&op.hetzner, N + 1);
    op.create_namespace("vms").await;
    let api = op.plainvms("vms");
    for i in 0..N {
        api.create(&PostParams::default(), &plainvm(&format!("vm-{i:02}"), "acct_a", true, two_rules()))
            .await
            .expect("create");
    }
    let start = tokio::time::Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        if list.items.len() == N && list.items.iter().all(vm_ready) {
            break;
        }
        let ready = list.items.iter().filter(|v| vm_ready(v)).count();
        assert!(start.elapsed() < Duration::from_secs(120), "{ready} of {N} Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hz = op.hetzner.control().total_requests();
    println!(
        "{N} PlainVMs Ready in {:?}: Hetzner {hz} requests ({:.2}/PlainVM)",
        start.elapsed(),
        hz as f64 / N as f64
    );
    print_breakdown("Hetzner", &op.hetzner);
    assert!(hz as f64 <= 2.2 * N as f64, "Hetzner: {hz} requests for {N} PlainVMs");
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), N, "no duplicate server");
    assert_eq!(crabglamp_sandbox::hetzner::firewall_count(&op.hetzner), N + 1, "no duplicate firewall");
    assert_eq!(hz_requests(&op, "POST", "/actions/apply_to_resources"), 0, "every firewall was in its create call");
    op.stop().await;
}
