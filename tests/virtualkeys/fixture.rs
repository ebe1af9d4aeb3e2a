//! One VirtualKey controller against the in-process API server, a fresh database and the real
//! Redis under a namespace of its own, plus what the tests use to play the proxy (the
//! contract's `INCRBY`/`HINCRBY`) and to wait on conditions with deadlines.

use std::sync::Arc;
use std::time::Duration;

use crabglamp_operator::api::virtual_key::VirtualKey;
use crabglamp_operator::cloud::cloudflare::CloudflareConfig;
use crabglamp_operator::cloud::hetzner::HetznerConfig;
use crabglamp_operator::controllers::{Context, ControllerConfig, virtual_key};
use crabglamp_operator::operator::{self, OperatorSettings};
use crabglamp_operator::store::seal::SealingKeys;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use redis::AsyncCommands;

use crate::db::TestDb;
use crate::kube_server::{KubeServer, OPERATOR_USER, VIRTUAL_KEY_NAMESPACES};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub struct KeyOperator {
    pub _kube: KubeServer,
    pub client: kube::Client,
    pub db: TestDb,
    pub context: Arc<Context>,
    pub redis: redis::aio::MultiplexedConnection,
    redis_url: String,
    pub ns: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KeyOperator {
    /// `resync`: how often the refresher reads spend (and settled keys are looked at again).
    pub async fn start(resync: Duration, batch: usize) -> KeyOperator {
        Self::start_with(resync, batch, |_| {}).await
    }

    /// As [`KeyOperator::start`], with the controller settings changed by `tweak` first.
    pub async fn start_with(resync: Duration, batch: usize, tweak: impl FnOnce(&mut ControllerConfig)) -> KeyOperator {
        Self::start_on(redis_url(), resync, batch, tweak).await
    }

    /// As [`KeyOperator::start_with`], on the Redis at `redis_url`.
    pub async fn start_on(
        redis_url: String,
        resync: Duration,
        batch: usize,
        tweak: impl FnOnce(&mut ControllerConfig),
    ) -> KeyOperator {
        crate::logs::install();
        let kube = KubeServer::start().await;
        let client = kube.client();
        // The operator connects as the README's least-privilege role: every scenario proves the grants.
        let db = TestDb::for_operator().await;
        let ns = format!("cgktest:{}:", uuid::Uuid::new_v4().simple());
        let context = connect(&kube, &db.operator_url, &redis_url, &ns, |c| {
            c.resync = resync;
            c.redis_batch = batch;
            tweak(c);
        })
        .await;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(virtual_key::run(Arc::clone(&context), stop_rx));
        let redis = redis::Client::open(redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connects");
        KeyOperator { _kube: kube, client, db, context, redis, redis_url, ns, stop, task: Some(task) }
    }

    /// Another writer on the same database and Redis namespace (a stale leader, another shard
    /// or installation), its controller settings changed by `tweak`; runs nothing by itself.
    pub async fn other_writer(&self, tweak: impl FnOnce(&mut ControllerConfig)) -> Arc<Context> {
        connect(&self._kube, &self.db.operator_url, &self.redis_url, &self.ns, tweak).await
    }

    pub fn keys(&self, ns: &str) -> Api<VirtualKey> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn create_namespace(&self, ns: &str) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
        let _ = api.create(&PostParams::default(), &namespace).await;
    }

    /// The key in the VirtualKey's Secret.
    pub async fn key_in_secret(&self, ns: &str, name: &str) -> String {
        let secret = self.secrets(ns).get(name).await.expect("secret");
        let data = secret.data.expect("data");
        String::from_utf8(data.get("apiKey").expect("apiKey").0.clone()).expect("utf-8")
    }

    pub async fn auth_entry(&self, key: &str) -> Option<serde_json::Value> {
        let hash = hex::encode(crabglamp_operator::store::keys::key_sha256(key));
        let mut r = self.redis.clone();
        let raw: Option<String> = r.get(format!("{}auth:{hash}", self.ns)).await.expect("GET");
        raw.map(|s| serde_json::from_str(&s).expect("auth entry is JSON"))
    }

    /// What the proxy does after serving a request (the contract's `MULTI`): the sandbox's
    /// reference proxy's own code, so the tests and the proxy cannot drift apart.
    pub async fn spend(&self, budget_id: &str, surface: &str, model: &str, micros: i64) {
        let mut r = self.redis.clone();
        crabglamp_sandbox::llm_proxy::record_spend(
            &mut r,
            &self.ns,
            budget_id,
            surface,
            model,
            micros,
            chrono::Utc::now(),
        )
        .await
        .expect("proxy increments");
    }

    pub async fn month_counter(&self, budget_id: &str) -> Option<i64> {
        let month = chrono::Utc::now().format("%Y-%m").to_string();
        let mut r = self.redis.clone();
        r.get(format!("{}spend:{budget_id}:{month}", self.ns)).await.expect("GET")
    }

    /// A Redis flush, as far as this run can see: every name of its namespace is gone.
    pub async fn flush(&self) {
        let cache = &self.context.key_runtime().expect("redis runtime").cache;
        cache.clear_namespace().await.expect("clear namespace");
    }

    /// Every name of this run's namespace with its value (`DUMP`) and time to live: what an
    /// RDB snapshot holds of it.
    pub async fn snapshot(&self) -> Vec<(String, Vec<u8>, i64)> {
        let mut r = self.redis.clone();
        let names: Vec<String> = r.keys(format!("{}*", self.ns)).await.expect("KEYS");
        let mut out = Vec::new();
        for name in names {
            let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&name).query_async(&mut r).await.expect("DUMP");
            let ttl: i64 = r.pttl(&name).await.expect("PTTL");
            if let Some(dump) = dump {
                out.push((name, dump, ttl.max(0)));
            }
        }
        out
    }

    /// Redis restarted from `snapshot`, as far as this run's namespace can see.
    pub async fn restore(&self, snapshot: &[(String, Vec<u8>, i64)]) {
        self.flush().await;
        let mut r = self.redis.clone();
        for (name, dump, ttl) in snapshot {
            let _: () = redis::cmd("RESTORE")
                .arg(name)
                .arg(*ttl)
                .arg(dump.as_slice())
                .arg("REPLACE")
                .query_async(&mut r)
                .await
                .expect("RESTORE");
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await.expect("controller stops in time").expect("join");
        }
        self.flush().await;
    }
}

