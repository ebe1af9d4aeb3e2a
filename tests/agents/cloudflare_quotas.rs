//! Cloudflare full: the account at its limit of 1,000 cloudflared tunnels, or the zone at its
//! plan's DNS records quota. The Agent past the limit shows `TunnelReady=False`, reason
//! `TunnelQuotaExceeded` (or `DnsReady=False`, reason `DnsQuotaExceeded`), and `Stalled`, with
//! advice in an Event; no server is created for it (nothing billed); what someone else made
//! in the account is left alone; and the Agent turns Ready by itself once another Agent's
//! deletion frees a slot.

use std::time::Duration;

use crabglamp_operator::api::Agent;
use crabglamp_sandbox::cloudflare as cfsim;
use kube::api::{DeleteParams, PostParams};

use super::fixture::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn reason_of(a: &Agent, type_: &str) -> Option<(String, String)> {
    let c = a.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

/// A quota, how a test fills it to one short of full with someone else's objects, and how it
/// counts what the account holds.
struct Quota {
    /// The condition that says so, and its reason.
    condition: &'static str,
    reason: &'static str,
    limit: usize,
    /// What the advice in the message says to do first.
    advice: &'static str,
    held: fn(&Operator) -> usize,
}

/// In namespace `ns`: someone else fills the quota to one short of its limit, the first Agent
/// fills it, and the next one (the `limit + 1`-th) stalls without a server until the first
/// is deleted.
async fn the_next_agent_stalls_until_a_slot_frees(op: &Operator, ns: &str, quota: &Quota) {
    op.create_namespace(ns).await;
    let api = op.agents(ns);
    api.create(&PostParams::default(), &agent("first", "acct_a", true)).await.expect("create first");
    wait_for(&api, "first", DEADLINE, "the Agent that fills the quota Ready", ready).await;
    assert_eq!((quota.held)(op), quota.limit, "full");

    api.create(&PostParams::default(), &agent("second", "acct_a", true)).await.expect("create second");
    let stalled = (quota.condition, quota.reason);
    let second = wait_for(&api, "second", DEADLINE, "stalled at the quota", |a| {
        reason_of(a, stalled.0) == Some(("False".into(), stalled.1.into()))
    })
    .await;
    assert_eq!(reason_of(&second, "Stalled"), Some(("True".into(), quota.reason.into())));
    assert_eq!(reason_of(&second, "Ready").map(|r| r.0), Some("False".to_owned()));
    let message = condition_message(&second, quota.condition);
    assert!(message.contains(quota.advice), "{message}");
    wait_for_event(op, ns, quota.reason, DEADLINE).await;
    assert_eq!(crabglamp_sandbox::hetzner::servers_created(&op.hetzner), 1, "no server for the Agent past the quota");
    assert_eq!((quota.held)(op), quota.limit, "nothing made past the quota");

    // The first Agent goes: its slot frees, and the second resumes by itself.
    api.delete("first", &DeleteParams::default()).await.expect("delete first");
    wait_gone(&api, "first", DEADLINE).await;
    let second = wait_for(&api, "second", DEADLINE, "Ready once a slot is free", ready).await;
    assert!(reason_of(&second, "Stalled").is_none(), "the stall cleared");
    assert_eq!((quota.held)(op), quota.limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_1001st_agent_stalls_without_a_server_until_a_tunnel_frees() {
    let op = Operator::start().await;
    // Cloudflare's limit as it is: 999 tunnels made by another team, then one Agent fills it.
    let limit = cfsim::TUNNELS_PER_ACCOUNT;
    cfsim::add_foreign_tunnels(&op.cloudflare, "other-team", limit - 1);
    let quota = Quota {
        condition: "TunnelReady",
        reason: "TunnelQuotaExceeded",
        limit,
        advice: "ask Cloudflare for a higher limit",
        held: |op| cfsim::live_tunnel_names(&op.cloudflare).len(),
    };
    the_next_agent_stalls_until_a_slot_frees(&op, "full", &quota).await;
    let others = cfsim::live_tunnel_names(&op.cloudflare).into_iter().filter(|n| n.starts_with("other-team-")).count();
    assert_eq!(others, limit - 1, "the other team's tunnels untouched");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_free_zone_stalls_the_next_agent_without_a_server_until_a_record_frees() {
    let op = Operator::start().await;
    // A Free zone's quota (200 records) binds long before the account's tunnels: 199 records
    // made by someone else, then one Agent's record fills it.
    let limit = 200;
    cfsim::set_dns_record_limit(&op.cloudflare, limit);
    cfsim::add_foreign_dns_records(&op.cloudflare, "other-site", limit - 1);
    let quota = Quota {
        condition: "DnsReady",
        reason: "DnsQuotaExceeded",
        limit,
        advice: "move the zone to a larger plan",
        held: |op| cfsim::dns_record_count(&op.cloudflare),
    };
    the_next_agent_stalls_until_a_slot_frees(&op, "free-zone", &quota).await;
    let others =
        cfsim::dns_records(&op.cloudflare).into_iter().filter(|(_, name, _)| name.starts_with("other-site-")).count();
    assert_eq!(others, limit - 1, "the other site's records untouched");
    op.stop().await;
}
