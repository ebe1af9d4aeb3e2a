//! The controllers: one reconciler per kind (Agent, PlainVM), and what they share (the fleet
//! view and its refresher, the reconcile skeleton, the server machinery, the sweeper, the
//! context).
//!
//! [`run`] wires them to a cluster with kube-runtime's `Controller` and stops them gracefully:
//! on the stop signal no new reconcile starts, in-flight ones finish, and it returns.

pub mod agent;
pub mod anchor;
pub mod cloud_init;
pub mod conditions;
pub mod context;
pub mod error;
pub mod events;
pub mod firewall;
pub mod fleet;
pub mod installation;
pub mod legacy;
pub mod lifecycle;
pub mod names;
pub mod observe;
pub mod plain_vm;
pub mod refresher;
pub mod secret_versions;
pub mod server;
pub mod settings;
pub mod spend_refresh;
pub mod status_patch;
pub mod sweeper;
pub mod trim;
pub mod virtual_key;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher;

use crate::api::{Agent, PlainVM};

use lifecycle::ManagedObject;

pub use context::{Context, ControllerConfig, ControllerMetrics};
pub use error::ReconcileError;

/// The label that assigns an object to one of several operator deployments (`--shard`).
pub const SHARD_LABEL: &str = "crabglamp.com/shard";

/// Capped exponential backoff with full jitter: `base * 2^(failures-1)`, at most `cap`.
pub fn backoff_delay(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let ceiling = exp.min(cap).max(base);
    // Jitter in [ceiling/2, ceiling]: retries of many objects spread out instead of bunching.
    let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
    ceiling.mul_f64(jitter)
}

/// The label selector of the objects this instance owns: its shard's, or without `--shard`
/// only those without a shard label, so a sharded and an unsharded deployment never both
/// reconcile one object.
pub fn shard_selector(config: &ControllerConfig) -> String {
    match &config.shard {
        Some(shard) => format!("{SHARD_LABEL}={shard}"),
        None => format!("!{SHARD_LABEL}"),
    }
}

fn watcher_config(config: &ControllerConfig) -> watcher::Config {
    watcher::Config::default().labels(&shard_selector(config)).page_size(WATCH_LIST_PAGE).timeout(WATCH_TIMEOUT_SECS)
}

/// Seconds after which the API server ends each watch (the watcher opens the next one from
/// where it was). Shorter than kube's 290 so that the client's read timeout
/// ([`crate::operator::KUBE_READ_TIMEOUT`]), which must outlast a quiet watch, catches a
/// half-open connection within about a minute; one more watch request per kind a minute.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// Objects per page of a watcher's (re)list. kube's default is 500; a page of 500 custom
/// objects with their status is held three times while it is read (the body's chunks, their
/// copy, the decoded list) beside the cache it is filling. 100 costs four more API-server
/// requests per 500 objects, once per relist, and never a cloud request.
pub const WATCH_LIST_PAGE: u32 = 100;

/// A kind's API in the watched scope: one namespace with `--watch-namespace`, else all.
pub fn scoped_api<K>(ctx: &Context) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &ctx.config.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// What every kind's controller shares: bounded concurrency (see [`ControllerConfig::concurrency`]).
fn controller_config(config: &ControllerConfig) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(config.concurrency)
}

/// Runs every controller until `stop` turns true; returns once in-flight reconciles finished.
pub async fn run(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    // VirtualKeys need neither cloud: they do not wait for the fleet firewall.
    let mut virtual_keys = AbortOnDrop::spawn(virtual_key::run(Arc::clone(&ctx), stop.clone()));
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
    let mut shutdown = stop;
    let controller = trim::controller(scoped_api::<K>(ctx), watcher_config(&ctx.config).any_semantic())
        .with_config(controller_config(&ctx.config));
    ctx.observer.watch(K::KIND, controller.store(), K::phase_name);
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

/// Runs `attempt` until it succeeds (true) or `stop` turns true or its sender is gone (false),
/// waiting `pause` between attempts: a start-up step that must not give up, nor spin.
pub async fn retry_until_stopped<F, Fut, E>(
    stop: &tokio::sync::watch::Receiver<bool>,
    pause: Duration,
    what: &str,
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        if *stop.borrow() {
            return false;
        }
        match attempt().await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, "cannot {what} yet; retrying"),
        }
        let mut s = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = s.changed() => if changed.is_err() { return false },
        }
    }
}

/// A spawned task that is aborted when its handle is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(task))
    }

    /// Waits for the task to end on its own (or to be aborted).
    pub async fn join(&mut self) {
        let _ = (&mut self.0).await;
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for failures in 1..40 {
            let d = backoff_delay(failures, base, cap);
            assert!(d >= base / 2 && d <= cap, "{failures}: {d:?}");
        }
        assert!(backoff_delay(10, base, cap) >= Duration::from_secs(30), "large counts reach the cap range");
        assert!(backoff_delay(1, base, cap) <= base);
    }
}
