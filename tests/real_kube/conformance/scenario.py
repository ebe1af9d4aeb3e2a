"""The official Kubernetes Python client's part of the differential conformance scenario.

Run by tests/real_kube/conformance.rs against the real kube-apiserver and against the
sandbox's stand-in: `python scenario.py KUBECONFIG [NAMESPACE]`. Every step's outcome (the
server's JSON answer, or the error Status it sent) is printed as one JSON document
`{"steps": [{"id": ..., "result": ...}]}` on stdout; the Rust test normalises and diffs the
two runs. A step that raises an unexpected exception records it and the scenario goes on, so
one difference does not hide the others.

Requests go through the client's own API methods (so its content types and parameters are
what the servers see); answers are kept as sent (`_preload_content=False`), since the typed
models would drop and reformat fields. Nothing here sleeps to give a server time: waits are
watches, or reads bounded by a deadline.
"""

import json
import sys
import time
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

G, V = "crabglamp.com", "v1alpha1"
NS = sys.argv[2] if len(sys.argv) > 2 else "conf-py"
TABLE = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
         "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
MERGE, JSON_PATCH, STRATEGIC = "application/merge-patch+json", "application/json-patch+json", "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
DEADLINE = 60  # seconds any one wait may take before its step fails

config.load_kube_config(sys.argv[1])
api = client.ApiClient()
co = client.CustomObjectsApi(api)
core = client.CoreV1Api(api)
coord = client.CoordinationV1Api(api)
events = client.EventsV1Api(api)

steps = []


def record(step_id, fn):
    """Runs one step; records its result, the API error it met, or an unexpected exception."""
    try:
        result = fn()
    except ApiException as e:
        result = {"apiError": error(e)}
    except Exception:  # noqa: BLE001 - recorded, so the diff shows it
        result = {"exception": traceback.format_exc().strip().splitlines()[-1]}
    steps.append({"id": step_id, "result": result})
    return result


def error(e):
    """What an ApiException carries: the HTTP status and the Status body."""
    try:
        body = json.loads(e.body) if e.body else None
    except ValueError:
        body = e.body
    return {"status": e.status, "body": body if body is not None else e.reason}


def expect_error(fn):
    """A step that must fail: the error is its result (a success is recorded, and differs)."""
    try:
        return {"unexpectedSuccess": fn()}
    except ApiException as e:
        return {"apiError": error(e)}


def call(fn, *args, **kw):
    """A typed API method, its JSON answer kept as sent; an error status raises."""
    resp = fn(*args, _preload_content=False, **kw)
    data = resp.read()
    if not 200 <= resp.status < 300:
        raise ApiException(status=resp.status, reason=resp.reason, body=data.decode())
    return json.loads(data)


