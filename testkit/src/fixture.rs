//! A whole operator against fresh stand-ins and a fresh database, with timings short enough
//! for tests (resync in seconds), and helpers that wait on conditions with deadlines. Shared
//! by the test binaries that run an operator, and by the fleet and scale benchmarks.

use std::sync::Arc;
use std::time::Duration;

use crabglamp_operator::api::{Agent, PlainVM};
use crabglamp_operator::cloud::cloudflare::CloudflareConfig;
use crabglamp_operator::cloud::hetzner::HetznerConfig;
use crabglamp_operator::controllers::{Context, ControllerConfig};
use crabglamp_operator::leader::LeaseConfig;
use crabglamp_operator::operator::{self, OperatorSettings};
use crabglamp_operator::store::seal::SealingKeys;
use crabglamp_sandbox::cloudflare::CloudflareSimConfig;
use crabglamp_sandbox::hetzner::HetznerSimConfig;
use crabglamp_sandbox::http::RunningSim;
use kube::Api;
use kube::api::PostParams;

use crate::cloud::{cloudflare_sim, hetzner_sim, listener};
use crate::db::TestDb;
use crate::kube_server::KubeServer;
pub use crate::kube_server::OPERATOR_USER;

pub const ZONE: &str = "agents.example.com";

pub struct Operator {
    pub kube: KubeServer,
    pub client: kube::Client,
    /// The operator's own client, as [`OPERATOR_USER`].
    operator_client: kube::Client,
    pub hetzner: Arc<RunningSim>,
    pub cloudflare: Arc<RunningSim>,
    pub db: TestDb,
    pub context: Arc<Context>,
    settings: OperatorSettings,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    cloudflared: tokio::task::JoinHandle<()>,
}

pub fn test_config() -> ControllerConfig {
    let mut c = ControllerConfig::new(ZONE);
    c.resync = Duration::from_secs(3);
    c.fast_poll = Duration::from_millis(150);
    c.shutdown_timeout = Duration::from_secs(2);
    c.removal_settle_timeout = Duration::from_secs(20);
    c.sweeper_grace = Duration::from_secs(1);
    c.virtual_key_namespaces = Some(crate::kube_server::VIRTUAL_KEY_NAMESPACES.map(str::to_owned).to_vec());
    c
}

impl Operator {
    pub async fn start() -> Operator {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: ControllerConfig) -> Operator {
        Self::stand_up(config, true, |_| {}).await
    }

    /// Also runs the VirtualKey controller when `redis_url` is set (use a key namespace of
    /// the test's own in `config.redis_namespace`).
    pub async fn start_with_redis(config: ControllerConfig, redis_url: Option<String>) -> Operator {
        Self::start_tuned(config, |s| s.redis_url = redis_url).await
    }

    /// As [`Operator::start_with`], with the settings changed by `tune` before the operator
    /// connects (a Redis for the VirtualKey controller, raised request budgets).
    pub async fn start_tuned(config: ControllerConfig, tune: impl FnOnce(&mut OperatorSettings)) -> Operator {
        Self::stand_up(config, true, tune).await
    }

    /// The stand-ins and the database with no controllers running: each test starts its own
    /// [`Instance`]s against them.
    pub async fn start_idle() -> Operator {
        Self::stand_up(test_config(), false, |_| {}).await
    }

