//! The Hetzner-server machinery Agents and PlainVMs share: deterministic names, ownership
//! labels, the create spec, power decisions, the usage timeline, drift and deletion.
//!
//! Everything here is either a pure function (names, labels, decisions: unit-tested below) or
//! one idempotent cloud step. It never decides what a kind adds around its server (tunnel,
//! firewall); it never polls a single server: observations come from the shared fleet view.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::Resource;

use crate::api::{Region, ServerStatus};
use crate::cloud::hetzner::{ServerSpec, ServerSummary};
use crate::cloud::{CloudError, Secret};
use crate::store::audit::ResourceRef;
use crate::store::usage::{self, Transition, UsageTransition};

use super::SHARD_LABEL;
use super::conditions::Desired;
use super::context::{Context, ControllerConfig};
use super::error::ReconcileError;
use super::installation::INSTALLATION_LABEL;

/// Label on everything the operator creates in Hetzner: what the fleet list selects.
pub const MANAGED_BY_LABEL: &str = "crabglamp.com/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "crabglamp-operator";
/// The owning object's UID: the proof of ownership that adoption and the sweeper check.
pub const UID_LABEL: &str = "crabglamp.com/uid";
/// `agent` or `plainvm`.
pub const KIND_LABEL: &str = "crabglamp.com/kind";
/// The owning object's namespace and name, for people reading the Hetzner console.
pub const NAMESPACE_LABEL: &str = "crabglamp.com/namespace";
/// See [`NAMESPACE_LABEL`].
pub const NAME_LABEL: &str = "crabglamp.com/name";

/// The terms that keep an instance to its own servers and firewalls: its shard's (or, without
/// `--shard`, those without a shard label), and its namespace's with `--watch-namespace`. The
/// sweeper judges only what these select, so it never removes another deployment's servers.
fn scope_terms(config: &ControllerConfig) -> String {
    let mut terms = match &config.shard {
        Some(shard) => format!(",{SHARD_LABEL}={shard}"),
        None => format!(",!{SHARD_LABEL}"),
    };
    if let Some(ns) = &config.watch_namespace {
        terms.push_str(&format!(",{NAMESPACE_LABEL}={ns}"));
    }
    terms
}

/// Selects this installation's resources, or (`None`) those made before installations had an
/// identity, which carry no installation label.
fn installation_term(installation: Option<&str>) -> String {
    match installation {
        Some(installation) => format!(",{INSTALLATION_LABEL}={installation}"),
        None => format!(",!{INSTALLATION_LABEL}"),
    }
}

/// The label selector of the shared fleet list: every server this instance manages (of its
/// installation only: another cluster's servers in the same project are never listed).
pub fn fleet_selector(config: &ControllerConfig) -> String {
    legacy_or_fleet_selector(config, Some(config.installation()))
}

/// The servers of this instance's scope made before installations had an identity.
pub fn legacy_fleet_selector(config: &ControllerConfig) -> String {
    legacy_or_fleet_selector(config, None)
}

fn legacy_or_fleet_selector(config: &ControllerConfig, installation: Option<&str>) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}{}{}", installation_term(installation), scope_terms(config))
}

/// The label selector of the shared firewall list: every per-object (PlainVM) firewall of this
/// instance. The fleet firewall has no kind label, so it is not selected.
pub fn per_object_firewall_selector(config: &ControllerConfig) -> String {
    legacy_or_firewall_selector(config, Some(config.installation()))
}

/// The per-object firewalls of this instance's scope made before installations had an identity.
pub fn legacy_per_object_firewall_selector(config: &ControllerConfig) -> String {
    legacy_or_firewall_selector(config, None)
}

fn legacy_or_firewall_selector(config: &ControllerConfig, installation: Option<&str>) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{KIND_LABEL}=plainvm{}{}",
        installation_term(installation),
        scope_terms(config)
    )
}

/// What a kind asks of its server; the rest of this module needs nothing else of the object.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerIntent {
    /// `agent` or `plainvm` (label value and price-cell product).
    pub product: &'static str,
    pub region: Region,
    pub server_type: String,
    pub image: String,
    pub running: bool,
    pub owner: String,
}

