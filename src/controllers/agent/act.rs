//! The Agent's steps in the world (tunnel, tunnel config, DNS record, server, power), its
//! transfers and its removal, on the shared reconcile skeleton.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::agent::TunnelStatus;
use crate::api::{Agent, AgentStatus, DeletionPolicy};
use crate::cloud::CloudError;
use crate::cloud::cloudflare::{IngressRule, TunnelSecret, derive_tunnel_token};
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::credentials;
use crate::store::seal::CredentialId;

use crate::controllers::context::Context;
use crate::controllers::fleet::tunnel::ObservedTunnel;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::lifecycle::{self, Destroyed, ManagedObject, Pass, ServerObject, Stall, Target};
use crate::controllers::server::names::{dns_mark, tunnel_name, tunnel_target};
use crate::controllers::server::{self, Owner, PowerStep, ServerIntent};

use super::decide::*;
use super::observe::observe;

pub(super) fn secret_id(uid: &str) -> CredentialId {
    CredentialId { scope: SECRET_SCOPE.into(), resource_uid: uid.into(), name: SECRET_NAME.into() }
}

/// The tunnel secret of the object: sealed in PostgreSQL before the tunnel is created, so a
/// crash after the create finds it again (and the token derived from it stays valid). Chosen
/// once: a new secret is only inserted when none is stored, and what is used is what was read
/// back, so two instances racing on a new Agent (leaders overlapping) create or adopt the tunnel
/// with the one secret the database keeps, never each their own.
pub(super) async fn tunnel_secret(ctx: &Context, uid: &str) -> Result<TunnelSecret, ReconcileError> {
    let id = secret_id(uid);
    let stored = match credentials::get_credential(&ctx.clients.db, &ctx.clients.sealing, &id).await? {
        Some(bytes) => bytes,
        None => {
            credentials::put_credential_once(
                &ctx.clients.db,
                &ctx.clients.sealing,
                &id,
                TunnelSecret::generate().expose_bytes(),
            )
            .await?
        }
    };
    TunnelSecret::from_bytes(stored).ok_or_else(|| ReconcileError::Secret("stored secret too short".into()))
}

pub(super) async fn act(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    hostname: &str,
    status: &mut AgentStatus,
    step: &Step,
) -> Result<(), ReconcileError> {
    match step {
        Step::AcceptOwner => status.owner = Some(accepted_owner(ctx, agent).await?),
        Step::RecordTransfer { from, to } => {
            record_transfer(ctx, owner, agent, from, to).await?;
            status.owner = Some(to.clone());
            ctx.event(
                agent,
                false,
                "Transferred",
                "Transfer",
                format!("Owner changed from {from} to {to}; audit event recorded."),
            )
            .await;
        }
        Step::CreateTunnel => create_tunnel(ctx, agent, owner, status).await?,
        Step::ConfigureTunnel => configure_tunnel(ctx, agent, owner, hostname, status).await?,
        Step::CreateDns => create_dns(ctx, agent, owner, hostname).await?,
        Step::RepointDns => repoint_dns(ctx, agent, owner, hostname).await?,
        Step::CreateServer => create_agent_server(ctx, agent, owner, status).await?,
        Step::AttachFirewall => {
            let (Some(server), Some(fw)) = (ctx.shared.fleet.server(&owner.uid), ctx.fleet_firewall()) else {
                return Ok(());
            };
            ctx.clients.hetzner.apply_firewall(fw, server.id).await.map_err(ReconcileError::Hetzner)?;
            let mut seen = server.clone();
            seen.public_net
                .firewalls
                .push(crate::cloud::hetzner::FirewallAttachment { id: fw, status: Some("pending".into()) });
            ctx.shared.fleet.record_server(&owner.uid, seen);
            ctx.telemetry.metrics.count_step(KIND, "attach_firewall");
            ctx.event(
                agent,
                true,
                "FirewallReattached",
                "AttachFirewall",
                format!("The closed fleet firewall {fw} was detached from server {}; attached it again.", server.id),
            )
            .await;
        }
        Step::Power(power) => {
            let Some(server) = ctx.shared.fleet.server(&owner.uid) else { return Ok(()) };
            let observed = effective_server_status(
                &server,
                ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)).as_ref(),
            );
            if *power == PowerStep::PowerOn {
                ctx.shared.fleet.tunnel_lost_its_connector(&tunnel_name(ctx.config.installation(), &owner.uid));
            }
            let subject = server::PowerSubject { server, observed, billed_owner: status.owner.clone() };
            server::power_step(ctx, agent, owner, &intent(&agent.spec), subject, *power).await?
        }
    }
    Ok(())
}

