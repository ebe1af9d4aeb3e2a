//! The orphan sweeper: removes servers, per-object firewalls, tunnels and DNS records that carry
//! our marks but whose
//! object no longer exists (a crash between a create and its record, a finalizer removed by
//! hand), after a grace period. It reads only the shared fleet view and the controllers'
//! caches; every removal is logged and counted. Before a server goes, its object's books are
//! closed (the closing usage row and one destroy event naming the sweeper), so billing and the
//! audit trail are never left open by an object that went without its finalizer. It never
//! touches anything without our marks, nor anything of an object that exists (an object being
//! created is in the cache). "Our marks" include this installation's identity: the fleet view
//! holds nothing of another cluster's, nor anything marked before installations had an identity
//! (see `server::legacy`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::api::{Api, ListParams};

use serde_json::json;

use crate::api::{Agent, PlainVM, Region};
use crate::cloud::CloudError;
use crate::cloud::hetzner::ServerSummary;
use crate::store::audit::AuditKind;
use crate::store::credentials;
use crate::store::seal::CredentialId;
use crate::store::usage;

use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::lifecycle::{self, Destroyed};
use crate::controllers::server::names::{tunnel_name, uid_from_tunnel_name};
use crate::controllers::server::{KIND_LABEL, NAME_LABEL, NAMESPACE_LABEL, Owner};

/// A marked resource seen without its object, and since when.
#[derive(Debug, Default)]
pub struct Suspects {
    first_seen: HashMap<String, Instant>,
    /// With `--watch-namespace`: owner UIDs known to be of this namespace (seen alive, or on a
    /// server labelled with it). Tunnels and DNS records carry no namespace, so only theirs
    /// are judged: another namespace's live object is never taken for an orphan.
    in_scope: HashSet<String>,
}

impl Suspects {
    /// Pure: remembers `seen` as in scope, forgets UIDs nothing refers to any more, and keeps
    /// of `candidates` those in scope.
    pub fn in_scope<T>(
        &mut self,
        seen: &HashSet<String>,
        referred: &HashSet<String>,
        candidates: &mut HashMap<String, T>,
    ) {
        self.in_scope.extend(seen.iter().cloned());
        self.in_scope.retain(|u| referred.contains(u));
        candidates.retain(|u, _| self.in_scope.contains(u));
    }
}

impl Suspects {
    /// Pure: of the `orphans` seen now, those orphaned for longer than `grace`; forgets the
    /// ones that are no longer orphans.
    pub fn due(&mut self, orphans: &HashSet<String>, now: Instant, grace: Duration) -> Vec<String> {
        self.first_seen.retain(|k, _| orphans.contains(k));
        let mut due = Vec::new();
        for key in orphans {
            let since = *self.first_seen.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= grace {
                due.push(key.clone());
            }
        }
        due.sort();
        due
    }
}

fn secret_id(uid: &str) -> CredentialId {
    CredentialId { scope: "agent-tunnel".into(), resource_uid: uid.into(), name: "tunnel-secret".into() }
}

/// The UIDs of every Agent and PlainVM that exists, from one metadata-only list per kind (not
/// a cache: a cache that is not yet complete would make every server look orphaned). UIDs are
/// unique across kinds, so one set serves both. Every shard's objects count (no label
/// selector): an object of another shard is alive, whatever this instance reconciles.
async fn live_uids(ctx: &Context) -> Result<HashSet<String>, kube::Error> {
    let mut live = HashSet::new();
    add_uids(&crate::controllers::watch::scoped_api::<Agent>(ctx), &mut live).await?;
    add_uids(&crate::controllers::watch::scoped_api::<PlainVM>(ctx), &mut live).await?;
    Ok(live)
}

/// Objects per page of those lists: the watchers' page (a whole page's body is held while it
/// is parsed, at every sweep).
const LIST_PAGE: u32 = crate::controllers::watch::WATCH_LIST_PAGE;

/// What the sweeper reads of a metadata list page: each object's UID and the continue token.
/// Everything else, the managed fields above all, is skipped while parsing and never built:
/// decoded in full (`Api::list_metadata`), one page of 500 took 5 MiB of the operator's heap
/// for a moment at every sweep, for 500 strings of 36 bytes.
///
/// A real kube-apiserver sends an empty page's items as `null`, not `[]` (a nil Go slice): an
/// `Option`, or every sweep of a cluster with no PlainVMs failed to parse and swept nothing.
#[derive(serde::Deserialize)]
struct UidPage {
    #[serde(default)]
    items: Option<Vec<UidItem>>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(serde::Deserialize)]
struct UidItem {
    metadata: UidMeta,
}

