//! Deletion: finalizers and `deletionTimestamp`, propagation policies, ownerReference garbage
//! collection, the namespace controller, and what a removed namespace or CRD takes along.
//!
//! Runs under the state lock like every write; it never admits objects (deletions need no
//! admission) and never removes an object that still has finalizers, except a CRD's objects.

use std::sync::Arc;

use serde_json::{Value, json};

use super::error::ApiError;
use super::meta::{self, meta_mut, meta_str, name_of, now_time};
use super::resource::{ResourceType, Special, StorageKey};
use super::state::{EventType, State};

/// Namespaces a real API server refuses to delete.
pub const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Owner first, dependents after (the default).
    Background,
    /// Dependents first.
    Foreground,
    /// Dependents keep living, without the ownerReference.
    Orphan,
}

/// Options of a DELETE.
#[derive(Debug, Clone)]
pub struct DeleteOptions {
    /// `propagationPolicy`.
    pub propagation: Propagation,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// What a delete returned.
pub enum Deleted {
    /// Still present (finalizers): the object with its deletionTimestamp, in storage form
    /// (`write::present` it outside the lock).
    Pending(Arc<Value>),
    /// Gone: a success Status.
    Gone(Value),
}

/// `details` of a delete's success Status (Go omits the core group's empty name).
fn success_details(rt: &ResourceType, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "group": rt.group, "kind": rt.plural, "uid": uid});
    if rt.group.is_empty()
        && let Some(map) = details.as_object_mut()
    {
        map.remove("group");
    }
    details
}

/// 409 for a failed delete precondition, as `rest.BeforeDelete` words it: the resource named
/// by its Kind (`Agent.crabglamp.com`, `ConfigMap`).
fn precondition_failed(rt: &ResourceType, name: &str, why: &str) -> ApiError {
    let resource = super::error::qualified(&rt.kind, &rt.group);
    ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"))
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.kind}))
}

/// DELETE of one object.
pub fn delete(
    state: &mut State,
    rt: &Arc<ResourceType>,
    namespace: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let Some(old) = state.get(&rt.storage, namespace, name) else {
        return Err(ApiError::not_found(&rt.plural, &rt.group, name));
    };
    let record_uid = meta_str(&old, "uid").unwrap_or_default();
    let record_rv = meta_str(&old, "resourceVersion").unwrap_or_default();
    if let Some(uid) = opts.uid.as_deref().filter(|u| *u != record_uid) {
        return Err(precondition_failed(
            rt,
            name,
            &format!(
                "the UID in the precondition ({uid}) does not match the UID in record ({record_uid}). The object might have been deleted and then recreated"
            ),
        ));
    }
    if let Some(rv) = opts.resource_version.as_deref().filter(|r| *r != record_rv) {
        return Err(precondition_failed(
            rt,
            name,
            &format!(
                "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({record_rv}). The object might have been modified"
            ),
        ));
    }
    // As on a real server: without these the sandbox would lose `default` (and every write to
    // it) for good, since nothing recreates them.
    if rt.special == Special::Namespace && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        )
        .with_details(json!({"name": name, "kind": "namespaces"})));
    }
    let uid = meta_str(&old, "uid").unwrap_or_default().to_owned();
    if opts.dry_run {
        return Ok(Deleted::Pending(old));
    }
    match opts.propagation {
        Propagation::Orphan => orphan_dependents(state, &uid),
        Propagation::Foreground => delete_dependents(state, &uid),
        Propagation::Background => {}
    }
    // Namespaces go through Terminating: the namespace controller empties them first.
    let terminates = rt.special == Special::Namespace;
    if terminates || !meta::finalizers(&old).is_empty() {
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Deleted::Pending(old));
        }
        let mut new = (*old).clone();
        if terminates {
            meta::set_field(&mut new, "status", Some(json!({"phase": "Terminating"})));
        }
        let generation = new.pointer("/metadata/generation").and_then(Value::as_i64);
        let rv = state.next_rv();
        let meta = meta_mut(&mut new);
        meta.insert("deletionTimestamp".into(), json!(now_time()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if let Some(g) = generation {
            meta.insert("generation".into(), json!(g + 1));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        let stored = state.put(&rt.storage, namespace, name, new, EventType::Modified, rv);
        return Ok(Deleted::Pending(stored));
    }
    let rv = state.next_rv();
    let mut last = (*old).clone();
    meta_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
    let last = state.remove(&rt.storage, namespace, name, last, rv);
    after_removal(state, rt, &last);
    Ok(Deleted::Gone(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": success_details(rt, name, &uid),
    })))
}

/// What removing an object implies: its dependents are collected, a namespace takes its
/// content along, a CRD its kind and objects.
pub(super) fn after_removal(state: &mut State, rt: &ResourceType, last: &Value) {
    let uid = meta_str(last, "uid").unwrap_or_default().to_owned();
    match rt.special {
        Special::Namespace => {
            let ns = name_of(last);
            let doomed: Vec<(Arc<ResourceType>, String)> = state
                .namespace_content(&ns)
                .into_iter()
                .filter_map(|(storage, name)| type_of(state, &storage).map(|t| (t, name)))
                .collect();
            for (t, name) in doomed {
                let _ = delete(state, &t, &ns, &name, &background());
            }
        }
        Special::Crd => {
            let group = last.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default().to_owned();
            let plural = last.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_owned();
            let storage = (group.clone(), plural.clone());
            let doomed: Vec<(String, String)> = state.bucket(&storage).keys().cloned().collect();
            for (ns, name) in doomed {
                if let Some(obj) = state.get(&storage, &ns, &name) {
                    let rv = state.next_rv();
                    let mut o = (*obj).clone();
                    meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
                    state.remove(&storage, &ns, &name, o, rv);
                }
            }
            state.set_crd_types(&group, &plural, Vec::new());
        }
        _ => {}
    }
    collect_garbage(state, &uid);
}

