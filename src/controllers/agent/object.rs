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

/// The stall of a tunnel create the account refused at its limit (1,000 cloudflared tunnels
/// by default). Cloudflare documents the limit, not its error's code: any permanent refusal of
/// the create whose message names a limit is taken for it.
fn tunnel_stall(error: &ReconcileError) -> Option<Stall> {
    let cloud = error.cloud()?;
    let detail = cloud.detail();
    let at_limit = matches!(cloud, CloudError::Permanent(_)) && detail.message.to_ascii_lowercase().contains("limit");
    at_limit.then(|| {
        let advice = "the Cloudflare account holds as many tunnels as it may (1,000 per account by default): \
                      delete tunnels it no longer needs, ask Cloudflare for a higher limit, or give this Agent \
                      a shard with another account (the crabglamp.com/shard label). No server is created \
                      without its tunnel; retried every resync.";
        (TUNNEL_QUOTA, format!("{detail}; {advice}"))
    })
}

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

    /// A tunnel create refused at the account's limit names the quota (and what to do); a
    /// stall stops the pass, so no server is created without its tunnel.
    fn stall(step: &Step, error: &ReconcileError) -> Option<Stall> {
        match step {
            Step::CreateTunnel { .. } => tunnel_stall(error).or_else(|| lifecycle::stall_reason(error)),
            _ => lifecycle::stall_reason(error),
        }
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
