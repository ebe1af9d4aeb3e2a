//! Reflector caches that hold what the reconcilers read and nothing the API server keeps for
//! itself: managed fields and kubectl's last-applied annotation are dropped before an object
//! is stored (they are often larger than the spec, and the operator never reads them), and
//! owned Secrets are watched as metadata only (their data, a key, is never needed to know
//! which VirtualKey to look at again). At 5,000 objects per kind this is what keeps the
//! operator's memory small.

use std::fmt::Debug;
use std::hash::Hash;

use futures::TryStreamExt;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::controllers::reconcile::trigger::trigger_hash;

/// The annotation `kubectl apply` writes: a whole copy of the last applied manifest.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reconciler reads from an object's metadata.
pub fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// `Controller::new`, with the cache trimmed and only the changes of
/// [`trigger_hash`] starting a reconcile (the cache still holds every version).
pub fn controller<K>(api: Api<K>, config: watcher::Config) -> Controller<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let writer = reflector::store::Writer::<K>::default();
    let reader = writer.as_reader();
    // The same backoff `Controller::new` gives its watcher: an API outage is retried, not spun on.
    let stream = reflector(writer, watcher(api, config).default_backoff().modify(trim::<K>))
        .applied_objects()
        .predicate_filter(trigger_hash::<K>, PredicateConfig::default());
    Controller::for_stream(stream, reader)
}

/// Owned objects of `Child` as triggers, watched as metadata only (owner references are all
/// the controller needs from them). `observe` sees every watch event first.
pub fn owns_metadata<K, Child>(
    controller: Controller<K>,
    api: Api<PartialObjectMeta<Child>>,
    config: watcher::Config,
    observe: impl Fn(&watcher::Event<PartialObjectMeta<Child>>) + Send + 'static,
) -> Controller<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Debug + Unpin,
    Child: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|m| {
            m.metadata.managed_fields = None;
        })
        .inspect_ok(observe);
    controller.owns_stream(stream.touched_objects())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn trimming_keeps_what_reconcilers_read() {
        let mut secret = Secret::default();
        secret.metadata.name = Some("k".into());
        secret.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        secret.metadata.annotations = Some(
            [(LAST_APPLIED.to_owned(), "{}".to_owned()), ("crabglamp.com/paused".to_owned(), "true".to_owned())].into(),
        );
        trim(&mut secret);
        assert_eq!(secret.metadata.managed_fields, None);
        let annotations = secret.metadata.annotations.unwrap_or_default();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations.get("crabglamp.com/paused").map(String::as_str), Some("true"));
        assert_eq!(secret.metadata.name.as_deref(), Some("k"));
    }
}
