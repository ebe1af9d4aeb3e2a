//! What the VirtualKey controller knows of its Secrets without reading them: the latest
//! `resourceVersion` its metadata watch saw of each VirtualKey's Secret, and the version in
//! which that key was last checked (read, its hash compared with PostgreSQL's row). A reconcile
//! whose Secret has not changed since its key was checked has nothing to learn from a GET: at
//! 5,000 keys that is 5,000 reads of the API server per resync saved.
//!
//! Any change to a Secret (an edit, a delete, a re-create, a watch that had to relist) shows
//! as another version or none, and the next reconcile reads the Secret again: a key replaced
//! behind the operator's back is still found, as soon as the watch delivers the change.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;

/// The key a Secret held when it was checked, and in which Secret and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The Secret the spec named then: a changed `spec.secretName` is not settled until the
    /// key is looked for under the new name.
    pub requested: String,
    /// The Secret holding the key: the requested one, or the previous one while a move to the
    /// requested name is refused (someone else's Secret holds it).
    pub secret_name: String,
    /// Why the key is not in the requested Secret, if it is not.
    pub refused: Option<String>,
    /// When it was checked: a refusal is looked at again after a while (the Secret in the
    /// way is not ours, so no watch event says it went).
    pub at: std::time::Instant,
    pub resource_version: String,
    pub key_id: String,
    /// The Secret's rotation token annotation then.
    pub rotation: Option<String>,
}

#[derive(Debug, Default)]
struct Versions {
    /// (VirtualKey UID, Secret name) -> the latest version of that Secret the watch delivered.
    /// By name too: while a key moves to another Secret, both are controlled by the same
    /// VirtualKey, and the old one's events must not stand for the new one's.
    seen: HashMap<(String, String), String>,
    /// VirtualKey UID -> the version its key was last checked in.
    checked: HashMap<String, Checked>,
    /// VirtualKey UID -> how many events of its Secrets the watch delivered, and how many
    /// relists: what a check started at knew (see [`SecretVersions::token`]).
    touched: HashMap<String, u64>,
    relists: u64,
}

/// What the watch had told of one VirtualKey's Secrets when a check started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchToken {
    relists: u64,
    touched: u64,
}

impl Versions {
    fn token(&self, uid: &str) -> WatchToken {
        WatchToken { relists: self.relists, touched: self.touched.get(uid).copied().unwrap_or(0) }
    }
}

/// Shared by the metadata watch (which records versions) and the reconciles (which ask).
#[derive(Debug, Default)]
pub struct SecretVersions {
    inner: Mutex<Versions>,
}

/// The UID of the VirtualKey controlling a Secret, if one does.
fn controller_uid(secret: &PartialObjectMeta<Secret>) -> Option<&str> {
    let owners = secret.metadata.owner_references.as_deref()?;
    owners.iter().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str())
}

