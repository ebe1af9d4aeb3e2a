//! One VirtualKey reconcile: the key, its terms in Redis, its spend judged against its budget,
//! its status; and its revocation when it goes.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::api::virtual_key::{Spend, VirtualKey, VirtualKeyStatus};
use crate::cache::AuthEntry;
use crate::store::QueryContext;
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::keys::VirtualKeyRecord;
use crate::store::keys::{self, KeyTerms};

use super::act::*;
use super::decide::*;
use super::runtime::*;
use crate::controllers::context::Context;
use crate::controllers::reconcile::conditions::{self, Desired};
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::lifecycle::{self, write_status};
use crate::controllers::virtual_key::spend_refresh;

pub(super) async fn apply(vk: Arc<VirtualKey>, ctx: &Context) -> Result<Action, ReconcileError> {
    if !serves(ctx.config.virtual_key_namespaces.as_deref(), &vk.namespace().unwrap_or_default()) {
        return not_served(&vk, ctx).await;
    }
    let rt = ctx.key_runtime()?;
    let uid = vk.uid().ok_or(ReconcileError::NotStored("uid"))?;
    let t = terms(&vk)?;
    let name = secret_name(&vk);

    // Observe: the live row, and the Secret only if it changed since its key was checked.
    let live = keys::live_for_resource(&ctx.clients.db, &uid).await?;
    let settled =
        live.as_ref().is_some_and(|l| rt.secrets.unchanged(&uid, &name, &l.key_id, vk.spec.rotation_token.as_deref()));
    let Located { mut record, secret_name: name, refused } = match live {
        Some(record) if settled => Located { record, secret_name: name, refused: None },
        live => ensure_key(ctx, rt, &vk, &uid, &name, live, &t).await?,
    };

    // Terms follow the spec; an owner change is one transfer event per generation.
    if !same_terms(&record, &t) {
        record = follow_spec_terms(ctx, &vk, &uid, &record, &t).await?;
    }

    // Spend: from the refresher's snapshot; a key it does not hold yet (new, or not yet of
    // this instance's scope) is claimed and refreshed on its own, restore included.
    let now = Utc::now();
    let this_period = period(now);
    let hash_hex = hex::encode(&record.key_sha256);
    let view = match rt.spend(&uid).filter(|v| v.period == this_period && v.key_sha256 == hash_hex) {
        Some(v) => v,
        None => {
            keys::claim(&ctx.clients.db, &record.key_id, &spend_refresh::scope(ctx)).await?;
            let key = keys::LiveKey {
                key_id: record.key_id.clone(),
                resource_uid: uid.clone(),
                key_sha256: record.key_sha256.clone(),
            };
            spend_refresh::refresh_one(ctx, key).await?
        }
    };
    let budget_micros = usd_to_micros(&t.budget_monthly_usd).unwrap_or(0);
    let block = block_reason(now, t.expires_at, view.micros, budget_micros);

    // Publish when Redis lacks the entry or holds another one (a flush heals here).
    let desired = serde_json::to_string(&auth_entry(&record.key_id, &uid, &t, block))
        .map_err(|_| ReconcileError::Decode("an auth entry"))?;
    if view.auth.as_deref() != Some(desired.as_str()) {
        publish_entry(ctx, rt, &vk, (&uid, &record.key_id, &hash_hex), &view, desired, block).await?;
    }

    // Keys rotated away with a grace period: the same terms and block as the live key until it
    // is over, then removed from Redis.
    let retiring = keys::retiring(&ctx.clients.db, &uid).await?;
    follow_terms_in_grace(ctx, rt, &uid, &t, block, &retiring, now).await?;
    let next_retirement = retire_past_grace(ctx, rt, &vk, retiring, now).await?;

    // Status.
    let old = lifecycle::latest_status(ctx, vk.as_ref());
    let spend_text = format!("{} of {} USD this month", micros_to_usd(view.micros), micros_to_usd(budget_micros));
    let mut desired_conditions = key_conditions(&record.key_id, &name, block, &view, &spend_text, refused);
    if lifecycle::paused(vk.as_ref()) {
        desired_conditions.push(not_pausable());
    }
    let next = VirtualKeyStatus {
        observed_generation: vk.metadata.generation,
        key_id: Some(record.key_id.clone()),
        prefix: Some(record.prefix.clone()),
        secret_name: Some(name),
        spend: Some(Spend { period: this_period, usd: micros_to_usd(view.micros) }),
        blocked: Some(block.is_some()),
        rotation_token: vk.spec.rotation_token.clone(),
        conditions: conditions::merge(&old.conditions, &desired_conditions, vk.metadata.generation, Timestamp::now()),
    };
    write_status(ctx, vk.as_ref(), &old, &next).await?;
    ctx.failures.succeeded(&uid);

    // Look again at the expiry time itself, not a resync later; the refresher's trigger
    // covers spend, the fallback covers a refresher that keeps failing.
    let mut after = ctx.config.resync.saturating_mul(2);
    for at in [t.expires_at, next_retirement].into_iter().flatten().filter(|e| *e > now) {
        let until = (at - now).to_std().unwrap_or_default() + Duration::from_millis(50);
        after = after.min(until);
    }
    Ok(Action::requeue(after))
}

