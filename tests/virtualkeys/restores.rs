//! Redis losing data, or getting old data back, with several writers: a Redis restarted from
//! an older snapshot must not bring revoked keys back to life nor count spend twice, and two
//! writers restoring the same lost month (a stale leader and the new one) restore it once. A
//! writer of another shard or installation on the same database and Redis restores nothing of
//! this one's keys.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::fixture::*;
use crabglamp_operator::controllers::virtual_key;

const NS: &str = "keys";

async fn monthly_copy(op: &KeyOperator, budget: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT cost_micros FROM virtual_key_spend_monthly WHERE budget_id = $1")
        .bind(budget)
        .fetch_optional(&op.db.pool)
        .await
        .expect("monthly copy")
}

async fn copied(op: &KeyOperator, budget: &str, micros: i64) {
    eventually(Duration::from_secs(15), &format!("{micros} copied to PostgreSQL"), || async {
        (monthly_copy(op, budget).await == Some(micros)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_stay_revoked_after_redis_is_restored_from_an_older_snapshot() {
    revoked_keys_restored_are_swept(Duration::from_secs(1), Duration::from_secs(5)).await;
}

/// The restore is noticed between passes (the removal counter went back): the revoked keys'
/// entries go, and the live key's comes back, within a few fast polls, long before the next
/// pass (a resync of a minute never comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_swept_at_once_not_a_resync_later() {
    revoked_keys_restored_are_swept(Duration::from_secs(60), Duration::from_secs(3)).await;
}

/// Two keys revoked (one rotated away, one deleted) after a snapshot; Redis comes back from
/// it; both entries must be gone again `within` (the resync is `resync`).
async fn revoked_keys_restored_are_swept(resync: Duration, within: Duration) {
    let op = KeyOperator::start(resync, 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    for name in ["rotated", "deleted"] {
        api.create(&PostParams::default(), &virtual_key(name, "acct_r", "5.00")).await.expect("create");
        wait_for(&api, name, Duration::from_secs(30), "Ready", ready).await;
    }
    let old_rotated = op.key_in_secret(NS, "rotated-key").await;
    let deleted = op.key_in_secret(NS, "deleted-key").await;
    let snapshot = op.snapshot().await;
    assert!(op.auth_entry(&old_rotated).await.is_some() && op.auth_entry(&deleted).await.is_some());

    // Rotated (no grace) and deleted after the snapshot: both entries leave Redis.
    api.patch("rotated", &PatchParams::default(), &Patch::Merge(json!({"spec": {"rotationToken": "r1"}})))
        .await
        .expect("rotate");
    wait_for(&api, "rotated", Duration::from_secs(30), "rotated", |v| {
        v.status.as_ref().and_then(|s| s.rotation_token.as_deref()) == Some("r1") && ready(v)
    })
    .await;
    api.delete("deleted", &DeleteParams::default()).await.expect("delete");
    eventually(Duration::from_secs(30), "deleted", || async {
        api.get_opt("deleted").await.expect("get").is_none().then_some(())
    })
    .await;
    assert!(op.auth_entry(&old_rotated).await.is_none() && op.auth_entry(&deleted).await.is_none());

    // Redis comes back from the snapshot: both revoked keys would authenticate again.
    op.restore(&snapshot).await;
    assert!(op.auth_entry(&old_rotated).await.is_some(), "the snapshot brought the entry back");
    eventually(within, "revoked entries removed again", || async {
        (op.auth_entry(&old_rotated).await.is_none() && op.auth_entry(&deleted).await.is_none()).then_some(())
    })
    .await;
    // The live key is published again (the snapshot held its predecessor only).
    let new_rotated = op.key_in_secret(NS, "rotated-key").await;
    eventually(Duration::from_secs(10), "the live key re-published", || async {
        op.auth_entry(&new_rotated).await.map(|_| ())
    })
    .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_snapshot_raises_spend_to_what_was_copied_and_never_above() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("spender", "acct_r", "5.00")).await.expect("create");
    let uid = wait_for(&api, "spender", Duration::from_secs(30), "Ready", ready).await.uid().expect("uid");
    op.spend(&uid, "llm", "gpt-4o", 300_000).await;
    copied(&op, &uid, 300_000).await;
    let snapshot = op.snapshot().await;
    op.spend(&uid, "llm", "gpt-4o", 200_000).await;
    copied(&op, &uid, 500_000).await;

    // Back to 0.30 with its marker: adding PostgreSQL's 0.50 would make 0.80.
    op.restore(&snapshot).await;
    eventually(Duration::from_secs(10), "the counter raised to 0.50", || async {
        (op.month_counter(&uid).await == Some(500_000)).then_some(())
    })
    .await;
    // Several more passes change nothing.
    for _ in 0..3 {
        virtual_key::refresh_spend(&op.context).await.expect("refresh");
    }
    assert_eq!(op.month_counter(&uid).await, Some(500_000));
    assert_eq!(monthly_copy(&op, &uid).await, Some(500_000));
    op.stop().await;
}

/// The chaos suite's find: a snapshot taken between a flush and the restore holds a counter
/// without its marker, which PostgreSQL copies afterwards; restored, it looks like a fresh loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_before_the_marker_was_set_is_not_counted_twice() {
    let op = KeyOperator::start(Duration::from_secs(600), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("unmarked", "acct_r", "5.00")).await.expect("create");
    let uid = wait_for(&api, "unmarked", Duration::from_secs(30), "Ready", ready).await.uid().expect("uid");
    virtual_key::refresh_spend(&op.context).await.expect("refresh");
    op.flush().await;
    op.spend(&uid, "llm", "gpt-4o", 236_552).await;
    let snapshot = op.snapshot().await;
    virtual_key::refresh_spend(&op.context).await.expect("refresh after the flush");
    assert_eq!(monthly_copy(&op, &uid).await, Some(236_552));
    op.restore(&snapshot).await;
    for _ in 0..3 {
        virtual_key::refresh_spend(&op.context).await.expect("refresh after the restore");
        assert_eq!(op.month_counter(&uid).await, Some(236_552), "never above what was recorded");
    }
    assert_eq!(monthly_copy(&op, &uid).await, Some(236_552));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_restoring_a_flushed_month_restore_it_once() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("shared", "acct_r", "5.00")).await.expect("create");
    let uid = wait_for(&api, "shared", Duration::from_secs(30), "Ready", ready).await.uid().expect("uid");
    op.spend(&uid, "llm", "gpt-4o", 300_000).await;
    copied(&op, &uid, 300_000).await;

    // A stale leader of the same installation, and the operator itself, both find the month
    // lost and restore it at the same moment (besides the operator's own refresher).
    let stale = op.other_writer(|_| {}).await;
    for round in 0..5 {
        op.flush().await;
        let (a, b) = tokio::join!(virtual_key::refresh_spend(&op.context), virtual_key::refresh_spend(&stale));
        a.expect("refresh");
        b.expect("stale refresh");
        assert_eq!(op.month_counter(&uid).await, Some(300_000), "round {round}: restored once");
    }
    assert_eq!(monthly_copy(&op, &uid).await, Some(300_000));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_of_another_shard_restores_none_of_this_ones_keys() {
    let op = KeyOperator::start(Duration::from_secs(600), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("mine", "acct_r", "5.00")).await.expect("create");
    let uid = wait_for(&api, "mine", Duration::from_secs(30), "Ready", ready).await.uid().expect("uid");
    op.spend(&uid, "llm", "gpt-4o", 300_000).await;
    virtual_key::refresh_spend(&op.context).await.expect("refresh");
    assert_eq!(monthly_copy(&op, &uid).await, Some(300_000));

    let other = op.other_writer(|c| c.shard = Some("other".into())).await;
    op.flush().await;
    let stats = virtual_key::refresh_spend(&other).await.expect("the other shard's refresh");
    assert_eq!((stats.keys, stats.restored), (0, 0), "{stats:?}");
    assert_eq!(op.month_counter(&uid).await, None, "the other shard left this one's month alone");
    let own = virtual_key::refresh_spend(&op.context).await.expect("refresh");
    assert_eq!((own.keys, own.restored), (1, 1), "{own:?}");
    assert_eq!(op.month_counter(&uid).await, Some(300_000));
    op.stop().await;
}
