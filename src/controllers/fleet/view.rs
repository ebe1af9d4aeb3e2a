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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cloud::cloudflare::{DnsRecord, PER_PAGE as CLOUDFLARE_PAGE, Tunnel};
use crate::cloud::hetzner::{MAX_PER_PAGE, ServerSummary};
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
    /// Objects waiting for a change only a list can show, and since when.
    waiting: HashMap<String, Instant>,
}

impl<T: Clone> Default for Observed<T> {
    fn default() -> Self {
        Observed { entries: HashMap::new(), listed_from: None, attempted_at: None, waiting: HashMap::new() }
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

/// A tunnel as the reconcilers need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTunnel {
    pub id: String,
    pub name: String,
    /// `healthy`, `degraded`, `inactive`, `down`, as Cloudflare reports it.
    pub status: String,
    pub connections: usize,
}

impl ObservedTunnel {
    pub fn from_api(t: &Tunnel) -> Self {
        ObservedTunnel {
            id: t.id.clone(),
            name: t.name.clone(),
            status: t.status.clone().unwrap_or_else(|| "inactive".to_owned()),
            connections: t.connections.len(),
        }
    }

    /// A connector is attached and serving.
    pub fn connected(&self) -> bool {
        self.connections > 0 && matches!(self.status.as_str(), "healthy" | "degraded")
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

    /// The object waits for a server state change: servers are listed at the short interval
    /// until it stops waiting.
    pub fn wait_for_servers(&self, uid: &str) {
        let new = self.with(|s| s.servers.waiting.insert(uid.to_owned(), Instant::now()).is_none());
        if new {
            self.wake.notify_one();
        }
    }

    /// The object waits for its tunnel to connect.
    pub fn wait_for_tunnel(&self, uid: &str) {
        let new = self.with(|s| s.tunnels.waiting.insert(uid.to_owned(), Instant::now()).is_none());
        if new {
            self.wake.notify_one();
        }
    }

    /// The object waits for nothing any more.
    pub fn done_waiting(&self, uid: &str) {
        self.with(|s| {
            s.servers.waiting.remove(uid);
            s.tunnels.waiting.remove(uid);
        });
    }

    /// Applies a complete server list (keyed by owner UID) that started at `started`.
    pub fn merge_servers(&self, listed: HashMap<String, ServerSummary>, started: Instant) {
        self.with(|s| s.servers.merge(listed, started, Instant::now()));
    }

    /// Applies a complete tunnel list (keyed by name).
    pub fn merge_tunnels(&self, listed: HashMap<String, ObservedTunnel>, started: Instant) {
        self.with(|s| s.tunnels.merge(listed, started, Instant::now()));
    }

    /// Applies a complete list of our DNS records (keyed by owner UID).
    pub fn merge_dns(&self, listed: HashMap<String, DnsRecord>, started: Instant) {
        self.with(|s| s.dns.merge(listed, started, Instant::now()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: i64, status: &str) -> ServerSummary {
        ServerSummary { id, name: format!("s{id}"), status: status.into(), ..ServerSummary::default() }
    }

    #[test]
    fn a_list_that_started_before_a_local_change_does_not_undo_it() {
        let fleet = Fleet::default();
        let before = Instant::now();
        fleet.record_server("created-during-list", server(1, "initializing"));
        fleet.record_server("deleted-during-list", server(2, "running"));
        fleet.forget_server("deleted-during-list");
        let listed = HashMap::from([
            ("deleted-during-list".to_owned(), server(2, "running")),
            ("old".to_owned(), server(3, "off")),
        ]);
        fleet.merge_servers(listed, before);
        assert_eq!(fleet.server("created-during-list").map(|s| s.id), Some(1), "a list cannot hide a new server");
        assert!(fleet.server("deleted-during-list").is_none(), "a list cannot resurrect a deleted one");
        assert_eq!(fleet.server("old").map(|s| s.status), Some("off".to_owned()));
        assert!(fleet.servers_known());
    }

    #[test]
    fn a_pick_takes_only_what_it_accepts_of_present_servers() {
        let fleet = Fleet::default();
        fleet.record_server("running", server(1, "running"));
        fleet.record_server("off", server(2, "off"));
        fleet.record_server("deleted", server(3, "running"));
        fleet.forget_server("deleted");
        let ids = fleet.pick_servers(|s| (s.status == "running").then_some(s.id));
        assert_eq!(ids, HashMap::from([("running".to_owned(), 1)]), "tombstones and refused servers are left out");
    }

    /// Chaos seed 139: an Agent stopped, started again and deleted before it booted was billed
    /// a start, because the tunnel list from before the stop still showed its connector.
    #[test]
    fn a_connector_seen_before_a_boot_counts_only_once_a_later_list_shows_it() {
        let fleet = Fleet::default();
        let tunnel = |connections| ObservedTunnel {
            id: "t".into(),
            name: "agent-a".into(),
            status: "healthy".into(),
            connections,
        };
        let before = Instant::now();
        fleet.merge_tunnels(HashMap::from([("agent-a".to_owned(), tunnel(1))]), before);
        fleet.tunnel_lost_its_connector("agent-a");
        fleet.merge_tunnels(HashMap::from([("agent-a".to_owned(), tunnel(1))]), before);
        assert!(fleet.tunnel("agent-a").is_some_and(|t| !t.connected()), "a list from before the boot proves nothing");
        let after = Instant::now() + Duration::from_millis(1);
        fleet.merge_tunnels(HashMap::from([("agent-a".to_owned(), tunnel(1))]), after);
        assert!(fleet.tunnel("agent-a").is_some_and(|t| t.connected()), "a later list shows the new connector");
        fleet.tunnel_lost_its_connector("unknown");
        assert!(fleet.tunnel("unknown").is_none(), "nothing is made up for a tunnel never seen");
    }

    #[test]
    fn a_newer_list_replaces_older_knowledge() {
        let fleet = Fleet::default();
        fleet.record_server("a", server(1, "starting"));
        fleet.record_server("gone", server(2, "running"));
        let after = Instant::now() + Duration::from_millis(1);
        fleet.merge_servers(HashMap::from([("a".to_owned(), server(1, "running"))]), after);
        assert_eq!(fleet.server("a").map(|s| s.status), Some("running".to_owned()));
        assert!(fleet.server("gone").is_none(), "deleted behind our back: the list shows it");
        assert!(fleet.servers_listed_since(after - Duration::from_millis(1)));
    }

    #[test]
    fn lists_are_due_fast_only_while_someone_waits() {
        let fleet = Fleet::default();
        let (resync, fast) = (Duration::from_secs(300), Duration::from_secs(2));
        let now = Instant::now();
        let (due, _) = fleet.due(now, &ListPace::new(resync, fast));
        assert_eq!(
            due,
            vec![Collection::Firewalls, Collection::Servers, Collection::Tunnels, Collection::Dns],
            "first lists at once"
        );
        fleet.merge_servers(HashMap::new(), now);
        fleet.merge_firewalls(HashMap::new(), now);
        fleet.merge_tunnels(HashMap::new(), now);
        fleet.merge_dns(HashMap::new(), now);
        let (due, next) = fleet.due(now, &ListPace::new(resync, fast));
        assert!(due.is_empty());
        assert!(next.is_some_and(|n| n >= now + resync - Duration::from_secs(1)));
        fleet.wait_for_tunnel("uid");
        let (due, _) = fleet.due(now + fast + Duration::from_secs(1), &ListPace::new(resync, fast));
        assert_eq!(due, vec![Collection::Tunnels], "only the collection someone waits on goes fast");
        fleet.done_waiting("uid");
        let (due, _) = fleet.due(now + fast + Duration::from_secs(1), &ListPace::new(resync, fast));
        assert!(due.is_empty());
    }

    /// While objects wait, a list of 120 servers (three pages) runs every three fast periods:
    /// one page per period, whatever the size of the fleet, and never less often than a resync.
    #[test]
    fn waiting_costs_one_page_per_fast_period() {
        let fleet = Fleet::default();
        let (resync, fast) = (Duration::from_secs(300), Duration::from_secs(2));
        let now = Instant::now();
        let servers: HashMap<_, _> = (0..120).map(|i| (format!("uid-{i}"), server(i, "initializing"))).collect();
        fleet.merge_servers(servers, now);
        fleet.wait_for_servers("uid-1");
        let (due, _) = fleet.due(now + fast * 2, &ListPace::new(resync, fast));
        assert!(!due.contains(&Collection::Servers), "{due:?}");
        let (due, _) = fleet.due(now + fast * 3 + Duration::from_secs(1), &ListPace::new(resync, fast));
        assert!(due.contains(&Collection::Servers), "{due:?}");
        let (_, next) = fleet.due(now, &ListPace::new(Duration::from_secs(4), fast));
        assert!(next.is_some_and(|n| n <= Instant::now() + Duration::from_secs(4)), "capped at the resync period");
    }

    #[test]
    fn firewalls_are_listed_at_start_then_only_while_plainvms_or_firewalls_exist() {
        let fleet = Fleet::default();
        let resync = Duration::from_secs(10);
        let now = Instant::now();
        fleet.merge_firewalls(HashMap::new(), now);
        let later = now + resync * 3;
        let (due, _) = fleet.due(later, &ListPace::new(resync, resync));
        assert!(!due.contains(&Collection::Firewalls), "an Agent-only fleet spends no firewall page");
        let fw: Firewall = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "f", "labels": {}, "created": "2026-01-01T00:00:00Z", "applied_to": [], "rules": []
        }))
        .expect("firewall");
        fleet.merge_firewalls(HashMap::from([("orphan".to_owned(), fw)]), now);
        assert!(
            fleet.due(later, &ListPace::new(resync, resync)).0.contains(&Collection::Firewalls),
            "one is left to watch"
        );
        fleet.merge_firewalls(HashMap::new(), now);
        fleet.want_firewalls();
        assert!(
            fleet.due(later, &ListPace::new(resync, resync)).0.contains(&Collection::Firewalls),
            "a PlainVM exists"
        );
        assert!(
            !fleet.due(now, &ListPace::new(resync, resync)).0.contains(&Collection::Firewalls),
            "at the resync pace"
        );
    }

