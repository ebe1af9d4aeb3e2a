//! Field ownership (`metadata.managedFields`) and server-side apply, as structured-merge-diff
//! (the library behind kube-apiserver's field manager) does them: which manager owns which
//! field, conflicts between appliers, merging an applied configuration into the live object,
//! and removal of fields an applier stopped applying.
//!
//! The kind's schema says how each node merges ([`schema::shape`]): objects field by field
//! (unless `x-kubernetes-map-type: atomic`), `x-kubernetes-list-type: map` lists item by item
//! (identified by their key fields, `k:{"name":"app"}` in managedFields), `set` lists member by
//! member (`v:"x"`), every other list whole. Like structured-merge-diff, ownership is recorded
//! for leaves, list items, set members and map entries (a path owned with descendants gets a
//! `"."` marker). Pure functions over JSON.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::meta::now_time;
use super::schema::{self, Shape};

/// One step of a field path, as managedFields spell it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `f:name`: a field of an object.
    Field(String),
    /// `k:{"name":"app"}`: the list-map item with these key fields (compact JSON, sorted fields).
    Key(String),
    /// `v:"x"`: a member of a set (compact JSON).
    Value(String),
}

/// A field path such as `spec` / `containers` / `k:{"name":"app"}` / `image`.
pub type FieldPath = Vec<Step>;

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

/// Compact JSON of a key object with sorted fields (what structured-merge-diff writes).
fn key_text(key: &Map<String, Value>) -> String {
    let mut fields: Vec<(&String, &Value)> = key.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), v)).collect();
    format!("{{{}}}", parts.join(","))
}

/// The paths of `object` a manager owns when it writes it: everything but apiVersion/kind, only
/// labels/annotations/finalizers/ownerReferences of metadata, and `status` only through the
/// status subresource (when status is one).
pub fn owned_set(schema: &Value, object: &Value, status_subresource: bool, subresource: &str) -> BTreeSet<FieldPath> {
    owned_paths(schema, object, status_subresource, subresource, false)
}

/// The maps and lists of [`owned_set`]'s region themselves (non-empty objects, list-maps and
/// sets below the top, `metadata` excepted): structured-merge-diff's comparison counts one as
/// added when it appears, so an Update manager that creates one owns it (the `"."` marker).
///
/// `zero_value` lists the structs (dotted paths) a built-in kind's Go type always has, even
/// empty (`spec` of a Lease): they never appear, so nobody owns them as such.
fn owned_nodes(
    schema: &Value,
    object: &Value,
    status_subresource: bool,
    subresource: &str,
    zero_value: &[&str],
) -> BTreeSet<FieldPath> {
    let mut nodes = owned_paths(schema, object, status_subresource, subresource, true);
    nodes.retain(|path| {
        let dotted: Option<Vec<&str>> =
            path.iter().map(|s| if let Step::Field(f) = s { Some(f.as_str()) } else { None }).collect();
        !dotted.is_some_and(|d| zero_value.contains(&d.join(".").as_str()))
    });
    nodes
}

fn owned_paths(
    schema: &Value,
    object: &Value,
    status_subresource: bool,
    subresource: &str,
    nodes: bool,
) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(obj) = object.as_object() else { return out };
    let status_only = status_subresource && subresource == "status";
    for (k, child) in obj {
        let keep = match k.as_str() {
            "apiVersion" | "kind" => false,
            "metadata" => !status_only,
            "status" => !status_subresource || status_only,
            _ => !status_only,
        };
        let Some(child_schema) = schema::child(schema, k).filter(|_| keep) else { continue };
        let mut path = vec![Step::Field(k.clone())];
        if k == "metadata" {
            let Some(meta) = child.as_object() else { continue };
            for mk in ["generateName", "labels", "annotations", "finalizers", "ownerReferences"] {
                if let (Some(c), Some(s)) = (meta.get(mk), schema::child(child_schema, mk)) {
                    path.push(Step::Field(mk.into()));
                    collect(s, c, &mut path, &mut out, nodes);
                    path.pop();
                }
            }
            continue;
        }
        collect(child_schema, child, &mut path, &mut out, nodes);
    }
    if nodes {
        // Only the nodes: a leaf is no node (what `collect` put in for leaves goes again).
        let leaves = owned_paths(schema, object, status_subresource, subresource, false);
        out.retain(|p| !leaves.contains(p));
    }
    out
}

