//! The real kubectl binaries (1.32 and 1.35) the tests drive, and one run of either.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// kubectl 1.32: the machine's, on PATH (scripts/test installs it when missing).
pub fn kubectl_132() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl is not on PATH: install kubectl 1.32 (these tests drive the real binary)")
}

/// kubectl 1.35, from `KUBECTL_135` (scripts/test sets it with scripts/kubectl-135).
pub fn kubectl_135() -> PathBuf {
    let p = std::env::var("KUBECTL_135")
        .expect("KUBECTL_135 is not set: run `export KUBECTL_135=$(scripts/kubectl-135)` (scripts/test does)");
    PathBuf::from(p)
}

/// What one kubectl run printed, and whether it succeeded.
pub struct KubectlRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl` (a path: 1.32 or 1.35) with `kubeconfig`, `stdin` piped in if given.
pub fn run_kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> KubectlRun {
    let mut command = Command::new(kubectl);
    command.args(args).env("KUBECONFIG", kubeconfig).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", kubectl.display()));
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl finishes");
    KubectlRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
