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
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::agent::TunnelStatus;
use crate::api::{Agent, AgentSpec, AgentStatus, DeletionPolicy};
use crate::cloud::CloudError;
use crate::cloud::cloudflare::{DnsRecord, IngressRule, TunnelSecret, derive_tunnel_token};
use crate::cloud::hetzner::ServerSummary;
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::seal::{self, CredentialId};

use super::conditions::{self, Desired};
use super::context::Context;
use super::error::ReconcileError;
use super::fleet::ObservedTunnel;
use super::lifecycle::{self, Destroyed, ManagedObject, Pass, Stall, Target};
use super::names::{dns_mark, settled_default_hostname, tunnel_name, tunnel_target};
use super::server::{self, Owner, PowerStep, ServerIntent};

pub use super::lifecycle::{FINALIZER, PAUSE_ANNOTATION, Wait};

const KIND: &str = "Agent";
const PRODUCT: &str = "agent";
/// Where the tunnel secret is sealed (with the object's UID as the row identity).
const SECRET_SCOPE: &str = "agent-tunnel";
const SECRET_NAME: &str = "tunnel-secret";
/// `DnsReady`'s reason while someone else's record holds the hostname.
const DNS_NAME_TAKEN: &str = "DnsNameTaken";

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

/// The decision for one pass: the steps to take now, in order, and what to wait for after.
pub type Plan = lifecycle::Plan<Step>;

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
        Some(r) if r.name == hostname => {
            if !r.content.eq_ignore_ascii_case(&tunnel_target(&tunnel.id)) {
                steps.push(Step::RepointDns);
            }
        }
        // Refused this resync (a foreign record holds the name), whether or not our record for
        // an earlier hostname is still there: asked again only after the refusal expires.
        _ if observed.dns_name_taken.as_deref() == Some(hostname) => {}
        _ => steps.push(Step::CreateDns),
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
    stalled: Option<Stall>,
    now: Timestamp,
) -> AgentStatus {
    let server = observed.server.as_ref();
    let tunnel = observed.tunnel.as_ref();
    let effective = server.map(|s| effective_server_status(s, tunnel));
    let server_ready = server::server_ready(spec.running, effective.as_deref());
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
            DNS_NAME_TAKEN,
            format!(
                "{hostname} is held by a DNS record this operator does not own; remove it or choose another spec.tunnel.hostname."
            ),
        ),
        _ => {
            Desired::new("DnsReady", false, "Provisioning", format!("The DNS record for {hostname} is being created."))
        }
    };
    // A stopped Agent needs no connector (nor, for Ready, its DNS record).
    let parts =
        if spec.running { vec![server_ready, tunnel_ready.clone(), dns_ready.clone()] } else { vec![server_ready] };
    let ready = parts.iter().all(|c| c.status);
    let ready_message = if spec.running {
        "The Agent is running and reachable through its tunnel."
    } else {
        "The Agent is stopped as requested."
    };
    let mut desired = lifecycle::summary_conditions(ready_message, stalled.as_ref(), parts);
    if !spec.running {
        // Still described, just not required.
        desired.insert(2, tunnel_ready);
        desired.insert(3, dns_ready);
    }
    let phase = lifecycle::phase(
        stalled.is_some(),
        server.is_none() && tunnel.is_none(),
        spec.running,
        ready,
        effective.as_deref(),
    );
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
        price_cell: Some(intent(spec).billed_price_cell(server)),
    }
}

fn intent(spec: &AgentSpec) -> ServerIntent {
    ServerIntent::new(PRODUCT, spec.region, &spec.server_type, &spec.image, spec.running, &spec.owner)
}

/// The hostname the Agent is served at: the spec's, else the default one (an Agent already
/// published at the earlier scheme's default stays there, unless someone else's record holds
/// that name: then it moves to its own).
pub fn hostname(agent: &Agent, zone: &str) -> String {
    if let Some(hostname) = &agent.spec.tunnel.hostname {
        return hostname.clone();
    }
    let status = agent.status.as_ref();
    let refused =
        status.and_then(|s| conditions::find(&s.conditions, "DnsReady")).is_some_and(|c| c.reason == DNS_NAME_TAKEN);
    let published = status.and_then(|s| s.tunnel.as_ref()).and_then(|t| t.hostname.as_deref()).filter(|_| !refused);
    settled_default_hostname(&agent.name_any(), &agent.namespace().unwrap_or_default(), zone, published)
}

