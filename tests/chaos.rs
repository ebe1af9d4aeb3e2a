//! The chaos suite: seeded random interleavings of create, stop, start, transfer, rule change,
//! key rotation, spend and delete across 50 Agents, PlainVMs and VirtualKeys, under random
//! faults (cloud 5xx, 429 storms, timeouts, answers lost after the cloud applied the change,
//! PostgreSQL connections killed, Redis flushed, one key's usage data malformed, Redis
//! restored from an older snapshot, a stale second writer racing the spend refresh, the
//! controllers killed and restarted, watch streams cut), then quiescence and the invariants
//! of `chaos/invariants.rs`, some of which a monitor checks at every moment of the run.
//!
//! Each seed is one plan (`chaos/plan.rs`), printed as it runs; replay one or a range with
//!
//! ```sh
//! CRABGLAMP_CHAOS_SEEDS=1234 cargo test --test chaos -- --nocapture
//! CRABGLAMP_CHAOS_SEEDS=1..1000 cargo test --test chaos -- --nocapture
//! ```
//!
//! Unset, the fixed CI set runs. Seeds that once failed stay in `REGRESSION_SEEDS`, which
//! always runs too; against the real kube-apiserver (`CRABGLAMP_TEST_KUBE=real`) the shorter
//! `REAL_SERVER_SEEDS`. A failing seed prints the broken invariants and the tail of its log
//! (the whole log of the run with `CRABGLAMP_TEST_LOGS=1`).

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::{db, fixture, kube_server};

mod chaos {
    pub mod invariants;
    pub mod plan;
    pub mod redis_faults;
    pub mod run;
}

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The short set CI runs (about a minute each on two idle cores).
const CI_SEEDS: &[u64] = &[1, 2, 7];
/// Seeds that found a bug, each kept with what it found (see the commit that fixed it).
/// 3: a usage row billed an Agent's new spec owner before its transfer was recorded, while
/// the destroy event billed the accepted one (rows now bill the accepted owner).
/// 6: an Agent deleted while its server was still being created: the server started and was
/// deleted between two observations, and the timeline held neither row (a removal now waits
/// for the server to settle and records what it settled in first).
/// 11: a pass on a cached Agent that had no `status.owner` yet (our own status write not in
/// the cache, the spec's owner changed since) billed, and could accept, the new owner with no
/// transfer event (no row is billed before an owner is accepted, and the owner accepted is
/// the API server's copy's).
/// 14: a PlainVM deleted before the operator put its finalizer on it (the API server removed
/// it at once) was expected to have a destroy event (the ledger now knows such objects).
/// 57: the destroy event billed a cached `status.owner` behind the transfer trail (the owner a
/// destroy, or a usage row, bills now comes from the trail).
/// 76: a list merged between a pass's first look and its power step: the server's stop, and
/// the start the step made, were never recorded (a power step records the status it acts on).
/// 139: an Agent stopped, started again and deleted before it booted was billed a start: the
/// tunnel list from before the stop still showed its connector, which made the starting server
/// look up (a power-on or a create now drops the connector from the view until a later list).
/// 242: a VirtualKey deleted before its key was issued was expected to have a revoke event.
/// 272: a Redis flush racing a restore left a counter gone and its base marker standing, so the
/// loss went unseen (a counter below PostgreSQL's copy is a loss too; the namespace flush is
/// one script, as `FLUSHALL` is one command).
/// 405: a transfer recorded whose status write never landed, then the spec changed back: the
/// trail ended at the other owner (the trail, not the cached status, says who owns an Agent).
/// 16: one key's malformed usage data (yesterday's usage key a string) failed every key's
/// spend refresh: another key stayed usable 10.9 s past its budget (bad data is now confined
/// to its key). Seeds 1, 2 and 7 of the CI set found the rest of issue 26 (spend doubled by
/// two writers restoring at once, revoked keys back after a restore from a snapshot).
/// 744: one key made malformed twice (a field, then yesterday's usage key): the suite repaired
/// only the last and blamed the operator for reporting the first (it was right); the long run
/// after issue 26 found it.
/// 637 and 426: revoked keys a restore from an older snapshot brought back authenticated 5.0
/// and 5.2 s, past the monitor's bound of one resync plus 2 s: the refresher swept them at the
/// end of its pass and slept a resync after it (the sweep now opens each pass, and passes start
/// once per resync); the long runs after issue 26 found them.
const REGRESSION_SEEDS: &[u64] = &[3, 6, 11, 14, 16, 57, 76, 139, 242, 272, 405, 426, 637, 744];
/// What the real-server run (`CRABGLAMP_TEST_KUBE=real`) takes unless told otherwise: the CI set
/// and one regression seed; the whole set would take twice CI's time again.
const REAL_SERVER_SEEDS: &[u64] = &[1, 2, 7, 139];
/// A seed's run, plan and quiescence together, never takes longer than this.
const SEED_LIMIT: Duration = Duration::from_secs(180);

