//! Field ownership (`metadata.managedFields`) and server-side apply: which manager owns which
//! field, conflicts between appliers, and removal of fields an applier stopped applying.
//!
//! Simplified on purpose: ownership is tracked per leaf (lists are atomic leaves, whatever their
//! `x-kubernetes-list-type`), and entries carry no `"."` markers. Pure functions over JSON.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::meta::now_time;

/// A field path such as `["spec", "region"]`.
pub type FieldPath = Vec<String>;

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone)]
struct Manager {
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
}

/// Leaf paths of the parts of `v` a manager can own: everything but apiVersion/kind, only
/// labels/annotations/finalizers/ownerReferences of metadata, and `status` only through the
/// status subresource (when status is one).
pub fn owned_leaves(v: &Value, status_subresource: bool, subresource: &str) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(obj) = v.as_object() else { return out };
    for (k, child) in obj {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(c) = child.get(mk) {
                        leaves(c, vec!["metadata".into(), mk.into()], &mut out);
                    }
                }
            }
            "status" if status_subresource && subresource != "status" => {}
            _ if status_subresource && subresource == "status" => {}
            _ => leaves(child, vec![k.clone()], &mut out),
        }
    }
    if status_subresource
        && subresource == "status"
        && let Some(s) = obj.get("status")
    {
        leaves(s, vec!["status".into()], &mut out);
    }
    out
}