/// Creates (or adopts) the Agent's tunnel, with its secret sealed before.
async fn create_tunnel(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    status: &mut AgentStatus,
) -> Result<(), ReconcileError> {
    let secret = tunnel_secret(ctx, &owner.uid).await?;
    let (tunnel, adopted) = ctx
        .clients
        .cloudflare
        .create_tunnel(&tunnel_name(ctx.config.installation(), &owner.uid), &secret)
        .await
        .map_err(ReconcileError::Cloudflare)?;
    let recreated = status.tunnel.as_ref().and_then(|t| t.id.as_ref()).is_some_and(|old| *old != tunnel.id);
    ctx.shared.fleet.record_tunnel(ObservedTunnel::from_api(&tunnel));
    ctx.telemetry.metrics.count_step(KIND, "create_tunnel");
    let note = if recreated {
        "The tunnel was deleted outside the operator; a new one was created."
    } else if adopted {
        "Adopted the tunnel an earlier attempt created."
    } else {
        "Tunnel created."
    };
    ctx.event(
        agent,
        recreated,
        if recreated { "TunnelRecreated" } else { "TunnelCreated" },
        "CreateTunnel",
        format!("{note} Tunnel id {}.", tunnel.id),
    )
    .await;
    Ok(())
}

/// Routes the hostname through the tunnel to the service inside the server.
async fn configure_tunnel(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    hostname: &str,
    status: &mut AgentStatus,
) -> Result<(), ReconcileError> {
    let Some(tunnel) = ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)) else {
        return Ok(());
    };
    let rule =
        IngressRule { hostname: Some(hostname.to_owned()), service: agent.spec.tunnel.service.clone(), path: None };
    ctx.clients.cloudflare.put_tunnel_config(&tunnel.id, &[rule]).await.map_err(ReconcileError::Cloudflare)?;
    ctx.telemetry.metrics.count_step(KIND, "configure_tunnel");
    let t = status.tunnel.get_or_insert_with(TunnelStatus::default);
    t.id = Some(tunnel.id.clone());
    t.hostname = Some(hostname.to_owned());
    t.service = Some(agent.spec.tunnel.service.clone());
    ctx.event(
        agent,
        false,
        "TunnelConfigured",
        "ConfigureTunnel",
        format!("{hostname} routes to {} inside the server.", agent.spec.tunnel.service),
    )
    .await;
    Ok(())
}

/// Points the hostname's record at the current tunnel.
async fn repoint_dns(ctx: &Context, agent: &Agent, owner: &Owner, hostname: &str) -> Result<(), ReconcileError> {
    let (Some(record), Some(tunnel)) = (
        ctx.shared.fleet.dns_record(&owner.uid),
        ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)),
    ) else {
        return Ok(());
    };
    let updated = ctx
        .clients
        .cloudflare
        .update_dns_record(&record.id, &tunnel_target(&tunnel.id), true)
        .await
        .map_err(ReconcileError::Cloudflare)?;
    ctx.shared.fleet.record_dns(&owner.uid, updated);
    ctx.telemetry.metrics.count_step(KIND, "repoint_dns");
    ctx.event(agent, false, "DnsRepointed", "UpdateDns", format!("{hostname} now points at tunnel {}.", tunnel.id))
        .await;
    Ok(())
}

/// Creates the server behind the fleet firewall, with the tunnel token in its user data.
async fn create_agent_server(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    status: &mut AgentStatus,
) -> Result<(), ReconcileError> {
    let Some(tunnel) = ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)) else {
        return Ok(());
    };
    let secret = tunnel_secret(ctx, &owner.uid).await?;
    let token = derive_tunnel_token(ctx.clients.cloudflare.account_id(), &tunnel.id, &secret);
    let user_data = crate::controllers::server::cloud_init::agent_user_data(&agent.spec.ssh_keys, &token)
        .map_err(|e| ReconcileError::UserData(e.to_string()))?;
    let firewalls = ctx.fleet_firewall().into_iter().collect();
    let spec = server::create_spec(owner, &intent(&agent.spec), ctx.config.installation(), user_data, firewalls);
    let vanished = status.server.as_ref().and_then(|s| s.id);
    ctx.shared.fleet.tunnel_lost_its_connector(&tunnel.name);
    let created = server::create_server(ctx, owner, &spec).await?;
    status.server = Some(server::server_status(&created, None));
    let (warning, reason, note) = server::created_event(vanished, &created, &intent(&agent.spec));
    ctx.event(agent, warning, reason, "CreateServer", note).await;
    Ok(())
}

