//! The simulators judged by the OFFICIAL Python clients (`hcloud`, `cloudflare`), unchanged:
//! `scripts/check-sims-python.py` drives both through whole scenarios.
//! Needs CRABGLAMP_PYTHON pointing at a python with both packages; without it the test fails.

use std::time::Duration;

use crabglamp_sandbox::cloudflare::CloudflareSimConfig;

use crabglamp_testkit::cloud::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_clients_drive_both_simulators() {
    let Ok(python) = std::env::var("CRABGLAMP_PYTHON") else {
        panic!(
            "CRABGLAMP_PYTHON is not set. Point it at a python with the official clients, e.g.\n  \
             python3 -m venv $HOME/.cache/crabglamp-venv && \
             $HOME/.cache/crabglamp-venv/bin/pip install hcloud cloudflare\n  \
             export CRABGLAMP_PYTHON=$HOME/.cache/crabglamp-venv/bin/python\n\
             (scripts/test does this for you)."
        )
    };
    let _cpu_heavy = TIMING.read().await;
    let hz = hetzner_sim(hz_config()).await;
    let cf = cloudflare_sim(cf_config()).await;
    let d = CloudflareSimConfig::default();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-sims-python.py");
    let run = tokio::process::Command::new(&python)
        .arg(script)
        .args(["--hetzner-url", &hz.base_url, "--hetzner-token", HZ_TOKEN])
        .args(["--cloudflare-url", &cf.base_url, "--cloudflare-token", CF_TOKEN])
        .args(["--account-id", &d.account_id, "--zone-id", &d.zone_id, "--zone-name", &d.zone_name])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Python check finishes within 180 s")
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "official clients failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    hz.shutdown().await.unwrap();
    cf.shutdown().await.unwrap();
}
