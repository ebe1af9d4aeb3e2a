//! What the API server shares between requests: the state behind its lock, the
//! resourceVersion watches wait on, the stop and cut signals, and the request log.

use std::sync::{Mutex, MutexGuard};

use super::error::ApiError;
use super::requests::{KubeRequest, RequestLog};
use super::state::State;
use super::write::{self, WriteScope};

/// What the server shares between requests.
pub struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) latest: tokio::sync::watch::Sender<u64>,
    /// Set when the server stops: open watches end, so their clients see the connection close.
    pub(super) stopping: tokio::sync::watch::Sender<bool>,
    /// Bumped to end every open watch at once (a test hook: the connections dropped).
    pub(super) cut: tokio::sync::watch::Sender<u64>,
    pub(super) server_address: String,
    pub(super) bookmark_interval: std::time::Duration,
    /// Watches whose streams are open (a test hook: "the client is watching now").
    pub(super) open_watches: std::sync::atomic::AtomicUsize,
    /// Who asked what (a test hook: the RBAC rules a client needs).
    pub(super) requests: Mutex<RequestLog>,
}

impl Shared {
    /// The state; a poisoned lock is taken over (a panicking request leaves consistent data,
    /// since every write builds the new object before storing it).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one request in the request log.
    pub fn log_request(&self, request: KubeRequest) {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }

    /// Wakes the watches after a write.
    pub fn notify(&self, state: &State) {
        self.latest.send_replace(state.rv());
    }

    /// Runs one write request, admission outside the lock (see [`WriteScope`]), and wakes the
    /// watches after it.
    pub fn write(
        &self,
        write: impl FnMut(&mut State, &mut WriteScope) -> Result<write::Written, ApiError>,
    ) -> Result<write::Written, ApiError> {
        WriteScope::new().run(|| self.lock(), write, |state| self.notify(state))
    }

    /// Waits until the server reaches resourceVersion `rv`, for at most `limit`; false if it
    /// did not.
    pub async fn reached(&self, rv: u64, limit: std::time::Duration) -> bool {
        let mut latest = self.latest.subscribe();
        tokio::time::timeout(limit, latest.wait_for(|now| *now >= rv)).await.is_ok_and(|r| r.is_ok())
    }
}
