//! Differential conformance of the sandbox's Kubernetes API stand-in: one scripted scenario,
//! driven by kubectl 1.32, kubectl 1.35 and the official Python client
//! (`conformance/scenario.py`), runs against the real kube-apiserver of `testenv/` and against a
//! fresh stand-in, and every step's answer is normalised and diffed.
//!
//! The scenario covers create and client-side apply, server-side apply with a field-manager
//! conflict (and kubectl's client-side to server-side migration), strategic-merge, merge and
//! JSON patches on a ConfigMap, merge and JSON patches on an Agent and the 415 for strategic
//! merge on it, the status subresource, label and field selectors, paged lists (`limit` and
//! `continue`) while objects change, watches from a resourceVersion, streaming lists with their
//! initial-events-end bookmark, a watch from a too-old resourceVersion (`410 Expired`),
//! finalizers and `deletionTimestamp`, `ownerReferences` garbage collection (Background,
//! Foreground, Orphan), Leases, `events.k8s.io/v1` Events and their core/v1 view, the Table
//! renderings kubectl asks for (`kubectl get -o wide`, and the raw Tables), `kubectl explain`,
//! `describe`, `events` and `wait`.
//!
//! What varies between any two runs is normalised away: uids, resourceVersions, timestamps the
//! servers set, generated names, ports, ages, continue tokens. What is left must be equal, or
//! be one of the deliberate differences listed (each with its id, `D<n>`) in the module docs of
//! `sandbox/src/kube/mod.rs`, and allowed here for exactly the steps and fields where it shows
//! ([`ALLOWED`]). The test fails on any other difference, on an allowed difference that no
//! longer occurs (so the list stays true), and on an id the module docs do not list; it prints
//! the differences it allowed.
//!
//! How some steps get a comparable answer from both servers:
//! - A too-old resourceVersion: `resourceVersion=1`. On the real server every watch cache
//!   starts at the revision it was created at, far after 1, so a watch from 1 gets `410 Expired`
//!   at once (a resourceVersion merely far behind does not: the watch cache keeps every event
//!   younger than 75 s, however many, and etcd compacts only every 5 minutes); the stand-in's
//!   history starts after its bootstrap, so the same request expires there too.
//! - Bookmarks: kube-apiserver sends a watch's first bookmark about a minute in (whatever
//!   `timeoutSeconds`), so the compared bookmark is a streaming list's initial-events-end one,
//!   from an older resourceVersion, followed by a live change; plain watches from a
//!   resourceVersion allow bookmarks and stop at their last expected event.
//! - Raw Tables: `kubectl get --raw` cannot set an Accept header, so the Python client asks for
//!   them (`_headers`); kubectl's own Table requests are compared through what it prints.
//! - Garbage collection on the real server is kube-controller-manager's, later: both runs wait
//!   (with a deadline) until the dependents are gone before reading.
//!
//! Set `CRABGLAMP_CONFORMANCE_DUMP` to a directory to keep both servers' normalised answers
//! (`real.json`, `stand-in.json`) for a closer look.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kube_server::{KubeServer, KubectlRun, kubectl_132, kubectl_135};

/// The stand-in's module docs, where the deliberate differences are listed.
const STAND_IN_DOCS: &str = include_str!("../../sandbox/src/kube/mod.rs");
/// The Python client's part of the scenario.
const PYTHON_SCENARIO: &str = include_str!("conformance/scenario.py");
/// How long any one wait of the scenario may take (garbage collection on the real server is
/// kube-controller-manager's, asynchronous).
const DEADLINE: Duration = Duration::from_secs(60);

/// A difference allowed in one step: the id of its entry in the stand-in's list, the step
/// (`client/step`; `kubectl/step` stands for the step of both kubectl versions) and the JSON
/// pointers under which the two answers may differ. Every pointer must show a difference in
/// every step it names, or the entry is stale.
struct Allowed {
    id: &'static str,
    step: &'static str,
    paths: &'static [&'static str],
}