def raw(method, path, query=None, accept="application/json", body=None, content_type="application/json"):
    """A request through the client's HTTP machinery with a chosen Accept header; a body goes
    as given (the typed API methods turn it into their models first, which reformats times)."""
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = content_type
    m, url, headers, body, _ = api.param_serialize(
        method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"])
    resp = api.call_api(m, url, headers, body)
    data = resp.read()
    if not 200 <= resp.status < 300:
        raise ApiException(status=resp.status, reason=resp.reason, body=data.decode())
    return json.loads(data)


def raw_watch(path, query, on_event):
    """A watch read line by line, every event kept as sent (the client's watch helper retries
    on 410 and turns ERROR events into exceptions). `on_event(event)` returns True to stop."""
    m, url, headers, body, _ = api.param_serialize(
        "GET", path, query_params=query + [("watch", "true"), ("timeoutSeconds", str(DEADLINE))],
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    resp = api.call_api(m, url, headers, body)
    seen, buffer = [], b""
    try:
        for chunk in resp.response.stream(4096):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    event = json.loads(line)
                    seen.append(event)
                    if on_event(event):
                        return {"status": resp.status, "events": seen}
    finally:
        resp.response.release_conn()
    return {"status": resp.status, "events": seen, "endedByServer": True}


def summary(event, keep_object=False):
    """An event as type, name and labels (and the whole object for bookmarks and errors)."""
    obj = event.get("raw_object", event.get("object")) or {}
    out = {"type": event["type"], "name": obj.get("metadata", {}).get("name"),
           "labels": obj.get("metadata", {}).get("labels")}
    if keep_object or event["type"] in ("BOOKMARK", "ERROR"):
        out["object"] = obj
    return out


def agent(name, labels=None, **spec):
    body = {"apiVersion": f"{G}/{V}", "kind": "Agent",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"owner": "acct_conf", "region": "us", **spec}}
    if labels:
        body["metadata"]["labels"] = labels
    return body


def create_agent(name, labels=None, **spec):
    return co.create_namespaced_custom_object(G, V, NS, "agents", agent(name, labels, **spec))


def patch_agent(name, body, content_type, **kw):
    return co.patch_namespaced_custom_object(G, V, NS, "agents", name, body, _content_type=content_type, **kw)


def get_agent(name):
    return co.get_namespaced_custom_object(G, V, NS, "agents", name)


def list_agents(**kw):
    return co.list_namespaced_custom_object(G, V, NS, "agents", **kw)


def names(items):
    return [i["metadata"]["name"] for i in items or []]


def wait_gone(read, what):
    """Reads until the object is gone (404); garbage collection runs in kube-controller-manager
    on the real server, so this is a wait on a condition, bounded by DEADLINE."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        try:
            read()
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        time.sleep(0.05)  # the poll period of the wait, not a delay the server needs
    raise TimeoutError(f"{what} still there after {DEADLINE}s")


def wait_for(read, cond, what):
    """Reads until `cond(answer)`, bounded by DEADLINE; returns that answer."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        answer = read()
        if cond(answer):
            return answer
        time.sleep(0.05)  # the poll period of the wait, not a delay the server needs
    raise TimeoutError(f"{what} not reached after {DEADLINE}s")


# --- Namespace --------------------------------------------------------------------------------
record("namespace.create", lambda: call(core.create_namespace, {"metadata": {"name": NS}}))

# --- Create, read, patch of a custom resource --------------------------------------------------
record("agent.create", lambda: create_agent("alpha", {"tier": "gold"}, image="ubuntu-24.04"))
record("agent.create.exists", lambda: expect_error(lambda: create_agent("alpha")))
record("agent.create.invalid", lambda: expect_error(lambda: create_agent("bad", region="mars")))
record("agent.create.generate-name", lambda: co.create_namespaced_custom_object(G, V, NS, "agents", {
    "apiVersion": f"{G}/{V}", "kind": "Agent", "metadata": {"generateName": "gen-"},
    "spec": {"owner": "acct_conf", "region": "eu"}}))
record("agent.get", lambda: get_agent("alpha"))
record("agent.get.missing", lambda: expect_error(lambda: get_agent("nobody")))
record("agent.patch.merge", lambda: patch_agent(
    "alpha", {"metadata": {"labels": {"tier": "silver", "team": "a"}}, "spec": {"running": False}}, MERGE))
record("agent.patch.json", lambda: patch_agent(
    "alpha", [{"op": "add", "path": "/metadata/annotations", "value": {"note": "json"}},
              {"op": "replace", "path": "/spec/running", "value": True}], JSON_PATCH))
record("agent.patch.json.test-null", lambda: patch_agent(
    "alpha", [{"op": "test", "path": "/metadata/finalizers", "value": None},
              {"op": "add", "path": "/metadata/labels/tested", "value": "yes"}], JSON_PATCH)["metadata"]["labels"])
record("agent.patch.json.test-fails", lambda: expect_error(lambda: patch_agent(
    "alpha", [{"op": "test", "path": "/spec/region", "value": "eu"}], JSON_PATCH)))
record("agent.patch.strategic", lambda: expect_error(lambda: patch_agent(
    "alpha", {"metadata": {"labels": {"x": "y"}}}, STRATEGIC)))
record("agent.patch.immutable", lambda: expect_error(lambda: patch_agent("alpha", {"spec": {"region": "eu"}}, MERGE)))
record("agent.patch.unknown-field", lambda: patch_agent("alpha", {"spec": {"bogus": 1}}, MERGE)["spec"])


def stale_replace():
    current = get_agent("alpha")
    current["metadata"]["resourceVersion"] = "1"
    return co.replace_namespaced_custom_object(G, V, NS, "agents", "alpha", current)


record("agent.replace.stale", lambda: expect_error(stale_replace))


def replace():
    current = get_agent("alpha")
    current["spec"]["owner"] = "acct_replaced"
    current["status"] = {"phase": "Ignored"}
    return co.replace_namespaced_custom_object(G, V, NS, "agents", "alpha", current)


record("agent.replace", replace)

# --- Server-side apply and a field-manager conflict --------------------------------------------
record("agent.apply.create", lambda: patch_agent(
    "applied", agent("applied", {"tier": "gold"}, running=True), APPLY, field_manager="alice"))
record("agent.apply.same-value", lambda: patch_agent(
    "applied", agent("applied", running=True), APPLY, field_manager="bob"))
record("agent.apply.conflict", lambda: expect_error(lambda: patch_agent(
    "applied", agent("applied", running=False), APPLY, field_manager="bob")))
record("agent.apply.conflict.update-manager", lambda: expect_error(lambda: (
    patch_agent("applied", {"spec": {"owner": "acct_dave"}}, MERGE, field_manager="dave"),
    patch_agent("applied", agent("applied"), APPLY, field_manager="alice"))[1]))
record("agent.apply.force", lambda: patch_agent(
    "applied", agent("applied", running=False), APPLY, field_manager="bob", force=True))
record("agent.apply.shrink", lambda: patch_agent("applied", agent("applied"), APPLY, field_manager="alice"))
record("agent.apply.no-manager", lambda: expect_error(lambda: patch_agent("applied", agent("applied"), APPLY)))
record("agent.apply.wrong-version", lambda: expect_error(lambda: patch_agent(
    "applied", {**agent("applied"), "apiVersion": f"{G}/v9"}, APPLY, field_manager="alice")))
record("agent.apply.force-on-merge", lambda: expect_error(lambda: patch_agent(
    "applied", {"metadata": {"labels": {"f": "1"}}}, MERGE, force=True)))

# --- Status subresource ------------------------------------------------------------------------
CONDITION = {"type": "Ready", "status": "True", "reason": "Running", "message": "up",
             "lastTransitionTime": "2025-01-01T00:00:00Z"}
record("agent.status.patch", lambda: co.patch_namespaced_custom_object_status(
    G, V, NS, "agents", "alpha", {"status": {"phase": "Running", "conditions": [CONDITION]}}))
record("agent.status.ignored-on-main", lambda: patch_agent(
    "alpha", {"status": {"phase": "Failed"}, "metadata": {"labels": {"status": "tried"}}}, MERGE))
record("agent.status.spec-ignored", lambda: co.patch_namespaced_custom_object_status(
    G, V, NS, "agents", "alpha", {"spec": {"running": False}, "status": {"phase": "Stopping"}}))
record("agent.status.get", lambda: co.get_namespaced_custom_object_status(G, V, NS, "agents", "alpha"))

# --- ConfigMap: strategic merge and JSON patch on a built-in ----------------------------------
record("configmap.create", lambda: call(core.create_namespaced_config_map, NS, {
    "metadata": {"name": "settings", "labels": {"app": "conf"}}, "data": {"a": "1", "b": "2"}}))
record("configmap.patch.strategic", lambda: call(core.patch_namespaced_config_map, "settings", NS, {
    "metadata": {"labels": {"extra": "yes"}}, "data": {"b": None, "c": "3"}}))
record("configmap.patch.json", lambda: call(core.patch_namespaced_config_map, "settings", NS, [
    {"op": "replace", "path": "/data/a", "value": "10"}, {"op": "remove", "path": "/metadata/labels/extra"}]))
record("configmap.patch.merge", lambda: call(core.patch_namespaced_config_map, "settings", NS, {
    "data": {"c": None}}, _content_type=MERGE))
record("configmap.apply", lambda: call(core.patch_namespaced_config_map, "settings", NS, {
    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"d": "4"}},
    field_manager="carol", _content_type=APPLY))
