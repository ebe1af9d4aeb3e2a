//! The Agent reconciler: a dedicated Hetzner server, reachable only through its own Cloudflare
//! Tunnel at its own hostname, its power on the usage timeline, and an audit event for every
//! transfer and destroy.
//!
//! observe (the shared fleet view and the object) -> decide (`decide`, pure, unit-tested) ->
//! act (one idempotent step at a time). Status is patched only when it changed. It never reads
//! one object from a cloud API (the fleet view does that for all), never writes `spec`, and
//! never logs the tunnel token, the tunnel secret or the root password.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use serde_json::json;
use tracing::Instrument;

use crate::api::agent::TunnelStatus;
use crate::api::{Agent, AgentSpec, AgentStatus, DeletionPolicy, Phase};
use crate::cloud::CloudError;
use crate::cloud::cloudflare::{DnsRecord, IngressRule, TunnelSecret, derive_tunnel_token};
use crate::cloud::hetzner::ServerSummary;
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::seal::{self, CredentialId};
use crate::store::{QueryContext, usage};

use super::conditions::{self, Desired};
use super::context::Context;
use super::error::ReconcileError;
use super::fleet::ObservedTunnel;
use super::names::{default_hostname, dns_mark, tunnel_name, tunnel_target};
use super::server::{self, Owner, PowerStep, ServerIntent};
use super::status_patch::status_merge_patch;

/// The finalizer that holds an Agent until its cloud resources are gone and its destroy event
/// is committed.
pub const FINALIZER: &str = "crabglamp.com/cleanup";
/// `"true"` stops reconciling the object (nothing is created, changed or deleted for it).
pub const PAUSE_ANNOTATION: &str = "crabglamp.com/paused";
const KIND: &str = "Agent";
const PRODUCT: &str = "agent";
/// Where the tunnel secret is sealed (with the object's UID as the row identity).
const SECRET_SCOPE: &str = "agent-tunnel";
const SECRET_NAME: &str = "tunnel-secret";

/// What the reconciler knows of the world for one Agent.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// A complete server list has been seen (absence means absence).
    pub servers_known: bool,
    pub server: Option<ServerSummary>,
    pub tunnels_known: bool,
    pub tunnel: Option<ObservedTunnel>,
    pub dns_known: bool,
    pub dns: Option<DnsRecord>,
    pub fleet_firewall: Option<i64>,
    /// When this process asked the guest to shut down.
    pub shutdown_sent: Option<Instant>,
    /// The hostname was refused because a record we do not own holds it (this generation).
    pub dns_name_taken: Option<String>,
}

/// One idempotent step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// First sight: the spec's owner becomes the recorded one (no transfer).
    AcceptOwner,
    /// The owner changed: one `agent.transferred` event, then `status.owner` moves.
    RecordTransfer {
        from: String,
        to: String,
    },
    CreateTunnel,
    ConfigureTunnel,
    CreateDns,
    /// Our record points elsewhere (the tunnel was re-created): point it at the tunnel.
    RepointDns,
    CreateServer,
    AttachFirewall,
    Power(PowerStep),
}

/// What the next pass waits for, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Nothing,
    /// A list to show the first complete picture.
    Lists,
    /// The tunnel to connect.
    Tunnel,
    /// The server to reach the desired power state.
    Server,
}

/// The decision for one pass: the steps to take now, in order, and what to wait for after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub wait: Wait,
}

/// The server status to believe: a connected tunnel proves the machine is up even when the
/// last server list (at most one resync old) still said it was booting.
pub fn effective_server_status(server: &ServerSummary, tunnel: Option<&ObservedTunnel>) -> String {
    let booting = matches!(server.status.as_str(), "initializing" | "starting");
    if booting && tunnel.is_some_and(ObservedTunnel::connected) { "running".to_owned() } else { server.status.clone() }
}

/// Pure: the steps an Agent needs now.
pub fn decide(
    spec: &AgentSpec,
    status: &AgentStatus,
    hostname: &str,
    observed: &Observed,
    now: Instant,
    shutdown_timeout: Duration,
) -> Plan {
    let mut steps = Vec::new();
    match status.owner.as_deref() {
        None => steps.push(Step::AcceptOwner),
        Some(from) if from != spec.owner => {
            steps.push(Step::RecordTransfer { from: from.to_owned(), to: spec.owner.clone() })
        }
        Some(_) => {}
    }
    if !(observed.servers_known && observed.tunnels_known && observed.dns_known) {
        return Plan { steps, wait: Wait::Lists };
    }
    let recorded = status.tunnel.clone().unwrap_or_default();
    let Some(tunnel) = &observed.tunnel else {
        steps.push(Step::CreateTunnel);
        return Plan { steps, wait: Wait::Nothing };
    };
    let configured = recorded.id.as_deref() == Some(tunnel.id.as_str())
        && recorded.hostname.as_deref() == Some(hostname)
        && recorded.service.as_deref() == Some(spec.tunnel.service.as_str());
    if !configured {
        steps.push(Step::ConfigureTunnel);
    }
    match &observed.dns {
        Some(r) if r.name != hostname => steps.push(Step::CreateDns),
        Some(r) if !r.content.eq_ignore_ascii_case(&tunnel_target(&tunnel.id)) => steps.push(Step::RepointDns),
        Some(_) => {}
        None if observed.dns_name_taken.as_deref() == Some(hostname) => {}
        None => steps.push(Step::CreateDns),
    }
    let Some(server) = &observed.server else {
        steps.push(Step::CreateServer);
        return Plan { steps, wait: Wait::Nothing };
    };
    if let Some(fw) = observed.fleet_firewall
        && !server.public_net.firewalls.iter().any(|a| a.id == fw)
    {
        steps.push(Step::AttachFirewall);
    }
    let effective = effective_server_status(server, Some(tunnel));
    let power = server::decide_power(spec.running, &effective, observed.shutdown_sent, now, shutdown_timeout);
    if power != PowerStep::Hold {
        steps.push(Step::Power(power));
    }
    let wait = if spec.running {
        match effective.as_str() {
            // Booting: the tunnel connecting is the proof it is up, and one tunnel list serves
            // every waiting Agent, so no server list is spent on it.
            "running" | "initializing" | "starting" if !tunnel.connected() => Wait::Tunnel,
            "running" => Wait::Nothing,
            _ => Wait::Server,
        }
    } else if effective != "off" {
        Wait::Server
    } else {
        Wait::Nothing
    };
    Plan { steps, wait }
}

