//! Which changes of an object start a reconcile: what a person or a GitOps tool asks (the spec,
//! through `metadata.generation`), a deletion request, the finalizers, the labels and the
//! annotations (the pause annotation among them). A change of `status` alone does not: the
//! operator writes it, and each write used to come back as one more reconcile of an object
//! that was waiting anyway (about one in three of the reconciles until Ready at N = 1,000).
//! What the cloud changes wakes an object through the fleet view's waiters instead, and every
//! object is looked at again each resync whatever happened.

use std::hash::{DefaultHasher, Hash, Hasher};

use kube::Resource;

/// The hash of what starts a reconcile when it changes. Never `None`, so kube-runtime's
/// predicate filter passes an object the first time it sees it (and after its TTL).
pub fn trigger_hash<K: Resource>(object: &K) -> Option<u64> {
    let meta = object.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn object() -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.generation = Some(1);
        o.metadata.resource_version = Some("10".into());
        o
    }

    #[test]
    fn only_what_asks_for_work_changes_the_trigger() {
        let base = trigger_hash(&object());
        let mut status_only = object();
        status_only.metadata.resource_version = Some("11".into());
        status_only.data = Some([("k".to_owned(), "v".to_owned())].into());
        assert_eq!(trigger_hash(&status_only), base, "a new version alone (our status write) starts nothing");

        let changes: [fn(&mut ConfigMap); 5] = [
            |o| o.metadata.generation = Some(2),
            |o| o.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            |o| o.metadata.finalizers = Some(vec!["crabglamp.com/cleanup".into()]),
            |o| o.metadata.labels = Some([("crabglamp.com/shard".to_owned(), "b".to_owned())].into()),
            |o| o.metadata.annotations = Some([("crabglamp.com/paused".to_owned(), "true".to_owned())].into()),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut o = object();
            change(&mut o);
            assert_ne!(trigger_hash(&o), base, "change {i} starts a reconcile");
        }
    }
}
