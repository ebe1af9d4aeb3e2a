//! Mutex locking that outlives a panicked handler.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering the data if a handler panicked while holding it: the simulator
/// state stays usable, which is what a test wants to inspect afterwards.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
