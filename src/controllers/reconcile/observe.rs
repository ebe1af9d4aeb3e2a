//! What the controllers' caches tell about the work: objects by kind and phase, how many
//! objects wait for a reconcile, and whether every cache has seen its first complete list
//! (readiness). Filled at each scrape from the reflector stores, so the figures are never
//! older than the scrape and cost nothing between scrapes.
//!
//! Queue depth: kube-runtime's controller does not expose its scheduler, so it is counted
//! here. An object waits when the cache holds a version of it whose trigger
//! ([`trigger_hash`]: a new object, a spec change, a deletion request, finalizers, labels,
//! annotations) no reconcile has started on yet: each one a watch event the controller has
//! queued. A status change alone queues nothing, so it is not counted. Timer requeues (the
//! periodic resync, a backoff) and fleet wakes are scheduled work, not backlog, and are not
//! counted; an object whose reconcile runs is not waiting.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::controllers::metrics::{ControllerMetrics, KindLabel, KindPhase};
use crate::controllers::reconcile::trigger::trigger_hash;

/// One kind's cache, as the scrape reads it.
trait CacheView: Send + Sync {
    fn kind(&self) -> &'static str;
    /// `(uid, trigger hash, phase)` of every cached object.
    fn snapshot(&self) -> Vec<(String, Option<u64>, String)>;
    fn synced(&self) -> bool;
}

struct StoreView<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    kind: &'static str,
    store: Store<K>,
    phase: fn(&K) -> String,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static> CacheView for StoreView<K> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn snapshot(&self) -> Vec<(String, Option<u64>, String)> {
        self.store
            .state()
            .iter()
            .map(|o| (o.uid().unwrap_or_default(), trigger_hash(o.as_ref()), (self.phase)(o)))
            .collect()
    }

    fn synced(&self) -> bool {
        // Ready once the first list completed; polled once, never waited for.
        futures::FutureExt::now_or_never(self.store.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

/// The controllers' caches and the version of each object a reconcile last started on.
#[derive(Default)]
pub struct Observer {
    caches: Mutex<Vec<Box<dyn CacheView>>>,
    /// Per UID: the trigger hash of the version the last reconcile started on.
    started: Mutex<HashMap<String, Option<u64>>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Observer {
    /// Watches one controller's cache (`phase` names an object's phase for the gauge).
    pub fn watch<K>(&self, kind: &'static str, store: Store<K>, phase: fn(&K) -> String)
    where
        K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let view = StoreView { kind, store, phase };
        self.caches.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Box::new(view));
    }

    /// A reconcile starts on this version of the object.
    pub fn started<K: kube::Resource>(&self, object: &K) {
        let uid = object.meta().uid.clone().unwrap_or_default();
        self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(uid, trigger_hash(object));
    }

    /// Whether every controller's cache has seen its first complete list (false before any
    /// controller started: a standby has none).
    pub fn synced(&self) -> bool {
        let caches = self.caches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        !caches.is_empty() && caches.iter().all(|c| c.synced())
    }

    /// Sets the `objects` and `queue_depth` gauges from the caches, as of now.
    pub fn fill(&self, metrics: &ControllerMetrics) {
        let caches = self.caches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut started = self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut objects: HashMap<KindPhase, i64> = HashMap::new();
        let mut queued: HashMap<&'static str, i64> = HashMap::new();
        let mut live = std::collections::HashSet::new();
        for cache in caches.iter() {
            let kind = cache.kind();
            queued.entry(kind).or_insert(0);
            for (uid, version, phase) in cache.snapshot() {
                *objects.entry(KindPhase { kind: kind.to_owned(), phase }).or_insert(0) += 1;
                if started.get(&uid) != Some(&version) {
                    *queued.entry(kind).or_insert(0) += 1;
                }
                live.insert(uid);
            }
        }
        // Objects gone from every cache need no memory.
        started.retain(|uid, _| live.contains(uid));
        metrics.objects.clear();
        for (labels, n) in objects {
            metrics.objects.get_or_create(&labels).set(n);
        }
        for (kind, n) in queued {
            metrics.queue_depth.get_or_create(&KindLabel { kind: kind.to_owned() }).set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Agent;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn agent(uid: &str, version: &str) -> Agent {
        let mut a: Agent = serde_json::from_value(serde_json::json!({
            "apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid, "resourceVersion": version},
            "spec": {"owner": "o", "region": "eu", "serverType": "cpx22", "image": "i", "running": true,
                     "tunnel": {"service": "http://localhost:8080"}}
        }))
        .expect("agent");
        a.metadata.resource_version = Some(version.into());
        a
    }

    #[tokio::test]
    async fn changed_and_new_objects_wait_until_a_reconcile_starts_on_their_version() {
        let (reader, mut writer) = store::<Agent>();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(agent("a", "1")));
        writer.apply_watcher_event(&Event::InitApply(agent("b", "1")));
        writer.apply_watcher_event(&Event::InitDone);
        let observer = Observer::default();
        observer.watch("Agent", reader, |_| "Pending".to_owned());
        let metrics = ControllerMetrics::default();
        let depth = |m: &ControllerMetrics| m.queue_depth.get_or_create(&KindLabel { kind: "Agent".into() }).get();

        assert!(observer.synced(), "the first list is complete");
        observer.fill(&metrics);
        assert_eq!(depth(&metrics), 2, "never reconciled");
        observer.started(&agent("a", "1"));
        observer.fill(&metrics);
        assert_eq!(depth(&metrics), 1);
        writer.apply_watcher_event(&Event::Apply(agent("a", "2")));
        observer.fill(&metrics);
        assert_eq!(depth(&metrics), 1, "a status write queues nothing");
        let mut edited = agent("a", "3");
        edited.metadata.generation = Some(2);
        writer.apply_watcher_event(&Event::Apply(edited));
        observer.fill(&metrics);
        assert_eq!(depth(&metrics), 2, "a spec change queues it again");
        let pending = metrics.objects.get_or_create(&KindPhase { kind: "Agent".into(), phase: "Pending".into() }).get();
        assert_eq!(pending, 2);
    }
}
