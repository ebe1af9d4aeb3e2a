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

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use tracing::Instrument;

use crate::controllers::context::Context;
use crate::controllers::reconcile::conditions::{self, Desired};
pub use crate::controllers::reconcile::destroy::{Destroyed, commit_destroy, record_destroy};
use crate::controllers::reconcile::error::ReconcileError;
pub use crate::controllers::reconcile::kind::{FINALIZER, ManagedObject, Plan, UsageSeen, Wait};
pub(crate) use crate::controllers::reconcile::kind::{managed_kind, status_access};
pub use crate::controllers::reconcile::outcome::{
    SELF_CLEARING, Stall, phase, retry_reason, set_ready_reason, stall_reason, summary_conditions,
};
use crate::controllers::reconcile::pass::pass;
pub use crate::controllers::reconcile::status_write::{latest_status, write_status};

/// `"true"` stops reconciling the object (nothing is created, changed or deleted for it).
pub const PAUSE_ANNOTATION: &str = "crabglamp.com/paused";

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
