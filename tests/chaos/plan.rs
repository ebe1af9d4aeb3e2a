//! A seed's whole run, decided before it starts: which objects are created, changed and
//! deleted in which order, which faults come and go, and the pauses between. Drawn from one
//! `StdRng` against a model of what exists, so a seed is the same plan on every machine and
//! every replay (the operator's own timing still varies: a replay re-runs the same plan, not
//! the same schedule of reconciles).
//!
//! The faults of a Redis restored from an older snapshot, of a second writer racing the
//! spend refresh and of one key's malformed usage data (and the extra spend that makes
//! budgets run out) are drawn from a second `StdRng` of the same seed and slotted in
//! between the steps of the first: the steps a seed drew before these faults existed are
//! still drawn, in the same order.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Objects per kind: 20 Agents, 15 PlainVMs, 15 VirtualKeys (50 slots, each holding at most
/// one object at a time; a slot emptied by a delete may be filled again under a new name).
pub const AGENTS: usize = 20;
pub const PLAINVMS: usize = 15;
pub const KEYS: usize = 15;
pub const SLOTS: usize = AGENTS + PLAINVMS + KEYS;
/// Random steps after the initial creates.
const STEPS: usize = 90;
pub const OWNERS: [&str; 3] = ["acct_a", "acct_b", "acct_c"];
/// Ports a PlainVM's rules are drawn from.
pub const PORTS: [&str; 5] = ["22", "80", "443", "8080", "3000-3100"];
/// Micro-USD budgets: a third of the key slots get a small one that a spend or two uses up
/// (a spend is 1..500 000), the rest one the run never reaches.
pub const SMALL_BUDGET_USD: &str = "0.4";
pub const LARGE_BUDGET_USD: &str = "1000";
/// At most this many keys get malformed usage data in one seed (the others must go on being
/// judged: that is what the fault tests).
const MALFORMED_PER_SEED: usize = 2;

/// A key slot's monthly budget (by slot, not drawn: the first generator stays as it was).
pub fn budget_usd(slot: usize) -> &'static str {
    if slot.is_multiple_of(3) { SMALL_BUDGET_USD } else { LARGE_BUDGET_USD }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Agent,
    PlainVm,
    Key,
}

pub fn kind_of(slot: usize) -> Kind {
    if slot < AGENTS {
        Kind::Agent
    } else if slot < AGENTS + PLAINVMS {
        Kind::PlainVm
    } else {
        Kind::Key
    }
}

/// One cloud simulator's fault plan while it lasts: requests fail at `rate` with `error`
/// (a name of `InjectedError`), after being applied when `lose_answer`.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    pub rate: f64,
    pub error: &'static str,
    pub lose_answer: bool,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Create {
        slot: usize,
        name: String,
        owner: &'static str,
        running: bool,
    },
    /// `orphan`: with `deletionPolicy: Orphan` (the cloud resources stay, on purpose).
    Delete {
        slot: usize,
        orphan: bool,
    },
    Power {
        slot: usize,
        running: bool,
    },
    Transfer {
        slot: usize,
        owner: &'static str,
    },
    Rules {
        slot: usize,
        ports: Vec<&'static str>,
    },
    Rotate {
        slot: usize,
        token: String,
    },
    /// The proxy records spend (micro-USD) against the VirtualKey.
    Spend {
        slot: usize,
        micros: i64,
    },
    HetznerFaults(Option<Faults>),
    CloudflareFaults(Option<Faults>),
    /// The next N requests of each simulator are answered 429.
    Storm {
        hetzner: u32,
        cloudflare: u32,
    },
    /// Every connection of the operator's pool is terminated (a PostgreSQL restart as the
    /// pool sees it).
    PgRestart,
    RedisFlush,
    /// One key's usage data in Redis turns bad (the fault of one tenant's bad data).
    MalformedUsage {
        slot: usize,
        how: Malformation,
    },
    /// Every name of the run's namespace is saved with its TTL (an RDB snapshot as far as the
    /// namespace can see), replacing the previous snapshot.
    RedisSnapshot,
    /// Redis restarted from the last snapshot: the namespace is replaced by it at once
    /// (auth entries of keys revoked since, older counters and markers come back). `racing`:
    /// then a stale second writer and the operator refresh spend at the same moment.
    RedisRestore {
        racing: bool,
    },
    /// A flush, then a stale second writer and the operator refresh spend at the same
    /// moment (both find the counters lost).
    RacingRefresh,
    /// The controllers are killed mid-step and started again with no memory.
    Crash,
    CutWatches,
    PauseMs(u64),
}

/// How one key's usage data turns bad. Never a field or key the chaos proxy itself writes
/// (today's `llm|gpt-4o-mini|*` fields), so the proxy keeps working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformation {
    /// Today's usage hash gets a field whose value is not an integer.
    NotInteger,
    /// Today's usage hash gets a field of a 200-character model (longer than PostgreSQL's
    /// 128).
    LongModel,
    /// Yesterday's usage key holds a string, not a hash.
    WrongType,
}

/// What the plan believes exists, to draw only steps that make sense.
#[derive(Clone, Default)]
struct SlotModel {
    live: bool,
    generation: u32,
    running: bool,
}

