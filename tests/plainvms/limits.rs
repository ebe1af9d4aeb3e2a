//! Hetzner's firewall limit reached: `FirewallReady=False` with reason `FirewallQuotaExceeded`
//! and advice to ask Hetzner for more, `Stalled`, no server created without its firewall, a
//! periodic retry (not a tight loop), and Ready by itself once the limit is raised.

use std::time::Duration;

use kube::api::PostParams;

use super::support::*;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_firewall_limit_stalls_without_a_server_and_recovers() {
    let op = Operator::start().await;
    first_lists(&op).await;
    // The Agents' fleet firewall takes the only place.
    crabglamp_sandbox::hetzner::set_firewall_limit(&op.hetzner, 1);
    op.create_namespace("quota").await;
    let api = op.plainvms("quota");
    api.create(&PostParams::default(), &plainvm("web", "acct_a", true, two_rules())).await.expect("create");

    let vm = wait_for(&api, "web", DEADLINE, "stalled on the firewall limit", |v| {
        vm_condition(v, "FirewallReady") == Some(("False".into(), "FirewallQuotaExceeded".into()))
    })
    .await;
    assert_eq!(vm_condition(&vm, "Stalled"), Some(("True".into(), "FirewallQuotaExceeded".into())));
    assert_eq!(vm_condition(&vm, "Ready").map(|c| c.0), Some("False".to_owned()));
    let message = vm
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "FirewallReady"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("ask Hetzner for a higher limit"), "{message}");
    assert_eq!(crabglamp_sandbox::hetzner::servers_created(&op.hetzner), 0, "no server without its firewall");

    // A periodic retry: over two resync periods, a handful of attempts, not a loop.
    let attempts = || hz_requests(&op, "POST", "/firewalls");
    let before = attempts();
    tokio::time::sleep(test_config().resync * 2).await;
    let during = attempts() - before;
    assert!((1..=3).contains(&during), "{during} firewall creates in two resync periods");
    assert_eq!(crabglamp_sandbox::hetzner::servers_created(&op.hetzner), 0);

    // Hetzner raised the limit: it resumes by itself.
    crabglamp_sandbox::hetzner::set_firewall_limit(&op.hetzner, 50);
    let vm = wait_for(&api, "web", DEADLINE, "Ready once the limit allows", vm_ready).await;
    assert!(vm_condition(&vm, "Stalled").is_none());
    assert_eq!(crabglamp_sandbox::hetzner::servers_created(&op.hetzner), 1);
    assert_eq!(crabglamp_sandbox::hetzner::firewall_count(&op.hetzner), 2);
    op.stop().await;
}
