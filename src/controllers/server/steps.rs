//! The server steps every kind shares: create, settle before removal, delete, unmark.

use std::time::Duration;

use kube::Resource;

use crate::cloud::CloudError;
use crate::cloud::hetzner::{ServerSpec, ServerSummary};

use super::{intent::*, marks::*, timeline::*};
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;

/// Pure: whether removing a server (deleting or orphaning it) must wait for it to settle. A
/// server between power states (`initializing`, `starting`, `stopping`, or `unknown` after a
/// power call whose answer was lost) may be making a transition the timeline has not seen yet:
/// removed now, its start and the stop its removal makes would never be billed. The wait is
/// bounded: `patience` after the removal was asked, it goes on with what is known.
pub fn removal_waits(observed_status: Option<&str>, asked_for: Duration, patience: Duration) -> bool {
    observed_status.is_some_and(|s| !matches!(s, "running" | "off")) && asked_for < patience
}

/// Before a server is removed: waits (as an error, so the finalizer stays) while it is between
/// power states (see [`removal_waits`]), then records the row its settled state calls for, so
/// the closing row the destroy commits follows every real transition. `observed_status` is
/// the status `server` (as the fleet view holds it) counts as for the timeline.
pub async fn settle_before_removal<K: Resource>(
    ctx: &Context,
    (object, owner): (&K, &Owner),
    (intent, server): (&ServerIntent, Option<&ServerSummary>),
    billed_owner: &str,
    observed_status: Option<String>,
) -> Result<(), ReconcileError> {
    let asked_for = object
        .meta()
        .deletion_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default();
    if removal_waits(observed_status.as_deref(), asked_for, ctx.config.removal_settle_timeout) {
        ctx.shared.fleet.wait_for_servers(owner);
        return Err(ReconcileError::NotReady("the server to settle in a power state before it is removed"));
    }
    if let Some(observed) = observed_status
        && let Some(row) = pending_transition(ctx, &owner.uid, &observed).await?
    {
        record_transition(ctx, owner, (intent, server), billed_owner, row).await?;
    }
    Ok(())
}

/// Creates (or adopts) the object's server and records it in the fleet view at once, so the
/// next pass sees it without a list. The server id reaches status right after this returns,
/// before its create action finishes.
pub async fn create_server(ctx: &Context, owner: &Owner, spec: &ServerSpec) -> Result<ServerSummary, ReconcileError> {
    let created = ctx.clients.hetzner.create_server(spec).await.map_err(|e| match e {
        // The client adopts a server of that name carrying our marks; one without them is
        // someone else's, and retrying cannot help until it is renamed or removed.
        CloudError::Conflict(ref d) if d.code == "uniqueness_error" => {
            ReconcileError::NameTaken { what: "server", name: spec.name.clone(), source: Box::new(e) }
        }
        e => ReconcileError::Hetzner(e),
    })?;
    let summary = ServerSummary::from_model(&created.server).ok_or(ReconcileError::Decode("server"))?;
    ctx.shared.fleet.record_server(&owner.uid, summary.clone());
    if created.adopted {
        tracing::info!(server = summary.id, "adopted the server an earlier attempt created");
    } else {
        tracing::info!(server = summary.id, "server created");
    }
    ctx.telemetry.metrics.count_step(owner.kind, "create_server");
    Ok(summary)
}

/// Deletes the server (gone already counts as done) and forgets it in the fleet view.
pub async fn delete_server(ctx: &Context, owner: &Owner, id: i64) -> Result<bool, ReconcileError> {
    let existed = ctx.clients.hetzner.delete_server(id).await.map_err(ReconcileError::Hetzner)?.is_some();
    ctx.shared.fleet.forget_server(&owner.uid);
    ctx.power.forget(&owner.uid);
    ctx.telemetry.metrics.count_step(owner.kind, "delete_server");
    Ok(existed)
}

/// Takes our labels off the object's server as it is orphaned (the owner's own labels stay).
/// It is found as the Delete path finds it: in the fleet view (`seen`), else by the id status
/// recorded, read once, since a list that has not shown it yet (or a page that shifted under
/// a paged list) would leave it marked, for the sweeper to delete later.
pub async fn unmark_server(
    ctx: &Context,
    owner: &Owner,
    seen: Option<&ServerSummary>,
    recorded: Option<i64>,
) -> Result<(), ReconcileError> {
    let found = match (seen, recorded) {
        (Some(server), _) => Some((server.id, server.labels.clone())),
        (None, Some(id)) => ctx
            .clients
            .hetzner
            .get_server(id)
            .await
            .map_err(ReconcileError::Hetzner)?
            .map(|server| (server.id, server.labels.into_iter().collect())),
        (None, None) => None,
    };
    if let Some((id, labels)) = found.filter(|(_, labels)| marked_for(labels, &owner.uid)) {
        match ctx.clients.hetzner.set_server_labels(id, &without_our_labels(&labels)).await {
            Ok(_) | Err(CloudError::NotFound(_)) => {}
            Err(e) => return Err(ReconcileError::Hetzner(e)),
        }
    }
    ctx.shared.fleet.forget_server(&owner.uid);
    ctx.power.forget(&owner.uid);
    Ok(())
}

/// A server as the fleet view holds it, for the reconcilers' unit tests: id 7, behind
/// `firewalls` (applied).
#[cfg(test)]
pub(crate) fn summary_for_tests(name: &str, status: &str, firewalls: &[i64]) -> ServerSummary {
    use crate::cloud::hetzner::{FirewallAttachment, PublicNetSummary};
    let firewalls = firewalls.iter().map(|&id| FirewallAttachment { id, status: Some("applied".into()) }).collect();
    ServerSummary {
        id: 7,
        name: name.into(),
        status: status.into(),
        public_net: PublicNetSummary { firewalls, ..PublicNetSummary::default() },
        ..ServerSummary::default()
    }
}
