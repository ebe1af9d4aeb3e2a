//! The request log: who sent which request (method, path, query), the attributes an
//! authoriser judges, so a test can derive the RBAC rules a client needs from what it really
//! called. The user is the bearer token as presented (the sandbox authenticates nobody: like a
//! static token file where each token names its user); no credential is ever logged because
//! the sandbox has none. Bounded: the oldest records go first, and are counted.

use std::collections::VecDeque;

/// The user of a request without a bearer token.
pub const ANONYMOUS: &str = "system:anonymous";

/// How many requests the log keeps.
pub const REQUEST_LOG_LIMIT: usize = 100_000;

/// One request, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeRequest {
    pub user: String,
    pub method: String,
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
}

/// The last [`REQUEST_LOG_LIMIT`] requests.
#[derive(Debug, Default)]
pub struct RequestLog {
    records: VecDeque<KubeRequest>,
    dropped: u64,
}

impl RequestLog {
    pub fn push(&mut self, request: KubeRequest) {
        if self.records.len() == REQUEST_LOG_LIMIT {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(request);
    }

    pub fn records(&self) -> Vec<KubeRequest> {
        self.records.iter().cloned().collect()
    }

    /// How many records were dropped to keep the log bounded.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The user a request's `Authorization: Bearer <user>` header names.
pub fn user_of(authorization: Option<&str>) -> String {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map_or_else(|| ANONYMOUS.to_owned(), str::to_owned)
}