    async fn stand_up(
        config: ControllerConfig,
        controllers: bool,
        tune: impl FnOnce(&mut OperatorSettings),
    ) -> Operator {
        crate::logs::install();
        let kube = KubeServer::start().await;
        let client = kube.client();
        let operator_client = kube.operator_client(OPERATOR_USER);
        // Every action 100 ms, the guest boots and obeys ACPI at once: tests take seconds.
        let hz_config = HetznerSimConfig {
            token: "hz-test".into(),
            durations: crabglamp_sandbox::hetzner::ActionDurations::uniform(Duration::from_millis(100)),
            ..HetznerSimConfig::default()
        };
        let hetzner = Arc::new(hetzner_sim(hz_config).await);
        let cf_config =
            CloudflareSimConfig { token: "cf-test".into(), zone_name: ZONE.into(), ..CloudflareSimConfig::default() };
        let cloudflare = Arc::new(cloudflare_sim(cf_config.clone()).await);
        // The operator connects as the README's least-privilege role: every scenario proves the grants.
        let db = TestDb::for_operator().await;
        let mut settings = OperatorSettings {
            database_url: db.operator_url.clone(),
            redis_url: None,
            hetzner: HetznerConfig::new(hetzner.base_url.clone(), "hz-test"),
            cloudflare: CloudflareConfig::new(
                cloudflare.base_url.clone(),
                "cf-test",
                cf_config.account_id.clone(),
                cf_config.zone_id.clone(),
            ),
            controllers: config,
            hetzner_requests_per_hour: 3600,
            // As a raised plan: the default five-minute shaping would make a 100-Agent test
            // wait half a minute on our own limiter (what production would do, but slowly).
            cloudflare_requests_per_5min: 12_000,
        };
        tune(&mut settings);
        let (context, stop, task) = if controllers {
            let (context, stop, task) = launch(&operator_client, settings.clone()).await;
            (context, stop, Some(task))
        } else {
            let connected =
                operator::connect(operator_client.clone(), settings.clone(), sealing_keys()).await.expect("connects");
            (connected.context, tokio::sync::watch::channel(false).0, None)
        };
        // The sandbox plays cloudflared: a booted server whose user data carries a valid token
        // connects its tunnel.
        let cloudflared = crabglamp_sandbox::stack::cloudflared::start(
            hetzner.handle(),
            cloudflare.handle(),
            1.0,
            Duration::from_millis(100),
        );
        Operator { kube, client, operator_client, hetzner, cloudflare, db, context, settings, stop, task, cloudflared }
    }

    /// A second installation beside `other`: its own API server (always the stand-in: the real
    /// control plane is one per test binary, and `other` holds it in real mode), its own
    /// database and controllers, on `other`'s Hetzner project and Cloudflare account and zone,
    /// as a staging cluster beside production shares them.
    pub async fn start_beside(other: &Operator, config: ControllerConfig) -> Operator {
        let kube = KubeServer::sandbox().await;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.client());
        let release =
            serde_json::from_value(serde_json::json!({"metadata": {"name": crate::kube_server::RELEASE_NAMESPACE}}))
                .expect("namespace");
        namespaces.create(&PostParams::default(), &release).await.expect("create the release namespace");
        let client = kube.client();
        let operator_client = kube.operator_client(OPERATOR_USER);
        let db = TestDb::for_operator().await;
        let mut settings = other.settings.clone();
        settings.database_url = db.operator_url.clone();
        settings.controllers = config;
        let (context, stop, task) = launch(&operator_client, settings.clone()).await;
        // `other`'s stand-in cloudflared already plays for every server of the shared project.
        let cloudflared = tokio::spawn(async {});
        Operator {
            kube,
            client,
            operator_client,
            hetzner: Arc::clone(&other.hetzner),
            cloudflare: Arc::clone(&other.cloudflare),
            db,
            context,
            settings,
            stop,
            task: Some(task),
            cloudflared,
        }
    }

    /// Stops the controllers and starts a fresh operator process's worth of them (no memory
    /// carried over) against the same cluster, clouds and database.
    pub async fn restart_with(mut self, config: ControllerConfig) -> Self {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await.expect("controllers stop in time").expect("join");
        }
        self.relaunch(config).await
    }

    /// Stops the controllers, runs `meanwhile` (what happens while the operator is down), and
    /// starts fresh ones with the same settings.
    pub async fn restart_with_gap<F: std::future::Future<Output = ()>>(
        mut self,
        meanwhile: impl FnOnce() -> F,
    ) -> Self {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await.expect("controllers stop in time").expect("join");
        }
        meanwhile().await;
        let config = self.settings.controllers.clone();
        self.relaunch(config).await
    }

    /// Kills the controllers mid-step (the task and everything it spawned is aborted, nothing
    /// finishes) and starts fresh ones, as a crashed and rescheduled pod would.
    pub async fn crash_and_restart(self) -> Self {
        self.crash().await.restart().await
    }

    /// Kills the controllers mid-step and leaves them down (see [`Self::restart`]), so a test
    /// can look at the world exactly as the crash left it.
    pub async fn crash(mut self) -> Self {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self
    }

    /// Starts fresh controllers with no memory after [`Self::crash`].
    pub async fn restart(self) -> Self {
        let config = self.settings.controllers.clone();
        self.relaunch(config).await
    }

    async fn relaunch(mut self, config: ControllerConfig) -> Self {
        self.settings.controllers = config;
        let (context, stop, task) = launch(&self.operator_client, self.settings.clone()).await;
        self.context = context;
        self.stop = stop;
        self.task = Some(task);
        self
    }

    /// What every instance of this fixture is configured with.
    pub fn settings(&self) -> &OperatorSettings {
        &self.settings
    }

    pub fn agents(&self, ns: &str) -> Api<Agent> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn plainvms(&self, ns: &str) -> Api<PlainVM> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn create_namespace(&self, ns: &str) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
        let _ = api.create(&PostParams::default(), &namespace).await;
    }

    /// Stops the controllers (as SIGTERM would) and waits for them.
    pub async fn stop(mut self) -> Self {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await.expect("controllers stop in time").expect("join");
        }
        self.cloudflared.abort();
        self
    }
}

