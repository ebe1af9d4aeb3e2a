//! Consistency of what clients read while others write: paged lists pinned to one snapshot
//! (`continue`, `remainingItemCount`, expired and malformed tokens), a kube-runtime reflector
//! that must end up equal to the server under churn, watches from a future resourceVersion,
//! and Events (TTL, field selectors of both APIs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

use crate::common::start;

/// Polls `check` until it holds or `limit` passes; returns the last failure description.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(why) if tokio::time::Instant::now() >= deadline => return Err(why),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn config_map(name: &str, value: usize) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": value.to_string()}})).expect("cm")
}

/// name → resourceVersion.
type Versions = BTreeMap<String, String>;

fn versions<'a>(objects: impl Iterator<Item = &'a ConfigMap>) -> Versions {
    objects.map(|o| (o.name_any(), o.resource_version().unwrap_or_default())).collect()
}

fn diff(store: &Versions, server: &Versions) -> String {
    let missing: Vec<&String> = server.keys().filter(|k| !store.contains_key(*k)).collect();
    let extra: Vec<&String> = store.keys().filter(|k| !server.contains_key(*k)).collect();
    let stale: Vec<&String> =
        server.iter().filter(|(k, v)| store.get(*k).is_some_and(|s| s != *v)).map(|(k, _)| k).collect();
    format!(
        "{} missing (e.g. {:?}), {} extra (e.g. {:?}), {} stale (e.g. {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
        stale.len(),
        stale.iter().take(5).collect::<Vec<_>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reflector_under_churn_ends_equal_to_the_server() {
    const OBJECTS: usize = 1_500;
    let sb = start().await;
    let ns = "churn";
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(sb.client());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"))
        .await
        .expect("namespace");
    let api: Api<ConfigMap> = Api::namespaced(sb.client(), ns);
    futures::stream::iter(0..OBJECTS)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &config_map(&format!("cm-{i:05}"), 0)).await.expect("create") }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;

    // The writer changes, deletes and creates objects all over the key range, so every page of
    // the reflector's initial list is cut while earlier and later keys move.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (api, stop, writes) = (api.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // A cheap deterministic spread over the key range.
                let i = (n * 7919) % OBJECTS;
                let name = format!("cm-{i:05}");
                let result = match n % 4 {
                    0 => api.delete(&name, &DeleteParams::default()).await.map(|_| ()),
                    1 => api.create(&PostParams::default(), &config_map(&format!("a-{n:06}"), n)).await.map(|_| ()),
                    _ => api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"data": {"v": n.to_string()}})))
                        .await
                        .map(|_| ()),
                };
                // Deleting or patching an object already deleted is a 404: part of the churn.
                if let Err(kube::Error::Api(e)) = &result
                    && e.code != 404
                {
                    panic!("write failed: {e:?}");
                }
                writes.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Some churn before the list starts, so the list meets it from the first page.
    eventually(Duration::from_secs(30), || async {
        if writes.load(Ordering::SeqCst) >= 50 { Ok(()) } else { Err("the writer did not start".into()) }
    })
    .await
    .expect("writer");

    let (reader, store_writer) = reflector::store::<ConfigMap>();
    // watcher::Config::default(): pages of 500, as the operator's controllers list.
    let reflector_task = tokio::spawn(
        reflector(store_writer, watcher(api.clone(), watcher::Config::default()))
            .applied_objects()
            .for_each(|_| async {}),
    );
    tokio::time::timeout(Duration::from_secs(60), reader.wait_until_ready())
        .await
        .expect("reflector ready")
        .expect("store");
    // Keep writing while the watch runs, then stop.
    let at_ready = writes.load(Ordering::SeqCst);
    eventually(Duration::from_secs(30), || async {
        if writes.load(Ordering::SeqCst) >= at_ready + 300 { Ok(()) } else { Err("the writer stalled".into()) }
    })
    .await
    .expect("writes after the list");
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");

    let server = versions(api.list(&ListParams::default()).await.expect("list").items.iter());
    let result = eventually(Duration::from_secs(30), || {
        let store = versions(reader.state().iter().map(|o| o.as_ref()));
        let server = &server;
        async move { if store == *server { Ok(()) } else { Err(diff(&store, server)) } }
    })
    .await;
    reflector_task.abort();
    result.expect("the reflector's store must equal the server's objects");
}