impl ServerIntent {
    /// What a kind's spec fields ask for (every server-backed spec has these).
    pub fn new(
        product: &'static str,
        region: Region,
        server_type: &str,
        image: &str,
        running: bool,
        owner: &str,
    ) -> Self {
        let (server_type, image, owner) = (server_type.to_owned(), image.to_owned(), owner.to_owned());
        ServerIntent { product, region, server_type, image, running, owner }
    }

    /// Stripe price cell of the spec's server type, e.g. `agent-us-cpx22`.
    pub fn price_cell(&self) -> String {
        self.price_cell_of(&self.server_type)
    }

    /// Stripe price cell of a server of `server_type` of this product in this region.
    pub fn price_cell_of(&self, server_type: &str) -> String {
        format!("{}-{}-{}", self.product, self.region.as_str(), server_type)
    }

    /// The price cell `server` is billed at (see [`billed_type`]).
    pub fn billed_price_cell(&self, server: Option<&ServerSummary>) -> String {
        self.price_cell_of(&billed_type(self, server))
    }
}

/// The server type billing follows: the one Hetzner reports for the server, since that is what
/// runs and costs (a server rescaled in the console, or created before the spec was edited,
/// runs another type than the spec names); the spec's only while no server is observed (or a
/// summary lacks the type).
pub fn billed_type(intent: &ServerIntent, server: Option<&ServerSummary>) -> String {
    server.and_then(|s| s.server_type.as_ref()).map_or_else(|| intent.server_type.clone(), |t| t.name.clone())
}

/// The identity of the object a server belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The object's `crabglamp.com/shard` label: its servers and firewalls carry it too, so
    /// each shard's lists (and sweeper) see only their own.
    pub shard: Option<String>,
}

impl Owner {
    /// From a namespaced object that has been stored (it has a UID).
    pub fn of<K: Resource>(object: &K, kind: &'static str) -> Result<Self, ReconcileError> {
        let meta = object.meta();
        let uid = meta.uid.clone().ok_or(ReconcileError::NotStored("uid"))?;
        let namespace = meta.namespace.clone().ok_or(ReconcileError::NotStored("namespace"))?;
        let shard = meta.labels.as_ref().and_then(|l| l.get(SHARD_LABEL)).cloned();
        Ok(Owner { kind, namespace, name: meta.name.clone().unwrap_or_default(), uid, shard })
    }