record("configmap.apply.no-name", lambda: expect_error(lambda: call(core.patch_namespaced_config_map, "settings", NS, {
    "apiVersion": "v1", "kind": "ConfigMap", "data": {"d": "5"}}, field_manager="carol", _content_type=APPLY)))
record("configmap.create.bad-type", lambda: expect_error(lambda: raw(
    "POST", f"/api/v1/namespaces/{NS}/configmaps", body={"metadata": {"name": "typed"}, "data": {"n": 1}})))
record("configmap.apply.wrong-version", lambda: expect_error(lambda: call(core.patch_namespaced_config_map, "settings", NS, {
    "apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "settings"}}, field_manager="carol", _content_type=APPLY)))
record("configmap.apply.create-without-name", lambda: expect_error(lambda: call(
    core.patch_namespaced_config_map, "nameless", NS, {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}},
    field_manager="carol", _content_type=APPLY)))


def configmap_finalizers():
    out = {"create": call(core.create_namespaced_config_map, NS, {
        "metadata": {"name": "held-cm", "finalizers": ["crabglamp.com/hold"]}})["metadata"]}
    out["delete"] = call(core.delete_namespaced_config_map, "held-cm", NS)
    out["add-while-deleting"] = expect_error(lambda: call(core.patch_namespaced_config_map, "held-cm", NS, [
        {"op": "add", "path": "/metadata/finalizers/-", "value": "crabglamp.com/other"}]))
    out["release"] = call(core.patch_namespaced_config_map, "held-cm", NS, {"metadata": {"finalizers": None}},
                          _content_type=MERGE)
    out["gone"] = expect_error(lambda: call(core.read_namespaced_config_map, "held-cm", NS))
    return out


record("configmap.finalizers", configmap_finalizers)
record("secret.create", lambda: call(core.create_namespaced_secret, NS, {
    "metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}, "type": "Opaque"}))

# --- Label and field selectors -----------------------------------------------------------------
for i in range(5):
    record(f"select.create.{i}", lambda i=i: create_agent(
        f"sel-{i}", {"tier": "gold" if i % 2 == 0 else "bronze", "idx": str(i)})["metadata"]["labels"])
record("select.label.equals", lambda: names(list_agents(label_selector="tier=gold")["items"]))
record("select.label.set", lambda: names(list_agents(label_selector="idx in (1,3),tier!=gold")["items"]))
record("select.label.exists", lambda: names(list_agents(label_selector="!team,idx")["items"]))
record("select.label.invalid", lambda: expect_error(lambda: list_agents(label_selector="tier==gold==x")))
record("select.field.name", lambda: names(list_agents(field_selector="metadata.name=sel-3")["items"]))
record("select.field.not-name", lambda: names(list_agents(
    field_selector=f"metadata.name!=sel-3,metadata.namespace={NS}", label_selector="idx")["items"]))
record("select.field.unsupported", lambda: expect_error(lambda: list_agents(field_selector="spec.region=us")))
record("select.field.configmap", lambda: names(call(
    core.list_namespaced_config_map, NS, field_selector="metadata.name=settings")["items"]))
record("select.all-namespaces", lambda: [
    (i["metadata"]["namespace"], i["metadata"]["name"]) for i in co.list_cluster_custom_object(
        G, V, "agents", label_selector="tier=bronze")["items"]])

# --- Paged list while objects change -----------------------------------------------------------


def paged_list():
    pages = []
    first = list_agents(label_selector="idx", limit=2)
    pages.append(first)
    # Changes between pages: the continued list still shows the first page's snapshot.
    create_agent("sel-9", {"tier": "gold", "idx": "9"})
    co.delete_namespaced_custom_object(G, V, NS, "agents", "sel-2")
    patch_agent("sel-3", {"metadata": {"labels": {"tier": "platinum"}}}, MERGE)
    token = first["metadata"].get("continue")
    while token and len(pages) < 10:
        page = list_agents(label_selector="idx", limit=2, _continue=token)
        pages.append(page)
        token = page["metadata"].get("continue")
    return [{"names": names(p["items"]), "tiers": [i["metadata"]["labels"]["tier"] for i in p["items"]],
             "metadata": p["metadata"]} for p in pages]


record("list.paged", paged_list)
record("list.paged.unselected", lambda: [
    {"names": names(p["items"]), "metadata": p["metadata"]} for p in [list_agents(limit=3)]])
record("list.after", lambda: names(list_agents(label_selector="idx")["items"]))
record("list.limit-covers-all", lambda: list_agents(label_selector="idx", limit=500)["metadata"])
record("list.bad-continue", lambda: expect_error(lambda: list_agents(limit=2, _continue="not-a-token")))
record("list.rv-match-exact-future", lambda: expect_error(lambda: list_agents(
    resource_version="999999999", resource_version_match="Exact")))
record("list.rv-match-without-rv", lambda: expect_error(lambda: list_agents(resource_version_match="NotOlderThan")))
record("list.rv-match-exact-zero", lambda: expect_error(lambda: list_agents(resource_version="0", resource_version_match="Exact")))
record("list.rv-match-unknown", lambda: expect_error(lambda: list_agents(resource_version="0", resource_version_match="Newest")))

# --- Watches -----------------------------------------------------------------------------------


def watch_from_rv():
    rv = list_agents(limit=1)["metadata"]["resourceVersion"]
    create_agent("watched", {"w": "1"})
    patch_agent("watched", {"metadata": {"labels": {"w": "2"}}}, MERGE)
    co.delete_namespaced_custom_object(G, V, NS, "agents", "watched")
    # Bookmarks are allowed but neither server owes one within this watch (kube-apiserver
    # sends them about once a minute): the watch stops at the DELETED event.
    w = watch.Watch()
    seen = []
    for event in w.stream(co.list_namespaced_custom_object, G, V, NS, "agents", resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=DEADLINE):
        if event["type"] != "BOOKMARK":
            seen.append(summary(event))
        if event["type"] == "DELETED":
            w.stop()
    return seen


record("watch.from-rv", watch_from_rv)


def streaming_from_rv():
    # A streaming list from a resourceVersion (what client-go 1.35 and kube-rs' streaming
    # lists send): the state at least that new as ADDED events, then the bookmark annotated
    # k8s.io/initial-events-end; then a write made after it arrives as MODIFIED.
    # From the version of the "before" write itself: NotOlderThan an older one lets the real
    # server's watch cache answer from a state without it when it lags (it did, under load).
    rv = patch_agent("sel-0", {"metadata": {"labels": {"stream": "before"}}}, MERGE)["metadata"]["resourceVersion"]

    def on_event(event):
        if event["type"] == "BOOKMARK":
            patch_agent("sel-0", {"metadata": {"labels": {"stream": "after"}}}, MERGE)
        return event["type"] == "MODIFIED"

    got = raw_watch(f"/apis/{G}/{V}/namespaces/{NS}/agents",
                    [("labelSelector", "tier=gold"), ("resourceVersion", rv), ("sendInitialEvents", "true"),
                     ("resourceVersionMatch", "NotOlderThan"), ("allowWatchBookmarks", "true")], on_event)
    got["events"] = [summary(e) for e in got["events"]]
    return got


record("watch.streaming-list", streaming_from_rv)
record("watch.streaming-list.without-match", lambda: expect_error(lambda: raw(
    "GET", f"/apis/{G}/{V}/namespaces/{NS}/agents", [("watch", "true"), ("sendInitialEvents", "true")])))
# resourceVersion=1 is older than any watch cache's window on the real server (its cache of
# agents starts at the revision it was created at, after the CRD) and older than the
# stand-in's history (which starts after its own bootstrap): both answer 200 and one ERROR
# event, 410 Expired. A watch far behind after many writes does not work on the real server: its
# watch cache keeps every event younger than 75 s, however many.
record("watch.too-old.raw", lambda: raw_watch(f"/apis/{G}/{V}/namespaces/{NS}/agents",
                                              [("resourceVersion", "1")], lambda e: True))
record("watch.too-old.client", lambda: expect_error(lambda: list(watch.Watch().stream(
    co.list_namespaced_custom_object, G, V, NS, "agents", resource_version="1", timeout_seconds=DEADLINE))))
record("watch.field-selector", lambda: [summary(e) for e in raw_watch(
    f"/apis/{G}/{V}/namespaces/{NS}/agents",
    [("fieldSelector", "metadata.name=sel-4"), ("sendInitialEvents", "true"),
     ("resourceVersionMatch", "NotOlderThan"), ("allowWatchBookmarks", "true")],
    lambda e: e["type"] == "BOOKMARK")["events"]])


def watch_label_transition():
    # An object entering and leaving a label selection is ADDED and DELETED for that watch.
    rv = list_agents(limit=1)["metadata"]["resourceVersion"]
    patch_agent("sel-1", {"metadata": {"labels": {"tier": "gold"}}}, MERGE)
    patch_agent("sel-1", {"metadata": {"labels": {"tier": "bronze"}}}, MERGE)
    got = raw_watch(f"/apis/{G}/{V}/namespaces/{NS}/agents",
                    [("labelSelector", "tier=gold"), ("resourceVersion", rv)], lambda e: e["type"] == "DELETED")
    return [summary(e) for e in got["events"]]


record("watch.label-transition", watch_label_transition)

# --- Finalizers and deletionTimestamp ----------------------------------------------------------


def finalizers():
    out = {}
    create_agent("held")
    out["add"] = patch_agent("held", {"metadata": {"finalizers": ["crabglamp.com/hold"]}}, MERGE)["metadata"]
    out["delete"] = co.delete_namespaced_custom_object(G, V, NS, "agents", "held")
    out["get"] = get_agent("held")
    out["delete.again"] = co.delete_namespaced_custom_object(G, V, NS, "agents", "held")["metadata"]
    out["add-while-deleting"] = expect_error(lambda: patch_agent(
        "held", [{"op": "add", "path": "/metadata/finalizers/-", "value": "crabglamp.com/other"}], JSON_PATCH))
    out["spec-while-deleting"] = patch_agent("held", {"spec": {"running": False}}, MERGE)["metadata"]
    out["release"] = patch_agent("held", [{"op": "test", "path": "/metadata/finalizers/0", "value": "crabglamp.com/hold"},
                                          {"op": "remove", "path": "/metadata/finalizers/0"}], JSON_PATCH)
    out["gone"] = expect_error(lambda: get_agent("held"))
    return out


record("finalizers", finalizers)


def delete_plain():
    create_agent("plain")
    return co.delete_namespaced_custom_object(G, V, NS, "agents", "plain")


record("delete.plain", delete_plain)
record("delete.missing", lambda: expect_error(lambda: co.delete_namespaced_custom_object(G, V, NS, "agents", "plain")))


def delete_precondition():
    create_agent("guarded")
    return expect_error(lambda: co.delete_namespaced_custom_object(
        G, V, NS, "agents", "guarded", body={"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}))


record("delete.precondition", delete_precondition)
record("delete.configmap", lambda: call(core.delete_namespaced_config_map, "settings", NS))

# --- ownerReferences and garbage collection ----------------------------------------------------


def gc(policy):
    owner, child = f"owner-{policy.lower()}", f"child-{policy.lower()}"
    created = create_agent(owner)
    ref = {"apiVersion": f"{G}/{V}", "kind": "Agent", "name": owner, "uid": created["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    out = {"child": call(core.create_namespaced_config_map, NS, {
        "metadata": {"name": child, "ownerReferences": [ref]}, "data": {"x": "1"}})}
    out["delete"] = co.delete_namespaced_custom_object(G, V, NS, "agents", owner, propagation_policy=policy)
    if policy == "Orphan":
        out["owner.gone"] = wait_gone(lambda: get_agent(owner), owner)
        # The orphaned child stays, without its ownerReference.
        out["child.after"] = wait_for(lambda: call(core.read_namespaced_config_map, child, NS),
                                      lambda c: not c["metadata"].get("ownerReferences"), child)
    else:
        out["child.gone"] = wait_gone(lambda: call(core.read_namespaced_config_map, child, NS), child)
        out["owner.gone"] = wait_gone(lambda: get_agent(owner), owner)
    return out


record("gc.background", lambda: gc("Background"))
record("gc.foreground", lambda: gc("Foreground"))
record("gc.orphan", lambda: gc("Orphan"))


def gc_two_owners():
    # A dependent with two owners stays while one of them is left.
    a, b = create_agent("owner-a"), create_agent("owner-b")
    refs = [{"apiVersion": f"{G}/{V}", "kind": "Agent", "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]}
            for o in (a, b)]
    call(core.create_namespaced_config_map, NS, {"metadata": {"name": "child-two", "ownerReferences": refs}})
    co.delete_namespaced_custom_object(G, V, NS, "agents", "owner-a")
    wait_gone(lambda: get_agent("owner-a"), "owner-a")
    # The child stays while owner-b lives (whether the garbage collector has already dropped
    # the dangling reference to owner-a is a matter of timing on the real server: not
    # compared), and goes with owner-b.
    kept = call(core.read_namespaced_config_map, "child-two", NS)["metadata"]["name"]
    co.delete_namespaced_custom_object(G, V, NS, "agents", "owner-b")
    return {"kept": kept, "gone": wait_gone(lambda: call(core.read_namespaced_config_map, "child-two", NS), "child-two")}


record("gc.two-owners", gc_two_owners)

# --- Leases (coordination.k8s.io/v1) -----------------------------------------------------------
T0, T5 = "2025-01-01T00:00:00.000000Z", "2025-01-01T00:00:05.000000Z"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
record("lease.create", lambda: raw("POST", LEASES, body={
    "metadata": {"name": "leader"},
    "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": T0, "renewTime": T0}}))
record("lease.create.whole-second", lambda: expect_error(lambda: raw("POST", LEASES, body={
    "metadata": {"name": "whole"}, "spec": {"renewTime": "2025-01-01T00:00:00Z"}})))
record("lease.create.short-fraction", lambda: expect_error(lambda: raw("POST", LEASES, body={
    "metadata": {"name": "short"}, "spec": {"renewTime": "2025-01-01T00:00:00.5Z"}})))
record("lease.create.typed-micros", lambda: call(coord.create_namespaced_lease, NS, client.V1Lease(
    metadata=client.V1ObjectMeta(name="typed-micros"),
    spec=client.V1LeaseSpec(holder_identity="a", renew_time="2025-01-01T00:00:00.250000Z"))))
# The typed model sends MicroTimes as Python's isoformat (no fraction, +00:00): a real server
# refuses them.
record("lease.create.typed-times", lambda: expect_error(lambda: call(coord.create_namespaced_lease, NS, client.V1Lease(
    metadata=client.V1ObjectMeta(name="typed"), spec=client.V1LeaseSpec(holder_identity="a", renew_time=T0)))))
record("lease.create.exists", lambda: expect_error(lambda: raw("POST", LEASES, body={
    "metadata": {"name": "leader"}, "spec": {}})))
record("lease.renew.strategic", lambda: call(coord.patch_namespaced_lease, "leader", NS, {
    "spec": {"renewTime": T5, "leaseTransitions": 1}}))
LEASE_APPLY = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "free"},
               "spec": {"holderIdentity": "b", "leaseDurationSeconds": 10}}
record("lease.apply.first", lambda: call(coord.patch_namespaced_lease, "free", NS, LEASE_APPLY,
                                         field_manager="candidate-b", _content_type=APPLY))
record("lease.apply.conflict", lambda: expect_error(lambda: call(
    coord.patch_namespaced_lease, "free", NS, {**LEASE_APPLY, "spec": {"holderIdentity": "c"}},
    field_manager="candidate-c", _content_type=APPLY)))
record("lease.apply.existing-without-name", lambda: expect_error(lambda: call(
    coord.patch_namespaced_lease, "free", NS, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                               "spec": {"holderIdentity": "b"}},
    field_manager="candidate-b", _content_type=APPLY)))
record("lease.release", lambda: call(coord.patch_namespaced_lease, "leader", NS, {
    "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None}}))
record("lease.bad-duration", lambda: expect_error(lambda: call(coord.patch_namespaced_lease, "leader", NS, {
    "spec": {"leaseDurationSeconds": -1}})))

# --- events.k8s.io/v1 Events and their core/v1 view --------------------------------------------


def event_create():
    alpha = get_agent("alpha")
    return raw("POST", f"/apis/events.k8s.io/v1/namespaces/{NS}/events", body={
        "metadata": {"name": "alpha.conf"}, "eventTime": T0, "action": "Reconcile", "reason": "Created",
        "note": "server created", "type": "Normal", "reportingController": "crabglamp.com/operator",
        "reportingInstance": "operator-0",
        "regarding": {"apiVersion": f"{G}/{V}", "kind": "Agent", "name": "alpha", "namespace": NS,
                      "uid": alpha["metadata"]["uid"]}})


record("event.create", event_create)
record("event.series", lambda: call(events.patch_namespaced_event, "alpha.conf", NS, {
    "series": {"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"}}, _content_type=MERGE))
record("event.core-view", lambda: call(core.list_namespaced_event, NS,
                                       field_selector="involvedObject.kind=Agent,involvedObject.name=alpha")["items"])
record("event.field.unsupported", lambda: expect_error(lambda: events.list_namespaced_event(NS, field_selector="note=x")))
record("event.invalid", lambda: expect_error(lambda: raw("POST", f"/apis/events.k8s.io/v1/namespaces/{NS}/events", body={
    "metadata": {"name": "broken"}, "eventTime": T0})))
record("event.core-create", lambda: raw("POST", f"/api/v1/namespaces/{NS}/events", body={
    "metadata": {"name": "core.conf"}, "involvedObject": {"kind": "Agent", "name": "alpha", "namespace": NS},
    "reason": "Tested", "message": "core event", "type": "Warning", "source": {"component": "conformance"},
    "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": "2025-01-01T00:00:00Z", "count": 1}))
record("event.events-view", lambda: call(events.read_namespaced_event, "core.conf", NS))

# --- Table and PartialObjectMetadata renderings ------------------------------------------------
record("table.list", lambda: list_agents(label_selector="tier=gold", _headers={"Accept": TABLE}))
record("table.list.include-object", lambda: raw(
    "GET", f"/apis/{G}/{V}/namespaces/{NS}/agents", [("labelSelector", "idx=4"), ("includeObject", "Object")], TABLE))
record("table.get", lambda: co.get_namespaced_custom_object(G, V, NS, "agents", "alpha", _headers={"Accept": TABLE}))
record("table.configmaps", lambda: raw("GET", f"/api/v1/namespaces/{NS}/configmaps", accept=TABLE))
record("table.events", lambda: raw("GET", f"/api/v1/namespaces/{NS}/events", accept=TABLE))
record("table.leases", lambda: raw("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", accept=TABLE))
record("table.events.v1", lambda: raw("GET", f"/apis/events.k8s.io/v1/namespaces/{NS}/events", accept=TABLE))
record("table.secrets", lambda: raw("GET", f"/api/v1/namespaces/{NS}/secrets", accept=TABLE))
record("table.namespace", lambda: raw("GET", f"/api/v1/namespaces/{NS}", accept=TABLE))
record("metadata.list", lambda: list_agents(label_selector="tier=gold", _headers={"Accept": METADATA_LIST}))
record("metadata.list.empty", lambda: list_agents(label_selector="tier=none", _headers={"Accept": METADATA_LIST}))

print(json.dumps({"steps": steps}))