#[derive(serde::Deserialize)]
struct UidMeta {
    uid: Option<String>,
}

async fn add_uids<K>(api: &Api<K>, live: &mut HashSet<String>) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    let request = kube::core::Request::new(api.resource_url());
    let client = api.clone().into_client();
    let mut params = ListParams::default().limit(LIST_PAGE);
    loop {
        let page: UidPage = client.request(request.list_metadata(&params).map_err(kube::Error::BuildRequest)?).await?;
        live.extend(page.items.unwrap_or_default().into_iter().filter_map(|i| i.metadata.uid));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// One sweep over the fleet view.
async fn sweep(ctx: &Context, suspects: &mut Suspects) {
    let live = match live_uids(ctx).await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "sweeper cannot list Agents and PlainVMs; skipping this sweep");
            return;
        }
    };
    let now = Instant::now();
    let grace = ctx.config.sweeper_grace;

    // Servers: keyed by owner UID; only servers of a kind this operator knows are judged.
    // Only the ids are copied out of the view, never whole cloud objects.
    let servers: HashMap<String, i64> = ctx.shared.fleet.pick_servers(|s| {
        matches!(s.labels.get(KIND_LABEL).map(String::as_str), Some("agent" | "plainvm")).then_some(s.id)
    });
    // PlainVM firewalls (the fleet view holds only those; never the fleet firewall).
    let firewalls: HashMap<String, i64> = ctx.shared.fleet.pick_firewalls(|f| Some(f.id));
    let mut tunnels: HashMap<String, String> = ctx
        .shared
        .fleet
        .pick_tunnels(|t| Some(t.id.clone()))
        .into_iter()
        .filter_map(|(name, id)| uid_from_tunnel_name(ctx.config.installation(), &name).map(|u| (u.to_owned(), id)))
        .collect();
    let mut records: HashMap<String, String> = ctx.shared.fleet.pick_dns(|r| Some(r.id.clone()));
    if ctx.config.watch_namespace.is_some() {
        let seen: HashSet<String> = live.iter().chain(servers.keys()).chain(firewalls.keys()).cloned().collect();
        let referred: HashSet<String> = seen.iter().chain(tunnels.keys()).chain(records.keys()).cloned().collect();
        suspects.in_scope(&seen, &referred, &mut tunnels);
        suspects.in_scope(&seen, &referred, &mut records);
    }

    let mut orphans = HashSet::new();
    orphans.extend(servers.keys().filter(|u| !live.contains(*u)).map(|u| format!("server/{u}")));
    orphans.extend(firewalls.keys().filter(|u| !live.contains(*u)).map(|u| format!("firewall/{u}")));
    orphans.extend(tunnels.keys().filter(|u| !live.contains(*u)).map(|u| format!("tunnel/{u}")));
    orphans.extend(records.keys().filter(|u| !live.contains(*u)).map(|u| format!("dns/{u}")));

    tracing::debug!(live = live.len(), orphans = orphans.len(), "sweep");
    let mut due = suspects.due(&orphans, now, grace);
    // Servers first: a firewall cannot go while it is still applied to its server.
    due.sort_by_key(|k| !k.starts_with("server/"));
    for key in due {
        let Some((what, uid)) = key.split_once('/') else { continue };
        let result = match what {
            "server" => match remove_orphan_server(ctx, uid, servers.get(uid).copied()).await {
                Some(result) => result,
                None => continue,
            },
            // Still applied while its server's delete runs: the error is logged and the next
            // sweep tries again (the suspect stays due), so it is never left behind.
            "firewall" => match firewalls.get(uid) {
                Some(&id) => {
                    ctx.clients.hetzner.delete_firewall(id).await.map(|_| ctx.shared.fleet.forget_firewall(uid))
                }
                None => Ok(()),
            },
            "tunnel" => match remove_orphan_tunnel(ctx, uid, tunnels.get(uid)).await {
                Some(result) => result,
                None => continue,
            },
            "dns" => match records.get(uid) {
                Some(id) => {
                    ctx.clients.cloudflare.delete_dns_record(id).await.map(|_| ctx.shared.fleet.forget_dns(uid))
                }
                None => Ok(()),
            },
            _ => continue,
        };
        match result {
            Ok(()) => {
                if what == "tunnel" {
                    let _ = credentials::delete_credential(&ctx.clients.db, &secret_id(uid)).await;
                }
                ctx.telemetry.metrics.count_swept(what);
                tracing::warn!(resource = what, owner_uid = uid, "sweeper removed a resource whose object is gone");
            }
            Err(e) => {
                tracing::warn!(resource = what, owner_uid = uid, error = %e, "sweeper could not remove an orphan")
            }
        }
    }
    ctx.telemetry.metrics.count_sweep();
}