/// Every difference the stand-in is allowed, by step and field.
const ALLOWED: &[Allowed] = &[
    // Foreground and Orphan deletions answer with the object and its finalizer on the real
    // server (its garbage collector finishes them), with the Success Status on the stand-in.
    Allowed { id: "D5", step: "py/gc.foreground", paths: &["/delete"] },
    Allowed { id: "D5", step: "py/gc.orphan", paths: &["/delete"] },
    // CEL failures in the stand-in's (v1.32) words.
    Allowed {
        id: "D14",
        step: "py/agent.patch.immutable",
        paths: &["/apiError/body/message", "/apiError/body/details/causes/0/message"],
    },
    Allowed { id: "D14", step: "kubectl/agent.patch.invalid", paths: &["/stderr/0"] },
    // The real server's extra cause when a blocking schema error stopped the rules.
    Allowed {
        id: "D15",
        step: "py/agent.create.invalid",
        paths: &["/apiError/body/message", "/apiError/body/details/causes/1"],
    },
    Allowed { id: "D16", step: "py/select.label.invalid", paths: &["/apiError/body/message"] },
    Allowed { id: "D17", step: "py/list.bad-continue", paths: &["/apiError/body/message"] },
];

// --- Running the scenario ---------------------------------------------------------------------

/// How a step's standard output is read before it is compared.
#[derive(Clone, Copy)]
enum Format {
    /// Lines of text.
    Text,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
    /// One JSON document per line (a watch).
    JsonLines,
}

/// One kubectl version's run of the scenario against one server, in its own namespace.
struct KubectlScenario<'a> {
    client: &'static str,
    bin: PathBuf,
    kubeconfig: &'a Path,
    /// kubectl's discovery and HTTP caches, fresh for every run (a stand-in's port may have
    /// served other CRDs before, and the two servers must be asked the same questions).
    cache: PathBuf,
    /// Where the manifests of this run are written.
    dir: PathBuf,
    ns: String,
    steps: Vec<(String, Value)>,
}

impl KubectlScenario<'_> {
    /// Runs kubectl; one that has not finished after twice [`DEADLINE`] (a watch the server
    /// never ends) is killed, and the test fails.
    fn run(&self, args: &[&str]) -> KubectlRun {
        let mut command = Command::new(&self.bin);
        command
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(["-n", &self.ns])
            .args(args)
            .env("KUBECONFIG", self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        let (finished, watchdog) = std::sync::mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            let timed_out = watchdog.recv_timeout(2 * DEADLINE).is_err();
            if timed_out {
                // The child has not been reaped (its waiter is blocked on it), so the pid is
                // still this child's.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            timed_out
        });
        let out = child.wait_with_output().expect("kubectl finishes");
        let _ = finished.send(());
        let timed_out = killer.join().unwrap_or(true);
        assert!(!timed_out, "{}: kubectl {} did not finish in {:?}", self.client, args.join(" "), 2 * DEADLINE);
        KubectlRun {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs one step and records what kubectl printed and whether it succeeded.
    fn step(&mut self, id: &str, format: Format, args: &[&str]) {
        let run = self.run(args);
        let stdout = match format {
            Format::Text => None,
            Format::Json => serde_json::from_str::<Value>(&run.stdout).ok(),
            Format::Yaml => serde_norway::from_str::<Value>(&run.stdout).ok(),
            Format::JsonLines => run
                .stdout
                .lines()
                .map(serde_json::from_str::<Value>)
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .map(Value::Array),
        }
        .unwrap_or_else(|| Value::Array(text_lines(&run.stdout)));
        // kubectl warns about its version skew to either server (1.32 and 1.35 against 1.37
        // and the stand-in's 1.32): not the server's answer.
        let stderr: Vec<Value> = text_lines(&run.stderr)
            .into_iter()
            .filter(|l| !l.as_str().is_some_and(|l| l.contains("version difference between client")))
            .collect();
        self.steps.push((format!("{}/{id}", self.client), json!({"ok": run.ok, "stdout": stdout, "stderr": stderr})));
    }

    /// A manifest written for this run (its namespace filled in).
    fn manifest(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text.replace("NS", &self.ns)).expect("write manifest");
        path.display().to_string()
    }

    /// Output of a helper command that is not a step (its answer differs by nature, e.g. a uid).
    fn query(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(run.ok, "{}: kubectl {} failed: {}", self.client, args.join(" "), run.stderr);
        run.stdout.trim().to_owned()
    }

    /// Runs `args` until `done` holds for its output, for at most [`DEADLINE`]: each kubectl run
    /// is the poll (no sleep in between).
    fn wait_until(&self, what: &str, args: &[&str], done: impl Fn(&KubectlRun) -> bool) {
        let start = Instant::now();
        loop {
            if done(&self.run(args)) {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "{}: {what} not reached in {DEADLINE:?}", self.client);
        }
    }
}

