//! The objects that wait for a change only the cloud's lists can show (a server to settle, a
//! tunnel to connect), and how a list that shows it wakes them. An object used to look again
//! at each short poll until the change came (about nine reconciles per Agent until Ready at
//! N = 1,000); now the list merge that brings the change sends the object to its kind's
//! controller (kube-runtime's `reconcile_on`), and the object's own requeue is only the resync's
//! safety net. Only a change the waiter waits for wakes it: a server passing from
//! `initializing` to `starting` wakes nobody, one that settles `running` or `off` does.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};

use crate::cloud::hetzner::ServerSummary;
use crate::controllers::fleet::tunnel::ObservedTunnel;
use crate::controllers::server::intent::UNKNOWN_STATUS;
use crate::controllers::server::marks::Owner;

/// An object to reconcile again, as its kind's controller finds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WokenObject {
    pub namespace: String,
    pub name: String,
}

/// One waiting object: the entry of the collection it waits on, and who it is.
#[derive(Clone, Debug)]
struct Waiter {
    /// The entry's key in the collection (an owner UID for servers, a tunnel name).
    key: String,
    kind: &'static str,
    object: WokenObject,
}

/// The waiters of one collection, by the waiting object's UID.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    by_uid: HashMap<String, Waiter>,
}

impl Waiters {
    /// Whether the object was not waiting on this collection before.
    pub(super) fn insert(&mut self, owner: &Owner, key: &str) -> bool {
        let waiter = Waiter {
            key: key.to_owned(),
            kind: owner.kind,
            object: WokenObject { namespace: owner.namespace.clone(), name: owner.name.clone() },
        };
        self.by_uid.insert(owner.uid.clone(), waiter).is_none()
    }

    pub(super) fn remove(&mut self, uid: &str) {
        self.by_uid.remove(uid);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// The entry keys someone waits on.
    pub(super) fn keys(&self) -> HashSet<String> {
        self.by_uid.values().map(|w| w.key.clone()).collect()
    }

    /// The objects waiting on any of `changed`, with their kinds.
    pub(super) fn on(&self, changed: &HashSet<String>) -> Vec<(&'static str, WokenObject)> {
        self.by_uid.values().filter(|w| changed.contains(&w.key)).map(|w| (w.kind, w.object.clone())).collect()
    }
}

/// Pure: whether a server's change is one a waiter waits for: it settled (`running`, `off`) in
/// another state than before, appeared, or went. Not a status the operator recorded as
/// `unknown` after a failed call: that object retries on its error backoff, and a wake at each
/// list would retry it at the list's pace through a whole cloud outage.
pub(super) fn server_settled(before: Option<&ServerSummary>, after: Option<&ServerSummary>) -> bool {
    match (before, after) {
        (Some(b), Some(_)) if b.status == UNKNOWN_STATUS => false,
        (Some(b), Some(a)) => b.status != a.status && matches!(a.status.as_str(), "running" | "off"),
        (None, None) => false,
        _ => true,
    }
}

/// Pure: whether a tunnel's change is one a waiter waits for: it connected or lost its
/// connector, appeared, or went.
pub(super) fn tunnel_connection_changed(before: Option<&ObservedTunnel>, after: Option<&ObservedTunnel>) -> bool {
    match (before, after) {
        (Some(b), Some(a)) => b.connected() != a.connected(),
        (None, None) => false,
        _ => true,
    }
}

/// Per kind, where woken objects go: the receiving end feeds that kind's controller.
#[derive(Debug, Default)]
pub struct Wakes {
    senders: Mutex<HashMap<&'static str, UnboundedSender<WokenObject>>>,
}

impl Wakes {
    /// The objects of `kind` to wake, from now on (a second call replaces the first).
    pub fn subscribe(&self, kind: &'static str) -> UnboundedReceiver<WokenObject> {
        let (sender, receiver) = unbounded();
        self.senders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(kind, sender);
        receiver
    }

    /// Sends each object to its kind's controller; a kind nobody runs drops them (its objects
    /// look again at their resync).
    pub(super) fn send(&self, woken: Vec<(&'static str, WokenObject)>) {
        if woken.is_empty() {
            return;
        }
        let senders = self.senders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, object) in woken {
            if let Some(sender) = senders.get(kind) {
                // A closed channel is a stopped controller: nothing to wake.
                let _ = sender.unbounded_send(object);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: &str) -> ServerSummary {
        ServerSummary { id: 1, name: "s".into(), status: status.into(), ..ServerSummary::default() }
    }

    fn tunnel(connections: usize) -> ObservedTunnel {
        ObservedTunnel { id: "t".into(), name: "n".into(), status: "healthy".into(), connections }
    }

    #[test]
    fn a_server_wakes_its_waiter_when_it_settles_not_while_it_boots() {
        let (init, starting, running, off) =
            (server("initializing"), server("starting"), server("running"), server("off"));
        assert!(!server_settled(Some(&init), Some(&starting)), "still booting");
        assert!(server_settled(Some(&starting), Some(&running)));
        assert!(server_settled(Some(&init), Some(&running)), "a list may miss the step between");
        assert!(server_settled(Some(&running), Some(&off)));
        assert!(!server_settled(Some(&running), Some(&running)));
        assert!(server_settled(Some(&running), None), "gone");
        assert!(server_settled(None, Some(&init)), "appeared");
        assert!(!server_settled(None, None));
        let unknown = server(UNKNOWN_STATUS);
        assert!(!server_settled(Some(&unknown), Some(&running)), "after a failed call: the error backoff, not a wake");
    }

    #[test]
    fn a_tunnel_wakes_its_waiter_when_its_connection_changes() {
        assert!(tunnel_connection_changed(Some(&tunnel(0)), Some(&tunnel(1))));
        assert!(!tunnel_connection_changed(Some(&tunnel(1)), Some(&tunnel(2))), "more connectors: still connected");
        assert!(tunnel_connection_changed(Some(&tunnel(1)), Some(&tunnel(0))));
        assert!(tunnel_connection_changed(None, Some(&tunnel(0))));
        assert!(tunnel_connection_changed(Some(&tunnel(0)), None));
    }

    #[test]
    fn woken_objects_reach_their_kind_only() {
        let owner = |kind, name: &str| Owner {
            kind,
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            shard: None,
        };
        let mut waiters = Waiters::default();
        assert!(waiters.insert(&owner("Agent", "a"), "tunnel-a"));
        assert!(!waiters.insert(&owner("Agent", "a"), "tunnel-a"), "already waiting");
        assert!(waiters.insert(&owner("PlainVM", "v"), "uid-v"));
        let wakes = Wakes::default();
        let mut agents = wakes.subscribe("Agent");
        let mut vms = wakes.subscribe("PlainVM");
        wakes.send(waiters.on(&HashSet::from(["tunnel-a".to_owned()])));
        let a = WokenObject { namespace: "ns".into(), name: "a".into() };
        assert_eq!(agents.try_recv().ok(), Some(a));
        assert!(vms.try_recv().is_err(), "nothing for PlainVMs");
        waiters.remove("uid-v");
        assert_eq!(waiters.keys(), HashSet::from(["tunnel-a".to_owned()]));
    }
}
