//! `spec.secretName` changes are followed: the same key moves to the new Secret (no rotation,
//! no new key id, no audit event), the status says where it is, the old Secret is deleted after
//! the new one is written, and an Event says so (never the key). A name taken by a Secret this
//! VirtualKey does not own is refused in the status while the key keeps working from where it
//! is; a move found half done (the new Secret written, the old one not yet deleted) finishes
//! without a new key.

use std::time::Duration;

use crabglamp_operator::api::virtual_key::VirtualKey;
use crabglamp_operator::controllers::virtual_key::{KEY_ID_ANNOTATION, SECRET_DATA_KEY};
use crabglamp_operator::store::audit;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::fixture::*;

const NS: &str = "keys";
const WAIT: Duration = Duration::from_secs(30);

fn in_secret(v: &VirtualKey, name: &str) -> bool {
    v.status.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(name)
}

fn key_id(v: &VirtualKey) -> String {
    v.status.as_ref().and_then(|s| s.key_id.clone()).expect("key id")
}

async fn rename(op: &KeyOperator, name: &str, secret_name: &str) {
    let patch = json!({"spec": {"secretName": secret_name}});
    op.keys(NS).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("rename");
}

async fn gone(op: &KeyOperator, secret: &str) {
    let secrets = op.secrets(NS);
    eventually(WAIT, "the old Secret deleted", || {
        let secrets = secrets.clone();
        async move { secrets.get_opt(secret).await.expect("get secret").is_none().then_some(()) }
    })
    .await;
}

async fn audit_kinds(op: &KeyOperator, uid: &str) -> Vec<String> {
    audit::events_for_resource(&op.db.pool, uid).await.expect("audit events").into_iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_name_change_moves_the_same_key_and_a_taken_name_is_refused() {
    // A short resync: a settled key is looked at often, and still the move must be noticed.
    let op = KeyOperator::start(Duration::from_millis(300), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("mover", "acct_a", "1.00")).await.expect("create");
    let vk = wait_for(&api, "mover", WAIT, "Ready", ready).await;
    let uid = vk.metadata.uid.clone().expect("uid");
    let id = key_id(&vk);
    let key = op.key_in_secret(NS, "mover-key").await;
    let before = op.secrets(NS).get("mover-key").await.expect("secret");

    // The move: same key, same id, in the new Secret with the same annotations; the old one gone.
    rename(&op, "mover", "mover-moved").await;
    let vk = wait_for(&api, "mover", WAIT, "moved", |v| in_secret(v, "mover-moved") && ready(v)).await;
    assert_eq!(key_id(&vk), id, "no new key id");
    assert_eq!(op.key_in_secret(NS, "mover-moved").await, key, "the same key");
    let moved = op.secrets(NS).get("mover-moved").await.expect("new secret");
    assert_eq!(moved.metadata.annotations, before.metadata.annotations, "the same annotations");
    assert!(
        moved.metadata.owner_references.unwrap_or_default().iter().any(|o| o.uid == uid && o.controller == Some(true))
    );
    gone(&op, "mover-key").await;
    assert_eq!(op.auth_entry(&key).await.expect("still published")["keyId"], json!(id));
    assert_eq!(audit_kinds(&op, &uid).await, vec!["virtualkey.issued"], "a move is no rotation");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(op.client.clone(), NS);
    let moved_events = eventually(WAIT, "a Moved Event", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.expect("events").items;
            let moved: Vec<_> = list.into_iter().filter(|e| e.reason.as_deref() == Some("Moved")).collect();
            (!moved.is_empty()).then_some(moved)
        }
    })
    .await;
    let text = serde_json::to_string(&moved_events).expect("json");
    assert!(text.contains("mover-moved") && !text.contains(&key[4..]), "the Event names the Secret, not the key");

    // A name taken by a Secret this VirtualKey does not own: refused in the status, the key
    // stays where it is and its budget is still enforced.
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken"}, "stringData": {"note": "not the operator's"}
    }))
    .expect("secret");
    op.secrets(NS).create(&PostParams::default(), &foreign).await.expect("foreign secret");
    rename(&op, "mover", "taken").await;
    let vk = wait_for(&api, "mover", WAIT, "the move refused", |v| {
        condition(v, "Stalled") == Some(("True".into(), "SecretNameTaken".into()))
    })
    .await;
    assert!(in_secret(&vk, "mover-moved"), "the status says where the key still is");
    assert_eq!(key_id(&vk), id);
    op.spend(&uid, "llm", "gpt-4o", 1_000_000).await;
    wait_for(&api, "mover", WAIT, "blocked while the move is refused", blocked).await;
    assert_eq!(op.auth_entry(&key).await.expect("entry")["blocked"], json!(true));
    let untouched = op.secrets(NS).get("taken").await.expect("foreign secret");
    assert!(untouched.metadata.owner_references.is_none(), "the foreign Secret is not taken over");
    assert!(!untouched.data.unwrap_or_default().contains_key(SECRET_DATA_KEY));

    // The name freed: the move goes ahead, the refusal is gone, still the same key.
    op.secrets(NS).delete("taken", &DeleteParams::default()).await.expect("delete foreign");
    let vk = wait_for(&api, "mover", WAIT, "moved once the name is free", |v| {
        in_secret(v, "taken") && condition(v, "Stalled").is_none()
    })
    .await;
    assert_eq!(key_id(&vk), id);
    assert_eq!(op.key_in_secret(NS, "taken").await, key);
    gone(&op, "mover-moved").await;
    assert_eq!(audit_kinds(&op, &uid).await, vec!["virtualkey.issued"]);
    op.stop().await;
}

/// The state a crash between "new Secret written" and "old Secret deleted" leaves: both hold
/// the key, the status names the old one. The next reconcile only finishes the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_found_half_done_finishes_without_a_new_key() {
    let op = KeyOperator::start(Duration::from_millis(300), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("halfway", "acct_a", "5.00")).await.expect("create");
    let vk = wait_for(&api, "halfway", WAIT, "Ready", ready).await;
    let uid = vk.metadata.uid.clone().expect("uid");
    let id = key_id(&vk);
    let key = op.key_in_secret(NS, "halfway-key").await;

    // The new Secret as the move writes it: a copy, controlled by the VirtualKey.
    let old = op.secrets(NS).get("halfway-key").await.expect("secret");
    let mut copy = Secret::default();
    copy.metadata.name = Some("halfway-new".into());
    copy.metadata.labels = old.metadata.labels.clone();
    copy.metadata.annotations = old.metadata.annotations.clone();
    copy.metadata.owner_references = Some(vec![vk.controller_owner_ref(&()).expect("owner ref")]);
    copy.data = Some([(SECRET_DATA_KEY.to_owned(), ByteString(key.clone().into_bytes()))].into());
    op.secrets(NS).create(&PostParams::default(), &copy).await.expect("copy");
    assert_eq!(
        copy.metadata.annotations.as_ref().and_then(|a| a.get(KEY_ID_ANNOTATION)),
        Some(&id),
        "the copy holds the live key id"
    );

    rename(&op, "halfway", "halfway-new").await;
    let vk = wait_for(&api, "halfway", WAIT, "move finished", |v| in_secret(v, "halfway-new") && ready(v)).await;
    assert_eq!(key_id(&vk), id, "no new key");
    gone(&op, "halfway-key").await;
    assert_eq!(op.key_in_secret(NS, "halfway-new").await, key);
    assert!(op.auth_entry(&key).await.is_some());
    assert_eq!(audit_kinds(&op, &uid).await, vec!["virtualkey.issued"]);
    op.stop().await;
}
