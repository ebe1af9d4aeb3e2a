//! kube-rs against the sandbox API server: `Api`, `watcher`, `reflector`, `Controller`,
//! `finalizer()`, the 410 recovery, server-side apply conflicts on Leases, garbage collection
//! and a watch that must deliver 10,000 changes in order.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crabglamp_operator::api::{Agent, VirtualKey};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::common::start;

const NS: &str = "default";

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn agent(name: &str, region: &str) -> Agent {
    serde_json::from_value(json!({
        "apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"owner": "acct_1", "region": region},
    }))
    .expect("agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_reflector_and_controller_observe_changes_in_order() {
    let sb = start().await;
    let api: Api<Agent> = Api::namespaced(sb.client(), NS);

    let (reader, writer) = reflector::store::<Agent>();
    let mut events = reflector(writer, watcher(api.clone(), watcher::Config::default())).boxed();
    // The initial list of an empty namespace.
    within("the initial list", async {
        while let Some(e) = events.try_next().await.expect("watch") {
            if matches!(e, watcher::Event::InitDone) {
                break;
            }
        }
    })
    .await;

    let (tx, mut seen) = mpsc::unbounded_channel::<(String, bool)>();
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(
            |obj: Arc<Agent>, tx: Arc<mpsc::UnboundedSender<(String, bool)>>| async move {
                let _ = tx.send((obj.name_any(), obj.spec.running));
                Ok::<_, Infallible>(Action::await_change())
            },
            |_, _: &Infallible, _| Action::await_change(),
            Arc::new(tx),
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);
    // The controller is running once it reconciles a first object.
    api.create(&PostParams::default(), &agent("first", "us")).await.expect("create first");
    within("the first reconcile", async {
        while let Some((name, _)) = seen.recv().await {
            if name == "first" {
                break;
            }
        }
    })
    .await;

    api.create(&PostParams::default(), &agent("a", "us")).await.expect("create");
    api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": false}}))).await.expect("patch");
    api.delete("a", &DeleteParams::default()).await.expect("delete");

    let mut order = Vec::new();
    within("create, update, delete", async {
        while order.len() < 3 {
            match events.try_next().await.expect("watch") {
                Some(watcher::Event::Apply(a)) if a.name_any() == "a" => {
                    order.push(format!("apply running={}", a.spec.running))
                }
                Some(watcher::Event::Delete(a)) => order.push(format!("delete {}", a.name_any())),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(order, ["apply running=true", "apply running=false", "delete a"]);
    let cached: Vec<String> = reader.state().iter().map(|a| a.name_any()).collect();
    assert_eq!(cached, ["first"], "the reflector must hold exactly the live objects");

    // The controller keeps up: a new object is reconciled.
    api.create(&PostParams::default(), &agent("b", "eu")).await.expect("create b");
    within("the reconcile of b", async {
        while let Some((name, _)) = seen.recv().await {
            if name == "b" {
                break;
            }
        }
    })
    .await;
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_resource_version_is_an_error_event_and_the_watcher_relists() {
    let sb = start().await;
    let api: Api<Agent> = Api::namespaced(sb.client(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(sb.client(), NS);
    api.create(&PostParams::default(), &agent("early", "us")).await.expect("create");
    let old_rv = api.list(&ListParams::default()).await.expect("list").metadata.resource_version.expect("rv");

    // A watcher whose watch requests end every second, so it resumes from its last resourceVersion.
    let mut events = watcher(api.clone(), watcher::Config::default().timeout(1)).boxed();
    within("the initial list", async {
        while let Some(e) = events.try_next().await.expect("watch") {
            if matches!(e, watcher::Event::InitDone) {
                break;
            }
        }
    })
    .await;

    for i in 0..10 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("noise-{i}")}, "data": {"i": i.to_string()}}))
                .expect("cm");
        cms.create(&PostParams::default(), &cm).await.expect("create cm");
    }
    sb.kube.compact_history();

    // The raw watch from before the compaction: HTTP 200 and an ERROR event with code 410.
    let mut raw = api.watch(&WatchParams::default(), &old_rv).await.expect("watch request").boxed();
    match within("the ERROR event", raw.try_next()).await.expect("stream") {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected an ERROR event, got {other:?}"),
    }

    // The runtime's watcher saw no Agent change since its list, so it resumes from the list's
    // resourceVersion, meets the same 410 (surfaced as an error item) and relists.
    within("the 410 and the relist", async {
        let mut expired = false;
        while let Some(item) = events.next().await {
            match item {
                Err(watcher::Error::WatchError(s)) if s.code == 410 => expired = true,
                Err(e) => panic!("unexpected watcher error {e}"),
                Ok(watcher::Event::Init) if expired => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    // After the relist it follows changes again.
    api.create(&PostParams::default(), &agent("late", "eu")).await.expect("create late");
    within("the change after the relist", async {
        while let Some(item) = events.next().await {
            match item.expect("watcher recovered") {
                watcher::Event::Apply(a) | watcher::Event::InitApply(a) if a.name_any() == "late" => break,
                _ => {}
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finalizer_helper_adds_and_removes_its_finalizer() {
    let sb = start().await;
    let api: Api<Agent> = Api::namespaced(sb.client(), NS);
    const NAME: &str = "crabglamp.com/cleanup";
    api.create(&PostParams::default(), &agent("held", "us")).await.expect("create");

    async fn run(api: &Api<Agent>, obj: Agent) -> Result<Action, kube::runtime::finalizer::Error<Infallible>> {
        finalizer(api, NAME, Arc::new(obj), |event| async move {
            match event {
                FinalizerEvent::Apply(_) | FinalizerEvent::Cleanup(_) => Ok::<_, Infallible>(Action::await_change()),
            }
        })
        .await
    }

    run(&api, api.get("held").await.expect("get")).await.expect("add finalizer");
    let held = api.get("held").await.expect("get");
    assert_eq!(held.finalizers(), [NAME.to_owned()]);
    // Apply with the finalizer present.
    run(&api, held).await.expect("apply");

    let deleted = api.delete("held", &DeleteParams::default()).await.expect("delete");
    assert!(deleted.is_left(), "a finalizer must keep the object");
    let deleting = api.get("held").await.expect("get");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    run(&api, deleting).await.expect("cleanup");
    within("deletion", await_condition(api.clone(), "held", conditions::is_deleted(""))).await.expect("deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_delivers_ten_thousand_changes_in_order() {
    let sb = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sb.client(), NS);
    let start_rv = cms.list(&ListParams::default()).await.expect("list").metadata.resource_version.expect("rv");
    let mut stream = cms.watch(&WatchParams::default().timeout(290), &start_rv).await.expect("watch").boxed();

    const CHANGES: usize = 10_000;
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": "counter"}, "data": {"n": "0"}})).expect("cm");
            cms.create(&PostParams::default(), &cm).await.expect("create");
            for n in 1..CHANGES {
                cms.patch("counter", &PatchParams::default(), &Patch::Merge(json!({"data": {"n": n.to_string()}})))
                    .await
                    .expect("patch");
            }
        })
    };

    let mut expected = 0usize;
    let mut last_rv = 0u64;
    tokio::time::timeout(Duration::from_secs(600), async {
        while expected < CHANGES {
            let event = stream.try_next().await.expect("watch").expect("the watch ended early");
            let cm = match event {
                WatchEvent::Added(cm) | WatchEvent::Modified(cm) => cm,
                WatchEvent::Bookmark(_) => continue,
                other => panic!("unexpected event {other:?}"),
            };
            let n: usize = cm.data.as_ref().and_then(|d| d.get("n")).and_then(|n| n.parse().ok()).expect("n");
            assert_eq!(n, expected, "event lost or reordered");
            let rv: u64 = cm.resource_version().and_then(|r| r.parse().ok()).expect("rv");
            assert!(rv > last_rv, "resourceVersion went backwards");
            last_rv = rv;
            expected += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {expected} of {CHANGES} events arrived"));
    writer.await.expect("writer");
    assert_eq!(expected, CHANGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_side_apply_keeps_two_lease_holders_apart() {
    let sb = start().await;
    let leases: Api<Lease> = Api::namespaced(sb.client(), NS);
    // An apply that creates must name the object in its body, as kube-apiserver requires (it
    // answers 400 "the name of the object (leader based on URL) was undeterminable").
    let nameless = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": "a"}});
    let refused =
        leases.patch("leader", &PatchParams::apply("lease-a"), &Patch::Apply(&nameless)).await.expect_err("no name");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 400 && s.message.contains("undeterminable")),
        "{refused}"
    );
    let apply = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    };
    leases.patch("leader", &PatchParams::apply("lease-a"), &Patch::Apply(apply("a"))).await.expect("a takes the lease");
    // Once it exists, the URL names it (kube-lease-manager creates first, then applies nameless).
    leases.patch("leader", &PatchParams::apply("lease-a"), &Patch::Apply(&nameless)).await.expect("a renews nameless");
    let err = leases
        .patch("leader", &PatchParams::apply("lease-b"), &Patch::Apply(apply("b")))
        .await
        .expect_err("b must conflict");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
            assert!(s.message.contains("lease-a") && s.message.contains(".spec.holderIdentity"), "{}", s.message);
        }
        other => panic!("expected a 409, got {other}"),
    }
    // Releasing through an update hands the field over; then b may apply.
    leases
        .patch("leader", &PatchParams::default(), &Patch::Merge(json!({"spec": {"holderIdentity": null}})))
        .await
        .expect("release");
    let lease =
        leases.patch("leader", &PatchParams::apply("lease-b"), &Patch::Apply(apply("b"))).await.expect("b takes it");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("b"));
    // kube-lease-manager renews and counts transitions with strategic merge patches.
    let lease = leases
        .patch(
            "leader",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"leaseTransitions": 1, "renewTime": "2026-11-25T04:00:00.000000Z"}})),
        )
        .await
        .expect("strategic patch of a Lease");
    let spec = lease.spec.expect("spec");
    assert_eq!((spec.lease_transitions, spec.holder_identity.as_deref()), (Some(1), Some("b")));
    let again = leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {}})).expect("lease"),
        )
        .await
        .expect_err("exists");
    assert!(matches!(again, kube::Error::Api(ref s) if s.reason == "AlreadyExists"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_generation_conflicts_and_garbage_collection() {
    let sb = start().await;
    let client = sb.client();
    let agents: Api<Agent> = Api::namespaced(client.clone(), NS);
    let a = agents.create(&PostParams::default(), &agent("gen", "us")).await.expect("create");
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.status.is_none());
    // Status writes and metadata writes leave generation alone; spec writes bump it.
    let a = agents
        .patch_status(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"running": false}})),
        )
        .await
        .expect("status");
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.spec.running, "a status write changed spec");
    let a = agents
        .patch("gen", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .expect("labels");
    assert_eq!(a.metadata.generation, Some(1));
    let a = agents
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"running": false}, "status": {"phase": "X"}})),
        )
        .await
        .expect("spec");
    assert_eq!(a.metadata.generation, Some(2));
    assert_eq!(a.status.as_ref().and_then(|s| s.phase.as_ref()).map(|p| format!("{p:?}")), Some("Running".into()));
    // A stale resourceVersion is a 409.
    let mut stale = a.clone();
    stale.metadata.resource_version = Some("1".into());
    let err = agents.replace("gen", &PostParams::default(), &stale).await.expect_err("stale");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"), "{err}");
    // A changed region is refused with the rule's message.
    let err = agents
        .patch("gen", &PatchParams::default(), &Patch::Merge(json!({"spec": {"region": "eu"}})))
        .await
        .expect_err("immutable");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("spec.region is immutable")),
        "{err}"
    );

    // A Secret owned by a VirtualKey goes with it.
    let keys: Api<VirtualKey> = Api::namespaced(client.clone(), NS);
    let vk: VirtualKey = serde_json::from_value(json!({
        "apiVersion": "crabglamp.com/v1alpha1", "kind": "VirtualKey",
        "metadata": {"name": "k", "namespace": NS},
        "spec": {"owner": "acct_1", "models": ["gpt-4o*"], "budget": {"monthlyUsd": "5.00"}},
    }))
    .expect("vk");
    let vk = keys.create(&PostParams::default(), &vk).await.expect("create vk");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let owner = vk.controller_owner_ref(&()).expect("owner ref");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "k-key", "ownerReferences": [owner]},
        "stringData": {"key": "not-a-real-key"},
    }))
    .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("create secret");
    keys.delete("k", &DeleteParams::default()).await.expect("delete vk");
    within("garbage collection", await_condition(secrets.clone(), "k-key", conditions::is_deleted("")))
        .await
        .expect("gc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_lists_metadata_watches_and_selector_transitions() {
    let sb = start().await;
    let client = sb.client();
    let agents: Api<Agent> = Api::namespaced(client.clone(), NS);
    agents.create(&PostParams::default(), &agent("first", "us")).await.expect("create");

    // Streaming list: the initial events end with the initial-events-end bookmark.
    let mut streaming = watcher(agents.clone(), watcher::Config::default().streaming_lists()).boxed();
    within("the streaming list", async {
        let mut initial = Vec::new();
        while let Some(e) = streaming.try_next().await.expect("streaming watch") {
            match e {
                watcher::Event::InitApply(a) => initial.push(a.name_any()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(initial, ["first"]);
    })
    .await;

    // A label-selected watch sees an object enter (ADDED) and leave (DELETED) the selection.
    let wp = WatchParams::default().labels("tier=gold").timeout(60);
    let rv = agents.list(&ListParams::default()).await.expect("list").metadata.resource_version.expect("rv");
    let mut selected = agents.watch(&wp, &rv).await.expect("watch").boxed();
    agents
        .patch("first", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})))
        .await
        .expect("label");
    agents
        .patch("first", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "lead"}}})))
        .await
        .expect("relabel");
    let mut kinds = Vec::new();
    within("the selector transitions", async {
        while kinds.len() < 2 {
            match selected.try_next().await.expect("watch").expect("open") {
                WatchEvent::Added(_) => kinds.push("ADDED"),
                WatchEvent::Deleted(_) => kinds.push("DELETED"),
                WatchEvent::Modified(_) => kinds.push("MODIFIED"),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(kinds, ["ADDED", "DELETED"]);

    // Controller::owns uses a metadata watcher: a change to an owned Secret triggers its owner.
    let owner = agents.get("first").await.expect("get").controller_owner_ref(&()).expect("owner ref");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let (tx, mut seen) = mpsc::unbounded_channel::<String>();
    let controller = Controller::new(agents.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(
            |obj: Arc<Agent>, tx: Arc<mpsc::UnboundedSender<String>>| async move {
                let _ = tx.send(obj.name_any());
                Ok::<_, Infallible>(Action::await_change())
            },
            |_, _: &Infallible, _| Action::await_change(),
            Arc::new(tx),
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);
    within("the first reconcile", seen.recv()).await.expect("reconcile");
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "first-data", "ownerReferences": [owner]}, "stringData": {"a": "b"}}),
    )
    .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("create secret");
    within("the reconcile triggered by the owned Secret", seen.recv()).await.expect("reconcile");
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_status_apply_and_finalizer_rules() {
    let sb = start().await;
    let client = sb.client();
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");

    // Legacy discovery resolves the CRDs and the built-ins.
    let discovery = kube::discovery::Discovery::new(client.clone()).run().await.expect("discovery");
    let gvk = kube::api::GroupVersionKind::gvk("crabglamp.com", "v1alpha1", "Agent");
    let (resource, caps) = discovery.resolve_gvk(&gvk).expect("Agent discovered");
    assert_eq!(resource.plural, "agents");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(discovery.has_group("coordination.k8s.io") && discovery.has_group("events.k8s.io"));
    // Aggregated discovery (what kubectl asks for first) describes the same resources.
    let aggregated =
        kube::discovery::Discovery::new(client.clone()).run_aggregated().await.expect("aggregated discovery");
    let (resource, caps) = aggregated.resolve_gvk(&gvk).expect("Agent in aggregated discovery");
    assert_eq!((resource.plural.as_str(), caps.scope), ("agents", kube::discovery::Scope::Namespaced));
    assert!(aggregated.has_group("coordination.k8s.io"));
    let core = kube::api::GroupVersionKind::gvk("", "v1", "Secret");
    assert!(aggregated.resolve_gvk(&core).is_some(), "core group missing from aggregated discovery");

    // Server-side apply of status through the subresource, as status-writing controllers do.
    let agents: Api<Agent> = Api::namespaced(client.clone(), NS);
    agents.create(&PostParams::default(), &agent("st", "us")).await.expect("create");
    let status = json!({"apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent",
                        "status": {"phase": "Provisioning", "observedGeneration": 1}});
    let a = agents
        .patch_status("st", &PatchParams::apply("agent-controller").force(), &Patch::Apply(&status))
        .await
        .expect("apply status");
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.status.is_some());
    assert_eq!(a.spec.region, crabglamp_operator::api::Region::Us);

    // A deleting object accepts no new finalizers.
    agents
        .patch("st", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": ["a.example.com/x"]}})))
        .await
        .expect("finalizer");
    agents.delete("st", &DeleteParams::default()).await.expect("delete");
    let err = agents
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["a.example.com/x", "b.example.com/y"]}})),
        )
        .await
        .expect_err("no new finalizers");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("no new finalizers")),
        "{err}"
    );
    // Removing the last one completes the deletion and returns the object.
    let last = agents
        .patch("st", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("release");
    assert!(last.metadata.deletion_timestamp.is_some());
    let gone = agents.get_opt("st").await.expect("get");
    assert!(gone.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crd_written_through_the_api_is_served_validated_and_defaulted_on_read() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

    let sb = start().await;
    let client = sb.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = |schema: serde_json::Value| -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": schema}}}}]},
        }))
        .expect("crd")
    };
    let spec = json!({"type": "object", "properties": {"size": {"type": "integer", "maximum": 10}}});
    crds.create(&PostParams::default(), &crd(spec)).await.expect("create CRD");

    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Gadget"), "gadgets");
    let gadgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let gadget = |name: &str, size: i64| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": {"size": size}}))
            .expect("gadget")
    };
    gadgets.create(&PostParams::default(), &gadget("small", 3)).await.expect("create gadget");
    let err = gadgets.create(&PostParams::default(), &gadget("huge", 30)).await.expect_err("maximum");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("spec.size")), "{err}");

    // A default added to the schema later shows on the object stored before it.
    let mut updated = crds.get("gadgets.example.com").await.expect("get CRD");
    let spec = json!({"type": "object", "properties": {
        "size": {"type": "integer", "maximum": 10},
        "colour": {"type": "string", "default": "red"},
    }});
    let fresh = crd(spec);
    updated.spec = fresh.spec;
    crds.replace("gadgets.example.com", &PostParams::default(), &updated).await.expect("update CRD");
    let small = gadgets.get("small").await.expect("get gadget");
    assert_eq!(small.data["spec"]["colour"], "red", "{:?}", small.data);
    // ... and a metadata write does not count the materialised default as a spec change.
    let labelled = gadgets
        .patch("small", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .expect("label gadget");
    assert_eq!(labelled.metadata.generation, Some(1), "{:?}", labelled.metadata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_the_server_ends_open_watches() {
    let sb = start().await;
    let api: Api<Agent> = Api::namespaced(sb.client(), NS);
    let rv = api.list(&ListParams::default()).await.expect("list").metadata.resource_version.expect("rv");
    let mut stream = api.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();
    let crate::common::Sandbox { kube, dir, .. } = sb;
    drop(kube);
    within("the watch to end", async {
        // The stream ends, cleanly or with a transport error; it must not hang.
        while let Ok(Some(_)) = stream.try_next().await {}
    })
    .await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_watch_gets_bookmarks_while_other_kinds_keep_changing() {
    let config =
        crabglamp_sandbox::kube::KubeApiConfig { bookmark_interval: Duration::from_millis(200), ..Default::default() };
    let sb = crate::common::start_with(config).await;
    let agents: Api<Agent> = Api::namespaced(sb.client(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(sb.client(), NS);
    let start_rv: u64 = sb.kube.resource_version();
    let mut stream =
        agents.watch(&WatchParams::default().timeout(60), &start_rv.to_string()).await.expect("watch").boxed();
    // ConfigMaps change faster than the bookmark interval, so the Agent watch is never idle for
    // a whole interval; it must get bookmarks anyway.
    let writer = tokio::spawn(async move {
        for n in 0.. {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": format!("noise-{n}")}})).expect("cm");
            if cms.create(&PostParams::default(), &cm).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // No Agent changes, so the first event must be a bookmark.
    let bookmark_rv = match within("a bookmark", stream.try_next()).await.expect("watch").expect("the watch ended") {
        WatchEvent::Bookmark(b) => b.metadata.resource_version,
        other => panic!("unexpected event {other:?}"),
    };
    writer.abort();
    let bookmark_rv: u64 = bookmark_rv.parse().expect("numeric resourceVersion");
    assert!(bookmark_rv > start_rv, "the bookmark must carry the watch forward: {bookmark_rv} <= {start_rv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_managers_are_capped_at_ten_entries_as_on_a_real_server() {
    let sb = start().await;
    let api: Api<Agent> = Api::namespaced(sb.client(), NS);
    api.create(&PostParams::default(), &agent("busy", "us")).await.expect("create");
    // Every client with its own name adds an Update entry; a real server merges the oldest
    // into `ancient-changes` once there are more than ten.
    for i in 0..15 {
        let params = PatchParams { field_manager: Some(format!("client-{i:02}")), ..Default::default() };
        let patch = Patch::Merge(json!({"metadata": {"labels": {format!("l{i}"): "x"}}}));
        api.patch("busy", &params, &patch).await.expect("patch");
    }
    let obj = api.get("busy").await.expect("get");
    let entries = obj.metadata.managed_fields.unwrap_or_default();
    let updates: Vec<&str> = entries
        .iter()
        .filter(|e| e.operation.as_deref() == Some("Update"))
        .filter_map(|e| e.manager.as_deref())
        .collect();
    assert_eq!(updates.len(), 10, "{updates:?}");
    assert!(updates.contains(&"ancient-changes"), "{updates:?}");
    assert!(updates.contains(&"client-14"), "the newest managers stay: {updates:?}");
}
