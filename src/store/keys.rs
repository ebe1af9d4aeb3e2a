//! Virtual keys as business records: owner, hash, prefix, models, budget, rate limit, expiry.
//!
//! Never stores or accepts the key itself: callers hash it with [`key_sha256`] first.

use chrono::{DateTime, SubsecRound, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::audit::ResourceRef;
use super::{QueryContext, StoreError};

/// SHA-256 of a key, the only form in which it reaches the database and Redis.
pub fn key_sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A key to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVirtualKey {
    /// Stable key id, e.g. `vk_01HX...`.
    pub key_id: String,
    /// The VirtualKey object.
    pub resource: ResourceRef,
    /// Billing owner.
    pub owner: String,
    /// SHA-256 of the key.
    pub key_sha256: [u8; 32],
    /// First characters of the key, shown to people.
    pub prefix: String,
    /// Allowed model patterns.
    pub models: Vec<String>,
    /// Monthly budget in USD, a non-negative decimal string.
    pub budget_monthly_usd: String,
    /// Requests per minute, if limited.
    pub rate_limit_rpm: Option<i32>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Which operator instance refreshes its spend (`<installation>/<shard>`).
    pub scope: String,
}

/// A key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualKeyRecord {
    /// Key id.
    pub key_id: String,
    /// UID of the VirtualKey object.
    pub resource_uid: String,
    /// Billing owner.
    pub owner: String,
    /// SHA-256 of the key.
    pub key_sha256: Vec<u8>,
    /// Prefix.
    pub prefix: String,
    /// Allowed model patterns.
    pub models: Vec<String>,
    /// Monthly budget in USD, as a decimal string.
    pub budget_monthly_usd: String,
    /// Requests per minute.
    pub rate_limit_rpm: Option<i32>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Records a newly issued key. Idempotent only for the same key id **and** hash, so a retried
/// issue after a crash does not fail; a different hash under the same id is
/// [`StoreError::KeyConflict`], a second live key of one VirtualKey [`StoreError::SecondLiveKey`].
///
/// Takes a connection (or `&mut *transaction`): the check after a refused insert must see the
/// same snapshot as the insert.
pub async fn insert(conn: &mut sqlx::PgConnection, key: &NewVirtualKey) -> Result<(), StoreError> {
    let result = sqlx::query!(
        r#"INSERT INTO virtual_keys (key_id, resource_namespace, resource_name, resource_uid, owner, key_sha256,
                                     prefix, models, budget_monthly_usd, rate_limit_rpm, expires_at, scope)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::numeric, $10, $11, $12)
           ON CONFLICT DO NOTHING"#,
        key.key_id,
        key.resource.namespace,
        key.resource.name,
        key.resource.uid,
        key.owner,
        &key.key_sha256[..],
        key.prefix,
        &key.models,
        key.budget_monthly_usd,
        key.rate_limit_rpm,
        key.expires_at.map(|t| t.trunc_subsecs(6)),
        key.scope,
    )
    .execute(&mut *conn)
    .await
    .during("recording a virtual key")?;
    if result.rows_affected() == 1 {
        return Ok(());
    }
    // Some unique constraint refused the row: find out which, so that only an exact retry
    // passes as a no-op.
    let clashes = sqlx::query!(
        r#"SELECT key_id, key_sha256, resource_uid, revoked_at IS NULL AS "live!"
           FROM virtual_keys
           WHERE key_id = $1 OR key_sha256 = $2 OR (resource_uid = $3 AND revoked_at IS NULL)"#,
        key.key_id,
        &key.key_sha256[..],
        key.resource.uid,
    )
    .fetch_all(&mut *conn)
    .await
    .during("checking a refused virtual key")?;
    if clashes.iter().any(|c| c.key_id == key.key_id && c.key_sha256 == key.key_sha256[..]) {
        return Ok(());
    }
    if let Some(live) = clashes.iter().find(|c| c.live && c.resource_uid == key.resource.uid && c.key_id != key.key_id)
    {
        return Err(StoreError::SecondLiveKey {
            resource_uid: key.resource.uid.clone(),
            live_key_id: live.key_id.clone(),
        });
    }
    Err(StoreError::KeyConflict { key_id: key.key_id.clone() })
}

/// The live (not revoked) key of a VirtualKey, if any.
pub async fn live_for_resource<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    resource_uid: &str,
) -> Result<Option<VirtualKeyRecord>, StoreError> {
    sqlx::query_as!(
        VirtualKeyRecord,
        r#"SELECT key_id, resource_uid, owner, key_sha256, prefix, models,
                  budget_monthly_usd::text AS "budget_monthly_usd!", rate_limit_rpm, expires_at, created_at, revoked_at
           FROM virtual_keys WHERE resource_uid = $1 AND revoked_at IS NULL"#,
        resource_uid
    )
    .fetch_optional(conn)
    .await
    .during("reading the live virtual key")
}

/// A live key as the spend refresher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKey {
    /// Key id.
    pub key_id: String,
    /// UID of the VirtualKey: the `budgetId` its spend counters live under.
    pub resource_uid: String,
    /// SHA-256 of the key.
    pub key_sha256: Vec<u8>,
}