pub(super) async fn create_dns(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    hostname: &str,
) -> Result<(), ReconcileError> {
    let Some(tunnel) = ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)) else {
        return Ok(());
    };
    let old = ctx.shared.fleet.dns_record(&owner.uid);
    match ctx
        .clients
        .cloudflare
        .create_cname(hostname, &tunnel_target(&tunnel.id), Some(&dns_mark(ctx.config.installation(), &owner.uid)))
        .await
    {
        Ok((record, _)) => {
            ctx.shared.fleet.record_dns(&owner.uid, record);
            ctx.dns_taken.clear(&owner.uid);
            ctx.telemetry.metrics.count_step(KIND, "create_dns");
            ctx.event(
                agent,
                false,
                "DnsRecordCreated",
                "CreateDns",
                format!("{hostname} now points at tunnel {}.", tunnel.id),
            )
            .await;
            // The hostname changed: our record for the old name goes.
            if let Some(old) = old.filter(|o| o.name != hostname) {
                ctx.clients.cloudflare.delete_dns_record(&old.id).await.map_err(ReconcileError::Cloudflare)?;
            }
            Ok(())
        }
        Err(CloudError::Conflict(_)) => {
            ctx.dns_taken.taken(&owner.uid, hostname);
            ctx.event(
                agent,
                true,
                DNS_NAME_TAKEN,
                "CreateDns",
                format!("{hostname} is held by a DNS record this operator does not own; it was left untouched."),
            )
            .await;
            Ok(())
        }
        Err(e) => Err(ReconcileError::Cloudflare(e)),
    }
}

/// The owner to accept when the cached copy shows none: the API server's copy may already
/// carry one (our own status write not in the cache yet, and the spec changed since), and
/// accepting the spec's owner over it would move the Agent with no transfer event.
pub(super) async fn accepted_owner(ctx: &Context, agent: &Agent) -> Result<String, ReconcileError> {
    let fresh = agent_api(ctx, agent).get(&agent.name_any()).await?;
    Ok(fresh.status.and_then(|s| s.owner).unwrap_or(fresh.spec.owner))
}

/// The owner the last recorded transfer moved the Agent to, if any. The trail is ahead of
/// any cached `status.owner`: a transfer's status write follows its event, and a cache may not
/// have seen that write yet.
pub(crate) async fn last_transfer_to(ctx: &Context, uid: &str) -> Result<Option<String>, ReconcileError> {
    let events = audit::events_for_resource(&ctx.clients.db, uid).await?;
    Ok(events
        .iter()
        .rev()
        .find(|e| e.kind == AuditKind::AgentTransferred.as_str())
        .and_then(|e| e.details["to"].as_str().map(str::to_owned)))
}

/// The owner a destroy bills: the last recorded transfer's, else the owner accepted at
/// creation as the API server's copy holds it (the cache may not show it yet), else the spec's
/// (nothing was ever accepted).
pub(super) async fn owner_on_record(ctx: &Context, agent: &Agent, uid: &str) -> Result<String, ReconcileError> {
    if let Some(to) = last_transfer_to(ctx, uid).await? {
        return Ok(to);
    }
    match agent.status.as_ref().and_then(|s| s.owner.clone()) {
        Some(accepted) => Ok(accepted),
        None => accepted_owner(ctx, agent).await,
    }
}

pub(super) fn agent_api(ctx: &Context, agent: &Agent) -> Api<Agent> {
    Api::namespaced(ctx.clients.kube.clone(), &agent.namespace().unwrap_or_default())
}

