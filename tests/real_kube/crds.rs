//! The CRDs and `examples/` as a real kube-apiserver judges them, with kubectl 1.32 and 1.35:
//! `kubectl apply --server-side -f crds/` succeeds (every CEL rule within the server's
//! estimated cost budget), every valid example is admitted, and every manifest in
//! `examples/invalid/` is refused with its rule's message on its field. A CRD over the cost
//! budget is refused by the stand-in with the same causes as by the real server.

use std::path::{Path, PathBuf};

use crate::kube_server::{KubeServer, kubectl_132, kubectl_135, run_kubectl};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One `# key: value` header line of an invalid example.
fn header(text: &str, key: &str, file: &Path) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}:")))
        .unwrap_or_else(|| panic!("{} has no `# {key}:` line", file.display()))
        .trim()
        .to_owned()
}

async fn examples_on_the_real_server(kubectl: &Path) {
    let server = KubeServer::real().await;
    let KubeServer::Real(real) = &server else { unreachable!("KubeServer::real") };
    let kubeconfig = &real.plane.kubeconfig;
    let crds = repo().join("crds").display().to_string();
    let run = run_kubectl(kubectl, kubeconfig, &["apply", "--server-side", "--force-conflicts", "-f", &crds], None);
    assert!(run.ok, "the real server refuses crds/: {}", run.stderr);

    let examples = repo().join("examples").display().to_string();
    let run = run_kubectl(kubectl, kubeconfig, &["apply", "--server-side", "-f", &examples], None);
    assert!(run.ok, "the real server refuses a valid example: {}{}", run.stderr, run.stdout);
    for kind in ["agent", "plainvm", "virtualkey"] {
        assert!(run.stdout.contains(&format!("{kind}.crabglamp.com/")), "no {kind} applied: {}", run.stdout);
    }

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/invalid"))
        .expect("examples/invalid")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "examples/invalid holds {} manifests", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let rule = header(&text, "rule", &file);
        let field = header(&text, "field", &file);
        let path = file.display().to_string();
        // Server-side apply refuses too, but a wrong type is reported by its typed-patch step
        // ("expected boolean, got &{yes}") before the schema's wording that apply shows.
        let ssa = run_kubectl(kubectl, kubeconfig, &["apply", "--server-side", "-f", &path], None);
        assert!(!ssa.ok, "the real server admitted {} by server-side apply: {}", file.display(), ssa.stdout);
        let run = run_kubectl(kubectl, kubeconfig, &["apply", "-f", &path], None);
        assert!(!run.ok, "the real server admitted {}: {}", file.display(), run.stdout);
        assert!(run.stderr.contains(&rule), "{}: expected {rule:?} in:\n{}", file.display(), run.stderr);
        // Type and required-field errors are reported by the schema before any rule runs; a
        // rule's error names its field.
        assert!(
            run.stderr.contains(&field) || run.stderr.contains(&format!(".{field}")),
            "{}: expected the field {field:?} in:\n{}",
            file.display(),
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_132_examples_on_the_real_server() {
    examples_on_the_real_server(&kubectl_132()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_135_examples_on_the_real_server() {
    examples_on_the_real_server(&kubectl_135()).await;
}

/// The `Error from server` lines of a refused apply, each cause on its own line, sorted: the
/// real server lists sibling properties' causes in map order, which varies.
fn causes(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("is invalid"))
        .flat_map(|l| {
            let (_, list) = l.split_once("is invalid: ").unwrap_or(("", l));
            let list = list.trim().trim_start_matches('[').trim_end_matches(']');
            list.split(", spec.").map(|c| c.trim_start_matches("spec.").to_owned()).collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_budget_crd_is_refused_alike_by_the_real_server_and_the_stand_in() {
    let crds = repo().join("sandbox/tests/cel_cost_crds.yaml").display().to_string();
    let kubectl = kubectl_132();

    let server = KubeServer::real().await;
    let KubeServer::Real(real) = &server else { unreachable!("KubeServer::real") };
    let on_real = run_kubectl(&kubectl, &real.plane.kubeconfig, &["apply", "--server-side", "-f", &crds], None);

    let stand_in = KubeServer::sandbox().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, stand_in.admin_kubeconfig_yaml()).expect("kubeconfig");
    let on_stand_in = run_kubectl(&kubectl, &kubeconfig, &["apply", "--server-side", "-f", &crds], None);

    let real_causes = causes(&on_real.stderr);
    assert!(!real_causes.is_empty(), "the real server refused nothing of {crds}:\n{}", on_real.stdout);
    assert!(real_causes.iter().any(|c| c.contains("estimated rule cost exceeds budget")), "{real_causes:#?}");
    assert_eq!(causes(&on_stand_in.stderr), real_causes, "the stand-in refuses otherwise than the real server");
    // What both admitted: the same bounded CRDs.
    let admitted = |out: &str| {
        let mut names: Vec<String> =
            out.lines().filter(|l| l.contains("serverside-applied")).map(str::to_owned).collect();
        names.sort();
        names
    };
    assert_eq!(admitted(&on_stand_in.stdout), admitted(&on_real.stdout));
    // Leave the real server without them for the next test.
    let _ = run_kubectl(&kubectl, &real.plane.kubeconfig, &["delete", "--ignore-not-found", "-f", &crds], None);
}

/// What the server of an Agent or PlainVM was created with is immutable: an update of
/// `serverType`, `image` or `sshKeys` is refused with the rule's message on its field (the
/// server would neither be resized nor rebuilt, and the price cell follows the server Hetzner
/// runs), and an unchanged apply of the same objects still passes.
fn server_fields_are_immutable(kubectl: &Path, kubeconfig: &Path) {
    let run = |args: &[&str]| run_kubectl(kubectl, kubeconfig, args, None);
    let crds = repo().join("crds").display().to_string();
    let applied = run(&["apply", "--server-side", "--force-conflicts", "-f", &crds]);
    assert!(applied.ok, "crds/: {}", applied.stderr);
    let waited = run(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
    assert!(waited.ok, "{}", waited.stderr);
    let examples = repo().join("examples").display().to_string();
    let applied = run(&["apply", "--server-side", "-f", &examples]);
    assert!(applied.ok, "examples/: {}{}", applied.stderr, applied.stdout);

    let other_key = r#"["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsTestKey dev@example.com"]"#;
    for (kind, name) in [("agent", "research-bot"), ("plainvm", "build-box")] {
        for (field, value) in [("serverType", r#""cx53""#), ("image", r#""rocky-9""#), ("sshKeys", other_key)] {
            let patch = format!(r#"{{"spec":{{"{field}":{value}}}}}"#);
            let refused = run(&["patch", kind, name, "-n", "team-a", "--type", "merge", "-p", &patch]);
            assert!(!refused.ok, "{kind} {field} changed: {}", refused.stdout);
            assert!(
                refused.stderr.contains(&format!("spec.{field}: Invalid value"))
                    && refused.stderr.contains(&format!("spec.{field} is immutable")),
                "{kind} {field}: {}",
                refused.stderr
            );
        }
    }
    // The same objects applied again: nothing changes, nothing is refused.
    let again = run(&["apply", "--server-side", "-f", &examples]);
    assert!(again.ok, "an unchanged apply is refused: {}{}", again.stderr, again.stdout);
    let got = run(&["get", "agent", "research-bot", "-n", "team-a", "-o", "jsonpath={.spec.serverType} {.spec.image}"]);
    assert_eq!(got.stdout, "cpx22 ubuntu-24.04", "{}", got.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fields_are_immutable_on_the_real_server_and_the_stand_in() {
    {
        let server = KubeServer::real().await;
        let KubeServer::Real(real) = &server else { unreachable!("KubeServer::real") };
        for kubectl in [kubectl_132(), kubectl_135()] {
            server_fields_are_immutable(&kubectl, &real.plane.kubeconfig);
        }
    }
    let stand_in = KubeServer::sandbox().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, stand_in.admin_kubeconfig_yaml()).expect("kubeconfig");
    for kubectl in [kubectl_132(), kubectl_135()] {
        server_fields_are_immutable(&kubectl, &kubeconfig);
    }
}
