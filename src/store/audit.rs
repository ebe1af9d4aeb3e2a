//! The audit trail: the only code that writes audit events.
//!
//! Events are appended, never changed (a trigger refuses UPDATE, DELETE and TRUNCATE). Every row
//! carries the hash of the previous row and of its own canonical content, so any change made
//! behind the trigger's back breaks the chain and `verify_chain` finds the first broken link.
//! Writers, in any number of processes, serialise on one advisory lock: one linear chain.

use chrono::{DateTime, SubsecRound, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{QueryContext, StoreError};

/// Advisory-lock key all audit writers share ("crabaudi" in ASCII).
const CHAIN_LOCK: i64 = 0x6372_6162_6175_6469;
/// `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// Domain separation for the row hash; bump it if the canonical form ever changes.
const HASH_DOMAIN: &[u8] = b"crabglamp.audit_events.v1";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// An Agent changed owner.
    AgentTransferred,
    /// An Agent was deleted and its cloud resources torn down (or orphaned).
    AgentDestroyed,
    /// A PlainVM was deleted and its cloud resources torn down (or orphaned).
    PlainVmDestroyed,
    /// A virtual key was revoked (deletion or rotation).
    VirtualKeyRevoked,
    /// A virtual key was issued.
    VirtualKeyIssued,
    /// A virtual key was replaced by a new one (`spec.rotationToken` changed).
    VirtualKeyRotated,
    /// A virtual key changed billing owner.
    VirtualKeyTransferred,
}

impl AuditKind {
    /// The stored name, e.g. `agent.transferred`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::AgentTransferred => "agent.transferred",
            AuditKind::AgentDestroyed => "agent.destroyed",
            AuditKind::PlainVmDestroyed => "plainvm.destroyed",
            AuditKind::VirtualKeyRevoked => "virtualkey.revoked",
            AuditKind::VirtualKeyIssued => "virtualkey.issued",
            AuditKind::VirtualKeyRotated => "virtualkey.rotated",
            AuditKind::VirtualKeyTransferred => "virtualkey.transferred",
        }
    }
}

/// The Kubernetes object an event is about. Kept by value: the object may be long gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    /// Kind, e.g. `Agent`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (distinguishes objects re-created under the same name).
    pub uid: String,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// Unique per logical event (e.g. `agent.destroyed/<uid>`): a retry with the same key is a no-op.
    pub event_key: String,
    /// What happened.
    pub kind: AuditKind,
    /// The object concerned.
    pub resource: ResourceRef,
    /// `[owner]`, or `[from, to]` for a transfer.
    pub owners: Vec<String>,
    /// Region of the resource, if it has one.
    pub region: Option<String>,
    /// Outside identifiers (server id, tunnel id, ...), a JSON object.
    pub cloud_ids: Value,
    /// Anything else worth keeping, a JSON object. Never secrets.
    pub details: Value,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unique event key.
    pub event_key: String,
    /// Stored kind name, e.g. `agent.transferred`.
    pub kind: String,
    /// The object concerned.
    pub resource: ResourceRef,
    /// Owner(s).
    pub owners: Vec<String>,
    /// Region, if any.
    pub region: Option<String>,
    /// Outside identifiers.
    pub cloud_ids: Value,
    /// Details.
    pub details: Value,
    /// When it happened (microsecond precision, as stored).
    pub occurred_at: DateTime<Utc>,
    /// When it was written.
    pub recorded_at: DateTime<Utc>,
    /// Hash of the previous event.
    pub prev_hash: Vec<u8>,
    /// Hash of this event.
    pub hash: Vec<u8>,
}

/// Whether an append wrote a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// The event is new and now recorded.
    Recorded(AuditEvent),
    /// An event with this key was recorded before; nothing was written.
    AlreadyRecorded(AuditEvent),
}

impl Appended {
    /// The stored event, whichever way.
    pub fn event(&self) -> &AuditEvent {
        match self {
            Appended::Recorded(e) | Appended::AlreadyRecorded(e) => e,
        }
    }
}

