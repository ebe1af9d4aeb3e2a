//! Key rotation: credentials sealed under key A, the operator configured with B current and A
//! previous, `reseal` re-encrypts them all under B in batches; afterwards B alone opens every
//! one, and a second run changes nothing. A row no configured key opens is reported, not lost.

use crabglamp_operator::store::credentials;
use crabglamp_operator::store::seal::{CredentialId, SealError, SealingKeys};

use super::support::*;
use crate::db::TestDb;

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";
const KEY_C: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn id(i: usize) -> CredentialId {
    CredentialId { scope: "tunnel-token".into(), resource_uid: format!("uid-{i}"), name: "token".into() }
}

fn secret(i: usize) -> Vec<u8> {
    format!("tunnel-secret-{i}").into_bytes()
}

async fn key_ids(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT key_id FROM sealed_credentials ORDER BY resource_uid")
        .fetch_all(&db.pool)
        .await
        .expect("read")
}

#[tokio::test]
async fn reseal_moves_every_credential_to_the_current_key_once() {
    let db = TestDb::fresh().await;
    let a = SealingKeys::new("a", KEY_A, &[]).expect("key a");
    for i in 0..7 {
        credentials::put_credential(&db.pool, &a, &id(i), &secret(i)).await.expect("seal under a");
    }
    let rotated = SealingKeys::new("b", KEY_B, &[("a".into(), KEY_A.into())]).expect("b current, a previous");
    // Three rows a batch: three transactions, the last one short.
    let report = credentials::reseal_all(&db.pool, &rotated, 3).await.expect("reseal");
    assert_eq!((report.resealed, report.current, report.failed.len()), (7, 7, 0));
    assert_eq!(key_ids(&db).await, vec!["b"; 7]);

    let only_b = SealingKeys::new("b", KEY_B, &[]).expect("key b");
    for i in 0..7 {
        let opened = credentials::get_credential(&db.pool, &only_b, &id(i)).await.expect("open under b alone");
        assert_eq!(opened, Some(secret(i)));
    }
    let err = credentials::get_credential(&db.pool, &a, &id(0)).await.expect_err("a no longer opens it");
    assert!(err.to_string().contains("sealed with key \"b\""), "{err}");

    let again = credentials::reseal_all(&db.pool, &rotated, 3).await.expect("reseal again");
    assert_eq!((again.resealed, again.current, again.failed.len()), (0, 7, 0), "idempotent");
}

#[tokio::test]
async fn the_reseal_command_reports_counts_and_rows_it_cannot_open() {
    let db = TestDb::fresh().await;
    let a = SealingKeys::new("a", KEY_A, &[]).expect("key a");
    for i in 0..4 {
        credentials::put_credential(&db.pool, &a, &id(i), &secret(i)).await.expect("seal under a");
    }
    // One row under a key that is not configured any more.
    let lost = SealingKeys::new("c", KEY_C, &[]).expect("key c");
    credentials::put_credential(&db.pool, &lost, &id(9), b"orphan").await.expect("seal under c");

    let reseal = || {
        let out = cli()
            .args(["reseal", "--database-url", &db.url, "--batch-size", "2"])
            .env("CRABGLAMP_SEALING_KEY", KEY_B)
            .env("CRABGLAMP_SEALING_KEY_ID", "b")
            .env("CRABGLAMP_SEALING_PREVIOUS_KEYS", format!("a={KEY_A}"))
            .output()
            .expect("run reseal");
        let (stdout, stderr) = text(&out);
        for key in [KEY_A, KEY_B] {
            assert!(!stdout.contains(key) && !stderr.contains(key), "keys are never printed");
        }
        assert!(!stdout.contains("tunnel-secret") && !stdout.contains("orphan"), "nor plaintexts");
        (out.status.code().expect("exit code"), stdout)
    };
    let (code, said) = reseal();
    assert_eq!(code, 2, "a row could not be opened: {said}");
    assert!(said.contains("resealed 4 credential(s) under key \"b\"; 4 now under it; 1 could not be opened"), "{said}");
    assert!(said.contains("not resealed: tunnel-token/uid-9/token"), "{said}");
    assert!(said.contains(&SealError::UnknownKey("c".into()).to_string()), "{said}");
    assert_eq!(key_ids(&db).await, vec!["b", "b", "b", "b", "c"]);

    // Once the row is gone (or its key configured), the command succeeds and changes nothing.
    credentials::delete_credential(&db.pool, &id(9)).await.expect("delete");
    let (code, said) = reseal();
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("resealed 0 credential(s) under key \"b\"; 4 now under it; 0 could not be opened"), "{said}");
}
