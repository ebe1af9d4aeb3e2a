//! The PostgreSQL store against a real server: the audit trail's guarantees, the usage
//! timeline's idempotency, virtual keys and sealed credentials.

use std::process::Command;

use chrono::{TimeZone, Utc};
use crabglamp_operator::store::StoreError;
use crabglamp_operator::store::audit::{self, Appended, AuditKind, NewAuditEvent, ResourceRef};
use crabglamp_operator::store::credentials;
use crabglamp_operator::store::keys::{self, NewVirtualKey};
use crabglamp_operator::store::seal::{CredentialId, SealingKeys};
use crabglamp_operator::store::usage::{self, Transition, UsageTransition};
use serde_json::json;

use super::db::TestDb;

fn agent(uid: &str) -> ResourceRef {
    ResourceRef { kind: "Agent".into(), namespace: "team-a".into(), name: "research-bot".into(), uid: uid.into() }
}

fn destroyed(uid: &str) -> NewAuditEvent {
    NewAuditEvent {
        event_key: format!("agent.destroyed/{uid}"),
        kind: AuditKind::AgentDestroyed,
        resource: agent(uid),
        owners: vec!["acct_7f3a".into()],
        region: Some("us".into()),
        cloud_ids: json!({"serverId": 4711, "tunnelId": "6f1c", "dnsRecordId": "abc"}),
        details: json!({"deletionPolicy": "Delete", "note": "ünïcode ✓"}),
        occurred_at: Utc.with_ymd_and_hms(2026, 11, 25, 3, 4, 5).single().expect("time")
            + chrono::Duration::nanoseconds(123_456_789),
    }
}

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"))
}

fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("psql is installed (scripts/test installs the PostgreSQL client)")
}

#[tokio::test]
async fn appends_and_reads_back_an_event() {
    let db = TestDb::fresh().await;
    let appended = audit::append(&db.pool, &destroyed("uid-1")).await.expect("append");
    let Appended::Recorded(stored) = appended else { panic!("first append records") };
    assert_eq!(stored.seq, 1);
    assert_eq!(stored.prev_hash, audit::GENESIS_HASH.to_vec());
    let read = audit::events_for_resource(&db.pool, "uid-1").await.expect("read");
    assert_eq!(read, vec![stored.clone()]);
    assert_eq!(read[0].kind, "agent.destroyed");
    assert_eq!(read[0].details["note"], "ünïcode ✓");
    assert_eq!(read[0].occurred_at.timestamp_subsec_micros(), 123_456);
    assert_eq!(audit::event_hash(&read[0]).to_vec(), read[0].hash);
}

#[tokio::test]
async fn a_duplicate_event_key_is_a_no_op() {
    let db = TestDb::fresh().await;
    let first = audit::append(&db.pool, &destroyed("uid-1")).await.expect("append");
    let mut retry = destroyed("uid-1");
    retry.occurred_at = Utc::now();
    let second = audit::append(&db.pool, &retry).await.expect("retry");
    assert!(matches!(second, Appended::AlreadyRecorded(_)));
    assert_eq!(second.event(), first.event(), "the retry returns the original event");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&db.pool).await.expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn fifty_parallel_appends_form_one_verifiable_chain() {
    let db = TestDb::fresh().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            // Every event twice, concurrently: retries racing each other must still record once.
            let event = destroyed(&format!("uid-{i}"));
            let (a, b) = tokio::join!(audit::append(&pool, &event), audit::append(&pool, &event));
            (a.expect("append"), b.expect("append"))
        }));
    }
    let mut recorded = 0;
    for task in tasks {
        let (a, b) = task.await.expect("task");
        recorded += [&a, &b].iter().filter(|x| matches!(x, Appended::Recorded(_))).count();
    }
    assert_eq!(recorded, 50, "each event recorded exactly once");
    let report = audit::verify_chain(&db.pool).await.expect("verify");
    assert_eq!(report.first_break, None);
    assert_eq!(report.verified, 50);
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM audit_events ORDER BY seq").fetch_all(&db.pool).await.expect("seqs");
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "no gap, no fork");
}

