//! Unit tests of the fleet view: merges, pacing, waiters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hcloud::models::Firewall;

use crate::cloud::hetzner::ServerSummary;
use crate::controllers::fleet::tunnel::ObservedTunnel;
use crate::controllers::fleet::view::*;
use crate::controllers::server::marks::Owner;

fn server(id: i64, status: &str) -> ServerSummary {
    ServerSummary { id, name: format!("s{id}"), status: status.into(), ..ServerSummary::default() }
}

fn owner(kind: &'static str, uid: &str) -> Owner {
    Owner { kind, namespace: "ns".into(), name: format!("name-{uid}"), uid: uid.into(), shard: None }
}

fn tunnel(name: &str, connections: usize) -> ObservedTunnel {
    let status = if connections > 0 { "healthy" } else { "inactive" };
    ObservedTunnel { id: format!("id-{name}"), name: name.into(), status: status.into(), connections }
}

#[test]
fn a_list_that_started_before_a_local_change_does_not_undo_it() {
    let fleet = Fleet::default();
    let before = Instant::now();
    fleet.record_server("created-during-list", server(1, "initializing"));
    fleet.record_server("deleted-during-list", server(2, "running"));
    fleet.forget_server("deleted-during-list");
    let listed =
        HashMap::from([("deleted-during-list".to_owned(), server(2, "running")), ("old".to_owned(), server(3, "off"))]);
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
    let tunnel =
        |connections| ObservedTunnel { id: "t".into(), name: "agent-a".into(), status: "healthy".into(), connections };
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
    fleet.wait_for_tunnel(&owner("Agent", "uid"), "tunnel-uid");
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
    fleet.wait_for_servers(&owner("PlainVM", "uid-1"));
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
    assert!(fleet.due(later, &ListPace::new(resync, resync)).0.contains(&Collection::Firewalls), "a PlainVM exists");
    assert!(!fleet.due(now, &ListPace::new(resync, resync)).0.contains(&Collection::Firewalls), "at the resync pace");
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

/// The list that shows a waiter's change sends it to its kind's controller, once; a change it
/// does not wait for (booting on, another object's server) wakes nobody.
#[tokio::test]
async fn a_list_wakes_the_objects_it_shows_settled_or_connected() {
    let fleet = Fleet::default();
    let mut agents = fleet.wakes.subscribe("Agent");
    let mut vms = fleet.wakes.subscribe("PlainVM");
    let now = Instant::now();
    let booting =
        HashMap::from([("vm".to_owned(), server(1, "initializing")), ("other".to_owned(), server(2, "initializing"))]);
    fleet.merge_servers(booting, now);
    fleet.merge_tunnels(HashMap::from([("t".to_owned(), tunnel("t", 0))]), now);
    fleet.wait_for_servers(&owner("PlainVM", "vm"));
    fleet.wait_for_tunnel(&owner("Agent", "a"), "t");

    fleet.merge_servers(
        HashMap::from([("vm".to_owned(), server(1, "starting")), ("other".to_owned(), server(2, "running"))]),
        now,
    );
    fleet.merge_tunnels(HashMap::from([("t".to_owned(), tunnel("t", 0))]), now);
    assert!(vms.try_recv().is_err(), "still booting: nobody woken");
    assert!(agents.try_recv().is_err(), "not connected yet");

    fleet.merge_servers(
        HashMap::from([("vm".to_owned(), server(1, "running")), ("other".to_owned(), server(2, "running"))]),
        now,
    );
    fleet.merge_tunnels(HashMap::from([("t".to_owned(), tunnel("t", 1))]), now);
    let woken = |name: &str| Some(crate::controllers::fleet::WokenObject { namespace: "ns".into(), name: name.into() });
    assert_eq!(vms.next().await, woken("name-vm"));
    assert_eq!(agents.next().await, woken("name-a"));
    assert!(vms.try_recv().is_err() && agents.try_recv().is_err(), "one wake per change");

    fleet.done_waiting("vm");
    fleet.merge_servers(HashMap::new(), now);
    assert!(vms.try_recv().is_err(), "a server gone wakes only those still waiting");
}
