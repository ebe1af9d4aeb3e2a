//! The spend refresher: once per resync, every key this instance owns is read from Redis in
//! batched round trips, counters Redis lost are restored from PostgreSQL (one atomic,
//! conditional step per key), what Redis holds is copied into PostgreSQL's aggregates, and the
//! snapshot reconciles judge budgets by is replaced. Then the auth entries Redis should not
//! hold (keys revoked since a snapshot Redis was restored from) are removed.
//!
//! One tenant's bad data stays that tenant's: a value that is not what the contract says, a
//! model name the database cannot hold, a key whose read alone outlasts the client's deadline
//! is skipped and counted for that key (its status says so, its last good spend still counts),
//! and every other key is read, copied and judged as usual. Only Redis or PostgreSQL being
//! unreachable fails a pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use crate::cache::{self, CacheError, ObservedCounters, Restore, Restored, UsageProblem};
use crate::store::keys::{self, LiveKey};
use crate::store::spend::{self, DailySpend};

use super::decide::period;
use super::runtime::{KeyRuntime, SpendView};
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;

/// The longest model name the daily aggregates hold (`virtual_key_spend_daily.model`).
pub const MAX_MODEL_LEN: usize = 128;
/// Names per `SCAN` page of the revoked-entries sweep.
const SCAN_COUNT: usize = 1000;

/// What one refresh did (tests and logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshStats {
    pub keys: usize,
    pub restored: usize,
    pub rows_upserted: u64,
    /// Redis round trips of the spend reads and restores (reconciles meanwhile not counted).
    pub round_trips: u64,
    /// Keys whose data was partly or wholly unreadable this pass.
    pub unreadable: usize,
    /// Values left out for being malformed.
    pub skipped: u64,
    /// Reads that outlasted the response deadline (then read again in smaller batches).
    pub timeouts: u64,
    /// Auth entries of revoked keys found in Redis and removed.
    pub revoked_removed: usize,
    /// Round trips of the revoked-entries sweep (`SCAN` pages and deletes).
    pub sweep_round_trips: u64,
}

/// The scope this instance refreshes and restores spend for: its installation and shard. Two
/// shards (or a stale leader of another installation) sharing a database and a Redis never
/// restore each other's counters.
pub fn scope(ctx: &Context) -> String {
    format!("{}/{}", ctx.config.installation(), ctx.config.shard.as_deref().unwrap_or_default())
}

/// One pass: the revoked-entries sweep, then every live key of this instance's scope.
pub async fn refresh_spend(ctx: &Context) -> Result<RefreshStats, ReconcileError> {
    let rt = ctx.key_runtime()?;
    let mut stats = RefreshStats::default();
    // The sweep opens the pass: the passes start once per resync, so an entry a restore brings
    // back lives at most one resync. Swept at the end, it could live one resync plus a whole
    // pass (5.2 s against a 3 s resync in chaos seeds 426 and 637). A failed sweep does not
    // keep the spend from being refreshed; it is reported after.
    let swept = sweep_revoked_entries(ctx, rt, &mut stats)
        .await
        .inspect_err(|_| ctx.telemetry.metrics.count_refresh_failure("sweep"));
    let live = keys::live_in_scope(&ctx.clients.db, &scope(ctx)).await?;
    stats.keys = live.len();
    let mut fresh: HashMap<String, SpendView> = HashMap::with_capacity(live.len());
    let result = refresh_keys(ctx, rt, &live, &mut stats, &mut fresh).await;
    if let Err(e) = result {
        ctx.telemetry.metrics.count_refresh_failure("pass");
        return Err(e);
    }
    rt.replace_snapshot(fresh);
    rt.refreshed();
    swept?;
    Ok(stats)
}

/// Refreshes one key on its own (a key the last pass did not hold: new, or claimed from a
/// scope that no longer serves it), with the same restore as a pass, and returns its view.
pub async fn refresh_one(ctx: &Context, key: LiveKey) -> Result<SpendView, ReconcileError> {
    let rt = ctx.key_runtime()?;
    let budget = key.resource_uid.clone();
    let mut stats = RefreshStats::default();
    let mut fresh = HashMap::with_capacity(1);
    refresh_keys(ctx, rt, std::slice::from_ref(&key), &mut stats, &mut fresh).await?;
    let view = fresh.remove(&budget).ok_or(ReconcileError::Decode("the refreshed spend of a key"))?;
    rt.remember(&budget, view.clone());
    Ok(view)
}

