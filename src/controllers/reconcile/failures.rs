//! Consecutive failures per object, which the error policy backs off by.

use std::collections::HashMap;
use std::sync::Mutex;

/// Consecutive failures per object, for capped exponential backoff.
#[derive(Debug, Default)]
pub struct Failures {
    counts: Mutex<HashMap<String, u32>>,
}

impl Failures {
    /// Counts one more failure; returns how many in a row.
    pub fn failed(&self, uid: &str) -> u32 {
        let mut m = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(uid.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn succeeded(&self, uid: &str) {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(uid);
    }
}