/// Writes the spec's terms to the key's row, with one transfer event per generation when the
/// owner changed (both in one transaction); returns the row as it now is.
async fn follow_spec_terms(
    ctx: &Context,
    vk: &VirtualKey,
    uid: &str,
    record: &VirtualKeyRecord,
    t: &KeyTerms,
) -> Result<VirtualKeyRecord, ReconcileError> {
    let mut tx = ctx.clients.db.begin().await.during("starting a terms update")?;
    keys::update_terms(&mut *tx, &record.key_id, t).await?;
    let transfer = (record.owner != t.owner).then(|| record.owner.clone());
    let mut appended = None;
    if let Some(from) = &transfer {
        let event = NewAuditEvent {
            event_key: format!(
                "{}/{}/{}",
                AuditKind::VirtualKeyTransferred.as_str(),
                uid,
                vk.metadata.generation.unwrap_or(0)
            ),
            kind: AuditKind::VirtualKeyTransferred,
            resource: resource_ref(vk, uid),
            owners: vec![from.clone(), t.owner.clone()],
            region: None,
            cloud_ids: json!({"keyId": record.key_id}),
            details: json!({"from": from, "to": t.owner, "generation": vk.metadata.generation}),
            occurred_at: Utc::now(),
        };
        appended = Some(audit::append(&mut *tx, &event).await?);
    }
    tx.commit().await.during("committing a terms update")?;
    if let Some(appended) = &appended {
        ctx.audit_committed(appended);
    }
    if let Some(from) = transfer {
        ctx.event(vk, false, "Transferred", "Transfer", format!("Owner changed from {from} to {}", t.owner)).await;
    }
    keys::live_for_resource(&ctx.clients.db, uid).await?.ok_or(ReconcileError::Decode("the live key"))
}

/// Publishes the key's auth entry (Redis lacks it or holds another one: a flush heals here),
/// and says so in an Event when the key's block changed.
async fn publish_entry(
    ctx: &Context,
    rt: &KeyRuntime,
    vk: &VirtualKey,
    (uid, key_id, hash_hex): (&str, &str, &str),
    view: &SpendView,
    desired: String,
    block: Option<BlockReason>,
) -> Result<(), ReconcileError> {
    let was_blocked = view.auth.as_deref().and_then(|a| serde_json::from_str::<AuthEntry>(a).ok()).map(|a| a.blocked);
    rt.cache.publish(hash_hex, &desired).await?;
    ctx.telemetry.metrics.count_step(KIND, "publish");
    rt.with(|m| {
        m.insert(uid.to_owned(), SpendView { auth: Some(desired.clone()), ..view.clone() });
    });
    match (was_blocked, block) {
        (Some(false) | None, Some(r)) => {
            ctx.event(vk, true, r.as_str(), "Block", format!("The proxy now refuses key {}: {}", key_id, r.as_str()))
                .await;
        }
        (Some(true), None) => {
            ctx.event(vk, false, "Unblocked", "Unblock", format!("The proxy accepts key {} again", key_id)).await;
        }
        _ => {}
    }
    Ok(())
}

