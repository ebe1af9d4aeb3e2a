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

/// Records a newly issued key. Idempotent for the same key id and hash, so a retried issue
/// after a crash does not fail.
pub async fn insert(pool: &PgPool, key: &NewVirtualKey) -> Result<(), StoreError> {
    sqlx::query!(
        r#"INSERT INTO virtual_keys (key_id, resource_namespace, resource_name, resource_uid, owner, key_sha256,
                                     prefix, models, budget_monthly_usd, rate_limit_rpm, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::numeric, $10, $11)
           ON CONFLICT (key_id) DO NOTHING"#,
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
    )
    .execute(pool)
    .await
    .during("recording a virtual key")?;
    Ok(())
}

/// Marks a key revoked; returns `false` when it was already revoked or does not exist.
pub async fn revoke(pool: &PgPool, key_id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE virtual_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
        key_id,
        at.trunc_subsecs(6)
    )
    .execute(pool)
    .await
    .during("revoking a virtual key")?;
    Ok(result.rows_affected() == 1)
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
