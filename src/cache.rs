//! Redis, the LLM proxy's cache: the auth entries the proxy looks keys up by, and the spend
//! counters it increments. The only code that talks to Redis. Redis holds no business data:
//! every value here is re-published or restored from PostgreSQL by the VirtualKey controller,
//! and the plaintext key never reaches Redis (only its SHA-256).
//!
//! # The contract with the proxy
//!
//! All key names start with a namespace, `cgk:` by default (`ControllerConfig::redis_namespace`),
//! written `{ns}` below. Money is integer **micro-USD** (1 USD = 1 000 000), so `INCRBY` is
//! exact. Months and days are calendar UTC (`YYYY-MM`, `YYYY-MM-DD`).
//!
//! | key | type | writer | TTL |
//! | --- | --- | --- | --- |
//! | `{ns}auth:{sha256}` | string (JSON) | operator | none (removed on revoke) |
//! | `{ns}spend:{budgetId}:{YYYY-MM}` | integer, micro-USD | proxy `INCRBY` | proxy sets 62 days |
//! | `{ns}usage:{budgetId}:{YYYY-MM-DD}` | hash of integers | proxy `HINCRBY` | proxy sets 40 days |
//! | `{ns}base:{budgetId}:{YYYY-MM}` | string `1` | operator only | 62 days |
//!
//! `{sha256}` is the lowercase hex SHA-256 of the whole key as presented (`Authorization:
//! Bearer cgk_...`). The auth entry's JSON:
//!
//! ```json
//! {"v":1,"keyId":"vk_5f0c...","budgetId":"<VirtualKey UID>","owner":"acct_7f3a",
//!  "models":["gpt-4o*"],"rateLimitRpm":60,"expiresAt":"2027-06-30T00:00:00Z",
//!  "blocked":false,"blockedReason":null}
//! ```
//!
//! `rateLimitRpm` and `expiresAt` are `null` when unlimited; `blockedReason` is `null`,
//! `"BudgetExceeded"` or `"Expired"`. `models` are patterns where `*` matches any run of
//! characters. `budgetId` stays the same across key rotations, so rotating a key does not
//! reset its spend. Unknown fields must be ignored (later versions may add some; `v` changes
//! only for an incompatible change). After a rotation with a grace period the old key's entry
//! stays until the grace ends, carrying the new key's terms and block (only `keyId` differs, and
//! it follows them within a resync); then it is deleted like a revoked key's.
//!
//! The operator blocks a key (rewrites its entry with `blocked: true`) within one resync of
//! the monthly counter reaching the budget, and at `expiresAt` itself; it lifts the block when
//! the budget is raised or a new month starts (the new month's counter starts at zero). A
//! request or two past the budget between the counter crossing it and the next resync is the
//! accepted overshoot; a proxy that must not overshoot compares the counter itself.
//!
//! Per request the proxy must: look up `{ns}auth:{sha256}`; refuse when absent (unknown or
//! revoked key), when `blocked` is true, when `expiresAt` is past (do not wait for the
//! operator), when the model matches no pattern, or when more than `rateLimitRpm` requests
//! came in the current minute (the proxy's own counter, e.g. `{ns}rate:{budgetId}:{unix
//! minute}` with a 120 s TTL; the operator never reads it). After serving it adds the cost,
//! in one `MULTI`: `INCRBY {ns}spend:{budgetId}:{month} cost`, `EXPIRE ... 5356800`,
//! `HINCRBY {ns}usage:{budgetId}:{day} {surface}|{model}|cost cost`, `HINCRBY ...
//! {surface}|{model}|requests 1`, `EXPIRE ... 3456000`; `surface` is `llm` or `tts` (voice
//! requests use the same keys and shape).
//!
//! The operator never writes the proxy's counters except to restore them: when
//! `{ns}base:{budgetId}:{month}` is missing (Redis lost its data, or the month is new), it
//! adds in one `MULTI` what PostgreSQL holds for the month to the monthly counter and to
//! today's usage hash, and sets the marker. Redis must therefore run with `noeviction` (or a
//! `volatile-*` policy): an evicted marker would restore the month twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// Monthly counters and markers outlive their month by a month: late copies still find them.
pub const MONTH_TTL_SECONDS: u64 = 62 * 24 * 3600;
/// Daily usage hashes: long enough for the operator to copy the day after a long outage.
pub const DAY_TTL_SECONDS: u64 = 40 * 24 * 3600;

/// Errors talking to Redis. Never carries a key or a value, only the operation.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The URL is malformed or the server unreachable.
    #[error("cannot connect to Redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// A command failed.
    #[error("Redis error while {what}: {source}")]
    Command {
        /// The operation.
        what: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// An answer did not have the shape the contract promises.
    #[error("unexpected Redis answer while {0}")]
    Shape(&'static str),
}

/// What the proxy needs to authenticate a key: the JSON value of `{ns}auth:{sha256}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthEntry {
    /// Contract version.
    pub v: u32,
    /// Key id.
    pub key_id: String,
    /// Where the spend counters live (the VirtualKey's UID; stable across rotations).
    pub budget_id: String,
    /// Billing owner.
    pub owner: String,
    /// Allowed model patterns.
    pub models: Vec<String>,
    /// Requests per minute, `null` when unlimited.
    pub rate_limit_rpm: Option<i32>,
    /// RFC 3339 expiry, `null` when never.
    pub expires_at: Option<String>,
    /// Whether the proxy must refuse the key.
    pub blocked: bool,
    /// `BudgetExceeded` or `Expired` when blocked.
    pub blocked_reason: Option<String>,
}