fn leaves(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(k.clone());
                leaves(c, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// The value at `path`.
pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Value::Object(m) = cur {
        m.remove(last);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn to_fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut cur = &mut root;
        for k in path {
            let entry = cur.entry(format!("f:{k}")).or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(m) => cur = m,
                _ => break,
            }
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = v.as_object() else { return };
    let mut any = false;
    for (k, c) in m {
        if let Some(name) = k.strip_prefix("f:") {
            any = true;
            let mut p = path.clone();
            p.push(name.to_owned());
            from_fields_v1(c, p, out);
        } else if k != "." {
            // Keyed list items (k:, v:, i:) make the list one atomic leaf here.
            any = true;
            out.insert(path.clone());
        }
    }
    if !any && !path.is_empty() {
        out.insert(path);
    }
}

fn read_managers(object: &Value) -> Vec<Manager> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                    let mut fields = BTreeSet::new();
                    if let Some(f) = e.get("fieldsV1") {
                        from_fields_v1(f, Vec::new(), &mut fields);
                    }
                    Manager {
                        manager: s("manager"),
                        operation: s("operation"),
                        subresource: s("subresource"),
                        api_version: s("apiVersion"),
                        time: s("time"),
                        fields,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How many Update-operation entries an object keeps (`DefaultMaxUpdateManagers` of
/// k8s.io/apiserver's fieldmanager): without a cap, every new client name would grow every
/// object it writes for good.
pub const MAX_UPDATE_MANAGERS: usize = 10;

/// The entry the oldest Update managers are merged into, one per apiVersion.
const ANCIENT_CHANGES: &str = "ancient-changes";

/// `capManagersManager.capUpdateManagers`: while there are more than
/// [`MAX_UPDATE_MANAGERS`] Update entries, the oldest ones (by time, then name) are merged
/// into an `ancient-changes` entry of their apiVersion, which takes the time of the newest
/// entry merged into it.
fn cap_update_managers(managers: &mut Vec<Manager>) {
    let mut updaters: Vec<usize> =
        (0..managers.len()).filter(|&i| managers[i].operation == "Update" && !managers[i].fields.is_empty()).collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters
        .sort_by(|&a, &b| (&managers[a].time, &managers[a].manager).cmp(&(&managers[b].time, &managers[b].manager)));
    let mut length = updaters.len();
    let mut first_of_version: Vec<(String, usize)> = Vec::new();
    let mut merged = vec![false; managers.len()];
    for &i in &updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = managers[i].api_version.clone();
        match first_of_version.iter().find(|(v, _)| *v == version).map(|(_, f)| *f) {
            Some(first) => {
                // `first` becomes (or already is) the version's bucket.
                let fields = std::mem::take(&mut managers[i].fields);
                let time = managers[i].time.clone();
                let bucket = &mut managers[first];
                bucket.manager = ANCIENT_CHANGES.into();
                bucket.subresource = String::new();
                bucket.fields.extend(fields);
                bucket.time = time;
                merged[i] = true;
                length -= 1;
            }
            None => first_of_version.push((version, i)),
        }
    }
    let mut index = 0;
    managers.retain(|_| {
        index += 1;
        !merged[index - 1]
    });
}

fn write_managers(object: &mut Value, managers: &[Manager]) {
    let mut managers = managers.to_vec();
    cap_update_managers(&mut managers);
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    let meta = super::meta::meta_mut(object);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

fn entry<'a>(
    managers: &'a mut Vec<Manager>,
    name: &str,
    op: &str,
    subresource: &str,
    api_version: &str,
) -> &'a mut Manager {
    let pos = managers.iter().position(|m| m.manager == name && m.operation == op && m.subresource == subresource);
    let idx = match pos {
        Some(i) => i,
        None => {
            managers.push(Manager {
                manager: name.into(),
                operation: op.into(),
                subresource: subresource.into(),
                api_version: api_version.into(),
                time: String::new(),
                fields: BTreeSet::new(),
            });
            managers.len() - 1
        }
    };
    let m = &mut managers[idx];
    m.time = now_time();
    m.api_version = api_version.into();
    m
}

/// Records an Update-operation write (create, PUT, merge/JSON/strategic patch) by `manager`:
/// it takes every field it changed from the other managers. `new` carries `old`'s managedFields
/// on entry and the updated ones on return.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    status_subresource: bool,
) {
    let mut managers = old.map(read_managers).unwrap_or_default();
    let new_leaves = owned_leaves(new, status_subresource, subresource);
    let old_leaves = old.map(|o| owned_leaves(o, status_subresource, subresource)).unwrap_or_default();
    let mut changed: BTreeSet<FieldPath> =
        new_leaves.iter().filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p)).cloned().collect();
    changed.extend(old_leaves.difference(&new_leaves).cloned());
    if changed.is_empty() {
        write_managers(new, &managers);
        return;
    }
    for m in managers.iter_mut() {
        if m.manager == manager && m.operation == "Update" && m.subresource == subresource {
            continue;
        }
        m.fields.retain(|p| !changed.iter().any(|c| overlaps(p, c)));
    }
    let me = entry(&mut managers, manager, "Update", subresource, api_version);
    me.fields.extend(changed.into_iter().filter(|p| get_path(new, p).is_some()));
    write_managers(new, &managers);
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// Its operation (`Apply` or `Update`).
    pub operation: String,
    /// Its apiVersion.
    pub api_version: String,
    /// `.spec.region`.
    pub field: String,
}

impl Conflict {
    /// `conflict with "mgr"` (plus `using G/V` for Update managers).
    pub fn owner_text(&self) -> String {
        if self.operation == "Update" {
            format!("conflict with \"{}\" using {}", self.manager, self.api_version)
        } else {
            format!("conflict with \"{}\"", self.manager)
        }
    }
}