/// Removes from Redis the keys whose rotation grace is over; returns when the next grace ends.
async fn retire_past_grace(
    ctx: &Context,
    rt: &KeyRuntime,
    vk: &VirtualKey,
    retiring: Vec<keys::RetiringKey>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ReconcileError> {
    let mut next_retirement: Option<DateTime<Utc>> = None;
    for retiring in retiring {
        if retiring.revoked_at <= now {
            rt.cache.remove(&[hex::encode(&retiring.key_sha256)]).await?;
            keys::mark_unpublished(&ctx.clients.db, &retiring.key_id).await?;
            ctx.event(
                vk,
                false,
                "Retired",
                "Revoke",
                format!("Previous key {} removed from the proxy", retiring.key_id),
            )
            .await;
        } else {
            next_retirement = Some(next_retirement.map_or(retiring.revoked_at, |t| t.min(retiring.revoked_at)));
        }
    }
    Ok(next_retirement)
}

/// Makes the auth entries of the keys in their rotation grace carry the live key's terms and
/// block: one `MGET` of them, and a write only of those Redis lost or holds otherwise (an idle
/// resync writes nothing; a key rotated without grace costs no round trip at all).
pub(super) async fn follow_terms_in_grace(
    ctx: &Context,
    rt: &KeyRuntime,
    uid: &str,
    t: &KeyTerms,
    block: Option<BlockReason>,
    retiring: &[keys::RetiringKey],
    now: DateTime<Utc>,
) -> Result<(), ReconcileError> {
    let desired = grace_entries(uid, t, block, retiring, now)?;
    if desired.is_empty() {
        return Ok(());
    }
    let hashes: Vec<String> = desired.iter().map(|(hash, _)| hash.clone()).collect();
    let held = rt.cache.read_auth(&hashes).await?;
    let stale = entries_to_publish(desired, &held);
    if !stale.is_empty() {
        rt.cache.publish_many(&stale).await?;
        ctx.telemetry.metrics.count_step(KIND, "publish");
    }
    Ok(())
}

/// A VirtualKey outside the served namespaces: no Secret is read or written there (the
/// operator has no right to), and its status says why it gets no key.
pub(super) async fn not_served(vk: &VirtualKey, ctx: &Context) -> Result<Action, ReconcileError> {
    let old = vk.status.clone().unwrap_or_default();
    let served = ctx.config.virtual_key_namespaces.as_deref().unwrap_or_default().join(", ");
    let message = format!(
        "VirtualKeys are served only in the namespaces {served} (--virtual-key-namespaces, the chart's \
         virtualKeys.namespaces): no key is issued here"
    );
    // Stalled: nothing changes until the object moves or the operator's list does (kstatus
    // and Argo CD then call it failed, not progressing).
    let desired = [
        Desired::new("Stalled", true, "NamespaceNotServed", message.clone()),
        Desired::new("Ready", false, "NamespaceNotServed", message),
    ];
    let next = VirtualKeyStatus {
        observed_generation: vk.metadata.generation,
        conditions: conditions::merge(&old.conditions, &desired, vk.metadata.generation, Timestamp::now()),
        ..old.clone()
    };
    write_status(ctx, vk, &old, &next).await?;
    Ok(Action::await_change())
}

/// Delete: the Redis entry goes first (the key stops working), then the row is revoked and
/// the revoke event committed in one transaction; only then is the finalizer released.
pub(super) async fn cleanup(vk: Arc<VirtualKey>, ctx: &Context) -> Result<Action, ReconcileError> {
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
