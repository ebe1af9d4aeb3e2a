//! The pause annotation holds a VirtualKey as it holds the other kinds: a key created paused is
//! not issued (no Secret, no key id, a `Paused` condition says why) until the annotation goes.

use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::fixture::*;

const NS: &str = "keys";
const WAIT: Duration = Duration::from_secs(30);

fn paused(v: &crabglamp_operator::api::VirtualKey) -> bool {
    condition(v, "Paused").is_some_and(|(s, _)| s == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_paused_is_issued_only_once_unpaused() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    let mut vk = virtual_key("held-paused", "acct_a", "1.00");
    vk.metadata.annotations = Some([("crabglamp.com/paused".to_owned(), "true".to_owned())].into());
    api.create(&PostParams::default(), &vk).await.expect("create");

    let held = wait_for(&api, "held-paused", WAIT, "Paused", paused).await;
    assert_eq!(condition(&held, "Paused"), Some(("True".into(), "PauseAnnotation".into())));
    let status = held.status.clone().unwrap_or_default();
    assert_eq!((status.key_id, status.secret_name), (None, None), "nothing issued while paused");
    assert!(
        op.secrets(NS).get_opt("held-paused-key").await.expect("read the Secret").is_none(),
        "no Secret while paused"
    );

    let unpause = json!({"metadata": {"annotations": {"crabglamp.com/paused": null}}});
    api.patch("held-paused", &PatchParams::default(), &Patch::Merge(&unpause)).await.expect("unpause");
    let issued = wait_for(&api, "held-paused", WAIT, "Ready", ready).await;
    assert_eq!(condition(&issued, "Paused"), None, "the condition goes with the annotation");
    let key = op.key_in_secret(NS, "held-paused-key").await;
    assert!(op.auth_entry(&key).await.is_some(), "published once unpaused");
    op.stop().await;
}
