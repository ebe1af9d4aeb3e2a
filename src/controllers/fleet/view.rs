//! The shared view of the cloud: every server, per-object firewall, tunnel and DNS record the
//! operator owns, read with paged lists (one request per 50 servers or firewalls, per 1000
//! tunnels or records) and shared by all
//! reconcilers, so no reconcile ever reads one object from a rate-limited API.
//!
//! Lists run at the resync period when everything is settled, and at a short interval while
//! some object waits for a state only the cloud can show (a tunnel to connect, a server to
//! stop), still one list for all waiting objects. What a reconciler itself did (a create, a
//! power action, a delete) is recorded here at once and wins over any list that started
//! before it, so a slow list never resurrects a deleted server nor hides a new one.
//! It never writes to a cloud: the refresher only lists.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cloud::cloudflare::{DnsRecord, PER_PAGE as CLOUDFLARE_PAGE};
use crate::cloud::hetzner::{MAX_PER_PAGE, ServerSummary};
use crate::controllers::fleet::tunnel::ObservedTunnel;
use crate::controllers::fleet::waiters::{Waiters, Wakes, WokenObject, server_settled, tunnel_connection_changed};
use crate::controllers::server::marks::Owner;
use hcloud::models::Firewall;

/// Items per page of the Hetzner lists.
const HETZNER_PAGE: usize = MAX_PER_PAGE as usize;

/// One observation and when it was made.
#[derive(Clone, Debug)]
struct Entry<T> {
    /// `None`: known to be gone (a tombstone, so an older list cannot bring it back).
    value: Option<T>,
    at: Instant,
}

/// A collection keyed by owner UID (servers, records) or by name (tunnels).
#[derive(Debug)]
struct Observed<T> {
    entries: HashMap<String, Entry<T>>,
    /// When the last complete list started (none yet: nothing can be concluded from absence).
    listed_from: Option<Instant>,
    /// When the last list attempt ended, successful or not (paces the next one).
    attempted_at: Option<Instant>,
    /// Objects waiting for a change only a list can show.
    waiting: Waiters,
}

impl<T: Clone> Default for Observed<T> {
    fn default() -> Self {
        Observed { entries: HashMap::new(), listed_from: None, attempted_at: None, waiting: Waiters::default() }
    }
}

impl<T: Clone> Observed<T> {
    fn get(&self, key: &str) -> Option<T> {
        self.entries.get(key).and_then(|e| e.value.clone())
    }

    fn record(&mut self, key: &str, value: Option<T>, now: Instant) {
        self.entries.insert(key.to_owned(), Entry { value, at: now });
    }

    /// Pure merge of a complete list that started at `started`: listed items replace what is
    /// older than the list; what the list lacks is gone unless recorded after it started.
    fn merge(&mut self, listed: HashMap<String, T>, started: Instant, now: Instant) {
        self.entries.retain(|key, e| e.at > started || listed.contains_key(key));
        for (key, value) in listed {
            match self.entries.get(&key) {
                Some(e) if e.at > started => {}
                _ => {
                    self.entries.insert(key, Entry { value: Some(value), at: started });
                }
            }
        }
        // Tombstones older than the list have served their purpose.
        self.entries.retain(|_, e| e.value.is_some() || e.at > started);
        self.listed_from = Some(started);
        self.attempted_at = Some(now);
    }

    /// [`Self::merge`], and the objects waiting on an entry it changed in a way `wakes` says
    /// they wait for.
    fn merge_and_wake(
        &mut self,
        listed: HashMap<String, T>,
        started: Instant,
        now: Instant,
        wakes: fn(Option<&T>, Option<&T>) -> bool,
    ) -> Vec<(&'static str, WokenObject)> {
        let before: Vec<(String, Option<T>)> = self
            .waiting
            .keys()
            .into_iter()
            .map(|k| {
                let v = self.get(&k);
                (k, v)
            })
            .collect();
        self.merge(listed, started, now);
        let changed: HashSet<String> =
            before.into_iter().filter(|(k, v)| wakes(v.as_ref(), self.get(k).as_ref())).map(|(k, _)| k).collect();
        self.waiting.on(&changed)
    }