#[tokio::test]
async fn update_delete_and_truncate_are_refused_by_the_database() {
    let db = TestDb::fresh().await;
    audit::append(&db.pool, &destroyed("uid-1")).await.expect("append");
    for statement in
        ["UPDATE audit_events SET owners = ARRAY['acct_evil']", "DELETE FROM audit_events", "TRUNCATE audit_events"]
    {
        let err = sqlx::query(statement).execute(&db.pool).await.expect_err(statement);
        assert!(err.to_string().contains("audit_events is append-only"), "{statement}: {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&db.pool).await.expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn cloud_ids_and_details_must_be_json_objects() {
    let db = TestDb::fresh().await;
    let mut event = destroyed("uid-1");
    event.details = json!(["not", "an", "object"]);
    let err = audit::append(&db.pool, &event).await.expect_err("details must be an object");
    assert!(format!("{err:?}").contains("audit_events_details_object"), "{err:?}");
    let mut event = destroyed("uid-2");
    event.cloud_ids = json!("4711");
    assert!(audit::append(&db.pool, &event).await.is_err(), "cloud_ids must be an object");
    assert_eq!(audit::verify_chain(&db.pool).await.expect("verify").verified, 0, "nothing was written");
}

#[tokio::test]
async fn a_role_with_insert_and_select_only_can_append_but_not_rewrite() {
    let db = TestDb::fresh().await;
    let role = format!("crabglamp_op_{}", uuid::Uuid::new_v4().simple());
    for sql in [format!("CREATE ROLE {role} LOGIN"), format!("GRANT SELECT, INSERT ON audit_events TO {role}")] {
        sqlx::query(&sql).execute(&db.pool).await.expect("set up role");
    }
    let mut url = url::Url::parse(&db.url).expect("url");
    url.set_username(&role).expect("username");
    let pool = sqlx::PgPool::connect(url.as_str()).await.expect("connect as the operator role");
    audit::append(&pool, &destroyed("uid-1")).await.expect("the operator role appends");
    let err = sqlx::query("UPDATE audit_events SET region = 'eu'").execute(&pool).await.expect_err("no UPDATE");
    assert!(err.to_string().contains("permission denied"), "{err}");
    pool.close().await;
    sqlx::query(&format!("DROP OWNED BY {role}")).execute(&db.pool).await.expect("drop owned");
    sqlx::query(&format!("DROP ROLE {role}")).execute(&db.pool).await.expect("drop role");
}

#[tokio::test]
async fn migrate_command_then_psql_update_fails_with_the_trigger_error() {
    let db = TestDb::empty().await;
    let out = cli().args(["migrate", "--database-url", &db.url]).output().expect("run migrate");
    assert!(out.status.success(), "migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    audit::append(&db.pool, &destroyed("uid-1")).await.expect("append");
    let out = psql(&db.url, "UPDATE audit_events SET region = 'eu'");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit_events is append-only: UPDATE is not allowed"), "{stderr}");
}

#[tokio::test]
async fn audit_verify_finds_a_row_a_superuser_altered_behind_the_trigger() {
    // The chain alone (`--no-anchor`); tests/audit.rs checks it against the anchor.
    let db = TestDb::fresh().await;
    for i in 0..5 {
        audit::append(&db.pool, &destroyed(&format!("uid-{i}"))).await.expect("append");
    }
    let out = cli().args(["audit", "verify", "--no-anchor", "--database-url", &db.url]).output().expect("run verify");
    assert!(out.status.success(), "intact chain verifies: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 events verified"));

    let tamper = "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_or_delete; \
                  UPDATE audit_events SET owners = ARRAY['acct_someone_else'] WHERE seq = 3; \
                  ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_or_delete;";
    let out = psql(&db.url, tamper);
    assert!(out.status.success(), "superuser tampering: {}", String::from_utf8_lossy(&out.stderr));

    let report = audit::verify_chain(&db.pool).await.expect("verify");
    let broken = report.first_break.expect("tampering detected");
    assert_eq!(broken.seq, 3);
    assert_eq!(report.verified, 2);
    let out = cli().args(["audit", "verify", "--no-anchor", "--database-url", &db.url]).output().expect("run verify");
    assert!(!out.status.success(), "a broken chain exits non-zero");
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN at event 3"));
}

#[tokio::test]
async fn audit_verify_finds_a_deleted_row() {
    let db = TestDb::fresh().await;
    for i in 0..4 {
        audit::append(&db.pool, &destroyed(&format!("uid-{i}"))).await.expect("append");
    }
    let out = psql(
        &db.url,
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_or_delete; DELETE FROM audit_events WHERE seq = 2;",
    );
    assert!(out.status.success());
    let broken = audit::verify_chain(&db.pool).await.expect("verify").first_break.expect("gap detected");
    assert_eq!(broken.seq, 3);
}

#[tokio::test]
async fn usage_transitions_are_recorded_exactly_once() {
    let db = TestDb::fresh().await;
    let t = UsageTransition {
        transition_key: "uid-1/start/1".into(),
        resource: agent("uid-1"),
        owner: "acct_7f3a".into(),
        region: "us".into(),
        server_type: "cpx22".into(),
        price_cell: "agent-us-cpx22".into(),
        transition: Transition::Start,
        occurred_at: Utc::now(),
    };
    assert!(usage::record(&db.pool, &t).await.expect("record"));
    assert!(!usage::record(&db.pool, &t).await.expect("retry"), "a retry records nothing");
    let stop = UsageTransition { transition_key: "uid-1/stop/2".into(), transition: Transition::Stop, ..t.clone() };
    assert!(usage::record(&db.pool, &stop).await.expect("record stop"));
    let all = usage::transitions_for_resource(&db.pool, "uid-1").await.expect("read");
    assert_eq!(all.iter().map(|r| r.transition.as_str()).collect::<Vec<_>>(), vec!["start", "stop"]);
}

/// The database itself refuses a usage row or an audit event about an object after its destroy
/// event (whoever writes it: a stale leader, a sweeper, a person with psql), while the destroy
/// transaction's own closing row passes, a retried destroy stays a no-op, other objects are
/// untouched and the chain stays whole.
#[tokio::test]
async fn nothing_is_recorded_about_an_object_after_its_destroy_event() {
    let db = TestDb::fresh().await;
    let start = UsageTransition {
        transition_key: "uid-1/start/1".into(),
        resource: agent("uid-1"),
        owner: "acct_7f3a".into(),
        region: "us".into(),
        server_type: "cpx22".into(),
        price_cell: "agent-us-cpx22".into(),
        transition: Transition::Start,
        occurred_at: Utc::now(),
    };
    assert!(usage::record(&db.pool, &start).await.expect("start"));
    // The destroy transaction: the closing row, then the event.
    let closing =
        UsageTransition { transition_key: "uid-1/stop/2".into(), transition: Transition::Stop, ..start.clone() };
    let mut tx = db.pool.begin().await.expect("transaction");
    assert!(usage::record(&mut *tx, &closing).await.expect("closing row"));
    audit::append(&mut *tx, &destroyed("uid-1")).await.expect("destroy event");
    tx.commit().await.expect("commit");

    let late = UsageTransition { transition_key: "uid-1/start/3".into(), ..start.clone() };
    let refused = usage::record(&db.pool, &late).await;
    assert!(matches!(&refused, Err(e) if e.is_already_destroyed()), "a usage row after the destroy: {refused:?}");
    let retried_closing = usage::record(&db.pool, &closing).await;
    assert!(matches!(&retried_closing, Err(e) if e.is_already_destroyed()), "{retried_closing:?}");
    let transfer = NewAuditEvent {
        event_key: "agent.transferred/uid-1/1".into(),
        kind: AuditKind::AgentTransferred,
        owners: vec!["acct_7f3a".into(), "acct_b".into()],
        ..destroyed("uid-1")
    };
    let refused = audit::append(&db.pool, &transfer).await;
    assert!(matches!(&refused, Err(e) if e.is_already_destroyed()), "an event after the destroy: {refused:?}");
    let second_destroy = NewAuditEvent { event_key: "agent.destroyed/uid-1/by-sweeper".into(), ..destroyed("uid-1") };
    assert!(audit::append(&db.pool, &second_destroy).await.is_err_and(|e| e.is_already_destroyed()));
    // Nor a new tunnel secret, which would start a tunnel for an object already torn down.
    let keys = SealingKeys::new("k1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", &[]).expect("key");
    let secret = CredentialId { scope: "agent-tunnel".into(), resource_uid: "uid-1".into(), name: "s".into() };
    assert!(
        credentials::put_credential_once(&db.pool, &keys, &secret, b"late")
            .await
            .is_err_and(|e| e.is_already_destroyed())
    );
    // The same destroy retried finds itself: nothing written, nothing refused.
    assert!(matches!(audit::append(&db.pool, &destroyed("uid-1")).await, Ok(Appended::AlreadyRecorded(_))));
    // Behind the operator's back too.
    let psql_insert = psql(
        &db.url,
        "INSERT INTO usage_timeline (transition_key, resource_kind, resource_namespace, resource_name, resource_uid, \
         owner, region, server_type, price_cell, transition, occurred_at) \
         VALUES ('uid-1/start/9', 'Agent', 'team-a', 'research-bot', 'uid-1', 'acct_7f3a', 'us', 'cpx22', \
         'agent-us-cpx22', 'start', now())",
    );
    assert!(!psql_insert.status.success(), "psql may not add a row after the destroy either");
    assert!(String::from_utf8_lossy(&psql_insert.stderr).contains("is destroyed"));

    let rows = usage::transitions_for_resource(&db.pool, "uid-1").await.expect("rows");
    assert_eq!(rows.iter().map(|r| r.transition_key.as_str()).collect::<Vec<_>>(), ["uid-1/start/1", "uid-1/stop/2"]);
    assert_eq!(audit::events_for_resource(&db.pool, "uid-1").await.expect("events").len(), 1);
    // Another object is untouched, and the refused appends left no gap in the chain.
    assert!(
        usage::record(
            &db.pool,
            &UsageTransition { transition_key: "uid-2/start/1".into(), resource: agent("uid-2"), ..start }
        )
        .await
        .expect("other object")
    );
    audit::append(&db.pool, &destroyed("uid-2")).await.expect("other object's destroy");
    let report = audit::verify_chain(&db.pool).await.expect("verify");
    assert_eq!((report.verified, report.first_break), (2, None));
}

#[tokio::test]
async fn virtual_keys_keep_a_hash_never_the_key() {
    let db = TestDb::fresh().await;
    let secret = "cgk_ab12_the-secret-part";
    let key = NewVirtualKey {
        key_id: "vk_1".into(),
        resource: ResourceRef {
            kind: "VirtualKey".into(),
            namespace: "team-a".into(),
            name: "k".into(),
            uid: "uid-k".into(),
        },
        owner: "acct_7f3a".into(),
        key_sha256: keys::key_sha256(secret),
        prefix: "cgk_ab12".into(),
        models: vec!["gpt-4o*".into()],
        budget_monthly_usd: "50.00".into(),
        rate_limit_rpm: Some(60),
        expires_at: None,
        scope: "test/".into(),
    };
    let mut conn = db.pool.acquire().await.expect("connection");
    keys::insert(&mut conn, &key).await.expect("insert");
    keys::insert(&mut conn, &key).await.expect("insert is idempotent");
    let stored = keys::get(&db.pool, "vk_1").await.expect("get").expect("present");
    assert_eq!(stored.key_sha256, keys::key_sha256(secret).to_vec());
    assert_eq!(stored.budget_monthly_usd, "50.000000");
    let dump = psql(&db.url, "SELECT row_to_json(v)::text FROM virtual_keys v");
    assert!(!String::from_utf8_lossy(&dump.stdout).contains("the-secret-part"), "the key is not stored");
    let other_resource = ResourceRef { uid: "uid-other".into(), ..key.resource.clone() };
    for (what, budget) in [("a negative budget", "-1"), ("a NaN budget", "NaN")] {
        let bad = NewVirtualKey {
            key_id: "vk_2".into(),
            budget_monthly_usd: budget.into(),
            key_sha256: keys::key_sha256("other"),
            resource: other_resource.clone(),
            ..key.clone()
        };
        assert!(
            matches!(keys::insert(&mut conn, &bad).await, Err(StoreError::Query { .. })),
            "the database refuses {what}"
        );
    }
    let same_id_other_hash = NewVirtualKey { key_sha256: keys::key_sha256("different"), ..key.clone() };
    assert!(
        matches!(keys::insert(&mut conn, &same_id_other_hash).await, Err(StoreError::KeyConflict { key_id }) if key_id == "vk_1"),
        "a different hash under the same id is an error, not a no-op"
    );
    let second_live = NewVirtualKey { key_id: "vk_3".into(), key_sha256: keys::key_sha256("third"), ..key.clone() };
    assert!(
        matches!(keys::insert(&mut conn, &second_live).await, Err(StoreError::SecondLiveKey { live_key_id, .. }) if live_key_id == "vk_1"),
        "a second live key of one VirtualKey is a typed error"
    );
    drop(conn);
    assert!(keys::revoke(&db.pool, "vk_1", Utc::now()).await.expect("revoke"));
    assert!(!keys::revoke(&db.pool, "vk_1", Utc::now()).await.expect("revoke again"));
}

#[tokio::test]
async fn sealed_credentials_round_trip_and_do_not_open_in_another_row() {
    let db = TestDb::fresh().await;
    let keys = SealingKeys::new("k1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", &[]).expect("key");
    let id = CredentialId { scope: "tunnel-token".into(), resource_uid: "uid-1".into(), name: "token".into() };
    credentials::put_credential(&db.pool, &keys, &id, b"eyJhIjoidG9rZW4ifQ==").await.expect("put");
    assert_eq!(
        credentials::get_credential(&db.pool, &keys, &id).await.expect("get").as_deref(),
        Some(&b"eyJhIjoidG9rZW4ifQ=="[..])
    );
    let dump = psql(&db.url, "SELECT encode(ciphertext, 'escape') FROM sealed_credentials");
    assert!(!String::from_utf8_lossy(&dump.stdout).contains("eyJhIjoidG9rZW4ifQ"), "stored sealed");

    // A superuser copying the ciphertext into another object's row gains nothing.
    let out = psql(
        &db.url,
        "INSERT INTO sealed_credentials (scope, resource_uid, name, key_id, nonce, ciphertext) \
                             SELECT scope, 'uid-2', name, key_id, nonce, ciphertext FROM sealed_credentials",
    );
    assert!(out.status.success());
    let moved = CredentialId { resource_uid: "uid-2".into(), ..id.clone() };
    assert!(credentials::get_credential(&db.pool, &keys, &moved).await.is_err());
    assert!(credentials::delete_credential(&db.pool, &id).await.expect("delete"));
    assert_eq!(credentials::get_credential(&db.pool, &keys, &id).await.expect("get"), None);
}

/// A value stored once keeps the first writer's value: the second gets it back, not its own.
#[tokio::test]
async fn a_credential_stored_once_keeps_the_first_value() {
    let db = TestDb::fresh().await;
    let keys = SealingKeys::new("k1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", &[]).expect("key");
    let id = CredentialId { scope: "agent-tunnel".into(), resource_uid: "uid-1".into(), name: "tunnel-secret".into() };
    assert_eq!(credentials::put_credential_once(&db.pool, &keys, &id, b"first").await.expect("first"), b"first");
    assert_eq!(credentials::put_credential_once(&db.pool, &keys, &id, b"second").await.expect("second"), b"first");
    assert_eq!(credentials::get_credential(&db.pool, &keys, &id).await.expect("get").as_deref(), Some(&b"first"[..]));
}

#[tokio::test]
async fn ensure_migrated_database_creates_once_and_migrates() {
    let name = format!("crabglamp_test_{}", uuid::Uuid::new_v4().simple());
    let admin = super::db::admin_url();
    let url = crabglamp_operator::store::ensure_migrated_database(&admin, &name).await.expect("create and migrate");
    let again = crabglamp_operator::store::ensure_migrated_database(&admin, &name).await.expect("idempotent");
    assert_eq!(url, again);
    let out = psql(&url, "SELECT count(*) FROM _sqlx_migrations WHERE success");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        crabglamp_operator::store::MIGRATOR.iter().count().to_string()
    );
    let out = psql(&admin, &format!("DROP DATABASE {name} WITH (FORCE)"));
    assert!(out.status.success());
    let bad = crabglamp_operator::store::ensure_migrated_database(&admin, "x; DROP DATABASE postgres").await;
    assert!(bad.is_err(), "names are plain identifiers only");
}