/// Every live key of one scope, in one query (the refresher's list; never one query per key).
pub async fn live_in_scope(pool: &PgPool, scope: &str) -> Result<Vec<LiveKey>, StoreError> {
    sqlx::query_as!(
        LiveKey,
        "SELECT key_id, resource_uid, key_sha256 FROM virtual_keys
         WHERE revoked_at IS NULL AND scope = $1 ORDER BY key_id",
        scope
    )
    .fetch_all(pool)
    .await
    .during("listing live virtual keys")
}

/// Makes `scope` the one that refreshes a live key's spend (the instance that reconciles its
/// VirtualKey: after an upgrade, keys recorded before scopes existed; after a move to another
/// shard, the new one). A no-op when it already is.
pub async fn claim(pool: &PgPool, key_id: &str, scope: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE virtual_keys SET scope = $2 WHERE key_id = $1 AND revoked_at IS NULL AND scope IS DISTINCT FROM $2",
        key_id,
        scope
    )
    .execute(pool)
    .await
    .during("claiming a virtual key's spend")?;
    Ok(())
}

/// Of these hashes, the ones of keys revoked as of `now` (past any rotation grace): their auth
/// entries must not be in Redis. Hashes PostgreSQL does not know are not returned.
pub async fn revoked_among(pool: &PgPool, hashes: &[Vec<u8>], now: DateTime<Utc>) -> Result<Vec<Vec<u8>>, StoreError> {
    let rows = sqlx::query_scalar!(
        "SELECT key_sha256 FROM virtual_keys WHERE key_sha256 = ANY($1) AND revoked_at IS NOT NULL AND revoked_at <= $2",
        hashes,
        now.trunc_subsecs(6)
    )
    .fetch_all(pool)
    .await
    .during("finding revoked keys among auth entries")?;
    Ok(rows)
}

/// The business terms of a key that follow its VirtualKey's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyTerms {
    /// Billing owner.
    pub owner: String,
    /// Allowed model patterns.
    pub models: Vec<String>,
    /// Monthly budget in USD, a non-negative decimal string.
    pub budget_monthly_usd: String,
    /// Requests per minute.
    pub rate_limit_rpm: Option<i32>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Updates a live key's terms (owner, models, budget, rate limit, expiry).
pub async fn update_terms<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    key_id: &str,
    terms: &KeyTerms,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE virtual_keys SET owner = $2, models = $3, budget_monthly_usd = $4::text::numeric,
                  rate_limit_rpm = $5, expires_at = $6
           WHERE key_id = $1 AND revoked_at IS NULL"#,
        key_id,
        terms.owner,
        &terms.models,
        terms.budget_monthly_usd,
        terms.rate_limit_rpm,
        terms.expires_at.map(|t| t.trunc_subsecs(6)),
    )
    .execute(conn)
    .await
    .during("updating a virtual key")?;
    Ok(())
}

/// Marks a key revoked; returns `false` when it was already revoked or does not exist.
pub async fn revoke<'e>(conn: impl sqlx::PgExecutor<'e>, key_id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE virtual_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
        key_id,
        at.trunc_subsecs(6)
    )
    .execute(conn)
    .await
    .during("revoking a virtual key")?;
    Ok(result.rows_affected() == 1)
}

/// A revoked key whose auth entry may still be in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiringKey {
    /// Key id.
    pub key_id: String,
    /// SHA-256 of the key.
    pub key_sha256: Vec<u8>,
    /// When it stops (or stopped) working.
    pub revoked_at: DateTime<Utc>,
}

/// The revoked keys of a VirtualKey whose auth entries have not been removed yet.
pub async fn retiring<'e>(conn: impl sqlx::PgExecutor<'e>, resource_uid: &str) -> Result<Vec<RetiringKey>, StoreError> {
    sqlx::query_as!(
        RetiringKey,
        r#"SELECT key_id, key_sha256, revoked_at AS "revoked_at!" FROM virtual_keys
           WHERE resource_uid = $1 AND revoked_at IS NOT NULL AND unpublished_at IS NULL"#,
        resource_uid
    )
    .fetch_all(conn)
    .await
    .during("listing retiring virtual keys")
}

/// Records that a revoked key's auth entry was removed from Redis.
pub async fn mark_unpublished<'e>(conn: impl sqlx::PgExecutor<'e>, key_id: &str) -> Result<(), StoreError> {
    sqlx::query!("UPDATE virtual_keys SET unpublished_at = now() WHERE key_id = $1 AND unpublished_at IS NULL", key_id)
        .execute(conn)
        .await
        .during("recording an unpublished virtual key")?;
    Ok(())
}

/// Reads one key by id.
pub async fn get(pool: &PgPool, key_id: &str) -> Result<Option<VirtualKeyRecord>, StoreError> {
    sqlx::query_as!(
        VirtualKeyRecord,
        r#"SELECT key_id, resource_uid, owner, key_sha256, prefix, models,
                  budget_monthly_usd::text AS "budget_monthly_usd!", rate_limit_rpm, expires_at, created_at, revoked_at
           FROM virtual_keys WHERE key_id = $1"#,
        key_id
    )
    .fetch_optional(pool)
    .await
    .during("reading a virtual key")
}