/// structured-merge-diff's `ToFieldSet`: leaves, empty objects, atomic values, list-map items,
/// set members and map entries (a key that is no declared field).
/// With `nodes`, also the non-empty maps and lists on the way.
fn collect(schema: &Value, v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>, nodes: bool) {
    let node = match schema::shape(schema, v) {
        Shape::Object => v.as_object().is_some_and(|m| !m.is_empty()),
        Shape::Set | Shape::ListMap(_) => v.as_array().is_some_and(|a| !a.is_empty()),
        Shape::Atomic => false,
    };
    if nodes && node && !path.is_empty() {
        out.insert(path.clone());
    }
    match schema::shape(schema, v) {
        Shape::Object => {
            let Some(m) = v.as_object() else { return };
            if m.is_empty() {
                out.insert(path.clone());
            }
            for (k, c) in m {
                // Fields the schema does not know were pruned or refused before this point.
                let Some(child) = schema::child(schema, k) else { continue };
                path.push(Step::Field(k.clone()));
                if schema.get("properties").and_then(|p| p.get(k)).is_none() {
                    out.insert(path.clone());
                }
                collect(child, c, path, out, nodes);
                path.pop();
            }
        }
        Shape::Set => {
            for item in v.as_array().into_iter().flatten() {
                path.push(Step::Value(item.to_string()));
                out.insert(path.clone());
                path.pop();
            }
        }
        Shape::ListMap(keys) => {
            let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
            let Some(item_keys) = items.iter().map(|i| schema::item_key(schema, &keys, i)).collect::<Option<Vec<_>>>()
            else {
                // An item without its key cannot be told apart: the list is owned whole.
                out.insert(path.clone());
                return;
            };
            for (item, key) in items.iter().zip(item_keys) {
                path.push(Step::Key(key_text(&key)));
                out.insert(path.clone());
                collect(schema::items(schema), item, path, out, nodes);
                path.pop();
            }
        }
        Shape::Atomic => {
            out.insert(path.clone());
        }
    }
}

/// Whether `item` is the set member `text` (compact JSON) names.
fn is_member(item: &Value, text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|m| *item == m)
}

/// The value at `path` and its schema.
fn locate<'s, 'v>(schema: &'s Value, v: &'v Value, path: &[Step]) -> Option<(&'s Value, &'v Value)> {
    let (mut schema, mut cur) = (schema, v);
    for step in path {
        (schema, cur) = match step {
            Step::Field(k) => (schema::child(schema, k).unwrap_or_else(|| schema::open()), cur.get(k)?),
            Step::Key(k) => {
                let Shape::ListMap(keys) = schema::shape(schema, cur) else { return None };
                let item = cur
                    .as_array()?
                    .iter()
                    .find(|i| schema::item_key(schema, &keys, i).is_some_and(|ik| key_text(&ik) == *k))?;
                (schema::items(schema), item)
            }
            Step::Value(x) => (schema::items(schema), cur.as_array()?.iter().find(|i| is_member(i, x))?),
        };
    }
    Some((schema, cur))
}

/// The value at `path` (list items found by key, set members by value).
pub fn get_path<'v>(schema: &Value, v: &'v Value, path: &[Step]) -> Option<&'v Value> {
    locate(schema, v, path).map(|(_, v)| v)
}

/// Whether `path` is changed between `a` and `b`: added, removed or, for a leaf, a different
/// value (an object merged field by field is changed only by its own presence: its fields are
/// paths of their own).
fn differs(schema: &Value, a: Option<&Value>, b: &Value, path: &[Step]) -> bool {
    let before = a.and_then(|a| locate(schema, a, path));
    let after = locate(schema, b, path);
    match (before, after) {
        (None, None) => false,
        (Some((s, x)), Some((_, y))) => {
            let granular =
                |v: &Value| v.as_object().is_some_and(|m| !m.is_empty()) && schema::shape(s, v) == Shape::Object;
            !(granular(x) && granular(y)) && x != y
        }
        _ => true,
    }
}

