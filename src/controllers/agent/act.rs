//! The Agent's steps in the world (tunnel, tunnel config, DNS record, server, power) and its
//! transfers.

use chrono::Utc;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::agent::TunnelStatus;
use crate::api::{Agent, AgentStatus};
use crate::cloud::CloudError;
use crate::cloud::cloudflare::{IngressRule, TunnelSecret, derive_tunnel_token};
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::credentials;
use crate::store::seal::CredentialId;

use crate::controllers::context::Context;
use crate::controllers::fleet::tunnel::ObservedTunnel;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::server::names::{dns_mark, tunnel_target};
use crate::controllers::server::{self, Owner, PowerStep};

use super::decide::*;

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
    status: &mut AgentStatus,
    step: &Step,
) -> Result<(), ReconcileError> {
    match step {
        Step::AcceptOwner => status.owner = Some(accepted_owner(ctx, agent).await?),
        Step::RecordTransfer { from, to, sequence } => {
            record_transfer(ctx, owner, agent, (from, to), *sequence).await?;
            status.owner = Some(to.clone());
            let note = format!("Owner changed from {from} to {to}; audit event recorded.");
            ctx.event(agent, false, "Transferred", "Transfer", note).await;
        }
        Step::CreateTunnel { name, replaces } => create_tunnel(ctx, agent, owner, name, replaces.as_deref()).await?,
        Step::ConfigureTunnel { tunnel_id, hostname, service } => {
            let rule = IngressRule { hostname: Some(hostname.clone()), service: service.clone(), path: None };
            ctx.clients.cloudflare.put_tunnel_config(tunnel_id, &[rule]).await.map_err(ReconcileError::Cloudflare)?;
            ctx.telemetry.metrics.count_step(KIND, "configure_tunnel");
            let t = status.tunnel.get_or_insert_with(TunnelStatus::default);
            t.id = Some(tunnel_id.clone());
            t.hostname = Some(hostname.clone());
            t.service = Some(service.clone());
            let note = format!("{hostname} routes to {service} inside the server.");
            ctx.event(agent, false, "TunnelConfigured", "ConfigureTunnel", note).await;
        }
        Step::CreateDns { hostname, tunnel_id, replaces } => {
            create_dns(ctx, agent, owner, hostname, tunnel_id, replaces.as_deref()).await?
        }
        Step::RepointDns { record_id, hostname, tunnel_id } => {
            let target = tunnel_target(tunnel_id);
            let updated = ctx
                .clients
                .cloudflare
                .update_dns_record(record_id, &target, true)
                .await
                .map_err(ReconcileError::Cloudflare)?;
            ctx.shared.fleet.record_dns(&owner.uid, updated);
            ctx.telemetry.metrics.count_step(KIND, "repoint_dns");
            let note = format!("{hostname} now points at tunnel {tunnel_id}.");
            ctx.event(agent, false, "DnsRepointed", "UpdateDns", note).await;
        }
        Step::CreateServer { tunnel_id, tunnel_name, firewall, replaces } => {
            let created = (tunnel_id.as_str(), tunnel_name.as_str(), *firewall);
            create_agent_server(ctx, agent, owner, created, *replaces, status).await?
        }
        Step::AttachFirewall { server_id, firewall_id } => {
            ctx.clients.hetzner.apply_firewall(*firewall_id, *server_id).await.map_err(ReconcileError::Hetzner)?;
            ctx.shared.fleet.record_attachment(&owner.uid, *firewall_id);
            ctx.telemetry.metrics.count_step(KIND, "attach_firewall");
            let note = format!(
                "The closed fleet firewall {firewall_id} was detached from server {server_id}; attached it again."
            );
            ctx.event(agent, true, "FirewallReattached", "AttachFirewall", note).await;
        }
        Step::Power { step, server, observed, tunnel_name } => {
            if *step == PowerStep::PowerOn {
                ctx.shared.fleet.tunnel_lost_its_connector(tunnel_name);
            }
            let subject = server::PowerSubject {
                server: server.as_ref().clone(),
                observed: observed.clone(),
                billed_owner: status.owner.clone(),
            };
            server::power_step(ctx, agent, owner, &intent(&agent.spec), subject, *step).await?
        }
    }
    Ok(())
}

/// Creates (or adopts) the Agent's tunnel `name`, with its secret sealed before.
async fn create_tunnel(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    name: &str,
    replaces: Option<&str>,
) -> Result<(), ReconcileError> {
    let secret = tunnel_secret(ctx, &owner.uid).await?;
    let (tunnel, adopted) =
        ctx.clients.cloudflare.create_tunnel(name, &secret).await.map_err(ReconcileError::Cloudflare)?;
    let recreated = replaces.is_some_and(|old| old != tunnel.id);
    ctx.shared.fleet.record_tunnel(ObservedTunnel::from_api(&tunnel));
    ctx.telemetry.metrics.count_step(KIND, "create_tunnel");
    let note = if recreated {
        "The tunnel was deleted outside the operator; a new one was created."
    } else if adopted {
        "Adopted the tunnel an earlier attempt created."
    } else {
        "Tunnel created."
    };
    let reason = if recreated { "TunnelRecreated" } else { "TunnelCreated" };
    ctx.event(agent, recreated, reason, "CreateTunnel", format!("{note} Tunnel id {}.", tunnel.id)).await;
    Ok(())
}

