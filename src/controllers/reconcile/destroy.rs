//! An object's last books: the closing row of its usage timeline and its destroy event,
//! committed together exactly once, then its in-memory state forgotten.

use chrono::Utc;
use kube::runtime::controller::Action;
use serde_json::Value;

use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::server::{self, Owner};
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::{QueryContext, usage};

/// What a destroy event says beyond the object's identity.
pub struct Destroyed {
    pub kind: AuditKind,
    /// The owner the closing usage row and the event bill. `None`: none is known (a server the
    /// sweeper removes whose object left no owner behind); a closing row then bills the owner
    /// of the start it closes.
    pub billed_owner: Option<String>,
    /// The region the object's server ran in.
    pub region: Option<String>,
    pub cloud_ids: Value,
    pub details: Value,
}

/// Writes the closing `stop` row of the object's timeline (if it still runs) and then its
/// destroy event, in one transaction, exactly once: the event key is per UID, so whoever
/// closes the books (the finalizer or the sweeper) writes the only destroy event, and a
/// retry after a lost commit finds the timeline closed and the event recorded.
pub async fn record_destroy(ctx: &Context, owner: &Owner, destroyed: Destroyed) -> Result<(), ReconcileError> {
    let closing = server::closing_transition(ctx, owner, destroyed.billed_owner.as_deref()).await?;
    let event = NewAuditEvent {
        event_key: format!("{}/{}", destroyed.kind.as_str(), owner.uid),
        kind: destroyed.kind,
        resource: owner.resource_ref(),
        owners: destroyed.billed_owner.into_iter().collect(),
        region: destroyed.region,
        cloud_ids: destroyed.cloud_ids,
        details: destroyed.details,
        occurred_at: Utc::now(),
    };
    // The last usage row and the destroy event commit together, the row first.
    let mut tx = ctx.clients.db.begin().await.during("starting the destroy transaction")?;
    if let Some(row) = &closing {
        usage::record(&mut *tx, row).await?;
    }
    let appended = audit::append(&mut *tx, &event).await?;
    tx.commit().await.during("committing the destroy event")?;
    ctx.audit_committed(&appended);
    ctx.telemetry.metrics.count_step(owner.kind, "destroyed");
    tracing::info!(event = destroyed.kind.as_str(), "destroyed; audit event committed");
    Ok(())
}

/// Commits the object's destroy event together with the closing `stop` row of its timeline
/// (see [`record_destroy`]) and forgets the object's in-memory state. The finalizer may go
/// only after this returns `Ok`.
pub async fn commit_destroy(ctx: &Context, owner: &Owner, destroyed: Destroyed) -> Result<Action, ReconcileError> {
    record_destroy(ctx, owner, destroyed).await?;
    ctx.shared.fleet.done_waiting(&owner.uid);
    ctx.power.forget(&owner.uid);
    ctx.failures.succeeded(&owner.uid);
    Ok(Action::await_change())
}