    /// `Agent/team-a/research-bot`: what spans and messages name.
    pub fn display(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    /// The audit and usage rows' view of the object.
    pub fn resource_ref(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// `<name>-<first 8 hex digits of the UID>`: unique per object (a re-created object of the same
/// name gets a new server), stable across retries, and a DNS label because admission keeps
/// names within 50 characters.
pub fn server_name(name: &str, uid: &str) -> String {
    let uid8: String = uid.chars().filter(char::is_ascii_hexdigit).take(8).collect::<String>().to_ascii_lowercase();
    format!("{name}-{uid8}")
}

/// The ownership labels of an object's server (and a PlainVM's firewall) in `installation`.
/// Every value is a Kubernetes name or UID or an installation, which already fit Hetzner's
/// label rules (at most 63 characters, alphanumerics, `-`, `_`, `.`).
pub fn server_labels(owner: &Owner, product: &str, installation: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (INSTALLATION_LABEL.to_owned(), installation.to_owned()),
        (KIND_LABEL.to_owned(), product.to_owned()),
        (UID_LABEL.to_owned(), owner.uid.clone()),
        (NAMESPACE_LABEL.to_owned(), owner.namespace.clone()),
        (NAME_LABEL.to_owned(), owner.name.clone()),
    ]);
    // A Kubernetes label value: it fits Hetzner's rules as the others do.
    if let Some(shard) = &owner.shard {
        labels.insert(SHARD_LABEL.to_owned(), shard.clone());
    }
    labels
}

/// The labels left on a server after an `Orphan` deletion: the owner's own labels stay, ours
/// go, so neither the fleet list nor the sweeper ever sees it again.
pub fn without_our_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().filter(|(k, _)| !k.starts_with("crabglamp.com/")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The create call for an object's server in `installation`: attached to `firewalls` from its
/// first instant, with `user_data` (a secret: it may carry a token).
pub fn create_spec(
    owner: &Owner,
    intent: &ServerIntent,
    installation: &str,
    user_data: Secret,
    firewalls: Vec<i64>,
) -> ServerSpec {
    ServerSpec {
        name: server_name(&owner.name, &owner.uid),
        server_type: intent.server_type.clone(),
        image: intent.image.clone(),
        location: intent.region.hetzner_location().to_owned(),
        labels: server_labels(owner, intent.product, installation),
        user_data: Some(user_data),
        ssh_keys: Vec::new(),
        firewalls,
        start_after_create: intent.running,
    }
}

/// The status block of an observed server.
pub fn server_status(server: &ServerSummary, status_override: Option<&str>) -> ServerStatus {
    ServerStatus {
        id: Some(server.id),
        name: Some(server.name.clone()),
        location: server.location.as_ref().map(|l| l.name.clone()),
        status: Some(status_override.unwrap_or(&server.status).to_owned()),
        ipv4: server.public_net.ipv4.as_ref().map(|a| a.ip.clone()),
        ipv6: server.public_net.ipv6.as_ref().map(|a| a.ip.clone()),
    }
}

/// Pure: the `ServerReady` condition for a server believed to be in `effective` (none: not
/// created yet) when the spec wants `running`.
pub fn server_ready(running: bool, effective: Option<&str>) -> Desired {
    match (running, effective) {
        (true, Some("running")) | (false, Some("off")) => Desired::new(
            "ServerReady",
            true,
            if running { "Running" } else { "Stopped" },
            "The server is in the requested power state.",
        ),
        (_, Some(s)) => Desired::new(
            "ServerReady",
            false,
            "PowerTransition",
            format!("The server is {s}; waiting for it to be {}.", if running { "running" } else { "off" }),
        ),
        (_, None) => Desired::new("ServerReady", false, "Provisioning", "The server is being created."),
    }
}

/// Pure: the Event a created server deserves: whether it is a warning, its reason and note.
/// `vanished` is the server id status recorded before (a different one: deleted outside).
pub fn created_event(
    vanished: Option<i64>,
    created: &ServerSummary,
    intent: &ServerIntent,
) -> (bool, &'static str, String) {
    match vanished {
        Some(old) if old != created.id => (
            true,
            "ServerRecreated",
            format!("Server {old} was deleted outside the operator; created server {} in its place.", created.id),
        ),
        _ => (
            false,
            "ServerCreated",
            format!(
                "Server {} ({}) created in {}.",
                created.name,
                intent.server_type,
                intent.region.hetzner_location()
            ),
        ),
    }
}

/// Pure: the note of a power step's Event (a hard power-off is a warning).
pub fn power_note(step: PowerStep) -> (bool, &'static str) {
    match step {
        PowerStep::PowerOn => (false, "Powering the server on."),
        PowerStep::Shutdown => (false, "Asked the server to shut down (ACPI)."),
        PowerStep::PowerOff => (true, "The server ignored the ACPI shutdown past the timeout; powered it off."),
        PowerStep::Hold => (false, ""),
    }
}

/// Whether a status means the machine is (or is about to be) up.
pub fn is_up(status: &str) -> bool {
    matches!(status, "running" | "starting" | "initializing" | "rebuilding" | "migrating")
}

/// The next power step for a server in `status` when the spec wants `running`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerStep {
    /// Nothing to do now (already there, or a transition is under way).
    Hold,
    PowerOn,
    /// ACPI: the guest shuts down cleanly if it listens.
    Shutdown,
    /// Hard power-off: the guest ignored the ACPI request for longer than the timeout.
    PowerOff,
}

/// Pure: what to do about power. `shutdown_sent` is when this operator last asked the guest to
/// shut down (none = never, or the request was forgotten in a restart: then it is asked again).
pub fn decide_power(
    want_running: bool,
    status: &str,
    shutdown_sent: Option<Instant>,
    now: Instant,
    timeout: Duration,
) -> PowerStep {
    match (want_running, status) {
        (true, "off") => PowerStep::PowerOn,
        (false, "running") => match shutdown_sent {
            None => PowerStep::Shutdown,
            Some(sent) if now.saturating_duration_since(sent) >= timeout => PowerStep::PowerOff,
            Some(_) => PowerStep::Hold,
        },
        _ => PowerStep::Hold,
    }
}

/// Pure: the usage-timeline row an observed status calls for, given the last one recorded.
/// `running` after nothing or a stop is a start; `off` after a start is a stop. States in
/// between (`starting`, `stopping`) record nothing until they settle.
pub fn decide_transition(last_recorded: Option<Transition>, observed_status: &str) -> Option<Transition> {
    match (last_recorded, observed_status) {
        (None | Some(Transition::Stop), "running") => Some(Transition::Start),
        (Some(Transition::Start), "off") => Some(Transition::Stop),
        _ => None,
    }
}

/// The key of the `n`th transition of an object (1-based): a retried write of the same
/// transition is the same key, and the next real transition has the next `n`, so a server
/// restarted twice without a spec change is four rows, never two.
pub fn transition_key(uid: &str, n: usize, transition: Transition) -> String {
    format!("{uid}/{n}/{}", transition.as_str())
}

/// A timeline's tail: how many rows it has, and the last one's transition.
pub type TimelineTail = (usize, Option<Transition>);

/// The recorded transitions of an object: how many, and the last.
pub async fn timeline_tail(ctx: &Context, uid: &str) -> Result<TimelineTail, ReconcileError> {
    let rows = usage::transitions_for_resource(&ctx.db, uid).await?;
    let last = rows.last().map(|r| if r.transition == "start" { Transition::Start } else { Transition::Stop });
    Ok((rows.len(), last))
}

/// The row an observed status calls for now, if any: its position on the timeline (1-based)
/// and its transition.
pub async fn pending_transition(
    ctx: &Context,
    uid: &str,
    observed_status: &str,
) -> Result<Option<(usize, Transition)>, ReconcileError> {
    Ok(next_row(timeline_tail(ctx, uid).await?, observed_status))
}

/// Pure: the row an observed status calls for after `tail`: its position (1-based) and
/// transition.
pub fn next_row((count, last): TimelineTail, observed_status: &str) -> Option<(usize, Transition)> {
    decide_transition(last, observed_status).map(|t| (count + 1, t))
}

/// Appends the `n`th row of the timeline (idempotent by key) for `server` as observed (its
/// type is what the row bills, see [`billed_type`]), billed to `billed_owner` (the owner the
/// operator has accepted: a row never bills an owner whose transfer is not recorded yet).
pub async fn record_transition(
    ctx: &Context,
    owner: &Owner,
    (intent, server): (&ServerIntent, Option<&ServerSummary>),
    billed_owner: &str,
    (n, transition): (usize, Transition),
) -> Result<(), ReconcileError> {
    let server_type = billed_type(intent, server);
    let row = UsageTransition {
        transition_key: transition_key(&owner.uid, n, transition),
        resource: owner.resource_ref(),
        owner: billed_owner.to_owned(),
        region: intent.region.as_str().to_owned(),
        price_cell: intent.price_cell_of(&server_type),
        server_type,
        transition,
        occurred_at: Utc::now(),
    };
    usage::record(&ctx.db, &row).await?;
    Ok(())
}

/// The closing `stop` row of a server that is being removed while its timeline says it runs,
/// for the caller to write in the same transaction as the destroy event (billed, as the
/// destroy event is, to the accepted owner; with none known, to the start's). It closes the
/// start it follows at that start's region, server type and price cell: the server may be
/// gone from every view by now.
pub async fn closing_transition(
    ctx: &Context,
    owner: &Owner,
    billed_owner: Option<&str>,
) -> Result<Option<UsageTransition>, ReconcileError> {
    let rows = usage::transitions_for_resource(&ctx.db, &owner.uid).await?;
    Ok(rows.last().filter(|last| last.transition == Transition::Start.as_str()).map(|start| UsageTransition {
        transition_key: transition_key(&owner.uid, rows.len() + 1, Transition::Stop),
        resource: owner.resource_ref(),
        owner: billed_owner.unwrap_or(&start.owner).to_owned(),
        region: start.region.clone(),
        server_type: start.server_type.clone(),
        price_cell: start.price_cell.clone(),
        transition: Transition::Stop,
        occurred_at: Utc::now(),
    }))
}

/// Pure: whether removing a server (deleting or orphaning it) must wait for it to settle. A
/// server between power states (`initializing`, `starting`, `stopping`, or `unknown` after a
/// power call whose answer was lost) may be making a transition the timeline has not seen yet:
/// removed now, its start and the stop its removal makes would never be billed. The wait is
/// bounded: `patience` after the removal was asked, it goes on with what is known.
pub fn removal_waits(observed_status: Option<&str>, asked_for: Duration, patience: Duration) -> bool {
    observed_status.is_some_and(|s| !matches!(s, "running" | "off")) && asked_for < patience
}

/// Before a server is removed: waits (as an error, so the finalizer stays) while it is between
/// power states (see [`removal_waits`]), then records the row its settled state calls for, so
/// the closing row the destroy commits follows every real transition. `observed_status` is
/// the status `server` (as the fleet view holds it) counts as for the timeline.
pub async fn settle_before_removal<K: Resource>(
    ctx: &Context,
    (object, owner): (&K, &Owner),
    (intent, server): (&ServerIntent, Option<&ServerSummary>),
    billed_owner: &str,
    observed_status: Option<String>,
) -> Result<(), ReconcileError> {
    let asked_for = object
        .meta()
        .deletion_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default();
    if removal_waits(observed_status.as_deref(), asked_for, ctx.config.removal_settle_timeout) {
        ctx.fleet.wait_for_servers(&owner.uid);
        return Err(ReconcileError::NotReady("the server to settle in a power state before it is removed"));
    }
    if let Some(observed) = observed_status
        && let Some(row) = pending_transition(ctx, &owner.uid, &observed).await?
    {
        record_transition(ctx, owner, (intent, server), billed_owner, row).await?;
    }
    Ok(())
}

/// Creates (or adopts) the object's server and records it in the fleet view at once, so the
/// next pass sees it without a list. The server id reaches status right after this returns,
/// before its create action finishes.
pub async fn create_server(ctx: &Context, owner: &Owner, spec: &ServerSpec) -> Result<ServerSummary, ReconcileError> {
    let created = ctx.hetzner.create_server(spec).await.map_err(|e| match e {
        // The client adopts a server of that name carrying our marks; one without them is
        // someone else's, and retrying cannot help until it is renamed or removed.
        CloudError::Conflict(ref d) if d.code == "uniqueness_error" => {
            ReconcileError::NameTaken { what: "server", name: spec.name.clone(), source: Box::new(e) }
        }
        e => ReconcileError::Hetzner(e),
    })?;
    let summary = ServerSummary::from_model(&created.server).ok_or(ReconcileError::Decode("server"))?;
    ctx.fleet.record_server(&owner.uid, summary.clone());
    if created.adopted {
        tracing::info!(server = summary.id, "adopted the server an earlier attempt created");
    } else {
        tracing::info!(server = summary.id, "server created");
    }
    ctx.metrics.count_step(owner.kind, "create_server");
    Ok(summary)
}

/// The fleet view's status of a server after a power call whose outcome is not known.
pub const UNKNOWN_STATUS: &str = "unknown";

/// Performs a power step; the fleet view shows the transition as under way so nothing asks
/// twice, and the fast refresh watches for it to settle.
pub async fn apply_power(
    ctx: &Context,
    owner: &Owner,
    server: &ServerSummary,
    step: PowerStep,
) -> Result<(), ReconcileError> {
    let (result, under_way) = match step {
        PowerStep::Hold => return Ok(()),
        PowerStep::PowerOn => (ctx.hetzner.power_on(server.id).await, "starting"),
        PowerStep::Shutdown => {
            let r = ctx.hetzner.shutdown(server.id).await;
            if r.is_ok() {
                ctx.power.shutdown_sent(&owner.uid, Instant::now());
            }
            // ACPI leaves the status `running` until the guest is down.
            (r, "running")
        }
        PowerStep::PowerOff => (ctx.hetzner.power_off(server.id).await, "stopping"),
    };
    let mut seen = server.clone();
    if let Err(e) = result {
        // The call may have been applied with its answer lost: until a list shows the server
        // again, nothing may be decided (or billed) from the state it was in before.
        if !matches!(e, CloudError::Permanent(_) | CloudError::NotFound(_)) {
            seen.status = UNKNOWN_STATUS.to_owned();
            ctx.fleet.record_server(&owner.uid, seen);
            ctx.fleet.wait_for_servers(&owner.uid);
        }
        return Err(ReconcileError::Hetzner(e));
    }
    seen.status = under_way.to_owned();
    ctx.fleet.record_server(&owner.uid, seen);
    ctx.fleet.wait_for_servers(&owner.uid);
    ctx.metrics.count_step(owner.kind, step_name(step));
    Ok(())
}

/// What a power step acts on: the fleet view's server at one instant, the status the usage
/// timeline reads from it (an Agent's counts a connected tunnel as booted), and the owner a
/// row written now bills (`None`: no owner accepted yet).
pub struct PowerSubject {
    pub server: ServerSummary,
    pub observed: String,
    pub billed_owner: Option<String>,
}

/// The power step of a reconcile, on the server as the fleet view shows it now, reported with
/// an Event on `object`. The status the step acts on is recorded on the timeline first: the
/// pass looked at the fleet view before it planned, and a list merged in between (the server
/// settled `off`) would otherwise let that stop, and the start this step makes, pass
/// unrecorded. A step the fleet view no longer calls for is left to the next plan.
pub async fn power_step<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    owner: &Owner,
    intent: &ServerIntent,
    subject: PowerSubject,
    step: PowerStep,
) -> Result<(), ReconcileError> {
    let PowerSubject { server, observed, billed_owner } = subject;
    if let Some(billed) = &billed_owner
        && let Some(row) = pending_transition(ctx, &owner.uid, &observed).await?
    {
        record_transition(ctx, owner, (intent, Some(&server)), billed, row).await?;
        tracing::info!(transition = row.1.as_str(), "usage timeline");
    }
    let shutdown_sent = ctx.power.shutdown_sent_at(&owner.uid);
    if decide_power(intent.running, &observed, shutdown_sent, Instant::now(), ctx.config.shutdown_timeout) != step {
        return Ok(());
    }
    apply_power(ctx, owner, &server, step).await?;
    let (warning, note) = power_note(step);
    ctx.event(object, warning, "Power", "Power", note.to_owned()).await;
    Ok(())
}