fn observe(ctx: &Context, owner: &Owner, name_taken: Option<String>) -> Observed {
    Observed {
        servers_known: ctx.fleet.servers_known(),
        server: ctx.fleet.server(&owner.uid),
        tunnels_known: ctx.fleet.tunnels_known(),
        tunnel: ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)),
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
/// crash after the create finds it again (and the token derived from it stays valid). Chosen
/// once: a new secret is only inserted when none is stored, and what is used is what was read
/// back, so two instances racing on a new Agent (leaders overlapping) create or adopt the tunnel
/// with the one secret the database keeps, never each their own.
async fn tunnel_secret(ctx: &Context, uid: &str) -> Result<TunnelSecret, ReconcileError> {
    let id = secret_id(uid);
    let stored = match seal::get_credential(&ctx.db, &ctx.sealing, &id).await? {
        Some(bytes) => bytes,
        None => seal::put_credential_once(&ctx.db, &ctx.sealing, &id, TunnelSecret::generate().expose_bytes()).await?,
    };
    TunnelSecret::from_bytes(stored).ok_or_else(|| ReconcileError::Secret("stored secret too short".into()))
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
        Step::CreateTunnel => {
            let secret = tunnel_secret(ctx, &owner.uid).await?;
            let (tunnel, adopted) = ctx
                .cloudflare
                .create_tunnel(&tunnel_name(ctx.config.installation(), &owner.uid), &secret)
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
            let Some(tunnel) = ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)) else {
                return Ok(());
            };
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
            let (Some(record), Some(tunnel)) = (
                ctx.fleet.dns_record(&owner.uid),
                ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)),
            ) else {
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
            let Some(tunnel) = ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)) else {
                return Ok(());
            };
            let secret = tunnel_secret(ctx, &owner.uid).await?;
            let token = derive_tunnel_token(ctx.cloudflare.account_id(), &tunnel.id, &secret);
            let user_data = super::cloud_init::agent_user_data(&agent.spec.ssh_keys, &token)
                .map_err(|e| ReconcileError::UserData(e.to_string()))?;
            let firewalls = ctx.fleet_firewall().into_iter().collect();
            let spec =
                server::create_spec(owner, &intent(&agent.spec), ctx.config.installation(), user_data, firewalls);
            let vanished = status.server.as_ref().and_then(|s| s.id);
            ctx.fleet.tunnel_lost_its_connector(&tunnel.name);
            let created = server::create_server(ctx, owner, &spec).await?;
            status.server = Some(server::server_status(&created, None));
            let (warning, reason, note) = server::created_event(vanished, &created, &intent(&agent.spec));
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
            let observed = effective_server_status(
                &server,
                ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)).as_ref(),
            );
            if *power == PowerStep::PowerOn {
                ctx.fleet.tunnel_lost_its_connector(&tunnel_name(ctx.config.installation(), &owner.uid));
            }
            let subject = server::PowerSubject { server, observed, billed_owner: status.owner.clone() };
            server::power_step(ctx, agent, owner, &intent(&agent.spec), subject, *power).await?
        }
    }
    Ok(())
}

async fn create_dns(ctx: &Context, agent: &Agent, owner: &Owner, hostname: &str) -> Result<(), ReconcileError> {
    let Some(tunnel) = ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)) else { return Ok(()) };
    let old = ctx.fleet.dns_record(&owner.uid);
    match ctx
        .cloudflare
        .create_cname(hostname, &tunnel_target(&tunnel.id), Some(&dns_mark(ctx.config.installation(), &owner.uid)))
        .await
    {
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
async fn accepted_owner(ctx: &Context, agent: &Agent) -> Result<String, ReconcileError> {
    let fresh = agent_api(ctx, agent).get(&agent.name_any()).await?;
    Ok(fresh.status.and_then(|s| s.owner).unwrap_or(fresh.spec.owner))
}

/// The owner the last recorded transfer moved the Agent to, if any. The trail is ahead of
/// any cached `status.owner`: a transfer's status write follows its event, and a cache may not
/// have seen that write yet.
pub(crate) async fn last_transfer_to(ctx: &Context, uid: &str) -> Result<Option<String>, ReconcileError> {
    let events = audit::events_for_resource(&ctx.db, uid).await?;
    Ok(events
        .iter()
        .rev()
        .find(|e| e.kind == AuditKind::AgentTransferred.as_str())
        .and_then(|e| e.details["to"].as_str().map(str::to_owned)))
}

/// The owner a destroy bills: the last recorded transfer's, else the owner accepted at
/// creation as the API server's copy holds it (the cache may not show it yet), else the spec's
/// (nothing was ever accepted).
async fn owner_on_record(ctx: &Context, agent: &Agent, uid: &str) -> Result<String, ReconcileError> {
    if let Some(to) = last_transfer_to(ctx, uid).await? {
        return Ok(to);
    }
    match agent.status.as_ref().and_then(|s| s.owner.clone()) {
        Some(accepted) => Ok(accepted),
        None => accepted_owner(ctx, agent).await,
    }
}

fn agent_api(ctx: &Context, agent: &Agent) -> Api<Agent> {
    Api::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default())
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
    let appended = audit::append(&ctx.db, &event).await?;
    ctx.audit_committed(&appended);
    Ok(())
}

