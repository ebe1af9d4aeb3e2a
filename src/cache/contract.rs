//! The contract's data: names, lifetimes, the auth entry, what a read of one key's usage
//! observed, and the outcome of a restore.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The Redis client's own default response deadline.
pub const DEFAULT_RESPONSE_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);
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

/// Something wrong with one key's data in Redis. Confined to that key: its other values and
/// every other key are read as usual. Never carries the value itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageProblem {
    /// The monthly counter is not an integer (the proxy's `INCRBY` fails on it too).
    MalformedCounter,
    /// A usage field's name or value is not what the contract says (a value that is not an
    /// integer, a name that is not UTF-8 or not `{surface}|{model}|{what}`).
    MalformedField,
    /// A usage name holds another type than a hash.
    WrongType,
    /// A model name the database cannot hold (longer than it allows, or with a NUL).
    ModelTooLong,
    /// Reading this key's usage hashes outlasted the client's response deadline (its counter
    /// is still read, without them).
    Timeout,
}

impl UsageProblem {
    /// The condition reason and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageProblem::MalformedCounter => "MalformedCounter",
            UsageProblem::MalformedField => "MalformedUsage",
            UsageProblem::WrongType => "WrongType",
            UsageProblem::ModelTooLong => "ModelTooLong",
            UsageProblem::Timeout => "ReadTimeout",
        }
    }
}

/// One key's counters as read in one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedCounters {
    /// The auth entry's JSON, if present (not UTF-8: replaced, so it is re-published).
    pub auth: Option<String>,
    /// The month's spend in micro-USD, if the counter exists and is an integer.
    pub month_micros: Option<i64>,
    /// Whether the month's counters include PostgreSQL's base (marker present).
    pub based: bool,
    /// `{surface}|{model}|cost` / `|requests` fields of each requested day (well-formed ones).
    pub days: Vec<HashMap<String, i64>>,
    /// What was wrong with this key's data, and how many values were skipped for it.
    pub problems: Vec<UsageProblem>,
    /// Values left out for being malformed.
    pub skipped: u64,
    /// Nothing of this key could be read (even its counter outlasted the deadline).
    pub unread: bool,
}

impl ObservedCounters {
    pub(super) fn problem(&mut self, problem: UsageProblem) {
        self.skipped += 1;
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }
}

/// What one atomic restore did to a key's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// Another writer restored it first, or nothing was lost: left alone.
    Untouched,
    /// The month's marker was gone (a flush, a new month, or a snapshot taken before the marker
    /// was set): raised to PostgreSQL's total, and marked.
    Unmarked,
    /// The marker stayed but the counter fell below PostgreSQL's total (a rollback to an older
    /// snapshot): raised to it.
    RolledBack,
    /// The counter is not an integer: nothing written.
    Malformed,
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