/// JSON with object keys sorted at every level: the same value always hashes the same,
/// whatever order JSONB or a caller gives the keys in.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The canonical text of a time: RFC 3339, UTC, microseconds (what PostgreSQL keeps).
pub(crate) fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The hash of a row: SHA-256 over the previous hash and the row's fields, each length-prefixed
/// so no two different rows share an encoding.
pub fn event_hash(event: &AuditEvent) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(HASH_DOMAIN);
    field(&event.prev_hash);
    field(event.seq.to_string().as_bytes());
    field(event.event_key.as_bytes());
    field(event.kind.as_bytes());
    field(event.resource.kind.as_bytes());
    field(event.resource.namespace.as_bytes());
    field(event.resource.name.as_bytes());
    field(event.resource.uid.as_bytes());
    field(event.owners.len().to_string().as_bytes());
    for owner in &event.owners {
        field(owner.as_bytes());
    }
    match &event.region {
        Some(region) => {
            field(b"some");
            field(region.as_bytes());
        }
        None => field(b"none"),
    }
    let mut json = String::new();
    canonical_json(&event.cloud_ids, &mut json);
    field(json.as_bytes());
    json.clear();
    canonical_json(&event.details, &mut json);
    field(json.as_bytes());
    field(timestamp(&event.occurred_at).as_bytes());
    field(timestamp(&event.recorded_at).as_bytes());
    hasher.finalize().into()
}

struct Row {
    seq: i64,
    event_key: String,
    kind: String,
    resource_kind: String,
    resource_namespace: String,
    resource_name: String,
    resource_uid: String,
    owners: Vec<String>,
    region: Option<String>,
    cloud_ids: Value,
    details: Value,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl From<Row> for AuditEvent {
    fn from(r: Row) -> Self {
        AuditEvent {
            seq: r.seq,
            event_key: r.event_key,
            kind: r.kind,
            resource: ResourceRef {
                kind: r.resource_kind,
                namespace: r.resource_namespace,
                name: r.resource_name,
                uid: r.resource_uid,
            },
            owners: r.owners,
            region: r.region,
            cloud_ids: r.cloud_ids,
            details: r.details,
            occurred_at: r.occurred_at,
            recorded_at: r.recorded_at,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// Appends `event` to the chain, exactly once per event key.
///
/// Safe under any number of concurrent writers in any number of processes: the advisory lock
/// makes "read the tail, write the next row" atomic, and the primary key on `seq` plus the
/// unique `prev_hash` would refuse a fork even from a writer that skipped the lock.
///
/// `conn` is a pool, a connection or a caller's transaction (then this runs in a savepoint and
/// commits with the caller's writes, e.g. the last usage row and a destroy event together).
pub async fn append<'c>(
    conn: impl sqlx::Acquire<'c, Database = sqlx::Postgres>,
    event: &NewAuditEvent,
) -> Result<Appended, StoreError> {
    let mut tx = conn.begin().await.during("starting an audit transaction")?;
    // The resource's lock first, then the chain's: the insert's trigger takes the resource's
    // (migration 0007), and usage writers take only that one, so the order is always the same
    // and two writers never wait on each other in a cycle. (`query!` cannot describe a `void`
    // result column, hence the unchecked form for these.)
    sqlx::query("SELECT crabglamp_lock_resource($1)")
        .bind(&event.resource.uid)
        .execute(&mut *tx)
        .await
        .during("locking the audited resource")?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut *tx)
        .await
        .during("locking the audit chain")?;

    let existing = sqlx::query_as!(
        Row,
        r#"SELECT seq, event_key, kind, resource_kind, resource_namespace, resource_name, resource_uid,
                  owners, region, cloud_ids, details, occurred_at, recorded_at, prev_hash, hash
           FROM audit_events WHERE event_key = $1"#,
        event.event_key
    )
    .fetch_optional(&mut *tx)
    .await
    .during("looking up an audit event key")?;
    if let Some(row) = existing {
        tx.rollback().await.during("ending an audit transaction")?;
        return Ok(Appended::AlreadyRecorded(row.into()));
    }

    let tail = sqlx::query!("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await
        .during("reading the tail of the audit chain")?;
    let (seq, prev_hash) = match tail {
        Some(t) => (t.seq + 1, t.hash),
        None => (1, GENESIS_HASH.to_vec()),
    };

    let mut stored = AuditEvent {
        seq,
        event_key: event.event_key.clone(),
        kind: event.kind.as_str().to_owned(),
        resource: event.resource.clone(),
        owners: event.owners.clone(),
        region: event.region.clone(),
        cloud_ids: event.cloud_ids.clone(),
        details: event.details.clone(),
        // PostgreSQL keeps microseconds: hash what will be read back.
        occurred_at: event.occurred_at.trunc_subsecs(6),
        recorded_at: Utc::now().trunc_subsecs(6),
        prev_hash,
        hash: Vec::new(),
    };
    stored.hash = event_hash(&stored).to_vec();

    sqlx::query!(
        r#"INSERT INTO audit_events (seq, event_key, kind, resource_kind, resource_namespace, resource_name,
                                     resource_uid, owners, region, cloud_ids, details, occurred_at, recorded_at,
                                     prev_hash, hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"#,
        stored.seq,
        stored.event_key,
        stored.kind,
        stored.resource.kind,
        stored.resource.namespace,
        stored.resource.name,
        stored.resource.uid,
        &stored.owners,
        stored.region,
        stored.cloud_ids,
        stored.details,
        stored.occurred_at,
        stored.recorded_at,
        stored.prev_hash,
        stored.hash,
    )
    .execute(&mut *tx)
    .await
    .during("appending an audit event")?;
    tx.commit().await.during("committing an audit event")?;
    Ok(Appended::Recorded(stored))
}

/// Every event about the object with `uid`, oldest first.
pub async fn events_for_resource(pool: &PgPool, uid: &str) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT seq, event_key, kind, resource_kind, resource_namespace, resource_name, resource_uid,
                  owners, region, cloud_ids, details, occurred_at, recorded_at, prev_hash, hash
           FROM audit_events WHERE resource_uid = $1 ORDER BY seq"#,
        uid
    )
    .fetch_all(pool)
    .await
    .during("reading audit events of a resource")?;
    Ok(rows.into_iter().map(AuditEvent::from).collect())
}

/// The first place the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// Sequence number of the first row that does not verify.
    pub seq: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// The newest event of the chain: what the anchor outside the database vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Its position.
    pub seq: i64,
    /// Its hash.
    pub hash: Vec<u8>,
    /// When it was written.
    pub recorded_at: DateTime<Utc>,
}

