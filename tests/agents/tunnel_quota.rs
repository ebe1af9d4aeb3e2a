//! The Cloudflare account full (its limit of cloudflared tunnels reached): an Agent that
//! cannot get a tunnel shows `TunnelReady=False`, reason `TunnelQuotaExceeded`, and `Stalled`,
//! with advice in an Event; no server is created for it (nothing billed); and it turns Ready by
//! itself once another Agent's deletion frees a tunnel.

use std::time::Duration;

use crabglamp_operator::api::Agent;
use kube::api::{DeleteParams, PostParams};

use super::fixture::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn reason_of(a: &Agent, type_: &str) -> Option<(String, String)> {
    let c = a.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_account_stalls_the_next_agent_without_a_server_until_a_tunnel_frees() {
    let op = Operator::start().await;
    op.create_namespace("full").await;
    // An account that holds one tunnel: the first Agent fills it.
    crabglamp_sandbox::cloudflare::set_tunnel_limit(&op.cloudflare, 1);
    let api = op.agents("full");
    api.create(&PostParams::default(), &agent("first", "acct_a", true)).await.expect("create first");
    wait_for(&api, "first", DEADLINE, "the first Agent Ready", ready).await;

    api.create(&PostParams::default(), &agent("second", "acct_a", true)).await.expect("create second");
    let second = wait_for(&api, "second", DEADLINE, "stalled at the tunnel limit", |a| {
        reason_of(a, "TunnelReady") == Some(("False".into(), "TunnelQuotaExceeded".into()))
    })
    .await;
    assert_eq!(reason_of(&second, "Stalled"), Some(("True".into(), "TunnelQuotaExceeded".into())));
    assert_eq!(reason_of(&second, "Ready").map(|r| r.0), Some("False".to_owned()));
    let message = second
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "TunnelReady"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("ask Cloudflare for a higher limit"), "{message}");
    wait_for_event(&op, "full", "TunnelQuotaExceeded", DEADLINE).await;
    assert_eq!(crabglamp_sandbox::hetzner::servers_created(&op.hetzner), 1, "no server without its tunnel");
    assert_eq!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).len(), 1);

    // The first Agent goes: its tunnel frees the slot, and the second resumes by itself.
    api.delete("first", &DeleteParams::default()).await.expect("delete first");
    wait_gone(&api, "first", DEADLINE).await;
    let second = wait_for(&api, "second", DEADLINE, "Ready once a tunnel is free", ready).await;
    assert!(reason_of(&second, "Stalled").is_none(), "the stall cleared");
    assert_eq!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).len(), 1);
    op.stop().await;
}
