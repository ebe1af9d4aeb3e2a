//! The anchor outside the database: the operator publishes it after its own appends; `audit
//! verify` (the real binary) passes an untouched trail, notes a lagging anchor, and fails with
//! its own message on a deleted tail (triggers bypassed by a superuser), a chain rewritten
//! consistently from some row on, and a forged anchor. Two writers never move it backwards, and
//! ten that keep overtaking each other never fail.

use std::time::Duration;

use crabglamp_operator::audit_anchor::{self, Location, Outcome, PublishError, Published};
use crabglamp_operator::store::anchor::Anchor;
use crabglamp_operator::store::audit;
use crabglamp_operator::store::seal::SealingKeys;
use crabglamp_sandbox::kube::RunningKube;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use sqlx::PgPool;

use super::support::*;
use crate::db::TestDb;
use crate::fixture::{Operator, agent, ready, wait_for, wait_gone};

const DEADLINE: Duration = Duration::from_secs(60);

/// A database, an API server and the anchor's place, without an operator: each test makes the
/// appends and publishes itself. The API server runs on the test's runtime, and the CLI is
/// awaited with a blocking call: these tests need more than one worker thread.
struct Setup {
    db: TestDb,
    _kube: RunningKube,
    api: Api<ConfigMap>,
    location: Location,
    keys: SealingKeys,
    kubeconfig: tempfile::NamedTempFile,
}

impl Setup {
    async fn new() -> Setup {
        crate::logs::install();
        let kube = crabglamp_sandbox::kube::spawn_loopback().await.expect("API server starts");
        let client = kube.client().expect("client");
        let location = Location::resolve(&client, None, None);
        assert_eq!(location.to_string(), "ConfigMap default/crabglamp-audit-anchor");
        let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(kubeconfig.path(), kube.kubeconfig_yaml()).expect("write kubeconfig");
        Setup {
            db: TestDb::fresh().await,
            api: location.api(client),
            _kube: kube,
            location,
            keys: SealingKeys::new(FIXTURE_KEY_ID, FIXTURE_KEY, &[]).expect("key"),
            kubeconfig,
        }
    }

    async fn append(&self, uids: std::ops::Range<u32>) {
        for i in uids {
            audit::append(&self.db.pool, &destroyed(&format!("uid-{i}"))).await.expect("append");
        }
    }

    async fn publish(&self) -> Result<Published, PublishError> {
        audit_anchor::publish(&self.api, &self.location, &self.db.pool, &self.keys).await
    }

    async fn anchor(&self) -> Anchor {
        anchored(&self.api, &self.location).await.expect("an anchor exists")
    }

    /// `audit verify` of the real binary, with the sealing key and the kubeconfig.
    fn verify_cli(&self, extra: &[&str]) -> (i32, String) {
        let kubeconfig = self.kubeconfig.path().to_str().expect("utf-8 path");
        let out = cli()
            .args(["audit", "verify", "--database-url", &self.db.url, "--kubeconfig", kubeconfig])
            .args(extra)
            .env("CRABGLAMP_SEALING_KEY", FIXTURE_KEY)
            .env("CRABGLAMP_SEALING_KEY_ID", FIXTURE_KEY_ID)
            .output()
            .expect("run audit verify");
        let (stdout, stderr) = text(&out);
        assert!(!stdout.contains(FIXTURE_KEY) && !stderr.contains(FIXTURE_KEY), "the key is never printed");
        (out.status.code().expect("exit code"), format!("{stdout}{stderr}"))
    }
}

async fn anchored(api: &Api<ConfigMap>, location: &Location) -> Option<Anchor> {
    let stored = audit_anchor::read(api, location).await.expect("read the anchor");
    stored.map(|s| s.anchor.expect("the anchor parses"))
}