/// Server-side apply of `config` by `manager` onto `live` (None = create). Returns the merged
/// object carrying the new managedFields, or the conflicts when `force` is false.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: &str,
    status_subresource: bool,
) -> Result<Value, Vec<Conflict>> {
    let api_version = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut managers = live.map(read_managers).unwrap_or_default();
    let applied = owned_leaves(config, status_subresource, subresource);
    let is_me = |m: &Manager| m.manager == manager && m.operation == "Apply" && m.subresource == subresource;

    if let Some(live) = live {
        let mut conflicts = Vec::new();
        for path in &applied {
            if get_path(live, path) == get_path(config, path) {
                continue;
            }
            for m in managers.iter().filter(|m| !is_me(m)) {
                if let Some(owned) = m.fields.iter().find(|p| overlaps(p, path)) {
                    let field = format!(".{}", owned.join("."));
                    // Several applied leaves under one owned leaf (an atomic list, an object
                    // owned whole) are one conflict, as structured-merge-diff reports it.
                    if conflicts.iter().any(|c: &Conflict| c.manager == m.manager && c.field == field) {
                        continue;
                    }
                    conflicts.push(Conflict {
                        manager: m.manager.clone(),
                        operation: m.operation.clone(),
                        api_version: m.api_version.clone(),
                        field,
                    });
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        if force {
            for m in managers.iter_mut().filter(|m| !is_me(m)) {
                m.fields
                    .retain(|p| !applied.iter().any(|a| overlaps(p, a) && get_path(live, a) != get_path(config, a)));
            }
        }
    }

    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let previous: BTreeSet<FieldPath> =
        managers.iter().find(|m| is_me(m)).map(|m| m.fields.clone()).unwrap_or_default();
    for gone in previous.difference(&applied) {
        let owned_by_other = managers.iter().filter(|m| !is_me(m)).any(|m| m.fields.iter().any(|p| overlaps(p, gone)));
        if !owned_by_other {
            remove_path(&mut result, gone);
        }
    }
    let mut patch = config.clone();
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    deep_merge(&mut result, &patch);
    let me = entry(&mut managers, manager, "Apply", subresource, &api_version);
    me.fields = applied;
    write_managers(&mut result, &managers);
    Ok(result)
}

/// Merges `patch` into `target`: objects recursively, everything else (lists included) replaced.
fn deep_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => deep_merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_applier_conflicts_and_force_takes_over() {
        let a = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"holder": "a"}});
        let live = apply(None, &a, "a", false, "", false).unwrap_or_default();
        let b = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"holder": "b"}});
        let err = apply(Some(&live), &b, "b", false, "", false).err().unwrap_or_default();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].field, ".spec.holder");
        let forced = apply(Some(&live), &b, "b", true, "", false).unwrap_or_default();
        assert_eq!(forced["spec"]["holder"], "b");
    }

    #[test]
    fn one_owned_field_is_one_conflict() {
        let a = json!({"apiVersion": "v1", "kind": "X", "spec": {"tags": {}}});
        let live = apply(None, &a, "a", false, "", false).unwrap_or_default();
        let b = json!({"apiVersion": "v1", "kind": "X", "spec": {"tags": {"x": "1", "y": "2"}}});
        let err = apply(Some(&live), &b, "b", false, "", false).err().unwrap_or_default();
        assert_eq!(err.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(), [".spec.tags"]);
    }

    #[test]
    fn update_managers_are_capped_by_merging_the_oldest() {
        let mut live = json!({"apiVersion": "v1", "kind": "X", "spec": {}});
        for i in 0..15 {
            let before = live.clone();
            live["spec"][format!("f{i}")] = json!(i);
            record_update(Some(&before), &mut live, &format!("client-{i:02}"), "", "v1", false);
        }
        let entries = live["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), MAX_UPDATE_MANAGERS);
        let ancient: Vec<&Value> = entries.iter().filter(|e| e["manager"] == ANCIENT_CHANGES).collect();
        assert_eq!(ancient.len(), 1, "{entries:?}");
        // The merged entry owns what the merged managers owned: nothing is lost.
        let owned: usize = entries.iter().map(|e| e["fieldsV1"]["f:spec"].as_object().map_or(0, |m| m.len())).sum();
        assert_eq!(owned, 15);
    }

    #[test]
    fn dropped_fields_are_removed() {
        let a = json!({"apiVersion": "v1", "kind": "X", "spec": {"x": 1, "y": 2}});
        let live = apply(None, &a, "a", false, "", false).unwrap_or_default();
        let a2 = json!({"apiVersion": "v1", "kind": "X", "spec": {"x": 1}});
        let after = apply(Some(&live), &a2, "a", false, "", false).unwrap_or_default();
        assert!(after["spec"].get("y").is_none());
    }
}
