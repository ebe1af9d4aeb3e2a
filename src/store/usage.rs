//! The usage timeline: start/stop transitions of servers, recorded exactly once each.
//!
//! The transition key (e.g. `<uid>/start/<generation>`) makes a retried write a no-op, so a
//! reconcile that crashes after recording and runs again cannot bill a start twice.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::PgPool;

use super::audit::ResourceRef;
use super::{QueryContext, StoreError};

/// Which way the server went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The server started running.
    Start,
    /// The server stopped.
    Stop,
}

impl Transition {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::Stop => "stop",
        }
    }
}

/// One transition to record.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageTransition {
    /// Unique per logical transition.
    pub transition_key: String,
    /// The object whose server changed state.
    pub resource: ResourceRef,
    /// Billing owner at the time.
    pub owner: String,
    /// Region (`us`, `eu`).
    pub region: String,
    /// Hetzner server type.
    pub server_type: String,
    /// Stripe price cell, e.g. `agent-us-cpx22`.
    pub price_cell: String,
    /// Start or stop.
    pub transition: Transition,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// Records `t`; returns `false` when a transition with the same key was recorded before.
/// `executor` is a pool, a connection or a caller's transaction.
pub async fn record(executor: impl sqlx::PgExecutor<'_>, t: &UsageTransition) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        r#"INSERT INTO usage_timeline (transition_key, resource_kind, resource_namespace, resource_name, resource_uid,
                                       owner, region, server_type, price_cell, transition, occurred_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (transition_key) DO NOTHING"#,
        t.transition_key,
        t.resource.kind,
        t.resource.namespace,
        t.resource.name,
        t.resource.uid,
        t.owner,
        t.region,
        t.server_type,
        t.price_cell,
        t.transition.as_str(),
        t.occurred_at.trunc_subsecs(6),
    )
    .execute(executor)
    .await
    .during("recording a usage transition")?;
    Ok(result.rows_affected() == 1)
}

/// A recorded transition as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTransition {
    /// Unique key.
    pub transition_key: String,
    /// `start` or `stop`.
    pub transition: String,
    /// Owner at the time.
    pub owner: String,
    /// Region (`us`, `eu`).
    pub region: String,
    /// Hetzner server type billed.
    pub server_type: String,
    /// Price cell.
    pub price_cell: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// Every transition of the object with `uid`, in the order they happened.
pub async fn transitions_for_resource(pool: &PgPool, uid: &str) -> Result<Vec<RecordedTransition>, StoreError> {
    sqlx::query_as!(
        RecordedTransition,
        r#"SELECT transition_key, transition, owner, region, server_type, price_cell, occurred_at
           FROM usage_timeline WHERE resource_uid = $1 ORDER BY occurred_at, id"#,
        uid
    )
    .fetch_all(pool)
    .await
    .during("reading usage transitions")
}
