//! Plays one seed's plan against a whole operator (Agent, PlainVM and VirtualKey controllers,
//! the cloud stand-ins, a fresh database, the real Redis under a namespace of its own), keeping
//! a ledger of what was asked of every object, then clears the faults and waits for
//! quiescence: every invariant of [`super::invariants`] holding, within a deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use crabglamp_operator::api::virtual_key::VirtualKey;
use crabglamp_operator::api::{Agent, PlainVM};
use crabglamp_sandbox::http::{FaultPlan, FaultRule, InjectedError};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::invariants;
use super::plan::{self, Faults, Kind, Step};
use crate::fixture::{self, Operator};

pub const NS: &str = "chaos";
/// From the last fault to every invariant holding.
const QUIESCENCE: Duration = Duration::from_secs(90);

/// What was asked of one object over its life.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub kind: Kind,
    pub name: String,
    pub uid: String,
    /// The owner at creation, then every owner change made (repeats included).
    pub owners: Vec<String>,
    pub running: bool,
    pub ports: Vec<&'static str>,
    pub rotations: usize,
    pub rotation_token: Option<String>,
    /// `Some(orphan)` once deleted.
    pub deleted: Option<bool>,
    /// Spend the proxy recorded (micro-USD).
    pub spent: i64,
    /// Spend that must survive: what PostgreSQL held before the last flush plus what was
    /// recorded since (spend recorded and flushed before the operator copied it is lost with
    /// Redis, which held it alone).
    pub must_keep: i64,
    /// Whether Redis was flushed while this key lived.
    pub flushed: bool,
    /// Deleted before the operator put its finalizer on it: the API server removed it at once,
    /// the operator never acted on it, so there is nothing to destroy and no event to write.
    pub gone_before_finalizer: bool,
}

pub struct Chaos {
    /// Always `Some` but while a crash replaces it (the fixture restarts by value).
    op: Option<Operator>,
    pub objects: Vec<Ledger>,
    /// Slot -> index in `objects` of its live object.
    live: BTreeMap<usize, usize>,
    pub redis: redis::aio::MultiplexedConnection,
    pub redis_ns: String,
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Runs `seed` to quiescence; `Err` lists the invariants still broken at the deadline.
pub async fn run_seed(seed: u64) -> Result<(), String> {
    let steps = plan::plan(seed);
    let redis_ns = format!("cgkchaos:{}:", uuid::Uuid::new_v4().simple());
    let mut config = fixture::test_config();
    // A failing object must come back within the run, not after five minutes.
    config.max_backoff = Duration::from_secs(2);
    config.redis_namespace = redis_ns.clone();
    let op = Operator::start_tuned(config, |s| {
        s.redis_url = Some(redis_url());
        // Faults make retries; the budgets are a raised quota's, so no run waits on them.
        s.hetzner_requests_per_hour = 360_000;
    })
    .await;
    op.hetzner
        .control()
        .set_rate_budget(crabglamp_sandbox::http::RateBudget { capacity: 100_000, refill_per_sec: 100.0 });
    op.create_namespace(NS).await;
    let redis = redis::Client::open(redis_url())
        .map_err(|e| format!("redis url: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis connects: {e}"))?;
    let mut chaos = Chaos { op: Some(op), objects: Vec::new(), live: BTreeMap::new(), redis, redis_ns };
    let played = std::time::Instant::now();
    for step in steps {
        chaos.play(step).await;
    }
    let settling = std::time::Instant::now();
    chaos.op().hetzner.control().set_faults(FaultPlan::default());
    chaos.op().cloudflare.control().set_faults(FaultPlan::default());
    let result = invariants::settle(&chaos, QUIESCENCE).await;
    println!(
        "chaos seed {seed}: plan played in {:.1}s, settled in {:.1}s",
        settling.duration_since(played).as_secs_f64(),
        settling.elapsed().as_secs_f64()
    );
    let op = chaos.op.take().unwrap_or_else(|| panic!("the operator runs")).stop().await;
    if let Some(rt) = op.context.virtual_keys.as_ref() {
        let _ = rt.cache.clear_namespace().await;
    }
    result
}

impl Chaos {
    pub fn op(&self) -> &Operator {
        self.op.as_ref().unwrap_or_else(|| panic!("the operator runs"))
    }

    fn agents(&self) -> Api<Agent> {
        self.op().agents(NS)
    }

