//! A settled key's reconciles do not read its Secret: the Secrets' metadata watch tells that it
//! has not changed since its key was checked. A key replaced behind the operator's back is
//! still found (the watch delivers the edit, the Secret is read again) and replaced by a new one.

use std::time::Duration;

use crabglamp_operator::controllers::virtual_key::SECRET_DATA_KEY;
use crabglamp_operator::store::keys;
use k8s_openapi::ByteString;
use kube::api::PostParams;

use super::fixture::*;

const NS: &str = "reads";
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "team-r-key";

fn secret_gets(op: &KeyOperator) -> usize {
    let path = format!("/api/v1/namespaces/{NS}/secrets/{SECRET}");
    op._kube.gets_of(&path)
}

/// Waits for `more` reconciles of VirtualKeys after now (a resync reconciles every key).
async fn reconciles_pass(op: &KeyOperator, more: u64) {
    let target = op.context.metrics().reconciles("VirtualKey", "ok") + more;
    eventually(WAIT, "more reconciles", || async {
        (op.context.metrics().reconciles("VirtualKey", "ok") >= target).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_keys_are_not_read_again_and_an_edited_secret_is() {
    let op = KeyOperator::start(Duration::from_millis(300), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    api.create(&PostParams::default(), &virtual_key("team-r", "acct_a", "1.00")).await.expect("create");
    let vk = wait_for(&api, "team-r", WAIT, "Ready", ready).await;
    let first_id = vk.status.and_then(|s| s.key_id).expect("key id");

    // Settled: once its own write came back through the watch, resyncs read nothing.
    reconciles_pass(&op, 3).await;
    let gets = secret_gets(&op);
    reconciles_pass(&op, 4).await;
    assert_eq!(secret_gets(&op), gets, "reconciles of a settled key read its Secret");

    // Someone puts another key into the Secret under the same key id: the edit is seen, the
    // Secret read, and a new key issued (the planted one never matches the recorded hash).
    let secrets = op.secrets(NS);
    let mut secret = secrets.get(SECRET).await.expect("secret");
    let planted = format!("cgk_{}", "A".repeat(43));
    secret.data = Some([(SECRET_DATA_KEY.to_owned(), ByteString(planted.clone().into_bytes()))].into());
    secrets.replace(SECRET, &PostParams::default(), &secret).await.expect("replace");
    let vk = wait_for(&api, "team-r", WAIT, "a new key after the edit", |v| {
        v.status.as_ref().and_then(|s| s.key_id.as_ref()).is_some_and(|id| *id != first_id) && ready(v)
    })
    .await;
    assert!(secret_gets(&op) > gets, "the edited Secret was read");
    let now_held = op.key_in_secret(NS, SECRET).await;
    assert_ne!(now_held, planted, "the planted key was replaced");
    let key_id = vk.status.and_then(|s| s.key_id).expect("key id");
    let row = keys::get(&op.db.pool, &key_id).await.expect("row").expect("present");
    assert_eq!(row.key_sha256, keys::key_sha256(&now_held).to_vec());
    op.stop().await;
}
