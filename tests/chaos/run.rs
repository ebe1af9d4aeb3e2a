//! Plays one seed's plan against a whole operator (Agent, PlainVM and VirtualKey controllers,
//! the cloud stand-ins, a fresh database, the real Redis under a namespace of its own), keeping
//! a ledger of what was asked of every object, then clears the faults and waits for
//! quiescence: every invariant of [`super::invariants`] holding, within a deadline. A monitor
//! ([`invariants::Monitor`]) checks the invariants that must hold at every moment, not only
//! at the end, for the whole run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crabglamp_operator::api::virtual_key::VirtualKey;
use crabglamp_operator::api::{Agent, PlainVM};
use crabglamp_sandbox::http::{FaultPlan, FaultRule, InjectedError};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use redis::AsyncCommands;
use serde_json::json;

use super::invariants::{self, Monitor};
use super::plan::{self, Faults, Kind, Step};
use super::redis_faults::{self, Malformed, Snapshot};
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
    /// Deleted before the operator put its finalizer on it: the API server removed it at once,
    /// the operator never acted on it, so there is nothing to destroy and no event to write.
    pub gone_before_finalizer: bool,
}

/// The spend books of one VirtualKey, shared with the monitor (keyed by UID in [`Books`]).
#[derive(Clone, Debug)]
pub struct KeyBooks {
    pub name: String,
    /// The monthly budget, micro-USD.
    pub budget_micros: i64,
    /// Spend the proxy recorded (micro-USD). Raised before the proxy's write, so whoever
    /// reads a counter and then this never sees the counter ahead of it.
    pub spent: i64,
    /// Spend that must survive: what PostgreSQL held before the last flush plus what was
    /// recorded since (spend recorded and flushed before the operator copied it is lost with
    /// Redis, which held it alone); after a restore from a snapshot, what PostgreSQL held
    /// before it plus what was recorded once the counter was back at that.
    pub must_keep: i64,
    /// Whether Redis lost data (a flush, a restore) while this key lived.
    pub flushed: bool,
    /// After a restore: what PostgreSQL held just before it, until the counter is seen back
    /// at it (spend recorded before that may be lost: the operator raises the counter to
    /// PostgreSQL's copy, it does not add).
    pub rolled_back_to: Option<i64>,
    pub deleted: bool,
    /// Since when `must_keep` is at or over the budget: the moment from which the operator
    /// has one resync to block every key of this budget (moved to a fault's moment when the
    /// fault brought back entries judged before it).
    pub over_budget_since: Option<Instant>,
    /// Its usage data in Redis is malformed (judged on its last good spend: no deadline).
    pub malformed: Vec<Malformed>,
}

impl KeyBooks {
    /// Starts (or restarts, after a fault) the budget clock when over budget.
    pub fn judge_budget_from(&mut self, at: Instant) {
        self.over_budget_since = (self.must_keep >= self.budget_micros).then_some(at);
    }
}

pub type Books = Arc<Mutex<BTreeMap<String, KeyBooks>>>;

