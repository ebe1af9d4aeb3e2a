//! The benchmark across shards: a fleet no single Cloudflare account can hold (1,000 tunnels
//! each), split the way the chart's `shards` value splits it. Each shard has its own simulated
//! Hetzner project and Cloudflare account (one simulator each, in this process) and its own
//! operator process (`--shard`), and its objects carry the shard label; the shards share the
//! API server, PostgreSQL and Redis, as a chart install's shards do. Prints one row per shard
//! and the totals: time to all Ready against the floor (each shard's floor is its own, the
//! accounts run in parallel, so the fleet's is the largest), requests per object, idle traffic
//! and writes, reconciles per object and each operator's peak RSS, then the goals.
//!
//! `CRABGLAMP_BENCH_SHARDS=10 cargo bench --bench scale`: 10 shards of N = 1,000 (Agents; a
//! quarter as many PlainVMs and as many VirtualKeys). `CRABGLAMP_BENCH_SIZES` sets N per
//! shard; `CRABGLAMP_BENCH_SCALE` defaults to a slower clock here (see [`DEFAULT_SCALE`]);
//! `CRABGLAMP_BENCH_IDLE_RESYNCS` defaults to [`DEFAULT_IDLE_RESYNCS`].

use std::time::{Duration, Instant};

use crabglamp_operator::api::{Agent, PlainVM, VirtualKey};
use crabglamp_operator::controllers::SHARD_LABEL;
use crabglamp_sandbox::cloudflare::{self as cfsim, CloudflareSimConfig};
use crabglamp_sandbox::hetzner::{self as hzsim, HetznerSimConfig};
use crabglamp_sandbox::http::RunningSim;
use crabglamp_sandbox::stack::{Sandbox, SandboxOptions};
use crabglamp_testkit::{db, fixture};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Resource};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::floor::Floor;
use crate::process::OperatorProcess;
use crate::requests::AccountRequests;
use crate::{CLOUDFLARED_DELAY, CloudAccount, NAMESPACE, Object, env_or, goal, minutes, progress};

/// Ten operators, twenty simulators and one API server holding 22,500 objects share the
/// machine, where in production each operator has a pod of its own: on 2 cores the default clock
/// of the single-account run (20x) starves them, and the figure would measure the machine, not
/// the operator. Measured: at 4x the ten start-ups (load average 10) wasted most of the first
/// five-minute Cloudflare window, 1.59x the floor; at 2x a window is 150 s of wall clock.
pub const DEFAULT_SCALE: f64 = 2.0;
/// Idle resyncs measured per shard: two whole server-list cycles. The single-account run
/// measures twelve (the firewall audit's period); at this slower clock that would be an hour.
pub const DEFAULT_IDLE_RESYNCS: u32 = 2;

/// One shard's simulated Hetzner project and Cloudflare account.
struct ShardClouds {
    name: String,
    hetzner: HetznerSimConfig,
    hcloud: RunningSim,
    cf: CloudflareSimConfig,
    cloudflare: RunningSim,
    cloudflared: JoinHandle<()>,
}

impl ShardClouds {
    fn account(&self) -> CloudAccount<'_> {
        CloudAccount { hcloud: &self.hcloud, hetzner: &self.hetzner, cloudflare: &self.cloudflare, cf: &self.cf }
    }

    /// The prefix of this shard's object names (the bench's objects share one namespace).
    fn prefix(&self) -> String {
        format!("{}-", self.name)
    }
}

async fn loopback() -> std::io::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", 0)).await
}

/// Starts shard `index`'s clouds: a project with room for its servers and firewalls (a raised
/// quota, as in the single-account run) and an account of its own, with its own zone and
/// Cloudflare's limit of 1,000 tunnels.
async fn start_clouds(index: usize, scale: f64, agents: usize, vms: usize) -> std::io::Result<ShardClouds> {
    let name = format!("s{index:02}");
    let hetzner = HetznerSimConfig {
        time_scale: scale,
        server_limit: agents + vms + 10,
        firewall_limit: vms + 10,
        seed: index as u64,
        token: format!("sim-hetzner-token-{name}"),
        ..HetznerSimConfig::default()
    };
    let cf = CloudflareSimConfig {
        time_scale: scale,
        token: format!("sim-cloudflare-token-{name}"),
        account_id: format!("{:032x}", 0xacc0_0000_u64 + index as u64),
        zone_id: format!("{:032x}", 0x20e0_0000_u64 + index as u64),
        zone_name: format!("{name}.example.com"),
        ..CloudflareSimConfig::default()
    };
    let hcloud = hzsim::spawn(hetzner.clone(), loopback().await?).await?;
    let cloudflare = cfsim::spawn(cf.clone(), loopback().await?).await?;
    let cloudflared =
        crabglamp_sandbox::stack::cloudflared::start(hcloud.handle(), cloudflare.handle(), scale, CLOUDFLARED_DELAY);
    Ok(ShardClouds { name, hetzner, hcloud, cf, cloudflare, cloudflared })
}