    fn plainvms(&self) -> Api<PlainVM> {
        self.op().plainvms(NS)
    }

    fn keys(&self) -> Api<VirtualKey> {
        Api::namespaced(self.op().client.clone(), NS)
    }

    async fn patch_spec(&self, kind: Kind, name: &str, spec: serde_json::Value) {
        let patch = Patch::Merge(json!({ "spec": spec }));
        let pp = PatchParams::default();
        let result = match kind {
            Kind::Agent => self.agents().patch(name, &pp, &patch).await.map(|_| ()),
            Kind::PlainVm => self.plainvms().patch(name, &pp, &patch).await.map(|_| ()),
            Kind::Key => self.keys().patch(name, &pp, &patch).await.map(|_| ()),
        };
        result.unwrap_or_else(|e| panic!("patch {name}: {e}"));
    }

    async fn play(&mut self, step: Step) {
        tracing::info!(target: "chaos", ?step, "step");
        match step {
            Step::Create { slot, name, owner, running } => self.create(slot, name, owner, running).await,
            Step::Delete { slot, orphan } => {
                let Some(i) = self.live.remove(&slot) else { return };
                let (kind, name) = (self.objects[i].kind, self.objects[i].name.clone());
                if orphan {
                    self.patch_spec(kind, &name, json!({"deletionPolicy": "Orphan"})).await;
                }
                let dp = DeleteParams::default();
                // `Right`: the API server removed it at once (no finalizer on it yet).
                let result = match kind {
                    Kind::Agent => self.agents().delete(&name, &dp).await.map(|r| r.is_right()),
                    Kind::PlainVm => self.plainvms().delete(&name, &dp).await.map(|r| r.is_right()),
                    Kind::Key => self.keys().delete(&name, &dp).await.map(|r| r.is_right()),
                };
                let gone_at_once = result.unwrap_or_else(|e| panic!("delete {name}: {e}"));
                self.objects[i].deleted = Some(orphan && kind != Kind::Key);
                self.objects[i].gone_before_finalizer = gone_at_once;
            }
            Step::Power { slot, running } => {
                let Some(&i) = self.live.get(&slot) else { return };
                let o = &self.objects[i];
                self.patch_spec(o.kind, &o.name.clone(), json!({ "running": running })).await;
                self.objects[i].running = running;
            }
            Step::Transfer { slot, owner } => {
                let Some(&i) = self.live.get(&slot) else { return };
                let o = &self.objects[i];
                self.patch_spec(o.kind, &o.name.clone(), json!({ "owner": owner })).await;
                self.objects[i].owners.push(owner.to_owned());
            }
            Step::Rules { slot, ports } => {
                let Some(&i) = self.live.get(&slot) else { return };
                let name = self.objects[i].name.clone();
                self.patch_spec(Kind::PlainVm, &name, json!({"firewall": {"inbound": inbound(&ports)}})).await;
                self.objects[i].ports = ports;
            }
            Step::Rotate { slot, token } => {
                let Some(&i) = self.live.get(&slot) else { return };
                let name = self.objects[i].name.clone();
                self.patch_spec(Kind::Key, &name, json!({ "rotationToken": token })).await;
                self.objects[i].rotations += 1;
                self.objects[i].rotation_token = Some(token);
            }
            Step::Spend { slot, micros } => {
                let Some(&i) = self.live.get(&slot) else { return };
                let uid = self.objects[i].uid.clone();
                let mut r = self.redis.clone();
                crabglamp_sandbox::llm_proxy::record_spend(
                    &mut r,
                    &self.redis_ns,
                    &uid,
                    "llm",
                    "gpt-4o-mini",
                    micros,
                    chrono::Utc::now(),
                )
                .await
                .unwrap_or_else(|e| panic!("record spend: {e}"));
                self.objects[i].spent += micros;
                self.objects[i].must_keep += micros;
            }
            Step::HetznerFaults(f) => self.op().hetzner.control().set_faults(fault_plan(f.as_ref())),
            Step::CloudflareFaults(f) => self.op().cloudflare.control().set_faults(fault_plan(f.as_ref())),
            Step::Storm { hetzner, cloudflare } => {
                self.op().hetzner.control().rate_limit_storm(hetzner);
                self.op().cloudflare.control().rate_limit_storm(cloudflare);
            }
            Step::PgRestart => terminate_connections(&self.op().db.url).await,
            Step::RedisFlush => self.flush().await,
            Step::Crash => {
                let op = self.op.take().unwrap_or_else(|| panic!("the operator runs"));
                self.op = Some(op.crash_and_restart().await);
            }
            Step::CutWatches => {
                let cut = self.op().kube.cut_watches();
                tracing::info!(target: "chaos", cut, "watch streams (stand-in) or connections (real server) cut");
            }
            Step::PauseMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    async fn create(&mut self, slot: usize, name: String, owner: &'static str, running: bool) {
        let kind = plan::kind_of(slot);
        let pp = PostParams::default();
        let ports = vec!["22"];
        let uid = match kind {
            Kind::Agent => self.agents().create(&pp, &fixture::agent(&name, owner, running)).await.map(|o| o.uid()),
            Kind::PlainVm => self
                .plainvms()
                .create(&pp, &fixture::plainvm(&name, owner, running, inbound(&ports)))
                .await
                .map(|o| o.uid()),
            Kind::Key => self.keys().create(&pp, &virtual_key(&name, owner)).await.map(|o| o.uid()),
        }
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .unwrap_or_else(|| panic!("create {name}: no uid"));
        self.live.insert(slot, self.objects.len());
        self.objects.push(Ledger {
            kind,
            name,
            uid,
            owners: vec![owner.to_owned()],
            running,
            ports,
            rotations: 0,
            rotation_token: None,
            deleted: None,
            spent: 0,
            must_keep: 0,
            flushed: false,
            gone_before_finalizer: false,
        });
    }

    /// A Redis flush as far as this run can see (every name of its namespace goes; the
    /// shared server's other tenants are untouched). What PostgreSQL holds just before is
    /// what must survive it.
    async fn flush(&mut self) {
        let month = chrono::Utc::now().format("%Y-%m").to_string();
        let pool = self.op().db.pool.clone();
        for &i in self.live.values() {
            let o = &mut self.objects[i];
            if o.kind != Kind::Key {
                continue;
            }
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT cost_micros FROM virtual_key_spend_monthly WHERE budget_id = $1 AND month = $2",
            )
            .bind(&o.uid)
            .bind(&month)
            .fetch_optional(&pool)
            .await
            .unwrap_or_else(|e| panic!("read stored spend: {e}"));
            o.must_keep = stored.unwrap_or(0);
            o.flushed = true;
        }
        let rt = self.op().context.virtual_keys.as_ref().unwrap_or_else(|| panic!("the VirtualKey runtime runs"));
        rt.cache.clear_namespace().await.unwrap_or_else(|e| panic!("flush: {e}"));
    }
}

pub fn inbound(ports: &[&str]) -> serde_json::Value {
    json!(
        ports
            .iter()
            .map(|p| json!({"protocol": "tcp", "port": p, "sourceIPs": ["0.0.0.0/0", "::/0"]}))
            .collect::<Vec<_>>()
    )
}

pub fn virtual_key(name: &str, owner: &str) -> VirtualKey {
    serde_json::from_value(json!({
        "apiVersion": "crabglamp.com/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {"name": name},
        "spec": {"owner": owner, "models": ["gpt-4o*"], "budget": {"monthlyUsd": "1000"},
                 "rateLimit": {"requestsPerMinute": 60}}
    }))
    .unwrap_or_else(|e| panic!("virtual key manifest: {e}"))
}

fn fault_plan(f: Option<&Faults>) -> FaultPlan {
    let Some(f) = f else { return FaultPlan::default() };
    FaultPlan {
        rules: vec![FaultRule {
            method: None,
            route: None,
            path_contains: String::new(),
            rate: f.rate,
            error: InjectedError::from_name(f.error).unwrap_or(InjectedError::Any5xx),
            lose_answer: f.lose_answer,
        }],
        seed: f.seed,
        ..FaultPlan::default()
    }
}

/// Ends every connection to the test database but our own: what a PostgreSQL restart looks
/// like to the operator's pool (the shared server itself cannot be restarted under other
/// tests).
async fn terminate_connections(db_url: &str) {
    let name = url::Url::parse(db_url).map(|u| u.path().trim_start_matches('/').to_owned()).unwrap_or_default();
    let admin = sqlx::PgPool::connect(&crate::db::admin_url()).await.unwrap_or_else(|e| panic!("admin connects: {e}"));
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .execute(&admin)
    .await
    .unwrap_or_else(|e| panic!("terminate connections: {e}"));
    admin.close().await;
}
