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

use crate::common::{start, start_with};

/// GET `path` (relative to the server) and its status and JSON body.
async fn get_json(sb: &crate::common::Sandbox, path: &str) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let resp = client.get(format!("{}{path}", sb.kube.base_url)).send().await.expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.expect("JSON body"))
}

async fn namespace(sb: &crate::common::Sandbox, name: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(sb.client());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns"))
        .await
        .expect("namespace");
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

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
    namespace(&sb, ns).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_tokens_pin_the_first_pages_snapshot() {
    let sb = start().await;
    namespace(&sb, "pages").await;
    let api: Api<ConfigMap> = Api::namespaced(sb.client(), "pages");
    for i in 0..12 {
        api.create(&PostParams::default(), &config_map(&format!("cm-{i:02}"), i)).await.expect("create");
    }
    let base = "/api/v1/namespaces/pages/configmaps";
    let (code, first) = get_json(&sb, &format!("{base}?limit=5")).await;
    assert_eq!(code, 200, "{first}");
    let rv = first["metadata"]["resourceVersion"].as_str().expect("rv").to_owned();
    assert_eq!(names(&first), ["cm-00", "cm-01", "cm-02", "cm-03", "cm-04"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 7);
    let token = first["metadata"]["continue"].as_str().expect("continue").to_owned();

    // Changes after the first page: none of them may show in the later pages.
    api.delete("cm-00", &DeleteParams::default()).await.expect("delete listed");
    api.delete("cm-07", &DeleteParams::default()).await.expect("delete unlisted");
    api.create(&PostParams::default(), &config_map("cm-055", 0)).await.expect("create between");
    api.patch("cm-08", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": "changed"}}))).await.expect("patch");

    let (code, second) = get_json(&sb, &format!("{base}?limit=5&continue={token}")).await;
    assert_eq!(code, 200, "{second}");
    assert_eq!(second["metadata"]["resourceVersion"], rv.as_str(), "every page carries the snapshot's resourceVersion");
    assert_eq!(names(&second), ["cm-05", "cm-06", "cm-07", "cm-08", "cm-09"]);
    assert_eq!(second["items"][3]["data"]["v"], "8", "the snapshot's version of cm-08");
    assert_eq!(second["metadata"]["remainingItemCount"], 2);
    let token = second["metadata"]["continue"].as_str().expect("continue").to_owned();
    let (_, third) = get_json(&sb, &format!("{base}?limit=5&continue={token}")).await;
    assert_eq!(names(&third), ["cm-10", "cm-11"]);
    assert_eq!(third["metadata"]["resourceVersion"], rv.as_str());
    assert!(third["metadata"].get("continue").is_none_or(|c| c == ""), "{third}");
    assert!(third["metadata"].get("remainingItemCount").is_none(), "{third}");

    // Under a selector there is a continue token but no count (etcd counts keys, not matches).
    let (_, selected) = get_json(&sb, &format!("{base}?limit=2&fieldSelector=metadata.name!=cm-01")).await;
    assert_eq!(names(&selected), ["cm-02", "cm-03"]);
    assert!(selected["metadata"]["continue"].as_str().is_some_and(|c| !c.is_empty()), "{selected}");
    assert!(selected["metadata"].get("remainingItemCount").is_none(), "{selected}");

    // Malformed tokens, and a token with a resourceVersion, are 400 as on a real server.
    for bad in ["garbage!", "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MCwic3RhcnQiOiJ4In0"] {
        let (code, status) = get_json(&sb, &format!("{base}?limit=5&continue={bad}")).await;
        assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")), "{status}");
        assert!(
            status["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("invalid continue token: continue key is not valid")),
            "{status}"
        );
    }
    let (code, status) = get_json(&sb, &format!("{base}?limit=5&continue={token}&resourceVersion={rv}")).await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["message"], "specifying resource version is not allowed when using continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_continue_token_is_410_with_a_token_to_go_on_inconsistently() {
    let config = crabglamp_sandbox::kube::KubeApiConfig { continue_snapshots: 1, ..Default::default() };
    let sb = start_with(config).await;
    let api: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    for i in 0..6 {
        api.create(&PostParams::default(), &config_map(&format!("cm-{i}"), i)).await.expect("create");
    }
    let base = "/api/v1/namespaces/default/configmaps";
    let (_, first) = get_json(&sb, &format!("{base}?limit=2")).await;
    let token = first["metadata"]["continue"].as_str().expect("continue").to_owned();
    // Another paged list at a later resourceVersion pushes the only kept snapshot out.
    api.create(&PostParams::default(), &config_map("cm-new", 0)).await.expect("create");
    let (_, other) = get_json(&sb, &format!("{base}?limit=2")).await;
    assert!(other["metadata"]["continue"].is_string());

    let (code, status) = get_json(&sb, &format!("{base}?limit=2&continue={token}")).await;
    assert_eq!((code, status["reason"].as_str()), (410, Some("Expired")), "{status}");
    assert_eq!(status["message"], crabglamp_sandbox::kube::list::EXPIRED_CONTINUE);
    assert!(status["message"].as_str().is_some_and(|m| m.starts_with("The provided continue parameter is too old")));
    // The Status's own token goes on from the same key, at the latest state.
    let fresh = status["metadata"]["continue"].as_str().expect("a fresh token").to_owned();
    let (code, rest) = get_json(&sb, &format!("{base}?limit=10&continue={fresh}")).await;
    assert_eq!(code, 200, "{rest}");
    assert_eq!(names(&rest), ["cm-2", "cm-3", "cm-4", "cm-5", "cm-new"]);

    // kube-rs sees the same 410 as an API error.
    let err = api.list(&ListParams::default().limit(2).continue_token(&token)).await.expect_err("expired");
    assert!(matches!(err, kube::Error::Api(ref e) if e.code == 410 && e.reason == "Expired"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_at_a_future_resource_version_wait_for_it() {
    let sb = start().await;
    let api: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    let now = sb.kube.resource_version();

    // A plain watch from a version the server has not reached delivers what comes after it,
    // nothing before it, and no error.
    let asked = now + 3;
    let mut stream =
        api.watch(&kube::api::WatchParams::default().timeout(30), &asked.to_string()).await.expect("watch").boxed();
    for i in 0..6 {
        api.create(&PostParams::default(), &config_map(&format!("w-{i}"), i)).await.expect("create");
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event =
            tokio::time::timeout(Duration::from_secs(30), stream.next()).await.expect("an event").expect("open");
        match event.expect("event") {
            kube::api::WatchEvent::Added(cm) => seen.push(cm.resource_version().unwrap_or_default()),
            kube::api::WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    let want: Vec<String> = (asked + 1..=asked + 3).map(|rv| rv.to_string()).collect();
    assert_eq!(seen, want, "exactly the changes after the asked resourceVersion");

    // A list at a version one write ahead answers once that write happened.
    let next = sb.kube.resource_version() + 1;
    let list = {
        let api = api.clone();
        tokio::spawn(async move { api.list(&ListParams::default().at(&next.to_string())).await })
    };
    api.create(&PostParams::default(), &config_map("later", 0)).await.expect("create");
    let list = list.await.expect("task").expect("the list waits for its resourceVersion");
    let list_rv: u64 = list.metadata.resource_version.as_deref().unwrap_or_default().parse().expect("rv");
    assert!(list_rv >= next && list.items.iter().any(|c| c.name_any() == "later"));

    // Too far ahead: after about three seconds, the real server's 504.
    let far = sb.kube.resource_version() + 1_000;
    let t = std::time::Instant::now();
    let (code, status) = get_json(&sb, &format!("/api/v1/namespaces/default/configmaps?resourceVersion={far}")).await;
    assert!(t.elapsed() >= Duration::from_secs(2), "it waits first");
    assert_eq!((code, status["reason"].as_str()), (504, Some("Timeout")), "{status}");
    let current = sb.kube.resource_version();
    assert_eq!(status["message"], format!("Timeout: Too large resource version: {far}, current: {current}"));
    assert_eq!(status["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    // A streaming list gets it as the ERROR event of its stream.
    let (code, event) = get_json(
        &sb,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion={far}"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!((event["type"].as_str(), event["object"]["code"].as_u64()), (Some("ERROR"), Some(504)), "{event}");
}

/// The names of the objects `api` lists with field selector `sel`.
async fn selected<K>(api: &Api<K>, sel: &str) -> Result<Vec<String>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default().fields(sel))
        .await?
        .items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect())
}

fn event_v1(name: &str, kind: &str, target: &str, uid: &str) -> serde_json::Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": {"apiVersion": "crabglamp.com/v1alpha1", "kind": kind, "name": target, "namespace": "default", "uid": uid},
        "reportingController": "crabglamp.com/operator", "reportingInstance": "op-1",
        "action": "Reconcile", "reason": "Created", "note": "hi", "type": "Normal",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_field_selectors_of_both_apis_find_what_they_should() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    let sb = start().await;
    let v1: Api<Event> = Api::namespaced(sb.client(), "default");
    let core: Api<CoreEvent> = Api::namespaced(sb.client(), "default");
    for (name, kind, target, uid) in
        [("e1", "Agent", "a", "u-1"), ("e2", "Agent", "b", "u-2"), ("e3", "PlainVM", "a", "u-3")]
    {
        let e: Event = serde_json::from_value(event_v1(name, kind, target, uid)).expect("event");
        v1.create(&PostParams::default(), &e).await.expect("create event");
    }
    let v1_names = |sel: &'static str| selected(&v1, sel);
    let core_names = |sel: &'static str| selected(&core, sel);
    assert_eq!(v1_names("regarding.kind=Agent").await.expect("list"), ["e1", "e2"]);
    assert_eq!(v1_names("regarding.name=a").await.expect("list"), ["e1", "e3"]);
    assert_eq!(v1_names("regarding.uid=u-2").await.expect("list"), ["e2"]);
    assert_eq!(
        v1_names("regarding.kind=Agent,regarding.name=a,regarding.namespace=default,regarding.uid=u-1")
            .await
            .expect("list"),
        ["e1"]
    );
    assert_eq!(v1_names("regarding.namespace=other").await.expect("list"), Vec::<String>::new());
    assert_eq!(v1_names("reportingController=crabglamp.com/operator,type=Normal").await.expect("list").len(), 3);
    // What kubectl describe sends, against the same events in core form.
    assert_eq!(
        core_names(
            "involvedObject.kind=Agent,involvedObject.uid=u-1,involvedObject.name=a,involvedObject.namespace=default"
        )
        .await
        .expect("list"),
        ["e1"]
    );
    assert_eq!(core_names("involvedObject.kind=PlainVM").await.expect("list"), ["e3"]);
    // `source` falls back to the reporting controller, as on a real server.
    assert_eq!(core_names("source=crabglamp.com/operator").await.expect("list").len(), 3);
    // Labels of the other API, or of no API, are refused with 400.
    for err in
        [v1_names("involvedObject.name=a").await, core_names("regarding.name=a").await, v1_names("spec.x=1").await]
    {
        assert!(matches!(err, Err(kube::Error::Api(ref e)) if e.code == 400), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_both_apis_expire_after_their_ttl() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    let config = crabglamp_sandbox::kube::KubeApiConfig { event_ttl: Duration::from_secs(2), ..Default::default() };
    let sb = start_with(config).await;
    let v1: Api<Event> = Api::namespaced(sb.client(), "default");
    let core: Api<CoreEvent> = Api::namespaced(sb.client(), "default");
    let created = std::time::Instant::now();
    let e: Event = serde_json::from_value(event_v1("by-recorder", "Agent", "a", "u-1")).expect("event");
    v1.create(&PostParams::default(), &e).await.expect("create v1");
    let c: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "by-kubectl", "namespace": "default"},
        "involvedObject": {"kind": "Agent", "name": "a", "namespace": "default"},
        "reason": "Created", "message": "hi", "type": "Normal",
    }))
    .expect("core event");
    core.create(&PostParams::default(), &c).await.expect("create core");
    // A ConfigMap is no Event: it stays.
    let cms: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    cms.create(&PostParams::default(), &config_map("keeps", 0)).await.expect("cm");
    let mut watch = v1.watch(&kube::api::WatchParams::default().timeout(30), "0").await.expect("watch").boxed();

    let gone = eventually(Duration::from_secs(20), || async {
        let v1_left = v1.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        let core_left = core.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        if v1_left + core_left == 0 { Ok(()) } else { Err(format!("{v1_left} v1 and {core_left} core events left")) }
    })
    .await;
    gone.expect("events expire");
    assert!(created.elapsed() >= Duration::from_secs(2), "not before their TTL");
    cms.get("keeps").await.expect("other kinds do not expire");
    // Watchers see the expiry as DELETED, as with etcd's lease expiry.
    let mut deleted = 0;
    while deleted < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next()).await.expect("an event").expect("open");
        if let kube::api::WatchEvent::Deleted(_) = event.expect("event") {
            deleted += 1;
        }
    }
}
