//! The server's memory: the served kinds, every object, the global resourceVersion counter, the
//! event history watches read from, the list snapshots `continue` tokens pin, the owner index
//! garbage collection reads and the expiry queue of Events.
//!
//! All of it sits behind one lock so a write and its watch event are one atomic step: a watch
//! can never see events out of order or miss one that is still in the history. Nothing here
//! does I/O, validation or rendering, and nothing here may cost more than O(log n) per write
//! in the number of stored objects: objects live in persistent maps ([`imbl::OrdMap`]) so a
//! snapshot of a whole kind is an O(1) clone that later writes never disturb.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::resource::{ResourceType, StorageKey, builtins};

/// How many changes the history keeps (memory stays bounded in a long-running sandbox); a watch
/// resumed from before them gets `410 Expired`, as after an etcd compaction.
pub const HISTORY_LIMIT: usize = 25_000;

/// How many bytes (estimated) of objects the history keeps: the count alone would let 25,000
/// versions of multi-megabyte Secrets pile up.
pub const HISTORY_BYTES: usize = 256 * 1024 * 1024;

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed (carries its last state with the deletion's resourceVersion).
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in its storage's history.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (before it, for DELETED, with the new resourceVersion).
    pub object: Arc<Value>,
    /// The object before a MODIFIED change (lets a watch turn a selector transition into
    /// ADDED or DELETED, as real servers do).
    pub previous: Option<Arc<Value>>,
    /// Estimated bytes of `object` (`previous` is counted with the change that stored it).
    size: usize,
}

/// Objects of one storage, by (namespace, name): a persistent map, so cloning it is O(1) and
/// the clone is a snapshot.
pub type Bucket = imbl::OrdMap<(String, String), Arc<Value>>;

/// The objects of `bucket` in namespace `ns` (all of them for `None`), in (namespace, name)
/// order.
pub fn in_namespace<'a>(
    bucket: &'a Bucket,
    ns: Option<&'a str>,
) -> Box<dyn Iterator<Item = &'a Arc<Value>> + Send + 'a> {
    match ns {
        Some(ns) => Box::new(
            bucket.range((ns.to_owned(), String::new())..).take_while(move |((n, _), _)| n == ns).map(|(_, v)| v),
        ),
        None => Box::new(bucket.values()),
    }
}

/// Where an object is stored.
pub type ObjectKey = (StorageKey, String, String);

/// How long a `continue` token stays usable by default: etcd compacts every five minutes in
/// kube-apiserver's default setup (`--etcd-compaction-interval`), after which a token of an
/// older revision gets `410 Expired`.
pub const CONTINUE_TTL: Duration = Duration::from_secs(300);

/// How many list snapshots (one per paged list in progress) are kept at most by default.
pub const CONTINUE_SNAPSHOTS: usize = 1024;

/// How long an Event lives after its last write by default (kube-apiserver's `--event-ttl`).
pub const EVENT_TTL: Duration = Duration::from_secs(3600);

/// The storage of Events (core/v1 and events.k8s.io/v1 share it).
fn events_storage() -> StorageKey {
    (String::new(), "events".into())
}

/// The snapshots paged lists continue from, oldest first.
struct Snapshots {
    kept: VecDeque<(StorageKey, u64, Instant, Bucket)>,
    ttl: Duration,
    limit: usize,
}

impl Snapshots {
    fn expire(&mut self, now: Instant) {
        while self.kept.len() > self.limit
            || self.kept.front().is_some_and(|(_, _, at, _)| now.saturating_duration_since(*at) > self.ttl)
        {
            self.kept.pop_front();
        }
    }
}

/// The changes of one storage.
#[derive(Default)]
struct History {
    changes: VecDeque<Change>,
    /// Every change of this storage with an rv above this is in `changes`.
    compacted: u64,
}