/// An object of a shard: its name starts with the shard's and it carries the shard label.
fn in_shard<K: Resource>(mut object: K, shard: &str) -> K {
    object.meta_mut().labels.get_or_insert_with(Default::default).insert(SHARD_LABEL.to_owned(), shard.to_owned());
    object
}

/// What one shard measured.
struct ShardFigures {
    ready_real: Option<f64>,
    requests: AccountRequests,
    reconciles_mean: f64,
    reconciles_most: usize,
    idle_hetzner_per_resync: f64,
    idle_cycles: usize,
    idle_cloudflare_per_hour: f64,
    rss_at_ready: Option<u64>,
    rss_peak: Option<u64>,
    warnings: usize,
    first_warnings: Vec<String>,
}

pub async fn run(shards: usize, n: usize, scale: f64) {
    let (vms, keys) = (n / 4, n);
    println!();
    println!(
        "## {shards} shards of N = {n}: {} Agents, {} PlainVMs, {} VirtualKeys in all; each shard its own Hetzner project, Cloudflare account and operator process",
        shards * n,
        shards * vms,
        shards * keys
    );
    // The sandbox serves the API server, PostgreSQL and Redis the shards share; its own
    // simulators stay idle (every shard gets its own below).
    let sandbox = match Sandbox::start(SandboxOptions::default()).await {
        Ok(s) => s,
        Err(e) => {
            println!("the sandbox did not start: {e}");
            return;
        }
    };
    let mut clouds = Vec::with_capacity(shards);
    for index in 0..shards {
        match start_clouds(index, scale, n, vms).await {
            Ok(c) => clouds.push(c),
            Err(e) => {
                println!("shard {index}'s simulators did not start: {e}");
                return;
            }
        }
    }
    let db = db::TestDb::fresh().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sandbox.kube.kubeconfig_yaml()).expect("write kubeconfig");
    let client = sandbox.kube.client().expect("kube client");
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).expect("namespace");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.expect("namespace");

    let durations = clouds[0].hetzner.durations.clone();
    let floor = Floor::new(n, vms, &durations, CLOUDFLARED_DELAY.as_secs_f64());
    let agents: Api<Agent> = Api::namespaced(client.clone(), NAMESPACE);
    let plainvms: Api<PlainVM> = Api::namespaced(client.clone(), NAMESPACE);
    let vks: Api<VirtualKey> = Api::namespaced(client.clone(), NAMESPACE);
    let (ready, watches) = progress::watch_all(&agents, &plainvms, &vks);
    let [ready_agents, ready_vms, ready_keys] = &ready;
    let creates = clouds.iter().flat_map(|c| {
        let shard = c.name.clone();
        let (s1, s2, s3) = (shard.clone(), shard.clone(), shard);
        (0..n)
            .map(move |i| Object::Agent(in_shard(fixture::agent(&format!("{s1}-ag-{i:05}"), "acct_a", true), &s1)))
            .chain((0..vms).map(move |i| {
                let vm = fixture::plainvm(&format!("{s2}-vm-{i:05}"), "acct_a", true, serde_json::json!([]));
                Object::Vm(in_shard(vm, &s2))
            }))
            .chain((0..keys).map(move |i| Object::Key(in_shard(crate::virtual_key(&format!("{s3}-vk-{i:05}")), &s3))))
    });
    let applied = crate::apply(creates, &agents, &plainvms, &vks).await;
    println!(
        "applied {} manifests in {:.1} s (wall clock, before the operators started; not counted)",
        shards * (n + vms + keys),
        applied.as_secs_f64()
    );

    // One installation: the shards share the database, Redis and the sealing key.
    let sealing_key = crate::sealing_key();
    let installation = crate::Installation {
        redis_url: &sandbox.redis.url,
        kubeconfig: &kubeconfig,
        database_url: &db.url,
        sealing_key: &sealing_key,
    };
    let mut operators = Vec::with_capacity(shards);
    for c in &clouds {
        let env = crate::operator_env(&installation, &c.account(), scale, Some(&c.name));
        match OperatorProcess::spawn(&env) {
            Ok(p) => operators.push(p),
            Err(e) => {
                println!("cannot start the operator of shard {}: {e}", c.name);
                return;
            }
        }
    }
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(floor.total() / scale * 5.0 + 120.0);
    let want = [shards * n, shards * vms, shards * keys];
    let all_ready = progress::wait_ready(&ready, want, started, deadline, || {
        let exited = operators.iter_mut().map(OperatorProcess::running).filter(|running| !running).count();
        (exited > 0).then(|| format!("{exited} operators exited"))
    })
    .await;
    let real = |wall: Duration| wall.as_secs_f64() * scale;
    let mut figures: Vec<ShardFigures> = clouds
        .iter()
        .zip(&operators)
        .map(|(c, operator)| {
            let prefix = c.prefix();
            let sets = [ready_agents, ready_vms, ready_keys].map(|s| progress::lock(s).of(&prefix));
            let complete = sets[0].0 >= n && sets[1].0 >= vms && sets[2].0 >= keys;
            let last = sets.iter().filter_map(|(_, at)| *at).max();
            let per_object = crate::reconciles_per_object(
                &operator.reconciles(),
                [("Agent", ready_agents), ("PlainVM", ready_vms), ("VirtualKey", ready_keys)],
            );
            ShardFigures {
                ready_real: last.filter(|_| complete).map(|at| real(at.duration_since(started))),
                requests: AccountRequests::count(&c.hcloud, &c.cloudflare, n, vms),
                reconciles_mean: per_object.mean,
                reconciles_most: per_object.most,
                idle_hetzner_per_resync: f64::NAN,
                idle_cycles: 0,
                idle_cloudflare_per_hour: f64::NAN,
                rss_at_ready: operator.peak_rss(),
                rss_peak: None,
                warnings: 0,
                first_warnings: Vec::new(),
            }
        })
        .collect();

    // Idle: one resync to settle, then the measured ones, every shard at once.
    let idle_resyncs: u32 = env_or("CRABGLAMP_BENCH_IDLE_RESYNCS", DEFAULT_IDLE_RESYNCS);
    let resync_wall =
        Duration::from_secs(env_or("CRABGLAMP_BENCH_RESYNC_WALL", (300.0 / scale).round().max(1.0) as u64));
    tokio::time::sleep(resync_wall).await;
    let before: Vec<(u64, u64)> =
        clouds.iter().map(|c| (c.hcloud.control().total_requests(), c.cloudflare.control().total_requests())).collect();
    let writes_before = sandbox.kube.resource_version();
    let idle_started = Instant::now();
    tokio::time::sleep(resync_wall * (idle_resyncs + 1)).await;
    let idle_real = real(idle_started.elapsed());
    let idle_writes = sandbox.kube.resource_version() - writes_before;
    for ((f, c), ((hz_before, cf_before), operator)) in
        figures.iter_mut().zip(&clouds).zip(before.iter().zip(&operators))
    {
        let records = c.hcloud.control().requests_since(*hz_before, usize::MAX);
        if let Some(cycles) = crate::idle::hetzner_cycles(&records) {
            f.idle_hetzner_per_resync = cycles.requests as f64 / cycles.cycles as f64;
            f.idle_cycles = cycles.cycles;
        }
        f.idle_cloudflare_per_hour =
            (c.cloudflare.control().total_requests() - cf_before) as f64 / idle_real.max(1e-9) * 3600.0;
        f.rss_peak = operator.peak_rss();
        (f.warnings, f.first_warnings) = operator.warnings();
    }
    for operator in operators {
        operator.stop();
    }
    for task in watches {
        task.abort();
    }
    for c in &clouds {
        c.cloudflared.abort();
    }
    print_tables(&Report { shards, n, vms, keys, floor: &floor, all_ready, idle_writes, idle_resyncs }, &figures);
    drop(db);
    // Dropping a simulator stops it.
    drop(clouds);
    sandbox.stop().await;
}

