//! One key through its life: issued into a Secret and published; spend past the budget blocks
//! it within a resync; a Redis flush re-publishes it and restores its spend (still blocked); a
//! raised budget unblocks it; rotation, owner change and delete each leave one audit event; an
//! expiring key is blocked at its expiry time. The plaintext keys are in none of status,
//! Events, logs or PostgreSQL.

use std::time::Duration;

use crabglamp_operator::store::{audit, keys};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::fixture::*;

const NS: &str = "keys";
const WAIT: Duration = Duration::from_secs(30);

async fn audit_kinds(op: &KeyOperator, uid: &str) -> Vec<String> {
    audit::events_for_resource(&op.db.pool, uid).await.expect("audit events").into_iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_block_flush_unblock_rotate_transfer_delete() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("team-a", "acct_a", "1.00")).await.expect("create");
    let vk = wait_for(&api, "team-a", WAIT, "Ready", ready).await;
    let uid = vk.metadata.uid.clone().expect("uid");
    let status = vk.status.clone().expect("status");
    assert_eq!(status.secret_name.as_deref(), Some("team-a-key"));
    assert_eq!(status.blocked, Some(false));

    // The Secret holds a key whose SHA-256 is in PostgreSQL and, as the contract says, in Redis.
    let first_key = op.key_in_secret(NS, "team-a-key").await;
    assert!(first_key.starts_with("cgk_") && first_key.len() == 47, "a 256-bit key with its prefix");
    assert_eq!(status.prefix.as_deref(), Some(&first_key[..12]));
    let key_id = status.key_id.clone().expect("key id");
    let row = keys::get(&op.db.pool, &key_id).await.expect("row").expect("present");
    assert_eq!(row.key_sha256, keys::key_sha256(&first_key).to_vec());
    let entry = op.auth_entry(&first_key).await.expect("auth entry published");
    assert_eq!(
        entry,
        json!({"v": 1, "keyId": key_id, "budgetId": uid, "owner": "acct_a", "models": ["gpt-4o*"],
               "rateLimitRpm": 60, "expiresAt": null, "blocked": false, "blockedReason": null})
    );

    // The proxy spends past the budget: blocked within a resync, and the condition says why.
    op.spend(&uid, "llm", "gpt-4o", 700_000).await;
    op.spend(&uid, "tts", "tts-1", 300_000).await;
    let vk = wait_for(&api, "team-a", WAIT, "blocked by the budget", blocked).await;
    assert_eq!(condition(&vk, "BudgetExceeded"), Some(("True".into(), "BudgetReached".into())));
    assert_eq!(condition(&vk, "Ready"), Some(("False".into(), "BudgetExceeded".into())));
    assert_eq!(vk.status.as_ref().and_then(|s| s.spend.as_ref()).map(|s| s.usd.as_str()), Some("1.00"));
    let entry = op.auth_entry(&first_key).await.expect("entry");
    assert_eq!((entry["blocked"].clone(), entry["blockedReason"].clone()), (json!(true), json!("BudgetExceeded")));

    // The daily aggregates reach PostgreSQL (per surface and model).
    let pool = op.db.pool.clone();
    let uid2 = uid.clone();
    eventually(WAIT, "aggregates copied", || {
        let pool = pool.clone();
        let uid = uid2.clone();
        async move {
            let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
                "SELECT surface, model, cost_micros, requests FROM virtual_key_spend_daily WHERE budget_id = $1 ORDER BY surface",
            )
            .bind(&uid)
            .fetch_all(&pool)
            .await
            .expect("aggregates");
            (rows == vec![("llm".into(), "gpt-4o".into(), 700_000, 1), ("tts".into(), "tts-1".into(), 300_000, 1)])
                .then_some(())
        }
    })
    .await;

    // Redis loses everything: the entry comes back, the spend is restored, still blocked.
    op.flush().await;
    assert!(op.auth_entry(&first_key).await.is_none());
    eventually(WAIT, "re-published and restored", || async {
        let entry = op.auth_entry(&first_key).await?;
        (entry["blocked"] == json!(true) && op.month_counter(&uid).await == Some(1_000_000)).then_some(())
    })
    .await;
    assert!(blocked(&api.get("team-a").await.expect("get")), "a flush does not unblock");

    // A raised budget lifts the block.
    let patch = json!({"spec": {"budget": {"monthlyUsd": "5.00"}}});
    api.patch("team-a", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("raise budget");
    wait_for(&api, "team-a", WAIT, "unblocked", |v| ready(v) && !blocked(v)).await;
    assert_eq!(op.auth_entry(&first_key).await.expect("entry")["blocked"], json!(false));

    // Rotation: a new key in the Secret, the new hash live, the old one gone, spend kept.
    let patch = json!({"spec": {"rotationToken": "2026-12"}});
    api.patch("team-a", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("rotate");
    let vk = wait_for(&api, "team-a", WAIT, "rotated", |v| {
        ready(v) && v.status.as_ref().and_then(|s| s.key_id.as_deref()) != Some(key_id.as_str())
    })
    .await;
    let second_key = op.key_in_secret(NS, "team-a-key").await;
    assert_ne!(second_key, first_key);
    assert!(op.auth_entry(&first_key).await.is_none(), "the old hash is gone");
    assert_eq!(op.auth_entry(&second_key).await.expect("new entry")["budgetId"], json!(uid));
    assert!(keys::get(&op.db.pool, &key_id).await.expect("row").expect("old row").revoked_at.is_some());
    assert_eq!(vk.status.as_ref().and_then(|s| s.spend.as_ref()).map(|s| s.usd.as_str()), Some("1.00"));

    // Owner change: PostgreSQL and Redis follow, one transfer event.
    let patch = json!({"spec": {"owner": "acct_b"}});
    api.patch("team-a", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("transfer");
    eventually(WAIT, "owner in Redis", || async {
        (op.auth_entry(&second_key).await?["owner"] == json!("acct_b")).then_some(())
    })
    .await;
    let events_so_far = audit_kinds(&op, &uid).await;
    assert_eq!(events_so_far, vec!["virtualkey.issued", "virtualkey.rotated", "virtualkey.transferred"]);

    // Delete: no Redis entry, row revoked, one revoke event, the object gone.
    api.delete("team-a", &DeleteParams::default()).await.expect("delete");
    eventually(WAIT, "object gone", || async { api.get_opt("team-a").await.expect("get").is_none().then_some(()) })
        .await;
    assert!(op.auth_entry(&second_key).await.is_none());
    let second_id = vk.status.as_ref().and_then(|s| s.key_id.clone()).expect("id");
    assert!(keys::get(&op.db.pool, &second_id).await.expect("row").expect("row").revoked_at.is_some());
    let kinds = audit_kinds(&op, &uid).await;
    assert_eq!(kinds.iter().filter(|k| *k == "virtualkey.revoked").count(), 1, "{kinds:?}");

    // The plaintext keys are nowhere but in the Secret (gone now).
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(op.client.clone(), NS);
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.expect("events").items).expect("json");
    assert!(events.contains("Rotated"), "the Events were listed");
    let status = serde_json::to_string(&vk.status).expect("json");
    let logs = captured_logs();
    let database: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(k)::text FROM virtual_keys k UNION ALL SELECT row_to_json(a)::text FROM audit_events a
         UNION ALL SELECT row_to_json(s)::text FROM virtual_key_spend_daily s",
    )
    .fetch_all(&op.db.pool)
    .await
    .expect("dump");
    let database = database.join("\n");
    assert!(database.contains(&second_id), "the dump has the rows");
    for key in [&first_key, &second_key] {
        let body = &key[4..];
        assert!(!logs.contains(body), "a key is in the logs");
        assert!(!events.contains(body), "a key is in an Event");
        assert!(!status.contains(body), "a key is in the status");
        assert!(!database.contains(body), "a key is in PostgreSQL");
    }
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_blocked_at_its_expiry_time_not_a_resync_later() {
    // A resync far longer than the test: only the requeue for the expiry can block it in time.
    let op = KeyOperator::start(Duration::from_secs(300), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    let expires = chrono::Utc::now() + chrono::Duration::seconds(4);
    let mut vk = virtual_key("short", "acct_a", "10.00");
    vk.spec.expires_at = Some(expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    api.create(&PostParams::default(), &vk).await.expect("create");
    wait_for(&api, "short", WAIT, "Ready", ready).await;
    let vk = wait_for(&api, "short", Duration::from_secs(10), "expired", blocked).await;
    let late = chrono::Utc::now() - expires;
    assert!(late < chrono::Duration::seconds(3), "blocked {late} after the expiry time");
    assert_eq!(condition(&vk, "Expired"), Some(("True".into(), "Expired".into())));
    let key = op.key_in_secret(NS, "short-key").await;
    assert_eq!(op.auth_entry(&key).await.expect("entry")["blockedReason"], json!("Expired"));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_with_grace_keeps_the_old_key_working_until_the_grace_is_over() {
    let op = KeyOperator::start(Duration::from_secs(300), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    let mut vk = virtual_key("graceful", "acct_a", "10.00");
    vk.spec.rotation_grace_seconds = Some(3);
    api.create(&PostParams::default(), &vk).await.expect("create");
    let first = wait_for(&api, "graceful", WAIT, "Ready", ready).await;
    let first_id = first.status.and_then(|s| s.key_id).expect("key id");
    let old_key = op.key_in_secret(NS, "graceful-key").await;
    let patch = json!({"spec": {"rotationToken": "next"}});
    api.patch("graceful", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("rotate");
    wait_for(&api, "graceful", WAIT, "rotated", |v| {
        ready(v) && v.status.as_ref().and_then(|s| s.key_id.as_deref()).is_some_and(|id| id != first_id)
    })
    .await;
    let rotated_at = tokio::time::Instant::now();
    let new_key = op.key_in_secret(NS, "graceful-key").await;
    assert!(op.auth_entry(&new_key).await.is_some(), "the new key is live");
    assert!(op.auth_entry(&old_key).await.is_some(), "the old key works during the grace period");
    eventually(Duration::from_secs(10), "old key removed after the grace", || async {
        op.auth_entry(&old_key).await.is_none().then_some(())
    })
    .await;
    assert!(rotated_at.elapsed() >= Duration::from_secs(2), "not removed before the grace period ended");
    assert!(op.auth_entry(&new_key).await.is_some());
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_counter_raised_by_hand_survives_a_flush() {
    use redis::AsyncCommands;
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("by-hand", "acct_a", "2.00")).await.expect("create");
    let vk = wait_for(&api, "by-hand", WAIT, "Ready", ready).await;
    let uid = vk.metadata.uid.clone().expect("uid");
    // The acceptance check's `INCRBY` of the documented counter, no per-model fields.
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let mut r = op.redis.clone();
    let _: i64 = r.incr(format!("{}spend:{uid}:{month}", op.ns), 3_000_000).await.expect("INCRBY");
    wait_for(&api, "by-hand", WAIT, "blocked", blocked).await;
    let pool = op.db.pool.clone();
    eventually(WAIT, "monthly total in PostgreSQL", || {
        let pool = pool.clone();
        let uid = uid.clone();
        async move {
            let total: Option<i64> =
                sqlx::query_scalar("SELECT cost_micros FROM virtual_key_spend_monthly WHERE budget_id = $1")
                    .bind(&uid)
                    .fetch_optional(&pool)
                    .await
                    .expect("monthly");
            (total == Some(3_000_000)).then_some(())
        }
    })
    .await;
    op.flush().await;
    let key = op.key_in_secret(NS, "by-hand-key").await;
    eventually(WAIT, "re-published blocked", || async {
        (op.auth_entry(&key).await?["blocked"] == json!(true)).then_some(())
    })
    .await;
    assert_eq!(op.month_counter(&uid).await, Some(3_000_000));
    assert!(blocked(&api.get("by-hand").await.expect("get")), "a flush does not unblock");
    op.stop().await;
}

/// A VirtualKey in a namespace the operator does not serve (`--virtual-key-namespaces`, where the
/// chart grants Secrets) is told so in its status and gets no Secret: the operator never asks for
/// one there (on the real server it has no right to: a request would be a 403 in the audit log).
/// Deleting it is not held up by the finalizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_outside_the_served_namespaces_gets_no_secret_and_says_why() {
    const ELSEWHERE: &str = "not-served";
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    assert!(!crate::kube_server::VIRTUAL_KEY_NAMESPACES.contains(&ELSEWHERE));
    op.create_namespace(ELSEWHERE).await;
    op.create_namespace(NS).await;
    let outside = op.keys(ELSEWHERE);
    outside.create(&PostParams::default(), &virtual_key("stray", "acct_a", "1.00")).await.expect("create");
    // A served one beside it, issued as usual.
    op.keys(NS).create(&PostParams::default(), &virtual_key("served", "acct_a", "1.00")).await.expect("create");
    wait_for(&op.keys(NS), "served", WAIT, "Ready", ready).await;
    let vk = wait_for(&outside, "stray", WAIT, "NamespaceNotServed", |v| {
        condition(v, "Ready") == Some(("False".into(), "NamespaceNotServed".into()))
            && condition(v, "Stalled") == Some(("True".into(), "NamespaceNotServed".into()))
    })
    .await;
    let message =
        vk.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).map(|c| c.message.clone());
    assert!(
        message.is_some_and(|m| m.contains(NS) && m.contains("virtualKeys.namespaces")),
        "the message says where keys are served"
    );
    assert_eq!(vk.status.as_ref().and_then(|s| s.key_id.clone()), None, "no key issued");
    assert!(op.secrets(ELSEWHERE).get_opt("stray-key").await.expect("get secret").is_none(), "no Secret made");
    let keys_of_stray = keys::live_for_resource(&op.db.pool, vk.metadata.uid.as_deref().expect("uid")).await;
    assert!(keys_of_stray.expect("read keys").is_none(), "no key recorded");
    outside.delete("stray", &DeleteParams::default()).await.expect("delete");
    eventually(WAIT, "the stray VirtualKey gone", || {
        let outside = outside.clone();
        async move { outside.get_opt("stray").await.expect("get").is_none().then_some(()) }
    })
    .await;
    if crate::kube_server::real() {
        let refused: Vec<String> = op
            ._kube
            .audit_events()
            .into_iter()
            .filter(|e| e.user.username == crate::kube_server::OPERATOR_USER && e.code() == 403)
            .map(|e| format!("{} {}", e.verb, e.request_u_r_i))
            .collect();
        assert!(refused.is_empty(), "the real authorizer refused the operator: {refused:#?}");
    }
    op.stop().await;
}