fn step_name(step: PowerStep) -> &'static str {
    match step {
        PowerStep::Hold => "hold",
        PowerStep::PowerOn => "power_on",
        PowerStep::Shutdown => "shutdown",
        PowerStep::PowerOff => "power_off",
    }
}

/// Deletes the server (gone already counts as done) and forgets it in the fleet view.
pub async fn delete_server(ctx: &Context, owner: &Owner, id: i64) -> Result<bool, ReconcileError> {
    let existed = ctx.hetzner.delete_server(id).await.map_err(ReconcileError::Hetzner)?.is_some();
    ctx.fleet.forget_server(&owner.uid);
    ctx.power.forget(&owner.uid);
    ctx.metrics.count_step(owner.kind, "delete_server");
    Ok(existed)
}

/// Pure: whether `labels` still mark a resource as the object with `uid`'s. A resource found
/// by an id status recorded may have changed hands since (unmarked by an earlier attempt whose
/// answer was lost): only one still carrying the object's UID is ours to change.
pub fn marked_for(labels: &BTreeMap<String, String>, uid: &str) -> bool {
    labels.get(UID_LABEL).is_some_and(|u| u == uid)
}

/// Takes our labels off the object's server as it is orphaned (the owner's own labels stay).
/// It is found as the Delete path finds it: in the fleet view (`seen`), else by the id status
/// recorded, read once, since a list that has not shown it yet (or a page that shifted under
/// a paged list) would leave it marked, for the sweeper to delete later.
pub async fn unmark_server(
    ctx: &Context,
    owner: &Owner,
    seen: Option<&ServerSummary>,
    recorded: Option<i64>,
) -> Result<(), ReconcileError> {
    let found = match (seen, recorded) {
        (Some(server), _) => Some((server.id, server.labels.clone())),
        (None, Some(id)) => ctx
            .hetzner
            .get_server(id)
            .await
            .map_err(ReconcileError::Hetzner)?
            .map(|server| (server.id, server.labels.into_iter().collect())),
        (None, None) => None,
    };
    if let Some((id, labels)) = found.filter(|(_, labels)| marked_for(labels, &owner.uid)) {
        match ctx.hetzner.set_server_labels(id, &without_our_labels(&labels)).await {
            Ok(_) | Err(CloudError::NotFound(_)) => {}
            Err(e) => return Err(ReconcileError::Hetzner(e)),
        }
    }
    ctx.fleet.forget_server(&owner.uid);
    ctx.power.forget(&owner.uid);
    Ok(())
}

