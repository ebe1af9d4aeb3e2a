//! The usage timeline: each real power transition of a server recorded once, in order.

use chrono::Utc;

use crate::cloud::hetzner::ServerSummary;
use crate::store::usage::{self, Transition, UsageTransition};

use super::intent::*;
use super::marks::Owner;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;

/// Pure: the usage-timeline row an observed status calls for, given the last one recorded.
/// `running` after nothing or a stop is a start; `off` after a start is a stop. States in
/// between (`starting`, `stopping`) record nothing until they settle.
pub fn decide_transition(last_recorded: Option<Transition>, observed_status: &str) -> Option<Transition> {
    match (last_recorded, observed_status) {
        (None | Some(Transition::Stop), "running") => Some(Transition::Start),
        (Some(Transition::Start), "off") => Some(Transition::Stop),
        _ => None,
    }
}

/// The key of the `n`th transition of an object (1-based): a retried write of the same
/// transition is the same key, and the next real transition has the next `n`, so a server
/// restarted twice without a spec change is four rows, never two.
pub fn transition_key(uid: &str, n: usize, transition: Transition) -> String {
    format!("{uid}/{n}/{}", transition.as_str())
}

/// A timeline's tail: how many rows it has, and the last one's transition.
pub type TimelineTail = (usize, Option<Transition>);

/// The recorded transitions of an object: how many, and the last.
pub async fn timeline_tail(ctx: &Context, uid: &str) -> Result<TimelineTail, ReconcileError> {
    let rows = usage::transitions_for_resource(&ctx.clients.db, uid).await?;
    let last = rows.last().map(|r| if r.transition == "start" { Transition::Start } else { Transition::Stop });
    Ok((rows.len(), last))
}

/// The row an observed status calls for now, if any: its position on the timeline (1-based)
/// and its transition.
pub async fn pending_transition(
    ctx: &Context,
    uid: &str,
    observed_status: &str,
) -> Result<Option<(usize, Transition)>, ReconcileError> {
    Ok(next_row(timeline_tail(ctx, uid).await?, observed_status))
}

/// Pure: the row an observed status calls for after `tail`: its position (1-based) and
/// transition.
pub fn next_row((count, last): TimelineTail, observed_status: &str) -> Option<(usize, Transition)> {
    decide_transition(last, observed_status).map(|t| (count + 1, t))
}

/// Appends the `n`th row of the timeline (idempotent by key) for `server` as observed (its
/// type is what the row bills, see [`billed_type`]), billed to `billed_owner` (the owner the
/// operator has accepted: a row never bills an owner whose transfer is not recorded yet).
pub async fn record_transition(
    ctx: &Context,
    owner: &Owner,
    (intent, server): (&ServerIntent, Option<&ServerSummary>),
    billed_owner: &str,
    (n, transition): (usize, Transition),
) -> Result<(), ReconcileError> {
    let server_type = billed_type(intent, server);
    let row = UsageTransition {
        transition_key: transition_key(&owner.uid, n, transition),
        resource: owner.resource_ref(),
        owner: billed_owner.to_owned(),
        region: intent.region.as_str().to_owned(),
        price_cell: intent.price_cell_of(&server_type),
        server_type,
        transition,
        occurred_at: Utc::now(),
    };
    usage::record(&ctx.clients.db, &row).await?;
    Ok(())
}

/// The closing `stop` row of a server that is being removed while its timeline says it runs,
/// for the caller to write in the same transaction as the destroy event (billed, as the
/// destroy event is, to the accepted owner; with none known, to the start's). It closes the
/// start it follows at that start's region, server type and price cell: the server may be
/// gone from every view by now.
pub async fn closing_transition(
    ctx: &Context,
    owner: &Owner,
    billed_owner: Option<&str>,
) -> Result<Option<UsageTransition>, ReconcileError> {
    let rows = usage::transitions_for_resource(&ctx.clients.db, &owner.uid).await?;
    Ok(rows.last().filter(|last| last.transition == Transition::Start.as_str()).map(|start| UsageTransition {
        transition_key: transition_key(&owner.uid, rows.len() + 1, Transition::Stop),
        resource: owner.resource_ref(),
        owner: billed_owner.unwrap_or(&start.owner).to_owned(),
        region: start.region.clone(),
        server_type: start.server_type.clone(),
        price_cell: start.price_cell.clone(),
        transition: Transition::Stop,
        occurred_at: Utc::now(),
    }))
}
