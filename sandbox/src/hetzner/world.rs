//! The simulated Hetzner project: servers, firewalls, SSH keys and actions (the records are in
//! `resources`, their JSON for servers and firewalls in `render`), and their timed physics
//! (actions that finish, a guest OS that boots and obeys or ignores ACPI). Advanced lazily on
//! every access (no background task): what a request sees depends only on elapsed time. It
//! never sleeps, and never does work in proportion to the whole project to answer for one
//! resource: due events come off a schedule, running actions are indexed per resource, names
//! are indexed.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

use super::config::HetznerSimConfig;
use super::physics::{ActionDurations, Command};
use super::resources::{Action, AppliedTo, Effect, Firewall, NewServer, Server, SshKey, applies_to, rfc3339};
use crate::time_scale::scaled;

/// Finished actions kept for `GET /actions`: older ones are forgotten, so a long-running
/// sandbox does not grow without bound.
const KEPT_ACTIONS: usize = 10_000;

/// The longest simulated duration (see [`World::sim_duration`]).
const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Something the world does at a given instant.
#[derive(Clone, Copy)]
enum Event {
    FinishAction(i64),
    /// Half-way through a create that starts the server: `initializing` becomes `starting`.
    Starting(i64),
    /// A guest that accepted an ACPI shutdown powers off.
    AcpiPowerOff(i64),
}

/// What the world has done to answer requests: records rendered as JSON and action records
/// examined. Tests read it to prove a GET costs its page, not the project.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkCounts {
    pub servers_rendered: u64,
    pub firewalls_rendered: u64,
    pub actions_rendered: u64,
    /// Action records looked at while rendering or filtering (running-action lookups,
    /// `GET /actions?id=` and per-resource action lists).
    pub actions_examined: u64,
}

pub struct World {
    next_id: i64,
    /// Servers ever created (deleted ones included): the duplicate check of fault tests.
    pub servers_created: u64,
    /// This many next actions will fail (fault injection).
    pub fail_next_actions: u32,
    /// Real-world figures; every one passes through the jitter dice and the time scale.
    pub durations: ActionDurations,
    pub time_scale: f64,
    /// How long the simulated OS takes to boot once the server is `running` (scaled).
    pub boot_delay: Duration,
    /// The project's guests ignore ACPI (unless a server overrides it).
    pub ignores_acpi: bool,
    pub server_limit: usize,
    pub firewall_limit: usize,
    pub firewalls_per_server: usize,
    pub servers: BTreeMap<i64, Server>,
    server_names: HashMap<String, i64>,
    pub firewalls: BTreeMap<i64, Firewall>,
    pub ssh_keys: BTreeMap<i64, SshKey>,
    pub actions: BTreeMap<i64, Action>,
    /// Every kept action, by the resources it touches (`/servers/{id}/actions`).
    by_resource: HashMap<(&'static str, i64), BTreeSet<i64>>,
    /// Running actions by the resources they touch (`locked`, firewall `pending`).
    running: HashMap<(&'static str, i64), BTreeSet<i64>>,
    /// Finished actions, oldest first: the ones forgotten first.
    finished: VecDeque<i64>,
    schedule: BTreeMap<(Instant, u64), Event>,
    next_event: u64,
    rng: StdRng,
    work: Cell<WorkCounts>,
    /// Every power transition a server really made, in order (see [`PowerChange`]).
    pub power_log: Vec<PowerChange>,
    /// The last settled power state (`running` or `off`) of each server, for `power_log`.
    settled: HashMap<i64, &'static str>,
}

/// A power transition a server really made: it settled `running` after not running (a
/// start), or it stopped running, by settling `off` or by being deleted (a stop). States in
/// between (`starting`, `stopping`, a shutdown that is refused and reverted) are not
/// transitions. What a usage timeline is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerChange {
    pub server_id: i64,
    /// The server's name when it happened.
    pub server_name: String,
    /// `start` or `stop`.
    pub change: &'static str,
}

impl World {
    pub fn new(config: &HetznerSimConfig) -> Self {
        World {
            next_id: 1000,
            servers_created: 0,
            fail_next_actions: 0,
            durations: config.durations.clone(),
            time_scale: config.time_scale,
            boot_delay: scaled(config.durations.boot, config.time_scale).min(LONGEST),
            ignores_acpi: config.ignores_acpi,
            server_limit: config.server_limit,
            firewall_limit: config.firewall_limit,
            firewalls_per_server: config.firewalls_per_server,
            servers: BTreeMap::new(),
            server_names: HashMap::new(),
            firewalls: BTreeMap::new(),
            ssh_keys: BTreeMap::new(),
            actions: BTreeMap::new(),
            by_resource: HashMap::new(),
            running: HashMap::new(),
            finished: VecDeque::new(),
            schedule: BTreeMap::new(),
            next_event: 0,
            rng: StdRng::seed_from_u64(config.seed),
            work: Cell::new(WorkCounts::default()),
            power_log: Vec::new(),
            settled: HashMap::new(),
        }
    }