/// Removes the value at `path`; true when something was removed.
fn remove_path(schema: &Value, v: &mut Value, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let Some((parent_schema, _)) = locate(schema, v, parents) else { return false };
    // Resolve the index first (immutable), then remove.
    let target = {
        let Some(parent) = get_path(schema, v, parents) else { return false };
        match last {
            Step::Field(k) => parent.get(k).map(|_| None),
            Step::Key(k) => {
                let Shape::ListMap(keys) = schema::shape(parent_schema, parent) else { return false };
                parent
                    .as_array()
                    .and_then(|a| {
                        a.iter().position(|i| {
                            schema::item_key(parent_schema, &keys, i).is_some_and(|ik| key_text(&ik) == *k)
                        })
                    })
                    .map(Some)
            }
            Step::Value(x) => parent.as_array().and_then(|a| a.iter().position(|i| is_member(i, x))).map(Some),
        }
    };
    let Some(target) = target else { return false };
    let Some(parent) = get_path_mut(schema, v, parents) else { return false };
    match (last, target, parent) {
        (Step::Field(k), None, Value::Object(m)) => m.remove(k).is_some(),
        (_, Some(i), Value::Array(a)) if i < a.len() => {
            a.remove(i);
            true
        }
        _ => false,
    }
}

fn get_path_mut<'a>(schema: &Value, v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    let mut cur = v;
    let mut schema = schema;
    for step in path {
        match step {
            Step::Field(k) => {
                schema = schema::child(schema, k).unwrap_or_else(|| schema::open());
                cur = cur.get_mut(k)?;
            }
            Step::Key(k) => {
                let Shape::ListMap(keys) = schema::shape(schema, cur) else { return None };
                let list_schema = schema;
                schema = schema::items(list_schema);
                cur = cur
                    .as_array_mut()?
                    .iter_mut()
                    .find(|i| schema::item_key(list_schema, &keys, i).is_some_and(|ik| key_text(&ik) == *k))?;
            }
            Step::Value(x) => {
                schema = schema::items(schema);
                cur = cur.as_array_mut()?.iter_mut().find(|i| is_member(i, x))?;
            }
        }
    }
    Some(cur)
}

/// `.spec.template.spec.containers[name="app"].image`, as structured-merge-diff prints a path.
pub fn render_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(f, v)| format!("{f}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Step::Value(x) => out.push_str(&format!("[={x}]")),
        }
    }
    out
}

fn to_fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut cur = &mut root;
        for step in path {
            let name = match step {
                Step::Field(k) => format!("f:{k}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(x) => format!("v:{x}"),
            };
            let entry = cur.entry(name).or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(m) => cur = m,
                _ => break,
            }
        }
    }
    // A member that has members below it carries the "." marker.
    fn mark(node: &mut Map<String, Value>, path: &mut FieldPath, fields: &BTreeSet<FieldPath>) {
        let names: Vec<String> = node.keys().cloned().collect();
        for name in names {
            let step = match name.split_at(2) {
                ("f:", k) => Step::Field(k.to_owned()),
                ("k:", k) => Step::Key(k.to_owned()),
                (_, x) => Step::Value(x.to_owned()),
            };
            path.push(step);
            if let Some(Value::Object(child)) = node.get_mut(&name)
                && !child.is_empty()
            {
                mark(child, path, fields);
                if fields.contains(path) {
                    child.insert(".".into(), json!({}));
                }
            }
            path.pop();
        }
    }
    mark(&mut root, &mut Vec::new(), fields);
    Value::Object(root)
}

fn from_fields_v1(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = v.as_object() else { return };
    if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, c) in m {
        let step = if let Some(name) = k.strip_prefix("f:") {
            Step::Field(name.to_owned())
        } else if let Some(key) = k.strip_prefix("k:") {
            // Normalised, so a key written by a client in another field order still matches.
            match serde_json::from_str::<Map<String, Value>>(key) {
                Ok(key) => Step::Key(key_text(&key)),
                Err(_) => continue,
            }
        } else if let Some(member) = k.strip_prefix("v:") {
            match serde_json::from_str::<Value>(member) {
                Ok(member) => Step::Value(member.to_string()),
                Err(_) => continue,
            }
        } else {
            // `.` was read above; `i:` (an index) makes the list one owned leaf here.
            if k.starts_with("i:") && !path.is_empty() {
                out.insert(path.clone());
            }
            continue;
        };
        path.push(step);
        from_fields_v1(c, path, out);
        path.pop();
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
                        from_fields_v1(f, &mut Vec::new(), &mut fields);
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
    // `sortEncodedManagedFields`: operation (Apply before Update), time (none first), manager,
    // apiVersion, subresource. Times are RFC 3339 in UTC with seconds, so their text sorts.
    managers.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            // An entry whose manager never changed the object has no time (an apply of what
            // was already there, or an entry a client wrote without one).
            if !m.time.is_empty() {
                e["time"] = json!(m.time);
            }
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
    m.api_version = api_version.into();
    m
}

