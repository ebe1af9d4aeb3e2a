//! Shared fixtures: a server on a free loopback port, its kubeconfig in a temp dir, and a
//! kubectl runner with its own cache dir per invocation (no stale discovery).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crabglamp_sandbox::kube::{KubeApiConfig, RunningKube, spawn};

/// A running server and its kubeconfig.
pub struct Sandbox {
    pub kube: RunningKube,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

/// kube-client refuses to start when proxy variables are set; tests talk to loopback only.
pub fn clear_proxies() {
    static CLEARED: std::sync::Once = std::sync::Once::new();
    // Once, and before anything else: changing the environment while another thread reads it is
    // a data race (glibc's getenv/setenv), so every test calls this first and the other callers
    // wait here until it is done; nothing changes the environment afterwards.
    CLEARED.call_once(|| {
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            // SAFETY: see above: no test thread reads the environment before this returns.
            unsafe { std::env::remove_var(var) };
        }
    });
}

pub async fn start_with(config: KubeApiConfig) -> Sandbox {
    clear_proxies();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let kube = spawn(config, listener).await.expect("server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kube.kubeconfig_yaml()).expect("write kubeconfig");
    Sandbox { kube, dir, kubeconfig }
}

pub async fn start() -> Sandbox {
    start_with(KubeApiConfig::default()).await
}

pub fn repo() -> PathBuf {
    // The workspace root: examples/ and crds/ live there, beside the operator.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// kubectl 1.32 from PATH; the test fails clearly when it is missing.
pub fn kubectl_132() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl is not on PATH: install kubectl 1.32 (these tests drive the real binary)")
}

/// kubectl 1.35 from `KUBECTL_135` (set by scripts/test via scripts/kubectl-135).
pub fn kubectl_135() -> PathBuf {
    let p = std::env::var("KUBECTL_135")
        .expect("KUBECTL_135 is not set: run `export KUBECTL_135=$(scripts/kubectl-135)` (scripts/test does)");
    let p = PathBuf::from(p);
    assert!(p.is_file(), "KUBECTL_135={} is not a file", p.display());
    p
}

/// The result of one kubectl run.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    /// Runs `kubectl args...` with a fresh cache dir and a deadline.
    pub async fn kubectl_run(&self, kubectl: &Path, args: &[&str]) -> Run {
        let cache = tempfile::tempdir_in(self.dir.path()).expect("cache dir");
        let mut cmd = tokio::process::Command::new(kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(cache.path())
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .current_dir(repo())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 120 s"))
            .expect("kubectl runs");
        Run::from(out)
    }

    /// Runs kubectl and asserts success; returns stdout.
    pub async fn kubectl(&self, kubectl: &Path, args: &[&str]) -> String {
        let run = self.kubectl_run(kubectl, args).await;
        assert!(run.ok, "kubectl {args:?} failed:\nstdout: {}\nstderr: {}", run.stdout, run.stderr);
        run.stdout
    }

    /// Starts kubectl in the background (for -w and blocking waits).
    pub fn kubectl_spawn(&self, kubectl: &Path, args: &[&str]) -> tokio::process::Child {
        let cache = self.dir.path().join(format!("cache-{}", uuid::Uuid::new_v4().simple()));
        tokio::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(cache)
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .current_dir(repo())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl starts")
    }

    pub fn client(&self) -> kube::Client {
        self.kube.client().expect("client")
    }
}
