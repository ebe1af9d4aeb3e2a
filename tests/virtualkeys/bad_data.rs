//! One tenant's bad data in Redis stays that tenant's: a usage value that is not an integer, a
//! model name longer than the database holds, a usage name of the wrong type, a monthly counter
//! that is not a number, a usage hash so large that reading it outlasts the client's deadline.
//! Every other key is still judged and blocked on time, new keys are issued, deletions finish;
//! the bad key says in its status that its usage could not be read and keeps its last good spend.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use redis::AsyncCommands;

use super::fixture::*;
use super::private_redis::PrivateRedis;

const NS: &str = "keys";

async fn ready_key(op: &KeyOperator, name: &str, budget: &str) -> String {
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key(name, "acct_bad", budget)).await.expect("create");
    let vk = wait_for(&api, name, Duration::from_secs(30), "Ready", ready).await;
    vk.uid().expect("uid")
}

fn usage_read(v: &crabglamp_operator::api::virtual_key::VirtualKey) -> Option<(String, String)> {
    condition(v, "UsageRead")
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_usage_of_one_key_never_stops_the_others() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    let good = ready_key(&op, "good", "1.00").await;
    let field = ready_key(&op, "bad-field", "1.00").await;
    let counter = ready_key(&op, "bad-counter", "1.00").await;
    let typed = ready_key(&op, "bad-type", "1.00").await;
    ready_key(&op, "doomed", "1.00").await;

    // Spend before the data turns bad: the last good spend of the bad-counter key.
    op.spend(&counter, "llm", "gpt-4o", 400_000).await;
    wait_for(&api, "bad-counter", Duration::from_secs(30), "spend 0.40 seen", |v| {
        v.status.as_ref().and_then(|s| s.spend.as_ref()).is_some_and(|s| s.usd == "0.40")
    })
    .await;

    let mut r = op.redis.clone();
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let usage = |b: &str| format!("{}usage:{b}:{}", op.ns, today());
    // A value that is not an integer, and a model name longer than the database holds.
    let _: () = r.hset(usage(&field), "llm|gpt-4o|cost", "twelve").await.expect("HSET");
    op.spend(&field, "llm", &"m".repeat(200), 1000).await;
    let _: () = r.set(format!("{}spend:{counter}:{month}", op.ns), "NaN").await.expect("SET");
    let _: () = r.del(usage(&typed)).await.expect("DEL");
    let _: () = r.set(usage(&typed), "not a hash").await.expect("SET");

    // The good key spends its budget: blocked within a resync or two, as always.
    op.spend(&good, "llm", "gpt-4o", 1_000_000).await;
    wait_for(&api, "good", Duration::from_secs(15), "the good key blocked", blocked).await;
    let key = op.key_in_secret(NS, "good-key").await;
    assert_eq!(op.auth_entry(&key).await.expect("entry")["blocked"], true);

    // New keys are issued and deletions finish meanwhile.
    ready_key(&op, "fresh", "1.00").await;
    api.delete("doomed", &DeleteParams::default()).await.expect("delete");
    eventually(Duration::from_secs(30), "the deleted key is gone", || async {
        api.get_opt("doomed").await.expect("get").is_none().then_some(())
    })
    .await;

    // Each bad key says what could not be read; the good ones say all was.
    for (name, reason) in
        [("bad-field", "MalformedUsage"), ("bad-counter", "MalformedCounter"), ("bad-type", "WrongType")]
    {
        wait_for(&api, name, Duration::from_secs(15), &format!("{name}: UsageRead=False {reason}"), |v| {
            usage_read(v).is_some_and(|(s, r)| s == "False" && r == reason)
        })
        .await;
    }
    let bad_field = api.get("bad-field").await.expect("get");
    let message = bad_field.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "UsageRead"));
    assert!(message.is_some_and(|c| c.message.contains("ModelTooLong")), "{message:?}");
    wait_for(&api, "good", Duration::from_secs(15), "good: UsageRead=True", |v| {
        usage_read(v).is_some_and(|(s, _)| s == "True")
    })
    .await;
    // The bad counter's key keeps its last good spend (and is not unblocked or reset).
    let vk = api.get("bad-counter").await.expect("get");
    assert_eq!(vk.status.and_then(|s| s.spend).map(|s| s.usd), Some("0.40".into()));

    // Their good rows still reach PostgreSQL; the bad ones are counted, never stored.
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT model, cost_micros FROM virtual_key_spend_daily WHERE budget_id = $1 ORDER BY model")
            .bind(&field)
            .fetch_all(&op.db.pool)
            .await
            .expect("rows");
    assert!(rows.iter().all(|(m, _)| m.len() <= 128), "{rows:?}");
    let metrics = &op.context.metrics();
    for reason in ["MalformedUsage", "ModelTooLong", "MalformedCounter", "WrongType"] {
        assert!(metrics.refresh_failures(reason) > 0, "{reason} counted");
    }
    assert_eq!(metrics.refresh_failures("pass"), 0, "no pass failed as a whole");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_hash_that_outlasts_the_deadline_is_confined_to_its_key() {
    // A deadline well above a normal batch's answer (about a millisecond here) and well below
    // what half a million usage fields take to arrive (about half a second). On a Redis of its
    // own: each full read of that hash blocks Redis for everyone meanwhile.
    let redis = PrivateRedis::start().await;
    let op = KeyOperator::start_on(redis.url.clone(), Duration::from_secs(1), 500, |c| {
        c.redis_response_deadline = Duration::from_millis(150);
    })
    .await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    let good = ready_key(&op, "good", "1.00").await;
    let huge = ready_key(&op, "huge", "1.00").await;

    let mut r = op.redis.clone();
    let name = format!("{}usage:{huge}:{}", op.ns, today());
    for chunk in 0..500 {
        let mut pipe = redis::pipe();
        let fields: Vec<(String, i64)> = (0..1000).map(|i| (format!("llm|m{}|cost", chunk * 1000 + i), 1)).collect();
        pipe.cmd("HSET").arg(&name).arg(fields).ignore();
        let _: () = pipe.query_async(&mut r).await.expect("HSET");
    }

    // The huge key's spend still counts (its counter is read without the hash), and so does
    // every other key's.
    op.spend(&huge, "llm", "gpt-4o", 1_000_000).await;
    op.spend(&good, "llm", "gpt-4o", 1_000_000).await;
    wait_for(&api, "good", Duration::from_secs(30), "the good key blocked", blocked).await;
    wait_for(&api, "huge", Duration::from_secs(30), "the huge key blocked on its counter", blocked).await;
    wait_for(&api, "huge", Duration::from_secs(15), "huge: UsageRead=False ReadTimeout", |v| {
        usage_read(v).is_some_and(|(s, r)| s == "False" && r == "ReadTimeout")
    })
    .await;
    assert!(op.context.metrics().refresh_failures("ReadTimeout") > 0);
    assert_eq!(op.context.metrics().refresh_failures("pass"), 0, "no pass failed as a whole");
    op.stop().await;
    drop(redis);
}