/// What the whole run measured, besides each shard's figures.
struct Report<'a> {
    shards: usize,
    n: usize,
    vms: usize,
    keys: usize,
    floor: &'a Floor,
    all_ready: bool,
    idle_writes: u64,
    idle_resyncs: u32,
}

fn print_tables(report: &Report<'_>, figures: &[ShardFigures]) {
    let Report { shards, n, vms, keys, floor, all_ready, idle_writes, idle_resyncs } = *report;
    let mib = |b: Option<u64>| b.map_or("unknown".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    let servers = n + vms;
    let idle_goal = servers as f64 / 50.0;
    println!();
    println!(
        "Floor of each shard ({n} Agents, {vms} PlainVMs; the shards' accounts run in parallel, so it is the fleet's):"
    );
    for line in floor.explain() {
        println!("  {line}");
    }
    println!();
    println!(
        "| shard | all Ready at | ratio to the floor | Hetzner per Agent / PlainVM | Cloudflare per Agent | idle Hetzner per resync | idle Cloudflare per hour | reconciles per object (most) | peak RSS at Ready / after idle |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (index, f) in figures.iter().enumerate() {
        println!(
            "| s{index:02} | {} | {} | {:.3} / {:.3} | {:.3} | {:.2} ({} cycles) | {:.0} | {:.2} ({}) | {} / {} |",
            f.ready_real.map_or("not Ready".to_owned(), minutes),
            f.ready_real.map_or("-".to_owned(), |t| format!("{:.2}", t / floor.total())),
            f.requests.hetzner_per_agent,
            f.requests.hetzner_per_plainvm,
            f.requests.cloudflare_per_agent,
            f.idle_hetzner_per_resync,
            f.idle_cycles,
            f.idle_cloudflare_per_hour,
            f.reconciles_mean,
            f.reconciles_most,
            mib(f.rss_at_ready),
            mib(f.rss_peak),
        );
    }
    let count = figures.len().max(1) as f64;
    let mean = |value: fn(&ShardFigures) -> f64| figures.iter().map(value).sum::<f64>() / count;
    let worst = |value: fn(&ShardFigures) -> f64| figures.iter().map(value).fold(f64::NAN, f64::max);
    let t_ready = figures.iter().map(|f| f.ready_real.unwrap_or(f64::INFINITY)).fold(0.0, f64::max);
    let ratio = t_ready / floor.total();
    let hz_agent = mean(|f| f.requests.hetzner_per_agent);
    let hz_vm = mean(|f| f.requests.hetzner_per_plainvm);
    let cf_agent = mean(|f| f.requests.cloudflare_per_agent);
    let idle_worst = worst(|f| f.idle_hetzner_per_resync);
    let rss_worst = figures.iter().filter_map(|f| f.rss_peak).max();
    let rss_known = figures.iter().all(|f| f.rss_peak.is_some());
    let objects = shards * (n + vms + keys);
    println!();
    println!("| total ({shards} shards) | measured | floor / goal |");
    println!("| --- | --- | --- |");
    println!(
        "| time to all Ready (the last shard, real-world) | {} | floor {} |",
        minutes(t_ready),
        minutes(floor.total())
    );
    println!("| ratio to the floor | {ratio:.2} | goal <= 1.30 |");
    println!(
        "| Hetzner requests until Ready, all projects | {} | floor {:.0} |",
        figures.iter().map(|f| f.requests.hetzner_total).sum::<u64>(),
        floor.hetzner_requests * shards as f64
    );
    println!(
        "| Cloudflare requests until Ready, all accounts | {} | floor {:.0} |",
        figures.iter().map(|f| f.requests.cloudflare_total).sum::<u64>(),
        floor.cloudflare_requests * shards as f64
    );
    println!(
        "| Hetzner requests per Agent / per PlainVM (mean of the shards) | {hz_agent:.3} / {hz_vm:.3} | goal <= 1.10 / 2.20 |"
    );
    println!("| Cloudflare requests per Agent (mean of the shards) | {cf_agent:.3} | goal <= 3.20 |");
    println!(
        "| idle Hetzner requests per resync, the busiest shard | {idle_worst:.2} | goal <= {idle_goal:.1} (1 per 50 servers) |"
    );
    println!(
        "| API-server writes at idle ({} resync periods), per object | {idle_writes} ({:.4}) | goal 0 |",
        idle_resyncs + 1,
        idle_writes as f64 / objects as f64
    );
    println!(
        "| reconciles per object until its Ready, mean of the shards (most) | {:.2} ({}) | goal <= 3 |",
        mean(|f| f.reconciles_mean),
        figures.iter().map(|f| f.reconciles_most).max().unwrap_or(0)
    );
    println!("| the largest operator's peak RSS | {} | goal < 40 MiB each |", mib(rss_worst));
    println!("| operator warnings logged, all shards | {} | |", figures.iter().map(|f| f.warnings).sum::<usize>());
    for (index, f) in figures.iter().enumerate() {
        for w in f.first_warnings.iter().take(2) {
            println!("  warning (s{index:02}): {w}");
        }
    }
    let mut goals = crate::time_and_request_goals(all_ready.then_some(ratio), [hz_agent, hz_vm, cf_agent]);
    goals.extend([
        goal(
            "idle Hetzner requests per resync, every shard",
            format!("<= {idle_goal:.1}"),
            format!("{idle_worst:.2}"),
            idle_worst <= idle_goal,
        ),
        goal("API-server writes at idle", "0".into(), idle_writes.to_string(), idle_writes == 0),
        goal(
            "every operator's peak RSS",
            "< 40 MiB".into(),
            mib(rss_worst),
            rss_known && rss_worst.is_some_and(|b| b < 40 * 1048576),
        ),
    ]);
    crate::print_goals(&format!("{shards} shards of N = {n}"), &goals);
}
