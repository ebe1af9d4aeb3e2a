//! The upgrade from marks made before installations had an identity: servers and per-object
//! firewalls without the installation label, tunnels named `crabglamp-<uid>`, DNS records whose
//! comment is `crabglamp:<uid> ...`. Once, at start, before any reconcile, each of them whose UID
//! is a live Agent or PlainVM of this instance (its scope: shard, namespace) is re-marked as this
//! installation's (label added, tunnel renamed, comment rewritten), keeping its id: nothing is
//! created again and nothing is swept. Old marks whose UID is not live here are left alone,
//! never swept: they may be another cluster's that has not upgraded yet.
//!
//! It runs before the reconcilers because they find resources by the new marks only: a server
//! or tunnel not yet re-marked would be created a second time.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::NamespaceResourceScope;
use kube::api::ListParams;

use crate::api::{Agent, PlainVM};
use crate::cloud::CloudError;

use super::marks::{UID_LABEL, legacy_fleet_selector, legacy_per_object_firewall_selector};
use crate::controllers::context::Context;
use crate::controllers::server::installation::INSTALLATION_LABEL;
use crate::controllers::server::names::{
    DNS_MARK_PREFIX, TUNNEL_PREFIX, dns_mark, legacy_uid_from_dns_comment, legacy_uid_from_tunnel_name, tunnel_name,
};

/// Why the re-marking did not finish (it is run again from the start, and what was re-marked
/// already no longer carries old marks).
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("cannot list Agents and PlainVMs: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot {what}: {source}")]
    Cloud {
        what: &'static str,
        #[source]
        source: CloudError,
    },
    #[error("{0} resource(s) with old marks could not be re-marked yet")]
    Unfinished(usize),
}

fn cloud(what: &'static str) -> impl FnOnce(CloudError) -> LegacyError {
    move |source| LegacyError::Cloud { what, source }
}

/// Objects per page of the UID lists (as the watchers').
const LIST_PAGE: u32 = crate::controllers::watch::WATCH_LIST_PAGE;

/// The UIDs of the Agents and PlainVMs this instance reconciles (its shard and namespace):
/// only their resources are re-marked, so an instance never renames a tunnel that another
/// shard, perhaps still running the version before, looks up by its old name.
async fn our_uids(ctx: &Context) -> Result<HashSet<String>, kube::Error> {
    let mut uids = HashSet::new();
    add_uids(&crate::controllers::watch::scoped_api::<Agent>(ctx), ctx, &mut uids).await?;
    add_uids(&crate::controllers::watch::scoped_api::<PlainVM>(ctx), ctx, &mut uids).await?;
    Ok(uids)
}

