//! The server's memory: the served kinds, every object, the global resourceVersion counter and
//! the event history watches read from.
//!
//! All of it sits behind one lock so a write and its watch event are one atomic step: a watch
//! can never see events out of order or miss one that is still in the history. Nothing here
//! does I/O or validation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

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

/// One change, as kept in the history.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Storage the object belongs to.
    pub storage: StorageKey,
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

/// Objects of one storage, by (namespace, name).
pub type Bucket = BTreeMap<(String, String), Arc<Value>>;

/// Everything the server knows.
pub struct State {
    rv: u64,
    types: Vec<Arc<ResourceType>>,
    objects: HashMap<StorageKey, Bucket>,
    history: VecDeque<Change>,
    history_limit: usize,
    history_bytes: usize,
    history_byte_limit: usize,
    /// Every change with an rv above this is in `history`.
    compacted: u64,
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
            history: VecDeque::new(),
            history_limit: limit.max(1),
            history_bytes: 0,
            history_byte_limit: bytes,
            compacted: 1,
        }
    }

    /// The current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can resume from.
    pub fn compacted(&self) -> u64 {
        self.compacted
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
        let Some(bucket) = self.objects.get(storage) else {
            return Vec::new();
        };
        match namespace {
            Some(ns) => bucket
                .range((ns.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => bucket.values().cloned().collect(),
        }
    }

    /// Every storage with its objects (for garbage collection and namespace deletion).
    pub fn buckets(&self) -> impl Iterator<Item = (&StorageKey, &Bucket)> {
        self.objects.iter()
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
        self.record(storage, namespace, kind, object.clone(), previous, rv);
        object
    }

    /// Removes an object; `last` is its final state carrying the deletion's resourceVersion `rv`.
    pub fn remove(&mut self, storage: &StorageKey, namespace: &str, name: &str, last: Value, rv: u64) -> Arc<Value> {
        if let Some(bucket) = self.objects.get_mut(storage) {
            bucket.remove(&(namespace.to_owned(), name.to_owned()));
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
        self.history.push_back(Change {
            rv,
            storage: storage.clone(),
            namespace: namespace.to_owned(),
            kind,
            object,
            previous,
            size,
        });
        while self.history.len() > self.history_limit
            || (self.history_bytes > self.history_byte_limit && self.history.len() > 1)
        {
            let Some(old) = self.history.pop_front() else { break };
            self.history_bytes -= old.size;
            self.compacted = old.rv;
        }
    }

    /// Drops the whole history (an etcd compaction at the current resourceVersion).
    pub fn compact(&mut self) {
        self.history.clear();
        self.history_bytes = 0;
        self.compacted = self.rv;
    }

    /// Changes after `after` (exclusive), oldest first, at most `max`.
    pub fn changes_after(&self, after: u64, max: usize) -> Vec<Change> {
        let start = self.history.partition_point(|c| c.rv <= after);
        self.history.range(start..).take(max).cloned().collect()
    }
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
        assert!(state.changes_after(0, 100).len() <= 2, "history holds ~8 KB of 10 KB");
        assert_eq!(state.compacted(), state.rv() - state.changes_after(0, 100).len() as u64);
        let mut state = State::with_history_limits(100, 10);
        let rv = state.next_rv();
        state.put(&storage, "default", "huge", big, EventType::Added, rv);
        assert_eq!(state.changes_after(0, 100).len(), 1, "the newest change stays, whatever its size");
    }
}
