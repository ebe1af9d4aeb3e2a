//! The VirtualKey controller's loop: its watches (VirtualKeys and the Secrets they own), the
//! spend refresher beside it, and the error policy.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::Instrument;

use crate::api::virtual_key::VirtualKey;

use super::apply::*;
use super::decide::*;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::task::AbortOnDrop;
use crate::controllers::virtual_key::spend_refresh;

pub async fn reconcile(vk: Arc<VirtualKey>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    // `object_name`, not `name`: JSON log lines give the span's own name under `name`.
    let span = tracing::info_span!("reconcile", kind = KIND, namespace = %vk.namespace().unwrap_or_default(), object_name = %vk.name_any());
    async move {
        ctx.shared.observer.started(vk.as_ref());
        let started = std::time::Instant::now();
        let api: Api<VirtualKey> = Api::namespaced(ctx.clients.kube.clone(), &vk.namespace().unwrap_or_default());
        let result = finalizer(&api, FINALIZER, vk, |event| async {
            match event {
                Finalizer::Apply(vk) => apply(vk, &ctx).await,
                Finalizer::Cleanup(vk) => cleanup(vk, &ctx).await,
            }
        })
        .await;
        ctx.telemetry.metrics.count_reconcile(KIND, if result.is_ok() { "ok" } else { "error" }, started.elapsed());
        crate::controllers::reconcile::lifecycle::log_reconcile(KIND, result.is_ok(), started);
        result.map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => ReconcileError::Finalizer(other.to_string()),
        })
    }
    .instrument(span)
    .await
}

/// Requeue after an error: capped exponential backoff with jitter, per object.
pub fn error_policy(vk: Arc<VirtualKey>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures.failed(&vk.uid().unwrap_or_default());
    let delay = crate::backoff::after_failures(failures, ctx.config.fast_poll, ctx.config.max_backoff);
    tracing::warn!(kind = KIND, namespace = %vk.namespace().unwrap_or_default(), object_name = %vk.name_any(), error = %error, class = error.metric_label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the VirtualKey controller (and its refresher) until `stop` turns true. Does nothing
/// without a Redis connection. The first refresh completes before any reconcile, so a
/// restarted operator never judges a budget without the month's spend.
pub async fn run(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    let Some(rt) = ctx.virtual_keys.as_ref() else {
        tracing::info!("no REDIS_URL: the VirtualKey controller does not run");
        return;
    };
    if !crate::controllers::task::retry_until_stopped(&stop, ctx.config.fast_poll, "read spend", || async {
        spend_refresh::refresh_spend(&ctx).await.map(|_| ())
    })
    .await
    {
        return;
    }
    let Some(refreshed) = rt.refreshed_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
        tracing::warn!("the VirtualKey controller runs once per context");
        return;
    };
    let mut refresher = AbortOnDrop::spawn(spend_refresh::refresh_loop(Arc::clone(&ctx), stop.clone()));
    let vks: Api<VirtualKey> = crate::controllers::watch::scoped_api(&ctx);
    let label = format!("{}={}", MANAGED_BY_LABEL.0, MANAGED_BY_LABEL.1);
    let mut shutdown = stop.clone();
    let mut controller = crate::controllers::reconcile::trim::controller(
        vks,
        crate::controllers::watch::watcher_config(&ctx.config).any_semantic(),
    )
    .with_config(crate::controllers::watch::controller_config(&ctx.config));
    ctx.shared.observer.watch(KIND, controller.store(), phase_name);
    let watching = Arc::clone(&ctx);
    let observe = move |event: &watcher::Event<kube::api::PartialObjectMeta<Secret>>| {
        if let Some(rt) = watching.virtual_keys.as_ref() {
            rt.secrets.observe(event);
        }
    };
    let secrets_config = watcher::Config::default()
        .labels(&label)
        .page_size(crate::controllers::watch::WATCH_LIST_PAGE)
        .timeout(crate::controllers::watch::WATCH_TIMEOUT_SECS);
    for secrets in secret_apis(&ctx) {
        controller = crate::controllers::reconcile::trim::owns_metadata(
            controller,
            secrets,
            secrets_config.clone(),
            observe.clone(),
        );
    }
    controller
        .reconcile_all_on(refreshed)
        .graceful_shutdown_on(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "virtualkey controller event");
            }
        })
        .await;
    refresher.join().await;
}

/// Where the controller watches its Secrets: one watch per served namespace, so the operator
/// needs Secret access there only; without a list, the watched scope (every namespace, or
/// `--watch-namespace`). A relist in one namespace makes every key's Secret be read again once
/// (SecretVersions forgets all it saw): more GETs after a watch restart, never a stale answer.
pub(super) fn secret_apis(ctx: &Context) -> Vec<Api<kube::api::PartialObjectMeta<Secret>>> {
    match &ctx.config.virtual_key_namespaces {
        Some(list) => list.iter().map(|ns| Api::namespaced(ctx.clients.kube.clone(), ns)).collect(),
        None => vec![crate::controllers::watch::scoped_api(ctx)],
    }
}
