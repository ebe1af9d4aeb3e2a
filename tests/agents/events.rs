//! Events as `kubectl describe` and `kubectl get events` read them: one `events.k8s.io/v1`
//! Event per first occurrence, its `series` counted when the same Event repeats, a new Event
//! for another reason or another object, and a new one again when the first was deleted.

use crabglamp_operator::controllers::events::EventPublisher;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};

use super::fixture::*;

fn agent_ref(name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("crabglamp.com/v1".into()),
        kind: Some("Agent".into()),
        namespace: Some("ev".into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
        ..ObjectReference::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_counts_in_the_series_of_the_first_event() {
    let op = Operator::start().await;
    op.create_namespace("ev").await;
    let events = EventPublisher::new(op.client.clone(), "crabglamp-operator", "test-0");
    let api: Api<Event> = Api::namespaced(op.client.clone(), "ev");
    let publish = |name: &'static str, uid: &'static str, reason: &'static str| {
        events.publish(agent_ref(name, uid), true, reason, "CreateServer", format!("{reason} happened."))
    };

    publish("a", "u-a", "QuotaExceeded").await.expect("first");
    publish("a", "u-a", "QuotaExceeded").await.expect("repeat");
    publish("a", "u-a", "QuotaExceeded").await.expect("repeat");
    publish("a", "u-a", "ServerCreated").await.expect("another reason");
    publish("b", "u-b", "QuotaExceeded").await.expect("another object");
    let list = api.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(list.len(), 3, "{list:?}");
    let first = list
        .iter()
        .find(|e| {
            e.reason.as_deref() == Some("QuotaExceeded")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("a")
        })
        .expect("the first Event");
    assert_eq!(first.series.as_ref().map(|s| s.count), Some(3), "{first:?}");
    assert_eq!(first.type_.as_deref(), Some("Warning"));
    assert_eq!(first.reporting_controller.as_deref(), Some("crabglamp-operator"));
    assert_eq!(first.reporting_instance.as_deref(), Some("test-0"));
    assert!(list.iter().filter(|e| e.metadata.name != first.metadata.name).all(|e| e.series.is_none()));

    // Deleted meanwhile: the next repeat is a new Event, not an error.
    let name = first.metadata.name.clone().expect("name");
    api.delete(&name, &DeleteParams::default()).await.expect("delete");
    publish("a", "u-a", "QuotaExceeded").await.expect("after the delete");
    let list = api.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|e| e.metadata.name.as_deref() != Some(name.as_str())));
    op.stop().await;
}