/// Pure: the status that describes what was observed (conditions keep their transition
/// times when unchanged; `stalled` is a permanent error's reason and message).
pub fn desired_status(
    agent_generation: Option<i64>,
    spec: &AgentSpec,
    old: &AgentStatus,
    hostname: &str,
    observed: &Observed,
    stalled: Option<(&'static str, String)>,
    now: Timestamp,
) -> AgentStatus {
    let server = observed.server.as_ref();
    let tunnel = observed.tunnel.as_ref();
    let effective = server.map(|s| effective_server_status(s, tunnel));
    let server_ready = match (spec.running, effective.as_deref()) {
        (true, Some("running")) | (false, Some("off")) => Desired::new(
            "ServerReady",
            true,
            if spec.running { "Running" } else { "Stopped" },
            "The server is in the requested power state.",
        ),
        (_, Some(s)) => Desired::new(
            "ServerReady",
            false,
            "PowerTransition",
            format!("The server is {s}; waiting for it to be {}.", if spec.running { "running" } else { "off" }),
        ),
        (_, None) => Desired::new("ServerReady", false, "Provisioning", "The server is being created."),
    };
    let tunnel_ready = match tunnel {
        Some(t) if t.connected() => {
            Desired::new("TunnelReady", true, "Connected", "cloudflared is connected to the tunnel.")
        }
        Some(_) if !spec.running => {
            Desired::new("TunnelReady", false, "ServerStopped", "The tunnel has no connector while the server is off.")
        }
        Some(_) => Desired::new(
            "TunnelReady",
            false,
            "WaitingForConnector",
            "The tunnel exists; waiting for cloudflared on the server to connect.",
        ),
        None => Desired::new("TunnelReady", false, "Provisioning", "The tunnel is being created."),
    };
    let dns_ready = match (&observed.dns, &observed.dns_name_taken) {
        (Some(r), _) if r.name == hostname => {
            Desired::new("DnsReady", true, "RecordInPlace", format!("{hostname} points at the tunnel."))
        }
        (_, Some(taken)) if taken == hostname => Desired::new(
            "DnsReady",
            false,
            "DnsNameTaken",
            format!(
                "{hostname} is held by a DNS record this operator does not own; remove it or choose another spec.tunnel.hostname."
            ),
        ),
        _ => {
            Desired::new("DnsReady", false, "Provisioning", format!("The DNS record for {hostname} is being created."))
        }
    };
    let ready =
        if spec.running { server_ready.status && tunnel_ready.status && dns_ready.status } else { server_ready.status };
    let mut desired = vec![
        if ready {
            Desired::new(
                "Ready",
                true,
                "Ready",
                if spec.running {
                    "The Agent is running and reachable through its tunnel."
                } else {
                    "The Agent is stopped as requested."
                },
            )
        } else if let Some((reason, message)) = &stalled {
            Desired::new("Ready", false, reason, message.clone())
        } else {
            let waiting = [&server_ready, &tunnel_ready, &dns_ready].into_iter().find(|c| !c.status);
            Desired::new(
                "Ready",
                false,
                waiting.map_or("Reconciling", |c| c.reason),
                waiting.map_or_else(String::new, |c| c.message.clone()),
            )
        },
        server_ready,
        tunnel_ready,
        dns_ready,
    ];
    if let Some((reason, message)) = &stalled {
        desired.push(Desired::new("Stalled", true, reason, message.clone()));
    } else if !ready {
        desired.push(Desired::new("Reconciling", true, "Progressing", "Cloud resources are being created or changed."));
    }
    let phase = if stalled.is_some() {
        Phase::Failed
    } else if server.is_none() && tunnel.is_none() {
        Phase::Pending
    } else if spec.running {
        if ready { Phase::Running } else { Phase::Provisioning }
    } else if effective.as_deref() == Some("off") {
        Phase::Stopped
    } else {
        Phase::Stopping
    };
    AgentStatus {
        observed_generation: agent_generation,
        phase: Some(phase),
        conditions: conditions::merge(&old.conditions, &desired, agent_generation, now),
        server: server.map(|s| server::server_status(s, effective.as_deref())).or_else(|| old.server.clone()),
        tunnel: Some(TunnelStatus {
            id: tunnel.map(|t| t.id.clone()),
            hostname: Some(hostname.to_owned()),
            dns_record_id: observed.dns.as_ref().filter(|r| r.name == hostname).map(|r| r.id.clone()),
            service: old.tunnel.as_ref().and_then(|t| t.service.clone()),
        }),
        owner: old.owner.clone(),
        price_cell: Some(intent(spec).price_cell()),
    }
}

fn intent(spec: &AgentSpec) -> ServerIntent {
    ServerIntent {
        product: PRODUCT,
        region: spec.region,
        server_type: spec.server_type.clone(),
        image: spec.image.clone(),
        running: spec.running,
        owner: spec.owner.clone(),
    }
}

/// The hostname the Agent is served at.
pub fn hostname(agent: &Agent, zone: &str) -> String {
    agent
        .spec
        .tunnel
        .hostname
        .clone()
        .unwrap_or_else(|| default_hostname(&agent.name_any(), &agent.namespace().unwrap_or_default(), zone))
}

fn observe(ctx: &Context, owner: &Owner, name_taken: Option<String>) -> Observed {
    Observed {
        servers_known: ctx.fleet.servers_known(),
        server: ctx.fleet.server(&owner.uid),
        tunnels_known: ctx.fleet.tunnels_known(),
        tunnel: ctx.fleet.tunnel(&tunnel_name(&owner.uid)),
        dns_known: ctx.fleet.dns_known(),
        dns: ctx.fleet.dns_record(&owner.uid),
        fleet_firewall: ctx.fleet_firewall(),
        shutdown_sent: ctx.power.shutdown_sent_at(&owner.uid),
        dns_name_taken: name_taken,
    }
}

fn secret_id(uid: &str) -> CredentialId {
    CredentialId { scope: SECRET_SCOPE.into(), resource_uid: uid.into(), name: SECRET_NAME.into() }
}

/// The tunnel secret of the object: sealed in PostgreSQL before the tunnel is created, so a
/// crash after the create finds it again (and the token derived from it stays valid).
async fn tunnel_secret(ctx: &Context, uid: &str) -> Result<TunnelSecret, ReconcileError> {
    let id = secret_id(uid);
    if let Some(bytes) = seal::get_credential(&ctx.db, &ctx.sealing, &id).await? {
        return TunnelSecret::from_bytes(bytes).ok_or_else(|| ReconcileError::Secret("stored secret too short".into()));
    }
    let secret = TunnelSecret::generate();
    seal::put_credential(&ctx.db, &ctx.sealing, &id, secret.expose_bytes()).await?;
    Ok(secret)
}

/// A permanent cloud error's condition reason and message, or `None` when retrying can help.
fn stall_reason(error: &ReconcileError) -> Option<(&'static str, String)> {
    let cloud = error.cloud()?;
    if !matches!(cloud, CloudError::Permanent(_)) {
        return None;
    }
    let d = cloud.detail();
    let (reason, advice) = match d.code.as_str() {
        "resource_limit_exceeded" => ("QuotaExceeded", "ask Hetzner for a higher limit; retried periodically"),
        // Sold out in this location: it comes back by itself, so it is retried slowly.
        "resource_unavailable" => ("ServerTypeUnavailable", "the type is sold out here for now; retried periodically"),
        "invalid_input" if d.message.contains("server_type") || d.message.contains("server type") => {
            ("InvalidServerType", "fix spec.serverType")
        }
        "invalid_input" if d.message.contains("image") => ("ImageNotFound", "fix spec.image"),
        "invalid_input" => ("InvalidInput", "fix the spec"),
        "unauthorized" | "forbidden" | "10000" | "9109" => ("Unauthorized", "check the API token"),
        _ => ("CloudRefused", "fix the spec or the account"),
    };
    Some((reason, format!("{d}; {advice}.")))
}

/// The condition of an error retrying can help with (the pass backs off and tries again).
fn retry_reason(error: &ReconcileError) -> (&'static str, String) {
    let reason = match error.cloud() {
        Some(CloudError::RateLimited { .. }) => "RateLimited",
        Some(_) if matches!(error, ReconcileError::Hetzner(_)) => "HetznerUnavailable",
        Some(_) => "CloudflareUnavailable",
        None => "RetryingAfterError",
    };
    (reason, format!("{error}; retrying with backoff."))
}

async fn act(
    ctx: &Context,
    agent: &Agent,
    owner: &Owner,
    hostname: &str,
    status: &mut AgentStatus,
    step: &Step,
) -> Result<(), ReconcileError> {
    match step {
        Step::AcceptOwner => status.owner = Some(agent.spec.owner.clone()),
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
        Step::CreateTunnel => {
            let secret = tunnel_secret(ctx, &owner.uid).await?;
            let (tunnel, adopted) = ctx
                .cloudflare
                .create_tunnel(&tunnel_name(&owner.uid), &secret)
                .await
                .map_err(ReconcileError::Cloudflare)?;
            let recreated = status.tunnel.as_ref().and_then(|t| t.id.as_ref()).is_some_and(|old| *old != tunnel.id);
            ctx.fleet.record_tunnel(ObservedTunnel::from_api(&tunnel));
            ctx.metrics.count_step(KIND, "create_tunnel");
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
        }
        Step::ConfigureTunnel => {
            let Some(tunnel) = ctx.fleet.tunnel(&tunnel_name(&owner.uid)) else { return Ok(()) };
            let rule = IngressRule {
                hostname: Some(hostname.to_owned()),
                service: agent.spec.tunnel.service.clone(),
                path: None,
            };
            ctx.cloudflare.put_tunnel_config(&tunnel.id, &[rule]).await.map_err(ReconcileError::Cloudflare)?;
            ctx.metrics.count_step(KIND, "configure_tunnel");
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
        }
        Step::CreateDns => create_dns(ctx, agent, owner, hostname).await?,
        Step::RepointDns => {
            let (Some(record), Some(tunnel)) =
                (ctx.fleet.dns_record(&owner.uid), ctx.fleet.tunnel(&tunnel_name(&owner.uid)))
            else {
                return Ok(());
            };
            let updated = ctx
                .cloudflare
                .update_dns_record(&record.id, &tunnel_target(&tunnel.id), true)
                .await
                .map_err(ReconcileError::Cloudflare)?;
            ctx.fleet.record_dns(&owner.uid, updated);
            ctx.metrics.count_step(KIND, "repoint_dns");
            ctx.event(
                agent,
                false,
                "DnsRepointed",
                "UpdateDns",
                format!("{hostname} now points at tunnel {}.", tunnel.id),
            )
            .await;
        }
        Step::CreateServer => {
            let Some(tunnel) = ctx.fleet.tunnel(&tunnel_name(&owner.uid)) else { return Ok(()) };
            let secret = tunnel_secret(ctx, &owner.uid).await?;
            let token = derive_tunnel_token(ctx.cloudflare.account_id(), &tunnel.id, &secret);
            let user_data = super::cloud_init::agent_user_data(&agent.spec.ssh_keys, &token)
                .map_err(|e| ReconcileError::UserData(e.to_string()))?;
            let firewalls = ctx.fleet_firewall().into_iter().collect();
            let spec = server::create_spec(owner, &intent(&agent.spec), user_data, firewalls);
            let vanished = status.server.as_ref().and_then(|s| s.id);
            let created = server::create_server(ctx, owner, &spec).await?;
            status.server = Some(server::server_status(&created, None));
            let (warning, reason, note) = match vanished {
                Some(old) if old != created.id => (
                    true,
                    "ServerRecreated",
                    format!(
                        "Server {old} was deleted outside the operator; created server {} in its place.",
                        created.id
                    ),
                ),
                _ => (
                    false,
                    "ServerCreated",
                    format!(
                        "Server {} ({}) created in {}.",
                        created.name,
                        agent.spec.server_type,
                        agent.spec.region.hetzner_location()
                    ),
                ),
            };
            ctx.event(agent, warning, reason, "CreateServer", note).await;
        }
        Step::AttachFirewall => {
            let (Some(server), Some(fw)) = (ctx.fleet.server(&owner.uid), ctx.fleet_firewall()) else { return Ok(()) };
            ctx.hetzner.apply_firewall(fw, server.id).await.map_err(ReconcileError::Hetzner)?;
            let mut seen = server.clone();
            seen.public_net
                .firewalls
                .push(crate::cloud::hetzner::FirewallAttachment { id: fw, status: Some("pending".into()) });
            ctx.fleet.record_server(&owner.uid, seen);
            ctx.metrics.count_step(KIND, "attach_firewall");
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
            let Some(server) = ctx.fleet.server(&owner.uid) else { return Ok(()) };
            server::apply_power(ctx, owner, &server, *power).await?;
            let note = match power {
                PowerStep::PowerOn => "Powering the server on.",
                PowerStep::Shutdown => "Asked the server to shut down (ACPI).",
                PowerStep::PowerOff => "The server ignored the ACPI shutdown past the timeout; powered it off.",
                PowerStep::Hold => "",
            };
            ctx.event(agent, *power == PowerStep::PowerOff, "Power", "Power", note.to_owned()).await;
        }
    }
    Ok(())
}

async fn create_dns(ctx: &Context, agent: &Agent, owner: &Owner, hostname: &str) -> Result<(), ReconcileError> {
    let Some(tunnel) = ctx.fleet.tunnel(&tunnel_name(&owner.uid)) else { return Ok(()) };
    let old = ctx.fleet.dns_record(&owner.uid);
    match ctx.cloudflare.create_cname(hostname, &tunnel_target(&tunnel.id), Some(&dns_mark(&owner.uid))).await {
        Ok((record, _)) => {
            ctx.fleet.record_dns(&owner.uid, record);
            ctx.dns_taken.clear(&owner.uid);
            ctx.metrics.count_step(KIND, "create_dns");
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
                ctx.cloudflare.delete_dns_record(&old.id).await.map_err(ReconcileError::Cloudflare)?;
            }
            Ok(())
        }
        Err(CloudError::Conflict(_)) => {
            ctx.dns_taken.taken(&owner.uid, hostname);
            ctx.event(
                agent,
                true,
                "DnsNameTaken",
                "CreateDns",
                format!("{hostname} is held by a DNS record this operator does not own; it was left untouched."),
            )
            .await;
            Ok(())
        }
        Err(e) => Err(ReconcileError::Cloudflare(e)),
    }
}

