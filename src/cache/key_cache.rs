//! The operator's Redis client for the contract: publish, remove, read spend in batches,
//! restore atomically, and scan its namespace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use redis::aio::ConnectionManager;

use super::contract::*;

/// The shared Redis client: one reconnecting connection for every key.
#[derive(Clone)]
pub struct KeyCache {
    client: redis::Client,
    deadline: std::time::Duration,
    conn: ConnectionManager,
    namespace: String,
    round_trips: std::sync::Arc<AtomicU64>,
    /// The highest value of the removal counter (`{ns}epoch`) this instance has written or
    /// read, shared by the caches of one instance ([`KeyCache::sharing_epoch`]).
    epoch_seen: std::sync::Arc<AtomicI64>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl KeyCache {
    /// Connects to `url` (`redis://host:port/db`); every name gets `namespace` in front. Each
    /// answer must arrive within the client's default response deadline (500 ms).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, CacheError> {
        Self::connect_with_deadline(url, namespace, DEFAULT_RESPONSE_DEADLINE).await
    }

    /// As [`KeyCache::connect`], with another response deadline.
    pub async fn connect_with_deadline(
        url: &str,
        namespace: &str,
        deadline: std::time::Duration,
    ) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(CacheError::Connect)?;
        let conn = Self::manager(&client, deadline).await?;
        Ok(KeyCache {
            client,
            deadline,
            conn,
            namespace: namespace.to_owned(),
            round_trips: Default::default(),
            epoch_seen: Default::default(),
        })
    }

    /// This cache, keeping track of the removal counter together with `other` (the reconciles'
    /// cache and the refresher's are one instance's: either one's removals count for both).
    pub fn sharing_epoch(self, other: &KeyCache) -> Self {
        KeyCache { epoch_seen: std::sync::Arc::clone(&other.epoch_seen), ..self }
    }

    async fn manager(client: &redis::Client, deadline: std::time::Duration) -> Result<ConnectionManager, CacheError> {
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(deadline));
        client.get_connection_manager_with_config(config).await.map_err(CacheError::Connect)
    }

    /// The same client on a new connection that has answered a `PING`. After an answer
    /// outlasted the deadline, the old connection still has to take in that late answer
    /// (seconds for a huge one) before any other: a new one does not wait behind it. Fails
    /// when Redis does not answer even there: then Redis itself is slow or gone.
    pub async fn reconnected(&self) -> Result<KeyCache, CacheError> {
        let fresh = KeyCache { conn: Self::manager(&self.client, self.deadline).await?, ..self.clone() };
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        fresh.query::<redis::Value>("checking Redis answers", &pipe).await?;
        Ok(fresh)
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

    /// The removal counter: raised with every removal of auth entries, by any instance. A
    /// Redis restored from a snapshot taken before a removal holds a lower value, or none.
    pub fn epoch_key(&self) -> String {
        format!("{}epoch", self.namespace)
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

    /// Removes auth entries and raises the removal counter (one round trip).
    pub async fn remove(&self, sha256_hexes: &[String]) -> Result<(), CacheError> {
        if sha256_hexes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(sha256_hexes.iter().map(|h| self.auth_key(h)).collect::<Vec<_>>()).ignore();
        pipe.cmd("INCR").arg(self.epoch_key());
        let (epoch,): (i64,) = self.query("removing auth entries", &pipe).await?;
        self.epoch_seen.fetch_max(epoch, Ordering::Relaxed);
        Ok(())
    }

    /// Whether Redis went back in time since this instance last looked: its removal counter is
    /// below the highest this instance wrote or read (or gone: a flush, or a snapshot from
    /// before the first removal). Then a removal may be undone, and a revoked key's entry back.
    /// One `GET`. Other instances' removals only raise the counter, so they never count.
    pub async fn went_back(&self) -> Result<bool, CacheError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.epoch_key());
        let (epoch,): (Option<i64>,) = self.query("reading the removal counter", &pipe).await?;
        let epoch = epoch.unwrap_or(0);
        let seen = self.epoch_seen.fetch_max(epoch, Ordering::Relaxed);
        if epoch < seen {
            // Counted from here on: the restored value is the new baseline.
            self.epoch_seen.store(epoch, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads the auth entry, the month's counter, its marker and the usage hashes of `days`
    /// of many keys in **one** round trip (`MGET`s and `HGETALL`s in one pipeline).
    /// `keys` are `(sha256 hex, budget id)`.
    ///
    /// Malformed data is confined to its key: a value that is not what the contract says is
    /// left out and named in that key's [`ObservedCounters::problems`]; only a failure of the
    /// round trip itself (connection, deadline) fails the batch.
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
        // One name of the wrong type must not fail the other keys' answers.
        pipe.ignore_errors();
        pipe.cmd("MGET").arg(keys.iter().map(|(h, _)| self.auth_key(h)).collect::<Vec<_>>());
        pipe.cmd("MGET").arg(keys.iter().map(|(_, b)| self.spend_key(b, month)).collect::<Vec<_>>());
        pipe.cmd("MGET").arg(keys.iter().map(|(_, b)| self.base_key(b, month)).collect::<Vec<_>>());
        for (_, budget) in keys {
            for day in days {
                pipe.cmd("HGETALL").arg(self.usage_key(budget, day));
            }
        }
        const WHAT: &str = "reading counters";
        let redis::Value::Array(values) = self.query::<redis::Value>(WHAT, &pipe).await? else {
            return Err(CacheError::Shape(WHAT));
        };
        let mut values = values.into_iter();
        let mut mget = || match values.next() {
            Some(redis::Value::Array(items)) if items.len() == keys.len() => Ok(items),
            _ => Err(CacheError::Shape(WHAT)),
        };
        let (auths, spends, bases) = (mget()?, mget()?, mget()?);
        let mut out = Vec::with_capacity(keys.len());
        for ((auth, spend), base) in auths.into_iter().zip(spends).zip(bases) {
            let mut o = ObservedCounters {
                auth: bytes(&auth).map(|b| String::from_utf8_lossy(b).into_owned()),
                based: bytes(&base).is_some(),
                ..ObservedCounters::default()
            };
            match bytes(&spend) {
                None => {}
                Some(raw) => match integer(raw) {
                    Some(micros) => o.month_micros = Some(micros),
                    None => o.problem(UsageProblem::MalformedCounter),
                },
            }
            for _ in days {
                let hash = values.next().ok_or(CacheError::Shape(WHAT))?;
                let fields = usage_fields(hash, &mut o);
                o.days.push(fields);
            }
            out.push(o);
        }
        Ok(out)
    }

    /// Restores many keys' counters from PostgreSQL, each in one atomic, conditional step (a
    /// Lua script, all in one round trip): a counter whose month is unmarked, or below what
    /// PostgreSQL holds, is raised to PostgreSQL's total (and today's usage fields to its rows),
    /// never added to; anything else is left alone. Raising is idempotent, so writers deciding
    /// from their own earlier reads (a stale leader, two shards, a retry) restore a month once,
    /// and no Redis state (a flush, a snapshot from any moment) can make spend exceed what was
    /// recorded. Returns what each step did and the counter after it.
    pub async fn restore_batch(
        &self,
        restores: &[Restore],
        month: &str,
        today: &str,
    ) -> Result<Vec<(Restored, i64)>, CacheError> {
        if restores.is_empty() {
            return Ok(Vec::new());
        }
        let script = redis::Script::new(RESTORE_SCRIPT);
        let mut pipe = redis::pipe();
        // Loaded in the same round trip (idempotent), so a restarted Redis never answers NOSCRIPT.
        pipe.cmd("SCRIPT").arg("LOAD").arg(RESTORE_SCRIPT).ignore();
        for r in restores {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(3)
                .arg(self.spend_key(&r.budget_id, month))
                .arg(self.base_key(&r.budget_id, month))
                .arg(self.usage_key(&r.budget_id, today))
                .arg(r.month_micros.max(0))
                .arg(MONTH_TTL_SECONDS)
                .arg(DAY_TTL_SECONDS);
            for (field, amount) in &r.today {
                cmd.arg(field).arg((*amount).max(0));
            }
        }
        const WHAT: &str = "restoring counters";
        let answers: Vec<(i64, i64)> = self.query(WHAT, &pipe).await?;
        if answers.len() != restores.len() {
            return Err(CacheError::Shape(WHAT));
        }
        Ok(answers
            .into_iter()
            .map(|(code, after)| {
                let done = match code {
                    1 => Restored::Unmarked,
                    2 => Restored::RolledBack,
                    -1 => Restored::Malformed,
                    _ => Restored::Untouched,
                };
                (done, after)
            })
            .collect())
    }

    /// One page of the auth entries in this namespace (`SCAN ... MATCH {ns}auth:*`): the next
    /// cursor (`0` when done) and the SHA-256 hex of each entry found.
    pub async fn scan_auth(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>), CacheError> {
        let prefix = self.auth_key("");
        let mut pipe = redis::pipe();
        pipe.cmd("SCAN").arg(cursor).arg("MATCH").arg(format!("{}*", glob_escape(&prefix))).arg("COUNT").arg(count);
        let ((next, names),): ((u64, Vec<String>),) = self.query("listing auth entries", &pipe).await?;
        let hashes = names
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        Ok((next, hashes))
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

/// The atomic restore of one key (see [`KeyCache::restore_batch`]). KEYS: the month's counter,
/// its marker, today's usage hash. ARGV: PostgreSQL's total for the month, the month and day
/// TTLs, then `(field, amount)` pairs of today's rows. Everything is checked before the first
/// write: a script that fails half way keeps the writes it made. Returns `{code, counter}`
/// (code 0 untouched, 1 unmarked and raised, 2 rolled back and raised, -1 malformed counter).
///
/// Why raise and never add: a counter without its marker is either what the proxy counted
/// since a flush (PostgreSQL holds none of it) or a snapshot taken before the marker was set
/// and restored after PostgreSQL copied it (PostgreSQL holds all of it). Redis looks the same
/// in both; adding would count the second twice, raising undercounts the first by what the
/// proxy counted between the loss and this restore (at most one resync, as the block itself).
const RESTORE_SCRIPT: &str = r"
local function int(raw)
  if raw and string.match(raw, '^%-?%d+$') then return tonumber(raw) end
  return nil
end
local total = tonumber(ARGV[1])
local raw = redis.call('GET', KEYS[1])
local current = 0
if raw then
  current = int(raw)
  if current == nil then return {-1, 0} end
end
local based = redis.call('EXISTS', KEYS[2]) == 1
if based and current >= total then return {0, current} end
local adds = {}
local usage = redis.call('TYPE', KEYS[3])['ok']
if usage == 'hash' or usage == 'none' then
  for i = 4, #ARGV, 2 do
    local have_raw = redis.call('HGET', KEYS[3], ARGV[i])
    local have = 0
    if have_raw then have = int(have_raw) end
    local want = tonumber(ARGV[i + 1])
    if have ~= nil and want ~= nil and want > have then
      adds[#adds + 1] = {ARGV[i], want - have}
    end
  end
end
local after = current
if total > current then after = redis.call('INCRBY', KEYS[1], total - current) end
if raw or total > current then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
for _, a in ipairs(adds) do redis.call('HINCRBY', KEYS[3], a[1], a[2]) end
if #adds > 0 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
if based then return {2, after} end
return {1, after}
";

/// The bytes of a string answer (`None`: nil, or a type that is not a string).
fn bytes(value: &redis::Value) -> Option<&[u8]> {
    match value {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// An integer as Redis' `INCRBY` accepts it (decimal digits, an optional minus, nothing else).
fn integer(raw: &[u8]) -> Option<i64> {
    std::str::from_utf8(raw).ok().filter(|s| !s.starts_with('+'))?.parse().ok()
}

/// The well-formed fields of one `HGETALL` answer (RESP2 flat array or RESP3 map); every
/// other field, and an answer that is no hash at all, is noted on `o`.
fn usage_fields(answer: redis::Value, o: &mut ObservedCounters) -> HashMap<String, i64> {
    let pairs: Vec<(redis::Value, redis::Value)> = match answer {
        redis::Value::Map(pairs) => pairs,
        redis::Value::Array(flat) => {
            let mut flat = flat.into_iter();
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
        }
        redis::Value::Nil => Vec::new(),
        _ => {
            o.problem(UsageProblem::WrongType);
            return HashMap::new();
        }
    };
    let mut fields = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let name = bytes(&name).and_then(|b| std::str::from_utf8(b).ok()).filter(|n| parse_usage_field(n).is_some());
        match (name, bytes(&value).and_then(integer)) {
            (Some(name), Some(value)) => {
                fields.insert(name.to_owned(), value);
            }
            _ => o.problem(UsageProblem::MalformedField),
        }
    }
    fields
}

/// `pattern` matching itself only in `SCAN ... MATCH` (a namespace may hold glob characters).
fn glob_escape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_usage_fields_are_kept_and_the_rest_is_named() {
        use redis::Value::{BulkString, Nil, SimpleString};
        let b = |s: &str| BulkString(s.as_bytes().to_vec());
        let mut o = ObservedCounters::default();
        let answer = redis::Value::Array(vec![
            b("llm|gpt-4o|cost"),
            b("1200"),
            b("llm|gpt-4o|requests"),
            b("abc"),
            BulkString(vec![0xff, 0xfe]),
            b("1"),
            b("nonsense"),
            b("5"),
        ]);
        let fields = usage_fields(answer, &mut o);
        assert_eq!(fields, HashMap::from([("llm|gpt-4o|cost".to_owned(), 1200)]));
        assert_eq!(o.problems, vec![UsageProblem::MalformedField]);
        assert_eq!(o.skipped, 3);
        let mut o = ObservedCounters::default();
        assert!(usage_fields(Nil, &mut o).is_empty());
        assert!(o.problems.is_empty());
        assert!(usage_fields(SimpleString("x".into()), &mut o).is_empty());
        assert_eq!(o.problems, vec![UsageProblem::WrongType]);
    }

    #[test]
    fn integers_are_what_incrby_accepts() {
        assert_eq!(integer(b"-12"), Some(-12));
        for bad in [&b"1e3"[..], b"+1", b"1.5", b" 1", b"", b"NaN", b"99999999999999999999"] {
            assert_eq!(integer(bad), None);
        }
        assert_eq!(glob_escape("cg*k:[a]?\\"), "cg\\*k:\\[a\\]\\?\\\\");
    }

    #[test]
    fn usage_fields_round_trip_with_colons_in_models() {
        let f = usage_field("llm", "openai/gpt-4o:mini", "cost");
        assert_eq!(parse_usage_field(&f), Some(("llm", "openai/gpt-4o:mini", "cost")));
        assert_eq!(parse_usage_field("llm||cost"), None);
        assert_eq!(parse_usage_field("nonsense"), None);
    }
}