/// Everything the server knows.
pub struct State {
    rv: u64,
    types: Vec<Arc<ResourceType>>,
    objects: HashMap<StorageKey, Bucket>,
    /// The changes of each storage, oldest first: a watch reads only its own kind's.
    histories: HashMap<StorageKey, History>,
    /// The storage of every change kept, oldest first (the global eviction order).
    history_order: VecDeque<StorageKey>,
    history_limit: usize,
    history_bytes: usize,
    history_byte_limit: usize,
    /// The newest resourceVersion evicted from any history (or compacted away).
    compacted: u64,
    /// The resourceVersion of the last compaction of every history ([`Self::compact`]).
    floor: u64,
    /// Wakes the watches of one storage when it changes (so a write wakes only the watches
    /// of its kind).
    wakers: HashMap<StorageKey, tokio::sync::watch::Sender<u64>>,
    snapshots: Snapshots,
    /// uid → where the object is.
    uids: HashMap<String, ObjectKey>,
    /// Owner uid → its dependents (objects with an ownerReference to it).
    dependents: HashMap<String, BTreeSet<ObjectKey>>,
    event_ttl: Duration,
    /// (expiry, namespace, name) of every Event, soonest first.
    event_expiry: BTreeSet<(Instant, String, String)>,
    /// (namespace, name) → expiry, to find an Event's entry in `event_expiry`.
    event_deadline: HashMap<(String, String), Instant>,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// An empty server with the built-in kinds.
    pub fn new() -> Self {
        Self::with_history_limit(HISTORY_LIMIT)
    }

    /// An empty server whose watch history keeps `limit` changes.
    pub fn with_history_limit(limit: usize) -> Self {
        Self::with_history_limits(limit, HISTORY_BYTES)
    }

    /// An empty server whose watch history keeps at most `limit` changes and `bytes` bytes
    /// (estimated) of objects; the newest change is always kept.
    pub fn with_history_limits(limit: usize, bytes: usize) -> Self {
        Self {
            rv: 1,
            types: builtins().into_iter().map(Arc::new).collect(),
            objects: HashMap::new(),
            histories: HashMap::new(),
            history_order: VecDeque::new(),
            history_limit: limit.max(1),
            history_bytes: 0,
            history_byte_limit: bytes,
            compacted: 1,
            floor: 1,
            wakers: HashMap::new(),
            snapshots: Snapshots { kept: VecDeque::new(), ttl: CONTINUE_TTL, limit: CONTINUE_SNAPSHOTS },
            uids: HashMap::new(),
            dependents: HashMap::new(),
            event_ttl: EVENT_TTL,
            event_expiry: BTreeSet::new(),
            event_deadline: HashMap::new(),
        }
    }

    /// How long, and how many, list snapshots are kept for `continue` tokens.
    pub fn set_snapshot_limits(&mut self, ttl: Duration, count: usize) {
        self.snapshots.ttl = ttl;
        self.snapshots.limit = count;
    }

    /// How long an Event lives after its last write.
    pub fn set_event_ttl(&mut self, ttl: Duration) {
        self.event_ttl = ttl;
    }

    /// The current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can resume from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// The oldest resourceVersion a watch of `storage` can resume from: changes of other kinds
    /// leaving the history do not expire it.
    pub fn compacted_for(&self, storage: &StorageKey) -> u64 {
        // A storage without history has lost nothing since the last compaction of all.
        self.histories.get(storage).map_or(1, |h| h.compacted).max(self.floor)
    }

    /// A receiver that changes whenever `storage` does.
    pub fn subscribe(&mut self, storage: &StorageKey) -> tokio::sync::watch::Receiver<u64> {
        let rv = self.rv;
        self.wakers.entry(storage.clone()).or_insert_with(|| tokio::sync::watch::channel(rv).0).subscribe()
    }

