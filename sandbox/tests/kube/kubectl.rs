//! Real kubectl against the sandbox API server: the scenarios of issue 4, for kubectl 1.32 (on
//! PATH) and kubectl 1.35 (`KUBECTL_135`).

use std::path::Path;
use std::time::Duration;

use crabglamp_operator::api::Agent;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{Sandbox, kubectl_132, kubectl_135, repo, start};

const NS: &str = "team-a";

async fn wait_for<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn apply_examples(sb: &Sandbox, kubectl: &Path) {
    let out = sb.kubectl(kubectl, &["apply", "-f", "crds/"]).await;
    assert!(out.contains("agents.crabglamp.com"), "{out}");
    let out = sb.kubectl(kubectl, &["apply", "-f", "examples/"]).await;
    assert!(out.contains("agent.crabglamp.com/research-bot created"), "{out}");
    // A second apply finds nothing to change.
    let out = sb.kubectl(kubectl, &["apply", "-f", "examples/"]).await;
    assert!(out.contains("agent.crabglamp.com/research-bot unchanged"), "{out}");
}

async fn scenario(kubectl: &Path) {
    let sb = start().await;
    apply_examples(&sb, kubectl).await;

    let out = sb.kubectl(kubectl, &["get", "agents", "-n", NS]).await;
    let header = out.lines().next().unwrap_or_default();
    for col in ["NAME", "REGION", "OWNER", "PHASE", "READY", "HOSTNAME", "AGE"] {
        assert!(header.contains(col), "column {col} missing in {out}");
    }
    assert!(out.contains("research-bot") && out.contains("acct_7f3a"), "{out}");
    let out = sb.kubectl(kubectl, &["get", "agents", "-n", NS, "-o", "wide"]).await;
    assert!(out.contains("SERVER-IP"), "{out}");
    let out = sb.kubectl(kubectl, &["get", "ag", "-A"]).await;
    assert!(out.contains("NAMESPACE") && out.contains(NS), "{out}");

    let out = sb.kubectl(kubectl, &["get", "crabglamp", "-n", NS]).await;
    for kind in ["agent.crabglamp.com/research-bot", "plainvm.crabglamp.com/", "virtualkey.crabglamp.com/"] {
        assert!(out.contains(kind), "{kind} missing in {out}");
    }

    // Imperative creates of built-ins arrive as protobuf.
    sb.kubectl(kubectl, &["create", "namespace", "scratch"]).await;
    sb.kubectl(kubectl, &["create", "secret", "generic", "creds", "-n", "scratch", "--from-literal=token=s3cret"])
        .await;
    let out = sb.kubectl(kubectl, &["get", "secret", "creds", "-n", "scratch", "-o", "jsonpath={.data.token}"]).await;
    assert_eq!(out, "czNjcmV0");
    sb.kubectl(kubectl, &["delete", "namespace", "scratch"]).await;

    let out = sb.kubectl(kubectl, &["explain", "agent.spec.region"]).await;
    assert!(out.contains("Region the server runs in"), "{out}");

    // wait --for=condition=Ready: started before the condition exists, so it must watch.
    // (Counted before they start: no other watch is open at this point of the scenario.)
    let watching = sb.kube.open_watches();
    let mut wait_ready =
        sb.kubectl_spawn(kubectl, &["wait", "--for=condition=Ready", "agent/research-bot", "-n", NS, "--timeout=60s"]);
    let mut wait_phase = sb.kubectl_spawn(
        kubectl,
        &["wait", "--for=jsonpath={.status.phase}=Running", "agent/research-bot", "-n", NS, "--timeout=60s"],
    );
    let agents: Api<Agent> = Api::namespaced(sb.client(), NS);
    // Both must be watching (not merely started) when the condition appears, or a broken watch
    // would go unnoticed: each would find the condition met by its first GET.
    wait_for("both kubectl wait commands to watch", async {
        while sb.kube.open_watches() < watching + 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let generation = agents.get("research-bot").await.expect("get").metadata.generation;
    let status = json!({"status": {
        "observedGeneration": generation,
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned", "message": "server and tunnel are up",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}],
    }});
    agents.patch_status("research-bot", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status patch");
    for (what, child) in [("condition=Ready", &mut wait_ready), ("jsonpath phase", &mut wait_phase)] {
        let status = wait_for(what, child.wait()).await.expect("wait runs");
        assert!(status.success(), "kubectl wait --for={what} failed");
    }
    let out = sb.kubectl(kubectl, &["get", "agent", "research-bot", "-n", NS]).await;
    assert!(out.contains("Running") && out.contains("True"), "{out}");

    // describe shows Events recorded through events.k8s.io/v1 (what kube-rs's Recorder writes).
    let agent = agents.get("research-bot").await.expect("get");
    let recorder = kube::runtime::events::Recorder::new(sb.client(), "crabglamp-operator".into());
    let reference = kube::Resource::object_ref(&agent, &());
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "ServerCreated".into(),
        note: Some("created server research-bot in hil".into()),
        action: "Provision".into(),
        secondary: None,
    };
    // The repeat is a merge PATCH adding `series` to the same events.k8s.io/v1 Event.
    recorder.publish(&event, &reference).await.expect("publish event");
    recorder.publish(&event, &reference).await.expect("publish the event again");
    let out = sb.kubectl(kubectl, &["describe", "agent", "research-bot", "-n", NS]).await;
    assert!(
        out.contains("Events:") && out.contains("ServerCreated") && out.contains("created server research-bot"),
        "{out}"
    );

    // get -w streams a change made while it watches.
    let mut watch = sb.kubectl_spawn(kubectl, &["get", "agents", "-n", NS, "-w"]);
    let stdout = watch.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    wait_for("the initial watch listing", async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains("research-bot") {
                break;
            }
        }
    })
    .await;
    let mut second: Agent = serde_json::from_value(json!({
        "apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent",
        "metadata": {"name": "watched-bot", "namespace": NS},
        "spec": {"owner": "acct_1", "region": "eu"},
    }))
    .expect("agent");
    second = agents.create(&PostParams::default(), &second).await.expect("create");
    assert_eq!(second.metadata.generation, Some(1));
    wait_for("the watched creation", async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains("watched-bot") {
                break;
            }
        }
    })
    .await;
    let _ = watch.kill().await;

    // Server-side apply: a new object, then an existing one created by client-side apply.
    let ssa = sb.dir.path().join("ssa.yaml");
    std::fs::write(
        &ssa,
        "apiVersion: crabglamp.com/v1alpha1\nkind: Agent\nmetadata:\n  name: ssa-bot\n  namespace: team-a\nspec:\n  owner: acct_7f3a\n  region: eu\n",
    )
    .expect("write");
    let ssa_path = ssa.to_string_lossy().into_owned();
    let out = sb.kubectl(kubectl, &["apply", "--server-side", "-f", &ssa_path]).await;
    assert!(out.contains("ssa-bot serverside-applied"), "{out}");
    let out = sb.kubectl(kubectl, &["apply", "--server-side", "-f", "examples/agent.yaml"]).await;
    assert!(out.contains("research-bot serverside-applied"), "{out}");
    // Another manager changing an owned field conflicts; --force-conflicts takes it over.
    std::fs::write(
        &ssa,
        "apiVersion: crabglamp.com/v1alpha1\nkind: Agent\nmetadata:\n  name: ssa-bot\n  namespace: team-a\nspec:\n  owner: acct_other\n  region: eu\n",
    )
    .expect("write");
    let run = sb.kubectl_run(kubectl, &["apply", "--server-side", "--field-manager=other", "-f", &ssa_path]).await;
    assert!(!run.ok && run.stderr.contains("conflict"), "expected a conflict: {} {}", run.stdout, run.stderr);
    sb.kubectl(kubectl, &["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", &ssa_path])
        .await;
    let out = sb.kubectl(kubectl, &["get", "agent", "ssa-bot", "-n", NS, "-o", "jsonpath={.spec.owner}"]).await;
    assert_eq!(out, "acct_other");

    // Moving from client-side to server-side apply: kubectl migrates the field ownership, so
    // fields dropped from the manifest afterwards are removed.
    let mig = sb.dir.path().join("mig.yaml");
    let mig_path = mig.to_string_lossy().into_owned();
    let manifest = |labels: &str| {
        format!(
            "apiVersion: crabglamp.com/v1alpha1\nkind: Agent\nmetadata:\n  name: mig\n  namespace: team-a\n  labels: {{{labels}}}\nspec:\n  owner: acct_7f3a\n  region: us\n"
        )
    };
    std::fs::write(&mig, manifest("keep: \"1\", drop: \"1\"")).expect("write");
    sb.kubectl(kubectl, &["apply", "-f", &mig_path]).await;
    sb.kubectl(kubectl, &["apply", "--server-side", "-f", &mig_path]).await;
    std::fs::write(&mig, manifest("keep: \"1\"")).expect("write");
    sb.kubectl(kubectl, &["apply", "--server-side", "-f", &mig_path]).await;
    let out = sb.kubectl(kubectl, &["get", "agent", "mig", "-n", NS, "-o", "jsonpath={.metadata.labels}"]).await;
    assert_eq!(out, r#"{"keep":"1"}"#);

    // patch: merge, JSON, and the strategic default that custom resources refuse.
    let out = sb
        .kubectl(
            kubectl,
            &["patch", "agent", "research-bot", "-n", NS, "--type", "merge", "-p", r#"{"spec":{"running":false}}"#],
        )
        .await;
    assert!(out.contains("patched"), "{out}");
    let out = sb
        .kubectl(
            kubectl,
            &[
                "patch",
                "agent",
                "research-bot",
                "-n",
                NS,
                "--type",
                "json",
                "-p",
                r#"[{"op":"replace","path":"/spec/tunnel/service","value":"http://localhost:9090"}]"#,
            ],
        )
        .await;
    assert!(out.contains("patched"), "{out}");
    let out = sb
        .kubectl(
            kubectl,
            &[
                "get",
                "agent",
                "research-bot",
                "-n",
                NS,
                "-o",
                "jsonpath={.spec.running} {.spec.tunnel.service} {.metadata.generation}",
            ],
        )
        .await;
    assert!(out.starts_with("false http://localhost:9090 "), "{out}");
    let out = sb
        .kubectl(
            kubectl,
            &[
                "patch",
                "agent",
                "research-bot",
                "-n",
                NS,
                "--subresource=status",
                "--type",
                "merge",
                "-p",
                r#"{"status":{"phase":"Stopping"},"spec":{"running":true}}"#,
            ],
        )
        .await;
    assert!(out.contains("patched"), "{out}");
    let out = sb
        .kubectl(kubectl, &["get", "agent", "research-bot", "-n", NS, "-o", "jsonpath={.status.phase} {.spec.running}"])
        .await;
    assert_eq!(out, "Stopping false", "a status patch must not change spec");
    let run = sb
        .kubectl_run(kubectl, &["patch", "agent", "research-bot", "-n", NS, "-p", r#"{"spec":{"running":true}}"#])
        .await;
    assert!(!run.ok && run.stderr.contains("not supported"), "{}", run.stderr);
    let run = sb
        .kubectl_run(
            kubectl,
            &["patch", "agent", "research-bot", "-n", NS, "--type", "merge", "-p", r#"{"spec":{"region":"eu"}}"#],
        )
        .await;
    assert!(!run.ok && run.stderr.contains("spec.region is immutable"), "{}", run.stderr);

    // delete with a finalizer: the object stays, with a deletionTimestamp, until it goes.
    sb.kubectl(
        kubectl,
        &[
            "patch",
            "agent",
            "research-bot",
            "-n",
            NS,
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":["crabglamp.com/test-hold"]}}"#,
        ],
    )
    .await;
    let mut delete = sb.kubectl_spawn(kubectl, &["delete", "agent", "research-bot", "-n", NS, "--timeout=60s"]);
    wait_for(
        "the deletionTimestamp",
        await_condition(agents.clone(), "research-bot", |a: Option<&Agent>| {
            a.is_some_and(|a| a.metadata.deletion_timestamp.is_some())
        }),
    )
    .await
    .expect("condition");
    assert!(
        delete.try_wait().expect("try_wait").is_none(),
        "kubectl delete returned while a finalizer holds the object"
    );
    let out = sb
        .kubectl(kubectl, &["get", "agent", "research-bot", "-n", NS, "-o", "jsonpath={.metadata.deletionTimestamp}"])
        .await;
    assert!(!out.is_empty());
    sb.kubectl(
        kubectl,
        &[
            "patch",
            "agent",
            "research-bot",
            "-n",
            NS,
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    )
    .await;
    let status = wait_for("kubectl delete to return", delete.wait()).await.expect("delete runs");
    assert!(status.success(), "kubectl delete failed");
    wait_for("the object to be gone", await_condition(agents.clone(), "research-bot", conditions::is_deleted("")))
        .await
        .expect("gone");
    let run = sb.kubectl_run(kubectl, &["get", "agent", "research-bot", "-n", NS]).await;
    assert!(!run.ok && (run.stderr.contains("NotFound") || run.stderr.contains("not found")), "{}", run.stderr);
}

async fn invalid_examples(kubectl: &Path) {
    let sb = start().await;
    apply_examples(&sb, kubectl).await;
    let dir = repo().join("examples/invalid");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("examples/invalid").filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    assert!(!files.is_empty(), "examples/invalid is empty");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let rule = text
            .lines()
            .find_map(|l| l.strip_prefix("# rule:"))
            .unwrap_or_else(|| panic!("{} has no `# rule:` line", file.display()))
            .trim()
            .to_owned();
        let path = file.to_string_lossy().into_owned();
        let run = sb.kubectl_run(kubectl, &["apply", "-f", &path]).await;
        assert!(!run.ok, "{} was accepted: {}", file.display(), run.stdout);
        assert!(run.stderr.contains(&rule), "{}: expected {rule:?} in:\n{}", file.display(), run.stderr);
    }
    // Deleting the directory (namespace first) deletes every object: the namespace stays
    // Terminating long enough for kubectl to delete each one itself.
    let out = sb.kubectl(kubectl, &["delete", "-f", "examples/"]).await;
    assert!(out.contains("agent.crabglamp.com \"research-bot\" deleted"), "{out}");
    let run = sb.kubectl_run(kubectl, &["get", "namespace", "team-a"]).await;
    assert!(!run.ok && run.stderr.contains("not found"), "{}{}", run.stdout, run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_132_scenarios() {
    scenario(&kubectl_132()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_132_refuses_every_invalid_example() {
    invalid_examples(&kubectl_132()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_135_scenarios() {
    scenario(&kubectl_135()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_135_refuses_every_invalid_example() {
    invalid_examples(&kubectl_135()).await;
}
