//! When this process asked a guest to shut down, per object.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// When this process asked a guest to shut down (per owner UID). Kept in memory on purpose:
/// after a restart the operator asks again and the timeout starts anew, which costs one
/// request and at worst delays the hard power-off by one timeout.
#[derive(Debug, Default)]
pub struct PowerMemory {
    shutdowns: Mutex<HashMap<String, Instant>>,
}

impl PowerMemory {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> R) -> R {
        f(&mut self.shutdowns.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn shutdown_sent(&self, uid: &str, at: Instant) {
        self.with(|m| m.insert(uid.to_owned(), at));
    }

    pub fn shutdown_sent_at(&self, uid: &str) -> Option<Instant> {
        self.with(|m| m.get(uid).copied())
    }

    pub fn forget(&self, uid: &str) {
        self.with(|m| m.remove(uid));
    }
}
