//! Request cost of the in-process Kubernetes API server as the number of stored objects grows:
//! p50/p99 latency of status merge patches and of paged lists (`limit=500`, every page of a
//! full walk) with 100, 1,000 and 10,000 Agents, over HTTP with a `kube::Client`. Prints a
//! table; it has no pass/fail threshold (the goal: p50 of a status patch at 10,000 objects
//! within 2x of that at 100).

use std::time::{Duration, Instant};

use crabglamp_operator::api::Agent;
use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const NS: &str = "default";
const SIZES: [usize; 3] = [100, 1_000, 10_000];
const PATCHES: usize = 1_000;
const LIST_PAGES: usize = 100;

fn agent(i: usize) -> Agent {
    serde_json::from_value(json!({
        "apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent",
        "metadata": {"name": format!("agent-{i:05}"), "namespace": NS, "labels": {"bench": "true"}},
        "spec": {"owner": "acct_bench", "region": if i.is_multiple_of(2) { "eu" } else { "us" }},
    }))
    .expect("agent")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

struct Row {
    objects: usize,
    patch: (Duration, Duration),
    page: (Duration, Duration),
}

async fn fill(api: &Api<Agent>, from: usize, to: usize) {
    futures::stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &agent(i)).await.expect("create") }
        })
        .buffer_unordered(8)
        .for_each(|_| async {})
        .await;
}

async fn status_patches(api: &Api<Agent>, objects: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(PATCHES);
    for n in 0..PATCHES {
        // Spread over the whole key range (a multiplicative walk, no RNG needed).
        let name = format!("agent-{:05}", (n * 7_919) % objects);
        let patch = Patch::Merge(json!({"status": {"observedGeneration": n}}));
        let t = Instant::now();
        api.patch_status(&name, &PatchParams::default(), &patch).await.expect("status patch");
        samples.push(t.elapsed());
    }
    samples
}

async fn paged_lists(api: &Api<Agent>) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(LIST_PAGES);
    while samples.len() < LIST_PAGES {
        let mut token: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(500);
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            let t = Instant::now();
            let page = api.list(&params).await.expect("list");
            samples.push(t.elapsed());
            token = page.metadata.continue_.filter(|c| !c.is_empty());
            if token.is_none() || samples.len() >= LIST_PAGES {
                break;
            }
        }
    }
    samples
}

fn main() {
    // kube-client refuses proxy variables it cannot honour; the server is on loopback. Done
    // before the runtime starts any thread.
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        // SAFETY: single-threaded here; nothing reads the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let kube = crabglamp_sandbox::kube::spawn_loopback().await.expect("server");
        let api: Api<Agent> = Api::namespaced(kube.client().expect("client"), NS);
        let mut rows = Vec::new();
        let mut stored = 0;
        for objects in SIZES {
            let t = Instant::now();
            fill(&api, stored, objects).await;
            let filled = t.elapsed();
            stored = objects;
            // Warm-up: connection pool, allocator, caches.
            let _ = status_patches(&api, objects).await;
            let mut patch = status_patches(&api, objects).await;
            let mut page = paged_lists(&api).await;
            patch.sort();
            page.sort();
            println!("{objects} Agents stored (filled in {filled:.1?})");
            rows.push(Row {
                objects,
                patch: (percentile(&patch, 0.5), percentile(&patch, 0.99)),
                page: (percentile(&page, 0.5), percentile(&page, 0.99)),
            });
        }
        println!();
        println!("| objects | status patch p50 (ms) | status patch p99 (ms) | list page (limit=500) p50 (ms) | list page p99 (ms) |");
        println!("|--------:|----------------------:|----------------------:|-------------------------------:|-------------------:|");
        for r in &rows {
            println!(
                "| {:>7} | {:>21} | {:>21} | {:>30} | {:>18} |",
                r.objects,
                ms(r.patch.0),
                ms(r.patch.1),
                ms(r.page.0),
                ms(r.page.1)
            );
        }
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let ratio = last.patch.0.as_secs_f64() / first.patch.0.as_secs_f64().max(1e-9);
            println!();
            println!(
                "status patch p50 at {} / at {}: {ratio:.2}x (goal: within 2x)",
                last.objects, first.objects
            );
        }
    });
}
