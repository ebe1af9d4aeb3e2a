//! The pause annotation holds Agents and PlainVMs, never a VirtualKey: a key's budget and expiry
//! are kept while it exists, so a key created with the annotation is issued and judged like any
//! other, and its status says the annotation has no effect. Its finalizer is the one keys have
//! always carried (a new name would leave the old one on existing keys for good).

use std::time::Duration;

use kube::api::PostParams;

use super::fixture::*;

const NS: &str = "keys";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_never_paused_and_keeps_its_finalizer() {
    let op = KeyOperator::start(Duration::from_secs(1), 500).await;
    op.create_namespace(NS).await;
    let api = op.keys(NS);
    let mut vk = virtual_key("held-paused", "acct_a", "1.00");
    vk.metadata.annotations = Some([("crabglamp.com/paused".to_owned(), "true".to_owned())].into());
    api.create(&PostParams::default(), &vk).await.expect("create");

    let issued = wait_for(&api, "held-paused", WAIT, "Ready", ready).await;
    assert_eq!(condition(&issued, "Paused"), Some(("False".into(), "NotPausable".into())));
    assert_eq!(
        issued.metadata.finalizers,
        Some(vec![crabglamp_operator::controllers::virtual_key::FINALIZER.to_owned()]),
        "the keys' own finalizer, alone"
    );
    let key = op.key_in_secret(NS, "held-paused-key").await;
    assert!(op.auth_entry(&key).await.is_some(), "published although annotated");

    // Spend past the budget blocks it, annotation or not.
    let uid = issued.metadata.uid.clone().expect("uid");
    op.spend(&uid, "llm", "gpt-4o", 1_000_000).await;
    wait_for(&api, "held-paused", WAIT, "blocked by the budget", blocked).await;
    op.stop().await;
}
