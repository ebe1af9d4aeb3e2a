//! Sealed credentials in PostgreSQL: stored, read, deleted and resealed under the current
//! key. The sealing itself is [`super::seal`]'s, which knows nothing of the database.

use sqlx::PgPool;

use super::seal::{CredentialId, SealError, Sealed, SealingKeys};
use super::{QueryContext, StoreError};

/// Seals and stores a credential, replacing any previous value of that row.
pub async fn put_credential(
    pool: &PgPool,
    keys: &SealingKeys,
    id: &CredentialId,
    plaintext: &[u8],
) -> Result<(), StoreError> {
    let sealed = keys.seal(id, plaintext)?;
    sqlx::query!(
        r#"INSERT INTO sealed_credentials (scope, resource_uid, name, key_id, nonce, ciphertext)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (scope, resource_uid, name)
           DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = now()"#,
        id.scope,
        id.resource_uid,
        id.name,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
    )
    .execute(pool)
    .await
    .during("storing a sealed credential")?;
    Ok(())
}

/// Seals and stores a credential unless its row exists, then reads the row back: returns the
/// value stored, which is `plaintext` only if this call inserted it. For a value that must be
/// chosen once (a tunnel secret): of two writers racing (two leaders overlapping), both get
/// the first one's value, never each their own.
pub async fn put_credential_once(
    pool: &PgPool,
    keys: &SealingKeys,
    id: &CredentialId,
    plaintext: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let sealed = keys.seal(id, plaintext)?;
    sqlx::query!(
        r#"INSERT INTO sealed_credentials (scope, resource_uid, name, key_id, nonce, ciphertext)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (scope, resource_uid, name) DO NOTHING"#,
        id.scope,
        id.resource_uid,
        id.name,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
    )
    .execute(pool)
    .await
    .during("storing a sealed credential once")?;
    get_credential(pool, keys, id).await?.ok_or(StoreError::Corrupt {
        what: "reading back a sealed credential",
        detail: format!("the row {}/{}/{} vanished after it was stored", id.scope, id.resource_uid, id.name),
    })
}

/// Reads and opens a credential; `None` when the row does not exist.
pub async fn get_credential(
    pool: &PgPool,
    keys: &SealingKeys,
    id: &CredentialId,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = sqlx::query_as!(
        Sealed,
        "SELECT key_id, nonce, ciphertext FROM sealed_credentials WHERE scope = $1 AND resource_uid = $2 AND name = $3",
        id.scope,
        id.resource_uid,
        id.name,
    )
    .fetch_optional(pool)
    .await
    .during("reading a sealed credential")?;
    row.map(|sealed| keys.open(id, &sealed).map_err(StoreError::from)).transpose()
}

/// Removes a credential (e.g. when its object is destroyed); `false` when there was none.
pub async fn delete_credential(pool: &PgPool, id: &CredentialId) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "DELETE FROM sealed_credentials WHERE scope = $1 AND resource_uid = $2 AND name = $3",
        id.scope,
        id.resource_uid,
        id.name,
    )
    .execute(pool)
    .await
    .during("deleting a sealed credential")?;
    Ok(result.rows_affected() == 1)
}

/// What a reseal did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Credentials re-encrypted under the current key by this run.
    pub resealed: u64,
    /// Credentials under the current key when the run ended (including the resealed ones).
    pub current: u64,
    /// Credentials that could not be opened (key not configured, or tampered), left as they were.
    pub failed: Vec<(CredentialId, SealError)>,
}

/// Re-encrypts every credential not sealed under the current key (key rotation), `batch` rows
/// per transaction. Each row is locked while it is rewritten, so a concurrent writer waits
/// instead of being overwritten; a row already under the current key is never touched, so a
/// second run changes nothing. Rows that do not open are reported and left alone.
pub async fn reseal_all(pool: &PgPool, keys: &SealingKeys, batch: u32) -> Result<ResealReport, StoreError> {
    let mut report = ResealReport::default();
    // Keyset pagination: rows that fail to open stay behind the cursor instead of being read again.
    let mut after: Option<(String, String, String)> = None;
    loop {
        let mut tx = pool.begin().await.during("starting a reseal batch")?;
        let (scope, uid, name) = after.clone().map_or((None, None, None), |(s, u, n)| (Some(s), Some(u), Some(n)));
        let rows = sqlx::query!(
            r#"SELECT scope, resource_uid, name, key_id, nonce, ciphertext FROM sealed_credentials
               WHERE key_id <> $1 AND ($2::text IS NULL OR (scope, resource_uid, name) > ($2, $3, $4))
               ORDER BY scope, resource_uid, name LIMIT $5 FOR UPDATE"#,
            keys.current_id(),
            scope,
            uid,
            name,
            i64::from(batch.max(1)),
        )
        .fetch_all(&mut *tx)
        .await
        .during("reading credentials to reseal")?;
        let Some(last) = rows.last() else { break };
        after = Some((last.scope.clone(), last.resource_uid.clone(), last.name.clone()));
        for row in rows {
            let id = CredentialId { scope: row.scope, resource_uid: row.resource_uid, name: row.name };
            let sealed = Sealed { key_id: row.key_id, nonce: row.nonce, ciphertext: row.ciphertext };
            let fresh = match keys.open(&id, &sealed).and_then(|plaintext| keys.seal(&id, &plaintext)) {
                Ok(fresh) => fresh,
                Err(e) => {
                    report.failed.push((id, e));
                    continue;
                }
            };
            sqlx::query!(
                r#"UPDATE sealed_credentials SET key_id = $4, nonce = $5, ciphertext = $6, updated_at = now()
                   WHERE scope = $1 AND resource_uid = $2 AND name = $3"#,
                id.scope,
                id.resource_uid,
                id.name,
                fresh.key_id,
                fresh.nonce,
                fresh.ciphertext,
            )
            .execute(&mut *tx)
            .await
            .during("resealing a credential")?;
            report.resealed += 1;
        }
        tx.commit().await.during("committing a reseal batch")?;
    }
    let current = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM sealed_credentials WHERE key_id = $1"#,
        keys.current_id()
    )
    .fetch_one(pool)
    .await
    .during("counting credentials under the current key")?;
    report.current = u64::try_from(current).unwrap_or_default();
    Ok(report)
}
