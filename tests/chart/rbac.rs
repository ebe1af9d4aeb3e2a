//! The chart's RBAC against what the operator really calls: a whole operator (all three
//! controllers) runs against the sandbox through the Agent, PlainVM and VirtualKey lifecycles
//! (create, Ready, stop, rotate, Secret moved, budget reached, delete); the API server's request log gives
//! every request the operator's client sent, each mapped to the attributes an authoriser
//! judges (verb, API group, resource/subresource, namespace, name), as kube-apiserver's
//! RequestInfo does. The rules `helm template` renders must allow every one of them and grant
//! nothing else, but for the few verbs listed below, each with the reason the run cannot
//! reach it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crabglamp_operator::api::virtual_key::VirtualKey;
use crabglamp_operator::api::{Agent, PlainVM};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::fixture::{self, OPERATOR_USER, Operator, wait_for, wait_gone};
use super::health::{argo_health, kstatus};
use super::helm::{self, NAMESPACE};
use crate::kube_server::{AuditEvent, KubeServer};

/// What an authoriser is asked about one request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Attributes {
    verb: String,
    group: String,
    /// `plural` or `plural/subresource`.
    resource: String,
    /// None: a cluster-wide request (all namespaces, or a cluster-scoped object).
    namespace: Option<String>,
    name: Option<String>,
}

/// kube-apiserver's RequestInfo for a resource path; None for a non-resource path (discovery,
/// /version, /openapi), which the `system:discovery` ClusterRole every user has allows.
fn attributes(method: &str, path: &str, query: &str) -> Option<Attributes> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => (String::new(), rest.to_vec()),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => ((*group).to_owned(), rest.to_vec()),
        _ => return None,
    };
    // /namespaces/{ns}/{plural}/... is namespaced; /namespaces and /namespaces/{name}[/status]
    // are the Namespace objects themselves, a named one judged in its own namespace (so a
    // RoleBinding there can grant reading it).
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, plural, tail @ ..] if !(tail.is_empty() && matches!(*plural, "status" | "finalize")) => {
            (Some((*ns).to_owned()), [&[*plural][..], tail].concat())
        }
        ["namespaces", ns, ..] => (Some((*ns).to_owned()), rest.to_vec()),
        other => (None, other.to_vec()),
    };
    let (resource, name) = match rest.as_slice() {
        [plural] => ((*plural).to_owned(), None),
        [plural, name] => ((*plural).to_owned(), Some((*name).to_owned())),
        [plural, name, sub] => (format!("{plural}/{sub}"), Some((*name).to_owned())),
        _ => return None,
    };
    let watch = query.split('&').any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"));
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => panic!("unexpected method {other} {path}"),
    };
    Some(Attributes { verb: verb.to_owned(), group, resource, namespace, name })
}

/// One rendered rule, with where it applies (None: cluster-wide, through a ClusterRole
/// binding).
#[derive(Clone, Debug)]
struct Rule {
    scope: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

/// One grant: (scope, group, resource, verb).
type Grant = (Option<String>, String, String, String);

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        let in_scope = match (&self.scope, &a.namespace) {
            (None, _) => true,
            (Some(s), Some(ns)) => s == ns,
            (Some(_), None) => false,
        };
        in_scope
            && self.groups.contains(&a.group)
            && self.resources.contains(&a.resource)
            && self.verbs.contains(&a.verb)
            && (self.names.is_empty() || a.name.as_ref().is_some_and(|n| self.names.contains(n)))
    }

    fn grants(&self) -> Vec<Grant> {
        let mut out = Vec::new();
        for g in &self.groups {
            for r in &self.resources {
                for v in &self.verbs {
                    out.push((self.scope.clone(), g.clone(), r.clone(), v.clone()));
                }
            }
        }
        out
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(|s| s.as_str().expect("a string").to_owned()).collect()
}