/// Records an Update-operation write (create, PUT, merge/JSON/strategic patch) by `manager`:
/// it takes every field it added or changed from the other managers, and fields it removed
/// leave every manager. `new` carries `old`'s managedFields on entry and the updated ones on
/// return. `zero_value`: see [`owned_nodes`].
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    schema: &Value,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    status_subresource: bool,
    zero_value: &[&str],
) {
    let mut managers = old.map(read_managers).unwrap_or_default();
    let new_set = owned_set(schema, new, status_subresource, subresource);
    let old_set = old.map(|o| owned_set(schema, o, status_subresource, subresource)).unwrap_or_default();
    let new_nodes = owned_nodes(schema, new, status_subresource, subresource, zero_value);
    let old_nodes =
        old.map(|o| owned_nodes(schema, o, status_subresource, subresource, zero_value)).unwrap_or_default();
    // structured-merge-diff's comparison: leaves added or modified, and maps and lists that
    // appeared (a map that was there before is not changed by a change below it).
    // A map that was empty (a leaf) and is filled now, or the other way round, is neither added
    // nor removed nor modified itself.
    let mut changed: BTreeSet<FieldPath> =
        new_set.iter().filter(|p| !old_nodes.contains(*p) && differs(schema, old, new, p)).cloned().collect();
    changed.extend(new_nodes.iter().filter(|p| !old_nodes.contains(*p) && !old_set.contains(*p)).cloned());
    let mut removed: BTreeSet<FieldPath> =
        old_set.iter().filter(|p| !new_set.contains(*p) && !new_nodes.contains(*p)).cloned().collect();
    removed.extend(old_nodes.iter().filter(|p| !new_nodes.contains(*p) && !new_set.contains(*p)).cloned());
    if !changed.is_empty() || !removed.is_empty() {
        for m in managers.iter_mut() {
            m.fields.retain(|p| !changed.contains(p) && !removed.contains(p));
        }
    }
    // Only a write that added or changed something is this manager's (and moves its time).
    if !changed.is_empty() {
        let me = entry(&mut managers, manager, "Update", subresource, api_version);
        me.fields.extend(changed);
        me.time = now_time();
    }
    forget_absent(schema, new, &mut managers);
    write_managers(new, &managers);
}

/// Ownership of what is no longer there goes (a path removed by another route).
fn forget_absent(schema: &Value, object: &Value, managers: &mut [Manager]) {
    for m in managers.iter_mut() {
        m.fields.retain(|p| get_path(schema, object, p).is_some());
    }
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

/// Server-side apply of `config` by `manager` onto `live` (None = create), under the kind's
/// `schema`. Returns the merged object carrying the new managedFields, or the conflicts when
/// `force` is false.
pub fn apply(
    schema: &Value,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: &str,
    status_subresource: bool,
) -> Result<Value, Vec<Conflict>> {
    let api_version = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut managers = live.map(read_managers).unwrap_or_default();
    let applied = owned_set(schema, config, status_subresource, subresource);
    let is_me = |m: &Manager| m.manager == manager && m.operation == "Apply" && m.subresource == subresource;

    let mut patch = config.clone();
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    merge(schema, &mut merged, &patch);

    if let Some(live) = live {
        // What this apply changes: another manager owning any of it is a conflict (the same
        // value applied by two managers is shared ownership, no conflict).
        let changed: Vec<&FieldPath> = applied.iter().filter(|p| differs(schema, Some(live), &merged, p)).collect();
        let mut conflicts = Vec::new();
        for m in managers.iter().filter(|m| !is_me(m)) {
            for path in changed.iter().filter(|p| m.fields.contains(**p)) {
                conflicts.push(Conflict {
                    manager: m.manager.clone(),
                    operation: m.operation.clone(),
                    api_version: m.api_version.clone(),
                    field: render_path(path),
                });
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        for m in managers.iter_mut().filter(|m| !is_me(m)) {
            m.fields.retain(|p| !changed.contains(&p));
        }
    }

    // Fields this manager applied before and omits now go, unless another manager owns them
    // (or something below them).
    let previous: BTreeSet<FieldPath> =
        managers.iter().find(|m| is_me(m)).map(|m| m.fields.clone()).unwrap_or_default();
    for gone in previous.difference(&applied) {
        let kept = managers.iter().filter(|m| !is_me(m)).any(|m| m.fields.iter().any(|p| p.starts_with(gone)))
            || is_key_of_kept_item(schema, &merged, gone)
            || applied.iter().any(|p| p.starts_with(gone));
        if !kept && remove_path(schema, &mut merged, gone) {
            tidy(schema, &mut merged, gone, &managers);
        }
    }
    // An apply that changes nothing in the object leaves its manager's time alone (none for a
    // new manager), as kube-apiserver's field manager does.
    let unchanged = live.is_some_and(|live| without_managed_fields(live) == without_managed_fields(&merged));
    let me = entry(&mut managers, manager, "Apply", subresource, &api_version);
    me.fields = applied;
    if !unchanged {
        me.time = now_time();
    }
    forget_absent(schema, &merged, &mut managers);
    write_managers(&mut merged, &managers);
    Ok(merged)
}

/// Ownership of what `object` no longer holds goes (a write that bypassed the field manager,
/// such as the garbage collector dropping an ownerReference).
pub fn forget_removed(schema: &Value, object: &mut Value) {
    let mut managers = read_managers(object);
    let before: usize = managers.iter().map(|m| m.fields.len()).sum();
    forget_absent(schema, object, &mut managers);
    if managers.iter().map(|m| m.fields.len()).sum::<usize>() != before {
        write_managers(object, &managers);
    }
}

fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    object
}

/// Whether `path` is a key field of a list-map item that stays (an item keeps its key).
fn is_key_of_kept_item(schema: &Value, object: &Value, path: &[Step]) -> bool {
    match path {
        [.., Step::Key(key), Step::Field(field)] => {
            let item = &path[..path.len() - 1];
            get_path(schema, object, item).is_some()
                && serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|k| k.contains_key(field))
        }
        _ => false,
    }
}

/// After a removal, parents left empty by it go too, unless someone owns them.
fn tidy(schema: &Value, object: &mut Value, removed: &[Step], managers: &[Manager]) {
    let mut parent = &removed[..removed.len().saturating_sub(1)];
    // Top-level fields (spec, metadata) stay even when empty.
    while parent.len() > 1 {
        let empty = get_path(schema, object, parent)
            .is_some_and(|v| v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty));
        let owned = managers.iter().any(|m| m.fields.contains(parent));
        if !empty || owned || !remove_path(schema, object, parent) {
            return;
        }
        parent = &parent[..parent.len() - 1];
    }
}