const AGENT: &str = "apiVersion: crabglamp.com/v1alpha1
kind: Agent
metadata:
  name: a1
  namespace: NS
  labels:
    conf: kubectl
    tier: gold
spec:
  owner: acct_kubectl
  region: us
  running: true
";

const AGENT_CHANGED: &str = "apiVersion: crabglamp.com/v1alpha1
kind: Agent
metadata:
  name: a1
  namespace: NS
  labels:
    conf: kubectl
    tier: silver
spec:
  owner: acct_kubectl
  region: us
  running: false
  tunnel:
    service: http://localhost:9090
";

const APPLIED: &str = "apiVersion: crabglamp.com/v1alpha1
kind: Agent
metadata:
  name: s1
  namespace: NS
  labels:
    conf: kubectl
spec:
  owner: acct_kubectl
  region: eu
  running: RUNNING
";

const OWNER: &str = "apiVersion: crabglamp.com/v1alpha1
kind: Agent
metadata:
  name: owner
  namespace: NS
spec:
  owner: acct_kubectl
  region: eu
";

const CHILD: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  namespace: NS
  ownerReferences:
  - apiVersion: crabglamp.com/v1alpha1
    kind: Agent
    name: owner
    uid: UID
data:
  x: '1'
";

const LEASE: &str = "apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: leader
  namespace: NS
spec:
  holderIdentity: kubectl
  leaseDurationSeconds: 15
  acquireTime: '2025-01-01T00:00:00.000000Z'
  renewTime: '2025-01-01T00:00:00.000000Z'
";

const EVENT: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: s1.conf
  namespace: NS
eventTime: '2025-01-01T00:00:00.000000Z'
reportingController: crabglamp.com/operator
reportingInstance: operator-0
action: Reconcile
reason: Created
note: server created
type: Normal
regarding:
  apiVersion: crabglamp.com/v1alpha1
  kind: Agent
  name: s1
  namespace: NS
";

const READY: &str = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","reason":"Running","message":"up","lastTransitionTime":"2025-01-01T00:00:00Z"}]}}"#;

