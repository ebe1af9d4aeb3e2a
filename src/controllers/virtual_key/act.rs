//! The VirtualKey's writes: its Secret, its row and audit event, and finding the key a
//! VirtualKey holds (or issuing one).

use std::collections::BTreeMap;

use chrono::Utc;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::virtual_key::VirtualKey;
use crate::store::QueryContext;
use crate::store::audit::{self, AuditKind, NewAuditEvent};
use crate::store::keys::{self, KeyTerms, NewVirtualKey, VirtualKeyRecord};

use super::decide::*;
use super::plan::Step;
use super::runtime::*;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::virtual_key::secret_versions::Checked;
use crate::controllers::virtual_key::spend_refresh;

/// Writes `held` into the Secret `name` (`existing`: its current version, if there is one).
/// `copy_of`: the Secret a key moves out of, whose labels and annotations come along.
pub(super) async fn write_secret(
    ctx: &Context,
    vk: &VirtualKey,
    name: &str,
    existing: Option<&Secret>,
    copy_of: Option<&Secret>,
    held: &SecretKey,
) -> Result<Option<String>, ReconcileError> {
    let ns = vk.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.clients.kube.clone(), &ns);
    let owner = vk.controller_owner_ref(&()).ok_or(ReconcileError::NotStored("uid"))?;
    let mut secret = existing.cloned().unwrap_or_default();
    if let Some(from) = copy_of {
        secret.metadata.labels.clone_from(&from.metadata.labels);
        secret.metadata.annotations.clone_from(&from.metadata.annotations);
    }
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = Some(ns);
    secret.metadata.owner_references = Some(vec![owner]);
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
    let ann = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(KEY_ID_ANNOTATION.into(), held.key_id.clone());
    match &held.rotation {
        Some(t) => ann.insert(ROTATION_ANNOTATION.into(), t.clone()),
        None => ann.remove(ROTATION_ANNOTATION),
    };
    secret.type_ = Some("Opaque".into());
    secret.string_data = None;
    secret.data = Some(BTreeMap::from([(SECRET_DATA_KEY.to_owned(), ByteString(held.key.clone().into_bytes()))]));
    let written = if existing.is_some() {
        api.replace(name, &PostParams::default(), &secret).await?
    } else {
        api.create(&PostParams::default(), &secret).await?
    };
    Ok(written.metadata.resource_version)
}

