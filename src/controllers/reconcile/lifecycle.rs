//! The reconcile skeleton every kind runs on. For all three ([`ManagedObject`]): the pause
//! annotation, the finalizer around the kind's pass or cleanup, the reconcile log line and
//! metrics, the status patch (only on change) and the error policy. For the server-backed
//! kinds ([`ServerObject`], Agent and PlainVM), the pass itself: observe -> decide -> act, a
//! few steps at a time, a permanent error stalls, a retryable one is named in `Ready` and
//! backed off; the usage-timeline row after it, and the requeue that follows from what the
//! pass waits for. How an outcome shows (stall or retry, summary conditions, phase) is
//! [`super::outcome`]'s; the destroy transaction (closing usage row and destroy event in one
//! commit) is [`super::destroy`]'s. Both are re-exported here.
//!
//! A kind supplies its observations, its pure decision, its steps and its status through
//! [`ManagedObject`] and [`Pass`]; this module never knows what a tunnel, a firewall or a key
//! is, never talks to a cloud itself, and never writes `spec`.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::controllers::context::Context;
use crate::controllers::reconcile::conditions::{self, Desired};
pub use crate::controllers::reconcile::destroy::{Destroyed, commit_destroy, record_destroy};
use crate::controllers::reconcile::error::ReconcileError;
pub use crate::controllers::reconcile::outcome::{
    SELF_CLEARING, Stall, phase, retry_reason, set_ready_reason, stall_reason, summary_conditions,
};
use crate::controllers::reconcile::status_patch::status_merge_patch;
use crate::controllers::server::names::tunnel_name;
use crate::controllers::server::{self, Owner, ServerIntent};

/// The finalizer that holds an object until its cloud resources are gone and its destroy event
/// is committed.
pub const FINALIZER: &str = "crabglamp.com/cleanup";
/// `"true"` stops reconciling the object (nothing is created, changed or deleted for it).
pub const PAUSE_ANNOTATION: &str = "crabglamp.com/paused";

/// What the next pass waits for, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Nothing,
    /// A list to show the first complete picture.
    Lists,
    /// The tunnel to connect (Agents).
    Tunnel,
    /// The server to reach the desired power state.
    Server,
}

/// The decision for one pass: the steps to take now, in order, and what to wait for after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<S> {
    pub steps: Vec<S>,
    pub wait: Wait,
}

/// A kind this skeleton reconciles.
pub trait ManagedObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    type Status: Clone + Debug + Default + PartialEq + Serialize + Send + Sync;
    /// `Agent`, `PlainVM`, `VirtualKey`: spans, metrics, Events.
    const KIND: &'static str;
    /// The finalizer that holds an object until its cleanup is done: a kind keeps the name its
    /// objects already carry (a new one would leave the old one on them for good).
    const FINALIZER: &'static str = FINALIZER;
    /// Whether the pause annotation holds the object (see [`PAUSE_ANNOTATION`]).
    const PAUSABLE: bool = true;

    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
    /// The phase in status (`Pending` before the first status write), for the objects gauge.
    fn phase_name(&self) -> String;

    /// One pass over a live object.
    fn apply(object: Arc<Self>, ctx: Arc<Context>) -> impl Future<Output = Result<Action, ReconcileError>> + Send;
    /// Tears the object's cloud resources down (or orphans them) and commits its destroy event.
    /// Any `Ok` releases the finalizer: return an error while anything is left.
    fn cleanup(object: Arc<Self>, ctx: Arc<Context>) -> impl Future<Output = Result<Action, ReconcileError>> + Send;
}

/// A kind backed by a server of its own (Agent, PlainVM): what [`apply`]'s passes run on.
pub trait ServerObject: ManagedObject {
    /// What the object asks of its server.
    fn intent(&self) -> ServerIntent;
}

/// The status accessors of [`ManagedObject`] for a kind whose status has `conditions`.
macro_rules! status_access {
    ($status:ty) => {
        fn status(&self) -> Option<&$status> {
            self.status.as_ref()
        }
        fn conditions(status: &$status) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
            &status.conditions
        }
        fn conditions_mut(status: &mut $status) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
            &mut status.conditions
        }
    };
}
pub(crate) use status_access;