/// A VirtualKey controller's context on `database_url` and the Redis namespace `ns`.
async fn connect(
    kube: &KubeServer,
    database_url: &str,
    redis_url: &str,
    ns: &str,
    tweak: impl FnOnce(&mut ControllerConfig),
) -> Arc<Context> {
    let mut controllers = ControllerConfig::new("keys.example.com");
    controllers.fast_poll = Duration::from_millis(200);
    controllers.max_backoff = Duration::from_secs(2);
    controllers.redis_namespace = ns.to_owned();
    controllers.virtual_key_namespaces = Some(VIRTUAL_KEY_NAMESPACES.map(str::to_owned).to_vec());
    tweak(&mut controllers);
    // No cloud is called by the VirtualKey controller: these endpoints are never reached.
    let settings = OperatorSettings {
        database_url: database_url.to_owned(),
        redis_url: Some(redis_url.to_owned()),
        hetzner: HetznerConfig::new("http://127.0.0.1:9/v1", "unused"),
        cloudflare: CloudflareConfig::new("http://127.0.0.1:9/client/v4", "unused", "acct", "zone"),
        controllers,
        hetzner_requests_per_hour: 3600,
        cloudflare_requests_per_5min: 1200,
    };
    let sealing = SealingKeys::new("k1", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", &[]).expect("sealing key");
    operator::connect(kube.operator_client(OPERATOR_USER), settings, sealing).await.expect("operator connects").context
}

/// Everything logged so far by this test binary.
pub fn captured_logs() -> String {
    crate::logs::captured()
}

pub fn virtual_key(name: &str, owner: &str, budget: &str) -> VirtualKey {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "crabglamp.com/v1alpha1",
        "kind": "VirtualKey",
        "metadata": {"name": name},
        "spec": {"owner": owner, "models": ["gpt-4o*"], "budget": {"monthlyUsd": budget},
                 "rateLimit": {"requestsPerMinute": 60}}
    }))
    .expect("virtual key manifest")
}

/// Waits until `check` holds for the VirtualKey, or panics after `deadline` with its status.
pub async fn wait_for(
    api: &Api<VirtualKey>,
    name: &str,
    deadline: Duration,
    what: &str,
    check: impl Fn(&VirtualKey) -> bool,
) -> VirtualKey {
    let start = tokio::time::Instant::now();
    loop {
        let last = api.get_opt(name).await.expect("get virtual key");
        if let Some(v) = last.as_ref().filter(|v| check(v)) {
            return v.clone();
        }
        if start.elapsed() > deadline {
            panic!("{what}: not reached within {deadline:?}; last: {:#?}", last.map(|v| v.status));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until an async probe returns `Some`.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "{what}: not reached within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn condition(v: &VirtualKey, type_: &str) -> Option<(String, String)> {
    v.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn ready(v: &VirtualKey) -> bool {
    condition(v, "Ready").is_some_and(|(s, _)| s == "True")
}

pub fn blocked(v: &VirtualKey) -> bool {
    v.status.as_ref().and_then(|s| s.blocked) == Some(true)
}
