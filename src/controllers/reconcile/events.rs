//! Kubernetes Events (`events.k8s.io/v1`), published the way kube's `Recorder` does (one
//! Event per first occurrence, its `series` patched when the same Event repeats within six
//! minutes), with a cache that keeps only what a repeat needs.
//!
//! Why not kube's `Recorder` itself: it keeps a clone of every whole Event it published for six
//! minutes, in a map whose table never shrinks. A fleet of 1,000 Agents coming up publishes
//! several Events each within that window; the heap profile of the scale benchmark showed
//! that map as the largest single consumer (11.8 MiB at N = 1,000). Here a repeat needs the
//! Event's name and count only: a hash of the key, two short strings and two numbers.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How long a published Event can still be continued as a series (kube's and client-go's).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// kube-apiserver refuses an events.k8s.io Event whose note is longer than this many bytes
/// (`NoteLengthLimit`); a cloud's error message quoted in a note can be longer.
const NOTE_LIMIT: usize = 1024;

/// Pure: `note` cut to fit [`NOTE_LIMIT`] at a character boundary, ending in "…" when cut.
fn fit_note(mut note: String) -> String {
    if note.len() <= NOTE_LIMIT {
        return note;
    }
    const ELLIPSIS: &str = "…";
    let mut end = NOTE_LIMIT - ELLIPSIS.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(ELLIPSIS);
    note
}

/// What is kept of one published Event.
#[derive(Debug)]
struct Published {
    name: String,
    namespace: String,
    count: i32,
    last: Instant,
}

/// Publishes Events for one controller instance.
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    /// Keyed by a hash of (type, reason, action, the regarding object).
    published: Mutex<HashMap<u64, Published>>,
    swept_at: Mutex<Instant>,
}

/// Pure: the repeat key of an Event (kube's: the note is not part of it).
fn key(warning: bool, reason: &str, action: &str, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (warning, reason, action).hash(&mut h);
    (&regarding.api_version, &regarding.kind, &regarding.namespace, &regarding.name, &regarding.uid).hash(&mut h);
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EventPublisher {
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        EventPublisher {
            client,
            controller: controller.into(),
            instance: instance.into(),
            published: Mutex::default(),
            swept_at: Mutex::new(Instant::now()),
        }
    }

    /// Drops what can no longer repeat, at most once a minute, and gives the table back once
    /// a burst is over.
    fn sweep(&self, now: Instant) {
        {
            let mut swept_at = lock(&self.swept_at);
            if now.duration_since(*swept_at) < Duration::from_secs(60) {
                return;
            }
            *swept_at = now;
        }
        let mut published = lock(&self.published);
        published.retain(|_, p| now.duration_since(p.last) < SERIES_WINDOW);
        if published.capacity() > 4 * published.len().max(16) {
            published.shrink_to_fit();
        }
    }

    /// Publishes one Event about `regarding` (its namespace holds the Event).
    pub async fn publish(
        &self,
        regarding: ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = Instant::now();
        self.sweep(now);
        let key = key(warning, reason, action, &regarding);
        let repeat = lock(&self.published)
            .get(&key)
            .filter(|p| now.duration_since(p.last) < SERIES_WINDOW)
            .map(|p| (p.name.clone(), p.namespace.clone(), p.count + 1));
        let observed = MicroTime(Timestamp::now());
        if let Some((name, namespace, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            let series = serde_json::json!({"series": {"count": count, "lastObservedTime": observed}});
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&series)).await {
                Ok(_) => {
                    if let Some(p) = lock(&self.published).get_mut(&key) {
                        p.count = count;
                        p.last = now;
                    }
                    return Ok(());
                }
                // Deleted meanwhile (by a person, or the API server's TTL): a new Event.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    lock(&self.published).remove(&key);
                }
                Err(e) => return Err(e),
            }
        }
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let base = regarding.name.clone().unwrap_or_else(|| self.controller.clone());
        let name = format!("{base}.{:x}", observed.0.as_nanosecond());
        let event = Event {
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(fit_note(note)),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
            event_time: Some(observed),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        lock(&self.published).insert(key, Published { name, namespace, count: 1, last: now });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("crabglamp.com/v1".into()),
            kind: Some("Agent".into()),
            namespace: Some("ns".into()),
            name: Some("a".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn a_note_longer_than_the_api_servers_limit_is_cut_at_a_character_boundary() {
        assert_eq!(fit_note("short".into()), "short");
        let exact = "x".repeat(NOTE_LIMIT);
        assert_eq!(fit_note(exact.clone()), exact);
        // Two-byte characters: the cut must not split one.
        let long = "é".repeat(NOTE_LIMIT);
        let fitted = fit_note(long);
        assert!(fitted.len() <= NOTE_LIMIT, "{} bytes", fitted.len());
        assert!(fitted.ends_with('…') && fitted.trim_end_matches('…').chars().all(|c| c == 'é'));
        assert!(fitted.len() > NOTE_LIMIT - 8, "cut no shorter than it must be: {} bytes", fitted.len());
    }

    #[test]
    fn a_repeat_is_the_same_type_reason_action_and_object_whatever_the_note() {
        let k = key(false, "ServerCreated", "CreateServer", &reference("u1"));
        assert_eq!(k, key(false, "ServerCreated", "CreateServer", &reference("u1")));
        assert_ne!(k, key(true, "ServerCreated", "CreateServer", &reference("u1")), "type");
        assert_ne!(k, key(false, "ServerRecreated", "CreateServer", &reference("u1")), "reason");
        assert_ne!(k, key(false, "ServerCreated", "Power", &reference("u1")), "action");
        assert_ne!(k, key(false, "ServerCreated", "CreateServer", &reference("u2")), "a new object of the same name");
    }
}