async fn record_transfer(
    ctx: &Context,
    owner: &Owner,
    agent: &Agent,
    from: &str,
    to: &str,
) -> Result<(), ReconcileError> {
    let earlier: Vec<_> = audit::events_for_resource(&ctx.db, &owner.uid)
        .await?
        .into_iter()
        .filter(|e| e.kind == AuditKind::AgentTransferred.as_str())
        .collect();
    // A crash after the append and before the status write: that transfer is recorded already.
    if earlier.last().is_some_and(|e| e.details["from"] == from && e.details["to"] == to) {
        return Ok(());
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
    audit::append(&ctx.db, &event).await?;
    Ok(())
}

/// Appends the usage-timeline row the observed power state calls for, if any.
async fn record_usage(ctx: &Context, agent: &Agent, owner: &Owner) -> Result<(), ReconcileError> {
    let observed = observe(ctx, owner, None);
    if let Some(server) = &observed.server {
        let effective = effective_server_status(server, observed.tunnel.as_ref());
        if let Some(t) = server::record_observed_transition(ctx, owner, &intent(&agent.spec), &effective).await? {
            tracing::info!(transition = t.as_str(), "usage timeline");
        }
    }
    Ok(())
}

/// One pass over a live Agent.
async fn apply(agent: Arc<Agent>, ctx: &Context) -> Result<Action, ReconcileError> {
    let owner = Owner::of(agent.as_ref(), KIND)?;
    // Until the first complete lists, absence proves nothing: deciding (or describing the
    // world in status) then would flap conditions of every Agent at each operator restart.
    if !(ctx.fleet.servers_known() && ctx.fleet.tunnels_known() && ctx.fleet.dns_known()) {
        return Ok(Action::requeue(ctx.config.fast_poll));
    }
    let hostname = hostname(&agent, &ctx.config.zone_name);
    let old = agent.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut stalled = None;
    // What happened before this pass (a stop in the console) is recorded before this pass
    // changes it (powers the server on again), or the timeline would never show it.
    record_usage(ctx, &agent, &owner).await?;
    let mut plan = Plan { steps: Vec::new(), wait: Wait::Lists };
    // A handful of steps per pass: each one's result is in the fleet view for the next.
    for _ in 0..10 {
        let observed = observe(ctx, &owner, ctx.dns_taken.get(&owner.uid));
        plan = decide(&agent.spec, &status, &hostname, &observed, Instant::now(), ctx.config.shutdown_timeout);
        let Some(step) = plan.steps.first().cloned() else { break };
        match act(ctx, &agent, &owner, &hostname, &mut status, &step).await {
            Ok(()) => {}
            Err(e) => match stall_reason(&e) {
                Some(reason) => {
                    tracing::warn!(error = %e, ?step, "permanent error: waiting for a spec change");
                    ctx.event(agent.as_ref(), true, reason.0, "Reconcile", reason.1.clone()).await;
                    stalled = Some(reason);
                    break;
                }
                None => {
                    // Keep what was done so far (e.g. a new server's id) and say what failed,
                    // then back off.
                    let observed = observe(ctx, &owner, ctx.dns_taken.get(&owner.uid));
                    let (reason, message) = retry_reason(&e);
                    let mut next = desired_status(
                        agent.metadata.generation,
                        &agent.spec,
                        &status,
                        &hostname,
                        &observed,
                        None,
                        Timestamp::now(),
                    );
                    next.owner = status.owner.clone();
                    set_ready_reason(&mut next, reason, &message);
                    write_status(ctx, &agent, &old, &next).await?;
                    return Err(e);
                }
            },
        }
    }
    record_usage(ctx, &agent, &owner).await?;
    let observed = observe(ctx, &owner, ctx.dns_taken.get(&owner.uid));
    let mut next = desired_status(
        agent.metadata.generation,
        &agent.spec,
        &status,
        &hostname,
        &observed,
        stalled.clone(),
        Timestamp::now(),
    );
    next.owner = status.owner.clone();
    write_status(ctx, &agent, &old, &next).await?;
    ctx.failures.succeeded(&owner.uid);
    tracing::debug!(wait = ?plan.wait, stalled = stalled.is_some(), "pass done");
    Ok(match (stalled.is_some(), plan.wait) {
        (true, _) => {
            ctx.fleet.done_waiting(&owner.uid);
            // A quota or a sold-out type clears by itself: look again each resync. A bad spec
            // does not: wait for the spec to change (which wakes this object).
            match stalled.as_ref().map(|(reason, _)| *reason) {
                Some("QuotaExceeded" | "ServerTypeUnavailable") => Action::requeue(ctx.config.resync),
                _ => Action::await_change(),
            }
        }
        (false, Wait::Nothing) => {
            ctx.fleet.done_waiting(&owner.uid);
            Action::requeue(ctx.config.resync)
        }
        (false, Wait::Lists) => Action::requeue(ctx.config.fast_poll),
        (false, Wait::Tunnel) => {
            ctx.fleet.wait_for_tunnel(&owner.uid);
            Action::requeue(ctx.config.fast_poll)
        }
        (false, Wait::Server) => {
            ctx.fleet.wait_for_servers(&owner.uid);
            Action::requeue(ctx.config.fast_poll)
        }
    })
}

/// A not-Ready condition that names the error in its reason and message.
fn set_ready_reason(status: &mut AgentStatus, reason: &'static str, message: &str) {
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == "Ready" && c.status == "False") {
        c.reason = reason.to_owned();
        c.message = message.to_owned();
    }
}