    /// When the next list is due: soon while anyone waits, else at the resync period.
    /// "Soon" is one page per `fast` (a list of `page`-sized pages every `fast` x pages, at
    /// most the resync period): waiting costs the same requests per minute at 50 objects and
    /// at 5,000, so the lists never eat the budget the creates of a large fleet need.
    fn next_due(&self, resync: Duration, fast: Duration, page: usize) -> Option<Instant> {
        let last = self.attempted_at?;
        if self.waiting.is_empty() {
            return Some(last + resync);
        }
        let pages = u32::try_from(self.entries.len().div_ceil(page.max(1)).max(1)).unwrap_or(u32::MAX);
        Some(last + fast.saturating_mul(pages).min(resync.max(fast)))
    }

    /// What `pick` takes of each present value, by key. Only that is copied: the sweeper's
    /// read of the whole view at every resync, once full clones of 17,500 cloud objects at
    /// N = 5,000, was a burst of several MiB.
    fn pick<V>(&self, pick: impl Fn(&T) -> Option<V>) -> HashMap<String, V> {
        self.entries.iter().filter_map(|(k, e)| e.value.as_ref().and_then(&pick).map(|v| (k.clone(), v))).collect()
    }
}

impl FleetState {
    /// Firewalls change only through us or a person, and what matters most of a person's
    /// change, a firewall taken off its server, shows in every server list already
    /// (`public_net.firewalls`). The list itself is for rules edited in the console and for
    /// orphans to sweep: it runs at start, then once per `audit` period (a multiple of the
    /// resync), so an idle fleet spends its resyncs on server pages alone. An operator with no
    /// PlainVM lists them only while some are left. `None`: not now.
    fn firewalls_next_due(&self, audit: Duration) -> Option<Option<Instant>> {
        let watched = self.firewalls_wanted || self.firewalls.entries.values().any(|e| e.value.is_some());
        if self.firewalls.listed_from.is_some() && !watched {
            return None;
        }
        Some(self.firewalls.next_due(audit, audit, HETZNER_PAGE))
    }
}

/// How often the shared lists run.
#[derive(Clone, Copy, Debug)]
pub struct ListPace {
    /// Settled objects: every list once per resync.
    pub resync: Duration,
    /// While some object waits for the cloud: one page per `fast`.
    pub fast: Duration,
    /// The per-object firewall list (rules edited in the console, orphans).
    pub firewall_audit: Duration,
}

#[cfg(test)]
impl ListPace {
    /// The firewall list at the resync pace too (tests of the other collections).
    pub fn new(resync: Duration, fast: Duration) -> Self {
        ListPace { resync, fast, firewall_audit: resync }
    }
}

#[derive(Debug, Default)]
struct FleetState {
    servers: Observed<ServerSummary>,
    /// Per-object firewalls (PlainVMs), keyed by owner UID; never the fleet firewall.
    firewalls: Observed<Firewall>,
    /// A PlainVM has been reconciled in this process: its firewall list is kept fresh.
    firewalls_wanted: bool,
    tunnels: Observed<ObservedTunnel>,
    dns: Observed<DnsRecord>,
}

/// The shared view. Cheap to read; every method takes the lock briefly and never awaits.
#[derive(Debug, Default)]
pub struct Fleet {
    state: Mutex<FleetState>,
    /// Wakes the refresher when someone starts waiting (so it need not poll for waiters).
    pub(crate) wake: Notify,
    /// Where the objects a list shows a change to go (their kinds' controllers).
    pub wakes: Wakes,
    /// Notified after every list, complete or failed (a pass waiting for the first lists).
    pub(crate) listed: Notify,
}

/// Which collection a list refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    Servers,
    Firewalls,
    Tunnels,
    Dns,
}