/// The rules bound to the operator's ServiceAccount in a render, with their scope.
fn bound_rules(objects: &[Value]) -> Vec<Rule> {
    let sa = helm::one(objects, "ServiceAccount")["metadata"]["name"].as_str().expect("sa name").to_owned();
    let mut rules = Vec::new();
    for binding in objects.iter().filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding") {
        let subjects = binding["subjects"].as_array().expect("subjects");
        assert!(
            subjects.iter().all(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == NAMESPACE),
            "every binding is to the operator's ServiceAccount only: {binding}"
        );
        let role_kind = binding["roleRef"]["kind"].as_str().expect("roleRef kind");
        let role = objects
            .iter()
            .find(|o| {
                o["kind"] == role_kind
                    && o["metadata"]["name"] == binding["roleRef"]["name"]
                    && o["metadata"]["namespace"] == binding["metadata"]["namespace"]
            })
            .unwrap_or_else(|| panic!("the role of {binding} is rendered"));
        let scope = (binding["kind"] == "RoleBinding")
            .then(|| binding["metadata"]["namespace"].as_str().expect("namespace").to_owned());
        for r in role["rules"].as_array().expect("rules") {
            let rule = Rule {
                scope: scope.clone(),
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                verbs: strings(&r["verbs"]),
                names: strings(&r["resourceNames"]),
            };
            for list in [&rule.groups, &rule.resources, &rule.verbs, &rule.names] {
                assert!(!list.iter().any(|x| x.contains('*')), "no wildcard: {r}");
            }
            assert!(r.get("nonResourceURLs").is_none(), "no non-resource rules: {r}");
            rules.push(rule);
        }
    }
    rules
}

/// Grants the run cannot reach, each with the reason. The test fails when one of them is
/// reached after all (then it belongs to the recorded set and leaves this list).
/// Grants the recorded run cannot reach, each with its reason (none today: the run turns on
/// every code path that calls the API server).
const UNREACHED: &[(&str, &str, &str, &str)] = &[];

/// Grants the run may or may not reach (timing): allowed either way, with the reason.
const MAYBE: &[(&str, &str, &str, &str)] = &[(
    "events.k8s.io",
    "events",
    "patch",
    "an Event's series is patched only when the same Event repeats within six minutes (controllers::events)",
)];

fn listed(list: &[(&str, &str, &str, &str)], group: &str, resource: &str, verb: &str) -> bool {
    list.iter().any(|(g, r, verbs, _)| *g == group && *r == resource && verbs.split(' ').any(|v| v == verb))
}

async fn patch_spec<K>(api: &Api<K>, name: &str, spec: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await.expect("patch spec");
}

fn current<K: kube::Resource + serde::Serialize>(o: &K) -> Value {
    serde_json::to_value(o).expect("object to JSON")
}

/// Argo CD's health and kstatus of a live object.
fn health_of<K: kube::Resource + serde::Serialize>(o: &K) -> (String, &'static str) {
    let v = current(o);
    (argo_health(&v).0, kstatus(&v))
}

fn settled(o: &Value) -> bool {
    o["status"]["observedGeneration"] == o["metadata"]["generation"]
}