async fn refresh_keys(
    ctx: &Context,
    rt: &KeyRuntime,
    live: &[LiveKey],
    stats: &mut RefreshStats,
    fresh: &mut HashMap<String, SpendView>,
) -> Result<(), ReconcileError> {
    let now = Utc::now();
    let days = Days::at(now);
    // A key whose usage hashes alone outlasted the deadline is read without them (its counter
    // is small and still judged), and fully again now and then; the rest in batches of the
    // size that last fit the deadline.
    let (slow, full): (Vec<&LiveKey>, Vec<&LiveKey>) =
        live.iter().partition(|k| rt.read_without_usage(&k.resource_uid));
    let mut timed_out = false;
    let batch = rt.batch_now();
    for (keys, with_usage) in [(full, true), (slow, false)] {
        for chunk in keys.chunks(batch) {
            let ids: Vec<(String, String)> =
                chunk.iter().map(|k| (hex::encode(&k.key_sha256), k.resource_uid.clone())).collect();
            let day_names: &[String] = if with_usage { &days.names } else { &[] };
            let mut observed = read_confined(rt, &ids, &days.month, day_names, stats, &mut timed_out).await?;
            if with_usage {
                read_counters_of_slow_keys(rt, &ids, &mut observed, &days.month, stats, &mut timed_out).await?;
            } else {
                for o in observed.iter_mut().filter(|o| !o.unread) {
                    o.problems.push(UsageProblem::Timeout);
                }
            }
            copy_chunk(ctx, rt, &ids, observed, &days, now, stats, fresh).await?;
        }
    }
    if !timed_out {
        rt.grow_batch();
    }
    Ok(())
}

/// The keys whose full read timed out even alone: marked slow, and read again without their
/// usage hashes so their counters are still judged this pass.
async fn read_counters_of_slow_keys(
    rt: &KeyRuntime,
    ids: &[(String, String)],
    observed: &mut [ObservedCounters],
    month: &str,
    stats: &mut RefreshStats,
    timed_out: &mut bool,
) -> Result<(), CacheError> {
    let slow: Vec<usize> = (0..ids.len()).filter(|i| observed[*i].unread).collect();
    if slow.is_empty() {
        return Ok(());
    }
    let slow_ids: Vec<(String, String)> = slow.iter().map(|i| ids[*i].clone()).collect();
    for (_, budget) in &slow_ids {
        rt.slow(budget);
    }
    let again = read_confined(rt, &slow_ids, month, &[], stats, timed_out).await?;
    for (i, mut o) in slow.into_iter().zip(again) {
        if !o.unread {
            o.problems.push(UsageProblem::Timeout);
        }
        observed[i] = o;
    }
    Ok(())
}

/// The month and the two days a pass reads (yesterday too: the increments between the last
/// copy and midnight reach PostgreSQL).
struct Days {
    month: String,
    month_start: NaiveDate,
    today: NaiveDate,
    yesterday: NaiveDate,
    names: [String; 2],
}

impl Days {
    fn at(now: DateTime<Utc>) -> Days {
        let today = now.date_naive();
        let yesterday = today.pred_opt().unwrap_or(today);
        Days {
            month: period(now),
            month_start: NaiveDate::from_ymd_opt(now.year(), now.month(), 1).unwrap_or(today),
            today,
            yesterday,
            names: [today.to_string(), yesterday.to_string()],
        }
    }
}