    /// Every served kind.
    pub fn types(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// The kind served at `group/version` under `plural`.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    /// Replaces every kind of `group`/`plural` (a CRD was written) with `new`.
    pub fn set_crd_types(&mut self, group: &str, plural: &str, new: Vec<ResourceType>) {
        self.types.retain(|t| !(t.group == group && t.plural == plural && t.is_custom()));
        self.types.extend(new.into_iter().map(Arc::new));
    }

    /// Reserves the next resourceVersion.
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// One object.
    pub fn get(&self, storage: &StorageKey, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects.get(storage).and_then(|b| b.get(&(namespace.to_owned(), name.to_owned()))).cloned()
    }

    /// Every object of a storage, optionally of one namespace, in (namespace, name) order.
    pub fn list(&self, storage: &StorageKey, namespace: Option<&str>) -> Vec<Arc<Value>> {
        match self.objects.get(storage) {
            Some(bucket) => in_namespace(bucket, namespace).cloned().collect(),
            None => Vec::new(),
        }
    }

    /// A snapshot of a storage's objects at the current resourceVersion (O(1)).
    pub fn bucket(&self, storage: &StorageKey) -> Bucket {
        self.objects.get(storage).cloned().unwrap_or_default()
    }

    /// (storage, name) of every object in namespace `ns`, whatever its kind.
    pub fn namespace_content(&self, ns: &str) -> Vec<(StorageKey, String)> {
        self.objects
            .iter()
            .flat_map(|(storage, bucket)| {
                in_namespace(bucket, Some(ns)).map(move |o| {
                    let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                    (storage.clone(), name.to_owned())
                })
            })
            .collect()
    }

    /// Keeps `bucket`, the objects of `storage` at resourceVersion `rv`, for the `continue`
    /// tokens of a paged list; the oldest snapshots go first when there are too many.
    pub fn keep_snapshot(&mut self, storage: &StorageKey, rv: u64, bucket: Bucket) {
        let now = Instant::now();
        if !self.snapshots.kept.iter().any(|(s, r, _, _)| *r == rv && s == storage) {
            self.snapshots.kept.push_back((storage.clone(), rv, now, bucket));
        }
        self.snapshots.expire(now);
    }

    /// The snapshot of `storage` at `rv`, if it is still kept.
    pub fn snapshot(&mut self, storage: &StorageKey, rv: u64) -> Option<Bucket> {
        self.snapshots.expire(Instant::now());
        self.snapshots.kept.iter().rev().find(|(s, r, _, _)| *r == rv && s == storage).map(|(_, _, _, b)| b.clone())
    }

    /// Whether an object with this uid exists.
    pub fn uid_exists(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// Where the objects with an ownerReference to `uid` are.
    pub fn dependents_of(&self, uid: &str) -> Vec<ObjectKey> {
        self.dependents.get(uid).map(|d| d.iter().cloned().collect()).unwrap_or_default()
    }

    fn unindex(&mut self, key: &ObjectKey, object: &Value) {
        if let Some(uid) = object.pointer("/metadata/uid").and_then(Value::as_str) {
            self.uids.remove(uid);
        }
        for owner in owner_uids(object) {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
        if key.0 == events_storage()
            && let Some(at) = self.event_deadline.remove(&(key.1.clone(), key.2.clone()))
        {
            self.event_expiry.remove(&(at, key.1.clone(), key.2.clone()));
        }
    }

    fn index(&mut self, key: &ObjectKey, object: &Value) {
        if let Some(uid) = object.pointer("/metadata/uid").and_then(Value::as_str) {
            self.uids.insert(uid.to_owned(), key.clone());
        }
        for owner in owner_uids(object) {
            self.dependents.entry(owner.to_owned()).or_default().insert(key.clone());
        }
        // As kube-apiserver does with an etcd lease per write: every write of an Event starts
        // its TTL anew.
        if key.0 == events_storage() {
            let at = Instant::now().checked_add(self.event_ttl).unwrap_or_else(Instant::now);
            self.event_deadline.insert((key.1.clone(), key.2.clone()), at);
            self.event_expiry.insert((at, key.1.clone(), key.2.clone()));
        }
    }

    /// Deletes every Event whose TTL ran out by `now`, as etcd does when an Event's lease
    /// expires (watchers see DELETED). Returns whether any went.
    pub fn expire_events(&mut self, now: Instant) -> bool {
        let storage = events_storage();
        let mut any = false;
        while let Some((at, ns, name)) = self.event_expiry.first().cloned() {
            if at > now {
                break;
            }
            self.event_expiry.remove(&(at, ns.clone(), name.clone()));
            self.event_deadline.remove(&(ns.clone(), name.clone()));
            let Some(obj) = self.get(&storage, &ns, &name) else { continue };
            let rv = self.next_rv();
            let mut last = (*obj).clone();
            if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), json!(rv.to_string()));
            }
            self.remove(&storage, &ns, &name, last, rv);
            any = true;
        }
        any
    }

    /// Stores `object` (whose resourceVersion is already `rv`) and records the change.
    pub fn put(
        &mut self,
        storage: &StorageKey,
        namespace: &str,
        name: &str,
        object: Value,
        kind: EventType,
        rv: u64,
    ) -> Arc<Value> {
        let object = Arc::new(object);
        let previous = self
            .objects
            .entry(storage.clone())
            .or_default()
            .insert((namespace.to_owned(), name.to_owned()), object.clone());
        let key = (storage.clone(), namespace.to_owned(), name.to_owned());
        if let Some(previous) = &previous {
            self.unindex(&key, previous);
        }
        self.index(&key, &object);
        self.record(storage, namespace, kind, object.clone(), previous, rv);
        object
    }