/// Removes an orphan's server after closing its books; `None`: nothing to do this sweep (gone
/// from the view since the sweep began, or its books could not be closed yet).
async fn remove_orphan_server(ctx: &Context, uid: &str, id: Option<i64>) -> Option<Result<(), CloudError>> {
    let (Some(id), Some(seen)) = (id, ctx.shared.fleet.server(uid)) else { return None };
    // The books close before the server goes: a crash or a failed write in between leaves the
    // server for the next sweep, never an open timeline with no server left to find it by.
    // Books another writer closed already (the database refuses a second destroy) are closed:
    // the server goes.
    if let Err(e) = close_books(ctx, uid, &seen).await
        && !e.already_destroyed()
    {
        tracing::warn!(owner_uid = uid, error = %e, "sweeper cannot close the books of an orphan; its server stays until it can");
        return None;
    }
    Some(ctx.clients.hetzner.delete_server(id).await.map(|_| ctx.shared.fleet.forget_server(uid)))
}

/// Removes an orphan's tunnel. Tunnels carry no labels: ours are the ones whose secret we still
/// hold (an orphaned Agent's secret is forgotten, so its tunnel is left alone); `None`: not ours
/// or its secret unreadable this sweep.
async fn remove_orphan_tunnel(ctx: &Context, uid: &str, id: Option<&String>) -> Option<Result<(), CloudError>> {
    match credentials::get_credential(&ctx.clients.db, &ctx.clients.sealing, &secret_id(uid)).await {
        Ok(Some(_)) => Some(match id {
            Some(id) => ctx.clients.cloudflare.delete_tunnel(id).await.map(|_| {
                ctx.shared.fleet.forget_tunnel(&tunnel_name(ctx.config.installation(), uid));
            }),
            None => Ok(()),
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "sweeper cannot read a tunnel secret");
            None
        }
    }
}

/// The object a swept server belonged to, from the marks on the server: `None` for a server
/// whose kind this operator does not know.
fn owner_of(uid: &str, server: &ServerSummary) -> Option<Owner> {
    let label = |key: &str| server.labels.get(key).cloned().unwrap_or_default();
    let kind = match server.labels.get(KIND_LABEL).map(String::as_str) {
        Some("agent") => "Agent",
        Some("plainvm") => "PlainVM",
        _ => return None,
    };
    let shard = server.labels.get(crate::controllers::shard::SHARD_LABEL).cloned();
    Some(Owner { kind, namespace: label(NAMESPACE_LABEL), name: label(NAME_LABEL), uid: uid.to_owned(), shard })
}

/// Closes the books of an object that went without its finalizer (removed by hand), whose
/// server the sweeper is about to remove: the closing usage row, if its timeline still runs,
/// then one destroy event naming the sweeper, in one transaction (see
/// [`lifecycle::record_destroy`]). Both are idempotent: a repeat, or an object whose finalizer
/// did close its books, finds the timeline closed and the one destroy event recorded.
async fn close_books(ctx: &Context, uid: &str, server: &ServerSummary) -> Result<(), ReconcileError> {
    let Some(owner) = owner_of(uid, server) else { return Ok(()) };
    let rows = usage::transitions_for_resource(&ctx.clients.db, uid).await?;
    // The owner the object was billed to last: an Agent's transfer trail is ahead of its rows.
    let transferred = if owner.kind == "Agent" {
        crate::controllers::agent::observe::transfer_trail(ctx, uid).await?.last_to
    } else {
        None
    };
    let billed_owner = transferred.or_else(|| rows.last().map(|r| r.owner.clone()));
    let region = server
        .location
        .as_ref()
        .and_then(|l| Region::of_hetzner_location(&l.name))
        .map(|r| r.as_str().to_owned())
        .or_else(|| rows.last().map(|r| r.region.clone()));
    let destroyed = Destroyed {
        kind: if owner.kind == "Agent" { AuditKind::AgentDestroyed } else { AuditKind::PlainVmDestroyed },
        billed_owner,
        region,
        cloud_ids: json!({"server_id": server.id}),
        details: json!({
            "actor": "sweeper",
            "reason": "the object was gone without its finalizer (removed by hand): the sweeper removed its server",
            "server_name": server.name,
            "server_type": server.server_type.as_ref().map(|t| t.name.clone()),
        }),
    };
    lifecycle::record_destroy(ctx, &owner, destroyed).await
}