async fn add_uids<K>(api: &kube::Api<K>, ctx: &Context, uids: &mut HashSet<String>) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + serde::de::DeserializeOwned,
    K: std::fmt::Debug,
{
    let mut params =
        ListParams::default().labels(&crate::controllers::shard::shard_selector(&ctx.config)).limit(LIST_PAGE);
    loop {
        let page = api.list_metadata(&params).await?;
        uids.extend(page.items.into_iter().filter_map(|o| o.metadata.uid));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// Pure: `labels` with this installation's label added.
pub fn with_installation(labels: &BTreeMap<String, String>, installation: &str) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert(INSTALLATION_LABEL.to_owned(), installation.to_owned());
    labels
}

/// What one re-mark came to: done (or nothing to do), or failed (tried again).
fn outcome(ctx: &Context, what: &str, id: &str, result: Result<(), CloudError>) -> bool {
    match result {
        Ok(()) => {
            ctx.telemetry.metrics.count_step("Installation", &format!("remark_{what}"));
            tracing::info!(
                resource = what,
                id,
                "re-marked as this installation's (made before installations had an identity)"
            );
            true
        }
        // Gone meanwhile: nothing to re-mark.
        Err(CloudError::NotFound(_)) => true,
        // The new name is taken (a tunnel of the object under the new mark already, e.g. after a
        // downgrade and upgrade): the one with the new mark is used, this one is left as it is,
        // like any old mark, rather than stopping the start for good.
        Err(CloudError::Conflict(e)) => {
            tracing::warn!(resource = what, id, error = %e, "the new mark is taken already; leaving this one as it is");
            true
        }
        Err(e) => {
            tracing::warn!(resource = what, id, error = %e, "cannot re-mark a resource with old marks yet");
            false
        }
    }
}

/// Re-marks every resource with old marks whose object this instance reconciles; an error
/// if a list failed or some re-mark did (the caller runs it again).
pub async fn remark(ctx: &Context) -> Result<(), LegacyError> {
    let installation = ctx.config.installation();
    let ours = our_uids(ctx).await?;
    let is_ours = |uid: Option<&str>| uid.is_some_and(|u| ours.contains(u));
    let mut failed = 0usize;

    let servers = ctx
        .clients
        .hetzner
        .list_server_summaries(Some(&legacy_fleet_selector(&ctx.config)))
        .await
        .map_err(cloud("list servers with old marks"))?;
    for server in servers.iter().filter(|s| is_ours(s.labels.get(UID_LABEL).map(String::as_str))) {
        let labels = with_installation(&server.labels, installation);
        let result = ctx.clients.hetzner.set_server_labels(server.id, &labels).await.map(|_| ());
        failed += usize::from(!outcome(ctx, "server", &server.id.to_string(), result));
    }

    let firewalls = ctx
        .clients
        .hetzner
        .list_firewalls(Some(&legacy_per_object_firewall_selector(&ctx.config)))
        .await
        .map_err(cloud("list firewalls with old marks"))?;
    for firewall in firewalls {
        let labels: BTreeMap<String, String> = firewall.labels.clone().unwrap_or_default().into_iter().collect();
        if !is_ours(labels.get(UID_LABEL).map(String::as_str)) {
            continue;
        }
        let result =
            ctx.clients.hetzner.set_firewall_labels(firewall.id, &with_installation(&labels, installation)).await;
        failed += usize::from(!outcome(ctx, "firewall", &firewall.id.to_string(), result));
    }

    // Tunnels carry no labels: the name is the mark. Renamed, a tunnel keeps its id, secret and
    // connector, so the Agent's server stays connected.
    let tunnels = ctx.clients.cloudflare.list_tunnels(Some(TUNNEL_PREFIX)).await.map_err(cloud("list tunnels"))?;
    for tunnel in tunnels.iter().filter(|t| t.deleted_at.is_none()) {
        let Some(uid) = legacy_uid_from_tunnel_name(&tunnel.name).filter(|u| ours.contains(*u)) else { continue };
        let result =
            ctx.clients.cloudflare.rename_tunnel(&tunnel.id, &tunnel_name(installation, uid)).await.map(|_| ());
        failed += usize::from(!outcome(ctx, "tunnel", &tunnel.id, result));
    }

    let records = ctx
        .clients
        .cloudflare
        .list_dns_records_by_comment_prefix(DNS_MARK_PREFIX)
        .await
        .map_err(cloud("list DNS records"))?;
    for record in &records {
        let Some(uid) = record.comment.as_deref().and_then(legacy_uid_from_dns_comment).filter(|u| ours.contains(*u))
        else {
            continue;
        };
        let mark = dns_mark(installation, uid);
        let result = ctx.clients.cloudflare.set_dns_record_comment(&record.id, Some(&mark)).await.map(|_| ());
        failed += usize::from(!outcome(ctx, "dns", &record.id, result));
    }

    if failed > 0 { Err(LegacyError::Unfinished(failed)) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_marking_adds_the_installation_and_keeps_every_other_label() {
        let old = BTreeMap::from([
            (UID_LABEL.to_owned(), "u".to_owned()),
            ("team".to_owned(), "x".to_owned()),
            (crate::controllers::server::marks::MANAGED_BY_LABEL.to_owned(), "crabglamp-operator".to_owned()),
        ]);
        let new = with_installation(&old, "prod");
        assert_eq!(new[INSTALLATION_LABEL], "prod");
        assert_eq!(new.len(), old.len() + 1);
        assert!(old.iter().all(|(k, v)| new.get(k) == Some(v)));
    }
}
