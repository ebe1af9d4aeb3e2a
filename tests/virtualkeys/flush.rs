//! `KeyCache::clear_namespace` outlasting the client's response deadline: it scans the whole
//! server, so a busy Redis can answer late. Played against a Redis of the test's own (the shared
//! one is never paused), frozen with SIGSTOP so the first attempts time out for certain.

use std::time::Duration;

use crabglamp_operator::cache::KeyCache;
use nix::sys::signal::Signal;

use super::private_redis::PrivateRedis;

#[tokio::test]
async fn a_flush_that_outlasts_the_response_deadline_is_retried_until_it_lands() {
    let redis = PrivateRedis::start().await;
    let cache = KeyCache::connect(&redis.url, "flush-test:").await.expect("connect");
    let mut raw = redis::Client::open(redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    for name in ["flush-test:a", "flush-test:b", "other:c"] {
        redis::cmd("SET").arg(name).arg("1").query_async::<()>(&mut raw).await.expect("seed a key");
    }

    // Frozen for three response deadlines (500 ms each): one attempt alone would fail.
    redis.signal(Signal::SIGSTOP);
    let paused = std::sync::Arc::new(redis);
    let resume = {
        let redis = paused.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            redis.signal(Signal::SIGCONT);
        })
    };
    let flushed = cache.clear_namespace().await;
    resume.await.expect("resume task");
    flushed.expect("the flush lands once Redis answers again");

    let left: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut raw).await.expect("list keys");
    assert_eq!(left, vec!["other:c".to_owned()], "the namespace is gone, the rest untouched");
}
