//! The statuses this process wrote, for a pass that starts before the cache shows them. Our own
//! status writes start no reconcile (see [`super::trigger`]), so a pass woken by a fleet list or
//! requeued at once may read the object from a cache that still holds the version the last
//! write replaced: deciding on that status would repeat what the write recorded (a tunnel
//! configured again, its Event sent twice). Matched by resourceVersion equality only, as
//! Kubernetes allows: if the cache still holds exactly the version a write was made over, the
//! written status is the newer; any other version is the cache's own and wins.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

/// More than this many remembered writes (objects deleted without a last pass): all are
/// dropped, which at worst costs one pass a stale status.
const MAX_REMEMBERED: usize = 20_000;

struct Written {
    /// The resourceVersion the write was made over.
    over: String,
    status: Box<dyn Any + Send + Sync>,
}

#[derive(Default)]
pub struct WrittenStatuses {
    by_uid: Mutex<HashMap<String, Written>>,
}

impl std::fmt::Debug for WrittenStatuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrittenStatuses").finish_non_exhaustive()
    }
}

impl WrittenStatuses {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Written>) -> R) -> R {
        f(&mut self.by_uid.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// `status` was written over version `over` of the object with `uid`.
    pub fn remember<S: Clone + Send + Sync + 'static>(&self, uid: &str, over: &str, status: &S) {
        self.with(|m| {
            if m.len() >= MAX_REMEMBERED {
                m.clear();
            }
            m.insert(uid.to_owned(), Written { over: over.to_owned(), status: Box::new(status.clone()) });
        });
    }

    /// The status a pass starts from: the one written over `version` while the cache still
    /// holds that version, else the cache's (and the memory goes: the cache has caught up).
    pub fn latest<S: Clone + Default + 'static>(&self, uid: &str, version: &str, cached: Option<&S>) -> S {
        let written = self.with(|m| match m.get(uid) {
            Some(w) if w.over == version => w.status.downcast_ref::<S>().cloned(),
            Some(_) => {
                m.remove(uid);
                None
            }
            None => None,
        });
        written.or_else(|| cached.cloned()).unwrap_or_default()
    }

    /// The object is gone.
    pub fn forget(&self, uid: &str) {
        self.with(|m| m.remove(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_wins_only_over_the_version_it_replaced() {
        let written = WrittenStatuses::default();
        let cached = "cached".to_owned();
        assert_eq!(written.latest("u", "1", Some(&cached)), "cached", "nothing written");
        written.remember("u", "1", &"written".to_owned());
        assert_eq!(written.latest("u", "1", Some(&cached)), "written", "the cache still holds the replaced version");
        assert_eq!(written.latest("u", "2", Some(&cached)), "cached", "the cache caught up (or someone wrote after)");
        assert_eq!(written.latest("u", "1", Some(&cached)), "cached", "and the memory went");
        written.remember("u", "3", &"written".to_owned());
        written.forget("u");
        assert_eq!(written.latest("u", "3", Some(&cached)), "cached");
        assert_eq!(written.latest::<String>("v", "1", None), "", "no status yet");
    }
}