fn ready_now(o: &Value) -> bool {
    settled(o)
        && o["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Drives all three kinds through their lives; returns the derived calls no request shows.
async fn drive(op: &Operator) -> Vec<Attributes> {
    const NS: &str = "team-a";
    let deadline = Duration::from_secs(90);
    op.create_namespace(NS).await;

    // An Agent: Ready, transferred, stopped, deleted.
    let agents: Api<Agent> = op.agents(NS);
    agents.create(&PostParams::default(), &fixture::agent("rbac-agent", "acct_1", true)).await.expect("agent");
    let a = wait_for(&agents, "rbac-agent", deadline, "agent Ready", |a| ready_now(&current(a))).await;
    assert_eq!(health_of(&a), ("Healthy".into(), "Current"), "a Ready Agent");
    patch_spec(&agents, "rbac-agent", json!({"owner": "acct_2"})).await;
    wait_for(&agents, "rbac-agent", deadline, "agent transferred", |a| {
        ready_now(&current(a)) && current(a)["status"]["owner"] == "acct_2"
    })
    .await;
    patch_spec(&agents, "rbac-agent", json!({"running": false})).await;
    let a = wait_for(&agents, "rbac-agent", deadline, "agent stopped", |a| {
        ready_now(&current(a)) && current(a)["status"]["phase"] == "Stopped"
    })
    .await;
    assert_eq!(health_of(&a), ("Healthy".into(), "Current"), "a stopped Agent");
    agents.delete("rbac-agent", &DeleteParams::default()).await.expect("delete agent");
    wait_gone(&agents, "rbac-agent", deadline).await;

    // A PlainVM: Ready, stopped, deleted.
    let vms: Api<PlainVM> = op.plainvms(NS);
    let inbound = json!([{"protocol": "tcp", "port": "22", "sourceIPs": ["203.0.113.0/24"]}]);
    vms.create(&PostParams::default(), &fixture::plainvm("rbac-vm", "acct_1", true, inbound)).await.expect("vm");
    let v = wait_for(&vms, "rbac-vm", deadline, "vm Ready", |v| ready_now(&current(v))).await;
    assert_eq!(health_of(&v), ("Healthy".into(), "Current"), "a Ready PlainVM");
    patch_spec(&vms, "rbac-vm", json!({"running": false})).await;
    wait_for(&vms, "rbac-vm", deadline, "vm stopped", |v| {
        ready_now(&current(v)) && current(v)["status"]["phase"] == "Stopped"
    })
    .await;
    vms.delete("rbac-vm", &DeleteParams::default()).await.expect("delete vm");
    wait_gone(&vms, "rbac-vm", deadline).await;

    // A VirtualKey: published, rotated, over its budget, deleted.
    let keys: Api<VirtualKey> = Api::namespaced(op.client.clone(), NS);
    let key: VirtualKey = serde_json::from_value(json!({
        "apiVersion": "crabglamp.com/v1alpha1", "kind": "VirtualKey", "metadata": {"name": "rbac-key"},
        "spec": {"owner": "acct_1", "models": ["gpt-4o*"], "budget": {"monthlyUsd": "1.00"},
                 "rateLimit": {"requestsPerMinute": 60}, "secretName": "rbac-key-secret", "rotationToken": "1"}
    }))
    .expect("virtual key manifest");
    keys.create(&PostParams::default(), &key).await.expect("virtual key");
    let k = wait_for(&keys, "rbac-key", deadline, "key Ready", |k| ready_now(&current(k))).await;
    assert_eq!(health_of(&k), ("Healthy".into(), "Current"), "a published VirtualKey");
    patch_spec(&keys, "rbac-key", json!({"rotationToken": "2"})).await;
    wait_for(&keys, "rbac-key", deadline, "key rotated", |k| {
        ready_now(&current(k)) && current(k)["status"]["rotationToken"] == "2"
    })
    .await;
    // A new spec.secretName: the key moves, the old Secret is deleted.
    patch_spec(&keys, "rbac-key", json!({"secretName": "rbac-key-moved"})).await;
    wait_for(&keys, "rbac-key", deadline, "key moved", |k| {
        ready_now(&current(k)) && current(k)["status"]["secretName"] == "rbac-key-moved"
    })
    .await;
    // The OwnerReferencesPermissionEnforcement admission plugin (not in the sandbox) checks
    // `update` on the owner's finalizers for every ownerReference with blockOwnerDeletion.
    let secret = Api::<Secret>::namespaced(op.client.clone(), NS).get("rbac-key-moved").await.expect("key secret");
    let secret_refs = secret.metadata.owner_references.unwrap_or_default();
    let derived: Vec<Attributes> = secret_refs
        .iter()
        .filter(|r| r.block_owner_deletion == Some(true))
        .map(|r| {
            let crd = crabglamp_operator::api::all_crds()
                .into_iter()
                .find(|c| c.spec.names.kind == r.kind)
                .unwrap_or_else(|| panic!("an owner of our kinds, not {}", r.kind));
            Attributes {
                verb: "update".into(),
                group: crd.spec.group.clone(),
                resource: format!("{}/finalizers", crd.spec.names.plural),
                namespace: Some(NS.into()),
                name: Some(r.name.clone()),
            }
        })
        .collect();
    // Today the Secret's controller reference sets no blockOwnerDeletion, so nothing is
    // derived; the day it does, the chart must grant the owner's finalizers update.
    assert!(
        secret_owned_by(&secret_refs, &k),
        "the key's Secret is controlled by its VirtualKey (garbage collection deletes it)"
    );
    // The proxy records a spend of the whole budget: the key is blocked within one resync.
    let uid = k.metadata.uid.clone().expect("uid");
    let mut redis = redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    crabglamp_sandbox::llm_proxy::record_spend(
        &mut redis,
        &op.context.config().redis_namespace,
        &uid,
        "llm",
        "gpt-4o",
        1_000_000,
        chrono::Utc::now(),
    )
    .await
    .expect("proxy spends");
    let k = wait_for(&keys, "rbac-key", deadline, "key blocked", |k| {
        current(k)["status"]["blocked"] == true && settled(&current(k))
    })
    .await;
    assert_eq!(health_of(&k), ("Degraded".into(), "Current"), "a VirtualKey over its budget");
    keys.delete("rbac-key", &DeleteParams::default()).await.expect("delete key");
    wait_gone(&keys, "rbac-key", deadline).await;
    derived
}

fn secret_owned_by(refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference], key: &VirtualKey) -> bool {
    refs.iter().any(|r| r.controller == Some(true) && Some(&r.uid) == key.metadata.uid.as_ref())
}

/// The operator's calls as the stand-in's request log shows them, mapped as RequestInfo does,
/// and the non-resource paths it asked for.
fn calls_in_request_log(kube: &crabglamp_sandbox::kube::RunningKube) -> (Vec<Attributes>, BTreeSet<String>) {
    let (log, dropped) = kube.requests();
    assert_eq!(dropped, 0, "the request log kept every request");
    let mut calls = Vec::new();
    let mut non_resource = BTreeSet::new();
    for r in log.iter().filter(|r| r.user == OPERATOR_USER) {
        match attributes(&r.method, &r.path, &r.query) {
            Some(a) => calls.push(a),
            None => {
                non_resource.insert(r.path.clone());
            }
        }
    }
    (calls, non_resource)
}

/// The operator's calls as the real server's audit log records them (RequestInfo's own
/// attributes); the real authorizer judged each, so none may have been refused.
fn calls_in_audit_log(events: &[AuditEvent]) -> (Vec<Attributes>, BTreeSet<String>) {
    let mine: Vec<&AuditEvent> = events.iter().filter(|e| e.user.username == OPERATOR_USER).collect();
    let refused: Vec<String> =
        mine.iter().filter(|e| e.code() == 403).map(|e| format!("{} {}", e.verb, e.request_u_r_i)).collect();
    assert!(refused.is_empty(), "the real authorizer refused the operator's requests: {refused:#?}");
    let mut calls = Vec::new();
    let mut non_resource = BTreeSet::new();
    for e in mine {
        match e.object_ref.as_ref().filter(|o| !o.resource.is_empty()) {
            Some(o) => calls.push(Attributes {
                verb: e.verb.clone(),
                group: o.api_group.clone().unwrap_or_default(),
                resource: match &o.subresource {
                    Some(sub) => format!("{}/{sub}", o.resource),
                    None => o.resource.clone(),
                },
                namespace: o.namespace.clone(),
                name: o.name.clone(),
            }),
            None => {
                non_resource.insert(e.request_u_r_i.split('?').next().unwrap_or_default().to_owned());
            }
        }
    }
    (calls, non_resource)
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_grants_exactly_what_the_operator_calls() {
    let mut config = fixture::test_config();
    // VirtualKeys served in the one namespace the run uses, as the chart's flag says.
    config.virtual_key_namespaces = Some(vec!["team-a".to_owned()]);
    config.redis_namespace = format!("cgkrbac:{}:", uuid::Uuid::new_v4().simple());
    // The audit anchor lives in the release namespace, as the chart's POD_NAMESPACE says.
    config.anchor_namespace = Some(NAMESPACE.into());
    let op = Operator::start_with_redis(config, Some(redis_url())).await;
    op.create_namespace(NAMESPACE).await;
    let derived = drive(&op).await;
    // Leader election as `run --leader-election` does it, through the operator's own elector
    // and as the operator's user: take the Lease, renew it, release it.
    let client = op.kube.operator_client(OPERATOR_USER);
    let lease_name = helm::defaults()
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .flat_map(|d| d["spec"]["template"]["spec"]["containers"][0]["args"].as_array().cloned().unwrap_or_default())
        .find_map(|a| a.as_str().and_then(|a| a.strip_prefix("--lease-name=")).map(str::to_owned))
        .expect("the chart passes --lease-name");
    let lease = crabglamp_operator::leader::LeaseConfig::new(lease_name, NAMESPACE, "rbac-run");
    let mut elector = crabglamp_operator::leader::Elector::new(client, lease);
    let until = || std::time::Instant::now() + std::time::Duration::from_secs(10);
    assert!(elector.try_acquire_or_renew(until()).await.expect("take the Lease"), "the Lease is free");
    assert!(elector.try_acquire_or_renew(until()).await.expect("renew the Lease"), "still ours");
    elector.release(until()).await.expect("release the Lease");
    let op = op.stop().await;
    if let Ok(rt) = op.context.key_runtime() {
        rt.cache.clear_namespace().await.expect("clear the run's Redis namespace");
    }
    let (mut calls, non_resource) = match &op.kube {
        KubeServer::Sandbox(kube) => calls_in_request_log(kube),
        KubeServer::Real(_) => calls_in_audit_log(&op.kube.audit_events()),
    };
    calls.extend(derived);
    assert!(calls.len() > 20, "the operator's requests were recorded: {}", calls.len());
    for path in &non_resource {
        assert!(
            ["/api", "/apis", "/version"].iter().any(|p| path == p || path.starts_with(&format!("{p}/"))),
            "a non-resource request outside discovery: {path}"
        );
    }

    // What the run needs, grouped for the failure messages.
    let mut needed: BTreeMap<(String, String, String, bool), usize> = BTreeMap::new();
    for a in &calls {
        *needed.entry((a.group.clone(), a.resource.clone(), a.verb.clone(), a.namespace.is_some())).or_default() += 1;
    }
    println!("the operator's calls (group, resource, verb, namespaced) -> count:");
    for (k, n) in &needed {
        println!("  {k:?}: {n}");
    }

    let rules = bound_rules(&with_virtual_keys(&["virtualKeys.namespaces={team-a}"]));
    // Every call is allowed...
    let refused: Vec<&Attributes> = calls.iter().filter(|a| !rules.iter().any(|r| r.allows(a))).collect();
    assert!(refused.is_empty(), "the chart's RBAC refuses calls the operator makes: {refused:#?}");
    // ...and every grant is used, or listed with its reason.
    let used: BTreeSet<Grant> = calls
        .iter()
        .flat_map(|a| {
            rules
                .iter()
                .filter(|r| r.allows(a))
                .flat_map(|r| r.grants())
                .filter(move |(_, g, res, v)| *g == a.group && *res == a.resource && *v == a.verb)
        })
        .collect();
    let granted: BTreeSet<Grant> = rules.iter().flat_map(Rule::grants).collect();
    let unused: Vec<&Grant> = granted
        .iter()
        .filter(|g| !used.contains(*g))
        .filter(|(_, g, r, v)| !listed(UNREACHED, g, r, v) && !listed(MAYBE, g, r, v))
        .collect();
    assert!(unused.is_empty(), "the chart grants what the operator never calls: {unused:#?}");
    let reached: Vec<&Grant> = used.iter().filter(|(_, g, r, v)| listed(UNREACHED, g, r, v)).collect();
    assert!(reached.is_empty(), "listed as unreached but called: take them off UNREACHED: {reached:#?}");
    // Nothing cluster-wide is granted that the operator only calls in its own namespace.
    for (scope, group, resource, _) in &granted {
        if listed(UNREACHED, group, resource, "create") {
            assert_eq!(scope.as_deref(), Some(NAMESPACE), "{group}/{resource} only in the release namespace");
        }
    }
}

/// Renders with VirtualKeys on (a REDIS_URL Secret named) and `sets`.
fn with_virtual_keys(sets: &[&str]) -> Vec<Value> {
    let all = [&["secrets.redisUrl.existingSecret=crabglamp-operator"][..], sets].concat();
    helm::template(&[], &all).unwrap_or_else(|e| panic!("render with {all:?}:\n{e}"))
}

/// Where the rendered RBAC grants Secrets (None: cluster-wide), with the verbs.
fn secret_scopes(objects: &[Value]) -> BTreeMap<Option<String>, BTreeSet<String>> {
    let mut scopes: BTreeMap<Option<String>, BTreeSet<String>> = BTreeMap::new();
    for (scope, group, resource, verb) in bound_rules(objects).iter().flat_map(Rule::grants) {
        if group.is_empty() && resource == "secrets" {
            scopes.entry(scope).or_default().insert(verb);
        }
    }
    scopes
}

fn operator_args(objects: &[Value]) -> Vec<String> {
    let container = &helm::one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    strings(&container["args"])
}

#[test]
fn secret_access_only_where_virtual_keys_live() {
    let verbs: BTreeSet<String> = ["get", "list", "watch", "create", "update", "delete"].map(str::to_owned).into();
    // Without VirtualKeys the operator reads no Secret, so it may read none.
    let defaults = helm::defaults();
    assert_eq!(secret_scopes(&defaults), BTreeMap::new(), "no Secret access without VirtualKeys");
    assert!(!operator_args(&defaults).iter().any(|a| a.starts_with("--virtual-key-namespaces")));
    // Listed namespaces: a Role and RoleBinding in each, nothing cluster-wide, and the operator
    // serves (and watches Secrets in) those namespaces only.
    let listed = with_virtual_keys(&["virtualKeys.namespaces={team-a,team-b}"]);
    let expected: BTreeMap<Option<String>, BTreeSet<String>> =
        [(Some("team-a".to_owned()), verbs.clone()), (Some("team-b".to_owned()), verbs.clone())].into();
    assert_eq!(secret_scopes(&listed), expected, "Secrets in the listed namespaces only");
    assert!(operator_args(&listed).contains(&"--virtual-key-namespaces=team-a,team-b".to_owned()));
    // watchNamespace without a list: its namespace.
    let watched = with_virtual_keys(&["watchNamespace=team-c"]);
    assert_eq!(secret_scopes(&watched), [(Some("team-c".to_owned()), verbs.clone())].into());
    // Cluster-wide only when asked for.
    let everywhere = with_virtual_keys(&["virtualKeys.allNamespaces=true"]);
    assert_eq!(secret_scopes(&everywhere), [(None, verbs.clone())].into(), "cluster-wide when asked");
    assert!(!operator_args(&everywhere).iter().any(|a| a.starts_with("--virtual-key-namespaces")));
    // VirtualKeys on without saying where: refused, with what to set.
    let unsaid = helm::template(&[], &["secrets.redisUrl.existingSecret=crabglamp-operator"]);
    let error = unsaid.expect_err("VirtualKeys without namespaces must not render");
    assert!(error.contains("virtualKeys.namespaces") && error.contains("virtualKeys.allNamespaces"), "{error}");
    let both = helm::template(
        &[],
        &["secrets.redisUrl.existingSecret=r", "virtualKeys.namespaces={a}", "virtualKeys.allNamespaces=true"],
    );
    assert!(both.expect_err("both must not render").contains("not both"));
}

#[test]
fn watch_namespace_turns_the_cluster_role_into_a_role_in_that_namespace() {
    let cluster = bound_rules(&helm::defaults());
    let namespaced_objects = helm::template(&[], &["watchNamespace=team-a"]).expect("render with watchNamespace");
    assert!(
        namespaced_objects.iter().all(|o| o["kind"] != "ClusterRole" && o["kind"] != "ClusterRoleBinding"),
        "nothing cluster-wide with watchNamespace"
    );
    let namespaced = bound_rules(&namespaced_objects);
    let as_set = |rules: &[Rule], from: Option<&str>, to: Option<&str>| -> BTreeSet<Grant> {
        rules
            .iter()
            .flat_map(Rule::grants)
            .filter(|(s, ..)| s.as_deref() == from)
            .map(|(_, g, r, v)| (to.map(str::to_owned), g, r, v))
            .collect()
    };
    assert_eq!(
        as_set(&namespaced, Some("team-a"), None),
        as_set(&cluster, None, None),
        "the Role in the watched namespace grants what the ClusterRole grants"
    );
    assert_eq!(
        as_set(&namespaced, Some(NAMESPACE), None),
        as_set(&cluster, Some(NAMESPACE), None),
        "the release-namespace Role is the same"
    );
    // Leader election off: no Lease rule at all.
    let without =
        bound_rules(&helm::template(&[], &["leaderElection.enabled=false", "replicaCount=1"]).expect("render"));
    assert!(
        without.iter().all(|r| !r.resources.contains(&"leases".to_owned())),
        "no Lease rule without leader election"
    );
    // The Lease and anchor rules name their objects, but for create (which a name cannot restrict).
    for r in cluster.iter().filter(|r| r.scope.is_some()) {
        assert!(r.verbs == ["create"] || !r.names.is_empty(), "{r:?}");
    }
}

#[test]
fn request_attributes_follow_kube_apiserver() {
    let a = |m: &str, p: &str, q: &str| attributes(m, p, q).map(|a| (a.verb, a.group, a.resource, a.namespace, a.name));
    let s = |x: &str| x.to_owned();
    assert_eq!(
        a("GET", "/apis/crabglamp.com/v1alpha1/agents", "watch=true&resourceVersion=5"),
        Some((s("watch"), s("crabglamp.com"), s("agents"), None, None))
    );
    assert_eq!(
        a("GET", "/apis/crabglamp.com/v1alpha1/agents", "limit=500"),
        Some((s("list"), s("crabglamp.com"), s("agents"), None, None))
    );
    assert_eq!(
        a("PATCH", "/apis/crabglamp.com/v1alpha1/namespaces/t/agents/x/status", ""),
        Some((s("patch"), s("crabglamp.com"), s("agents/status"), Some(s("t")), Some(s("x"))))
    );
    assert_eq!(
        a("GET", "/api/v1/namespaces/t/secrets/k", ""),
        Some((s("get"), s(""), s("secrets"), Some(s("t")), Some(s("k"))))
    );
    assert_eq!(
        a("PUT", "/api/v1/namespaces/t/secrets/k", ""),
        Some((s("update"), s(""), s("secrets"), Some(s("t")), Some(s("k"))))
    );
    assert_eq!(
        a("POST", "/apis/events.k8s.io/v1/namespaces/t/events", ""),
        Some((s("create"), s("events.k8s.io"), s("events"), Some(s("t")), None))
    );
    assert_eq!(
        a("DELETE", "/api/v1/namespaces/t/secrets", ""),
        Some((s("deletecollection"), s(""), s("secrets"), Some(s("t")), None))
    );
    assert_eq!(
        a("GET", "/api/v1/namespaces/t", ""),
        Some((s("get"), s(""), s("namespaces"), Some(s("t")), Some(s("t")))),
        "kube-apiserver's RequestInfo puts a Namespace object in its own namespace"
    );
    assert_eq!(a("GET", "/api/v1/namespaces", ""), Some((s("list"), s(""), s("namespaces"), None, None)));
    assert_eq!(a("GET", "/apis", ""), None);
    assert_eq!(a("GET", "/api/v1", ""), None);
}