/// The parts of a [`ManagedObject`] impl every server-backed kind writes the same way: its
/// status type, its kind name, the status accessors, and the phase from `status.phase`.
macro_rules! managed_kind {
    ($status:ty, $kind:expr) => {
        type Status = $status;
        const KIND: &'static str = $kind;
        $crate::controllers::reconcile::lifecycle::status_access!($status);
        fn phase_name(&self) -> String {
            format!("{:?}", self.status.as_ref().and_then(|s| s.phase).unwrap_or_default())
        }
    };
}
pub(crate) use managed_kind;

/// The object of one pass and its identity.
pub struct Target<K> {
    pub object: Arc<K>,
    pub owner: Owner,
}

impl<K: ServerObject> Target<K> {
    pub fn of(object: Arc<K>) -> Result<Self, ReconcileError> {
        let owner = Owner::of(object.as_ref(), K::KIND)?;
        Ok(Target { object, owner })
    }
}

/// One kind's pass over one object: what [`apply`] needs of it.
pub trait Pass: Sync {
    type Object: ServerObject;
    type Step: Clone + Debug + PartialEq + Send + Sync;

    fn target(&self) -> &Target<Self::Object>;
    /// Whether every shared list this kind decides on has been seen complete.
    fn lists_known(&self, ctx: &Context) -> bool;
    /// Observe and decide (pure but for reading the fleet view).
    fn plan(&self, ctx: &Context, status: &<Self::Object as ManagedObject>::Status) -> Plan<Self::Step>;
    /// One idempotent step; what it learns goes into `status` and the fleet view.
    fn act(
        &self,
        ctx: &Context,
        status: &mut <Self::Object as ManagedObject>::Status,
        step: &Self::Step,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;
    /// The status that describes what is observed now (`stalled`: a permanent error).
    fn describe(
        &self,
        ctx: &Context,
        status: &<Self::Object as ManagedObject>::Status,
        stalled: Option<Stall>,
    ) -> <Self::Object as ManagedObject>::Status;
    /// The status the pass starts from: the object's, with what the kind knows better than a
    /// possibly stale status (an Agent's owner, from the transfer trail). The status write
    /// compares against the object's own, so a correction is written.
    fn working_status(&self, old: &<Self::Object as ManagedObject>::Status) -> <Self::Object as ManagedObject>::Status {
        old.clone()
    }
    /// The server status the usage timeline should believe, if there is a server.
    fn power_status(&self, ctx: &Context) -> Option<String>;
    /// The owner a usage row written now bills: the one the operator has accepted (for an
    /// Agent, `status.owner` as the pass's working status holds it, the transfer trail's),
    /// never a new spec owner whose transfer is not recorded yet. `None`: no owner accepted
    /// yet, so no row is written until one is. By default the spec's owner (a kind whose owner
    /// cannot change).
    fn billed_owner(&self, _status: &<Self::Object as ManagedObject>::Status) -> Option<String> {
        Some(self.target().object.intent().owner)
    }
    /// A permanent error's reason, or `None` when retrying can help. Kinds may name a step's
    /// refusal more precisely than [`stall_reason`] does.
    fn stall(&self, _step: &Self::Step, error: &ReconcileError) -> Option<Stall> {
        stall_reason(error)
    }
}

/// The requeue after a pass that ended without error, and what the object now waits on. An
/// object waiting for its server or tunnel is woken by the list that shows the change (see
/// [`crate::controllers::fleet::waiters`]); its requeue is the resync's safety net, or the
/// moment an ACPI shutdown turns into a hard power-off, which no list shows.
pub fn next_action(stalled: Option<&'static str>, wait: Wait, ctx: &Context, owner: &Owner) -> Action {
    let uid = owner.uid.as_str();
    match (stalled, wait) {
        (Some(reason), _) => {
            ctx.shared.fleet.done_waiting(uid);
            // A quota or a sold-out type clears by itself: look again each resync (a periodic
            // retry, never a tight loop). A bad spec does not: wait for the spec to change.
            if SELF_CLEARING.contains(&reason) { Action::requeue(ctx.config.resync) } else { Action::await_change() }
        }
        (None, Wait::Nothing) => {
            ctx.shared.fleet.done_waiting(uid);
            Action::requeue(ctx.config.resync)
        }
        (None, Wait::Lists) => Action::requeue(ctx.config.fast_poll),
        (None, Wait::Tunnel) => {
            ctx.shared.fleet.wait_for_tunnel(owner, &tunnel_name(ctx.config.installation(), uid));
            Action::requeue(ctx.config.resync)
        }
        (None, Wait::Server) => {
            ctx.shared.fleet.wait_for_servers(owner);
            let shutdown_left = ctx
                .power
                .shutdown_sent_at(uid)
                .and_then(|sent| ctx.config.shutdown_timeout.checked_sub(sent.elapsed()));
            // Just past the timeout, so the pass it starts decides the power-off.
            let deadline = shutdown_left.map_or(ctx.config.resync, |left| left + Duration::from_millis(50));
            Action::requeue(deadline.min(ctx.config.resync))
        }
    }
}

/// Steps a pass takes at most; the rest are taken by the next pass, at once.
const MAX_STEPS: usize = 10;

/// One pass: up to ten steps (each one's result is in the fleet view for the next), the
/// timeline row the observed power calls for, the status patch, the requeue. A step is taken
/// at most once a pass: one that left nothing the decision sees (a DNS name refused) must not
/// be taken again and again while the steps after it never run.
pub async fn apply<P: Pass>(pass: &P, ctx: &Context) -> Result<Action, ReconcileError> {
    let Target { object, owner } = pass.target();
    let object = object.as_ref();
    // Until the first complete lists, absence proves nothing: deciding (or describing the
    // world in status) then would flap conditions of every object at each operator restart.
    // At start they come within moments: wait for them here rather than in another reconcile.
    if !ctx.shared.fleet.until(|| pass.lists_known(ctx), ctx.config.fast_poll).await {
        return Ok(Action::requeue(ctx.config.fast_poll));
    }
    let old = latest_status(ctx, object);
    let mut status = pass.working_status(&old);
    let mut stalled: Option<Stall> = None;
    // What happened before this pass (a stop in the console) is recorded before this pass
    // changes it (powers the server on again), or the timeline would never show it.
    let mut tail = None;
    record_usage(pass, ctx, &status, &mut tail).await?;
    let mut plan = Plan { steps: Vec::new(), wait: Wait::Lists };
    let mut taken: Vec<P::Step> = Vec::new();
    let mut more_to_do = false;
    for round in 0..=MAX_STEPS {
        plan = pass.plan(ctx, &status);
        let Some(step) = next_step(&plan.steps, &taken) else { break };
        if round == MAX_STEPS {
            more_to_do = true;
            break;
        }
        taken.push(step.clone());
        if let Err(e) = pass.act(ctx, &mut status, &step).await {
            if let Some(stall) = pass.stall(&step, &e) {
                tracing::warn!(error = %e, ?step, "permanent error: stalled");
                ctx.event(object, true, stall.0, "Reconcile", stall.1.clone()).await;
                stalled = Some(stall);
                break;
            }
            // Keep what was done so far (e.g. a new server's id) and say what failed, then
            // back off.
            let (reason, message) = retry_reason(&e);
            let mut next = pass.describe(ctx, &status, None);
            set_ready_reason(P::Object::conditions_mut(&mut next), reason, &message);
            write_status(ctx, object, &old, &next).await?;
            return Err(e);
        }
    }
    record_usage(pass, ctx, &status, &mut tail).await?;
    let next = pass.describe(ctx, &status, stalled.clone());
    write_status(ctx, object, &old, &next).await?;
    ctx.failures.succeeded(&owner.uid);
    tracing::debug!(wait = ?plan.wait, stalled = stalled.is_some(), more_to_do, "pass done");
    let stalled = stalled.map(|(reason, _)| reason);
    let action = next_action(stalled, plan.wait, ctx, owner);
    // Our own status write starts no reconcile (see `trigger`): steps left go on at once. So
    // does a pass whose view changed after it decided but before its wait was registered (no
    // list wakes it for a change merged before).
    let changed_since = || stalled.is_none() && plan.wait != Wait::Nothing && pass.plan(ctx, &status) != plan;
    if more_to_do || changed_since() {
        return Ok(Action::requeue(Duration::ZERO));
    }
    Ok(action)
}

/// Pure: the first planned step not yet taken in this pass. A step planned again after it
/// was taken changed nothing the decision reads; it is logged (a decision that does not see
/// its own step's outcome is a bug) and passed over so the steps after it still run.
fn next_step<S: Clone + Debug + PartialEq>(planned: &[S], taken: &[S]) -> Option<S> {
    for step in planned {
        if !taken.contains(step) {
            return Some(step.clone());
        }
        tracing::warn!(?step, "a step was planned again after it was taken in this pass; passed over");
    }
    None
}

/// Appends the usage-timeline row the observed power state calls for, if any. `tail` is the
/// timeline's tail as this pass knows it: read from PostgreSQL at most once per pass (a pass
/// is the only writer of its object's timeline while it runs) and kept up to date here.
async fn record_usage<P: Pass>(
    pass: &P,
    ctx: &Context,
    status: &<P::Object as ManagedObject>::Status,
    tail: &mut Option<server::TimelineTail>,
) -> Result<(), ReconcileError> {
    let Target { object, owner } = pass.target();
    let Some(observed) = pass.power_status(ctx) else { return Ok(()) };
    let known = match *tail {
        Some(known) => known,
        None => server::timeline_tail(ctx, &owner.uid).await?,
    };
    *tail = Some(known);
    let Some(row) = server::next_row(known, &observed) else { return Ok(()) };
    // A copy read before the owner was accepted (the cache behind our own status write) must
    // not bill the spec's owner: it may be a new one whose transfer is not recorded yet.
    let Some(billed) = pass.billed_owner(status) else { return Ok(()) };
    // A failed write ends the pass (the memo with it): the next pass reads the tail again.
    let server = ctx.shared.fleet.server(&owner.uid);
    server::record_transition(ctx, owner, (&object.intent(), server.as_ref()), &billed, row).await?;
    *tail = Some((row.0, Some(row.1)));
    tracing::info!(transition = row.1.as_str(), "usage timeline");
    Ok(())
}

/// Patches `/status` with the difference, only when something changed.
pub async fn write_status<K: ManagedObject>(
    ctx: &Context,
    object: &K,
    old: &K::Status,
    new: &K::Status,
) -> Result<(), ReconcileError> {
    if old == new {
        return Ok(());
    }
    let Some(patch) = status_merge_patch(old, new) else { return Ok(()) };
    let api: Api<K> = Api::namespaced(ctx.clients.kube.clone(), &object.namespace().unwrap_or_default());
    api.patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.telemetry.metrics.count_status_write(K::KIND);
    let (uid, version) = (object.uid().unwrap_or_default(), object.resource_version().unwrap_or_default());
    ctx.shared.written.remember(&uid, &version, new);
    Ok(())
}

/// The object's status as a pass starts from it: ours if the cache has not shown our last
/// write yet (see [`crate::controllers::reconcile::written`]).
pub fn latest_status<K: ManagedObject>(ctx: &Context, object: &K) -> K::Status {
    let (uid, version) = (object.uid().unwrap_or_default(), object.resource_version().unwrap_or_default());
    ctx.shared.written.latest(&uid, &version, object.status())
}

/// Target of the one line per finished reconcile (at `debug`): `RUST_LOG=crabglamp::reconcile=debug`
/// turns on just these lines, which the scale benchmark reads for reconcile counts and latency.
pub const RECONCILE_LOG_TARGET: &str = "crabglamp::reconcile";

/// Logs one finished reconcile of the object named `object_name` with its duration (the
/// benchmark's source of reconcile counts and latency). The name is a field of the line itself:
/// the reconcile span is off when only this target logs.
pub fn log_reconcile(kind: &str, object_name: &str, ok: bool, started: std::time::Instant) {
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let outcome = if ok { "ok" } else { "error" };
    tracing::debug!(target: RECONCILE_LOG_TARGET, kind, object_name, outcome, elapsed_us, "reconciled");
}

/// The controller's entry point for one object of any managed kind.
pub async fn reconcile<K: ManagedObject>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    // `object_name`, not `name`: JSON log lines give the span's own name under `name`.
    let span = tracing::info_span!(
        "reconcile",
        kind = K::KIND,
        namespace = %object.namespace().unwrap_or_default(),
        object_name = %object.name_any()
    );
    async move {
        ctx.shared.observer.started(object.as_ref());
        if K::PAUSABLE && paused(object.as_ref()) {
            return pause(object.as_ref(), &ctx).await;
        }
        let started = std::time::Instant::now();
        let api: Api<K> = Api::namespaced(ctx.clients.kube.clone(), &object.namespace().unwrap_or_default());
        let (uid, name) = (object.uid().unwrap_or_default(), object.name_any());
        if object.meta().deletion_timestamp.is_some() {
            ctx.shared.written.forget(&uid);
        }
        let result = finalizer(&api, K::FINALIZER, object, |event| async {
            let result = match event {
                Finalizer::Apply(o) => K::apply(o, Arc::clone(&ctx)).await,
                Finalizer::Cleanup(o) => K::cleanup(o, Arc::clone(&ctx)).await,
            };
            done_if_destroyed(result, &uid, &ctx)
        })
        .await;
        ctx.telemetry.metrics.count_reconcile(K::KIND, if result.is_ok() { "ok" } else { "error" }, started.elapsed());
        log_reconcile(K::KIND, &name, result.is_ok(), started);
        result.map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => ReconcileError::Finalizer(other.to_string()),
        })
    }
    .instrument(span)
    .await
}

