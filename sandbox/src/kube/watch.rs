//! Watch streams: initial events, live changes read from the history in resourceVersion order,
//! bookmarks, the initial-events-end bookmark of streaming lists, and the `410 Expired` ERROR
//! event for a resourceVersion older than the history.
//!
//! A watcher reads its kind's history from its own cursor, so a slow client delays only itself
//! and never loses or reorders an event; it never holds the state lock while writing to the
//! socket, and only writes to its own kind wake it (fan-out costs the watches of that kind).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::resource::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::shared::Shared;
use super::state::{EventType, in_namespace};
use super::table::{self, IncludeObject, Rendering};
use super::write::present_response;

/// How often a watch that asked for bookmarks gets one (the default).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);
/// How many history entries one pass reads under the lock.
const BATCH: usize = 1000;

/// A parsed watch request.
pub struct WatchRequest {
    /// The kind watched.
    pub rt: Arc<ResourceType>,
    /// Namespace, or all.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// What the Accept header asked for.
    pub rendering: Rendering,
    /// `includeObject` for Table renderings.
    pub include: IncludeObject,
}

struct Renderer {
    rt: Arc<ResourceType>,
    rendering: Rendering,
    include: IncludeObject,
    columns_sent: bool,
}

impl Renderer {
    fn line(&mut self, kind: &str, object: &Value) -> Bytes {
        let presented = present_response(&self.rt, object);
        let rendered = match self.rendering {
            Rendering::Full => presented,
            Rendering::Metadata => table::partial_metadata(&presented),
            Rendering::Table => {
                let first = !self.columns_sent;
                self.columns_sent = true;
                let rv = presented.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                table::table(&self.rt, &[presented], json!({"resourceVersion": rv}), self.include, first)
            }
        };
        encode(kind, &rendered)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        encode("BOOKMARK", &json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": metadata}))
    }
}

fn encode(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn expired(asked: u64, oldest: u64) -> Bytes {
    let status = ApiError::new(410, "Expired", format!("too old resource version: {asked} ({oldest})")).to_status();
    encode("ERROR", &status)
}

/// Counts a watch as open for as long as its task runs.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open_watches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
fn later(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl WatchRequest {
    fn matches(&self, namespace: &str, object: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

/// Starts the watch: returns the stream of event lines (the response body).
pub fn start(
    shared: Arc<Shared>,
    req: WatchRequest,
) -> Result<impl futures::Stream<Item = Result<Bytes, Infallible>>, ApiError> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut stopping = shared.stopping.subscribe();
    let mut cut = shared.cut.subscribe();
    let mut renderer =
        Renderer { rt: req.rt.clone(), rendering: req.rendering, include: req.include, columns_sent: false };
    // Taken under the lock with the cursor, rendered after it (by the watch's own task).
    let mut initial_objects = None;
    let mut expired_line = None;
    let mut initial_end = None;
    let cursor;
    let mut wake;
    {
        let mut state = shared.lock();
        wake = state.subscribe(&req.rt.storage);
        wake.borrow_and_update();
        let asked = match req.resource_version.as_deref() {
            None | Some("") | Some("0") => None,
            Some(rv) => Some(
                rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
            ),
        };
        match asked {
            Some(rv) if !req.send_initial_events => {
                let oldest = state.compacted_for(&req.rt.storage);
                if rv < oldest {
                    expired_line = Some(expired(rv, oldest));
                    cursor = None;
                } else {
                    cursor = Some(rv);
                }
            }
            _ => {
                // An O(1) snapshot: the objects are selected and rendered by the watch's task.
                initial_objects = Some(state.bucket(&req.rt.storage));
                if req.send_initial_events {
                    initial_end = Some(state.rv());
                }
                cursor = Some(state.rv());
            }
        }
    }
    // A timeout beyond what the clock can represent means no timeout (and must not overflow).
    let deadline = req.timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
    // Never zero: a bookmark due on every pass would spin.
    let bookmark_interval = shared.bookmark_interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let _open = OpenWatch::new(&shared);
        let initial_objects = initial_objects.unwrap_or_default();
        for obj in in_namespace(&initial_objects, req.namespace.as_deref()) {
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
            if req.matches(ns, obj) && tx.send(renderer.line("ADDED", obj)).await.is_err() {
                return;
            }
        }
        let opening = expired_line.into_iter().chain(initial_end.map(|rv| renderer.bookmark(rv, true)));
        for line in opening.collect::<Vec<_>>() {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some(mut cursor) = cursor else { return };
        // Bookmarks keep a quiet kind's watcher close to the head of the history while other kinds
        // change, so its next watch resumes instead of meeting `410 Expired` and relisting: they
        // are due by the clock, not only after a quiet spell.
        let mut next_bookmark = later(tokio::time::Instant::now(), bookmark_interval);
        loop {
            // Cut (a test hook): the stream ends whatever is left to send.
            if cut.has_changed().unwrap_or(true) {
                return;
            }
            let (changes, oldest, head) = {
                let state = shared.lock();
                wake.borrow_and_update();
                (state.changes_after(&req.rt.storage, cursor, BATCH), state.compacted_for(&req.rt.storage), state.rv())
            };
            if cursor < oldest {
                let _ = tx.send(expired(cursor, oldest)).await;
                return;
            }
            let idle = changes.is_empty();
            let complete = changes.len() < BATCH;
            for change in changes {
                cursor = change.rv;
                let after = req.matches(&change.namespace, &change.object);
                let before = change.previous.as_ref().map(|p| req.matches(&change.namespace, p));
                // An object entering or leaving the selection is ADDED or DELETED for this watch.
                let kind = match (change.kind, before, after) {
                    (_, _, false) if before != Some(true) => continue,
                    (EventType::Modified, Some(true), false) => "DELETED",
                    (EventType::Modified, Some(false), true) => "ADDED",
                    (kind, _, _) => kind.as_str(),
                };
                // An object leaving the selection is DELETED as it was when it last matched,
                // with the change's resourceVersion (as the watch cache sends it).
                let left = match (kind, change.kind, &change.previous) {
                    ("DELETED", EventType::Modified, Some(previous)) => {
                        let mut previous = (**previous).clone();
                        if let Some(meta) = previous.get_mut("metadata").and_then(Value::as_object_mut) {
                            meta.insert("resourceVersion".into(), json!(change.rv.to_string()));
                        }
                        Some(previous)
                    }
                    _ => None,
                };
                if tx.send(renderer.line(kind, left.as_ref().unwrap_or(&change.object))).await.is_err() {
                    return;
                }
            }
            // Every change of this kind up to `head` is delivered: the watch is at `head`, so
            // its bookmarks move on while other kinds change. A watch from a resourceVersion
            // the server has not reached stays there (as the watch cache's watchers deliver only
            // newer events) and gets no bookmark before the server reaches it.
            if complete {
                cursor = cursor.max(head);
            }
            let reached = head >= cursor;
            let now = tokio::time::Instant::now();
            if req.bookmarks && now >= next_bookmark {
                next_bookmark = later(now, bookmark_interval);
                if reached && tx.send(renderer.bookmark(cursor, false)).await.is_err() {
                    return;
                }
            }
            if deadline.is_some_and(|d| now >= d) {
                return;
            }
            if !idle {
                continue;
            }
            let sleep_until = deadline.unwrap_or_else(|| later(now, Duration::from_secs(3600)));
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // The bookmark itself goes out at the top of the next pass.
                _ = tokio::time::sleep_until(next_bookmark), if req.bookmarks => {}
                _ = tokio::time::sleep_until(sleep_until) => {
                    if deadline.is_some() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                // Only `true` is ever sent: any change means the server stops.
                _ = stopping.changed() => return,
                _ = cut.changed() => return,
            }
        }
    });
    Ok(tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok))
}
