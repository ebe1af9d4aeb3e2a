//! Many keys converge, and an idle resync of all of them reads Redis in batches: its round
//! trips grow with N / batch size, not with N.

use std::time::Duration;

use crabglamp_operator::controllers::virtual_key;
use futures::StreamExt;
use kube::api::PostParams;

use super::fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_converge_and_an_idle_resync_is_batched() {
    let n: usize = std::env::var("CRABGLAMP_VK_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let batch = 100;
    let op = KeyOperator::start(Duration::from_secs(600), batch).await;
    op.create_namespace("scale").await;
    let api = op.keys("scale");
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &virtual_key(&format!("k{i}"), "acct_s", "10.00"))
                    .await
                    .expect("create");
            }
        })
        .await;
    let start = tokio::time::Instant::now();
    loop {
        let list = api.list(&Default::default()).await.expect("list");
        let ready_count = list.items.iter().filter(|v| ready(v)).count();
        if ready_count == n {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "only {ready_count} of {n} keys became Ready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The first refresh after issue sets every key's base marker (one MULTI per batch); the
    // next is idle: one read per batch and nothing else.
    virtual_key::refresh_spend(&op.context).await.expect("refresh");
    let idle = virtual_key::refresh_spend(&op.context).await.expect("idle refresh");
    assert_eq!(idle.keys, n);
    assert_eq!(idle.restored, 0);
    assert_eq!(idle.round_trips as usize, n.div_ceil(batch), "{idle:?}");
    op.stop().await;
}
