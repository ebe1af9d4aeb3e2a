//! A kind's controller, built and run the same way for all three kinds: its watch (a trimmed
//! cache; only [`trigger_hash`](super::trigger::trigger_hash) changes start a reconcile), the
//! objects the fleet view wakes (server-backed kinds only ever get any), its place among the
//! caches the observer reads, and its run on the reconcile skeleton until the stop signal
//! (then no new reconcile starts and in-flight ones finish).

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::Controller;
use kube::runtime::reflector::ObjectRef;

use crate::controllers::context::Context;
use crate::controllers::reconcile::lifecycle::{self, ManagedObject};
use crate::controllers::reconcile::trim;
use crate::controllers::watch::{controller_config, scoped_api, watcher_config};

/// The controller of `K` in this instance's scope, before it runs (a kind may add watches).
pub fn controller<K: ManagedObject>(ctx: &Context) -> Controller<K> {
    // Objects a fleet list shows their awaited change to come back at once, not at a poll.
    let woken = ctx.shared.fleet.wakes.subscribe(K::KIND).map(|o| ObjectRef::<K>::new(&o.name).within(&o.namespace));
    let controller = trim::controller(scoped_api::<K>(ctx), watcher_config(&ctx.config).any_semantic())
        .with_config(controller_config(&ctx.config))
        .reconcile_on(woken);
    ctx.shared.observer.watch(K::KIND, controller.store(), K::phase_name);
    controller
}

/// Runs `controller` on [`lifecycle::reconcile`] until `stop` turns true; returns once the
/// in-flight reconciles finished.
pub async fn run_until_stopped<K: ManagedObject>(
    controller: Controller<K>,
    ctx: &Arc<Context>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = stop;
    controller
        .graceful_shutdown_on(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .run(lifecycle::reconcile::<K>, lifecycle::error_policy::<K>, Arc::clone(ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(kind = K::KIND, error = %e, "controller event");
            }
        })
        .await;
}
