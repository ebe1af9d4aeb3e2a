//! The Agent on the reconcile skeleton: what it observes, decides, does and reports in a pass,
//! and its removal.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::api::{Agent, AgentStatus, DeletionPolicy};
use crate::cloud::CloudError;
use crate::store::audit::AuditKind;
use crate::store::credentials;

use crate::controllers::config::ControllerConfig;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::lifecycle::{self, Destroyed, ManagedObject, Plan, Stall, UsageSeen};
use crate::controllers::server::names::tunnel_name;
use crate::controllers::server::{self, Owner};

use super::act::{act, owner_on_record, secret_id};
use super::decide::*;

/// The stall of a create Cloudflare refused at a quota, or `None` for any other error. The
/// tunnel limit (1,000 per account by default) is documented, not its error's code: any
/// permanent refusal of the tunnel create whose message names a limit is taken for it. The
/// DNS records quota of the zone's plan answers code 81045, "Record quota exceeded.".
fn quota_stall(step: &Step, error: &ReconcileError) -> Option<Stall> {
    let cloud = error.cloud()?;
    if !matches!(cloud, CloudError::Permanent(_)) {
        return None;
    }
    let detail = cloud.detail();
    let message = detail.message.to_ascii_lowercase();
    let (reason, advice) = match step {
        Step::CreateTunnel { .. } if message.contains("limit") => (
            TUNNEL_QUOTA,
            "the Cloudflare account holds as many tunnels as it may (1,000 per account by default): \
             delete tunnels it no longer needs, ask Cloudflare for a higher limit, or give this Agent \
             a shard with another account (the crabglamp.com/shard label). No server is created \
             without its tunnel; retried every resync.",
        ),
        Step::CreateDns { .. } if detail.code == DNS_QUOTA_CODE || message.contains("quota") => (
            DNS_QUOTA,
            "the zone holds as many DNS records as its plan allows (200 on a Free zone, 3,500 on Pro \
             and Business): delete records it no longer needs, move the zone to a larger plan, or give \
             this Agent a shard with another zone (the crabglamp.com/shard label). No server is \
             created without its record; retried every resync.",
        ),
        _ => return None,
    };
    Some((reason, format!("{detail}; {advice}")))
}

/// Cloudflare's error code for a DNS record create past the zone's quota.
const DNS_QUOTA_CODE: &str = "81045";

impl ManagedObject for Agent {
    type Observed = Observed;
    type Step = Step;
    lifecycle::managed_kind!(AgentStatus, KIND);

    fn lists_known(ctx: &Context) -> bool {
        ctx.shared.fleet.servers_known() && ctx.shared.fleet.tunnels_known() && ctx.shared.fleet.dns_known()
    }

    async fn observe(&self, ctx: &Context, owner: &Owner) -> Result<Observed, ReconcileError> {
        super::observe::observe(ctx, self, owner).await
    }

    /// A transfer recorded whose status write never landed (a crash in between, or a write
    /// lost) still moved the Agent: without this, the spec changing back to the old owner
    /// would leave the trail ending at the other one.
    fn working_status(old: &AgentStatus, observed: &Observed) -> AgentStatus {
        let mut status = old.clone();
        if let Some(to) = &observed.trail.last_to {
            status.owner = Some(to.clone());
        }
        status
    }

    fn decide(&self, status: &AgentStatus, observed: &Observed, config: &ControllerConfig, now: Instant) -> Plan<Step> {
        decide(&self.spec, status, observed, now, config.shutdown_timeout)
    }

    async fn act(
        &self,
        ctx: &Context,
        owner: &Owner,
        status: &mut AgentStatus,
        step: &Step,
    ) -> Result<(), ReconcileError> {
        act(ctx, self, owner, status, step).await
    }

    fn describe(
        &self,
        status: &AgentStatus,
        observed: &Observed,
        stalled: Option<Stall>,
        now: Timestamp,
    ) -> AgentStatus {
        let mut next = desired_status(self.metadata.generation, &self.spec, status, observed, stalled, now);
        // The owner is what the steps recorded (a transfer moves it), not the old status's.
        next.owner = status.owner.clone();
        next
    }