/// Merges an applied configuration into an object: objects field by field (a `null` removes
/// the field), list-map items by key (recursively), set members by value, everything else
/// replaced.
fn merge(schema: &Value, target: &mut Value, patch: &Value) {
    match (schema::shape(schema, patch), target, patch) {
        (Shape::Object, Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                let child = schema::child(schema, k).unwrap_or_else(|| schema::open());
                match t.get_mut(k) {
                    Some(existing) => merge(child, existing, v),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Shape::ListMap(keys), Value::Array(t), Value::Array(p)) => merge_list_map(schema, &keys, t, p),
        (Shape::Set, Value::Array(t), Value::Array(p)) => {
            for member in p {
                if !t.contains(member) {
                    t.push(member.clone());
                }
            }
        }
        (_, t, p) => *t = p.clone(),
    }
}

/// Items of the configuration come in its order, each merged into the live item with its key;
/// live items the configuration does not name stay after the live item they followed (as
/// structured-merge-diff orders a merged associative list).
fn merge_list_map(schema: &Value, keys: &[String], target: &mut Vec<Value>, patch: &[Value]) {
    let key_of = |v: &Value| schema::item_key(schema, keys, v).map(|k| key_text(&k));
    let Some(patch_keys) = patch.iter().map(key_of).collect::<Option<Vec<String>>>() else {
        *target = patch.to_vec();
        return;
    };
    let live = std::mem::take(target);
    let mut leading = Vec::new();
    // Each live item the patch names, with the live-only items after it.
    let mut shared: Vec<(String, Value, Vec<Value>)> = Vec::new();
    for item in live {
        match key_of(&item).filter(|k| patch_keys.contains(k)) {
            Some(k) => shared.push((k, item, Vec::new())),
            None => match shared.last_mut() {
                Some((_, _, after)) => after.push(item),
                None => leading.push(item),
            },
        }
    }
    target.extend(leading);
    let item_schema = schema::items(schema);
    for (key, item) in patch_keys.iter().zip(patch) {
        match shared.iter().position(|(k, _, _)| k == key) {
            Some(i) => {
                let (_, mut existing, after) = shared.remove(i);
                merge(item_schema, &mut existing, item);
                target.push(existing);
                target.extend(after);
            }
            None => target.push(item.clone()),
        }
    }
    for (_, item, after) in shared {
        target.push(item);
        target.extend(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::schema::open;

    #[test]
    fn second_applier_conflicts_and_force_takes_over() {
        let a = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"holder": "a"}});
        let live = apply(open(), None, &a, "a", false, "", false).unwrap_or_default();
        let b = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"holder": "b"}});
        let err = apply(open(), Some(&live), &b, "b", false, "", false).err().unwrap_or_default();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].field, ".spec.holder");
        let forced = apply(open(), Some(&live), &b, "b", true, "", false).unwrap_or_default();
        assert_eq!(forced["spec"]["holder"], "b");
    }

    #[test]
    fn one_owned_field_is_one_conflict() {
        let a = json!({"apiVersion": "v1", "kind": "X", "spec": {"tags": {}}});
        let live = apply(open(), None, &a, "a", false, "", false).unwrap_or_default();
        let b = json!({"apiVersion": "v1", "kind": "X", "spec": {"tags": {"x": "1", "y": "2"}}});
        let err = apply(open(), Some(&live), &b, "b", false, "", false).err().unwrap_or_default();
        assert_eq!(err.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(), [".spec.tags"]);
    }

    #[test]
    fn update_managers_are_capped_by_merging_the_oldest() {
        let mut live = json!({"apiVersion": "v1", "kind": "X", "spec": {}});
        for i in 0..15 {
            let before = live.clone();
            live["spec"][format!("f{i}")] = json!(i);
            record_update(open(), Some(&before), &mut live, &format!("client-{i:02}"), "", "v1", false, &[]);
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
        let live = apply(open(), None, &a, "a", false, "", false).unwrap_or_default();
        let a2 = json!({"apiVersion": "v1", "kind": "X", "spec": {"x": 1}});
        let after = apply(open(), Some(&live), &a2, "a", false, "", false).unwrap_or_default();
        assert!(after["spec"].get("y").is_none());
    }

    fn deployment(manager_env: &[(&str, &str)], image: &str) -> Value {
        let env: Vec<Value> = manager_env.iter().map(|(n, v)| json!({"name": n, "value": v})).collect();
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [
                {"name": "app", "image": image, "env": env, "ports": [{"containerPort": 8080}]}
            ]}}
        }})
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let schema = crate::kube::schema::builtin("apps", "Deployment").unwrap_or_else(|| panic!("schema"));
        let live = apply(&schema, None, &deployment(&[("A", "1"), ("B", "2")], "img:1"), "helm", false, "", false)
            .unwrap_or_else(|c| panic!("{c:?}"));
        let mf = &live["metadata"]["managedFields"][0]["fieldsV1"];
        let container = &mf["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"];
        assert_eq!(container["."], json!({}), "{mf}");
        assert!(container["f:env"]["k:{\"name\":\"A\"}"]["f:value"].is_object(), "{mf}");
        assert!(container["f:ports"]["k:{\"containerPort\":8080,\"protocol\":\"TCP\"}"].is_object(), "{mf}");
        assert_eq!(mf["f:spec"]["f:selector"], json!({}), "the selector is atomic: {mf}");

        // Another manager sets a sidecar container and one env entry of its own: no conflict.
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "C", "value": "3"}]}, {"name": "sidecar", "image": "s:1"}
        ]}}}});
        let live = apply(&schema, Some(&live), &other, "ops", false, "", false).unwrap_or_else(|c| panic!("{c:?}"));
        let containers = &live["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(2));
        assert_eq!(containers[0]["env"].as_array().map(Vec::len), Some(3), "{containers}");

        // A different image from the first manager's conflicts, naming the item by its key.
        let steal = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "img:2"}
        ]}}}});
        let err = apply(&schema, Some(&live), &steal, "ops", false, "", false).err().unwrap_or_default();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].field, ".spec.template.spec.containers[name=\"app\"].image");

        // The first manager drops env B: it goes; C (owned by ops) stays.
        let live = apply(&schema, Some(&live), &deployment(&[("A", "1")], "img:1"), "helm", false, "", false)
            .unwrap_or_else(|c| panic!("{c:?}"));
        let names: Vec<&str> = live["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, ["A", "C"]);
    }

    #[test]
    fn fields_v1_round_trips() {
        let schema = crate::kube::schema::builtin("apps", "Deployment").unwrap_or_else(|| panic!("schema"));
        let d = deployment(&[("A", "1")], "i");
        let set = owned_set(&schema, &d, false, "");
        let mut back = BTreeSet::new();
        from_fields_v1(&to_fields_v1(&set), &mut Vec::new(), &mut back);
        assert_eq!(set, back);
    }
}