/// One key's counters as read in one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedCounters {
    /// The auth entry's JSON, if present.
    pub auth: Option<String>,
    /// The month's spend in micro-USD, if the counter exists.
    pub month_micros: Option<i64>,
    /// Whether the month's counters include PostgreSQL's base (marker present).
    pub based: bool,
    /// `{surface}|{model}|cost` / `|requests` fields of each requested day.
    pub days: Vec<HashMap<String, i64>>,
}

/// What to add back to one key's counters after Redis lost them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restore {
    /// The VirtualKey's UID.
    pub budget_id: String,
    /// Micro-USD to add to the monthly counter.
    pub month_micros: i64,
    /// `(field, amount)` to add to today's usage hash.
    pub today: Vec<(String, i64)>,
}

/// The field name of a usage hash: `{surface}|{model}|{what}` (`|` is not allowed in model
/// patterns, so it cannot occur in a model name the proxy accepted).
pub fn usage_field(surface: &str, model: &str, what: &str) -> String {
    format!("{surface}|{model}|{what}")
}

/// Splits a usage field into `(surface, model, what)`.
pub fn parse_usage_field(field: &str) -> Option<(&str, &str, &str)> {
    let (surface, rest) = field.split_once('|')?;
    let (model, what) = rest.rsplit_once('|')?;
    (!model.is_empty()).then_some((surface, model, what))
}

/// The shared Redis client: one reconnecting connection for every key.
#[derive(Clone)]
pub struct KeyCache {
    conn: ConnectionManager,
    namespace: String,
    round_trips: std::sync::Arc<AtomicU64>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl KeyCache {
    /// Connects to `url` (`redis://host:port/db`); every name gets `namespace` in front.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(CacheError::Connect)?;
        let conn = client.get_connection_manager().await.map_err(CacheError::Connect)?;
        Ok(KeyCache { conn, namespace: namespace.to_owned(), round_trips: Default::default() })
    }

