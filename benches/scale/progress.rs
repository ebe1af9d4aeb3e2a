//! Who is Ready, and since when: one watch per kind (never a list per poll, which at 5,000
//! objects would cost the stand-ins more than the operator), and a sampler recording Ready
//! counts and each cloud's requests over time for the table and the plot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Objects of one kind that have been Ready, by name, with when they first were.
#[derive(Default)]
pub struct ReadySet {
    first_ready: HashMap<String, Instant>,
}

impl ReadySet {
    pub fn count(&self) -> usize {
        self.first_ready.len()
    }

    /// When the last of them turned Ready.
    pub fn last(&self) -> Option<Instant> {
        self.first_ready.values().max().copied()
    }

    /// How many of those whose names start with `prefix` have been Ready, and when the last
    /// of them turned Ready.
    pub fn of(&self, prefix: &str) -> (usize, Option<Instant>) {
        self.first_ready
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .fold((0, None), |(count, last), (_, at)| (count + 1, last.max(Some(*at))))
    }

    /// When the object named `name` first was Ready.
    pub fn ready_at(&self, name: &str) -> Option<Instant> {
        self.first_ready.get(name).copied()
    }
}

pub type Shared = Arc<Mutex<ReadySet>>;

pub fn lock(set: &Shared) -> std::sync::MutexGuard<'_, ReadySet> {
    set.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Watches every object of `K`; `conditions` reads its status conditions.
pub fn watch_ready<K>(
    api: Api<K>,
    conditions: fn(&K) -> Option<&Vec<Condition>>,
) -> (Shared, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let set: Shared = Arc::default();
    let shared = Arc::clone(&set);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
        while let Some(item) = stream.next().await {
            let Ok(object) = item else { continue };
            let ready = conditions(&object).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                lock(&shared).first_ready.entry(object.name_any()).or_insert_with(Instant::now);
            }
        }
    });
    (set, task)
}

/// One sample: seconds since the start (wall clock), Ready counts, cloud requests so far.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub wall: f64,
    pub agents: usize,
    pub plainvms: usize,
    pub keys: usize,
    pub hetzner: u64,
    pub cloudflare: u64,
}

/// Records a sample every `every` until aborted.
pub fn sample(
    started: Instant,
    every: Duration,
    sets: [Shared; 3],
    counters: [crabglamp_sandbox::http::RunningSim; 2],
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let shared = Arc::clone(&samples);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let [a, v, k] = &sets;
            let s = Sample {
                wall: started.elapsed().as_secs_f64(),
                agents: lock(a).count(),
                plainvms: lock(v).count(),
                keys: lock(k).count(),
                hetzner: counters[0].control().total_requests(),
                cloudflare: counters[1].control().total_requests(),
            };
            shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(s);
        }
    });
    (samples, task)
}

/// One Ready watch per kind: Agents, PlainVMs and VirtualKeys, in that order.
pub fn watch_all(
    agents: &kube::Api<crabglamp_operator::api::Agent>,
    plainvms: &kube::Api<crabglamp_operator::api::PlainVM>,
    vks: &kube::Api<crabglamp_operator::api::VirtualKey>,
) -> ([Shared; 3], [tokio::task::JoinHandle<()>; 3]) {
    let (a, watch_a) = watch_ready(agents.clone(), |a| a.status.as_ref().map(|s| &s.conditions));
    let (v, watch_v) = watch_ready(plainvms.clone(), |v| v.status.as_ref().map(|s| &s.conditions));
    let (k, watch_k) = watch_ready(vks.clone(), |k| k.status.as_ref().map(|s| &s.conditions));
    ([a, v, k], [watch_a, watch_v, watch_k])
}

/// Waits until at least `want` objects of each kind are Ready (true), or until `deadline` after
/// `started` or until `stopped` names operators that exited (false, saying how far it got).
pub async fn wait_ready(
    sets: &[Shared; 3],
    want: [usize; 3],
    started: Instant,
    deadline: Duration,
    mut stopped: impl FnMut() -> Option<String>,
) -> bool {
    loop {
        let [a, v, k] = sets.each_ref().map(|s| lock(s).count());
        if a >= want[0] && v >= want[1] && k >= want[2] {
            return true;
        }
        let exited = stopped();
        if started.elapsed() > deadline || exited.is_some() {
            println!(
                "stopped waiting after {:.0?} (wall){}: {a}/{} Agents, {v}/{} PlainVMs, {k}/{} VirtualKeys Ready",
                started.elapsed(),
                exited.map(|e| format!(", {e}")).unwrap_or_default(),
                want[0],
                want[1],
                want[2],
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