    /// Removes an object; `last` is its final state carrying the deletion's resourceVersion `rv`.
    pub fn remove(&mut self, storage: &StorageKey, namespace: &str, name: &str, last: Value, rv: u64) -> Arc<Value> {
        let removed = self.objects.get_mut(storage).and_then(|b| b.remove(&(namespace.to_owned(), name.to_owned())));
        if let Some(removed) = removed {
            self.unindex(&(storage.clone(), namespace.to_owned(), name.to_owned()), &removed);
        }
        let last = Arc::new(last);
        self.record(storage, namespace, EventType::Deleted, last.clone(), None, rv);
        last
    }

    fn record(
        &mut self,
        storage: &StorageKey,
        namespace: &str,
        kind: EventType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
        rv: u64,
    ) {
        let previous = if kind == EventType::Modified { previous } else { None };
        let size = approx_size(&object);
        self.history_bytes += size;
        self.histories.entry(storage.clone()).or_default().changes.push_back(Change {
            rv,
            namespace: namespace.to_owned(),
            kind,
            object,
            previous,
            size,
        });
        self.history_order.push_back(storage.clone());
        if let Some(waker) = self.wakers.get(storage) {
            waker.send_replace(rv);
        }
        while self.history_order.len() > self.history_limit
            || (self.history_bytes > self.history_byte_limit && self.history_order.len() > 1)
        {
            let Some(oldest) = self.history_order.pop_front() else { break };
            let Some(history) = self.histories.get_mut(&oldest) else { continue };
            let Some(old) = history.changes.pop_front() else { continue };
            history.compacted = old.rv;
            self.history_bytes -= old.size;
            self.compacted = self.compacted.max(old.rv);
        }
    }

    /// Drops the whole history (an etcd compaction at the current resourceVersion).
    pub fn compact(&mut self) {
        self.histories.clear();
        self.history_order.clear();
        self.history_bytes = 0;
        self.compacted = self.rv;
        self.floor = self.rv;
    }

    /// Changes of `storage` after `after` (exclusive), oldest first, at most `max`.
    pub fn changes_after(&self, storage: &StorageKey, after: u64, max: usize) -> Vec<Change> {
        let Some(history) = self.histories.get(storage) else { return Vec::new() };
        let start = history.changes.partition_point(|c| c.rv <= after);
        history.changes.range(start..).take(max).cloned().collect()
    }
}

/// The uids an object's ownerReferences name.
fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

/// Roughly the heap bytes of a JSON value: cheap enough for every write (no serialisation),
/// and iterative, so a deeply nested object cannot exhaust the stack.
fn approx_size(v: &Value) -> usize {
    const NODE: usize = 32;
    let mut total = 0;
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        total += NODE;
        match v {
            Value::String(s) => total += s.len(),
            Value::Array(items) => pending.extend(items),
            Value::Object(fields) => {
                for (k, child) in fields {
                    total += k.len() + NODE;
                    pending.push(child);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_is_bounded_by_bytes_but_keeps_the_newest_change() {
        let mut state = State::with_history_limits(100, 10_000);
        let storage: StorageKey = (String::new(), "configmaps".into());
        let big = json!({"data": {"k": "x".repeat(4_000)}});
        for i in 0..10 {
            let rv = state.next_rv();
            state.put(&storage, "default", &format!("cm-{i}"), big.clone(), EventType::Added, rv);
        }
        assert!(state.changes_after(&storage, 0, 100).len() <= 2, "history holds ~8 KB of 10 KB");
        assert_eq!(state.compacted(), state.rv() - state.changes_after(&storage, 0, 100).len() as u64);
        assert_eq!(state.compacted_for(&storage), state.compacted());
        assert_eq!(state.compacted_for(&(String::new(), "secrets".into())), 1, "no Secret change was lost");
        let mut state = State::with_history_limits(100, 10);
        let rv = state.next_rv();
        state.put(&storage, "default", "huge", big, EventType::Added, rv);
        assert_eq!(state.changes_after(&storage, 0, 100).len(), 1, "the newest change stays, whatever its size");
    }
}