impl Fleet {
    fn with<R>(&self, f: impl FnOnce(&mut FleetState) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of plain maps: keep serving.
        let mut guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// The server of the object with `uid`, as last seen or done.
    pub fn server(&self, uid: &str) -> Option<ServerSummary> {
        self.with(|s| s.servers.get(uid))
    }

    /// Whether a complete server list has been seen, so "not in the view" means "not there".
    pub fn servers_known(&self) -> bool {
        self.with(|s| s.servers.listed_from.is_some())
    }

    /// Whether the last complete server list started after `since`: only then does the
    /// absence of a server created before `since` prove it is gone.
    pub fn servers_listed_since(&self, since: Instant) -> bool {
        self.with(|s| s.servers.listed_from.is_some_and(|t| t > since))
    }

    pub fn record_server(&self, uid: &str, server: ServerSummary) {
        self.with(|s| s.servers.record(uid, Some(server), Instant::now()));
    }

    /// Our own request applied `firewall` to the object's server: the view shows it attached
    /// (pending) until a list shows it as Hetzner has it.
    pub fn record_attachment(&self, uid: &str, firewall: i64) {
        if let Some(mut server) = self.server(uid) {
            let attachment = crate::cloud::hetzner::FirewallAttachment { id: firewall, status: Some("pending".into()) };
            server.public_net.firewalls.push(attachment);
            self.record_server(uid, server);
        }
    }

    pub fn forget_server(&self, uid: &str) {
        self.with(|s| s.servers.record(uid, None, Instant::now()));
    }

    /// What `pick` takes of every managed server it accepts, by owner UID.
    pub fn pick_servers<V>(&self, pick: impl Fn(&ServerSummary) -> Option<V>) -> HashMap<String, V> {
        self.with(|s| s.servers.pick(pick))
    }

    /// The per-object firewall of the object with `uid`, as last seen or done.
    pub fn firewall(&self, uid: &str) -> Option<Firewall> {
        self.with(|s| s.firewalls.get(uid))
    }

    /// Whether a complete firewall list has been seen.
    pub fn firewalls_known(&self) -> bool {
        self.with(|s| s.firewalls.listed_from.is_some())
    }

    pub fn record_firewall(&self, uid: &str, firewall: Firewall) {
        self.with(|s| s.firewalls.record(uid, Some(firewall), Instant::now()));
    }

    pub fn forget_firewall(&self, uid: &str) {
        self.with(|s| s.firewalls.record(uid, None, Instant::now()));
    }

    /// What `pick` takes of every per-object firewall it accepts, by owner UID.
    pub fn pick_firewalls<V>(&self, pick: impl Fn(&Firewall) -> Option<V>) -> HashMap<String, V> {
        self.with(|s| s.firewalls.pick(pick))
    }

    /// A PlainVM is reconciled: keep its firewall list fresh (each resync) from now on.
    pub fn want_firewalls(&self) {
        let new = self.with(|s| !std::mem::replace(&mut s.firewalls_wanted, true));
        if new {
            self.wake.notify_one();
        }
    }

    /// Applies a complete list of per-object firewalls (keyed by owner UID).
    pub fn merge_firewalls(&self, listed: HashMap<String, Firewall>, started: Instant) {
        self.with(|s| s.firewalls.merge(listed, started, Instant::now()));
        self.listed.notify_waiters();
    }

    /// The tunnel named `name`.
    pub fn tunnel(&self, name: &str) -> Option<ObservedTunnel> {
        self.with(|s| s.tunnels.get(name))
    }

    pub fn tunnels_known(&self) -> bool {
        self.with(|s| s.tunnels.listed_from.is_some())
    }

    pub fn record_tunnel(&self, tunnel: ObservedTunnel) {
        let name = tunnel.name.clone();
        self.with(|s| s.tunnels.record(&name, Some(tunnel), Instant::now()));
    }

    /// The server behind the tunnel named `name` is about to boot (powered on, or created
    /// again): a connector a list showed before now served an earlier boot, so the tunnel is
    /// recorded without one, and only a list that starts after this can show the new boot's.
    /// Otherwise a stale connection makes a server still starting look up (and bills a start
    /// that, if the server is deleted before it boots, never happened).
    pub fn tunnel_lost_its_connector(&self, name: &str) {
        self.with(|s| {
            if let Some(mut tunnel) = s.tunnels.get(name)
                && tunnel.connections > 0
            {
                tunnel.connections = 0;
                s.tunnels.record(name, Some(tunnel), Instant::now());
            }
        });
    }

    pub fn forget_tunnel(&self, name: &str) {
        self.with(|s| s.tunnels.record(name, None, Instant::now()));
    }

    /// What `pick` takes of every tunnel it accepts, by tunnel name.
    pub fn pick_tunnels<V>(&self, pick: impl Fn(&ObservedTunnel) -> Option<V>) -> HashMap<String, V> {
        self.with(|s| s.tunnels.pick(pick))
    }

    /// Our DNS record of the object with `uid`.
    pub fn dns_record(&self, uid: &str) -> Option<DnsRecord> {
        self.with(|s| s.dns.get(uid))
    }

    pub fn dns_known(&self) -> bool {
        self.with(|s| s.dns.listed_from.is_some())
    }

    pub fn record_dns(&self, uid: &str, record: DnsRecord) {
        self.with(|s| s.dns.record(uid, Some(record), Instant::now()));
    }

    pub fn forget_dns(&self, uid: &str) {
        self.with(|s| s.dns.record(uid, None, Instant::now()));
    }

    /// What `pick` takes of every DNS record of ours it accepts, by owner UID.
    pub fn pick_dns<V>(&self, pick: impl Fn(&DnsRecord) -> Option<V>) -> HashMap<String, V> {
        self.with(|s| s.dns.pick(pick))
    }

    /// The object waits for its server to settle: servers are listed at the short interval
    /// until it stops waiting, and the list that shows it settled wakes the object.
    pub fn wait_for_servers(&self, owner: &Owner) {
        let new = self.with(|s| s.servers.waiting.insert(owner, &owner.uid));
        if new {
            self.wake.notify_one();
        }
    }

    /// The object waits for the tunnel named `tunnel` to connect (or lose its connector).
    pub fn wait_for_tunnel(&self, owner: &Owner, tunnel: &str) {
        let new = self.with(|s| s.tunnels.waiting.insert(owner, tunnel));
        if new {
            self.wake.notify_one();
        }
    }

    /// Waits until `known` holds, looked at after each list, at most `limit`: a pass that comes
    /// before the first complete lists (at start) waits for them rather than looking again later.
    pub async fn until(&self, known: impl Fn() -> bool, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check: a list that ends in between is not missed.
            let listed = self.listed.notified();
            if known() {
                return true;
            }
            if tokio::time::timeout_at(deadline, listed).await.is_err() {
                return known();
            }
        }
    }

