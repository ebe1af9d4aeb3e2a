//! The action routes (`/actions`, `/servers/actions`, `/firewalls/actions` and those of one
//! resource): lookups by id, per-resource indexes, filters and pages.

use std::collections::BTreeSet;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::envelope::{ApiError, Reply};
use super::listing::{paginate, sort_items};
use super::request::{Q, St, created, parse_id, q_all};
use super::resources::{Action, rfc3339};
use super::state::HzState;
use super::world::World;
use crate::http::query_param;

fn action_field(a: &&Action, name: &str) -> Value {
    match name {
        "id" => json!(a.id),
        "command" => json!(a.command.name()),
        "status" => json!(a.status()),
        "progress" => json!(a.progress(Instant::now())),
        // Ids grow with the start time.
        "started" => json!(a.id),
        "finished" => a.finished.map_or(Value::Null, |t| json!(rfc3339(t))),
        _ => Value::Null,
    }
}

/// The actions a list asks for, filtered and sorted but not rendered: by `id` when given
/// (a lookup each), else those of one resource (`scope`, from the per-resource index), else
/// every kept action whose first resource is of `kind`.
pub(super) fn actions_for<'w>(
    w: &'w World,
    q: &[(String, String)],
    scope: Option<(i64, &'static str)>,
    kind: Option<&str>,
) -> Result<Vec<&'w Action>, ApiError> {
    let ids: BTreeSet<i64> = q_all(q, "id")
        .into_iter()
        .map(|s| s.parse::<i64>().map_err(|_| ApiError::invalid_input("id", "id must be an integer")))
        .collect::<Result<_, _>>()?;
    let statuses = q_all(q, "status");
    let candidates: Vec<&Action> = match scope {
        Some((id, k)) => w.actions_of(k, id).filter(|a| ids.is_empty() || ids.contains(&a.id)).collect(),
        None if !ids.is_empty() => w.actions_by_id(&ids),
        None => w.actions.values().collect(),
    };
    let mut items: Vec<&Action> = candidates
        .into_iter()
        .filter(|a| kind.is_none_or(|k| a.resources.first().is_some_and(|(_, rk)| *rk == k)))
        .filter(|a| statuses.is_empty() || statuses.contains(&a.status()))
        .collect();
    sort_items(&mut items, q, action_field)?;
    Ok(items)
}

pub(super) async fn list_actions(State(st): St, Query(q): Q) -> Reply {
    if query_param(&q, "id").is_none() {
        return Err(ApiError::invalid_input("id", "id is required"));
    }
    let w = st.world();
    let now = Instant::now();
    let items: Vec<Value> = actions_for(&w, &q, None, None)?.into_iter().map(|a| w.render_action(a, now)).collect();
    created(StatusCode::OK, json!({"actions": items}))
}

pub(super) async fn get_action(State(st): St, Path(action): Path<String>) -> Reply {
    let id = parse_id(&action, "action")?;
    let w = st.world();
    let a = w.actions.get(&id).ok_or_else(|| ApiError::not_found("action"))?;
    created(StatusCode::OK, json!({"action": w.render_action(a, Instant::now())}))
}

pub(super) fn action_page(
    w: &World,
    items: Vec<&Action>,
    q: &[(String, String)],
    headers: &HeaderMap,
    path: &str,
) -> Reply {
    let now = Instant::now();
    paginate(items, q, "actions", headers, path, |a| w.render_action(a, now))
}

pub(super) async fn list_server_actions(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let w = st.world();
    let items = actions_for(&w, &q, None, Some("server"))?;
    action_page(&w, items, &q, &headers, "/servers/actions")
}

pub(super) async fn list_one_server_actions(
    State(st): St,
    Path(id): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
) -> Reply {
    let id = parse_id(&id, "server")?;
    let w = st.world();
    let items = actions_for(&w, &q, Some((id, "server")), None)?;
    action_page(&w, items, &q, &headers, "/servers/actions")
}

pub(super) async fn get_server_action(State(st): St, Path((id, action)): Path<(String, String)>) -> Reply {
    scoped_action(&st, &id, &action, "server")
}

pub(super) fn scoped_action(st: &HzState, id: &str, action: &str, kind: &str) -> Reply {
    let id = parse_id(id, kind)?;
    let action = parse_id(action, "action")?;
    let w = st.world();
    let a = w.actions.get(&action).filter(|a| a.touches(id, kind)).ok_or_else(|| ApiError::not_found("action"))?;
    created(StatusCode::OK, json!({"action": w.render_action(a, Instant::now())}))
}
