//! The publisher's task: one publish after each nudge, on every resync, sooner after a failure.

use std::sync::Arc;

use crate::audit_anchor::{self, Published};
use crate::controllers::context::Context;

/// One publish, counted and logged; whether it succeeded.
pub async fn publish_and_count(ctx: &Context) -> bool {
    let publisher = &ctx.shared.anchor;
    match audit_anchor::publish(&publisher.api, &publisher.location, &ctx.clients.db, &ctx.clients.sealing).await {
        Ok(Published::Unchanged(seq)) => {
            ctx.telemetry.metrics.count_anchor_publish("unchanged");
            ctx.telemetry.metrics.set_anchored_seq(seq);
            true
        }
        Ok(Published::Moved { from, to }) => {
            ctx.telemetry.metrics.count_anchor_publish("published");
            ctx.telemetry.metrics.set_anchored_seq(to);
            tracing::debug!(from, to, anchor = %publisher.location, "audit anchor moved");
            true
        }
        Ok(Published::Overtaken { to }) => {
            ctx.telemetry.metrics.count_anchor_publish("overtaken");
            ctx.telemetry.metrics.set_anchored_seq(to);
            tracing::debug!(to, anchor = %publisher.location, "audit anchor moved forward by other writers meanwhile");
            true
        }
        Err(e) => {
            let outcome = e.metric_label();
            ctx.telemetry.metrics.count_anchor_publish(outcome);
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
            n => crate::backoff::after_failures(n, ctx.config.fast_poll, ctx.config.resync),
        };
        tokio::select! {
            _ = ctx.shared.anchor.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
}