/// The namespace controller: every namespace whose deletion started at least `grace` ago has
/// its content deleted, and is removed once nothing is left in it (objects held by finalizers
/// keep it Terminating). Returns whether anything changed.
pub fn purge_terminating_namespaces(state: &mut State, grace: chrono::Duration) -> bool {
    let now = chrono::Utc::now();
    let ns_storage: (String, String) = (String::new(), "namespaces".into());
    let due: Vec<Arc<Value>> = state
        .list(&ns_storage, None)
        .into_iter()
        .filter(|ns| {
            ns.pointer("/metadata/deletionTimestamp")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| now - t.with_timezone(&chrono::Utc) >= grace)
        })
        .collect();
    let mut changed = false;
    for ns in due {
        let name = name_of(&ns);
        let content: Vec<(Arc<ResourceType>, String, bool)> = state
            .namespace_content(&name)
            .into_iter()
            .filter_map(|(storage, obj_name)| {
                let deleting = state.get(&storage, &name, &obj_name)?.pointer("/metadata/deletionTimestamp").is_some();
                type_of(state, &storage).map(|t| (t, obj_name, deleting))
            })
            .collect();
        if content.is_empty() {
            let Some(ns_type) = state.types().iter().find(|t| t.special == Special::Namespace).cloned() else {
                continue;
            };
            let rv = state.next_rv();
            let mut last = (*ns).clone();
            meta_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
            // The controller's finalize: the `kubernetes` finalizer leaves spec, which removes
            // the namespace.
            if let Some(spec) = last.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("finalizers");
            }
            let last = state.remove(&ns_storage, "", &name, last, rv);
            after_removal(state, &ns_type, &last);
            changed = true;
            continue;
        }
        for (t, obj_name, deleting) in content {
            if !deleting {
                let _ = delete(state, &t, &name, &obj_name, &background());
                changed = true;
            }
        }
    }
    changed
}

fn background() -> DeleteOptions {
    DeleteOptions { propagation: Propagation::Background, uid: None, resource_version: None, dry_run: false }
}

/// The kind whose objects live in `storage` (the core one for Events, which two kinds share).
fn type_of(state: &State, storage: &StorageKey) -> Option<Arc<ResourceType>> {
    state.types().iter().find(|t| t.storage == *storage && t.special != Special::EventsV1).cloned()
}

/// (kind, namespace, name) of every object with an ownerReference to `uid`, from the owner
/// index: a delete costs what its dependents cost, not a scan of every stored object.
fn dependents(state: &State, uid: &str) -> Vec<(Arc<ResourceType>, String, String)> {
    if uid.is_empty() {
        return Vec::new();
    }
    state
        .dependents_of(uid)
        .into_iter()
        .filter_map(|(storage, ns, name)| type_of(state, &storage).map(|t| (t, ns, name)))
        .collect()
}

/// Rewrites a dependent without the ownerReferences matching `drop`.
fn strip_owner_refs(state: &mut State, rt: &ResourceType, ns: &str, name: &str, drop: &dyn Fn(&Value) -> bool) {
    let Some(obj) = state.get(&rt.storage, ns, name) else { return };
    let mut new = (*obj).clone();
    if let Some(Value::Array(refs)) = new.pointer_mut("/metadata/ownerReferences") {
        refs.retain(|r| !drop(r));
    }
    meta::normalise(&mut new);
    // The garbage collector's patch only removes: nobody owns the dropped references any more.
    super::fields::forget_removed(&rt.merge_schema, &mut new);
    let rv = state.next_rv();
    meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
    state.put(&rt.storage, ns, name, new, EventType::Modified, rv);
}

/// Background garbage collection after the object with `uid` went away: dependents whose
/// owners are all gone are deleted (recursively); the others lose the dangling reference.
fn collect_garbage(state: &mut State, uid: &str) {
    for (t, ns, name) in dependents(state, uid) {
        let Some(obj) = state.get(&t.storage, &ns, &name) else { continue };
        let other_owner_alive =
            obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).is_some_and(|refs| {
                refs.iter()
                    .filter_map(|r| r.get("uid").and_then(Value::as_str))
                    .any(|u| u != uid && state.uid_exists(u))
            });
        if other_owner_alive {
            strip_owner_refs(state, &t, &ns, &name, &|r| r.get("uid").and_then(Value::as_str) == Some(uid));
        } else {
            let _ = delete(state, &t, &ns, &name, &background());
        }
    }
}

fn orphan_dependents(state: &mut State, uid: &str) {
    for (t, ns, name) in dependents(state, uid) {
        strip_owner_refs(state, &t, &ns, &name, &|r| r.get("uid").and_then(Value::as_str) == Some(uid));
    }
}

fn delete_dependents(state: &mut State, uid: &str) {
    for (t, ns, name) in dependents(state, uid) {
        let _ = delete(state, &t, &ns, &name, &background());
    }
}