/// Sweeps once per resync period (or grace period, when shorter) until `stop`.
pub async fn run(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    let mut stop = stop;
    let mut suspects = Suspects::default();
    loop {
        if *stop.borrow() {
            return;
        }
        if ctx.shared.fleet.servers_known() && ctx.shared.fleet.tunnels_known() && ctx.shared.fleet.dns_known() {
            sweep(&ctx, &mut suspects).await;
        }
        let pause = ctx.config.resync.min(ctx.config.sweeper_grace.max(Duration::from_millis(200)));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // A dropped sender means the operator is gone: stop too, never spin.
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metadata_page_yields_its_uids_and_continue_token_whatever_else_it_carries() {
        let page = serde_json::json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "42", "continue": "next", "remainingItemCount": 1},
            "items": [
                {"kind": "PartialObjectMetadata", "metadata": {"name": "a", "uid": "u-a",
                    "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:x": {}}}}],
                    "labels": {"k": "v"}}},
                {"kind": "PartialObjectMetadata", "metadata": {"name": "b"}}
            ]
        });
        let page: UidPage = serde_json::from_value(page).expect("a metadata list page parses");
        let uids: Vec<_> = page.items.unwrap_or_default().into_iter().filter_map(|i| i.metadata.uid).collect();
        assert_eq!(uids, ["u-a"]);
        assert_eq!(page.metadata.continue_.as_deref(), Some("next"));
        let last: UidPage = serde_json::from_value(serde_json::json!({"metadata": {}, "items": []})).expect("parses");
        assert!(last.items.is_some_and(|i| i.is_empty()) && last.metadata.continue_.is_none());
    }

    #[test]
    fn an_empty_page_as_kube_apiserver_sends_it_parses() {
        // Recorded from kube-apiserver 1.37 for a kind with no objects: `items` is null.
        let body = r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"251"},"items":null}"#;
        let page: UidPage = serde_json::from_str(body).expect("an empty page parses");
        assert!(page.items.unwrap_or_default().is_empty());
    }

    #[test]
    fn a_swept_server_names_its_object_by_its_marks() {
        let mut server = ServerSummary { id: 7, name: "bot-3f2a9c1e".into(), ..ServerSummary::default() };
        server.labels = [(KIND_LABEL, "plainvm"), (NAMESPACE_LABEL, "team-a"), (NAME_LABEL, "bot")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let owner = owner_of("u-1", &server).expect("a kind we know");
        assert_eq!(
            (owner.kind, owner.namespace.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("PlainVM", "team-a", "bot", "u-1")
        );
        server.labels.insert(KIND_LABEL.to_owned(), "database".to_owned());
        assert!(owner_of("u-1", &server).is_none(), "not a kind of ours: no books to close");
    }

    #[test]
    fn an_orphan_goes_only_after_the_grace_period_and_a_returning_object_saves_it() {
        let mut s = Suspects::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let orphans: HashSet<String> = ["server/a".to_owned()].into();
        assert!(s.due(&orphans, t0, grace).is_empty(), "first sight starts the clock");
        assert!(s.due(&orphans, t0 + Duration::from_secs(30), grace).is_empty());
        assert_eq!(s.due(&orphans, t0 + grace, grace), vec!["server/a".to_owned()]);
        // Seen live again: the clock restarts.
        assert!(s.due(&HashSet::new(), t0 + grace, grace).is_empty());
        assert!(s.due(&orphans, t0 + grace + Duration::from_secs(1), grace).is_empty());
    }

    #[test]
    fn a_namespaced_sweeper_judges_only_tunnels_of_objects_it_has_seen() {
        let mut s = Suspects::default();
        let set = |v: &[&str]| v.iter().map(|u| (*u).to_owned()).collect::<HashSet<String>>();
        let mut tunnels = HashMap::from([("mine".to_owned(), 1), ("other-namespace".to_owned(), 2)]);
        s.in_scope(&set(&["mine"]), &set(&["mine", "other-namespace"]), &mut tunnels);
        assert_eq!(tunnels.keys().collect::<Vec<_>>(), vec!["mine"]);
        // Its object is gone now: still in scope while its tunnel is there, so it is swept.
        let mut tunnels = HashMap::from([("mine".to_owned(), 1), ("other-namespace".to_owned(), 2)]);
        s.in_scope(&set(&[]), &set(&["mine", "other-namespace"]), &mut tunnels);
        assert_eq!(tunnels.keys().collect::<Vec<_>>(), vec!["mine"]);
        // Once nothing refers to it, it is forgotten.
        s.in_scope(&set(&[]), &set(&[]), &mut HashMap::<String, i32>::new());
        assert!(s.in_scope.is_empty());
    }
}
