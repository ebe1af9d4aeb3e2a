//! A key rotated away with a grace period is still honoured by the proxy until the grace ends:
//! its auth entry must never be laxer than the new key's. It carries the new key's terms and
//! block (only `keyId` differs; `budgetId` is the same, so either key's spend counts against one
//! budget), follows them when they change during the grace, and comes back as it should when
//! Redis lost or altered it.

use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use redis::AsyncCommands;
use serde_json::{Value, json};

use super::fixture::*;

const NS: &str = "keys";
const WAIT: Duration = Duration::from_secs(30);

/// The entry with its `keyId` replaced, to compare an old key's entry with the new one's.
fn with_key_id(mut entry: Value, key_id: &str) -> Value {
    entry["keyId"] = json!(key_id);
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_its_rotation_grace_follows_the_new_terms_and_the_budget() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    let mut vk = virtual_key("graced", "acct_a", "1.00");
    // Far longer than the test: the old key stays honoured throughout.
    vk.spec.rotation_grace_seconds = Some(3600);
    api.create(&PostParams::default(), &vk).await.expect("create");
    let first = wait_for(&api, "graced", WAIT, "Ready", ready).await;
    let uid = first.metadata.uid.clone().expect("uid");
    let old_id = first.status.and_then(|s| s.key_id).expect("key id");
    let old_key = op.key_in_secret(NS, "graced-key").await;

    let patch = json!({"spec": {"rotationToken": "next"}});
    api.patch("graced", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("rotate");
    let rotated = wait_for(&api, "graced", WAIT, "rotated", |v| {
        ready(v) && v.status.as_ref().and_then(|s| s.key_id.as_deref()).is_some_and(|id| id != old_id)
    })
    .await;
    let new_id = rotated.status.and_then(|s| s.key_id).expect("key id");
    let new_key = op.key_in_secret(NS, "graced-key").await;
    assert_ne!(new_key, old_key);

    // Both keys always carry the same terms and block: only the key id differs.
    let in_step = |what: &'static str, check: fn(&Value) -> bool| {
        let (op, old_key, new_key, old_id, new_id) = (&op, &old_key, &new_key, &old_id, &new_id);
        eventually(WAIT, what, move || async move {
            let new = op.auth_entry(new_key).await?;
            let old = op.auth_entry(old_key).await?;
            (check(&new) && old == with_key_id(new.clone(), old_id) && new["keyId"] == json!(new_id)).then_some(new)
        })
    };
    let entry = in_step("the old entry has the new key's terms", |_| true).await;
    assert_eq!(entry["budgetId"], json!(uid), "one budget for both keys");

    // The terms change during the grace: the old entry follows.
    let patch = json!({"spec": {"owner": "acct_b", "models": ["claude-*"], "rateLimit": {"requestsPerMinute": 7},
                                "expiresAt": "2099-01-01T00:00:00Z"}});
    api.patch("graced", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("new terms");
    let entry = in_step("the old entry follows the new terms", |e| {
        e["owner"] == json!("acct_b") && e["models"] == json!(["claude-*"]) && e["rateLimitRpm"] == json!(7)
    })
    .await;
    assert_eq!(entry["expiresAt"], json!("2099-01-01T00:00:00Z"));

    // The budget spent (by either key: one budget): both are blocked.
    op.spend(&uid, "llm", "claude-3", 1_000_000).await;
    wait_for(&api, "graced", WAIT, "blocked by the budget", blocked).await;
    in_step("both keys blocked", |e| e["blocked"] == json!(true) && e["blockedReason"] == json!("BudgetExceeded"))
        .await;

    // Redis loses the old entry, then holds a laxer one: either way it is back within a resync.
    let old_name = format!("{}auth:{}", op.ns, hex::encode(crabglamp_operator::store::keys::key_sha256(&old_key)));
    let mut r = op.redis.clone();
    let _: () = r.del(&old_name).await.expect("DEL");
    in_step("the lost old entry is back, blocked", |e| e["blocked"] == json!(true)).await;
    let laxer = with_key_id(
        json!({"v": 1, "budgetId": uid, "owner": "acct_b", "models": ["*"], "rateLimitRpm": null,
                                   "expiresAt": null, "blocked": false, "blockedReason": null}),
        &old_id,
    );
    let _: () = r.set(&old_name, laxer.to_string()).await.expect("SET");
    in_step("the altered old entry is put right", |e| e["blocked"] == json!(true)).await;

    // Nothing changes any more: reconciles compare (one MGET) and write nothing.
    reconciles_pass(&op, 1).await;
    let publishes = op.context.metrics().steps("VirtualKey", "publish");
    reconciles_pass(&op, 3).await;
    assert_eq!(op.context.metrics().steps("VirtualKey", "publish"), publishes, "an idle resync writes nothing");
    op.stop().await;
}

/// Waits for `more` successful reconciles of VirtualKeys after now (a resync reconciles every key).
async fn reconciles_pass(op: &KeyOperator, more: u64) {
    let target = op.context.metrics().reconciles("VirtualKey", "ok") + more;
    eventually(WAIT, "more reconciles", || async {
        (op.context.metrics().reconciles("VirtualKey", "ok") >= target).then_some(())
    })
    .await;
}