/// Reads `ids` (with the usage hashes of `days`); a read that outlasts the deadline is read
/// again in halves, down to a key alone, which is then `unread` this time. Redis itself not
/// answering (a new connection's ping fails too) fails the pass: that is no tenant's data.
async fn read_confined(
    rt: &KeyRuntime,
    ids: &[(String, String)],
    month: &str,
    days: &[String],
    stats: &mut RefreshStats,
    timed_out: &mut bool,
) -> Result<Vec<ObservedCounters>, CacheError> {
    let mut out: Vec<ObservedCounters> = vec![ObservedCounters::default(); ids.len()];
    let mut work = vec![(0, ids.len())];
    while let Some((from, to)) = work.pop() {
        stats.round_trips += 1;
        let cache = rt.refresh_cache();
        match cache.read_batch(&ids[from..to], month, days).await {
            Ok(got) => {
                for (slot, o) in out[from..to].iter_mut().zip(got) {
                    *slot = o;
                }
            }
            Err(CacheError::Command { source, .. }) if source.is_timeout() => {
                stats.timeouts += 1;
                *timed_out = true;
                rt.set_refresh_cache(cache.reconnected().await?);
                if to - from > 1 {
                    let mid = from + (to - from) / 2;
                    rt.shrink_batch(mid - from);
                    work.push((mid, to));
                    work.push((from, mid));
                } else {
                    out[from].unread = true;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Restores what Redis lost, copies the chunk into PostgreSQL and fills the snapshot.
#[allow(clippy::too_many_arguments)]
async fn copy_chunk(
    ctx: &Context,
    rt: &KeyRuntime,
    ids: &[(String, String)],
    observed: Vec<ObservedCounters>,
    days: &Days,
    now: DateTime<Utc>,
    stats: &mut RefreshStats,
    fresh: &mut HashMap<String, SpendView>,
) -> Result<(), ReconcileError> {
    let budgets: Vec<String> = ids.iter().map(|(_, b)| b.clone()).collect();
    let copied = spend::monthly_totals(&ctx.clients.db, &budgets, &days.month).await?;
    let copied_of = |budget: &str| copied.get(budget).copied().unwrap_or(0);
    let lost: Vec<String> =
        ids.iter().zip(&observed).filter(|((_, b), o)| lost(o, copied_of(b))).map(|((_, b), _)| b.clone()).collect();
    let restored = restore(ctx, rt, &lost, days, now, stats).await?;

    let mut rows = Vec::new();
    let mut months = Vec::new();
    for ((hash, budget), mut o) in ids.iter().zip(observed) {
        // The last good spend: what this instance saw before, or what PostgreSQL copied.
        let before = rt.spend(budget).filter(|v| v.period == days.month);
        let last_good = before.as_ref().map_or(0, |v| v.micros).max(copied_of(budget));
        let micros = match restored.get(budget) {
            Some((Restored::Unmarked | Restored::RolledBack | Restored::Untouched, after)) => Some(*after),
            _ if counter_unreadable(&o) => None,
            _ => Some(o.month_micros.unwrap_or(0)),
        };
        if o.unread {
            // Nothing was read: the entry as last seen, so it is not re-published blindly.
            o.auth = before.and_then(|v| v.auth);
            o.problems.push(UsageProblem::Timeout);
        }
        let mut days_seen = std::mem::take(&mut o.days);
        if restored.contains_key(budget) {
            // Redis' days changed under this read: copied from the next pass's read.
            days_seen.clear();
        }
        for (day, fields) in [days.today, days.yesterday].iter().zip(&days_seen) {
            rows.extend(daily_rows(budget, *day, fields, &mut o));
        }
        if let Some(m) = micros {
            months.push((budget.clone(), days.month.clone(), m));
        }
        if !o.problems.is_empty() {
            stats.unreadable += 1;
            stats.skipped += o.skipped;
            for p in &o.problems {
                ctx.telemetry.metrics.count_refresh_failure(p.as_str());
            }
        }
        fresh.insert(
            budget.clone(),
            SpendView {
                period: days.month.clone(),
                micros: micros.unwrap_or(last_good).max(0),
                key_sha256: hash.clone(),
                auth: o.auth,
                problems: o.problems,
            },
        );
    }
    // Only after the restores ran: a copy of counters Redis does not hold yet would be
    // restored twice after the next loss.
    stats.rows_upserted += spend::upsert_daily(&ctx.clients.db, &rows).await?;
    stats.rows_upserted += spend::upsert_monthly(&ctx.clients.db, &months).await?;
    Ok(())
}

/// Whether Redis lost a key's month: no base marker (a flush, or the month is new), or a
/// counter below what PostgreSQL copied from it (a rollback to an older snapshot). A counter
/// only grows, so holding less than its copy can only mean it was lost. A counter that could
/// not be read is never "lost": nothing is written over data nobody understood.
fn lost(o: &ObservedCounters, copied: i64) -> bool {
    if counter_unreadable(o) {
        return false;
    }
    !o.based || o.month_micros.unwrap_or(0) < copied
}

/// Whether the monthly counter itself could not be read (not merely a usage field).
fn counter_unreadable(o: &ObservedCounters) -> bool {
    o.unread || o.problems.contains(&UsageProblem::MalformedCounter)
}

/// Runs the atomic restore for the lost keys; returns what it did per budget id.
async fn restore(
    ctx: &Context,
    rt: &KeyRuntime,
    lost: &[String],
    days: &Days,
    now: DateTime<Utc>,
    stats: &mut RefreshStats,
) -> Result<HashMap<String, (Restored, i64)>, ReconcileError> {
    if lost.is_empty() {
        return Ok(HashMap::new());
    }
    let stored = spend::stored_months(&ctx.clients.db, lost, days.month_start, now.date_naive()).await?;
    let restores: Vec<Restore> = lost
        .iter()
        .map(|budget| {
            let base = stored.get(budget).cloned().unwrap_or_default();
            let today = base
                .day_rows
                .iter()
                .flat_map(|r| {
                    [
                        (cache::usage_field(&r.surface, &r.model, "cost"), r.cost_micros),
                        (cache::usage_field(&r.surface, &r.model, "requests"), r.requests),
                    ]
                })
                .collect();
            Restore { budget_id: budget.clone(), month_micros: base.total_micros, today }
        })
        .collect();
    let done = rt.refresh_cache().restore_batch(&restores, &days.month, &days.names[0]).await?;
    stats.round_trips += 1;
    let changed = done.iter().filter(|(d, _)| matches!(d, Restored::Unmarked | Restored::RolledBack)).count();
    if changed > 0 {
        stats.restored += changed;
        tracing::info!(keys = changed, "restored spend counters Redis lost, from PostgreSQL");
    }
    Ok(lost.iter().cloned().zip(done).collect())
}

/// The aggregate rows of one day's usage fields. Fields of another surface are not the
/// operator's (later contract versions may add some) and are ignored; a model name the
/// database cannot hold is skipped and noted on the key.
fn daily_rows(
    budget: &str,
    day: NaiveDate,
    fields: &HashMap<String, i64>,
    o: &mut ObservedCounters,
) -> Vec<DailySpend> {
    let mut by_model: std::collections::BTreeMap<(String, String), (i64, i64)> = Default::default();
    let mut too_long: HashSet<&str> = HashSet::new();
    for (field, value) in fields {
        let Some((surface, model, what)) = cache::parse_usage_field(field) else { continue };
        if surface != "llm" && surface != "tts" {
            continue;
        }
        if model.len() > MAX_MODEL_LEN || model.contains('\0') {
            too_long.insert(model);
            continue;
        }
        let entry = by_model.entry((surface.to_owned(), model.to_owned())).or_default();
        match what {
            "cost" => entry.0 = (*value).max(0),
            "requests" => entry.1 = (*value).max(0),
            _ => {}
        }
    }
    for _ in &too_long {
        o.skipped += 1;
    }
    if !too_long.is_empty() && !o.problems.contains(&UsageProblem::ModelTooLong) {
        o.problems.push(UsageProblem::ModelTooLong);
    }
    by_model
        .into_iter()
        .map(|((surface, model), (cost_micros, requests))| DailySpend {
            budget_id: budget.to_owned(),
            day,
            surface,
            model,
            cost_micros,
            requests,
        })
        .collect()
}

/// Removes the auth entries Redis holds for keys PostgreSQL knows as revoked (past any
/// rotation grace): a Redis restarted from an older snapshot, or a failover that lost a
/// delete, brings them back, and they would authenticate again. One `SCAN` page, one query and
/// at most one delete per round; entries of keys PostgreSQL does not know (another
/// installation sharing the namespace) are never touched.
async fn sweep_revoked_entries(ctx: &Context, rt: &KeyRuntime, stats: &mut RefreshStats) -> Result<(), ReconcileError> {
    let mut cursor = 0;
    loop {
        let (next, hashes) = rt.refresh_cache().scan_auth(cursor, SCAN_COUNT).await?;
        stats.sweep_round_trips += 1;
        let found: Vec<Vec<u8>> = hashes.iter().filter_map(|h| hex::decode(h).ok()).collect();
        if !found.is_empty() {
            let revoked = keys::revoked_among(&ctx.clients.db, &found, Utc::now()).await?;
            if !revoked.is_empty() {
                let hexes: Vec<String> = revoked.iter().map(hex::encode).collect();
                rt.refresh_cache().remove(&hexes).await?;
                stats.sweep_round_trips += 1;
                stats.revoked_removed += hexes.len();
                ctx.telemetry.metrics.count_step("VirtualKey", "remove-revoked-entry");
                tracing::warn!(entries = hexes.len(), "removed auth entries of revoked keys that Redis held again");
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Starts [`refresh_spend`] once per resync until `stop` turns true. The period runs from
/// pass start to pass start (a pass that outlasts it delays the next, never overlaps it), so
/// the sweep that opens each pass comes at most one resync after the last; in between, a look
/// each fast poll runs a pass at once when Redis went back in time.
pub async fn refresh_loop(ctx: Arc<Context>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let resync = ctx.config.resync;
    let mut passes = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    passes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut looks = tokio::time::interval(ctx.config.fast_poll);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = passes.tick() => {}
            _ = looks.tick() => {
                pass_if_went_back(&ctx).await;
                continue;
            }
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
        }
        match refresh_spend(&ctx).await {
            Ok(stats) => tracing::debug!(?stats, "spend refreshed"),
            Err(e) => tracing::warn!(error = %e, "cannot refresh spend; keys keep their last judgement"),
        }
    }
}

/// Between passes, one `GET` per fast poll: when Redis went back in time (a restore from an
/// older snapshot, a flush), revoked keys' entries may be back and live keys' gone, so a pass
/// runs at once (it opens with the sweep, restores the lost months, and has every key
/// reconciled, which publishes missing entries again) rather than at the next pass, a whole
/// resync later (five minutes by default). A failed look waits for the next one.
async fn pass_if_went_back(ctx: &Context) {
    let Ok(rt) = ctx.key_runtime() else { return };
    match rt.refresh_cache().went_back().await {
        Ok(true) => {
            tracing::info!("Redis went back in time (a restore or a flush): refreshing every key now");
            if let Err(e) = refresh_spend(ctx).await {
                tracing::warn!(error = %e, "cannot refresh spend after Redis went back; the next pass retries");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read Redis's removal counter"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(based: bool, month: Option<i64>, problems: Vec<UsageProblem>) -> ObservedCounters {
        ObservedCounters { based, month_micros: month, problems, ..ObservedCounters::default() }
    }

    #[test]
    fn a_month_is_lost_without_its_marker_or_below_its_copy_and_never_when_unreadable() {
        assert!(lost(&observed(false, None, vec![]), 0), "no marker: a flush or a new month");
        assert!(lost(&observed(true, Some(5), vec![]), 10), "below the copy: rolled back");
        assert!(!lost(&observed(true, Some(10), vec![]), 10));
        assert!(!lost(&observed(false, None, vec![UsageProblem::MalformedCounter]), 10));
        let unread = ObservedCounters { unread: true, ..ObservedCounters::default() };
        assert!(!lost(&unread, 10));
        assert!(lost(&observed(false, Some(1), vec![UsageProblem::Timeout]), 0), "only the usage hashes timed out");
        assert!(
            lost(&observed(false, Some(1), vec![UsageProblem::MalformedField]), 0),
            "a bad field is not the counter"
        );
    }

    #[test]
    fn model_names_the_database_cannot_hold_are_skipped_and_named() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 6).expect("date");
        let long = "m".repeat(MAX_MODEL_LEN + 1);
        let fields = HashMap::from([
            (cache::usage_field("llm", "gpt-4o", "cost"), 10),
            (cache::usage_field("llm", "gpt-4o", "requests"), 1),
            (cache::usage_field("llm", &long, "cost"), 99),
            (cache::usage_field("llm", "nul\0model", "cost"), 99),
            (cache::usage_field("img", "dall-e", "cost"), 5),
        ]);
        let mut o = ObservedCounters::default();
        let rows = daily_rows("b", day, &fields, &mut o);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].model.as_str(), rows[0].cost_micros, rows[0].requests), ("gpt-4o", 10, 1));
        assert_eq!(o.problems, vec![UsageProblem::ModelTooLong]);
        assert_eq!(o.skipped, 2);
    }
}