    /// The namespace in front of every name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Round trips made so far (tests and benchmarks check batching with it).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    pub fn auth_key(&self, sha256_hex: &str) -> String {
        format!("{}auth:{sha256_hex}", self.namespace)
    }

    pub fn spend_key(&self, budget_id: &str, month: &str) -> String {
        format!("{}spend:{budget_id}:{month}", self.namespace)
    }

    pub fn usage_key(&self, budget_id: &str, day: &str) -> String {
        format!("{}usage:{budget_id}:{day}", self.namespace)
    }

    pub fn base_key(&self, budget_id: &str, month: &str) -> String {
        format!("{}base:{budget_id}:{month}", self.namespace)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        let mut conn = self.conn.clone();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        pipe.query_async(&mut conn).await.map_err(|source| CacheError::Command { what, source })
    }

    /// Writes an auth entry (one round trip).
    pub async fn publish(&self, sha256_hex: &str, entry_json: &str) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(self.auth_key(sha256_hex)).arg(entry_json).ignore();
        self.query::<()>("publishing an auth entry", &pipe).await
    }

    /// Reads many auth entries (one `MGET`, one round trip), in the order asked.
    pub async fn read_auth(&self, sha256_hexes: &[String]) -> Result<Vec<Option<String>>, CacheError> {
        if sha256_hexes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(sha256_hexes.iter().map(|h| self.auth_key(h)).collect::<Vec<_>>());
        let (entries,): (Vec<Option<String>>,) = self.query("reading auth entries", &pipe).await?;
        if entries.len() != sha256_hexes.len() {
            return Err(CacheError::Shape("reading auth entries"));
        }
        Ok(entries)
    }

    /// Writes many auth entries, `(sha256 hex, JSON)` (one `MSET`, one round trip).
    pub async fn publish_many(&self, entries: &[(String, String)]) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let mut mset = redis::cmd("MSET");
        for (hash, json) in entries {
            mset.arg(self.auth_key(hash)).arg(json);
        }
        pipe.add_command(mset).ignore();
        self.query::<()>("publishing auth entries", &pipe).await
    }

    /// Removes auth entries (one round trip).
    pub async fn remove(&self, sha256_hexes: &[String]) -> Result<(), CacheError> {
        if sha256_hexes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(sha256_hexes.iter().map(|h| self.auth_key(h)).collect::<Vec<_>>()).ignore();
        self.query::<()>("removing auth entries", &pipe).await
    }

    /// Reads the auth entry, the month's counter, its marker and the usage hashes of `days`
    /// of many keys in **one** round trip (`MGET`s and `HGETALL`s in one pipeline).
    /// `keys` are `(sha256 hex, budget id)`.
    pub async fn read_batch(
        &self,
        keys: &[(String, String)],
        month: &str,
        days: &[String],
    ) -> Result<Vec<ObservedCounters>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(keys.iter().map(|(h, _)| self.auth_key(h)).collect::<Vec<_>>());
        pipe.cmd("MGET").arg(keys.iter().map(|(_, b)| self.spend_key(b, month)).collect::<Vec<_>>());
        pipe.cmd("MGET").arg(keys.iter().map(|(_, b)| self.base_key(b, month)).collect::<Vec<_>>());
        for (_, budget) in keys {
            for day in days {
                pipe.cmd("HGETALL").arg(self.usage_key(budget, day));
            }
        }
        let mut values: std::collections::VecDeque<redis::Value> =
            self.query::<Vec<redis::Value>>("reading counters", &pipe).await?.into();
        let mut next = || values.pop_front().ok_or(CacheError::Shape("reading counters"));
        let shape = |_| CacheError::Shape("reading counters");
        let auths: Vec<Option<String>> = redis::from_redis_value(next()?).map_err(shape)?;
        let spends: Vec<Option<i64>> = redis::from_redis_value(next()?).map_err(shape)?;
        let bases: Vec<Option<String>> = redis::from_redis_value(next()?).map_err(shape)?;
        if auths.len() != keys.len() || spends.len() != keys.len() || bases.len() != keys.len() {
            return Err(CacheError::Shape("reading counters"));
        }
        let mut out = Vec::with_capacity(keys.len());
        for ((auth, month_micros), base) in auths.into_iter().zip(spends).zip(bases) {
            let mut hashes = Vec::with_capacity(days.len());
            for _ in days {
                let hash: HashMap<String, i64> = redis::from_redis_value(next()?).map_err(shape)?;
                hashes.push(hash);
            }
            out.push(ObservedCounters { auth, month_micros, based: base.is_some(), days: hashes });
        }
        Ok(out)
    }

    /// Adds PostgreSQL's base back to many keys' counters and sets their markers, atomically
    /// (`MULTI`/`EXEC`, one round trip): a crash cannot leave counters restored without the
    /// marker, which would restore them twice.
    pub async fn restore_batch(&self, restores: &[Restore], month: &str, today: &str) -> Result<(), CacheError> {
        if restores.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in restores {
            let spend = self.spend_key(&r.budget_id, month);
            pipe.cmd("INCRBY").arg(&spend).arg(r.month_micros).ignore();
            pipe.cmd("EXPIRE").arg(&spend).arg(MONTH_TTL_SECONDS).ignore();
            if !r.today.is_empty() {
                let usage = self.usage_key(&r.budget_id, today);
                for (field, amount) in &r.today {
                    pipe.cmd("HINCRBY").arg(&usage).arg(field).arg(*amount).ignore();
                }
                pipe.cmd("EXPIRE").arg(&usage).arg(DAY_TTL_SECONDS).ignore();
            }
            pipe.cmd("SET").arg(self.base_key(&r.budget_id, month)).arg("1").arg("EX").arg(MONTH_TTL_SECONDS).ignore();
        }
        self.query::<()>("restoring counters", &pipe).await
    }

    /// Deletes every name in this namespace at once, as `FLUSHALL` would for the namespace alone
    /// (tests: never the whole database). One script, so nothing runs in between: a restore
    /// or a proxy increment lands wholly before the flush or wholly after it.
    ///
    /// The script scans the whole server, so on a busy shared Redis it can outlast the client's
    /// response deadline (500 ms) and still complete. Deleting twice is harmless, so a timeout
    /// is retried, a bounded number of times; any other error is returned at once.
    pub async fn clear_namespace(&self) -> Result<u64, CacheError> {
        const ATTEMPTS: usize = 20;
        let mut attempt = 1;
        loop {
            match self.clear_namespace_once().await {
                Err(CacheError::Command { source, .. }) if source.is_timeout() && attempt < ATTEMPTS => {
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn clear_namespace_once(&self) -> Result<u64, CacheError> {
        const CLEAR: &str = r"
            local cursor, deleted = '0', 0
            repeat
                local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
                cursor = page[1]
                for _, name in ipairs(page[2]) do
                    deleted = deleted + redis.call('DEL', name)
                end
            until cursor == '0'
            return deleted";
        let mut conn = self.conn.clone();
        redis::cmd("EVAL")
            .arg(CLEAR)
            .arg(0)
            .arg(format!("{}*", self.namespace))
            .query_async(&mut conn)
            .await
            .map_err(|source| CacheError::Command { what: "clearing the namespace", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_fields_round_trip_with_colons_in_models() {
        let f = usage_field("llm", "openai/gpt-4o:mini", "cost");
        assert_eq!(parse_usage_field(&f), Some(("llm", "openai/gpt-4o:mini", "cost")));
        assert_eq!(parse_usage_field("llm||cost"), None);
        assert_eq!(parse_usage_field("nonsense"), None);
    }
}