/// `CRABGLAMP_CHAOS_SEEDS`: `1234`, `1..1000` (inclusive), or a comma-separated mix.
fn seeds() -> Vec<u64> {
    let Ok(spec) = std::env::var("CRABGLAMP_CHAOS_SEEDS") else {
        if kube_server::real() {
            return REAL_SERVER_SEEDS.to_vec();
        }
        return CI_SEEDS.iter().chain(REGRESSION_SEEDS).copied().collect();
    };
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| s.trim().parse::<u64>().unwrap_or_else(|e| panic!("CRABGLAMP_CHAOS_SEEDS: {s:?}: {e}"));
        match part.split_once("..") {
            Some((a, b)) => out.extend(parse(a)..=parse(b)),
            None => out.push(parse(part)),
        }
    }
    out
}

/// The last lines logged during the current seed (bounded: a long run must not keep every
/// seed's log in memory).
static TAIL: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const TAIL_LINES: usize = 400;

struct Tail;

impl std::io::Write for Tail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if std::env::var_os("CRABGLAMP_TEST_LOGS").is_some() {
            eprint!("{text}");
        }
        let mut tail = TAIL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for line in text.lines() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installed before the fixture's capture (which then does nothing): the suite keeps only a
/// tail, at info unless `RUST_LOG` says otherwise.
fn install_tail() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,chaos=info,crabglamp_operator=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(|| Tail)
        .try_init();
}

/// Runs one seed in a runtime of its own; `Err` says what broke.
fn run_one(seed: u64) -> Result<(), String> {
    TAIL.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            match tokio::time::timeout(SEED_LIMIT, chaos::run::run_seed(seed)).await {
                Ok(result) => result,
                Err(_) => Err(format!("did not finish within {SEED_LIMIT:?}")),
            }
        })
    }));
    rt.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(result) => result,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".into())),
    }
}

fn run_seeds(seeds: &[u64]) {
    install_tail();
    let started = Instant::now();
    let mut failed = Vec::new();
    for &seed in seeds {
        let t = Instant::now();
        match run_one(seed) {
            Ok(()) => println!("chaos seed {seed}: ok in {:.1}s", t.elapsed().as_secs_f64()),
            Err(why) => {
                println!("chaos seed {seed}: FAILED in {:.1}s: {why}", t.elapsed().as_secs_f64());
                let tail = TAIL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                println!("--- last {} log lines of seed {seed} ---", tail.len());
                for line in tail.iter() {
                    println!("{line}");
                }
                println!("--- replay: CRABGLAMP_CHAOS_SEEDS={seed} cargo test --test chaos -- --nocapture ---");
                failed.push(format!("seed {seed}: {why}"));
            }
        }
    }
    println!("chaos: {} seeds, {} failed, {:.0}s", seeds.len(), failed.len(), started.elapsed().as_secs_f64());
    // Each failure's reason again, last: the seed's log tail above can be long.
    assert!(failed.is_empty(), "chaos seeds failed:\n{}", failed.join("\n"));
}

/// The CI set and the regression seeds, or `CRABGLAMP_CHAOS_SEEDS`.
#[test]
fn chaos_seeds_hold_every_invariant() {
    run_seeds(&seeds());
}