/// Creates the server behind the fleet firewall, with the tunnel token in its user data.
async fn create_agent_server(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    (tunnel_id, tunnel_name, firewall): (&str, &str, Option<i64>),
    vanished: Option<i64>,
    status: &mut AgentStatus,
) -> Result<(), ReconcileError> {
    let secret = tunnel_secret(ctx, &owner.uid).await?;
    let token = derive_tunnel_token(ctx.clients.cloudflare.account_id(), tunnel_id, &secret);
    let user_data = crate::controllers::server::cloud_init::agent_user_data(&agent.spec.ssh_keys, &token)
        .map_err(|e| ReconcileError::UserData(e.to_string()))?;
    let intent = intent(&agent.spec);
    let spec =
        server::create_spec(owner, &intent, ctx.config.installation(), user_data, firewall.into_iter().collect());
    ctx.shared.fleet.tunnel_lost_its_connector(tunnel_name);
    let created = server::create_server(ctx, owner, &spec).await?;
    status.server = Some(server::server_status(&created, None));
    let (warning, reason, note) = server::created_event(vanished, &created, &intent);
    ctx.event(agent, warning, reason, "CreateServer", note).await;
    Ok(())
}

/// Creates the hostname's record pointing at the tunnel; a name someone else's record holds
/// is remembered as refused (for this resync) and left untouched.
async fn create_dns(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    hostname: &str,
    tunnel_id: &str,
    replaces: Option<&str>,
) -> Result<(), ReconcileError> {
    let mark = dns_mark(ctx.config.installation(), &owner.uid);
    match ctx.clients.cloudflare.create_cname(hostname, &tunnel_target(tunnel_id), Some(&mark)).await {
        Ok((record, _)) => {
            ctx.shared.fleet.record_dns(&owner.uid, record);
            ctx.dns_taken.clear(&owner.uid);
            ctx.telemetry.metrics.count_step(KIND, "create_dns");
            let note = format!("{hostname} now points at tunnel {tunnel_id}.");
            ctx.event(agent, false, "DnsRecordCreated", "CreateDns", note).await;
            // The hostname changed: our record for the old name goes.
            if let Some(old) = replaces {
                ctx.clients.cloudflare.delete_dns_record(old).await.map_err(ReconcileError::Cloudflare)?;
            }
            Ok(())
        }
        Err(CloudError::Conflict(_)) => {
            ctx.dns_taken.taken(&owner.uid, hostname);
            let note = format!("{hostname} is held by a DNS record this operator does not own; it was left untouched.");
            ctx.event(agent, true, DNS_NAME_TAKEN, "CreateDns", note).await;
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

/// The owner a destroy bills: the last recorded transfer's, else the owner accepted at
/// creation as the API server's copy holds it (the cache may not show it yet), else the spec's
/// (nothing was ever accepted).
pub(super) async fn owner_on_record(ctx: &Context, agent: &Agent, uid: &str) -> Result<String, ReconcileError> {
    if let Some(to) = super::observe::transfer_trail(ctx, uid).await?.last_to {
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

/// Appends the trail's `sequence`th transfer, `from` -> `to`. The cached copy the pass decided
/// on may be behind (the owner changed back, or our own status write is not in the cache yet).
/// An audit event cannot be taken back: it is written only when the API server's copy still
/// asks for this very transfer, from the owner the trail (or, before any transfer, the accepted
/// status) says the Agent has. The event key carries the sequence: a second writer of the same
/// transfer (an overlapping leader) is refused by the trail, never recorded twice.
async fn record_transfer(
    ctx: &Context,
    owner: &Owner,
    agent: &Agent,
    (from, to): (&str, &str),
    sequence: usize,
) -> Result<(), ReconcileError> {
    let fresh = agent_api(ctx, agent).get(&agent.name_any()).await?;
    // After the first transfer, `from` is the trail's last owner (the decision's working
    // status starts from it); before it, the owner the API server's copy accepted.
    let accepted =
        if sequence > 1 { Some(from.to_owned()) } else { fresh.status.as_ref().and_then(|s| s.owner.clone()) };
    if fresh.spec.owner != to || accepted.as_deref() != Some(from) {
        return Err(ReconcileError::NotReady("a current copy of the Agent (the cache was behind)"));
    }
    let event = NewAuditEvent {
        event_key: format!("{}/{}/{}", AuditKind::AgentTransferred.as_str(), owner.uid, sequence),
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
    // Recorded before (another writer, e.g. an overlapping leader): it counts only as the
    // trail's last word, or the Agent would follow an owner the trail has moved past.
    if let audit::Appended::AlreadyRecorded(earlier) = &appended {
        let last_to = super::observe::transfer_trail(ctx, &owner.uid).await?.last_to;
        if earlier.details["from"] != from || earlier.details["to"] != to || last_to.as_deref() != Some(to) {
            return Err(ReconcileError::NotReady("the audit trail as another writer extended it"));
        }
    }
    Ok(())
}
