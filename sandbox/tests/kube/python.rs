//! The official Kubernetes Python client (`CRABGLAMP_PYTHON`, a venv with `kubernetes`) against
//! the sandbox API server: CRUD, status, watch, finalizers, discovery, and a CRD created through
//! the API and then used.

use std::time::Duration;

use crate::common::{clear_proxies, start};

const SCRIPT: &str = r#"
import sys, threading
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

config.load_kube_config(sys.argv[1])
api = client.ApiClient()
co = client.CustomObjectsApi(api)
core = client.CoreV1Api(api)
G, V, NS = "crabglamp.com", "v1alpha1", "default"

agent = {"apiVersion": f"{G}/{V}", "kind": "Agent", "metadata": {"name": "py-bot"},
         "spec": {"owner": "acct_py", "region": "us"}}
created = co.create_namespaced_custom_object(G, V, NS, "agents", agent)
assert created["metadata"]["generation"] == 1, created
assert created["spec"]["serverType"] == "cpx22", "defaults applied"
rv = created["metadata"]["resourceVersion"]

# status through the subresource
st = co.patch_namespaced_custom_object_status(G, V, NS, "agents", "py-bot", {"status": {"phase": "Running"}})
assert st["status"]["phase"] == "Running" and st["metadata"]["generation"] == 1, st

# invalid update: 422 with the rule's message
try:
    co.patch_namespaced_custom_object(G, V, NS, "agents", "py-bot", {"spec": {"region": "eu"}})
    raise SystemExit("region change accepted")
except ApiException as e:
    assert e.status == 422 and "spec.region is immutable" in e.body, e.body

# watch from the create: the status change arrives as MODIFIED
w = watch.Watch()
types = []
for ev in w.stream(co.list_namespaced_custom_object, G, V, NS, "agents", resource_version=rv, timeout_seconds=5):
    types.append(ev["type"])
    if ev["type"] == "MODIFIED":
        w.stop()
assert "MODIFIED" in types, types

# finalizers: delete keeps the object until the finalizer goes
co.patch_namespaced_custom_object(G, V, NS, "agents", "py-bot", {"metadata": {"finalizers": ["example.com/hold"]}})
co.delete_namespaced_custom_object(G, V, NS, "agents", "py-bot")
held = co.get_namespaced_custom_object(G, V, NS, "agents", "py-bot")
assert held["metadata"].get("deletionTimestamp"), held
co.patch_namespaced_custom_object(G, V, NS, "agents", "py-bot", {"metadata": {"finalizers": None}})
try:
    co.get_namespaced_custom_object(G, V, NS, "agents", "py-bot")
    raise SystemExit("object survived its last finalizer")
except ApiException as e:
    assert e.status == 404, e

# typed core API: Secrets, Namespaces, strategic merge patch on a built-in
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
core.create_namespaced_secret("py", client.V1Secret(metadata=client.V1ObjectMeta(name="s", labels={"a": "b"}), string_data={"k": "v"}))
core.patch_namespaced_secret("s", "py", {"metadata": {"labels": {"c": "d"}}})
assert core.read_namespaced_secret("s", "py").data == {"k": "dg=="}, "stringData folds into data"
secrets = core.list_namespaced_secret("py", label_selector="a=b,c=d")
assert [s.metadata.name for s in secrets.items] == ["s"], secrets
core.delete_namespaced_secret("s", "py", propagation_policy="Background")

# a CRD created through the API, then used
ext = client.ApiextensionsV1Api(api)
crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "widgets.example.com"},
       "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [{"name": "v1", "served": True, "storage": True,
                              "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                                  "properties": {"size": {"type": "integer", "maximum": 10}}}}}}}]}}
ext.create_custom_resource_definition(crd)
co.create_namespaced_custom_object("example.com", "v1", NS, "widgets",
    {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}})
try:
    co.create_namespaced_custom_object("example.com", "v1", NS, "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "big"}, "spec": {"size": 30}})
    raise SystemExit("schema not enforced on a CRD created through the API")
except ApiException as e:
    assert e.status == 422, e

# dynamic client: legacy discovery
dyn = DynamicClient(api)
widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")
assert [i.metadata.name for i in widgets.get(namespace=NS).items] == ["w"]
agents = dyn.resources.get(api_version=f"{G}/{V}", kind="Agent")
assert agents.namespaced
print("python client OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_python_client() {
    let python = std::env::var("CRABGLAMP_PYTHON")
        .expect("CRABGLAMP_PYTHON is not set: point it at a python with the `kubernetes` package (scripts/test does)");
    clear_proxies();
    let sb = start().await;
    let script = sb.dir.path().join("client.py");
    std::fs::write(&script, SCRIPT).expect("write script");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python).arg(&script).arg(&sb.kubeconfig).kill_on_drop(true).output(),
    )
    .await
    .expect("the python client finished in time")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("python client OK"), "stdout: {stdout}\nstderr: {stderr}");
}