    /// The object waits for nothing any more.
    pub fn done_waiting(&self, uid: &str) {
        self.with(|s| {
            s.servers.waiting.remove(uid);
            s.tunnels.waiting.remove(uid);
        });
    }

    /// Applies a complete server list (keyed by owner UID) that started at `started`, and
    /// wakes the objects waiting for a server it shows settled.
    pub fn merge_servers(&self, listed: HashMap<String, ServerSummary>, started: Instant) {
        let woken = self.with(|s| s.servers.merge_and_wake(listed, started, Instant::now(), server_settled));
        self.wakes.send(woken);
        self.listed.notify_waiters();
    }

    /// Applies a complete tunnel list (keyed by name), and wakes the objects waiting for a
    /// tunnel whose connection it shows changed.
    pub fn merge_tunnels(&self, listed: HashMap<String, ObservedTunnel>, started: Instant) {
        let woken = self.with(|s| s.tunnels.merge_and_wake(listed, started, Instant::now(), tunnel_connection_changed));
        self.wakes.send(woken);
        self.listed.notify_waiters();
    }

    /// Applies a complete list of our DNS records (keyed by owner UID).
    pub fn merge_dns(&self, listed: HashMap<String, DnsRecord>, started: Instant) {
        self.with(|s| s.dns.merge(listed, started, Instant::now()));
        self.listed.notify_waiters();
    }

    /// A failed list still paces the next attempt (no tight loop against a failing API).
    pub fn list_failed(&self, which: Collection) {
        let now = Instant::now();
        self.with(|s| match which {
            Collection::Servers => s.servers.attempted_at = Some(now),
            Collection::Firewalls => s.firewalls.attempted_at = Some(now),
            Collection::Tunnels => s.tunnels.attempted_at = Some(now),
            Collection::Dns => s.dns.attempted_at = Some(now),
        });
        self.listed.notify_waiters();
    }

    /// Which collections are due at `now`, and when the next one will be. `pace` sets the
    /// periods: servers and tunnels every `resync` (`fast` while someone waits), DNS records
    /// every `resync`, firewalls every `firewall_audit`.
    pub fn due(&self, now: Instant, pace: &ListPace) -> (Vec<Collection>, Option<Instant>) {
        let ListPace { resync, fast, firewall_audit } = *pace;
        self.with(|s| {
            let mut due = Vec::new();
            let mut next: Option<Instant> = None;
            // `None`: not listed at all now; `Some(None)`: due at once (never listed).
            let slots = [
                // Before the servers: a start-up is complete once the servers are known.
                (Collection::Firewalls, s.firewalls_next_due(firewall_audit)),
                (Collection::Servers, Some(s.servers.next_due(resync, fast, HETZNER_PAGE))),
                (Collection::Tunnels, Some(s.tunnels.next_due(resync, fast, CLOUDFLARE_PAGE))),
                // DNS records change only through us or a person: the resync period suffices.
                (Collection::Dns, Some(s.dns.next_due(resync, resync, CLOUDFLARE_PAGE))),
            ];
            for (which, at) in slots {
                match at {
                    None => {}
                    Some(None) => due.push(which),
                    Some(Some(at)) if at <= now => due.push(which),
                    Some(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                }
            }
            (due, next)
        })
    }
}
