//! The sandbox's activity log: one line on stdout per change to an Agent, PlainVM or
//! VirtualKey, so someone trying the sandbox sees what their kubectl commands did. It only
//! reads (through the same kube-rs watcher a controller uses) and never writes anything.

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crabglamp_operator::api::{Agent, PlainVM, VirtualKey};

fn describe<K: Resource<DynamicType = ()> + ResourceExt>(verb: &str, obj: &K) -> String {
    let kind = K::kind(&()).to_lowercase();
    let ns = obj.namespace().unwrap_or_default();
    let deleting = if obj.meta().deletion_timestamp.is_some() { ", deleting" } else { "" };
    format!(
        "{} {kind} {ns}/{} {verb} (generation {}{deleting})",
        chrono::Utc::now().format("%H:%M:%S"),
        obj.name_any(),
        obj.meta().generation.unwrap_or_default()
    )
}

async fn log_changes<K>(client: kube::Client, ready: tokio::sync::oneshot::Sender<()>)
where
    K: Resource<DynamicType = ()> + ResourceExt + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    // Backoff: without it a failing watch is retried at once, in a tight loop.
    let mut events = watcher(Api::<K>::all(client), watcher::Config::default()).default_backoff().boxed();
    let mut initialised = false;
    let mut ready = Some(ready);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                initialised = true;
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Ok(watcher::Event::Apply(obj)) if initialised => println!("{}", describe("applied", &obj)),
            Ok(watcher::Event::Delete(obj)) => println!("{}", describe("deleted", &obj)),
            Ok(_) => {}
            // The watcher retries by itself (with backoff); a 410 after a compaction is routine.
            Err(_) => {}
        }
    }
}

/// Starts printing every change to the three kinds from now on, until the returned task is
/// aborted; returns once the watchers have their initial lists (so no later change is missed).
pub async fn start(client: kube::Client) -> tokio::task::JoinHandle<()> {
    let (agents, agents_ready) = tokio::sync::oneshot::channel();
    let (vms, vms_ready) = tokio::sync::oneshot::channel();
    let (keys, keys_ready) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        tokio::join!(
            log_changes::<Agent>(client.clone(), agents),
            log_changes::<PlainVM>(client.clone(), vms),
            log_changes::<VirtualKey>(client, keys),
        );
    });
    // A local server answers at once; the deadline only keeps a broken one from blocking start.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = tokio::join!(agents_ready, vms_ready, keys_ready);
    })
    .await;
    task
}
