//! The scale benchmark: N Agents, N/4 PlainVMs and N VirtualKeys against the stand-ins with
//! the real action durations and the real rate limits, all under one time scale, and the
//! release `crabglamp-operator run` as a separate process. Prints one table per N (time to
//! all Ready against the floor the clouds allow, requests per object against their floors,
//! idle traffic and writes, reconciles, the operator's peak RSS) with the goals met or
//! missed, and writes the plot `docs/bench-n<N>.svg`. Never fails on time. The manifests are
//! applied before the operator starts (the stand-in API server is not time-scaled), and the
//! clock starts when the operator does.
//!
//! `cargo bench --bench scale` (N = 100 and 1,000). Knobs, all optional:
//! `CRABGLAMP_BENCH_SIZES=100,1000,5000`, `CRABGLAMP_BENCH_SCALE=20` (simulated time runs that
//! many times faster: actions, boots, rate refills and windows alike),
//! `CRABGLAMP_BENCH_IDLE_RESYNCS=12`, `CRABGLAMP_BENCH_PLOT_DIR=docs` (empty: no plot).
//! `CRABGLAMP_BENCH_SHARDS=10` runs the fleet across shards instead (see `shards.rs`).
//!
//! `CRABGLAMP_TEST_KUBE=real` (with `CRABGLAMP_TESTENV`, `HELM` and `KUBECTL` as scripts/test
//! sets them): the objects live on the real kube-apiserver of `testenv/` instead of the stand-in,
//! the operator authenticates as the chart's ServiceAccount, and the table adds the API-server
//! requests it made, read from the server's audit log: per object until all Ready and per object
//! per resync at idle, by verb and resource.

mod floor;
mod idle;
mod plot;
mod process;
mod progress;
mod requests;
mod shards;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use crabglamp_operator::api::{Agent, PlainVM, VirtualKey};
use crabglamp_sandbox::cloudflare::CloudflareSimConfig;
use crabglamp_sandbox::hetzner::{self as hzsim, HetznerSimConfig};
use crabglamp_sandbox::http::RunningSim;
use crabglamp_sandbox::stack::{Sandbox, SandboxOptions};
use crabglamp_testkit::{db, fixture, kube_server};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;

use floor::Floor;
use process::{OperatorProcess, percentile};
use requests::AccountRequests;

pub const NAMESPACE: &str = "bench";
/// The sandbox's cloudflared connects this long (simulated) after a server booted.
pub const CLOUDFLARED_DELAY: Duration = Duration::from_secs(3);
/// Creates in flight at once while applying (as `kubectl apply` of a large directory would).
const APPLY_CONCURRENCY: usize = 8;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("CRABGLAMP_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let shards: usize = env_or("CRABGLAMP_BENCH_SHARDS", 0);
    if shards > 0 {
        let n = sizes.first().copied().filter(|_| std::env::var_os("CRABGLAMP_BENCH_SIZES").is_some()).unwrap_or(1000);
        let scale = env_or("CRABGLAMP_BENCH_SCALE", shards::DEFAULT_SCALE);
        print_scale(scale);
        runtime.block_on(shards::run(shards, n, scale));
        return;
    }
    let scale: f64 = env_or("CRABGLAMP_BENCH_SCALE", 20.0);
    print_scale(scale);
    for n in sizes {
        runtime.block_on(run(n, scale));
    }
}

fn print_scale(scale: f64) {
    println!(
        "scale benchmark: time scale {scale}x (simulated actions, boots, rate refills and windows all run {scale} times faster; \
         every time below is real-world time = wall clock x {scale})"
    );
    println!("machine: {} cores, load average {}", num_cpus(), load_average());
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn virtual_key(name: &str) -> VirtualKey {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "crabglamp.com/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {"name": name},
        "spec": {"owner": "acct_bench", "models": ["gpt-4o*"], "budget": {"monthlyUsd": "50.00"}}
    }))
    .expect("virtual key manifest")
}

/// One simulated Hetzner project and Cloudflare account: what one operator process uses.
pub struct CloudAccount<'a> {
    pub hcloud: &'a RunningSim,
    pub hetzner: &'a HetznerSimConfig,
    pub cloudflare: &'a RunningSim,
    pub cf: &'a CloudflareSimConfig,
}

