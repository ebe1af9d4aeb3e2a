//! The VirtualKey on the reconcile skeleton: what it observes, decides, does and reports in a
//! pass, and its revocation when it goes.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::api::virtual_key::{VirtualKey, VirtualKeyStatus};
use crate::store::QueryContext;
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::keys;

use super::decide::*;
use super::plan::{self, Observed, Step};
use crate::controllers::config::ControllerConfig;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::lifecycle::{self, ManagedObject, Plan, Stall};
use crate::controllers::server::Owner;

impl ManagedObject for VirtualKey {
    type Status = VirtualKeyStatus;
    type Observed = Observed;
    type Step = Step;
    const KIND: &'static str = KIND;
    const FINALIZER: &'static str = FINALIZER;
    /// A key's budget and expiry are kept while it exists: a paused key could spend past its
    /// budget unblocked. Its status says the annotation has no effect.
    const PAUSABLE: bool = false;
    lifecycle::status_access!(VirtualKeyStatus);

    fn phase_name(&self) -> String {
        phase_name(self)
    }

    async fn observe(&self, ctx: &Context, owner: &Owner) -> Result<Observed, ReconcileError> {
        super::observe::observe(ctx, self, &owner.uid).await
    }

    fn decide(
        &self,
        _status: &VirtualKeyStatus,
        observed: &Observed,
        config: &ControllerConfig,
        _now: Instant,
    ) -> Plan<Step> {
        plan::decide(self, observed, config.resync)
    }

    async fn act(
        &self,
        ctx: &Context,
        owner: &Owner,
        _status: &mut VirtualKeyStatus,
        step: &Step,
    ) -> Result<(), ReconcileError> {
        super::act::act(ctx, self, &owner.uid, step).await
    }

    fn describe(
        &self,
        status: &VirtualKeyStatus,
        observed: &Observed,
        stalled: Option<Stall>,
        now: Timestamp,
    ) -> VirtualKeyStatus {
        plan::describe(self, status, observed, stalled, now)
    }

    /// A Secret someone else holds under the name the spec asks for: looked at again each
    /// resync (it may go), not retried in a loop.
    fn stall(step: &Step, error: &ReconcileError) -> Option<Stall> {
        match (step, error) {
            (Step::EnsureKey { .. }, ReconcileError::InvalidSpec(why)) => Some((SECRET_NAME_TAKEN, why.clone())),
            _ => lifecycle::stall_reason(error),
        }
    }

    async fn cleanup(vk: Arc<VirtualKey>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
        revoke(vk, &ctx).await
    }
}

/// Delete: the Redis entry goes first (the key stops working), then the row is revoked and
/// the revoke event committed in one transaction; only then is the finalizer released.
async fn revoke(vk: Arc<VirtualKey>, ctx: &Context) -> Result<Action, ReconcileError> {
    let rt = ctx.key_runtime()?;
    let uid = vk.uid().ok_or(ReconcileError::NotStored("uid"))?;
    // Keys still in a rotation's grace period go with it.
    for retiring in keys::retiring(&ctx.clients.db, &uid).await? {
        rt.cache.remove(&[hex::encode(&retiring.key_sha256)]).await?;
        keys::mark_unpublished(&ctx.clients.db, &retiring.key_id).await?;
    }
    let Some(live) = keys::live_for_resource(&ctx.clients.db, &uid).await? else {
        return Ok(Action::await_change());
    };
    rt.cache.remove(&[hex::encode(&live.key_sha256)]).await?;
    let now = Utc::now();
    let mut tx = ctx.clients.db.begin().await.during("starting a revoke")?;
    keys::revoke(&mut *tx, &live.key_id, now).await?;
    keys::mark_unpublished(&mut *tx, &live.key_id).await?;
    let event = NewAuditEvent {
        event_key: format!("{}/{}", AuditKind::VirtualKeyRevoked.as_str(), uid),
        kind: AuditKind::VirtualKeyRevoked,
        resource: resource_ref(&vk, &uid),
        owners: vec![live.owner.clone()],
        region: None,
        cloud_ids: json!({"keyId": live.key_id}),
        details: json!({"keyId": live.key_id, "prefix": live.prefix, "reason": "deleted"}),
        occurred_at: now,
    };
    let appended = audit::append(&mut *tx, &event).await?;
    tx.commit().await.during("committing a revoke")?;
    ctx.audit_committed(&appended);
    rt.with(|m| m.remove(&uid));
    rt.secrets.forget(&uid);
    ctx.telemetry.metrics.count_step(KIND, "revoke");
    ctx.event(&*vk, false, "Revoked", "Revoke", format!("Key {} revoked and removed from the proxy", live.key_id))
        .await;
    Ok(Action::await_change())
}