/// The kubectl part of the scenario, for one kubectl version.
fn kubectl_scenario(k: &mut KubectlScenario) {
    use Format::{Json, JsonLines, Text, Yaml};
    k.step("namespace.create", Text, &["create", "namespace", &k.ns.clone()]);

    // Client-side apply: create, unchanged, configure (a three-way merge patch).
    let agent = k.manifest("agent.yaml", AGENT);
    k.step("apply.create", Text, &["apply", "-f", &agent]);
    k.step("apply.unchanged", Text, &["apply", "-f", &agent]);
    let changed = k.manifest("agent-changed.yaml", AGENT_CHANGED);
    k.step("apply.configure", Text, &["apply", "-f", &changed]);
    k.step("apply.get", Json, &["get", "agent", "a1", "-o", "json", "--show-managed-fields"]);

    // Server-side apply, a conflict between two managers, force; and the migration of a
    // client-side applied object to server-side apply.
    let alice = k.manifest("applied-alice.yaml", &APPLIED.replace("RUNNING", "true"));
    let bob = k.manifest("applied-bob.yaml", &APPLIED.replace("RUNNING", "false"));
    k.step("ssa.create", Text, &["apply", "--server-side", "--field-manager=alice", "-f", &alice]);
    k.step("ssa.conflict", Text, &["apply", "--server-side", "--field-manager=bob", "-f", &bob]);
    k.step("ssa.force", Text, &["apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", &bob]);
    k.step("ssa.get", Yaml, &["get", "agent", "s1", "-o", "yaml", "--show-managed-fields"]);
    k.step("ssa.migrate", Text, &["apply", "--server-side", "-f", &changed]);
    k.step("ssa.migrate.get", Json, &["get", "agent", "a1", "-o", "json", "--show-managed-fields"]);

    // A built-in: strategic merge, JSON and merge patches.
    k.step("configmap.create", Text, &["create", "configmap", "cm", "--from-literal=a=1", "--from-literal=b=2"]);
    k.step("configmap.patch.strategic", Text, &["patch", "configmap", "cm", "-p", r#"{"data":{"b":null,"c":"3"}}"#]);
    k.step(
        "configmap.patch.json",
        Text,
        &["patch", "configmap", "cm", "--type", "json", "-p", r#"[{"op":"replace","path":"/data/a","value":"10"}]"#],
    );
    k.step(
        "configmap.patch.merge",
        Text,
        &["patch", "configmap", "cm", "--type", "merge", "-p", r#"{"data":{"c":null}}"#],
    );
    k.step("configmap.get", Json, &["get", "configmap", "cm", "-o", "json"]);

    // The Agent: merge and JSON patches, strategic merge refused, the status subresource.
    k.step(
        "agent.patch.merge",
        Text,
        &["patch", "agent", "a1", "--type", "merge", "-p", r#"{"spec":{"running":false}}"#],
    );
    k.step(
        "agent.patch.json",
        Text,
        &["patch", "agent", "a1", "--type", "json", "-p", r#"[{"op":"add","path":"/metadata/labels/x","value":"y"}]"#],
    );
    k.step("agent.patch.strategic", Text, &["patch", "agent", "a1", "-p", r#"{"metadata":{"labels":{"z":"1"}}}"#]);
    k.step(
        "agent.patch.invalid",
        Text,
        &["patch", "agent", "a1", "--type", "merge", "-p", r#"{"spec":{"region":"eu"}}"#],
    );
    k.step(
        "agent.patch.status",
        Text,
        &["patch", "agent", "s1", "--subresource=status", "--type", "merge", "-p", READY],
    );
    k.step("agent.get.yaml", Yaml, &["get", "agent", "s1", "-o", "yaml"]);
    k.step("wait.condition", Text, &["wait", "--for=condition=Ready", "agent/s1", "--timeout=60s"]);

    // Tables as kubectl prints them, selectors, paging, sorting.
    k.step("get.wide", Text, &["get", "agents", "-o", "wide"]);
    k.step("get", Text, &["get", "agents"]);
    k.step("get.category", Text, &["get", "crabglamp"]);
    k.step("get.short-name.labels", Text, &["get", "ag", "--show-labels"]);
    k.step("get.label-columns", Text, &["get", "agents", "-L", "tier"]);
    k.step("get.all-namespaces", Text, &["get", "agents", "-A", "-l", "conf=kubectl"]);
    k.step("get.one", Text, &["get", "agent", "s1"]);
    k.step("get.missing", Text, &["get", "agent", "nobody"]);
    k.step("get.chunked", Text, &["get", "agents", "--chunk-size=1", "-o", "name"]);
    k.step("get.label-selector", Text, &["get", "agents", "-l", "tier in (gold,silver),conf", "-o", "name"]);
    k.step("get.field-selector", Text, &["get", "agents", "--field-selector", "metadata.name=s1", "-o", "name"]);
    k.step("get.field-selector.unsupported", Text, &["get", "agents", "--field-selector", "spec.region=us"]);
    k.step("get.sorted", Text, &["get", "agents", "--sort-by=.spec.region"]);
    k.step(
        "get.custom-columns",
        Text,
        &["get", "agents", "-o", "custom-columns=NAME:.metadata.name,REGION:.spec.region"],
    );
    k.step("get.configmaps", Text, &["get", "configmaps", "cm"]);
    let agents = format!("/apis/crabglamp.com/v1alpha1/namespaces/{}/agents", k.ns);
    k.step("get.raw.list", Json, &["get", "--raw", &format!("{agents}?limit=1")]);
    // A watch from resourceVersion 1: older than either server's watch history, so both answer
    // with one ERROR event (410 Expired) and end the stream.
    k.step("get.raw.watch-too-old", JsonLines, &["get", "--raw", &format!("{agents}?watch=true&resourceVersion=1")]);
    k.step("explain", Text, &["explain", "agent.spec"]);
    k.step("explain.field", Text, &["explain", "agent.spec.tunnel.hostname"]);

    // Leases and events.k8s.io Events, and how kubectl shows them.
    let lease = k.manifest("lease.yaml", LEASE);
    k.step("lease.apply", Text, &["apply", "-f", &lease]);
    k.step("lease.get", Json, &["get", "lease", "leader", "-o", "json"]);
    k.step("lease.table", Text, &["get", "leases"]);
    let event = k.manifest("event.yaml", EVENT);
    k.step("event.create", Text, &["create", "-f", &event]);
    k.step("event.get", Json, &["get", "events.v1.events.k8s.io", "s1.conf", "-o", "json"]);
    k.step("event.core", Json, &["get", "--raw", &format!("/api/v1/namespaces/{}/events/s1.conf", k.ns)]);
    k.step("event.table", Text, &["get", "events"]);
    k.step("events", Text, &["events"]);
    k.step("describe", Text, &["describe", "agent", "s1"]);

    // Finalizers: the delete leaves the object with a deletionTimestamp until they are gone.
    k.step(
        "finalizer.add",
        Text,
        &["patch", "agent", "a1", "--type", "merge", "-p", r#"{"metadata":{"finalizers":["crabglamp.com/hold"]}}"#],
    );
    k.step("finalizer.delete", Text, &["delete", "agent", "a1", "--wait=false"]);
    k.step("finalizer.get", Json, &["get", "agent", "a1", "-o", "json"]);
    k.step(
        "finalizer.release",
        Text,
        &["patch", "agent", "a1", "--type", "json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#],
    );
    k.step("finalizer.gone", Text, &["get", "agent", "a1"]);

    // Garbage collection: the dependent of a deleted owner goes (on the real server, once
    // kube-controller-manager's garbage collector has seen the owner go).
    let owner = k.manifest("owner.yaml", OWNER);
    k.step("gc.owner", Text, &["create", "-f", &owner]);
    let uid = k.query(&["get", "agent", "owner", "-o", "jsonpath={.metadata.uid}"]);
    let child = k.manifest("child.yaml", &CHILD.replace("UID", &uid));
    k.step("gc.child", Text, &["apply", "-f", &child]);
    k.step("gc.delete", Text, &["delete", "agent", "owner", "--timeout=60s"]);
    k.wait_until(
        "the dependent ConfigMap gone",
        &["get", "configmap", "child", "--ignore-not-found", "-o", "name"],
        |r| r.ok && r.stdout.trim().is_empty(),
    );
    k.step("gc.child-gone", Text, &["get", "configmap", "child"]);
}

/// Answers of one server to the whole scenario, in order: `client/step` and its answer.
type Answers = Vec<(String, Value)>;

/// Runs the whole scenario against the server of `kubeconfig`: kubectl 1.32, then 1.35, then the
/// Python client (one after the other: `kubectl get -A` sees what the earlier ones made).
async fn run_scenario(server: &'static str, kubeconfig: PathBuf) -> Answers {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut answers = Vec::new();
    for (client, bin) in [("k132", kubectl_132()), ("k135", kubectl_135())] {
        let kubeconfig = kubeconfig.clone();
        let base = dir.path().join(client);
        let steps = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(base.join("manifests")).expect("manifest dir");
            let mut k = KubectlScenario {
                client,
                bin,
                kubeconfig: &kubeconfig,
                cache: base.join("cache"),
                dir: base.join("manifests"),
                ns: format!("conf-{client}"),
                steps: Vec::new(),
            };
            kubectl_scenario(&mut k);
            k.steps
        })
        .await
        .unwrap_or_else(|e| panic!("{server}: the {client} scenario failed: {e}"));
        answers.extend(steps);
    }
    answers.extend(python_scenario(server, &kubeconfig, dir.path()).await);
    answers
}

/// The Python client's part: `scenario.py` prints `{"steps": [{"id", "result"}]}`.
async fn python_scenario(server: &str, kubeconfig: &Path, dir: &Path) -> Answers {
    let python = std::env::var("CRABGLAMP_PYTHON").ok().filter(|p| !p.is_empty()).expect(
        "CRABGLAMP_PYTHON is not set: point it at a python with the `kubernetes` package \
         (e.g. $HOME/.cache/crabglamp-venv/bin/python; scripts/test does)",
    );
    let script = dir.join("scenario.py");
    std::fs::write(&script, PYTHON_SCENARIO).expect("write scenario.py");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(python)
            .arg(&script)
            .arg(kubeconfig)
            .arg("conf-py")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{server}: the Python scenario did not finish in 180 s"))
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!("{server}: the Python scenario failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    parsed["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (format!("py/{}", s["id"].as_str().expect("step id")), s["result"].clone()))
        .collect()
}

// --- Normalisation ----------------------------------------------------------------------------

/// Lines of text, each normalised, runs of blanks (column alignment, which follows the width of
/// normalised cells) folded to two spaces.
fn text_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let line = normalise_ages(&normalise_text(line));
            let mut out = String::new();
            let mut blanks = 0;
            for c in line.trim_end().chars() {
                if c == ' ' {
                    blanks += 1;
                    continue;
                }
                if blanks > 0 {
                    out.push_str(if blanks > 1 { "  " } else { " " });
                    blanks = 0;
                }
                out.push(c);
            }
            Value::String(out)
        })
        .collect()
}

/// Replaces every match of `matcher` (the length matched at a position, if any) with
/// `replacement`.
fn replace_matches(s: &str, matcher: impl Fn(&[u8]) -> Option<usize>, replacement: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if s.is_char_boundary(i)
            && let Some(n) = matcher(&bytes[i..])
        {
            out.push_str(&s[copied..i]);
            out.push_str(replacement);
            i += n;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[copied..]);
    out
}

/// `pattern` at the start of `b`: `9` a digit, `x` a lower-case hex digit, `a` a lower-case letter
/// or digit, `A` an upper-case letter, `l` a lower-case letter, anything else itself.
fn starts_with_pattern(b: &[u8], pattern: &str) -> bool {
    b.len() >= pattern.len()
        && pattern.bytes().zip(b).all(|(p, &c)| match p {
            b'9' => c.is_ascii_digit(),
            b'x' => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            b'a' => c.is_ascii_digit() || c.is_ascii_lowercase(),
            b'A' => c.is_ascii_uppercase(),
            b'l' => c.is_ascii_lowercase(),
            _ => c == p,
        })
}

fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// An RFC 3339 time (optional fraction, `Z` or an offset): its length.
fn rfc3339(b: &[u8]) -> Option<usize> {
    if !starts_with_pattern(b, "9999-99-99T99:99:99") {
        return None;
    }
    let mut n = 19;
    if b.get(n) == Some(&b'.') && digits(&b[n + 1..]) > 0 {
        n += 1 + digits(&b[n + 1..]);
    }
    match b.get(n) {
        Some(b'Z') => Some(n + 1),
        Some(b'+' | b'-') if starts_with_pattern(&b[n + 1..], "99:99") => Some(n + 6),
        _ => None,
    }
}

/// Normalisations for any string, JSON or text.
fn normalise_text(s: &str) -> String {
    let s =
        replace_matches(s, |b| starts_with_pattern(b, "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx").then_some(36), "<uid>");
    // Times the servers set. Those the scenario wrote itself (2025-01-01) are kept: how a
    // server renders them (MicroTime's six digits) is part of its answer.
    let s = replace_matches(&s, |b| rfc3339(b).filter(|_| !b.starts_with(b"2025-01-01")), "<time>");
    // describe's and events' RFC 1123 dates.
    let s = replace_matches(&s, |b| starts_with_pattern(b, "Aaa, 99 Aaa 9999 99:99:99 +9999").then_some(31), "<date>");
    let s = replace_matches(&s, |b| starts_with_pattern(b, "127.0.0.1:").then(|| 10 + digits(&b[10..])), "<server>");
    // Names made from generateName "gen-": five random characters.
    let s = replace_matches(&s, |b| starts_with_pattern(b, "gen-aaaaa").then_some(9), "gen-<random>");
    // Revisions quoted in messages: "too old resource version: 1 (235)", "current: 386",
    // describe's "Resource Version:  391".
    let s = replace_matches(
        &s,
        |b| {
            let n = digits(b.strip_prefix(b" (")?);
            (n > 0 && b.get(2 + n) == Some(&b')')).then_some(3 + n)
        },
        " (<rv>)",
    );
    let s = replace_matches(
        &s,
        |b| b.strip_prefix(b"current: ").map(digits).filter(|&n| n > 0).map(|n| 9 + n),
        "current: <rv>",
    );
    replace_matches(
        &s,
        |b| {
            let rest = b.strip_prefix(b"Resource Version:")?;
            let blanks = rest.iter().take_while(|c| **c == b' ').count();
            let n = digits(&rest[blanks..]);
            (n > 0).then_some(17 + blanks + n)
        },
        "Resource Version: <rv>",
    )
}

/// An age as kubectl and the server's Tables print it ("0s", "5m3s", "704d"), whole.
fn is_age(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut parts = 0;
    while i < b.len() {
        let n = digits(&b[i..]);
        if n == 0 || !matches!(b.get(i + n), Some(b's' | b'm' | b'h' | b'd' | b'y')) {
            return false;
        }
        i += n + 1;
        parts += 1;
    }
    (1..=2).contains(&parts)
}

/// Ages among the words of a line of text.
fn normalise_ages(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut word = String::new();
    for c in line.chars().chain(std::iter::once('\n')) {
        if c == ' ' || c == '\n' {
            out.push_str(if is_age(&word) { "<age>" } else { &word });
            word.clear();
            if c == ' ' {
                out.push(c);
            }
        } else {
            word.push(c);
        }
    }
    out
}

/// A JSON answer with what varies between runs replaced.
fn normalise(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(normalise_text(s)),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, v) in map {
                let v = match (key.as_str(), v) {
                    ("resourceVersion", Value::String(s)) if !s.is_empty() => json!("<rv>"),
                    ("continue", Value::String(s)) if !s.is_empty() => json!("<continue>"),
                    _ => normalise(v),
                };
                // Keys too: managedFields name list items by key (`k:{"uid":"..."}`).
                out.insert(normalise_text(key), v);
            }
            // A Table's time columns hold ages the server computed (CRD columns of type date,
            // the built-in printers' Age, Last Seen and First Seen strings).
            if out.get("kind") == Some(&json!("Table")) {
                let dates: Vec<usize> = out["columnDefinitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, c)| {
                        c["type"] == "date" || ["Age", "Last Seen", "First Seen"].iter().any(|n| c["name"] == *n)
                    })
                    .map(|(i, _)| i)
                    .collect();
                for row in out.get_mut("rows").and_then(Value::as_array_mut).into_iter().flatten() {
                    for &i in &dates {
                        if let Some(cell) = row.pointer_mut(&format!("/cells/{i}"))
                            && cell.as_str().is_some_and(is_age)
                        {
                            *cell = json!("<age>");
                        }
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

// --- Diffing ----------------------------------------------------------------------------------

/// One field where the two servers' answers differ.
#[derive(Debug)]
struct Difference {
    step: String,
    /// JSON pointer into the step's answer.
    path: String,
    real: Option<Value>,
    stand_in: Option<Value>,
}

fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff(step: &str, path: &str, real: Option<&Value>, stand_in: Option<&Value>, out: &mut Vec<Difference>) {
    match (real, stand_in) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff(step, &format!("{path}/{}", pointer_token(key)), a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                diff(step, &format!("{path}/{i}"), a.get(i), b.get(i), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            step: step.to_owned(),
            path: path.to_owned(),
            real: a.cloned(),
            stand_in: b.cloned(),
        }),
    }
}

fn short(value: &Option<Value>) -> String {
    let text = value.as_ref().map_or_else(|| "(absent)".to_owned(), Value::to_string);
    if text.chars().count() > 300 { format!("{}…", text.chars().take(300).collect::<String>()) } else { text }
}

/// The ids of the deliberate differences listed in the stand-in's module docs (`//! - **D<n>**`).
fn listed_ids() -> BTreeSet<String> {
    STAND_IN_DOCS
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("//! - **"))
        .filter_map(|l| l.split_once("**").map(|(id, _)| id.to_owned()))
        .filter(|id| id.starts_with('D') && id[1..].chars().all(|c| c.is_ascii_digit()))
        .collect()
}

/// Whether `path` is `prefix` or below it.
fn path_matches(prefix: &str, path: &str) -> bool {
    path == prefix || path.strip_prefix(prefix).is_some_and(|r| r.starts_with('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_answers_as_kube_apiserver_does() {
    let started = Instant::now();
    let real = KubeServer::real().await;
    let KubeServer::Real(plane) = &real else { unreachable!("KubeServer::real") };
    let stand_in = KubeServer::sandbox().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let stand_in_kubeconfig = dir.path().join("stand-in.kubeconfig");
    std::fs::write(&stand_in_kubeconfig, stand_in.admin_kubeconfig_yaml()).expect("kubeconfig");

    // Both servers at once: each has its own namespaces, caches and manifests.
    let (on_real, on_stand_in) = tokio::join!(
        run_scenario("real kube-apiserver", plane.plane.kubeconfig.clone()),
        run_scenario("stand-in", stand_in_kubeconfig),
    );
    let ran = started.elapsed();

    let on_real: Vec<(String, Value)> = on_real.into_iter().map(|(s, v)| (s, normalise(&v))).collect();
    let on_stand_in: BTreeMap<String, Value> = on_stand_in.into_iter().map(|(s, v)| (s, normalise(&v))).collect();
    if let Some(dump) = std::env::var_os("CRABGLAMP_CONFORMANCE_DUMP") {
        let dump = PathBuf::from(dump);
        std::fs::create_dir_all(&dump).expect("dump dir");
        let as_object = |answers: Vec<(&String, &Value)>| {
            Value::Object(answers.into_iter().map(|(s, v)| (s.clone(), v.clone())).collect())
        };
        let real_json = as_object(on_real.iter().map(|(s, v)| (s, v)).collect());
        std::fs::write(dump.join("real.json"), serde_json::to_string_pretty(&real_json).expect("json")).expect("dump");
        let stand_in_json = as_object(on_stand_in.iter().collect());
        std::fs::write(dump.join("stand-in.json"), serde_json::to_string_pretty(&stand_in_json).expect("json"))
            .expect("dump");
    }

    let mut differences = Vec::new();
    let real_steps: BTreeSet<&String> = on_real.iter().map(|(s, _)| s).collect();
    for (step, answer) in &on_real {
        diff(step, "", Some(answer), on_stand_in.get(step), &mut differences);
    }
    for (step, answer) in &on_stand_in {
        if !real_steps.contains(step) {
            diff(step, "", None, Some(answer), &mut differences);
        }
    }

    let listed = listed_ids();
    let undocumented: Vec<&str> = ALLOWED.iter().map(|a| a.id).filter(|id| !listed.contains(*id)).collect();
    // (entry, concrete step, path) triples, each of which must meet a difference.
    let mut expected: Vec<(usize, String, &str)> = Vec::new();
    for (i, a) in ALLOWED.iter().enumerate() {
        let steps: Vec<String> = match a.step.strip_prefix("kubectl/") {
            Some(rest) => vec![format!("k132/{rest}"), format!("k135/{rest}")],
            None => vec![a.step.to_owned()],
        };
        for step in steps {
            expected.extend(a.paths.iter().map(|p| (i, step.clone(), *p)));
        }
    }
    let mut met = vec![false; expected.len()];
    let mut allowed_report = Vec::new();
    let mut unexplained = Vec::new();
    for d in &differences {
        let matched: Vec<usize> =
            (0..expected.len()).filter(|&k| expected[k].1 == d.step && path_matches(expected[k].2, &d.path)).collect();
        if matched.is_empty() {
            unexplained.push(format!(
                "  {}{}:\n    real:     {}\n    stand-in: {}",
                d.step,
                d.path,
                short(&d.real),
                short(&d.stand_in)
            ));
            continue;
        }
        for &k in &matched {
            met[k] = true;
        }
        let (entry, _, prefix) = &expected[matched[0]];
        allowed_report.push((ALLOWED[*entry].id, format!("{}{prefix}", d.step), d));
    }
    let stale: Vec<String> = expected
        .iter()
        .zip(&met)
        .filter(|(_, met)| !**met)
        .map(|((i, step, path), _)| format!("  {} at {step} {path:?}", ALLOWED[*i].id))
        .collect();

    // The allowed differences, one line per field, or per allowed subtree when it is large.
    let mut report = Vec::new();
    let mut groups: BTreeMap<(&str, &str), Vec<&Difference>> = BTreeMap::new();
    for (id, at, d) in &allowed_report {
        groups.entry((id, at.as_str())).or_default().push(d);
    }
    for ((id, at), ds) in &groups {
        if ds.len() <= 2 {
            for d in ds {
                report.push(format!(
                    "  {id} {}{}: real {} | stand-in {}",
                    d.step,
                    d.path,
                    short(&d.real),
                    short(&d.stand_in)
                ));
            }
        } else {
            let fields: Vec<&str> = ds.iter().map(|d| d.path.as_str()).collect();
            report.push(format!("  {id} {at}: {} fields differ ({})", ds.len(), fields.join(", ")));
        }
    }
    println!(
        "Differential conformance: {} steps on each server in {:.1} s; {} differences, all allowed:\n{}",
        on_real.len(),
        ran.as_secs_f64(),
        allowed_report.len(),
        report.join("\n")
    );
    assert!(undocumented.is_empty(), "allowed differences not listed in sandbox/src/kube/mod.rs: {undocumented:?}");
    assert!(
        unexplained.is_empty(),
        "{} unexplained differences between the real kube-apiserver and the stand-in (fix the stand-in, or list \
         the difference in sandbox/src/kube/mod.rs and allow it in ALLOWED):\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    assert!(
        stale.is_empty(),
        "allowed differences that no longer occur (remove them from ALLOWED, and from the list in \
         sandbox/src/kube/mod.rs if they are gone everywhere):\n{}",
        stale.join("\n")
    );
    // The scenario ran to its end on both servers (a crash would have shortened both alike).
    assert!(real_steps.iter().any(|s| s.as_str() == "py/metadata.list.empty"), "the Python scenario stopped early");
    assert!(real_steps.iter().any(|s| s.as_str() == "k135/gc.child-gone"), "the kubectl scenario stopped early");
}