/// The result of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Rows that verified before the first break (all of them when unbroken).
    pub verified: u64,
    /// The first broken link, if any.
    pub first_break: Option<ChainBreak>,
    /// The last row that verified (none when none did, or the walk started after the end).
    pub last_verified: Option<ChainHead>,
}

/// Walks the chain from the first event, recomputing every hash, and reports the first row
/// whose position, link to its predecessor or content does not match.
pub async fn verify_chain(pool: &PgPool) -> Result<ChainReport, StoreError> {
    verify_after(pool, 0, &GENESIS_HASH).await
}

/// Walks the rows after event `seq` (whose hash is `hash`; 0 and [`GENESIS_HASH`] for the whole
/// chain) as [`verify_chain`] does: how the anchor publisher checks that the rows it is about
/// to vouch for extend the ones it vouched for before, without reading those again.
pub async fn verify_after(pool: &PgPool, seq: i64, hash: &[u8]) -> Result<ChainReport, StoreError> {
    let mut rows = sqlx::query_as!(
        Row,
        r#"SELECT seq, event_key, kind, resource_kind, resource_namespace, resource_name, resource_uid,
                  owners, region, cloud_ids, details, occurred_at, recorded_at, prev_hash, hash
           FROM audit_events WHERE seq > $1 ORDER BY seq"#,
        seq
    )
    .fetch(pool);
    let mut expected_seq = seq + 1;
    let mut prev_hash = hash.to_vec();
    let mut report = ChainReport { verified: 0, first_break: None, last_verified: None };
    while let Some(row) = rows.try_next().await.during("reading the audit chain")? {
        let event = AuditEvent::from(row);
        let problem = if event.seq != expected_seq {
            Some(format!("expected event {expected_seq} next, found {}: events are missing", event.seq))
        } else if event.prev_hash != prev_hash {
            Some("prev_hash does not match the hash of the previous event".to_owned())
        } else if event.hash != event_hash(&event) {
            Some("content does not match its hash: the row was altered".to_owned())
        } else {
            None
        };
        if let Some(reason) = problem {
            report.first_break = Some(ChainBreak { seq: event.seq, reason });
            return Ok(report);
        }
        expected_seq += 1;
        prev_hash.clone_from(&event.hash);
        report.verified += 1;
        report.last_verified = Some(ChainHead { seq: event.seq, hash: event.hash, recorded_at: event.recorded_at });
    }
    Ok(report)
}

/// The newest event (none while the trail is empty).
pub async fn head(pool: &PgPool) -> Result<Option<ChainHead>, StoreError> {
    let row = sqlx::query!("SELECT seq, hash, recorded_at FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(pool)
        .await
        .during("reading the head of the audit chain")?;
    Ok(row.map(|r| ChainHead { seq: r.seq, hash: r.hash, recorded_at: r.recorded_at }))
}

/// The stored hash of event `seq` (none when there is no such row).
pub async fn hash_at(pool: &PgPool, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    sqlx::query_scalar!("SELECT hash FROM audit_events WHERE seq = $1", seq)
        .fetch_optional(pool)
        .await
        .during("reading an audit event's hash")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let mut a = String::new();
        canonical_json(&json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}}), &mut a);
        assert_eq!(a, r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#);
    }
}