    /// A firewall taken off its server shows in the server list; the firewall list itself
    /// (console rule edits, orphans) runs once per audit period, not at every resync.
    #[test]
    fn the_firewall_list_runs_at_the_audit_pace_the_servers_at_the_resync() {
        let fleet = Fleet::default();
        let resync = Duration::from_secs(10);
        let pace = ListPace { resync, fast: resync, firewall_audit: resync * 12 };
        let now = Instant::now();
        fleet.want_firewalls();
        fleet.merge_servers(HashMap::new(), now);
        fleet.merge_firewalls(HashMap::new(), now);
        fleet.merge_tunnels(HashMap::new(), now);
        fleet.merge_dns(HashMap::new(), now);
        let (due, _) = fleet.due(now + resync * 2, &pace);
        assert!(due.contains(&Collection::Servers), "servers at the resync: {due:?}");
        assert!(!due.contains(&Collection::Firewalls), "firewalls not yet: {due:?}");
        let (due, _) = fleet.due(now + resync * 12 + Duration::from_secs(1), &pace);
        assert!(due.contains(&Collection::Firewalls), "{due:?}");
    }

    #[test]
    fn tunnel_connection_needs_a_connector() {
        let t = |status: &str, connections| ObservedTunnel {
            id: "i".into(),
            name: "n".into(),
            status: status.into(),
            connections,
        };
        assert!(t("healthy", 1).connected());
        assert!(!t("healthy", 0).connected());
        assert!(!t("inactive", 0).connected());
        assert!(!t("down", 0).connected());
    }
}
