//! The VirtualKey controller's Redis side: its clients and the spend snapshot the refresher
//! keeps for the reconciles.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cache::{CacheError, KeyCache, UsageProblem};

use crate::controllers::virtual_key::secret_versions::SecretVersions;

/// The refresher's view of one key's spend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendView {
    /// `YYYY-MM`.
    pub period: String,
    /// Micro-USD this period.
    pub micros: i64,
    /// SHA-256 hex of the key whose auth entry was read.
    pub key_sha256: String,
    /// The auth entry as Redis had it (None: missing, to be re-published).
    pub auth: Option<String>,
    /// What could not be read of this key's usage in the last refresh (empty: all of it).
    pub problems: Vec<UsageProblem>,
}

/// Passes a key whose usage hashes outlasted the deadline is read without them before it is
/// tried in full again.
pub const SLOW_RETRY_PASSES: u32 = 12;

/// The VirtualKey controller's share of the context: the Redis clients and the spend snapshot.
pub struct KeyRuntime {
    /// Reconciles' reads and writes (small, quick).
    pub cache: KeyCache,
    /// The refresher's own connection: its large batched reads never queue a reconcile's
    /// publish behind them (replaced by a new one after an answer outlasted the deadline).
    refresh_cache: Mutex<KeyCache>,
    snapshot: Mutex<HashMap<String, SpendView>>,
    refreshed_tx: futures::channel::mpsc::UnboundedSender<()>,
    pub(super) refreshed_rx: Mutex<Option<futures::channel::mpsc::UnboundedReceiver<()>>>,
    /// Keys per Redis round trip, at most.
    pub batch: usize,
    /// Keys per round trip that last fit the response deadline (halved on a timeout, grown
    /// back after a pass without one).
    batch_now: AtomicUsize,
    /// Budget ids whose usage hashes outlasted the deadline, with the passes until their next
    /// full read.
    slow: Mutex<HashMap<String, u32>>,
    /// Which Secrets changed since their key was checked (a settled key is not read again).
    pub secrets: SecretVersions,
}

impl KeyRuntime {
    pub fn new(cache: KeyCache, refresh_cache: KeyCache, batch: usize) -> Self {
        let (refreshed_tx, rx) = futures::channel::mpsc::unbounded();
        KeyRuntime {
            cache,
            refresh_cache: Mutex::new(refresh_cache),
            snapshot: Mutex::default(),
            refreshed_tx,
            refreshed_rx: Mutex::new(Some(rx)),
            batch: batch.max(1),
            batch_now: AtomicUsize::new(batch.max(1)),
            slow: Mutex::default(),
            secrets: SecretVersions::default(),
        }
    }

    pub(super) fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, SpendView>) -> R) -> R {
        f(&mut self.snapshot.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(super) fn with_slow<R>(&self, f: impl FnOnce(&mut HashMap<String, u32>) -> R) -> R {
        f(&mut self.slow.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The refresher's Redis client.
    pub fn refresh_cache(&self) -> KeyCache {
        self.refresh_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(super) fn set_refresh_cache(&self, cache: KeyCache) {
        *self.refresh_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = cache;
    }

    /// The snapshot entry of a VirtualKey (by UID).
    pub fn spend(&self, budget_id: &str) -> Option<SpendView> {
        self.with(|m| m.get(budget_id).cloned())
    }

    pub(super) fn remember(&self, budget_id: &str, view: SpendView) {
        self.with(|m| m.insert(budget_id.to_owned(), view));
    }

    pub(super) fn replace_snapshot(&self, fresh: HashMap<String, SpendView>) {
        self.with(|m| *m = fresh);
    }

    /// Wakes every VirtualKey's reconcile (a pass is done).
    pub(super) fn refreshed(&self) {
        let _ = self.refreshed_tx.unbounded_send(());
    }

    /// Keys per round trip for the next reads.
    pub fn batch_now(&self) -> usize {
        self.batch_now.load(Ordering::Relaxed).clamp(1, self.batch)
    }

    pub(super) fn shrink_batch(&self, fits: usize) {
        self.batch_now.fetch_min(fits.max(1), Ordering::Relaxed);
    }

    pub(super) fn grow_batch(&self) {
        let next = self.batch_now().saturating_mul(2).min(self.batch);
        self.batch_now.store(next, Ordering::Relaxed);
    }

    /// Whether this pass reads the key without its usage hashes (counts the pass down: every
    /// [`SLOW_RETRY_PASSES`]th pass reads it fully again, and a success makes it normal).
    pub(super) fn read_without_usage(&self, budget_id: &str) -> bool {
        self.with_slow(|s| match s.get_mut(budget_id) {
            Some(0) => {
                s.remove(budget_id);
                false
            }
            Some(left) => {
                *left -= 1;
                true
            }
            None => false,
        })
    }

    pub(super) fn slow(&self, budget_id: &str) {
        self.with_slow(|s| s.insert(budget_id.to_owned(), SLOW_RETRY_PASSES));
    }
}

/// Connects the VirtualKey controller's Redis clients (one for reconciles, one for the
/// refresher), each answer due within `deadline`.
pub async fn connect_runtime(
    url: &str,
    namespace: &str,
    batch: usize,
    deadline: Duration,
) -> Result<KeyRuntime, CacheError> {
    let cache = KeyCache::connect_with_deadline(url, namespace, deadline).await?;
    let refresh_cache = KeyCache::connect_with_deadline(url, namespace, deadline).await?.sharing_epoch(&cache);
    Ok(KeyRuntime::new(cache, refresh_cache, batch))
}