impl SecretVersions {
    fn with<R>(&self, f: impl FnOnce(&mut Versions) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Follows one event of the Secrets' metadata watch.
    pub fn observe(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        self.with(|v| match event {
            // A relist: what was seen before may be gone. Until each Secret is listed again,
            // its VirtualKey reads it (a few GETs after a watch restart, never a stale answer).
            watcher::Event::Init => {
                v.seen.clear();
                v.relists += 1;
            }
            watcher::Event::InitApply(s) | watcher::Event::Apply(s) => {
                if let (Some(uid), Some(name), Some(rv)) =
                    (controller_uid(s), s.metadata.name.as_ref(), s.metadata.resource_version.as_ref())
                {
                    v.seen.insert((uid.to_owned(), name.clone()), rv.clone());
                    *v.touched.entry(uid.to_owned()).or_default() += 1;
                }
            }
            watcher::Event::Delete(s) => {
                if let (Some(uid), Some(name)) = (controller_uid(s), s.metadata.name.as_ref()) {
                    v.seen.remove(&(uid.to_owned(), name.clone()));
                    *v.touched.entry(uid.to_owned()).or_default() += 1;
                }
            }
            watcher::Event::InitDone => {}
        });
    }

    /// What the watch has told of `uid`'s Secrets so far: taken when a check starts.
    pub fn token(&self, uid: &str) -> WatchToken {
        self.with(|v| v.token(uid))
    }

    /// Records that the key in version `checked.resource_version` of `uid`'s Secret was read
    /// (or written) and is the one PostgreSQL holds. When the watch delivered nothing of the
    /// VirtualKey's Secrets since the check started (`since`), that version is also the latest
    /// known, so the pass that wrote it goes on at once; an event in between (a newer version,
    /// a delete) is newer than the check and stands: the next pass reads again.
    pub fn checked(&self, uid: &str, checked: Checked, since: WatchToken) {
        self.with(|v| {
            if v.token(uid) == since {
                v.seen.insert((uid.to_owned(), checked.secret_name.clone()), checked.resource_version.clone());
            }
            v.checked.insert(uid.to_owned(), checked);
        });
    }

    /// Where `uid`'s key is when, as far as the watch knows, the Secret the spec names
    /// (`requested`) was checked and the Secret holding the key is the version last checked,
    /// holding `key_id` for rotation token `rotation`: then a GET would only confirm it. A
    /// refused move counts for `refusal_age` only. `None`: the Secrets must be read.
    pub fn settled(
        &self,
        uid: &str,
        requested: &str,
        (key_id, rotation): (&str, Option<&str>),
        refusal_age: std::time::Duration,
    ) -> Option<Checked> {
        self.with(|v| {
            let c = v.checked.get(uid)?;
            let unchanged = c.requested == requested
                && c.key_id == key_id
                && c.rotation.as_deref() == rotation
                && (c.refused.is_none() || c.at.elapsed() < refusal_age)
                && v.seen.get(&(uid.to_owned(), c.secret_name.clone())).is_some_and(|seen| *seen == c.resource_version);
            unchanged.then(|| c.clone())
        })
    }

    /// Forgets a VirtualKey (deleted).
    pub fn forget(&self, uid: &str) {
        self.with(|v| {
            v.checked.remove(uid);
            v.touched.remove(uid);
            v.seen.retain(|(owner, _), _| owner != uid);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn secret(owner: &str, rv: &str) -> PartialObjectMeta<Secret> {
        named(owner, "k", rv)
    }

    fn named(owner: &str, name: &str, rv: &str) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret>::default();
        s.metadata.name = Some(name.into());
        s.metadata.resource_version = Some(rv.into());
        s.metadata.owner_references =
            Some(vec![OwnerReference { uid: owner.into(), controller: Some(true), ..OwnerReference::default() }]);
        s
    }

    fn checked(rv: &str) -> Checked {
        Checked {
            requested: "k".into(),
            secret_name: "k".into(),
            refused: None,
            at: std::time::Instant::now(),
            resource_version: rv.into(),
            key_id: "vk_1".into(),
            rotation: None,
        }
    }

    fn unchanged(v: &SecretVersions, uid: &str, name: &str, key_id: &str, rotation: Option<&str>) -> bool {
        v.settled(uid, name, (key_id, rotation), std::time::Duration::from_secs(60)).is_some()
    }

    #[test]
    fn a_refused_move_is_looked_at_again_after_a_while() {
        let v = SecretVersions::default();
        let refused = Checked { requested: "taken".into(), refused: Some("not ours".into()), ..checked("5") };
        v.checked("u", refused.clone(), v.token("u"));
        v.observe(&watcher::Event::Apply(secret("u", "5")));
        let settled = v.settled("u", "taken", ("vk_1", None), std::time::Duration::from_secs(60));
        assert_eq!(settled.map(|c| c.secret_name), Some("k".to_owned()), "the key stays where it is");
        let old = std::time::Instant::now().checked_sub(std::time::Duration::from_secs(61));
        v.checked("u", Checked { at: old.unwrap_or_else(std::time::Instant::now), ..refused }, v.token("u"));
        assert!(!unchanged(&v, "u", "taken", "vk_1", None), "read again: the Secret in the way may be gone");
    }

    #[test]
    fn only_the_version_checked_spares_the_read() {
        let v = SecretVersions::default();
        assert!(!unchanged(&v, "u", "k", "vk_1", None), "never checked");
        v.checked("u", checked("5"), v.token("u"));
        assert!(unchanged(&v, "u", "k", "vk_1", None), "read or written here: known before the watch shows it");
        v.observe(&watcher::Event::Apply(secret("u", "4")));
        assert!(!unchanged(&v, "u", "k", "vk_1", None), "an older event on its way: read again");
        v.observe(&watcher::Event::Apply(secret("u", "5")));
        assert!(unchanged(&v, "u", "k", "vk_1", None));
        assert!(!unchanged(&v, "u", "k", "vk_2", None), "another key is live");
        assert!(!unchanged(&v, "u", "k", "vk_1", Some("r1")), "a rotation was asked");
        v.observe(&watcher::Event::Apply(secret("u", "6")));
        assert!(!unchanged(&v, "u", "k", "vk_1", None), "edited since");
    }

    #[test]
    fn an_event_during_a_check_is_newer_than_it() {
        let v = SecretVersions::default();
        let since = v.token("u");
        v.observe(&watcher::Event::Apply(secret("u", "6")));
        v.observe(&watcher::Event::Delete(secret("u", "6")));
        v.checked("u", checked("5"), since);
        assert!(!unchanged(&v, "u", "k", "vk_1", None), "deleted while the check ran: read again");
        let since = v.token("u");
        v.observe(&watcher::Event::Apply(named("u", "other", "9")));
        v.checked("u", checked("5"), since);
        assert!(!unchanged(&v, "u", "k", "vk_1", None), "any event of its Secrets stands");
    }

    #[test]
    fn a_delete_or_a_relist_means_read_again() {
        let v = SecretVersions::default();
        v.checked("u", checked("5"), v.token("u"));
        v.observe(&watcher::Event::Apply(secret("u", "5")));
        v.observe(&watcher::Event::Delete(secret("u", "5")));
        assert!(!unchanged(&v, "u", "k", "vk_1", None), "deleted");
        v.observe(&watcher::Event::InitApply(secret("u", "5")));
        assert!(unchanged(&v, "u", "k", "vk_1", None));
        v.observe(&watcher::Event::Init);
        assert!(!unchanged(&v, "u", "k", "vk_1", None), "relisting: not listed again yet");
        v.observe(&watcher::Event::InitApply(secret("u", "5")));
        v.observe(&watcher::Event::InitDone);
        assert!(unchanged(&v, "u", "k", "vk_1", None));
        v.forget("u");
        assert!(!unchanged(&v, "u", "k", "vk_1", None));
    }

    #[test]
    fn secrets_nobody_controls_are_ignored() {
        let v = SecretVersions::default();
        v.checked("u", checked("5"), v.token("u"));
        let mut s = secret("u", "6");
        s.metadata.owner_references = None;
        v.observe(&watcher::Event::Apply(s));
        assert!(unchanged(&v, "u", "k", "vk_1", None), "not this VirtualKey's Secret's event");
    }

    #[test]
    fn another_secret_name_is_not_settled_and_the_old_secrets_events_do_not_count() {
        let v = SecretVersions::default();
        v.checked("u", checked("5"), v.token("u"));
        v.observe(&watcher::Event::Apply(secret("u", "5")));
        assert!(!unchanged(&v, "u", "moved", "vk_1", None), "spec.secretName changed: look");
        v.checked(
            "u",
            Checked { requested: "moved".into(), secret_name: "moved".into(), ..checked("7") },
            v.token("u"),
        );
        v.observe(&watcher::Event::Apply(named("u", "moved", "7")));
        assert!(unchanged(&v, "u", "moved", "vk_1", None));
        v.observe(&watcher::Event::Delete(secret("u", "5")));
        assert!(unchanged(&v, "u", "moved", "vk_1", None), "the old Secret's delete is not the new one's");
        v.observe(&watcher::Event::Apply(named("u", "moved", "8")));
        assert!(!unchanged(&v, "u", "moved", "vk_1", None), "the new one edited");
    }
}