/// One pass's fixed inputs: the object, its identity and its hostname.
struct AgentPass {
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
        ctx.fleet.servers_known() && ctx.fleet.tunnels_known() && ctx.fleet.dns_known()
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
        let server = ctx.fleet.server(&self.target.owner.uid)?;
        Some(effective_server_status(
            &server,
            ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &self.target.owner.uid)).as_ref(),
        ))
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
        if !(ctx.fleet.servers_known() && ctx.fleet.tunnels_known() && ctx.fleet.dns_known()) {
            return Err(ReconcileError::NotReady("the first complete lists of servers, tunnels and DNS records"));
        }
        let status = agent.status.clone().unwrap_or_default();
        let policy = agent.spec.deletion_policy;
        let server = ctx.fleet.server(&owner.uid);
        let tunnel = ctx.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid));
        let dns = ctx.fleet.dns_record(&owner.uid);
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
                    ctx.cloudflare.delete_dns_record(id).await.map_err(ReconcileError::Cloudflare)?;
                    ctx.fleet.forget_dns(&owner.uid);
                }
                if let Some(id) = &tunnel_id {
                    ctx.cloudflare.delete_tunnel(id).await.map_err(ReconcileError::Cloudflare)?;
                    ctx.fleet.forget_tunnel(&tunnel_name(ctx.config.installation(), &owner.uid));
                }
                if let Some(id) = server_id {
                    server::delete_server(ctx, &owner, id).await?;
                }
            }
            // By the fleet view or, when it lacks them (a list that has not shown them yet),
            // the ids status recorded: a mark left behind would have the sweeper delete them.
            DeletionPolicy::Orphan => {
                if let Some(id) = &dns_id {
                    match ctx.cloudflare.set_dns_record_comment(id, None).await {
                        Ok(_) | Err(CloudError::NotFound(_)) => ctx.fleet.forget_dns(&owner.uid),
                        Err(e) => return Err(ReconcileError::Cloudflare(e)),
                    }
                }
                server::unmark_server(ctx, &owner, server.as_ref(), server_id).await?;
                // A tunnel carries no labels: the sealed secret is what makes the sweeper call it
                // ours, so forgetting it is how the tunnel stops being ours.
                ctx.fleet.forget_tunnel(&tunnel_name(ctx.config.installation(), &owner.uid));
            }
        }
        seal::delete_credential(&ctx.db, &secret_id(&owner.uid)).await?;
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
    use crate::api::{Phase, Region};

    const HOST: &str = "bot-team-a.agents.example.com";

    fn spec(running: bool) -> AgentSpec {
        serde_json::from_value(json!({"owner": "acct_a", "region": "eu", "running": running})).expect("spec")
    }

    fn server(status: &str, firewalls: &[i64]) -> ServerSummary {
        server::summary_for_tests("bot-12345678", status, firewalls)
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
    fn a_new_hostname_held_by_a_foreign_record_leaves_the_other_steps_to_run() {
        // Our record still has the old name; the new one was refused this resync.
        let mut o = known();
        o.tunnel = Some(tunnel(0));
        o.dns = Some(dns("old.agents.example.com", "t1.cfargotunnel.com"));
        o.dns_name_taken = Some(HOST.into());
        assert_eq!(plan(&spec(true), &configured("acct_a"), &o).steps, vec![Step::CreateServer]);
        o.server = Some(server("off", &[]));
        assert_eq!(
            plan(&spec(true), &configured("acct_a"), &o).steps,
            vec![Step::AttachFirewall, Step::Power(PowerStep::PowerOn)]
        );
        // The refusal expired: asked again.
        o.dns_name_taken = None;
        assert_eq!(plan(&spec(true), &configured("acct_a"), &o).steps[0], Step::CreateDns);
    }

    #[test]
    fn a_hostname_published_under_the_earlier_default_stays_unless_someone_else_holds_it() {
        let mut agent: Agent = serde_json::from_value(json!({
            "apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent",
            "metadata": {"name": "a", "namespace": "b-c"},
            "spec": {"owner": "acct_a", "region": "eu"}
        }))
        .expect("agent");
        assert_eq!(hostname(&agent, "z.io"), "a--b-c.z.io", "a new Agent");
        let mut status = AgentStatus {
            tunnel: Some(TunnelStatus { hostname: Some("a-b-c.z.io".into()), ..TunnelStatus::default() }),
            ..AgentStatus::default()
        };
        agent.status = Some(status.clone());
        assert_eq!(hostname(&agent, "z.io"), "a-b-c.z.io", "published before the upgrade");
        status.conditions = conditions::merge(
            &[],
            &[Desired::new("DnsReady", false, DNS_NAME_TAKEN, "held")],
            Some(1),
            Timestamp::now(),
        );
        agent.status = Some(status);
        assert_eq!(hostname(&agent, "z.io"), "a--b-c.z.io", "someone else holds the old name");
        agent.spec.tunnel.hostname = Some("mine.z.io".into());
        assert_eq!(hostname(&agent, "z.io"), "mine.z.io");
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