/// Patches `/status` with the difference, only when something changed.
async fn write_status(
    ctx: &Context,
    agent: &Agent,
    old: &AgentStatus,
    new: &AgentStatus,
) -> Result<(), ReconcileError> {
    if old == new {
        return Ok(());
    }
    let Some(patch) = status_merge_patch(old, new) else { return Ok(()) };
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default());
    api.patch_status(&agent.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.metrics.count_status_write(KIND);
    Ok(())
}

/// Tears everything down (or takes our marks off, for `Orphan`), then commits the destroy
/// event; the finalizer goes only after that commit.
async fn cleanup(agent: Arc<Agent>, ctx: &Context) -> Result<Action, ReconcileError> {
    let owner = Owner::of(agent.as_ref(), KIND)?;
    // Not `Ok(requeue)`: the finalizer helper takes any `Ok` from cleanup as "done" and
    // releases the finalizer, which would leak whatever the lists have not shown yet.
    if !(ctx.fleet.servers_known() && ctx.fleet.tunnels_known() && ctx.fleet.dns_known()) {
        return Err(ReconcileError::NotReady("the first complete lists of servers, tunnels and DNS records"));
    }
    ctx.fleet.done_waiting(&owner.uid);
    let status = agent.status.clone().unwrap_or_default();
    let policy = agent.spec.deletion_policy;
    let server = ctx.fleet.server(&owner.uid);
    let tunnel = ctx.fleet.tunnel(&tunnel_name(&owner.uid));
    let dns = ctx.fleet.dns_record(&owner.uid);
    let server_id = server.as_ref().map(|s| s.id).or(status.server.as_ref().and_then(|s| s.id));
    let tunnel_id = tunnel.as_ref().map(|t| t.id.clone()).or(status.tunnel.as_ref().and_then(|t| t.id.clone()));
    let dns_id = dns.as_ref().map(|r| r.id.clone());
    match policy {
        DeletionPolicy::Delete => {
            if let Some(id) = &dns_id {
                ctx.cloudflare.delete_dns_record(id).await.map_err(ReconcileError::Cloudflare)?;
                ctx.fleet.forget_dns(&owner.uid);
            }
            if let Some(id) = &tunnel_id {
                ctx.cloudflare.delete_tunnel(id).await.map_err(ReconcileError::Cloudflare)?;
                ctx.fleet.forget_tunnel(&tunnel_name(&owner.uid));
            }
            if let Some(id) = server_id {
                server::delete_server(ctx, &owner, id).await?;
            }
        }
        DeletionPolicy::Orphan => {
            if let Some(record) = &dns {
                match ctx.cloudflare.set_dns_record_comment(&record.id, None).await {
                    Ok(_) | Err(CloudError::NotFound(_)) => ctx.fleet.forget_dns(&owner.uid),
                    Err(e) => return Err(ReconcileError::Cloudflare(e)),
                }
            }
            if let Some(server) = &server {
                server::unmark_server(ctx, &owner, server).await?;
            }
            // A tunnel carries no labels: the sealed secret is what makes the sweeper call it
            // ours, so forgetting it is how the tunnel stops being ours.
            ctx.fleet.forget_tunnel(&tunnel_name(&owner.uid));
        }
    }
    seal::delete_credential(&ctx.db, &secret_id(&owner.uid)).await?;
    let intent = intent(&agent.spec);
    let closing = server::closing_transition(ctx, &owner, &intent).await?;
    let event = NewAuditEvent {
        event_key: format!("{}/{}", AuditKind::AgentDestroyed.as_str(), owner.uid),
        kind: AuditKind::AgentDestroyed,
        resource: owner.resource_ref(),
        owners: vec![status.owner.clone().unwrap_or_else(|| agent.spec.owner.clone())],
        region: Some(agent.spec.region.as_str().to_owned()),
        cloud_ids: json!({"server_id": server_id, "tunnel_id": tunnel_id, "dns_record_id": dns_id}),
        details: json!({
            "deletion_policy": format!("{policy:?}"),
            "orphaned": policy == DeletionPolicy::Orphan,
            "hostname": hostname(&agent, &ctx.config.zone_name),
            "server_name": server::server_name(&owner.name, &owner.uid),
            "price_cell": intent.price_cell(),
        }),
        occurred_at: Utc::now(),
    };
    // The last usage row and the destroy event commit together.
    let mut tx = ctx.db.begin().await.during("starting the destroy transaction")?;
    if let Some(row) = &closing {
        usage::record(&mut *tx, row).await?;
    }
    audit::append(&mut *tx, &event).await?;
    tx.commit().await.during("committing the destroy event")?;
    ctx.metrics.count_step(KIND, "destroyed");
    tracing::info!(policy = ?policy, "destroyed; audit event committed");
    ctx.power.forget(&owner.uid);
    ctx.failures.succeeded(&owner.uid);
    Ok(Action::await_change())
}

