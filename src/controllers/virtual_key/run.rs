//! The VirtualKey controller: the kind on the reconcile skeleton (pause, finalizer, status
//! write, error policy are [`lifecycle`]'s), its watches (VirtualKeys and the Secrets they own)
//! and the spend refresher beside it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::watcher;

use crate::api::virtual_key::VirtualKey;

use super::decide::*;
use crate::controllers::context::Context;
use crate::controllers::reconcile::runner;
use crate::controllers::task::AbortOnDrop;
use crate::controllers::virtual_key::spend_refresh;

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
    let label = format!("{}={}", MANAGED_BY_LABEL.0, MANAGED_BY_LABEL.1);
    let mut controller = runner::controller::<VirtualKey>(&ctx);
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
    // Each spend refresh judges every key on the new spend.
    runner::run_until_stopped(controller.reconcile_all_on(refreshed), &ctx, stop.clone()).await;
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
