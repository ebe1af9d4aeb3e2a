//! The request log of one simulator: what it was asked and how it answered, for tests and the
//! control API. It never holds a header (they carry credentials), and bodies only redacted.

use std::collections::{BTreeMap, VecDeque};

use axum::http::Method;
use serde_json::Value;

/// One line of the request log. Never holds headers (they carry credentials); bodies only
/// as [`super::redact::redact_body`] leaves them.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    /// Position in the log since the start (1, 2, ...), kept across [`RequestLog::reset`]
    /// so a reader can ask for what came after the last line it saw.
    pub seq: u64,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    /// The route pattern the request matched (`/v1/servers/{id}`); None when none did.
    pub route: Option<String>,
    pub status: u16,
    pub injected: bool,
    /// When the request arrived (RFC 3339, milliseconds).
    pub at: String,
    /// The JSON body of a POST, PUT or PATCH, secrets replaced (see [`super::redact::redact_body`]).
    pub body: Option<Value>,
}

/// How many requests with one method and route pattern got one status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCount {
    pub method: String,
    /// None for requests no route matched (answered 404).
    pub route: Option<String>,
    pub status: u16,
    pub count: u64,
}

/// The request log: the most recent requests in full, exact counters for all of them (a
/// long-running sandbox must not grow without bound).
#[derive(Default)]
pub(super) struct RequestLog {
    recent: VecDeque<RequestRecord>,
    total: u64,
    by_status: BTreeMap<u16, u64>,
    by_route: BTreeMap<(String, Option<String>, u16), u64>,
    /// Never reset: [`RequestRecord::seq`] keeps growing.
    seq: u64,
}

/// How many requests the log keeps in full.
const LOG_CAPACITY: usize = 100_000;

impl RequestLog {
    /// Appends one answered request, numbering it.
    pub(super) fn record(&mut self, mut record: RequestRecord) {
        self.seq += 1;
        record.seq = self.seq;
        self.total += 1;
        *self.by_status.entry(record.status).or_default() += 1;
        *self.by_route.entry((record.method.to_string(), record.route.clone(), record.status)).or_default() += 1;
        if self.recent.len() == LOG_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(record);
    }

    /// Forgets every request and counter (positions keep counting up).
    pub(super) fn reset(&mut self) {
        *self = RequestLog { seq: self.seq, ..RequestLog::default() };
    }

    pub(super) fn route_counts(&self) -> Vec<RouteCount> {
        self.by_route
            .iter()
            .map(|((method, route, status), count)| RouteCount {
                method: method.clone(),
                route: route.clone(),
                status: *status,
                count: *count,
            })
            .collect()
    }

    pub(super) fn status_counts(&self) -> BTreeMap<u16, u64> {
        self.by_status.clone()
    }

    pub(super) fn requests_since(&self, since: u64, limit: usize) -> Vec<RequestRecord> {
        let start = self.recent.partition_point(|r| r.seq <= since);
        self.recent.iter().skip(start).take(limit).cloned().collect()
    }

    pub(super) fn requests(&self) -> Vec<RequestRecord> {
        self.recent.iter().cloned().collect()
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    pub(super) fn count_status(&self, status: u16) -> usize {
        self.by_status.get(&status).copied().unwrap_or(0) as usize
    }

    pub(super) fn count(&self, method: &Method, path_contains: &str) -> usize {
        self.recent.iter().filter(|r| r.method == *method && r.path.contains(path_contains)).count()
    }
}
