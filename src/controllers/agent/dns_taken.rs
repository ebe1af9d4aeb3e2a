//! Hostnames refused because a record the operator does not own holds them, remembered per
//! Agent so the reconciler asks again only after a resync.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Hostnames refused because a record we do not own holds them (per owner UID), so the
/// reconciler tries again only after a resync period, not on every pass.
#[derive(Debug, Default)]
pub struct DnsTaken {
    refused: Mutex<HashMap<String, (String, Instant)>>,
    retry_after: Duration,
}

impl DnsTaken {
    /// Refusals are remembered for `retry_after` (the resync period).
    pub fn new(retry_after: Duration) -> Self {
        DnsTaken { refused: Mutex::default(), retry_after }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>) -> R) -> R {
        f(&mut self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn taken(&self, uid: &str, hostname: &str) {
        self.with(|m| m.insert(uid.to_owned(), (hostname.to_owned(), Instant::now())));
    }

    /// The refused hostname, while the refusal is fresh.
    pub fn get(&self, uid: &str) -> Option<String> {
        let retry_after = self.retry_after;
        self.with(|m| m.get(uid).filter(|(_, at)| at.elapsed() < retry_after).map(|(h, _)| h.clone()))
    }

    pub fn clear(&self, uid: &str) {
        self.with(|m| m.remove(uid));
    }
}