/// The controller's entry point for one Agent.
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    // `object_name`, not `name`: JSON log lines give the span's own name under `name`.
    let span = tracing::info_span!(
        "reconcile",
        kind = KIND,
        namespace = %agent.namespace().unwrap_or_default(),
        object_name = %agent.name_any()
    );
    async move {
        if agent.annotations().get(PAUSE_ANNOTATION).map(String::as_str) == Some("true") {
            return pause(&agent, &ctx).await;
        }
        let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default());
        let result = finalizer(&api, FINALIZER, agent, |event| async {
            match event {
                Finalizer::Apply(agent) => apply(agent, &ctx).await,
                Finalizer::Cleanup(agent) => cleanup(agent, &ctx).await,
            }
        })
        .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(_) => "error",
        };
        ctx.metrics.count_reconcile(KIND, outcome);
        result.map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => ReconcileError::Finalizer(other.to_string()),
        })
    }
    .instrument(span)
    .await
}

/// A paused Agent: nothing is done for it; a `Paused` condition says so (written once).
async fn pause(agent: &Agent, ctx: &Context) -> Result<Action, ReconcileError> {
    let old = agent.status.clone().unwrap_or_default();
    if conditions::find(&old.conditions, "Paused").is_some_and(|c| c.status == "True") {
        return Ok(Action::await_change());
    }
    let mut next = old.clone();
    next.conditions.retain(|c| c.type_ != "Paused");
    next.conditions.extend(conditions::merge(
        &[],
        &[Desired::new(
            "Paused",
            true,
            "PauseAnnotation",
            format!("Reconciliation is paused by the annotation {PAUSE_ANNOTATION}=\"true\": nothing is created, changed or deleted."),
        )],
        agent.metadata.generation,
        Timestamp::now(),
    ));
    write_status(ctx, agent, &old, &next).await?;
    Ok(Action::await_change())
}

