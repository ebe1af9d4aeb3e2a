//! `crabglamp-operator run` itself: `--help` documents every flag with its environment
//! variable; elected, the binary takes the Lease, serves its endpoints on the address it logs,
//! and on SIGTERM drains and releases the Lease before it exits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::support::{LEASE, eventually, holder};
use crate::fixture::{Operator, SEALING_KEY, ZONE};

#[test]
fn run_help_documents_every_flag_and_its_environment_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"))
        .args(["run", "--help"])
        .env_clear()
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--leader-election", "CRABGLAMP_LEADER_ELECTION"),
        ("--lease-name", "CRABGLAMP_LEASE_NAME"),
        ("--lease-namespace", "POD_NAMESPACE"),
        ("--identity", "POD_NAME"),
        ("--lease-duration-seconds", "CRABGLAMP_LEASE_DURATION_SECONDS"),
        ("--lease-renew-deadline-seconds", "CRABGLAMP_LEASE_RENEW_DEADLINE_SECONDS"),
        ("--lease-retry-period-ms", "CRABGLAMP_LEASE_RETRY_PERIOD_MS"),
        ("--shard", "CRABGLAMP_SHARD"),
        ("--watch-namespace", "CRABGLAMP_WATCH_NAMESPACE"),
        ("--metrics-addr", "CRABGLAMP_METRICS_ADDR"),
        ("--drain-seconds", "CRABGLAMP_DRAIN_SECONDS"),
    ] {
        assert!(help.contains(&format!("{flag} <")) || help.contains(&format!("{flag}\n")), "{flag} missing:\n{help}");
        assert!(help.contains(&format!("[env: {env}=")), "{env} missing:\n{help}");
    }
    // Every long flag has its variable: as many `[env:` as flags besides --help.
    // Flag lines are indented by at most 6 columns; wrapped descriptions by more.
    let flags = help
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            l.len() - t.len() <= 6 && t.starts_with('-') && !t.contains("--help")
        })
        .count();
    assert_eq!(help.matches("[env: ").count(), flags, "a flag without its environment variable:\n{help}");
}

/// The binary allocates with jemalloc under the settings the scale benchmark measured (one
/// arena, no thread caches, freed pages returned at once): jemalloc's own statistics, printed
/// at exit, say so.
#[cfg(not(target_env = "msvc"))]
#[test]
fn the_binary_runs_on_jemalloc_with_one_arena_no_thread_caches_and_no_decay() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"))
        .arg("--help")
        .env_clear()
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in ["opt.narenas: 1\n", "opt.tcache: false\n", "opt.dirty_decay_ms: 0 ", "opt.muzzy_decay_ms: 0 "] {
        assert!(stats.contains(option), "{option:?} missing from jemalloc's statistics:\n{stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_elected_binary_serves_its_endpoints_and_releases_the_lease_on_sigterm() {
    let op = Operator::start_idle().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, op.kube.kubeconfig_yaml()).expect("kubeconfig");
    let cf = &op.settings().cloudflare;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"))
        .args(["--log-format", "json", "run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--leader-election", "--lease-namespace", super::support::LEASE_NAMESPACE, "--identity", "binary"])
        .args(["--lease-retry-period-ms", "200", "--metrics-addr", "127.0.0.1:0", "--drain-seconds", "10"])
        .env("DATABASE_URL", &op.db.operator_url)
        .env("HCLOUD_ENDPOINT", &op.hetzner.base_url)
        .env("HCLOUD_TOKEN", "hz-test")
        .env("CLOUDFLARE_ENDPOINT", &op.cloudflare.base_url)
        .env("CLOUDFLARE_API_TOKEN", "cf-test")
        .env("CLOUDFLARE_ACCOUNT_ID", &cf.account_id)
        .env("CLOUDFLARE_ZONE_ID", &cf.zone_id)
        .env("CLOUDFLARE_ZONE_NAME", ZONE)
        .env("CRABGLAMP_SEALING_KEY", SEALING_KEY)
        .env("RUST_LOG", "warn,crabglamp_operator=info")
        .env_remove("KUBECONFIG")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crabglamp-operator starts");
    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = Arc::clone(&lines);
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let value = serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({"unparsed": line}));
            sink.lock().expect("lines").push(value);
        }
    });
    let logged = |message: &'static str| {
        let lines = Arc::clone(&lines);
        move || lines.lock().expect("lines").iter().find(|l| l["fields"]["message"] == message).cloned()
    };
    let serving = logged("serving /metrics, /healthz and /readyz");
    eventually(Duration::from_secs(30), "the binary logs where it serves", || async { serving().is_some() }).await;
    let addr = serving().and_then(|l| l["fields"]["addr"].as_str().map(str::to_owned)).expect("addr");

    eventually(Duration::from_secs(15), "the binary takes the lease", || async {
        holder(&op, LEASE).await.as_deref() == Some("binary")
    })
    .await;
    let get = |path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.expect("answers");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    eventually(Duration::from_secs(15), "it reports itself leader", || async {
        get("/metrics").await.1.contains("\ncrabglamp_leader 1\n")
    })
    .await;
    eventually(Duration::from_secs(15), "ready", || async { get("/readyz").await.0 == 200 }).await;
    assert_eq!(get("/healthz").await.0, 200);

    let pid = child.id().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits after SIGTERM").expect("wait");
    assert!(status.success(), "exit status {status}");
    let _ = reader.await;
    assert_eq!(holder(&op, LEASE).await, None, "SIGTERM released the lease");
    assert!(logged("lease released")().is_some(), "{:#?}", lines.lock().expect("lines"));
}
