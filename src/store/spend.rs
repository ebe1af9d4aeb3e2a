//! The proxy's spend as daily aggregates (per VirtualKey, UTC day, surface and model: cost in
//! micro-USD and request count), copied from Redis each resync so that a Redis flush can
//! neither reset a month's spend nor unblock a key. Never stores request or response bodies.

use std::collections::HashMap;

use chrono::NaiveDate;
use sqlx::PgPool;

use super::{QueryContext, StoreError};

/// One aggregate row: what the proxy counted for a key on one day, surface and model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailySpend {
    /// UID of the VirtualKey (the contract's `budgetId`).
    pub budget_id: String,
    /// UTC day.
    pub day: NaiveDate,
    /// `llm` or `tts`.
    pub surface: String,
    /// Model name as the proxy reported it.
    pub model: String,
    /// Cost in micro-USD.
    pub cost_micros: i64,
    /// Number of requests.
    pub requests: i64,
}

/// Upserts many rows in one statement. Idempotent: the Redis counters only grow within a day,
/// so a row keeps the larger of its stored and its new values (a copy replayed after a crash,
/// or read from a Redis that lost part of the day, never lowers it).
pub async fn upsert_daily(pool: &PgPool, rows: &[DailySpend]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let budget_ids: Vec<String> = rows.iter().map(|r| r.budget_id.clone()).collect();
    let days: Vec<NaiveDate> = rows.iter().map(|r| r.day).collect();
    let surfaces: Vec<String> = rows.iter().map(|r| r.surface.clone()).collect();
    let models: Vec<String> = rows.iter().map(|r| r.model.clone()).collect();
    let costs: Vec<i64> = rows.iter().map(|r| r.cost_micros).collect();
    let requests: Vec<i64> = rows.iter().map(|r| r.requests).collect();
    let result = sqlx::query!(
        r#"INSERT INTO virtual_key_spend_daily (budget_id, day, surface, model, cost_micros, requests)
           SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
           ON CONFLICT (budget_id, day, surface, model) DO UPDATE
             SET cost_micros = GREATEST(virtual_key_spend_daily.cost_micros, EXCLUDED.cost_micros),
                 requests = GREATEST(virtual_key_spend_daily.requests, EXCLUDED.requests),
                 updated_at = now()
             WHERE virtual_key_spend_daily.cost_micros < EXCLUDED.cost_micros
                OR virtual_key_spend_daily.requests < EXCLUDED.requests"#,
        &budget_ids,
        &days,
        &surfaces,
        &models,
        &costs,
        &requests,
    )
    .execute(pool)
    .await
    .during("upserting daily spend")?;
    Ok(result.rows_affected())
}

/// Upserts the monthly counters as read (`(budget id, YYYY-MM, micro-USD)`), in one
/// statement; a row keeps the larger value, as [`upsert_daily`].
pub async fn upsert_monthly(pool: &PgPool, rows: &[(String, String, i64)]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let budget_ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let months: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    let costs: Vec<i64> = rows.iter().map(|r| r.2.max(0)).collect();
    let result = sqlx::query!(
        r#"INSERT INTO virtual_key_spend_monthly (budget_id, month, cost_micros)
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
           ON CONFLICT (budget_id, month) DO UPDATE
             SET cost_micros = EXCLUDED.cost_micros, updated_at = now()
             WHERE virtual_key_spend_monthly.cost_micros < EXCLUDED.cost_micros"#,
        &budget_ids,
        &months,
        &costs,
    )
    .execute(pool)
    .await
    .during("upserting monthly spend")?;
    Ok(result.rows_affected())
}

/// What PostgreSQL knows of some keys' month: the total and the rows of one day (to restore
/// that day's per-model counters), per budget id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMonth {
    /// Sum of the month's cost in micro-USD.
    pub total_micros: i64,
    /// The rows of the requested day.
    pub day_rows: Vec<DailySpend>,
}

/// The month `[from, day]` of many keys in one query.
pub async fn stored_months(
    pool: &PgPool,
    budget_ids: &[String],
    from: NaiveDate,
    day: NaiveDate,
) -> Result<HashMap<String, StoredMonth>, StoreError> {
    let rows = sqlx::query_as!(
        DailySpend,
        r#"SELECT budget_id, day, surface, model, cost_micros, requests FROM virtual_key_spend_daily
           WHERE budget_id = ANY($1) AND day BETWEEN $2 AND $3"#,
        budget_ids,
        from,
        day,
    )
    .fetch_all(pool)
    .await
    .during("reading stored spend")?;
    let mut out: HashMap<String, StoredMonth> = HashMap::new();
    for row in rows {
        let month = out.entry(row.budget_id.clone()).or_default();
        month.total_micros = month.total_micros.saturating_add(row.cost_micros);
        if row.day == day {
            month.day_rows.push(row);
        }
    }
    let month = from.format("%Y-%m").to_string();
    // The counter can exceed its per-model rows, never the other way round for long: the
    // larger of the two is what the month had.
    for (budget_id, micros) in monthly_totals(pool, budget_ids, &month).await? {
        let entry = out.entry(budget_id).or_default();
        entry.total_micros = entry.total_micros.max(micros);
    }
    Ok(out)
}

/// The monthly counters copied so far (`YYYY-MM`), per budget id, in one query.
pub async fn monthly_totals(
    pool: &PgPool,
    budget_ids: &[String],
    month: &str,
) -> Result<HashMap<String, i64>, StoreError> {
    let totals = sqlx::query!(
        "SELECT budget_id, cost_micros FROM virtual_key_spend_monthly WHERE budget_id = ANY($1) AND month = $2",
        budget_ids,
        month,
    )
    .fetch_all(pool)
    .await
    .during("reading stored monthly spend")?;
    Ok(totals.into_iter().map(|t| (t.budget_id, t.cost_micros)).collect())
}