    fn usage<'a>(&self, observed: &'a Observed) -> Option<UsageSeen<'a>> {
        let server = observed.server.as_ref()?;
        Some(UsageSeen {
            power: effective_server_status(server, observed.tunnel.as_ref()),
            server,
            tail: observed.timeline?,
            intent: intent(&self.spec),
        })
    }

    /// A tunnel or DNS record create refused at Cloudflare's quota names the quota (and what to
    /// do); a stall stops the pass, so no server is created without its tunnel and record.
    fn stall(step: &Step, error: &ReconcileError) -> Option<Stall> {
        quota_stall(step, error).or_else(|| lifecycle::stall_reason(error))
    }

    /// The working status's owner: the trail's (see [`Self::working_status`]), or the one a
    /// transfer in this pass just recorded.
    fn billed_owner(&self, status: &AgentStatus) -> Option<String> {
        status.owner.clone()
    }

    /// Tears everything down (or takes our marks off, for `Orphan`), then commits the destroy
    /// event; the finalizer goes only after that commit.
    async fn cleanup(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
        let ctx = ctx.as_ref();
        let owner = Owner::of(agent.as_ref(), KIND)?;
        // Not `Ok(requeue)`: the finalizer helper takes any `Ok` from cleanup as "done" and
        // releases the finalizer, which would leak whatever the lists have not shown yet.
        if !(ctx.shared.fleet.servers_known() && ctx.shared.fleet.tunnels_known() && ctx.shared.fleet.dns_known()) {
            return Err(ReconcileError::NotReady("the first complete lists of servers, tunnels and DNS records"));
        }
        let status = agent.status.clone().unwrap_or_default();
        let policy = agent.spec.deletion_policy;
        let server = ctx.shared.fleet.server(&owner.uid);
        let tunnel = ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid));
        let dns = ctx.shared.fleet.dns_record(&owner.uid);
        let server_id = server.as_ref().map(|s| s.id).or(status.server.as_ref().and_then(|s| s.id));
        let tunnel_id = tunnel.as_ref().map(|t| t.id.clone()).or(status.tunnel.as_ref().and_then(|t| t.id.clone()));
        let dns_id =
            dns.as_ref().map(|r| r.id.clone()).or(status.tunnel.as_ref().and_then(|t| t.dns_record_id.clone()));
        let intent = intent(&agent.spec);
        let billed_owner = owner_on_record(ctx, &agent, &owner.uid).await?;
        let observed = server.as_ref().map(|s| effective_server_status(s, tunnel.as_ref()));
        server::settle_before_removal(
            ctx,
            (agent.as_ref(), &owner),
            (&intent, server.as_ref()),
            &billed_owner,
            observed,
        )
        .await?;
        match policy {
            DeletionPolicy::Delete => {
                if let Some(id) = &dns_id {
                    ctx.clients.cloudflare.delete_dns_record(id).await.map_err(ReconcileError::Cloudflare)?;
                    ctx.shared.fleet.forget_dns(&owner.uid);
                }
                if let Some(id) = &tunnel_id {
                    ctx.clients.cloudflare.delete_tunnel(id).await.map_err(ReconcileError::Cloudflare)?;
                    ctx.shared.fleet.forget_tunnel(&tunnel_name(ctx.config.installation(), &owner.uid));
                }
                if let Some(id) = server_id {
                    server::delete_server(ctx, &owner, id).await?;
                }
            }
            // By the fleet view or, when it lacks them (a list that has not shown them yet),
            // the ids status recorded: a mark left behind would have the sweeper delete them.
            DeletionPolicy::Orphan => {
                if let Some(id) = &dns_id {
                    match ctx.clients.cloudflare.set_dns_record_comment(id, None).await {
                        Ok(_) | Err(CloudError::NotFound(_)) => ctx.shared.fleet.forget_dns(&owner.uid),
                        Err(e) => return Err(ReconcileError::Cloudflare(e)),
                    }
                }
                server::unmark_server(ctx, &owner, server.as_ref(), server_id).await?;
                // A tunnel carries no labels: the sealed secret is what makes the sweeper call it
                // ours, so forgetting it is how the tunnel stops being ours.
                ctx.shared.fleet.forget_tunnel(&tunnel_name(ctx.config.installation(), &owner.uid));
            }
        }
        credentials::delete_credential(&ctx.clients.db, &secret_id(&owner.uid)).await?;
        let destroyed = Destroyed {
            kind: AuditKind::AgentDestroyed,
            billed_owner: Some(billed_owner),
            region: Some(intent.region.as_str().to_owned()),
            cloud_ids: json!({"server_id": server_id, "tunnel_id": tunnel_id, "dns_record_id": dns_id}),
            details: json!({
                "deletion_policy": format!("{policy:?}"),
                "orphaned": policy == DeletionPolicy::Orphan,
                "hostname": hostname(&agent, &ctx.config.zone_name),
                "server_name": server::server_name(&owner.name, &owner.uid),
                "price_cell": intent.billed_price_cell(server.as_ref()),
            }),
        };
        lifecycle::commit_destroy(ctx, &owner, destroyed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Provider, ProviderError};

    fn refused(operation: &'static str, code: &str, message: &str, permanent: bool) -> ReconcileError {
        let detail = ProviderError {
            provider: Provider::Cloudflare,
            operation,
            status: Some(400),
            code: code.to_owned(),
            message: message.to_owned(),
        };
        ReconcileError::Cloudflare(if permanent {
            CloudError::Permanent(detail)
        } else {
            CloudError::Retryable(detail)
        })
    }

    #[test]
    fn a_refusal_at_a_cloudflare_quota_stalls_with_its_own_reason() {
        let tunnel = Step::CreateTunnel { name: "crabglamp-u".into(), replaces: None };
        let dns = Step::CreateDns { hostname: "a.example.com".into(), tunnel_id: "t1".into(), replaces: None };
        let at_limit = refused("create_tunnel", "1014", "Tunnel limit reached", true);
        let over_quota = refused("create_dns_record", "81045", "Record quota exceeded.", true);
        let reason = |step: &Step, error: &ReconcileError| Agent::stall(step, error).map(|(reason, _)| reason);
        assert_eq!(reason(&tunnel, &at_limit), Some(TUNNEL_QUOTA));
        assert_eq!(reason(&dns, &over_quota), Some(DNS_QUOTA));
        // The message says what to do.
        let (_, message) = Agent::stall(&dns, &over_quota).unwrap_or_default();
        assert!(message.contains("move the zone to a larger plan"), "{message}");
        // Each quota only where its create refused it; a retryable refusal never stalls.
        assert_ne!(reason(&tunnel, &over_quota), Some(DNS_QUOTA));
        assert_ne!(reason(&dns, &at_limit), Some(TUNNEL_QUOTA));
        assert_eq!(reason(&dns, &refused("create_dns_record", "81045", "Record quota exceeded.", false)), None);
        // Another permanent refusal of the record is not the quota.
        assert_ne!(
            reason(&dns, &refused("create_dns_record", "9005", "Content for CNAME record is invalid", true)),
            Some(DNS_QUOTA)
        );
    }
}