/// Deletes the Secret a key moved out of, if it is still this VirtualKey's (its controller, with
/// the managed-by label), and only that very object (a UID precondition): a Secret someone put
/// under that name since is left alone.
pub(super) async fn delete_moved_from(
    ctx: &Context,
    vk: &VirtualKey,
    uid: &str,
    previous: &Secret,
) -> Result<(), ReconcileError> {
    let ours = previous.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true))
        && previous.labels().get(MANAGED_BY_LABEL.0).map(String::as_str) == Some(MANAGED_BY_LABEL.1);
    if !ours {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.clients.kube.clone(), &vk.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: previous.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(&previous.name_any(), &params).await {
        Ok(_) => Ok(()),
        // Gone already, or another object by now: nothing of ours to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes PostgreSQL follow the Secret `secret`: its key is the live one. Returns the record.
pub(super) async fn record_key(
    ctx: &Context,
    vk: &VirtualKey,
    uid: &str,
    secret: &str,
    held: &SecretKey,
    live: Option<VirtualKeyRecord>,
    t: &KeyTerms,
) -> Result<VirtualKeyRecord, ReconcileError> {
    let hash = keys::key_sha256(&held.key);
    let new = NewVirtualKey {
        key_id: held.key_id.clone(),
        resource: resource_ref(vk, uid),
        owner: t.owner.clone(),
        key_sha256: hash,
        prefix: held.key.chars().take(PREFIX_LEN).collect(),
        models: t.models.clone(),
        budget_monthly_usd: t.budget_monthly_usd.clone(),
        rate_limit_rpm: t.rate_limit_rpm,
        expires_at: t.expires_at,
        scope: spend_refresh::scope(ctx),
    };
    let now = Utc::now();
    let mut tx = ctx.clients.db.begin().await.during("starting a key transaction")?;
    let (kind, old) = match &live {
        None => (AuditKind::VirtualKeyIssued, None),
        Some(old) => {
            let grace = vk.spec.rotation_grace_seconds.unwrap_or(0).max(0);
            if grace == 0 {
                // The old key stops authenticating before the new row commits: a crash in
                // between re-runs this rotation, and the old hash never stays published
                // unrecorded.
                ctx.key_runtime()?.cache.remove(&[hex::encode(&old.key_sha256)]).await?;
                keys::revoke(&mut *tx, &old.key_id, now).await?;
                keys::mark_unpublished(&mut *tx, &old.key_id).await?;
            } else {
                // Revoked as of the end of the grace period; its entry stays in Redis until
                // then and is removed by the reconcile requeued for that time.
                keys::revoke(&mut *tx, &old.key_id, now + chrono::Duration::seconds(grace)).await?;
            }
            (AuditKind::VirtualKeyRotated, Some(old.key_id.clone()))
        }
    };
    keys::insert(&mut tx, &new).await?;
    let event = NewAuditEvent {
        event_key: format!("{}/{}/{}", kind.as_str(), uid, held.key_id),
        kind,
        resource: resource_ref(vk, uid),
        owners: vec![t.owner.clone()],
        region: None,
        cloud_ids: json!({"keyId": held.key_id}),
        details: json!({"keyId": held.key_id, "previousKeyId": old, "prefix": new.prefix, "rotationToken": held.rotation}),
        occurred_at: now,
    };
    let appended = audit::append(&mut *tx, &event).await?;
    tx.commit().await.during("committing a key")?;
    ctx.audit_committed(&appended);
    ctx.telemetry.metrics.count_step(KIND, if live.is_some() { "rotate" } else { "issue" });
    let verb = if live.is_some() { "Rotated" } else { "Issued" };
    ctx.event(
        vk,
        false,
        verb,
        verb,
        format!("Key {} issued (prefix {}) into Secret {secret}", held.key_id, new.prefix),
    )
    .await;
    keys::live_for_resource(&ctx.clients.db, uid).await?.ok_or(ReconcileError::Decode("the key row just recorded"))
}

/// The key half of a reconcile: reads the Secret (and, while `spec.secretName` changes, the
/// previous one, named by the status), moves the live key to the spec's Secret or issues a key
/// into it when neither holds a usable one (or a rotation was asked), makes PostgreSQL follow
/// it, deletes the previous Secret once the key is recorded in the new one, and remembers in
/// which version of the Secret the key was checked.
///
/// A move is crash-safe: the new Secret is written before the old one is deleted, the status
/// names the old one until then, and a later reconcile that finds the live key in the new
/// Secret only finishes the delete.
pub(super) async fn ensure_key(
    ctx: &Context,
    vk: &VirtualKey,
    uid: &str,
    requested: &str,
    mut live: Option<VirtualKeyRecord>,
) -> Result<(), ReconcileError> {
    let rt = ctx.key_runtime()?;
    // What the watch has told of these Secrets before they are read: an event after this is
    // newer than what this check finds.
    let since = rt.secrets.token(uid);
    let t = &terms(vk)?;
    let name = requested;
    let secrets: Api<Secret> = Api::namespaced(ctx.clients.kube.clone(), &vk.namespace().unwrap_or_default());
    let previous_name = vk.status.as_ref().and_then(|s| s.secret_name.clone()).filter(|p| p != name);
    let mut target = secrets.get_opt(name).await?;
    let mut previous = match &previous_name {
        Some(p) => secrets.get_opt(p).await?,
        None => None,
    };
    let mut name = name.to_owned();
    let mut refused = None;
    if let Some(s) = &target
        && !s.owner_references().iter().any(|o| o.uid == uid)
    {
        let taken = format!("Secret {name} exists and does not belong to this VirtualKey");
        // A move refused: the live key stays where it is and keeps being judged and published.
        let keeps =
            previous.as_ref().and_then(|p| key_in_secret(p, uid)).is_some_and(|h| holds_live(&h, live.as_ref()));
        match &previous_name {
            Some(p) if keeps => {
                refused = Some(format!("{taken}: the key stays in Secret {p}"));
                name.clone_from(p);
                target = previous.take();
            }
            _ => return Err(ReconcileError::InvalidSpec(taken)),
        }
    }
    let mut version = target.as_ref().and_then(|s| s.metadata.resource_version.clone());
    let held = target.as_ref().and_then(|s| key_in_secret(s, uid));
    let moving = previous.as_ref().and_then(|s| key_in_secret(s, uid));
    let plan = plan_key(held.as_ref(), moving.as_ref(), live.as_ref(), vk.spec.rotation_token.as_deref());
    let held = match plan {
        KeyPlan::Keep => held.ok_or(ReconcileError::Decode("a key in the Secret"))?,
        KeyPlan::Move => {
            let moved = moving.ok_or(ReconcileError::Decode("a key in the previous Secret"))?;
            version = write_secret(ctx, vk, &name, target.as_ref(), previous.as_ref(), &moved).await?;
            ctx.telemetry.metrics.count_step(KIND, "move");
            let from = previous_name.as_deref().unwrap_or_default();
            ctx.event(
                vk,
                false,
                "Moved",
                "Move",
                format!("Key {} moved from Secret {from} to Secret {name}", moved.key_id),
            )
            .await;
            moved
        }
        KeyPlan::Issue => {
            let issued = generate_key();
            let held = SecretKey { key: issued.key, key_id: issued.key_id, rotation: vk.spec.rotation_token.clone() };
            version = write_secret(ctx, vk, &name, target.as_ref(), None, &held).await?;
            held
        }
    };
    if live.as_ref().is_none_or(|l| l.key_id != held.key_id) {
        live = Some(record_key(ctx, vk, uid, &name, &held, live.take(), t).await?);
    }
    live.ok_or(ReconcileError::Decode("the live key"))?;
    if let Some(previous) = &previous {
        delete_moved_from(ctx, vk, uid, previous).await?;
    }
    if let Some(resource_version) = version {
        let checked = Checked {
            requested: requested.to_owned(),
            secret_name: name,
            refused,
            at: std::time::Instant::now(),
            resource_version,
            key_id: held.key_id.clone(),
            rotation: held.rotation.clone(),
        };
        rt.secrets.checked(uid, checked, since);
    }
    Ok(())
}

/// One step of a VirtualKey's pass.
pub(super) async fn act(ctx: &Context, vk: &VirtualKey, uid: &str, step: &Step) -> Result<(), ReconcileError> {
    let rt = ctx.key_runtime()?;
    match step {
        Step::EnsureKey { secret_name, live } => ensure_key(ctx, vk, uid, secret_name, live.as_deref().cloned()).await,
        Step::FollowTerms { key_id, transfer_from } => {
            follow_spec_terms(ctx, vk, uid, key_id, transfer_from.as_deref()).await
        }
        Step::Publish { view, entry, was_blocked } => {
            let json = serde_json::to_string(entry).map_err(|_| ReconcileError::Decode("an auth entry"))?;
            rt.cache.publish(&view.key_sha256, &json).await?;
            ctx.telemetry.metrics.count_step(KIND, "publish");
            rt.remember(uid, SpendView { auth: Some(json), ..view.as_ref().clone() });
            match (was_blocked, &entry.blocked_reason) {
                (Some(false) | None, Some(reason)) => {
                    let note = format!("The proxy now refuses key {}: {reason}", entry.key_id);
                    ctx.event(vk, true, reason, "Block", note).await;
                }
                (Some(true), None) => {
                    let note = format!("The proxy accepts key {} again", entry.key_id);
                    ctx.event(vk, false, "Unblocked", "Unblock", note).await;
                }
                _ => {}
            }
            Ok(())
        }
        Step::PublishGrace { entries } => {
            let mut written = Vec::with_capacity(entries.len());
            for (hash, entry) in entries {
                let json = serde_json::to_string(entry).map_err(|_| ReconcileError::Decode("an auth entry"))?;
                written.push((hash.clone(), json));
            }
            rt.cache.publish_many(&written).await?;
            ctx.telemetry.metrics.count_step(KIND, "publish");
            Ok(())
        }
        Step::Retire { key_id, key_sha256 } => {
            rt.cache.remove(std::slice::from_ref(key_sha256)).await?;
            keys::mark_unpublished(&ctx.clients.db, key_id).await?;
            let note = format!("Previous key {key_id} removed from the proxy");
            ctx.event(vk, false, "Retired", "Revoke", note).await;
            Ok(())
        }
    }
}

/// Writes the spec's terms to the key's row, with one transfer event per generation when the
/// owner changed (`transfer_from`: the owner the row has), both in one transaction.
async fn follow_spec_terms(
    ctx: &Context,
    vk: &VirtualKey,
    uid: &str,
    key_id: &str,
    transfer_from: Option<&str>,
) -> Result<(), ReconcileError> {
    let t = terms(vk)?;
    let mut tx = ctx.clients.db.begin().await.during("starting a terms update")?;
    keys::update_terms(&mut *tx, key_id, &t).await?;
    let mut appended = None;
    if let Some(from) = transfer_from {
        let event = NewAuditEvent {
            event_key: format!(
                "{}/{}/{}",
                AuditKind::VirtualKeyTransferred.as_str(),
                uid,
                vk.metadata.generation.unwrap_or(0)
            ),
            kind: AuditKind::VirtualKeyTransferred,
            resource: resource_ref(vk, uid),
            owners: vec![from.to_owned(), t.owner.clone()],
            region: None,
            cloud_ids: json!({"keyId": key_id}),
            details: json!({"from": from, "to": t.owner, "generation": vk.metadata.generation}),
            occurred_at: Utc::now(),
        };
        appended = Some(audit::append(&mut *tx, &event).await?);
    }
    tx.commit().await.during("committing a terms update")?;
    if let Some(appended) = &appended {
        ctx.audit_committed(appended);
    }
    if let Some(from) = transfer_from {
        ctx.event(vk, false, "Transferred", "Transfer", format!("Owner changed from {from} to {}", t.owner)).await;
    }
    Ok(())
}