    /// Notes a power transition if server `id` settled in a power state other than its last.
    fn note_power(&mut self, id: i64) {
        let Some(s) = self.servers.get(&id) else { return };
        let status = s.status;
        if !matches!(status, "running" | "off") {
            return;
        }
        let before = self.settled.insert(id, status);
        let change = match (before, status) {
            (None | Some("off"), "running") => "start",
            (Some("running"), "off") => "stop",
            _ => return,
        };
        self.power_log.push(PowerChange { server_id: id, server_name: s.name.clone(), change });
    }

    pub fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn work(&self) -> WorkCounts {
        self.work.get()
    }

    pub(super) fn tally(&self, f: impl FnOnce(&mut WorkCounts)) {
        let mut w = self.work.get();
        f(&mut w);
        self.work.set(w);
    }

    /// A real-world figure as it passes in this world: jittered, then scaled, and capped so
    /// that a tiny time scale cannot overflow an `Instant` (a century is "never" here).
    fn sim_duration(&mut self, real: Duration) -> Duration {
        let jittered = self.durations.jittered(real, &mut self.rng);
        scaled(jittered, self.time_scale).min(LONGEST)
    }

    /// How long `command` takes this time.
    pub fn duration_of(&mut self, command: Command) -> Duration {
        self.sim_duration(self.durations.of(command))
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.next_event += 1;
        self.schedule.insert((at, self.next_event), event);
    }

    /// Applies every event whose time has come, in time order; work in proportion to the
    /// events due, not to the project.
    pub fn advance(&mut self, now: Instant) {
        while let Some(entry) = self.schedule.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            match event {
                Event::FinishAction(id) => self.finish_action(id, at),
                Event::Starting(id) => {
                    if let Some(s) = self.servers.get_mut(&id)
                        && s.status == "initializing"
                    {
                        s.status = "starting";
                    }
                }
                Event::AcpiPowerOff(id) => {
                    if let Some(s) = self.servers.get_mut(&id)
                        && s.acpi_off_at == Some(at)
                    {
                        s.acpi_off_at = None;
                        if s.status == "running" {
                            s.status = "off";
                            s.running_since = None;
                        }
                        self.note_power(id);
                    }
                }
            }
        }
    }

    fn finish_action(&mut self, id: i64, at: Instant) {
        let Some(action) = self.actions.get_mut(&id) else { return };
        if !action.running() {
            return;
        }
        action.finished = Some(action.started + action.duration);
        let effect = if action.fails { action.revert } else { action.effect };
        let resources = action.resources.clone();
        for key in resources {
            if let Some(set) = self.running.get_mut(&(key.1, key.0)) {
                set.remove(&id);
                if set.is_empty() {
                    self.running.remove(&(key.1, key.0));
                }
            }
        }
        self.finished.push_back(id);
        self.apply(effect, at);
    }

    fn server_ignores_acpi(&self, s: &Server) -> bool {
        s.ignores_acpi.unwrap_or(self.ignores_acpi)
    }

    fn apply(&mut self, effect: Effect, at: Instant) {
        match effect {
            Effect::None => {}
            Effect::Power { server, status, boots } => {
                if let Some(s) = self.servers.get_mut(&server) {
                    // A hard power change supersedes a guest still shutting down.
                    s.acpi_off_at = None;
                    s.status = status;
                    if status != "running" {
                        s.running_since = None;
                    } else if boots || s.running_since.is_none() {
                        s.running_since = Some(at);
                    }
                    self.note_power(server);
                }
            }
            Effect::AcpiShutdown(server) => {
                let Some(s) = self.servers.get(&server) else { return };
                if s.status != "running" || self.server_ignores_acpi(s) {
                    return;
                }
                let off_at = at + self.sim_duration(self.durations.acpi_shutdown);
                if let Some(s) = self.servers.get_mut(&server) {
                    s.acpi_off_at = Some(off_at);
                }
                self.schedule(off_at, Event::AcpiPowerOff(server));
            }
            Effect::AcpiReboot(server) => {
                let ignores = self.servers.get(&server).is_some_and(|s| self.server_ignores_acpi(s));
                if let Some(s) = self.servers.get_mut(&server)
                    && s.status == "running"
                    && !ignores
                {
                    s.running_since = Some(at);
                }
            }
            Effect::ChangeType { server, to, upgrade_disk } => {
                if let Some(s) = self.servers.get_mut(&server) {
                    s.server_type = to;
                    if upgrade_disk {
                        s.primary_disk_size = to.disk;
                    }
                }
            }
            Effect::Rebuild { server, image, status } => {
                if let Some(s) = self.servers.get_mut(&server) {
                    s.image = image;
                    s.status = status;
                    s.running_since = (status == "running").then_some(at);
                    self.note_power(server);
                }
            }
        }
    }

