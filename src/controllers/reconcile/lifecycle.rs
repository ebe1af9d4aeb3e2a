//! The reconcile skeleton every kind runs on ([`ManagedObject`]): the pause annotation, the
//! finalizer around the kind's pass ([`super::pass`]: observe -> decide -> act, one status
//! write, the requeue) or its cleanup, the reconcile log line and metrics, the status patch
//! (only on change) and the error policy. How an outcome shows (stall or retry, summary
//! conditions, phase) is [`super::outcome`]'s; the destroy transaction (closing usage row and
//! destroy event in one commit) is [`super::destroy`]'s. Both are re-exported here.
//!
//! A kind supplies its observation, its pure decision, its steps and its status through
//! [`ManagedObject`]; the skeleton never knows what a tunnel, a firewall or a key is, never
//! talks to a cloud itself, and never writes `spec`.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

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

use crate::controllers::config::ControllerConfig;
use crate::controllers::context::Context;
use crate::controllers::reconcile::conditions::{self, Desired};
pub use crate::controllers::reconcile::destroy::{Destroyed, commit_destroy, record_destroy};
use crate::controllers::reconcile::error::ReconcileError;
pub use crate::controllers::reconcile::outcome::{
    SELF_CLEARING, Stall, phase, retry_reason, set_ready_reason, stall_reason, summary_conditions,
};
pub use crate::controllers::reconcile::pass::{Plan, UsageSeen, Wait, pass};
use crate::controllers::reconcile::status_patch::status_merge_patch;
use crate::controllers::server::Owner;

/// The finalizer that holds an object until its cloud resources are gone and its destroy event
/// is committed.
pub const FINALIZER: &str = "crabglamp.com/cleanup";
/// `"true"` stops reconciling the object (nothing is created, changed or deleted for it).
pub const PAUSE_ANNOTATION: &str = "crabglamp.com/paused";

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
    /// Everything one decision needs (see [`ManagedObject::observe`]).
    type Observed: Send + Sync;
    /// One idempotent step, carrying the ids it acts on.
    type Step: Clone + Debug + PartialEq + Send + Sync;
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

    /// Whether every shared list this kind decides on has been seen complete (until then,
    /// absence proves nothing); a kind whose list runs on demand asks for it here.
    fn lists_known(_ctx: &Context) -> bool {
        true
    }
    /// Reads everything the decision needs, once per decision: the fleet snapshot, the tails
    /// of the object's audit trail and usage timeline, the kind's own stores.
    fn observe(
        &self,
        ctx: &Context,
        owner: &Owner,
    ) -> impl Future<Output = Result<Self::Observed, ReconcileError>> + Send;
    /// Pure: the status a pass starts from: the object's, with what the observation knows
    /// better than a possibly stale status (an Agent's owner, from the transfer trail). The
    /// status write compares against the object's own, so a correction is written.
    fn working_status(old: &Self::Status, _observed: &Self::Observed) -> Self::Status {
        old.clone()
    }
    /// Pure: the steps to take now, in order, and what to wait for after.
    fn decide(
        &self,
        status: &Self::Status,
        observed: &Self::Observed,
        config: &ControllerConfig,
        now: Instant,
    ) -> Plan<Self::Step>;
    /// One idempotent step; what it learns goes into `status` and the fleet view. It acts on
    /// the ids the step carries and reads no observation again.
    fn act(
        &self,
        ctx: &Context,
        owner: &Owner,
        status: &mut Self::Status,
        step: &Self::Step,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;
    /// Pure: the status that describes what is observed (`stalled`: a permanent error).
    fn describe(
        &self,
        status: &Self::Status,
        observed: &Self::Observed,
        stalled: Option<Stall>,
        now: Timestamp,
    ) -> Self::Status;
    /// What the usage timeline needs of the observation: `None` without a server (and for a
    /// kind that has none).
    fn usage<'a>(&self, _observed: &'a Self::Observed) -> Option<UsageSeen<'a>> {
        None
    }
    /// The owner a usage row written now bills: the one the operator has accepted, never a
    /// new spec owner whose transfer is not recorded yet. `None`: no row until one is.
    fn billed_owner(&self, _status: &Self::Status) -> Option<String> {
        None
    }
    /// A permanent error's reason, or `None` when retrying can help. Kinds may name a step's
    /// refusal more precisely than [`stall_reason`] does.
    fn stall(_step: &Self::Step, error: &ReconcileError) -> Option<Stall> {
        stall_reason(error)
    }
    /// Tears the object's cloud resources down (or orphans them) and commits its destroy event.
    /// Any `Ok` releases the finalizer: return an error while anything is left.
    fn cleanup(object: Arc<Self>, ctx: Arc<Context>) -> impl Future<Output = Result<Action, ReconcileError>> + Send;
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
                Finalizer::Apply(o) => pass(o.as_ref(), &ctx).await,
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