pub(super) async fn record_transfer(
    ctx: &Context,
    owner: &Owner,
    agent: &Agent,
    from: &str,
    to: &str,
) -> Result<(), ReconcileError> {
    let earlier: Vec<_> = audit::events_for_resource(&ctx.clients.db, &owner.uid)
        .await?
        .into_iter()
        .filter(|e| e.kind == AuditKind::AgentTransferred.as_str())
        .collect();
    // A crash after the append and before the status write: that transfer is recorded already.
    if earlier.last().is_some_and(|e| e.details["from"] == from && e.details["to"] == to) {
        return Ok(());
    }
    // The cached copy this pass decided on may be behind (the owner changed back, or our own
    // status write is not in the cache yet). An audit event cannot be taken back: it is written
    // only when the API server's copy still asks for this very transfer, from the owner the
    // trail (or, before any transfer, the accepted status) says the Agent has.
    let fresh = agent_api(ctx, agent).get(&agent.name_any()).await?;
    let accepted = match earlier.last() {
        Some(e) => e.details["to"].as_str().map(str::to_owned),
        None => fresh.status.as_ref().and_then(|s| s.owner.clone()),
    };
    if fresh.spec.owner != to || accepted.as_deref() != Some(from) {
        return Err(ReconcileError::NotReady("a current copy of the Agent (the cache was behind)"));
    }
    let event = NewAuditEvent {
        event_key: format!("{}/{}/{}", AuditKind::AgentTransferred.as_str(), owner.uid, earlier.len() + 1),
        kind: AuditKind::AgentTransferred,
        resource: owner.resource_ref(),
        owners: vec![from.to_owned(), to.to_owned()],
        region: Some(agent.spec.region.as_str().to_owned()),
        cloud_ids: json!({}),
        details: json!({"from": from, "to": to, "generation": agent.metadata.generation}),
        occurred_at: Utc::now(),
    };
    let appended = audit::append(&ctx.clients.db, &event).await?;
    ctx.audit_committed(&appended);
    Ok(())
}

/// One pass's fixed inputs: the object, its identity and its hostname.
pub(super) struct AgentPass {
    target: Target<Agent>,
    hostname: String,
    /// The owner the last recorded transfer moved the Agent to, if any (see
    /// [`last_transfer_to`]).
    owner_on_trail: Option<String>,
}

impl Pass for AgentPass {
    type Object = Agent;
    type Step = Step;

    fn target(&self) -> &Target<Agent> {
        &self.target
    }

    fn lists_known(&self, ctx: &Context) -> bool {
        ctx.shared.fleet.servers_known() && ctx.shared.fleet.tunnels_known() && ctx.shared.fleet.dns_known()
    }

    fn plan(&self, ctx: &Context, status: &AgentStatus) -> Plan {
        let observed = observe(ctx, &self.target.owner, ctx.dns_taken.get(&self.target.owner.uid));
        decide(&self.target.object.spec, status, &self.hostname, &observed, Instant::now(), ctx.config.shutdown_timeout)
    }

    async fn act(&self, ctx: &Context, status: &mut AgentStatus, step: &Step) -> Result<(), ReconcileError> {
        act(ctx, &self.target.object, &self.target.owner, &self.hostname, status, step).await
    }

    fn describe(&self, ctx: &Context, status: &AgentStatus, stalled: Option<Stall>) -> AgentStatus {
        let observed = observe(ctx, &self.target.owner, ctx.dns_taken.get(&self.target.owner.uid));
        let mut next = desired_status(
            self.target.object.metadata.generation,
            &self.target.object.spec,
            status,
            &self.hostname,
            &observed,
            stalled,
            Timestamp::now(),
        );
        // The owner is what the steps recorded (a transfer moves it), not the old status's.
        next.owner = status.owner.clone();
        next
    }

    /// A transfer recorded whose status write never landed (a crash in between, or a write
    /// lost) still moved the Agent: without this, the spec changing back to the old owner
    /// would leave the trail ending at the other one.
    fn working_status(&self, old: &AgentStatus) -> AgentStatus {
        let mut status = old.clone();
        if let Some(to) = &self.owner_on_trail {
            status.owner = Some(to.clone());
        }
        status
    }

    /// The working status's owner: the trail's (see [`Self::working_status`]), or the one a
    /// transfer in this pass just recorded.
    fn billed_owner(&self, status: &AgentStatus) -> Option<String> {
        status.owner.clone()
    }

    fn power_status(&self, ctx: &Context) -> Option<String> {
        let server = ctx.shared.fleet.server(&self.target.owner.uid)?;
        Some(effective_server_status(
            &server,
            ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &self.target.owner.uid)).as_ref(),
        ))
    }
}

impl ServerObject for Agent {
    fn intent(&self) -> ServerIntent {
        intent(&self.spec)
    }
}

impl ManagedObject for Agent {
    lifecycle::managed_kind!(AgentStatus, KIND);

    async fn apply(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
        let hostname = hostname(&agent, &ctx.config.zone_name);
        let target = Target::of(agent)?;
        let owner_on_trail = last_transfer_to(&ctx, &target.owner.uid).await?;
        lifecycle::apply(&AgentPass { target, hostname, owner_on_trail }, &ctx).await
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