/// A pass the database stopped because the object's destroy event is recorded (another
/// instance, e.g. a leader overlapping this one, destroyed it) is over, not failed: nothing is
/// left to do or bill for the object, and retrying would be refused again. For a cleanup, `Ok`
/// releases the finalizer, which the destroy event allows.
fn done_if_destroyed(
    result: Result<Action, ReconcileError>,
    uid: &str,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    match result {
        Err(e) if e.already_destroyed() => {
            tracing::info!(error = %e, "already destroyed (its destroy event is recorded): nothing left to do");
            ctx.shared.fleet.done_waiting(uid);
            Ok(Action::await_change())
        }
        other => other,
    }
}

/// Whether the object carries the pause annotation.
pub fn paused<K: kube::Resource>(object: &K) -> bool {
    object.meta().annotations.as_ref().and_then(|a| a.get(PAUSE_ANNOTATION)).map(String::as_str) == Some("true")
}

/// A paused object: nothing is done for it; a `Paused` condition says so (written once).
async fn pause<K: ManagedObject>(object: &K, ctx: &Context) -> Result<Action, ReconcileError> {
    // Nothing wakes a paused object: its lists need not run fast for it.
    ctx.shared.fleet.done_waiting(&object.uid().unwrap_or_default());
    let old = object.status().cloned().unwrap_or_default();
    if conditions::find(K::conditions(&old), "Paused").is_some_and(|c| c.status == "True") {
        return Ok(Action::await_change());
    }
    let mut next = old.clone();
    let list = K::conditions_mut(&mut next);
    list.retain(|c| c.type_ != "Paused");
    list.extend(conditions::merge(
        &[],
        &[Desired::new(
            "Paused",
            true,
            "PauseAnnotation",
            format!("Reconciliation is paused by the annotation {PAUSE_ANNOTATION}=\"true\": nothing is created, changed or deleted."),
        )],
        object.meta().generation,
        Timestamp::now(),
    ));
    write_status(ctx, object, &old, &next).await?;
    Ok(Action::await_change())
}

/// Requeue after an error: capped exponential backoff with jitter, per object.
pub fn error_policy<K: ManagedObject>(object: Arc<K>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let uid = object.uid().unwrap_or_default();
    let failures = ctx.failures.failed(&uid);
    let delay = crate::backoff::after_failures(failures, ctx.config.fast_poll, ctx.config.max_backoff);
    tracing::warn!(kind = K::KIND, namespace = %object.namespace().unwrap_or_default(), object_name = %object.name_any(), error = %error, class = error.metric_label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_taken_at_most_once_a_pass() {
        let taken = vec!["dns"];
        assert_eq!(next_step(&["dns", "server"], &taken), Some("server"));
        assert_eq!(next_step(&["dns"], &taken), None);
        assert_eq!(next_step(&["server", "dns"], &[]), Some("server"));
    }
}
