//! Keeps the audit anchor (see [`crate::audit_anchor`]) up with the database: a publish after
//! every committed append (reconcilers nudge), on every resync (catches up after a failed
//! publish or an append made by another process), and once more on shutdown.
//!
//! The event is committed in PostgreSQL before any publish, so a failed publish never loses an
//! event: the anchor lags until the next attempt succeeds. A lag of a few events is normal;
//! an anchor ahead of the database, or one whose event the database holds with another hash,
//! is tampering, and the publisher then refuses to move it (a person must look).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::audit_anchor::{self, Location, Published};

use super::{Context, ControllerConfig};

/// Where the anchor goes and the wake-up of its publisher.
pub struct AnchorPublisher {
    /// The ConfigMap.
    pub location: Location,
    api: Api<ConfigMap>,
    wake: Notify,
}

impl AnchorPublisher {
    pub fn new(client: &Client, config: &ControllerConfig) -> Self {
        let location =
            Location::resolve(client, config.anchor_namespace.as_deref(), Some(config.anchor_configmap.as_str()));
        AnchorPublisher { api: location.api(client.clone()), location, wake: Notify::new() }
    }

    /// An append committed: publish soon. Never waits (the publish runs on its own task).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }
}

/// One publish, counted and logged; whether it succeeded.
pub async fn publish_and_count(ctx: &Context) -> bool {
    let publisher = &ctx.anchor;
    match audit_anchor::publish(&publisher.api, &publisher.location, &ctx.db, &ctx.sealing).await {
        Ok(Published::Unchanged(seq)) => {
            ctx.metrics.count_anchor_publish("unchanged");
            ctx.metrics.set_anchored_seq(seq);
            true
        }
        Ok(Published::Moved { from, to }) => {
            ctx.metrics.count_anchor_publish("published");
            ctx.metrics.set_anchored_seq(to);
            tracing::debug!(from, to, anchor = %publisher.location, "audit anchor moved");
            true
        }
        Err(e) => {
            let outcome = e.metric_label();
            ctx.metrics.count_anchor_publish(outcome);
            let error = format!("{:#}", anyhow::Error::from(e));
            if outcome == "refused" {
                tracing::error!(anchor = %publisher.location, %error, "audit anchor not moved: possible tampering");
            } else {
                tracing::warn!(anchor = %publisher.location, %error, "audit anchor publish failed; retrying");
            }
            false
        }
    }
}

/// Publishes until `stop` turns true: on each nudge, every resync, and sooner after a failure.
pub async fn run(ctx: Arc<Context>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut failures = 0_u32;
    while !*stop.borrow() {
        failures = if publish_and_count(&ctx).await { 0 } else { failures.saturating_add(1) };
        let wait = match failures {
            0 => ctx.config.resync,
            n => super::backoff_delay(n, ctx.config.fast_poll, ctx.config.resync),
        };
        tokio::select! {
            _ = ctx.anchor.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
}
