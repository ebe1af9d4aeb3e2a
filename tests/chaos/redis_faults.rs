//! The Redis faults of the chaos suite that the operator's own client never makes: one key's
//! usage data turning bad, a Redis restarted from an older snapshot of the run's namespace,
//! and a second (stale) writer of the same database and namespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use crabglamp_operator::controllers::Context;
use crabglamp_operator::operator;
use crabglamp_operator::store::seal::SealingKeys;

use super::plan::Malformation;
use crate::fixture::{self, OPERATOR_USER, Operator};

/// Where a key's usage data was made bad, to undo it: a field of a hash, or a whole name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub how: Malformation,
    pub name: String,
    pub field: Option<String>,
}

/// Every name of the namespace with its TTL (milliseconds, 0 for none) and `DUMP` payload,
/// taken in one script (a point in time, as an RDB file is); and which keys' usage data was
/// malformed then (a restore brings it back).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub entries: Vec<(String, i64, Vec<u8>)>,
    pub malformed: BTreeMap<String, Vec<Malformed>>,
}

/// The usage hash or key of `budget` on `day` (`YYYY-MM-DD`), as the proxy names it.
fn usage_name(ns: &str, budget: &str, day: chrono::NaiveDate) -> String {
    format!("{ns}usage:{budget}:{day}")
}

/// Makes `budget`'s usage data malformed, in a field or name the chaos proxy never writes
/// (it records `llm|gpt-4o-mini|*` in today's hash), so the proxy keeps working.
pub async fn malform(
    redis: &mut redis::aio::MultiplexedConnection,
    ns: &str,
    budget: &str,
    how: Malformation,
) -> Malformed {
    let today = chrono::Utc::now().date_naive();
    let (name, field, value) = match how {
        Malformation::NotInteger => {
            (usage_name(ns, budget, today), Some("llm|gpt-4o|cost".to_owned()), "abc".to_owned())
        }
        Malformation::LongModel => {
            (usage_name(ns, budget, today), Some(format!("llm|{}|cost", "m".repeat(200))), "1000".to_owned())
        }
        Malformation::WrongType => {
            (usage_name(ns, budget, today.pred_opt().unwrap_or(today)), None, "not a hash".to_owned())
        }
    };
    let cmd = match &field {
        Some(f) => {
            let mut c = redis::cmd("HSET");
            c.arg(&name).arg(f).arg(&value);
            c
        }
        None => {
            let mut c = redis::cmd("SET");
            c.arg(&name).arg(&value);
            c
        }
    };
    cmd.query_async::<()>(redis).await.unwrap_or_else(|e| panic!("malform usage: {e}"));
    tracing::info!(target: "chaos", ?how, %name, "usage data made malformed");
    Malformed { how, name, field }
}

/// Undoes [`malform`].
pub async fn repair(redis: &mut redis::aio::MultiplexedConnection, m: &Malformed) {
    let cmd = match &m.field {
        Some(f) => {
            let mut c = redis::cmd("HDEL");
            c.arg(&m.name).arg(f);
            c
        }
        None => {
            let mut c = redis::cmd("DEL");
            c.arg(&m.name);
            c
        }
    };
    cmd.query_async::<()>(redis).await.unwrap_or_else(|e| panic!("repair usage: {e}"));
}

/// Runs `script` until it is not a timeout: a script scanning the shared server can outlast
/// the client's response deadline and still complete. Both scripts here may run twice.
async fn eval_retrying(
    redis: &mut redis::aio::MultiplexedConnection,
    what: &str,
    script: &str,
    args: &[Vec<u8>],
) -> redis::Value {
    const ATTEMPTS: usize = 20;
    for attempt in 1.. {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(0);
        for a in args {
            cmd.arg(a);
        }
        match cmd.query_async::<redis::Value>(redis).await {
            Err(e) if e.is_timeout() && attempt < ATTEMPTS => continue,
            result => return result.unwrap_or_else(|e| panic!("{what}: {e}")),
        }
    }
    unreachable!("the loop returns")
}

fn bulk(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Saves every name of the namespace (see [`Snapshot`]).
pub async fn snapshot(
    redis: &mut redis::aio::MultiplexedConnection,
    ns: &str,
    malformed: BTreeMap<String, Vec<Malformed>>,
) -> Snapshot {
    const SAVE: &str = r"
        local cursor, out = '0', {}
        repeat
            local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
            cursor = page[1]
            for _, name in ipairs(page[2]) do
                local dump = redis.call('DUMP', name)
                if dump then
                    table.insert(out, name)
                    table.insert(out, redis.call('PTTL', name))
                    table.insert(out, dump)
                end
            end
        until cursor == '0'
        return out";
    let saved = eval_retrying(redis, "snapshot", SAVE, &[bulk(&format!("{ns}*"))]).await;
    let values: Vec<redis::Value> = redis::from_redis_value(saved).unwrap_or_else(|e| panic!("snapshot: {e}"));
    let mut entries = Vec::new();
    for triple in values.chunks(3) {
        let [name, ttl, dump] = triple else { panic!("snapshot: a partial entry") };
        let name: String = redis::from_redis_value(name.clone()).unwrap_or_else(|e| panic!("snapshot name: {e}"));
        let ttl: i64 = redis::from_redis_value(ttl.clone()).unwrap_or_else(|e| panic!("snapshot ttl: {e}"));
        let dump: Vec<u8> = redis::from_redis_value(dump.clone()).unwrap_or_else(|e| panic!("snapshot dump: {e}"));
        entries.push((name, ttl.max(0), dump));
    }
    tracing::info!(target: "chaos", names = entries.len(), "Redis snapshot taken");
    Snapshot { entries, malformed }
}

/// Replaces the namespace by `snapshot` in one script, as a Redis restarted from that RDB
/// file would have it (nothing runs between the deletes and the restores).
pub async fn restore(redis: &mut redis::aio::MultiplexedConnection, ns: &str, snapshot: &Snapshot) {
    const LOAD: &str = r"
        local cursor = '0'
        repeat
            local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
            cursor = page[1]
            for _, name in ipairs(page[2]) do
                redis.call('DEL', name)
            end
        until cursor == '0'
        for i = 2, #ARGV, 3 do
            redis.call('RESTORE', ARGV[i], ARGV[i + 1], ARGV[i + 2], 'REPLACE')
        end
        return (#ARGV - 1) / 3";
    let mut args = vec![bulk(&format!("{ns}*"))];
    for (name, ttl, dump) in &snapshot.entries {
        args.extend([bulk(name), bulk(&ttl.to_string()), dump.clone()]);
    }
    eval_retrying(redis, "restore", LOAD, &args).await;
    tracing::info!(target: "chaos", names = snapshot.entries.len(), "Redis restored from the snapshot");
}

/// A second operator process's context on `op`'s database and Redis namespace (its own
/// pool, Redis client and spend snapshot), running nothing by itself.
pub async fn second_writer(op: &Operator) -> Arc<Context> {
    let sealing = SealingKeys::new("k1", fixture::SEALING_KEY, &[]).unwrap_or_else(|e| panic!("sealing key: {e}"));
    operator::connect(op.kube.operator_client(OPERATOR_USER), op.settings().clone(), sealing)
        .await
        .unwrap_or_else(|e| panic!("the second writer connects: {e}"))
        .context
}