/// A server as the fleet view holds it, for the reconcilers' unit tests: id 7, behind
/// `firewalls` (applied).
#[cfg(test)]
pub(crate) fn summary_for_tests(name: &str, status: &str, firewalls: &[i64]) -> ServerSummary {
    use crate::cloud::hetzner::{FirewallAttachment, PublicNetSummary};
    let firewalls = firewalls.iter().map(|&id| FirewallAttachment { id, status: Some("applied".into()) }).collect();
    ServerSummary {
        id: 7,
        name: name.into(),
        status: status.into(),
        public_net: PublicNetSummary { firewalls, ..PublicNetSummary::default() },
        ..ServerSummary::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f2a9c1e-0b4d-4c55-9e1a-7d2b8c6f0a11";

    #[test]
    fn each_instance_lists_only_its_installation_shard_and_namespace() {
        let mut config = ControllerConfig::new("z");
        config.installation = Some("prod".into());
        assert_eq!(
            fleet_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,crabglamp.com/installation=prod,!crabglamp.com/shard"
        );
        assert_eq!(
            legacy_fleet_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,!crabglamp.com/installation,!crabglamp.com/shard"
        );
        config.shard = Some("a".into());
        config.watch_namespace = Some("team-a".into());
        assert_eq!(
            per_object_firewall_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,crabglamp.com/kind=plainvm,crabglamp.com/installation=prod,crabglamp.com/shard=a,crabglamp.com/namespace=team-a"
        );
        assert_eq!(
            legacy_per_object_firewall_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,crabglamp.com/kind=plainvm,!crabglamp.com/installation,crabglamp.com/shard=a,crabglamp.com/namespace=team-a"
        );
    }

    #[test]
    fn server_names_are_dns_labels_within_hetzner_limits() {
        assert_eq!(server_name("research-bot", UID), "research-bot-3f2a9c1e");
        let longest = "a".repeat(50);
        let name = server_name(&longest, UID);
        assert_eq!(name.len(), 59);
        assert!(name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_eq!(server_name("x", "ABCDEF12-3456"), "x-abcdef12", "uppercase UIDs still give a lowercase name");
    }

    #[test]
    fn labels_point_back_and_orphaning_removes_only_ours() {
        let owner =
            Owner { kind: "Agent", namespace: "team-a".into(), name: "bot".into(), uid: UID.into(), shard: None };
        let labels = server_labels(&owner, "agent", "prod");
        assert_eq!(labels[UID_LABEL], UID);
        assert_eq!(labels[INSTALLATION_LABEL], "prod");
        assert!(!labels.contains_key(SHARD_LABEL));
        let sharded = server_labels(&Owner { shard: Some("eu-2".into()), ..owner.clone() }, "agent", "prod");
        assert_eq!(sharded[SHARD_LABEL], "eu-2");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        for (k, v) in &labels {
            let name = k.rsplit('/').next().unwrap_or(k);
            assert!(name.len() <= 63 && v.len() <= 63, "{k}={v}");
            assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{v}");
        }
        let mut theirs = labels.clone();
        theirs.insert("team".into(), "x".into());
        assert_eq!(without_our_labels(&theirs), BTreeMap::from([("team".to_owned(), "x".to_owned())]));
        assert!(marked_for(&labels, UID));
        assert!(!marked_for(&without_our_labels(&theirs), UID), "unmarked before: not ours to change");
        assert!(!marked_for(&labels, "another-uid"));
    }

    #[test]
    fn power_decisions_over_every_status() {
        let now = Instant::now();
        let t = Duration::from_secs(60);
        let statuses = ["initializing", "starting", "running", "stopping", "off", "deleting", "rebuilding", "unknown"];
        for status in statuses {
            let want_on = decide_power(true, status, None, now, t);
            assert_eq!(want_on, if status == "off" { PowerStep::PowerOn } else { PowerStep::Hold }, "{status}");
            let want_off = decide_power(false, status, None, now, t);
            assert_eq!(want_off, if status == "running" { PowerStep::Shutdown } else { PowerStep::Hold }, "{status}");
        }
        let sent = now.checked_sub(Duration::from_secs(30)).unwrap_or(now);
        assert_eq!(decide_power(false, "running", Some(sent), now, t), PowerStep::Hold, "ACPI still has time");
        let long_ago = now.checked_sub(Duration::from_secs(61)).unwrap_or(now);
        assert_eq!(
            decide_power(false, "running", Some(long_ago), now, t),
            PowerStep::PowerOff,
            "the guest ignored ACPI"
        );
        assert_eq!(decide_power(true, "running", Some(long_ago), now, t), PowerStep::Hold, "a stale request is moot");
    }

    #[test]
    fn timeline_records_each_real_transition_once() {
        use Transition::*;
        assert_eq!(decide_transition(None, "running"), Some(Start));
        assert_eq!(decide_transition(None, "off"), None, "a server never started has nothing to stop");
        assert_eq!(decide_transition(Some(Start), "running"), None, "a retry records nothing");
        assert_eq!(decide_transition(Some(Start), "stopping"), None, "wait until it settles");
        assert_eq!(decide_transition(Some(Start), "off"), Some(Stop));
        assert_eq!(decide_transition(Some(Stop), "off"), None);
        assert_eq!(decide_transition(Some(Stop), "running"), Some(Start));
        // Keys: the same logical transition is one key; the next one another.
        assert_eq!(transition_key(UID, 1, Start), transition_key(UID, 1, Start));
        assert_ne!(transition_key(UID, 1, Start), transition_key(UID, 3, Start));
    }

    #[test]
    fn a_server_between_power_states_is_removed_only_once_settled() {
        let patience = Duration::from_secs(120);
        let soon = Duration::from_secs(3);
        for settled in ["running", "off"] {
            assert!(!removal_waits(Some(settled), soon, patience), "{settled}");
        }
        for between in ["initializing", "starting", "stopping", UNKNOWN_STATUS] {
            assert!(removal_waits(Some(between), soon, patience), "{between}: its transition is not billed yet");
            assert!(!removal_waits(Some(between), patience, patience), "{between}: the wait is bounded");
        }
        assert!(!removal_waits(None, soon, patience), "no server: nothing to wait for");
    }

    #[test]
    fn price_cells() {
        let intent = ServerIntent {
            product: "agent",
            region: Region::Us,
            server_type: "cpx22".into(),
            image: "ubuntu-24.04".into(),
            running: true,
            owner: "acct".into(),
        };
        assert_eq!(intent.price_cell(), "agent-us-cpx22");
        assert_eq!(intent.billed_price_cell(None), "agent-us-cpx22", "no server yet: the spec's type");
        let mut server = summary_for_tests("bot-12345678", "running", &[]);
        assert_eq!(intent.billed_price_cell(Some(&server)), "agent-us-cpx22", "a summary without its type");
        server.server_type = Some(crate::cloud::hetzner::NamedSummary { name: "cpx42".into() });
        assert_eq!(billed_type(&intent, Some(&server)), "cpx42");
        assert_eq!(intent.billed_price_cell(Some(&server)), "agent-us-cpx42", "rescaled by hand: what runs is billed");
    }
}