impl<'a> CloudAccount<'a> {
    fn of(sandbox: &'a Sandbox) -> Self {
        CloudAccount {
            hcloud: &sandbox.hcloud,
            hetzner: &sandbox.hetzner_config,
            cloudflare: &sandbox.cloudflare,
            cf: &sandbox.cloudflare_config,
        }
    }
}

/// A fresh sealing key (standard base64 of 32 random bytes). One installation has one: its
/// shards share it (the audit anchor they all move is sealed with it).
pub fn sealing_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// What every operator process of one installation shares.
pub struct Installation<'a> {
    pub redis_url: &'a str,
    pub kubeconfig: &'a std::path::Path,
    pub database_url: &'a str,
    pub sealing_key: &'a str,
}

/// The operator's settings for one account of the stand-ins, every period divided by the time
/// scale; `shard` names the shard it serves (its objects carry the shard label).
pub fn operator_env(
    installation: &Installation<'_>,
    account: &CloudAccount<'_>,
    scale: f64,
    shard: Option<&str>,
) -> Vec<(String, String)> {
    let scaled_secs = |real: f64| ((real / scale).round() as u64).max(1).to_string();
    let Installation { redis_url, kubeconfig, database_url, sealing_key } = *installation;
    let cf = account.cf;
    let mut env: Vec<(String, String)> = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("DATABASE_URL", database_url.to_owned()),
        ("REDIS_URL", redis_url.to_owned()),
        ("HCLOUD_ENDPOINT", account.hcloud.base_url.clone()),
        ("HCLOUD_TOKEN", account.hetzner.token.clone()),
        ("CLOUDFLARE_ENDPOINT", account.cloudflare.base_url.clone()),
        ("CLOUDFLARE_API_TOKEN", cf.token.clone()),
        ("CLOUDFLARE_ACCOUNT_ID", cf.account_id.clone()),
        ("CLOUDFLARE_ZONE_ID", cf.zone_id.clone()),
        ("CLOUDFLARE_ZONE_NAME", cf.zone_name.clone()),
        // Any free port: several operators share the machine.
        ("CRABGLAMP_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        // The budgets are per real hour and per real five minutes: scaled like the clouds'.
        ("CRABGLAMP_HETZNER_REQUESTS_PER_HOUR", ((3600.0 * scale) as u64).to_string()),
        ("CRABGLAMP_CLOUDFLARE_REQUESTS_PER_5MIN", ((1200.0 * scale) as u64).to_string()),
        ("CRABGLAMP_RESYNC_SECONDS", scaled_secs(300.0)),
        ("CRABGLAMP_FAST_POLL_MS", ((5000.0 / scale) as u64).max(50).to_string()),
        ("CRABGLAMP_SHUTDOWN_TIMEOUT_SECONDS", scaled_secs(120.0)),
        ("CRABGLAMP_REMOVAL_SETTLE_TIMEOUT_SECONDS", scaled_secs(600.0)),
        ("CRABGLAMP_SWEEPER_GRACE_SECONDS", scaled_secs(600.0)),
        ("CRABGLAMP_SEALING_KEY", sealing_key.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(shard) = shard {
        env.push(("CRABGLAMP_SHARD".to_owned(), shard.to_owned()));
    }
    env
}

/// The operator's API-server requests in these audit events, by verb and resource.
fn api_requests(events: &[kube_server::AuditEvent]) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for e in events.iter().filter(|e| e.user.username == fixture::OPERATOR_USER) {
        let resource = match &e.object_ref {
            Some(o) if !o.resource.is_empty() => match &o.subresource {
                Some(sub) => format!("{}/{sub}", o.resource),
                None => o.resource.clone(),
            },
            _ => "(discovery)".to_owned(),
        };
        *by.entry(format!("{} {resource}", e.verb)).or_insert(0) += 1;
    }
    by
}

/// The goals both runs share: all Ready within 1.3x the floor (`ratio`: `None` when not all
/// were), and the requests per Agent and PlainVM (Hetzner) and per Agent (Cloudflare).
pub fn time_and_request_goals(ratio: Option<f64>, [hz_agent, hz_vm, cf_agent]: [f64; 3]) -> Vec<Goal> {
    let shown = ratio.map_or("not all Ready".to_owned(), |r| format!("{r:.2}"));
    vec![
        goal("all Ready within 1.3x the floor", "<= 1.30".into(), shown, ratio.is_some_and(|r| r <= 1.3)),
        goal("Hetzner requests per Agent", "<= 1.10".into(), format!("{hz_agent:.3}"), hz_agent <= 1.1),
        goal("Hetzner requests per PlainVM", "<= 2.20".into(), format!("{hz_vm:.3}"), hz_vm <= 2.2),
        goal("Cloudflare requests per Agent", "<= 3.20".into(), format!("{cf_agent:.3}"), cf_agent <= 3.2),
    ]
}

/// Prints the goals, each met or missed.
pub fn print_goals(title: &str, goals: &[Goal]) {
    println!();
    println!("| goal ({title}) | goal | measured | |");
    println!("| --- | --- | --- | --- |");
    for g in goals {
        println!("| {} | {} | {} | {} |", g.name, g.goal, g.measured, if g.met { "met" } else { "missed" });
    }
}

pub struct Goal {
    name: &'static str,
    goal: String,
    measured: String,
    met: bool,
}

pub fn goal(name: &'static str, goal: String, measured: String, met: bool) -> Goal {
    Goal { name, goal, measured, met }
}

async fn run(n: usize, scale: f64) {
    let vms = n / 4;
    let keys = n;
    println!();
    println!("## N = {n}: {n} Agents, {vms} PlainVMs, {keys} VirtualKeys");
    let hetzner = HetznerSimConfig { time_scale: scale, ..HetznerSimConfig::default() };
    let durations = hetzner.durations.clone();
    // One account holds 1,000 tunnels (Cloudflare's limit): a larger single-account fleet is
    // one no real account can hold, measured here with the limit lifted (and said so).
    let tunnel_limit = n.max(crabglamp_sandbox::cloudflare::TUNNELS_PER_ACCOUNT);
    if tunnel_limit > crabglamp_sandbox::cloudflare::TUNNELS_PER_ACCOUNT {
        println!("Cloudflare tunnel limit lifted to {tunnel_limit} for one account (a real account holds 1,000)");
    }
    // Likewise the zone's DNS records quota (3,500 on a Pro zone), one record per Agent.
    let dns_record_limit = n.max(crabglamp_sandbox::cloudflare::DNS_RECORDS_PER_ZONE);
    if dns_record_limit > crabglamp_sandbox::cloudflare::DNS_RECORDS_PER_ZONE {
        println!("Cloudflare DNS records quota lifted to {dns_record_limit} for one zone (a Pro zone holds 3,500)");
    }
    let cloudflare =
        CloudflareSimConfig { time_scale: scale, tunnel_limit, dns_record_limit, ..CloudflareSimConfig::default() };
    let options = SandboxOptions { hetzner, cloudflare, ..SandboxOptions::default() };
    let sandbox = match Sandbox::start(options).await {
        Ok(s) => s,
        Err(e) => {
            println!("the sandbox did not start: {e}");
            return;
        }
    };
    // A user with a raised quota: room for every server and firewall (the defaults are 100
    // servers and 50 firewalls per project).
    let server_limit = n + vms + 10;
    let firewall_limit = vms + 10;
    hzsim::set_server_limit(&sandbox.hcloud, server_limit);
    hzsim::set_firewall_limit(&sandbox.hcloud, firewall_limit);
    println!("Hetzner project limits raised to {server_limit} servers and {firewall_limit} firewalls");
    let cloudflared = crabglamp_sandbox::stack::cloudflared::start(
        sandbox.hcloud.handle(),
        sandbox.cloudflare.handle(),
        scale,
        CLOUDFLARED_DELAY,
    );
    let db = db::TestDb::fresh().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    // On the real server the sandbox's own stand-in stays idle: nothing is applied to it and
    // the operator never sees it.
    let real_kube = if kube_server::real() { Some(kube_server::KubeServer::real().await) } else { None };
    let (kubeconfig_yaml, client) = match &real_kube {
        Some(real) => (real.kubeconfig_yaml(), real.client()),
        None => (sandbox.kube.kubeconfig_yaml(), sandbox.kube.client().expect("kube client")),
    };
    std::fs::write(&kubeconfig, kubeconfig_yaml).expect("write kubeconfig");
    if real_kube.is_some() {
        println!("API server: the real kube-apiserver of testenv/ (the operator as the chart's ServiceAccount)");
    }
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).expect("namespace");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.expect("namespace");

    let sealing_key = sealing_key();
    let installation = Installation {
        redis_url: &sandbox.redis.url,
        kubeconfig: &kubeconfig,
        database_url: &db.url,
        sealing_key: &sealing_key,
    };
    let env = operator_env(&installation, &CloudAccount::of(&sandbox), scale, None);
    let resync_wall =
        Duration::from_secs(env_or("CRABGLAMP_BENCH_RESYNC_WALL", (300.0 / scale).round().max(1.0) as u64));

    let floor = Floor::new(n, vms, &durations, CLOUDFLARED_DELAY.as_secs_f64());
    let agents: Api<Agent> = Api::namespaced(client.clone(), NAMESPACE);
    let plainvms: Api<PlainVM> = Api::namespaced(client.clone(), NAMESPACE);
    let vks: Api<VirtualKey> = Api::namespaced(client.clone(), NAMESPACE);
    let (ready, watches) = progress::watch_all(&agents, &plainvms, &vks);
    let [ready_agents, ready_vms, ready_keys] = &ready;

    let creates = (0..n)
        .map(|i| Object::Agent(fixture::agent(&format!("ag-{i:05}"), "acct_a", true)))
        .chain(
            (0..vms)
                .map(|i| Object::Vm(fixture::plainvm(&format!("vm-{i:05}"), "acct_a", true, serde_json::json!([])))),
        )
        .chain((0..keys).map(|i| Object::Key(virtual_key(&format!("vk-{i:05}")))));
    let applied = apply(creates, &agents, &plainvms, &vks).await;

    // The clock starts with the operator, every manifest already applied: the API server is
    // not time-scaled, so applying while the clock runs would count its wall time (on two
    // cores shared with the operator and the clouds) twenty times over as real-world time.
    let mut operator = match OperatorProcess::spawn(&env) {
        Ok(p) => p,
        Err(e) => {
            println!("cannot start crabglamp-operator: {e}");
            return;
        }
    };
    let started = Instant::now();
    let every = Duration::from_secs_f64((floor.total() / scale / 300.0).clamp(0.05, 2.0));
    let (samples, sampler) =
        progress::sample(started, every, ready.clone(), [sandbox.hcloud.handle(), sandbox.cloudflare.handle()]);

    let deadline = Duration::from_secs_f64(floor.total() / scale * 5.0 + 120.0);
    let all_ready = progress::wait_ready(&ready, [n, vms, keys], started, deadline, || {
        (!operator.running()).then(|| "the operator exited".to_owned())
    })
    .await;
    let converged_wall = [ready_agents, ready_vms, ready_keys]
        .iter()
        .filter_map(|s| progress::lock(s).last())
        .max()
        .map_or(started.elapsed(), |last| last.duration_since(started));
    let cloud_ready_wall = [ready_agents, ready_vms]
        .iter()
        .filter_map(|s| progress::lock(s).last())
        .max()
        .map_or(converged_wall, |last| last.duration_since(started));
    let converged_at = Instant::now();
    let requests = AccountRequests::count(&sandbox.hcloud, &sandbox.cloudflare, n, vms);
    let hz_total = requests.hetzner_total;
    let api_until_ready = real_kube.as_ref().map(|k| api_requests(&k.audit_events()));
    let reconciles = operator.reconciles();
    let rss_converged = operator.peak_rss();

    // Idle: one resync to settle, then the measured resyncs: by default as many as the
    // operator's firewall audit period (12), so the window holds the rule audit's list too.
    let idle_resyncs: u32 = env_or("CRABGLAMP_BENCH_IDLE_RESYNCS", 12);
    tokio::time::sleep(resync_wall).await;
    let writes = || match &real_kube {
        Some(real) => real.writes_by(fixture::OPERATOR_USER),
        None => sandbox.kube.resource_version(),
    };
    let (hz_before, cf_before, rv_before) =
        (sandbox.hcloud.control().total_requests(), sandbox.cloudflare.control().total_requests(), writes());
    let api_before_idle = real_kube.as_ref().map(|k| api_requests(&k.audit_events()));
    let idle_started = Instant::now();
    // One period more than the cycles counted: a cycle is the period plus the list itself.
    tokio::time::sleep(resync_wall * (idle_resyncs + 1)).await;
    let idle_wall = idle_started.elapsed().as_secs_f64();
    let idle_hz_records = sandbox.hcloud.control().requests_since(hz_before, usize::MAX);
    let idle_cycles = idle::hetzner_cycles(&idle_hz_records);
    let idle_cf = sandbox.cloudflare.control().total_requests() - cf_before;
    let idle_writes = writes() - rv_before;
    let api_after_idle = real_kube.as_ref().map(|k| api_requests(&k.audit_events()));
    let peak_rss = operator.peak_rss();
    let (warnings, first_warnings) = operator.warnings();
    sampler.abort();
    let samples: Vec<progress::Sample> = samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    operator.stop();
    for task in watches {
        task.abort();
    }
    cloudflared.abort();

    // ---- the table ----
    let real = |wall: Duration| wall.as_secs_f64() * scale;
    let t_ready = real(if all_ready { converged_wall } else { started.elapsed() });
    let t_cloud = real(cloud_ready_wall);
    let ratio = t_ready / floor.total();
    println!();
    println!("Floor:");
    for line in floor.explain() {
        println!("  {line}");
    }
    println!();
    println!("| figure | measured | floor / goal |");
    println!("| --- | --- | --- |");
    println!("| time to all Ready (real-world) | {} | floor {} |", minutes(t_ready), minutes(floor.total()));
    println!("| ratio to the floor | {ratio:.2} | goal <= 1.30 |");
    println!("| Agents and PlainVMs Ready at | {} | |", minutes(t_cloud));
    println!(
        "| applying the {} manifests, before the operator started (wall clock, not counted) | {:.1} s | |",
        n + vms + keys,
        applied.as_secs_f64()
    );
    let (hz_agent, hz_vm) = (requests.hetzner_per_agent, requests.hetzner_per_plainvm);
    println!("| Hetzner requests until Ready, total | {hz_total} | floor {} |", floor.hetzner_requests);
    println!(
        "| Hetzner requests per Agent (its create + its share of the shared lists) | {hz_agent:.3} | floor 1, goal <= 1.1 |"
    );
    println!("| Hetzner requests per PlainVM (firewall + server + share) | {hz_vm:.3} | floor 2, goal <= 2.2 |");
    let cf_agent = requests.cloudflare_per_agent;
    println!("| Cloudflare requests per Agent | {cf_agent:.3} | floor 3, goal <= 3.2 |");
    let servers = n + vms;
    let idle_goal = servers as f64 / 50.0;
    let per_hour = |count: u64| count as f64 / (idle_wall * scale) * 3600.0;
    // Per list cycle (start of a server list to the start of the next), so no cycle counts half.
    let (idle_hz_per_resync, idle_hz_per_hour, idle_cycle_real) = match &idle_cycles {
        Some(c) => (
            c.requests as f64 / c.cycles as f64,
            c.requests as f64 / (c.wall_secs * scale).max(1e-9) * 3600.0,
            c.wall_secs * scale / c.cycles as f64,
        ),
        None => (f64::NAN, per_hour(idle_hz_records.len() as u64), f64::NAN),
    };
    println!(
        "| idle Hetzner requests per resync ({servers} servers, {vms} firewalls; {} whole list cycles of {} each, {} firewall-list pages among them) | {idle_hz_per_resync:.2} | goal <= {idle_goal:.1} (1 per 50 servers) |",
        idle_cycles.as_ref().map_or(0, |c| c.cycles),
        minutes(idle_cycle_real),
        idle_cycles.as_ref().map_or(0, |c| c.firewall_pages),
    );
    println!("| idle Hetzner requests per hour (resync 5 min) | {idle_hz_per_hour:.0} | budget 3600 |");
    println!("| idle Cloudflare requests per hour | {:.0} | budget 14400 |", per_hour(idle_cf));
    println!(
        "| API-server writes at idle ({} resync periods), per object | {idle_writes} ({:.4}) | goal 0 |",
        idle_resyncs + 1,
        idle_writes as f64 / (n + vms + keys) as f64
    );
    let until_ready: Vec<_> = reconciles.iter().filter(|r| r.at <= converged_at).collect();
    let mut latencies: Vec<Duration> = until_ready.iter().map(|r| r.elapsed).collect();
    latencies.sort();
    let errors = until_ready.iter().filter(|r| !r.ok).count();
    println!("| reconciles until Ready (errors) | {} ({errors}) | |", until_ready.len());
    for kind in ["Agent", "PlainVM", "VirtualKey"] {
        let mut of_kind: Vec<Duration> = until_ready.iter().filter(|r| r.kind == kind).map(|r| r.elapsed).collect();
        of_kind.sort();
        println!(
            "| {kind} reconciles: count, p50, p99 | {}, {:.1?}, {:.1?} | |",
            of_kind.len(),
            percentile(&of_kind, 50.0),
            percentile(&of_kind, 99.0)
        );
    }
    let per_object = reconciles_per_object(
        &reconciles,
        [("Agent", ready_agents), ("PlainVM", ready_vms), ("VirtualKey", ready_keys)],
    );
    println!(
        "| reconciles per object until its Ready: {} | {:.2} (most {}) | goal <= 3 |",
        per_object.kinds.join(", "),
        per_object.mean,
        per_object.most
    );
    println!(
        "| reconciles per second (wall clock, until Ready) | {:.0} | |",
        until_ready.len() as f64 / converged_wall.as_secs_f64().max(1e-3)
    );
    println!(
        "| reconcile latency p50 / p99 (wall clock) | {:.1?} / {:.1?} | |",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    );
    let mib = |b: Option<u64>| b.map_or("unknown".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    println!(
        "| operator peak RSS (VmHWM) at Ready / after idle | {} / {} | goal <= 100 MiB at N = 5000 |",
        mib(rss_converged),
        mib(peak_rss)
    );
    println!("| operator warnings logged | {warnings} | |");
    for w in first_warnings {
        println!("  warning: {w}");
    }
    println!();
    println!(
        "Requests until Ready, by endpoint (per object: per Agent for Cloudflare, per Agent + PlainVM for Hetzner):"
    );
    for (route, count) in &requests.hetzner_routes {
        println!("  Hetzner    {count:6}  {:.3}  {route}", *count as f64 / servers as f64);
    }
    for (route, count) in &requests.cloudflare_routes {
        println!("  Cloudflare {count:6}  {:.3}  {route}", *count as f64 / n.max(1) as f64);
    }

    if let (Some(ready), Some(before), Some(after)) = (&api_until_ready, &api_before_idle, &api_after_idle) {
        let objects = (n + vms + keys) as f64;
        let periods = f64::from(idle_resyncs + 1);
        let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        println!();
        println!(
            "API-server requests by the operator (real kube-apiserver, its audit log; a watch counts once, when opened): \
             until all Ready {} ({:.3} per object); at idle over {} resync periods {} ({:.4} per object per resync)",
            total(ready),
            total(ready) as f64 / objects,
            idle_resyncs + 1,
            total(after) - total(before),
            (total(after) - total(before)) as f64 / objects / periods
        );
        println!("| verb resource | until Ready | per object | at idle, per object per resync |");
        println!("| --- | --- | --- | --- |");
        for (key, count) in after {
            let until = ready.get(key).copied().unwrap_or(0);
            let idle = count - before.get(key).copied().unwrap_or(0);
            println!("| {key} | {until} | {:.3} | {:.4} |", until as f64 / objects, idle as f64 / objects / periods);
        }
    }

    let rss_ok = peak_rss.is_some_and(|b| b <= 100 * 1048576);
    let mut goals = time_and_request_goals(all_ready.then_some(ratio), [hz_agent, hz_vm, cf_agent]);
    goals.extend([
        goal(
            "idle Hetzner requests per resync",
            format!("<= {idle_goal:.1}"),
            format!("{idle_hz_per_resync:.2}"),
            idle_hz_per_resync <= idle_goal,
        ),
        goal("API-server writes at idle", "0".into(), idle_writes.to_string(), idle_writes == 0),
        goal("operator peak RSS (the goal is set at N = 5000)", "<= 100 MiB".into(), mib(peak_rss), rss_ok),
    ]);
    print_goals(&format!("N = {n}"), &goals);

    let plot_dir = std::env::var("CRABGLAMP_BENCH_PLOT_DIR").unwrap_or_else(|_| "docs".into());
    if !plot_dir.is_empty() {
        let path = std::path::Path::new(&plot_dir).join(format!("bench-n{n}.svg"));
        let title = format!("N = {n} ({n} Agents, {vms} PlainVMs, {keys} VirtualKeys), time scale {scale}x");
        let written = std::fs::create_dir_all(&plot_dir)
            .and_then(|()| std::fs::write(&path, plot::svg(&title, &floor, &samples, scale)));
        match written {
            Ok(()) => println!("plot written to {}", path.display()),
            Err(e) => println!("cannot write the plot {}: {e}", path.display()),
        }
    }
    drop(db);
    sandbox.stop().await;
}

/// Whole seconds first, so 4739.6 s reads "79 min 00 s", never "78 min 60 s".
pub fn minutes(secs: f64) -> String {
    let whole = secs.round() as u64;
    format!("{} min {:02} s", whole / 60, whole % 60)
}

/// Creates every object, [`APPLY_CONCURRENCY`] at a time, and says how long it took.
pub async fn apply(
    objects: impl Iterator<Item = Object>,
    agents: &Api<Agent>,
    plainvms: &Api<PlainVM>,
    vks: &Api<VirtualKey>,
) -> Duration {
    let applying = Instant::now();
    let failed = futures::stream::iter(objects)
        .map(|o| o.create(agents, plainvms, vks))
        .buffer_unordered(APPLY_CONCURRENCY)
        .filter(|ok| futures::future::ready(!*ok))
        .count()
        .await;
    if failed > 0 {
        println!("{failed} creates failed");
    }
    applying.elapsed()
}

pub enum Object {
    Agent(Agent),
    Vm(PlainVM),
    Key(VirtualKey),
}

impl Object {
    async fn create(self, agents: &Api<Agent>, plainvms: &Api<PlainVM>, vks: &Api<VirtualKey>) -> bool {
        let pp = PostParams::default();
        let result = match self {
            Object::Agent(a) => agents.create(&pp, &a).await.map(drop),
            Object::Vm(v) => plainvms.create(&pp, &v).await.map(drop),
            Object::Key(k) => vks.create(&pp, &k).await.map(drop),
        };
        if let Err(e) = &result {
            println!("create failed: {e}");
        }
        result.is_ok()
    }
}

/// Reconciles each object had until it was first Ready (its own Ready, not the last object's):
/// those that started before it, the one that made it Ready included. The mean is the goal's
/// figure; the most any object had shows the tail.
pub struct PerObject {
    /// Per kind: "Agent 2.95 (most 3)".
    pub kinds: Vec<String>,
    pub mean: f64,
    pub most: usize,
}

pub fn reconciles_per_object(reconciles: &[process::Reconcile], kinds: [(&str, &progress::Shared); 3]) -> PerObject {
    let mut all: Vec<usize> = Vec::new();
    let mut cells = Vec::new();
    for (kind, ready) in kinds {
        let ready = progress::lock(ready);
        let mut per_object: BTreeMap<&str, usize> = BTreeMap::new();
        for r in reconciles.iter().filter(|r| r.kind == kind) {
            let began = r.at.checked_sub(r.elapsed).unwrap_or(r.at);
            if ready.ready_at(&r.object).is_some_and(|at| began <= at) {
                *per_object.entry(r.object.as_str()).or_insert(0) += 1;
            }
        }
        let counts: Vec<usize> = per_object.into_values().collect();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
        cells.push(format!("{kind} {mean:.2} (most {})", counts.iter().max().unwrap_or(&0)));
        all.extend(counts);
    }
    PerObject {
        kinds: cells,
        mean: all.iter().sum::<usize>() as f64 / all.len().max(1) as f64,
        most: all.iter().copied().max().unwrap_or(0),
    }
}