/// Requeue after an error: capped exponential backoff with jitter, per object.
pub fn error_policy(agent: Arc<Agent>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let uid = agent.uid().unwrap_or_default();
    let failures = ctx.failures.failed(&uid);
    let delay = super::backoff_delay(failures, ctx.config.fast_poll, ctx.config.max_backoff);
    tracing::warn!(kind = KIND, namespace = %agent.namespace().unwrap_or_default(), object_name = %agent.name_any(), error = %error, class = error.metric_label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Region;
    use crate::cloud::hetzner::{FirewallAttachment, PublicNetSummary};

    const HOST: &str = "bot-team-a.agents.example.com";

    fn spec(running: bool) -> AgentSpec {
        serde_json::from_value(json!({"owner": "acct_a", "region": "eu", "running": running})).expect("spec")
    }

    fn server(status: &str, firewalls: &[i64]) -> ServerSummary {
        ServerSummary {
            id: 7,
            name: "bot-12345678".into(),
            status: status.into(),
            public_net: PublicNetSummary {
                firewalls: firewalls
                    .iter()
                    .map(|&id| FirewallAttachment { id, status: Some("applied".into()) })
                    .collect(),
                ..PublicNetSummary::default()
            },
            ..ServerSummary::default()
        }
    }

    fn tunnel(connections: usize) -> ObservedTunnel {
        ObservedTunnel {
            id: "t1".into(),
            name: "crabglamp-u".into(),
            status: if connections > 0 { "healthy" } else { "inactive" }.into(),
            connections,
        }
    }

    fn dns(name: &str, target: &str) -> DnsRecord {
        DnsRecord {
            id: "r1".into(),
            kind: "CNAME".into(),
            name: name.into(),
            content: target.into(),
            proxied: true,
            ttl: 1,
            comment: None,
            tags: Vec::new(),
        }
    }

    fn known() -> Observed {
        Observed {
            servers_known: true,
            tunnels_known: true,
            dns_known: true,
            fleet_firewall: Some(99),
            ..Observed::default()
        }
    }

    fn configured(owner: &str) -> AgentStatus {
        AgentStatus {
            owner: Some(owner.into()),
            tunnel: Some(TunnelStatus {
                id: Some("t1".into()),
                hostname: Some(HOST.into()),
                dns_record_id: Some("r1".into()),
                service: Some("http://localhost:8080".into()),
            }),
            ..AgentStatus::default()
        }
    }

    fn plan(spec: &AgentSpec, status: &AgentStatus, observed: &Observed) -> Plan {
        decide(spec, status, HOST, observed, Instant::now(), Duration::from_secs(60))
    }

    #[test]
    fn nothing_happens_before_the_first_complete_lists() {
        let p = plan(&spec(true), &configured("acct_a"), &Observed::default());
        assert_eq!(p, Plan { steps: vec![], wait: Wait::Lists });
    }

    #[test]
    fn a_new_agent_gets_its_tunnel_first_then_config_dns_and_server() {
        let s = spec(true);
        let p = plan(&s, &AgentStatus::default(), &known());
        assert_eq!(p.steps, vec![Step::AcceptOwner, Step::CreateTunnel]);
        let mut o = known();
        o.tunnel = Some(tunnel(0));
        let p = plan(&s, &AgentStatus { owner: Some("acct_a".into()), ..AgentStatus::default() }, &o);
        assert_eq!(p.steps, vec![Step::ConfigureTunnel, Step::CreateDns, Step::CreateServer]);
    }

    #[test]
    fn a_booting_server_waits_on_the_tunnel_list_not_the_server_list() {
        let mut o = known();
        o.tunnel = Some(tunnel(0));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        for status in ["initializing", "starting", "running"] {
            o.server = Some(server(status, &[99]));
            let p = plan(&spec(true), &configured("acct_a"), &o);
            assert_eq!(p, Plan { steps: vec![], wait: Wait::Tunnel }, "{status}");
        }
        o.tunnel = Some(tunnel(1));
        o.server = Some(server("initializing", &[99]));
        assert_eq!(
            plan(&spec(true), &configured("acct_a"), &o).wait,
            Wait::Nothing,
            "a connected tunnel proves it is up"
        );
    }

    #[test]
    fn power_follows_the_spec_and_waits_on_the_server_list() {
        let mut o = known();
        o.tunnel = Some(tunnel(1));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        o.server = Some(server("running", &[99]));
        let p = plan(&spec(false), &configured("acct_a"), &o);
        assert_eq!(p, Plan { steps: vec![Step::Power(PowerStep::Shutdown)], wait: Wait::Server });
        o.shutdown_sent = Instant::now().checked_sub(Duration::from_secs(61));
        assert_eq!(plan(&spec(false), &configured("acct_a"), &o).steps, vec![Step::Power(PowerStep::PowerOff)]);
        o.server = Some(server("off", &[99]));
        assert_eq!(plan(&spec(false), &configured("acct_a"), &o), Plan { steps: vec![], wait: Wait::Nothing });
        o.tunnel = Some(tunnel(0));
        assert_eq!(
            plan(&spec(true), &configured("acct_a"), &o),
            Plan { steps: vec![Step::Power(PowerStep::PowerOn)], wait: Wait::Server }
        );
    }

    #[test]
    fn drift_is_repaired() {
        let mut o = known();
        o.tunnel = Some(tunnel(1));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        o.server = Some(server("running", &[]));
        assert_eq!(plan(&spec(true), &configured("acct_a"), &o).steps, vec![Step::AttachFirewall], "firewall detached");
        o.server = None;
        assert_eq!(plan(&spec(true), &configured("acct_a"), &o).steps, vec![Step::CreateServer], "server deleted");
        o.server = Some(server("running", &[99]));
        o.dns = Some(dns(HOST, "old.cfargotunnel.com"));
        assert_eq!(plan(&spec(true), &configured("acct_a"), &o).steps, vec![Step::RepointDns]);
        o.dns = None;
        o.dns_name_taken = Some(HOST.into());
        assert_eq!(plan(&spec(true), &configured("acct_a"), &o).steps, vec![], "a foreign record is left alone");
        o.dns_name_taken = None;
        assert_eq!(plan(&spec(true), &configured("acct_a"), &o).steps, vec![Step::CreateDns]);
    }

    #[test]
    fn an_owner_change_is_one_transfer() {
        let mut s = spec(true);
        s.owner = "acct_b".into();
        let p = plan(&s, &configured("acct_a"), &known());
        assert_eq!(p.steps.first(), Some(&Step::RecordTransfer { from: "acct_a".into(), to: "acct_b".into() }));
        let p = plan(&s, &configured("acct_b"), &known());
        assert!(!p.steps.iter().any(|s| matches!(s, Step::RecordTransfer { .. })));
    }

    #[test]
    fn ready_means_the_world_matches_the_spec() {
        let now = Timestamp::now();
        let mut o = known();
        o.tunnel = Some(tunnel(1));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        o.server = Some(server("running", &[99]));
        let st = desired_status(Some(1), &spec(true), &configured("acct_a"), HOST, &o, None, now);
        let ready = conditions::find(&st.conditions, "Ready").map(|c| c.status.clone());
        assert_eq!(ready.as_deref(), Some("True"));
        assert_eq!(st.phase, Some(Phase::Running));
        assert_eq!(st.price_cell.as_deref(), Some("agent-eu-cpx22"));
        assert!(conditions::find(&st.conditions, "Reconciling").is_none());
        // The same world described again is the same status: no write.
        assert_eq!(desired_status(Some(1), &spec(true), &st, HOST, &o, None, now), st);
        o.tunnel = Some(tunnel(0));
        let st = desired_status(Some(1), &spec(true), &st, HOST, &o, None, now);
        assert_eq!(conditions::find(&st.conditions, "Ready").map(|c| c.reason.as_str()), Some("WaitingForConnector"));
        let stalled =
            desired_status(Some(1), &spec(true), &st, HOST, &o, Some(("QuotaExceeded", "no more servers".into())), now);
        assert_eq!(stalled.phase, Some(Phase::Failed));
        assert_eq!(conditions::find(&stalled.conditions, "Stalled").map(|c| c.status.as_str()), Some("True"));
        let _ = Region::Eu;
    }
}
