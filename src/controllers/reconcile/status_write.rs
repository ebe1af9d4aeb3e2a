//! The one status write of a pass: a merge patch of the difference, only when something
//! changed, remembered until the cache shows it.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::kind::ManagedObject;
use crate::controllers::reconcile::status_patch::status_merge_patch;

/// Patches `/status` with the difference, only when something changed.
pub async fn write_status<K: ManagedObject>(
    ctx: &Context,
    object: &K,
    old: &K::Status,
    new: &K::Status,
) -> Result<(), ReconcileError> {
    if old == new {
        return Ok(());
    }
    let Some(patch) = status_merge_patch(old, new) else { return Ok(()) };
    let api: Api<K> = Api::namespaced(ctx.clients.kube.clone(), &object.namespace().unwrap_or_default());
    api.patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.telemetry.metrics.count_status_write(K::KIND);
    let (uid, version) = (object.uid().unwrap_or_default(), object.resource_version().unwrap_or_default());
    ctx.shared.written.remember(&uid, &version, new);
    Ok(())
}

/// The object's status as a pass starts from it: ours if the cache has not shown our last
/// write yet (see [`crate::controllers::reconcile::written`]).
pub fn latest_status<K: ManagedObject>(ctx: &Context, object: &K) -> K::Status {
    let (uid, version) = (object.uid().unwrap_or_default(), object.resource_version().unwrap_or_default());
    ctx.shared.written.latest(&uid, &version, object.status())
}