    /// Starts an action that takes its command's duration; returns its id.
    pub fn start_action(&mut self, command: Command, resources: Vec<(i64, &'static str)>, effect: Effect) -> i64 {
        let duration = self.duration_of(command);
        self.start_action_for(command, duration, resources, effect)
    }

    /// Starts an action that takes exactly `duration` (scaled already); returns its id.
    pub fn start_action_for(
        &mut self,
        command: Command,
        duration: Duration,
        resources: Vec<(i64, &'static str)>,
        effect: Effect,
    ) -> i64 {
        let id = self.next_id();
        let fails = self.fail_next_actions > 0;
        self.fail_next_actions = self.fail_next_actions.saturating_sub(1);
        let now = Instant::now();
        for (rid, kind) in &resources {
            self.by_resource.entry((kind, *rid)).or_default().insert(id);
            self.running.entry((kind, *rid)).or_default().insert(id);
        }
        self.actions.insert(
            id,
            Action {
                id,
                command,
                started: SystemTime::now(),
                started_at: now,
                duration,
                resources,
                finished: None,
                effect,
                fails,
                revert: Effect::None,
            },
        );
        self.schedule(now + duration, Event::FinishAction(id));
        self.forget_old_actions();
        id
    }

    /// Drops the oldest finished actions beyond [`KEPT_ACTIONS`]; running ones always stay.
    fn forget_old_actions(&mut self) {
        while self.actions.len() > KEPT_ACTIONS {
            let Some(oldest) = self.finished.pop_front() else { break };
            if let Some(a) = self.actions.remove(&oldest) {
                for (rid, kind) in &a.resources {
                    if let Some(set) = self.by_resource.get_mut(&(*kind, *rid)) {
                        set.remove(&oldest);
                        if set.is_empty() {
                            self.by_resource.remove(&(*kind, *rid));
                        }
                    }
                }
            }
        }
    }

    pub fn action_json(&self, id: i64, now: Instant) -> Value {
        match self.actions.get(&id) {
            Some(a) => self.render_action(a, now),
            None => Value::Null,
        }
    }

    pub fn render_action(&self, a: &Action, now: Instant) -> Value {
        self.tally(|w| w.actions_rendered += 1);
        a.json(now)
    }

    /// The kept actions that touch a resource, oldest first.
    pub fn actions_of(&self, kind: &'static str, id: i64) -> impl Iterator<Item = &Action> {
        self.by_resource.get(&(kind, id)).into_iter().flatten().filter_map(|a| {
            self.tally(|w| w.actions_examined += 1);
            self.actions.get(a)
        })
    }

    /// The kept actions among `ids` (a lookup each).
    pub fn actions_by_id(&self, ids: &BTreeSet<i64>) -> Vec<&Action> {
        self.tally(|w| w.actions_examined += ids.len() as u64);
        ids.iter().filter_map(|id| self.actions.get(id)).collect()
    }

    /// Running actions that touch a resource.
    pub(super) fn running_on(&self, kind: &'static str, id: i64) -> impl Iterator<Item = &Action> {
        self.running.get(&(kind, id)).into_iter().flatten().filter_map(|a| {
            self.tally(|w| w.actions_examined += 1);
            self.actions.get(a)
        })
    }

    /// True while an action runs on the server (the API's `locked`).
    pub fn server_locked(&self, id: i64) -> bool {
        self.running.get(&("server", id)).is_some_and(|set| !set.is_empty())
    }

    pub fn server_by_name(&self, name: &str) -> Option<&Server> {
        self.server_names.get(name).and_then(|id| self.servers.get(id))
    }

    /// Stores a new server (`initializing`); the caller starts its actions.
    pub fn insert_server(&mut self, new: NewServer) -> i64 {
        let id = self.next_id();
        self.servers_created += 1;
        self.server_names.insert(new.name.clone(), id);
        self.servers.insert(
            id,
            Server {
                id,
                name: new.name,
                status: "initializing",
                created: rfc3339(SystemTime::now()),
                labels: new.labels,
                server_type: new.server_type,
                image: new.image,
                location: new.location,
                primary_disk_size: new.server_type.disk,
                has_ipv4: new.has_ipv4,
                has_ipv6: new.has_ipv6,
                user_data: new.user_data,
                has_ssh_keys: new.has_ssh_keys,
                root_password: None,
                running_since: None,
                acpi_off_at: None,
                ignores_acpi: None,
            },
        );
        id
    }

    /// Half-way through its create, a server that will start shows `starting`.
    pub fn schedule_starting(&mut self, id: i64, at: Instant) {
        self.schedule(at, Event::Starting(id));
    }

    pub fn rename_server(&mut self, id: i64, name: &str) {
        if let Some(s) = self.servers.get_mut(&id) {
            self.server_names.remove(&s.name);
            s.name = name.to_owned();
            self.server_names.insert(name.to_owned(), id);
        }
    }

    /// Removes a server and every direct firewall attachment to it (what delete does).
    pub fn remove_server(&mut self, id: i64) -> Option<Server> {
        let server = self.servers.remove(&id)?;
        self.server_names.remove(&server.name);
        if self.settled.remove(&id) == Some("running") {
            self.power_log.push(PowerChange { server_id: id, server_name: server.name.clone(), change: "stop" });
        }
        for fw in self.firewalls.values_mut() {
            fw.applied_to.retain(|a| *a != AppliedTo::Server(id));
        }
        Some(server)
    }

    /// Firewalls that reach a server, directly or by selector (at most `firewall_limit`).
    pub fn firewalls_of<'a>(&'a self, server: &'a Server) -> impl Iterator<Item = &'a Firewall> {
        self.firewalls.values().filter(move |fw| applies_to(fw, server))
    }

    /// Servers a firewall currently reaches (direct entries and selector matches).
    pub fn firewall_servers(&self, fw: &Firewall) -> BTreeSet<i64> {
        self.servers_reached(&fw.applied_to)
    }

    /// Servers that `entries` reach now.
    pub fn servers_reached(&self, entries: &[AppliedTo]) -> BTreeSet<i64> {
        let mut ids = BTreeSet::new();
        for e in entries {
            match e {
                AppliedTo::Server(id) if self.servers.contains_key(id) => {
                    ids.insert(*id);
                }
                AppliedTo::Server(_) => {}
                AppliedTo::LabelSelector(_, sel) => {
                    ids.extend(self.servers.values().filter(|s| sel.matches(&s.labels)).map(|s| s.id));
                }
            }
        }
        ids
    }

    /// Per-server override of whether the guest ignores ACPI; false if no such server.
    pub fn set_ignores_acpi(&mut self, id: i64, ignores: bool) -> bool {
        self.servers.get_mut(&id).map(|s| s.ignores_acpi = Some(ignores)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(durations: ActionDurations) -> World {
        World::new(&HetznerSimConfig { durations, ..HetznerSimConfig::default() })
    }

    #[test]
    fn old_finished_actions_are_forgotten_running_ones_kept() {
        let mut world = world(ActionDurations::uniform(Duration::from_secs(3600)));
        let first = world.start_action(Command::StartServer, vec![(1, "server")], Effect::None);
        world.durations = ActionDurations::uniform(Duration::ZERO);
        for _ in 0..KEPT_ACTIONS + 5 {
            world.start_action(Command::StartServer, vec![(2, "server")], Effect::None);
        }
        world.advance(Instant::now());
        world.start_action(Command::StartServer, vec![(2, "server")], Effect::None);
        assert_eq!(world.actions.len(), KEPT_ACTIONS);
        assert!(world.actions.contains_key(&first), "the running action is never forgotten");
        // The per-resource index forgets with them: only kept actions are listed.
        assert_eq!(world.actions_of("server", 2).count(), KEPT_ACTIONS - 1);
        assert!(world.server_locked(1));
        assert!(world.server_locked(2), "the last one has not been advanced past yet");
    }

    #[test]
    fn the_schedule_only_touches_due_events() {
        let mut world = world(ActionDurations::uniform(Duration::from_secs(3600)));
        for i in 0..1000 {
            world.start_action(Command::StartServer, vec![(i, "server")], Effect::None);
        }
        world.advance(Instant::now());
        assert_eq!(world.schedule.len(), 1000, "nothing due, nothing taken off");
        assert!(world.actions.values().all(Action::running));
    }

    #[test]
    fn durations_follow_the_figures_the_seed_and_the_scale() {
        let durations = |seed, time_scale| {
            let mut w = World::new(&HetznerSimConfig { seed, time_scale, ..HetznerSimConfig::default() });
            Command::ALL.map(|c| w.duration_of(c))
        };
        assert_eq!(durations(5, 1.0), durations(5, 1.0), "a seed replays its timings");
        assert_ne!(durations(5, 1.0), durations(6, 1.0));
        let figures = ActionDurations::default();
        for (c, d) in Command::ALL.into_iter().zip(durations(5, 10.0)) {
            let real = figures.of(c).as_secs_f64() / 10.0;
            assert!(d.as_secs_f64() >= real * 0.9 - 1e-9 && d.as_secs_f64() <= real * 1.1 + 1e-9, "{c:?}: {d:?}");
        }
        let w = World::new(&HetznerSimConfig { time_scale: 10.0, ..HetznerSimConfig::default() });
        assert_eq!(w.boot_delay, Duration::from_millis(1500), "15 s of boot at scale 10");
    }
}
