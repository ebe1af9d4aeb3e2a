//! The Cloudflare account full (its limit of 1,000 cloudflared tunnels reached): the 1,001st
//! Agent, which cannot get a tunnel, shows `TunnelReady=False`, reason `TunnelQuotaExceeded`, and `Stalled`,
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
    // Cloudflare's limit as it is: 999 tunnels made by someone else (left alone by the
    // operator), then the 1,000th Agent fills the account.
    let limit = crabglamp_sandbox::cloudflare::TUNNELS_PER_ACCOUNT;
    crabglamp_sandbox::cloudflare::add_foreign_tunnels(&op.cloudflare, "other-team", limit - 1);
    let api = op.agents("full");
    api.create(&PostParams::default(), &agent("first", "acct_a", true)).await.expect("create first");
    wait_for(&api, "first", DEADLINE, "the 1,000th Agent Ready", ready).await;
    assert_eq!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).len(), limit);

    // The 1,001st.
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
    assert_eq!(crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).len(), limit);

    // The first Agent goes: its tunnel frees the slot, and the second resumes by itself.
    api.delete("first", &DeleteParams::default()).await.expect("delete first");
    wait_gone(&api, "first", DEADLINE).await;
    let second = wait_for(&api, "second", DEADLINE, "Ready once a tunnel is free", ready).await;
    assert!(reason_of(&second, "Stalled").is_none(), "the stall cleared");
    let live = crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare);
    assert_eq!(live.len(), limit);
    assert_eq!(live.iter().filter(|n| n.starts_with("other-team-")).count(), limit - 1, "the other tunnels untouched");
    op.stop().await;
}