pub fn books_of(books: &Books) -> std::sync::MutexGuard<'_, BTreeMap<String, KeyBooks>> {
    books.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct Chaos {
    /// Always `Some` but while a crash replaces it (the fixture restarts by value).
    op: Option<Operator>,
    pub objects: Vec<Ledger>,
    /// Slot -> index in `objects` of its live object.
    live: BTreeMap<usize, usize>,
    pub redis: redis::aio::MultiplexedConnection,
    pub redis_ns: String,
    /// VirtualKeys' spend books by UID.
    pub books: Books,
    /// The last Redis snapshot taken.
    snapshot: Option<Snapshot>,
    /// A second operator process's context on the same database and Redis namespace, which
    /// never runs controllers: the stale writer that races the spend refresh.
    second_writer: Option<Arc<crabglamp_operator::controllers::Context>>,
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
    let books = Books::default();
    let resync = op.context.config().resync;
    let monitor = Monitor::start(redis.clone(), op.db.pool.clone(), redis_ns.clone(), Arc::clone(&books), resync);
    let mut chaos = Chaos {
        op: Some(op),
        objects: Vec::new(),
        live: BTreeMap::new(),
        redis,
        redis_ns,
        books,
        snapshot: None,
        second_writer: None,
    };
    let played = std::time::Instant::now();
    for step in steps {
        chaos.play(step).await;
    }
    let settling = std::time::Instant::now();
    chaos.op().hetzner.control().set_faults(FaultPlan::default());
    chaos.op().cloudflare.control().set_faults(FaultPlan::default());
    chaos.repair_usage().await;
    let settled = invariants::settle(&chaos, QUIESCENCE).await;
    let watched = monitor.stop().await;
    println!(
        "chaos seed {seed}: plan played in {:.1}s, settled in {:.1}s; {}",
        settling.duration_since(played).as_secs_f64(),
        settling.elapsed().as_secs_f64(),
        watched.summary()
    );
    let result = match (settled, watched.violations.is_empty()) {
        (Ok(()), true) => Ok(()),
        (settled, _) => Err([settled.err().unwrap_or_default(), watched.report()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n")),
    };
    let op = chaos.op.take().unwrap_or_else(|| panic!("the operator runs")).stop().await;
    if let Ok(rt) = op.context.key_runtime() {
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
                if let Some(b) = books_of(&self.books).get_mut(&self.objects[i].uid) {
                    b.deleted = true;
                }
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
                let kept = self.spend_survives_rollback(&uid).await;
                // The bound first: the monitor must never see the counter ahead of it.
                if let Some(b) = books_of(&self.books).get_mut(&uid) {
                    b.spent += micros;
                }
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
                if let Some(b) = books_of(&self.books).get_mut(&uid) {
                    if kept {
                        b.must_keep += micros;
                    }
                    if b.over_budget_since.is_none() {
                        b.judge_budget_from(Instant::now());
                    }
                }
            }
            Step::HetznerFaults(f) => self.op().hetzner.control().set_faults(fault_plan(f.as_ref())),
            Step::CloudflareFaults(f) => self.op().cloudflare.control().set_faults(fault_plan(f.as_ref())),
            Step::Storm { hetzner, cloudflare } => {
                self.op().hetzner.control().rate_limit_storm(hetzner);
                self.op().cloudflare.control().rate_limit_storm(cloudflare);
            }
            Step::PgRestart => terminate_connections(&self.op().db.url).await,
            Step::RedisFlush => self.flush().await,
            Step::MalformedUsage { slot, how } => {
                let Some(&i) = self.live.get(&slot) else { return };
                let uid = self.objects[i].uid.clone();
                let malformed = redis_faults::malform(&mut self.redis.clone(), &self.redis_ns, &uid, how).await;
                if let Some(b) = books_of(&self.books).get_mut(&uid) {
                    b.malformed.push(malformed);
                }
            }
            Step::RedisSnapshot => {
                let malformed = books_of(&self.books)
                    .iter()
                    .filter(|(_, b)| !b.malformed.is_empty())
                    .map(|(uid, b)| (uid.clone(), b.malformed.clone()))
                    .collect();
                self.snapshot = Some(redis_faults::snapshot(&mut self.redis.clone(), &self.redis_ns, malformed).await);
            }
            Step::RedisRestore { racing } => {
                let Some(snapshot) = self.snapshot.clone() else { return };
                self.restore(&snapshot).await;
                if racing {
                    self.racing_refresh().await;
                }
            }
            Step::RacingRefresh => {
                self.flush().await;
                self.racing_refresh().await;
            }
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
            Kind::Key => {
                self.keys().create(&pp, &virtual_key(&name, owner, plan::budget_usd(slot))).await.map(|o| o.uid())
            }
        }
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .unwrap_or_else(|| panic!("create {name}: no uid"));
        if kind == Kind::Key {
            let budget_micros = crabglamp_operator::controllers::virtual_key::usd_to_micros(plan::budget_usd(slot))
                .unwrap_or_else(|| panic!("budget {}", plan::budget_usd(slot)));
            books_of(&self.books).insert(
                uid.clone(),
                KeyBooks {
                    name: name.clone(),
                    budget_micros,
                    spent: 0,
                    must_keep: 0,
                    flushed: false,
                    rolled_back_to: None,
                    deleted: false,
                    over_budget_since: None,
                    malformed: Vec::new(),
                },
            );
        }
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
            gone_before_finalizer: false,
        });
    }

    /// What PostgreSQL holds of each live key's month right now (micro-USD, by UID).
    async fn stored_spend(&self) -> BTreeMap<String, i64> {
        let month = chrono::Utc::now().format("%Y-%m").to_string();
        let live: Vec<String> = self
            .live
            .values()
            .map(|&i| &self.objects[i])
            .filter(|o| o.kind == Kind::Key)
            .map(|o| o.uid.clone())
            .collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT budget_id, cost_micros FROM virtual_key_spend_monthly WHERE budget_id = ANY($1) AND month = $2",
        )
        .bind(&live)
        .bind(&month)
        .fetch_all(&self.op().db.pool)
        .await
        .unwrap_or_else(|e| panic!("read stored spend: {e}"));
        let stored: BTreeMap<String, i64> = rows.into_iter().collect();
        live.into_iter().map(|uid| (uid.clone(), stored.get(&uid).copied().unwrap_or(0))).collect()
    }

    /// A Redis flush as far as this run can see (every name of its namespace goes; the
    /// shared server's other tenants are untouched). What PostgreSQL holds just before is
    /// what must survive it; spend recorded after it survives once the operator put the
    /// counter back at that (the restore raises, never adds: see `cache::restore_batch`).
    async fn flush(&mut self) {
        let stored = self.stored_spend().await;
        self.lost_data(&stored, |_| Vec::new());
        let rt = self.op().context.key_runtime().ok().unwrap_or_else(|| panic!("the VirtualKey runtime runs"));
        rt.cache.clear_namespace().await.unwrap_or_else(|e| panic!("flush: {e}"));
    }

    /// The books after Redis lost data (a flush, or a restore from a snapshot): what
    /// PostgreSQL held just before (`stored`) must survive, spend recorded after survives once
    /// the counter is back at that, each key's usage is malformed as `malformed` says, and
    /// the entries now in Redis are judged from now on.
    fn lost_data(&self, stored: &BTreeMap<String, i64>, malformed: impl Fn(&str) -> Vec<Malformed>) {
        let now = Instant::now();
        let mut books = books_of(&self.books);
        for (uid, pg) in stored {
            let Some(b) = books.get_mut(uid) else { continue };
            b.must_keep = *pg;
            b.flushed = true;
            b.rolled_back_to = Some(*pg);
            b.malformed = malformed(uid);
            b.judge_budget_from(now);
        }
    }

    /// Redis restarted from `snapshot`. What PostgreSQL holds just before is what must
    /// survive it; spend recorded after it survives once the operator put the counter back
    /// at that (see [`Self::spend_survives_rollback`]).
    async fn restore(&mut self, snapshot: &Snapshot) {
        let stored = self.stored_spend().await;
        redis_faults::restore(&mut self.redis.clone(), &self.redis_ns, snapshot).await;
        // The snapshot's auth entries and malformations are back, judged on its older spend.
        self.lost_data(&stored, |uid| snapshot.malformed.get(uid).cloned().unwrap_or_default());
    }

    async fn spend_survives_rollback(&mut self, uid: &str) -> bool {
        let Some(floor) = books_of(&self.books).get(uid).and_then(|b| b.rolled_back_to) else { return true };
        let month = chrono::Utc::now().format("%Y-%m").to_string();
        let counter: Option<i64> =
            self.redis.get(format!("{}spend:{uid}:{month}", self.redis_ns)).await.unwrap_or(None);
        let back = counter.unwrap_or(0) >= floor;
        if back && let Some(b) = books_of(&self.books).get_mut(uid) {
            b.rolled_back_to = None;
        }
        back
    }

    /// A stale second writer (a context of its own on the same database and Redis namespace,
    /// created once) and the operator refresh spend at the same moment. Either may fail
    /// (a fault of the plan may be in force); only what they leave behind is judged.
    async fn racing_refresh(&mut self) {
        if self.second_writer.is_none() {
            self.second_writer = Some(redis_faults::second_writer(self.op()).await);
        }
        let Some(stale) = self.second_writer.clone() else { return };
        let ours = Arc::clone(&self.op().context);
        let (a, b) = tokio::join!(
            crabglamp_operator::controllers::virtual_key::refresh_spend(&stale),
            crabglamp_operator::controllers::virtual_key::refresh_spend(&ours)
        );
        tracing::info!(target: "chaos", stale = ?a.map_err(|e| e.to_string()), ours = ?b.map_err(|e| e.to_string()), "racing refreshes");
    }

    /// Clears every malformation left (the faults are cleared before quiescence): each key
    /// must then be judged on its whole spend again. The malformation lasts one deadline
    /// more first, so a budget that ran out in the plan's last steps is judged while it does.
    async fn repair_usage(&mut self) {
        // Every malformation of a key, not only its last: a key can be made malformed twice.
        let malformed: Vec<(String, Malformed)> = books_of(&self.books)
            .iter()
            .flat_map(|(uid, b)| b.malformed.iter().map(move |m| (uid.clone(), m.clone())))
            .collect();
        if malformed.is_empty() {
            return;
        }
        tokio::time::sleep(invariants::deadline(self.op().context.config().resync)).await;
        for (uid, m) in malformed {
            redis_faults::repair(&mut self.redis.clone(), &m).await;
            if let Some(b) = books_of(&self.books).get_mut(&uid) {
                b.malformed.clear();
                b.judge_budget_from(Instant::now());
            }
        }
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

pub fn virtual_key(name: &str, owner: &str, budget_usd: &str) -> VirtualKey {
    serde_json::from_value(json!({
        "apiVersion": "crabglamp.com/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {"name": name},
        "spec": {"owner": owner, "models": ["gpt-4o*"], "budget": {"monthlyUsd": budget_usd},
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