pub fn plan(seed: u64) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut redis_rng = StdRng::seed_from_u64(seed ^ REDIS_FAULTS_STREAM);
    let mut redis = RedisModel::default();
    let mut slots = vec![SlotModel::default(); SLOTS];
    let mut steps = Vec::new();
    // Most slots start filled, in a random order, with a few faults mixed in.
    let mut order: Vec<usize> = (0..SLOTS).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    for slot in order.into_iter().take(SLOTS * 7 / 10) {
        create(&mut rng, &mut slots, slot, &mut steps);
        if rng.random_bool(0.1) {
            steps.push(fault_step(&mut rng));
        }
    }
    for _ in 0..STEPS {
        if let Some(step) = redis_step(&mut redis_rng, &slots, &mut redis) {
            steps.push(step);
        }
        if rng.random_bool(0.25) {
            steps.push(fault_step(&mut rng));
        }
        let slot = rng.random_range(0..SLOTS);
        let kind = kind_of(slot);
        if !slots[slot].live {
            create(&mut rng, &mut slots, slot, &mut steps);
        } else {
            let roll = rng.random_range(0..100);
            let step = match (kind, roll) {
                (_, 0..15) => {
                    slots[slot].live = false;
                    Step::Delete { slot, orphan: rng.random_bool(0.15) }
                }
                (Kind::Key, 15..40) => Step::Rotate { slot, token: format!("r{}", rng.random_range(0..1_000_000)) },
                (Kind::Key, 40..70) => Step::Spend { slot, micros: rng.random_range(1..500_000) },
                (Kind::PlainVm, 15..40) => {
                    let mut ports: Vec<&'static str> = PORTS.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
                    if ports.is_empty() {
                        ports.push(PORTS[rng.random_range(0..PORTS.len())]);
                    }
                    Step::Rules { slot, ports }
                }
                (Kind::Agent | Kind::PlainVm, 40..70) => {
                    let m = &mut slots[slot];
                    m.running = !m.running;
                    Step::Power { slot, running: m.running }
                }
                // PlainVMs are never transferred (admission refuses an owner change).
                (Kind::Agent | Kind::Key, _) => {
                    Step::Transfer { slot, owner: OWNERS[rng.random_range(0..OWNERS.len())] }
                }
                (Kind::PlainVm, _) => Step::PauseMs(rng.random_range(50..400)),
            };
            steps.push(step);
        }
        steps.push(Step::PauseMs(rng.random_range(0..250)));
    }
    steps
}

/// Fills `slot` with a new object (a new name: the old one may still be finalizing).
fn create(rng: &mut StdRng, slots: &mut [SlotModel], slot: usize, steps: &mut Vec<Step>) {
    let m = &mut slots[slot];
    m.generation += 1;
    m.live = true;
    m.running = rng.random_bool(0.8);
    let prefix = match kind_of(slot) {
        Kind::Agent => "ag",
        Kind::PlainVm => "vm",
        Kind::Key => "vk",
    };
    steps.push(Step::Create {
        slot,
        name: format!("{prefix}-{slot}-{}", m.generation),
        owner: OWNERS[rng.random_range(0..OWNERS.len())],
        running: m.running,
    });
}

fn faults(rng: &mut StdRng) -> Option<Faults> {
    if rng.random_bool(0.3) {
        return None;
    }
    let error = ["any_5xx", "timeout", "unavailable", "bad_gateway", "server_error"][rng.random_range(0..5)];
    Some(Faults { rate: rng.random_range(0.05..0.4), error, lose_answer: rng.random_bool(0.5), seed: rng.random() })
}

fn fault_step(rng: &mut StdRng) -> Step {
    match rng.random_range(0..100) {
        0..20 => Step::HetznerFaults(faults(rng)),
        20..40 => Step::CloudflareFaults(faults(rng)),
        40..50 => Step::Storm { hetzner: rng.random_range(0..30), cloudflare: rng.random_range(0..30) },
        50..62 => Step::PgRestart,
        62..74 => Step::RedisFlush,
        74..88 => Step::Crash,
        _ => Step::CutWatches,
    }
}

/// Seeds the second generator (any constant: it only has to differ from the seed itself).
const REDIS_FAULTS_STREAM: u64 = 0x5eed_0f2e_dd15;

/// What the second generator knows: whether a snapshot exists to restore, and how many keys
/// it made malformed.
#[derive(Default)]
struct RedisModel {
    snapshot: bool,
    malformed: usize,
}

/// At most one step of the second generator: a Redis fault or extra spend, about one step
/// in seven.
fn redis_step(rng: &mut StdRng, slots: &[SlotModel], model: &mut RedisModel) -> Option<Step> {
    if !rng.random_bool(0.15) {
        return None;
    }
    let keys: Vec<usize> = (AGENTS + PLAINVMS..SLOTS).filter(|&s| slots[s].live).collect();
    let roll = rng.random_range(0..100);
    let key = (!keys.is_empty()).then(|| keys[rng.random_range(0..keys.len())]);
    match (roll, key) {
        (0..35, Some(any)) => {
            // Mostly a small budget: the spend that runs it out is what is judged.
            let small: Vec<usize> = keys.iter().copied().filter(|&s| budget_usd(s) == SMALL_BUDGET_USD).collect();
            let slot =
                if !small.is_empty() && rng.random_bool(0.7) { small[rng.random_range(0..small.len())] } else { any };
            Some(Step::Spend { slot, micros: rng.random_range(1..500_000) })
        }
        (35..50, Some(slot)) if model.malformed < MALFORMED_PER_SEED => {
            model.malformed += 1;
            let how =
                [Malformation::NotInteger, Malformation::LongModel, Malformation::WrongType][rng.random_range(0..3)];
            Some(Step::MalformedUsage { slot, how })
        }
        (50..75, _) if model.snapshot => Some(Step::RedisRestore { racing: rng.random_bool(0.5) }),
        (50..88, _) => {
            model.snapshot = true;
            Some(Step::RedisSnapshot)
        }
        (88.., _) => Some(Step::RacingRefresh),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_seed_is_one_plan() {
        assert_eq!(super::plan(7), super::plan(7));
        assert_ne!(super::plan(7), super::plan(8));
    }
}