/// Waits until the anchor vouches for event `seq`.
async fn wait_anchored(api: &Api<ConfigMap>, location: &Location, seq: i64) -> Anchor {
    let start = tokio::time::Instant::now();
    loop {
        let last = anchored(api, location).await;
        if let Some(a) = last.as_ref().filter(|a| a.seq == seq) {
            return a.clone();
        }
        assert!(start.elapsed() < DEADLINE, "anchor at event {seq} not reached within {DEADLINE:?}; last: {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What an attacker with superuser access does: bypass the triggers, change event `from`, and
/// recompute every hash from there on so that the chain verifies again.
async fn rewrite_chain_from(pool: &PgPool, from: i64) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.expect("bypass triggers");
    let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_events").fetch_one(&mut *tx).await.expect("max");
    let mut prev: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = $1")
        .bind(from - 1)
        .fetch_one(&mut *tx)
        .await
        .expect("hash before");
    for seq in from..=last {
        let uid: String = sqlx::query_scalar("SELECT resource_uid FROM audit_events WHERE seq = $1")
            .bind(seq)
            .fetch_one(&mut *tx)
            .await
            .expect("uid");
        let mut event = audit::events_for_resource(pool, &uid).await.expect("read").remove(0);
        if seq == from {
            event.owners = vec!["acct_mallory".into()];
        }
        event.prev_hash = prev;
        event.hash = audit::event_hash(&event).to_vec();
        sqlx::query("UPDATE audit_events SET owners = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&event.owners)
            .bind(&event.prev_hash)
            .bind(&event.hash)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .expect("rewrite a row");
        prev = event.hash;
    }
    tx.commit().await.expect("commit the rewrite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_anchors_its_appends_and_a_deleted_tail_is_reported() {
    let op = Operator::start().await;
    let location = op.context.anchor().location.clone();
    let api: Api<ConfigMap> = location.api(op.client.clone());
    // The empty chain is anchored at start-up, so a missing anchor is always suspicious.
    let genesis = wait_anchored(&api, &location, 0).await;
    assert_eq!(genesis.hash, audit::GENESIS_HASH.to_vec());

    // An Agent's destroy event, appended by the controller, is anchored by the operator.
    let agents = op.agents("default");
    agents.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create agent");
    wait_for(&agents, "bot", DEADLINE, "Ready", ready).await;
    agents.delete("bot", &DeleteParams::default()).await.expect("delete agent");
    wait_gone(&agents, "bot", DEADLINE).await;
    let first = wait_anchored(&api, &location, 1).await;
    let head = audit::head(&op.db.pool).await.expect("head").expect("one event");
    assert_eq!((first.seq, &first.hash), (head.seq, &head.hash));

    // Appends from another process: the next nudge (or resync) anchors them too.
    for i in 0..3 {
        audit::append(&op.db.pool, &destroyed(&format!("other-{i}"))).await.expect("append");
    }
    op.context.anchor().nudge();
    wait_anchored(&api, &location, 4).await;
    assert_eq!(op.context.metrics().anchor_publishes("refused"), 0);
    assert_eq!(op.context.metrics().anchor_publishes("failed"), 0);

    let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(kubeconfig.path(), op.kube.kubeconfig_yaml()).expect("write kubeconfig");
    let verify = || {
        let out = cli()
            .args(["audit", "verify", "--database-url", &op.db.url, "--kubeconfig"])
            .arg(kubeconfig.path())
            .env("CRABGLAMP_SEALING_KEY", FIXTURE_KEY)
            .output()
            .expect("run audit verify");
        let (stdout, stderr) = text(&out);
        (out.status.code().expect("exit code"), format!("{stdout}{stderr}"))
    };
    let (code, said) = verify();
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("audit chain intact: 4 events verified"), "{said}");
    // In the namespace of the operator's client: the kubeconfig's, or its ServiceAccount's.
    let anchored_in = format!(
        "matches the anchor in ConfigMap {}/crabglamp-audit-anchor (event 4",
        op.context.clients().kube.default_namespace()
    );
    assert!(said.contains(&anchored_in), "{said}");
    assert!(said.contains("the newest event is anchored"), "{said}");

    // A superuser deletes the two newest events behind the triggers' back: the chain that is
    // left verifies, the anchor does not agree.
    psql(&op.db.url, "SET session_replication_role = replica; DELETE FROM audit_events WHERE seq > 2;");
    assert_eq!(audit::verify_chain(&op.db.pool).await.expect("verify").first_break, None);
    let (code, said) = verify();
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("audit chain intact: 2 events verified"), "{said}");
    assert!(
        said.contains("audit trail TRUNCATED") && said.contains("vouches for event 4 but the database ends at event 2"),
        "{said}"
    );
    assert!(said.contains("the newest 2 event(s) were deleted"), "{said}");

    // The running operator refuses to move the anchor back over the evidence.
    op.context.anchor().nudge();
    crate::fixture::wait_until(DEADLINE, "a refused publish", || op.context.metrics().anchor_publishes("refused") >= 1)
        .await;
    assert_eq!(anchored(&api, &location).await.map(|a| a.seq), Some(4));
    let logs = crate::fixture::captured_logs();
    assert!(logs.contains("it vouches for event 4 but the database ends at event 2"), "{logs}");
    assert!(!logs.contains(FIXTURE_KEY));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_trail_verifies_and_a_consistently_rewritten_chain_is_reported() {
    let s = Setup::new().await;
    s.append(0..5).await;
    assert_eq!(s.publish().await.expect("publish"), Published::Moved { from: None, to: 5 });
    assert_eq!(s.publish().await.expect("publish again"), Published::Unchanged(5));
    let (code, said) = s.verify_cli(&[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("5 events verified") && said.contains("the newest event is anchored"), "{said}");

    // From event 3 on, every row is changed and re-hashed: the chain alone cannot tell.
    let anchored_hash = s.anchor().await.hash;
    rewrite_chain_from(&s.db.pool, 3).await;
    let chain = audit::verify_chain(&s.db.pool).await.expect("verify");
    assert_eq!((chain.verified, chain.first_break), (5, None), "the rewritten chain is self-consistent");
    let (code, said) = s.verify_cli(&[]);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("audit chain intact: 5 events verified"), "{said}");
    assert!(said.contains("audit trail REWRITTEN: event 5 has hash"), "{said}");
    assert!(said.contains(&hex::encode(&anchored_hash)), "the anchored hash is shown: {said}");

    // The publisher does not re-anchor the rewritten chain.
    let refused = s.publish().await.expect_err("refused");
    assert_eq!(refused.metric_label(), "refused");
    assert!(refused.to_string().contains("does not extend the anchor"), "{refused}");
    assert_eq!(s.anchor().await.hash, anchored_hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_anchor_passes_with_a_note_and_a_missing_one_fails_unless_skipped() {
    let s = Setup::new().await;
    let (code, said) = s.verify_cli(&[]);
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("no audit anchor: ConfigMap default/crabglamp-audit-anchor does not exist"), "{said}");
    let (code, said) = s.verify_cli(&["--no-anchor"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("audit anchor not checked (--no-anchor)"), "{said}");

    s.append(0..3).await;
    s.publish().await.expect("publish");
    // The next event is committed, its publish "failed": the anchor lags by one.
    s.append(3..4).await;
    let (code, said) = s.verify_cli(&[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("4 events verified"), "{said}");
    assert!(said.contains("note: the anchor is 1 event(s) behind the database (newest: event 4)"), "{said}");
    assert!(said.contains("events 4..4 are verified by the chain only"), "{said}");

    // Looked for in another namespace: not there.
    let (code, said) = s.verify_cli(&["--anchor-namespace", "elsewhere"]);
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("ConfigMap elsewhere/crabglamp-audit-anchor does not exist"), "{said}");
    // Without the sealing key the anchor cannot be checked: said so, no result pretended.
    let out = cli()
        .args(["audit", "verify", "--database-url", &s.db.url, "--kubeconfig"])
        .arg(s.kubeconfig.path())
        .output()
        .expect("run audit verify");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("checking the audit anchor's HMAC needs the sealing key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_anchor_is_rejected_and_never_overwritten() {
    let s = Setup::new().await;
    s.append(0..3).await;
    s.publish().await.expect("publish");
    // Someone with write access to ConfigMaps but without the sealing key moves the anchor
    // back to event 2 (to hide a later deletion of event 3).
    let hash_2 = audit::hash_at(&s.db.pool, 2).await.expect("read").expect("event 2");
    let patch = serde_json::json!({"data": {"seq": "2", "hash": hex::encode(&hash_2)}});
    s.api.patch(&s.location.name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    let (code, said) = s.verify_cli(&[]);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("REJECTED: the audit anchor's HMAC does not verify under sealing key \"k1\""), "{said}");
    let refused = s.publish().await.expect_err("refused");
    assert!(matches!(refused, PublishError::Untrusted { .. }), "{refused:?}");
    assert_eq!(s.anchor().await.seq, 2, "the evidence is left as found");

    // An anchor under a key this process does not have cannot be checked: said so.
    let other = SealingKeys::new("k9", "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=", &[]).expect("key");
    s.api.delete(&s.location.name, &DeleteParams::default()).await.expect("delete");
    audit_anchor::publish(&s.api, &s.location, &s.db.pool, &other).await.expect("publish under k9");
    let (code, said) = s.verify_cli(&[]);
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("authenticated under sealing key \"k9\", which is not configured"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_move_the_anchor_forward_once_each_time() {
    let s = Setup::new().await;
    for i in 0..6 {
        s.append(i..i + 1).await;
        let (a, b) = tokio::join!(s.publish(), s.publish());
        let mut results = [a.expect("writer a"), b.expect("writer b")];
        results.sort_by_key(|r| matches!(r, Published::Moved { .. }));
        let to = i64::from(i) + 1;
        // One write wins; the other sees it (directly or after losing the conditional write).
        assert_eq!(results[1], Published::Moved { from: (i > 0).then_some(to - 1), to });
        assert_eq!(results[0], Published::Unchanged(to), "round {i}");
        assert_eq!(s.anchor().await.seq, to);
    }
    let v = audit_anchor::verify(&s.db.pool, Some((&s.api, &s.location, &s.keys))).await.expect("verify");
    assert_eq!(v.outcome(), Outcome::Intact, "{:?}", v.lines());
}

/// Ten shards (or replicas) sharing one trail, each appending and publishing at once, as the
/// ten-shard benchmark runs them: a writer that keeps losing the conditional write to others
/// moving the anchor forward has not failed (`Overtaken`), and the last publish anchors the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_writers_on_a_growing_trail_overtake_each_other_without_failing() {
    let s = Setup::new().await;
    let writers = (0..10_u32).map(|w| {
        let s = &s;
        async move {
            let mut outcomes = Vec::new();
            for round in 0..4 {
                s.append(w * 100 + round..w * 100 + round + 1).await;
                outcomes.push(s.publish().await);
            }
            outcomes
        }
    });
    let outcomes: Vec<Result<Published, PublishError>> =
        futures::future::join_all(writers).await.into_iter().flatten().collect();
    let failed: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err()).map(ToString::to_string).collect();
    assert!(failed.is_empty(), "{} of {} publishes failed: {failed:?}", failed.len(), outcomes.len());
    assert_eq!(s.publish().await.expect("publish at rest"), Published::Unchanged(40));
    let v = audit_anchor::verify(&s.db.pool, Some((&s.api, &s.location, &s.keys))).await.expect("verify");
    assert_eq!(v.outcome(), Outcome::Intact, "{:?}", v.lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_re_anchors_the_same_head_under_the_new_key() {
    let s = Setup::new().await;
    s.append(0..2).await;
    s.publish().await.expect("publish under k1");
    let rotated = SealingKeys::new(
        "k2",
        "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=",
        &[(FIXTURE_KEY_ID.into(), FIXTURE_KEY.into())],
    )
    .expect("keys");
    let moved = audit_anchor::publish(&s.api, &s.location, &s.db.pool, &rotated).await.expect("re-anchor");
    assert_eq!(moved, Published::Moved { from: Some(2), to: 2 });
    let anchor = s.anchor().await;
    assert_eq!(anchor.key_id, "k2");
    let only_new = SealingKeys::new("k2", "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=", &[]).expect("key");
    anchor.verify(&only_new).expect("the old key can be dropped now");
    assert_eq!(
        audit_anchor::publish(&s.api, &s.location, &s.db.pool, &only_new).await.expect("publish"),
        Published::Unchanged(2)
    );
}