/// The sealing key every test instance uses (standard base64 of 32 zero bytes).
pub const SEALING_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn sealing_keys() -> SealingKeys {
    SealingKeys::new("k1", SEALING_KEY, &[]).expect("sealing key")
}

/// One more operator process's worth of everything (its own Kubernetes client, context,
/// metrics registry and endpoints) against the fixture's stand-ins and database, run as
/// `crabglamp-operator run` runs it ([`operator::run_instance`]).
pub struct Instance {
    pub context: Arc<Context>,
    /// `http://127.0.0.1:PORT` of its /metrics, /healthz, /readyz.
    pub endpoint: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<operator::Ending>>,
}

impl Operator {
    /// Starts an instance with these controller settings, elected on `election` if given.
    pub async fn instance(&self, config: ControllerConfig, election: Option<LeaseConfig>) -> Instance {
        self.instance_with_client(config, election, self.kube.operator_client(OPERATOR_USER)).await
    }

    /// As [`Self::instance`], with this Kubernetes client (e.g. one through a relay the test
    /// stalls).
    pub async fn instance_with_client(
        &self,
        config: ControllerConfig,
        election: Option<LeaseConfig>,
        client: kube::Client,
    ) -> Instance {
        let mut settings = self.settings.clone();
        settings.controllers = config;
        let connected = operator::connect(client, settings, sealing_keys()).await.expect("operator connects");
        let context = Arc::clone(&connected.context);
        let listener = listener().await;
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let options = operator::InstanceOptions { election, endpoints: Some(listener), drain: Duration::from_secs(10) };
        let task = tokio::spawn(operator::run_instance(connected, options, stop_rx));
        Instance { context, endpoint, stop, task: Some(task) }
    }
}

impl Instance {
    /// Stops it as SIGTERM stops `run` (drain, then release the Lease) and says how it ended.
    pub async fn stop(mut self) -> operator::Ending {
        let _ = self.stop.send(true);
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("stops in time").expect("join")
    }

    /// Kills it mid-whatever, as SIGKILL would: nothing finishes, the Lease is not released.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Whether it has ended by itself (e.g. after losing the Lease).
    pub fn ended(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// GETs one of its endpoints: the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.endpoint)).await.expect("endpoint answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Reconciles it finished so far, of any outcome.
    pub fn reconciles(&self, kind: &str) -> u64 {
        self.context.metrics().reconciles(kind, "ok") + self.context.metrics().reconciles(kind, "error")
    }

    pub fn leading(&self) -> bool {
        self.context.metrics().leading()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn launch(
    client: &kube::Client,
    settings: OperatorSettings,
) -> (Arc<Context>, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let connected = operator::connect(client.clone(), settings, sealing_keys()).await.expect("operator connects");
    let context = connected.context;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(operator::run(Arc::clone(&context), stop_rx, Duration::from_secs(10)));
    (context, stop, task)
}

/// Everything logged so far by this test binary.
pub fn captured_logs() -> String {
    crate::logs::captured()
}

/// An Agent manifest.
pub fn agent(name: &str, owner: &str, running: bool) -> Agent {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "crabglamp.com/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"owner": owner, "region": "eu", "serverType": "cpx22", "image": "ubuntu-24.04", "running": running,
                 "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsTestKey ops@example.com"],
                 "tunnel": {"service": "http://localhost:8080"}}
    }))
    .expect("agent manifest")
}

