//! Runs every controller on one context and stops them gracefully: on the stop signal no new
//! reconcile starts, in-flight ones finish, and [`run`] returns.

use std::sync::Arc;

use crate::api::{Agent, PlainVM};
use crate::controllers::anchor;
use crate::controllers::context::Context;
use crate::controllers::fleet::{refresher, sweeper};
use crate::controllers::reconcile::lifecycle::ManagedObject;
use crate::controllers::reconcile::runner;
use crate::controllers::server::legacy;
use crate::controllers::task::{AbortOnDrop, retry_until_stopped};

/// Runs every controller until `stop` turns true; returns once in-flight reconciles finished.
pub async fn run(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    // VirtualKeys need neither cloud: they do not wait for the fleet firewall.
    let mut virtual_keys =
        AbortOnDrop::spawn(crate::controllers::virtual_key::run::run(Arc::clone(&ctx), stop.clone()));
    // The audit anchor follows every append, whichever controller made it.
    let mut anchor = AbortOnDrop::spawn(anchor::run(Arc::clone(&ctx), stop.clone()));
    // The fleet firewall must exist before any Agent server is created behind it.
    let ready = retry_until_stopped(&stop, ctx.config.fast_poll, "prepare the fleet firewall", || async {
        refresher::ensure_fleet_firewall(&ctx).await.map(|id| tracing::info!(firewall = id, "fleet firewall ready"))
    })
    .await;
    if !ready {
        return;
    }
    // Resources marked before installations had an identity become this installation's before
    // any reconcile looks for them by the new marks (it would otherwise create them again).
    let remarked =
        retry_until_stopped(&stop, ctx.config.fast_poll, "re-mark resources with old marks", || legacy::remark(&ctx))
            .await;
    if !remarked {
        return;
    }
    // Children are aborted if this future is dropped (a crash of the task running it), so a
    // stopped operator never leaves a refresher or sweeper behind.
    let mut refresher = AbortOnDrop::spawn(refresher::run(Arc::clone(&ctx), stop.clone()));

    let mut sweeper = AbortOnDrop::spawn(sweeper::run(Arc::clone(&ctx), stop.clone()));
    // Both kinds run side by side on the same context (one fleet view, one refresher).
    futures::join!(run_controller::<Agent>(&ctx, stop.clone()), run_controller::<PlainVM>(&ctx, stop.clone()));
    refresher.join().await;
    sweeper.join().await;
    virtual_keys.join().await;
    anchor.join().await;
    // Appends of the reconciles that finished after the stop are anchored before exit.
    anchor::publish_and_count(&ctx).await;
    tracing::info!("controllers stopped");
}

/// One kind's controller until `stop` turns true (in-flight reconciles finish).
async fn run_controller<K: ManagedObject>(ctx: &Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    runner::run_until_stopped(runner::controller::<K>(ctx), ctx, stop).await;
}
