//! What the reconciler knows of one VirtualKey, read once per decision: its live row, where
//! its key is (without a GET while its Secret is unchanged), its spend from the refresher's
//! snapshot, and its rotated-away keys with their auth entries in Redis.

use chrono::Utc;
use kube::ResourceExt;

use crate::api::virtual_key::VirtualKey;
use crate::store::keys::{self, VirtualKeyRecord};

use super::decide::*;
use super::plan::{KeyObserved, Location, Observed};
use super::runtime::{KeyRuntime, SpendView};
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::virtual_key::spend_refresh;

pub(super) async fn observe(ctx: &Context, vk: &VirtualKey, uid: &str) -> Result<Observed, ReconcileError> {
    if !serves(ctx.config.virtual_key_namespaces.as_deref(), &vk.namespace().unwrap_or_default()) {
        let served = ctx.config.virtual_key_namespaces.as_deref().unwrap_or_default().join(", ");
        return Ok(Observed::NotServed { served });
    }
    let rt = ctx.key_runtime()?;
    let terms = terms(vk)?;
    let now = Utc::now();
    let live = keys::live_for_resource(&ctx.clients.db, uid).await?;
    // A refused move stands for a resync: the Secret in the way is not ours, and no watch
    // event says when it goes.
    let location = live.as_ref().and_then(|l| {
        let rotation = vk.spec.rotation_token.as_deref();
        let checked = rt.secrets.settled(uid, &secret_name(vk), (&l.key_id, rotation), ctx.config.resync)?;
        Some(Location { secret_name: checked.secret_name, refused: checked.refused })
    });
    let spend = match (&live, &location) {
        (Some(record), Some(_)) => Some(spend_of(ctx, rt, uid, record).await?),
        _ => None,
    };
    let retiring = keys::retiring(&ctx.clients.db, uid).await?;
    let grace: Vec<String> = in_grace(&retiring, now).map(|r| hex::encode(&r.key_sha256)).collect();
    // A key rotated without grace costs no round trip at all.
    let grace_held = if grace.is_empty() { Vec::new() } else { rt.cache.read_auth(&grace).await? };
    let key = KeyObserved { terms, now, live, location, spend, retiring, grace_held };
    Ok(Observed::Served(Box::new(key)))
}

/// The key's spend this period: from the refresher's snapshot; a key it does not hold yet
/// (new, or not yet of this instance's scope) is claimed (so the refresher keeps it from now
/// on) and read on its own, restore included.
async fn spend_of(
    ctx: &Context,
    rt: &KeyRuntime,
    uid: &str,
    record: &VirtualKeyRecord,
) -> Result<SpendView, ReconcileError> {
    let hash_hex = hex::encode(&record.key_sha256);
    let this_period = period(Utc::now());
    if let Some(view) = rt.spend(uid).filter(|v| v.period == this_period && v.key_sha256 == hash_hex) {
        return Ok(view);
    }
    keys::claim(&ctx.clients.db, &record.key_id, &spend_refresh::scope(ctx)).await?;
    let key = keys::LiveKey {
        key_id: record.key_id.clone(),
        resource_uid: uid.to_owned(),
        key_sha256: record.key_sha256.clone(),
    };
    spend_refresh::refresh_one(ctx, key).await
}