/// Waits until `check` holds for the object, or panics after `deadline` with the last one seen.
pub async fn wait_for<K>(api: &Api<K>, name: &str, deadline: Duration, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let start = tokio::time::Instant::now();
    loop {
        let last = api.get_opt(name).await.expect("get object");
        if let Some(a) = last.as_ref().filter(|a| check(a)) {
            return a.clone();
        }
        if start.elapsed() > deadline {
            panic!("{what}: not reached within {deadline:?}; last: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the object is gone (its finalizer released), or panics after `deadline`.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, deadline: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let start = tokio::time::Instant::now();
    while api.get_opt(name).await.expect("get object").is_some() {
        assert!(start.elapsed() < deadline, "{name}: the finalizer was not released within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until an Event with `reason` exists in `ns`, or panics after `deadline` with the
/// reasons seen. The Event is published after the repair it reports, so a test that saw the
/// repair in a simulator must still wait for it.
pub async fn wait_for_event(op: &Operator, ns: &str, reason: &str, deadline: Duration) {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(op.client.clone(), ns);
    let start = tokio::time::Instant::now();
    loop {
        let reasons: Vec<String> = api
            .list(&kube::api::ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        if reasons.iter().any(|r| r == reason) {
            return;
        }
        assert!(start.elapsed() < deadline, "no {reason} Event in {ns} within {deadline:?}; seen: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds, polling a synchronous probe.
pub async fn wait_until(deadline: Duration, what: &str, check: impl Fn() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < deadline, "{what}: not reached within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ready(a: &Agent) -> bool {
    condition(a, "Ready") == Some("True".to_owned())
}

pub fn condition(a: &Agent, type_: &str) -> Option<String> {
    a.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

/// The message of a condition of the Agent (empty when it has none).
pub fn condition_message(a: &Agent, type_: &str) -> String {
    a.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// A PlainVM manifest in `eu` with the given inbound rules (JSON, as in the CRD).
pub fn plainvm(name: &str, owner: &str, running: bool, inbound: serde_json::Value) -> PlainVM {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "crabglamp.com/v1alpha1",
        "kind": "PlainVM",
        "metadata": {"name": name},
        "spec": {"owner": owner, "region": "eu", "serverType": "cx23", "image": "debian-12", "running": running,
                 "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsTestKey ops@example.com"],
                 "firewall": {"inbound": inbound}}
    }))
    .expect("plainvm manifest")
}

pub fn vm_ready(v: &PlainVM) -> bool {
    vm_condition(v, "Ready").map(|c| c.0) == Some("True".to_owned())
}

/// A PlainVM condition's status and reason.
pub fn vm_condition(v: &PlainVM, type_: &str) -> Option<(String, String)> {
    v.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

/// Requests a simulator served, by method, route pattern and status: what a budget figure is
/// made of.
fn request_breakdown(sim: &RunningSim) -> std::collections::BTreeMap<String, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for r in sim.requests() {
        *counts.entry(format!("{} {} {}", r.method, r.route.unwrap_or_default(), r.status)).or_insert(0u32) += 1;
    }
    counts
}

/// Prints [`request_breakdown`] one line per route.
pub fn print_breakdown(provider: &str, sim: &RunningSim) {
    for (route, n) in request_breakdown(sim) {
        println!("  {provider}: {n:5} {route}");
    }
}

/// The simulator's server `id` as the Hetzner API renders it (no request spent).
pub fn server_in_hetzner(op: &Operator, id: i64) -> Option<serde_json::Value> {
    crabglamp_sandbox::hetzner::servers(&op.hetzner).into_iter().find(|s| s["id"] == id)
}

/// The simulator's firewall `id` as the Hetzner API renders it (no request spent).
pub fn firewall_in_hetzner(op: &Operator, id: i64) -> Option<serde_json::Value> {
    crabglamp_sandbox::hetzner::firewalls(&op.hetzner).into_iter().find(|f| f["id"] == id)
}
