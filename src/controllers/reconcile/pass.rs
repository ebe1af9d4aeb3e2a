//! One pass over a live object, the same for every kind: observe -> decide -> act, a few
//! steps at a time, then the usage-timeline row, one status write and the requeue. The kind
//! supplies what each stage is made of ([`ManagedObject`]): what it observes, its pure
//! decision, its steps (each carrying the ids it acts on) and its status. This module never
//! knows what a tunnel, a firewall or a key is, and never talks to a cloud itself.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;

use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::kind::{ManagedObject, Plan, Wait};
use crate::controllers::reconcile::outcome::{SELF_CLEARING, Stall, retry_reason, set_ready_reason};
use crate::controllers::reconcile::status_write::{latest_status, write_status};
use crate::controllers::server::{self, Owner};

/// Steps a pass takes at most; the rest are taken by the next pass, at once.
const MAX_STEPS: usize = 10;

/// One pass. Each step's outcome is observed again before the next decision; a step is taken
/// at most once a pass: one that left nothing the decision sees (a DNS name refused) must not
/// be taken again and again while the steps after it never run.
pub async fn pass<K: ManagedObject>(object: &K, ctx: &Context) -> Result<Action, ReconcileError> {
    let owner = Owner::of(object, K::KIND)?;
    // Until the first complete lists, absence proves nothing: deciding (or describing the
    // world in status) then would flap conditions of every object at each operator restart.
    // At start they come within moments: wait for them here rather than in another reconcile.
    if !ctx.shared.fleet.until(|| K::lists_known(ctx), ctx.config.fast_poll).await {
        return Ok(Action::requeue(ctx.config.fast_poll));
    }
    let old = latest_status(ctx, object);
    let mut observed = object.observe(ctx, &owner).await?;
    let mut status = K::working_status(&old, &observed);
    // What happened before this pass (a stop in the console) is recorded before this pass
    // changes it (powers the server on again), or the timeline would never show it.
    if record_usage(object, ctx, &owner, &status, &observed).await? {
        observed = object.observe(ctx, &owner).await?;
    }
    let mut plan = Plan { steps: Vec::new(), wait: Wait::Lists };
    let mut taken: Vec<K::Step> = Vec::new();
    let (mut stalled, mut more_to_do) = (None::<Stall>, false);
    for round in 0..=MAX_STEPS {
        plan = object.decide(&status, &observed, &ctx.config, Instant::now());
        let Some(step) = next_step(&plan.steps, &taken) else { break };
        if round == MAX_STEPS {
            more_to_do = true;
            break;
        }
        taken.push(step.clone());
        if let Err(e) = object.act(ctx, &owner, &mut status, &step).await {
            if let Some(stall) = K::stall(&step, &e) {
                tracing::warn!(error = %e, ?step, "permanent error: stalled");
                ctx.event(object, true, stall.0, "Reconcile", stall.1.clone()).await;
                stalled = Some(stall);
                break;
            }
            // Keep what was done so far (e.g. a new server's id) and say what failed, then
            // back off. The step's error is the one reported, even when the world cannot be
            // observed again (the same outage): then the observation before the step stands.
            let (reason, message) = retry_reason(&e);
            if let Ok(now) = object.observe(ctx, &owner).await {
                observed = now;
            }
            let mut next = object.describe(&status, &observed, None, Timestamp::now());
            set_ready_reason(K::conditions_mut(&mut next), reason, &message);
            write_status(ctx, object, &old, &next).await?;
            return Err(e);
        }
        observed = object.observe(ctx, &owner).await?;
    }
    if record_usage(object, ctx, &owner, &status, &observed).await? {
        observed = object.observe(ctx, &owner).await?;
    }
    let next = object.describe(&status, &observed, stalled.clone(), Timestamp::now());
    write_status(ctx, object, &old, &next).await?;
    ctx.failures.succeeded(&owner.uid);
    tracing::debug!(wait = ?plan.wait, stalled = stalled.is_some(), more_to_do, "pass done");
    let stalled = stalled.map(|(reason, _)| reason);
    let action = next_action(stalled, plan.wait, ctx, &owner);
    // Our own status write starts no reconcile (see `trigger`): steps left go on at once. So
    // does a pass whose world changed after it decided but before its wait was registered (no
    // list wakes it for a change merged before).
    let waits_on_lists = stalled.is_none() && matches!(plan.wait, Wait::Lists | Wait::Tunnel | Wait::Server);
    if more_to_do || (waits_on_lists && changed_since(object, ctx, &owner, &status, &plan).await) {
        return Ok(Action::requeue(Duration::ZERO));
    }
    Ok(action)
}

/// Whether the decision is another now than `plan` (a list merged after it was made). A pass
/// that cannot observe again now is done all the same: its wait stands.
async fn changed_since<K: ManagedObject>(
    object: &K,
    ctx: &Context,
    owner: &Owner,
    status: &K::Status,
    plan: &Plan<K::Step>,
) -> bool {
    match object.observe(ctx, owner).await {
        Ok(observed) => object.decide(status, &observed, &ctx.config, Instant::now()) != *plan,
        Err(e) => {
            tracing::debug!(error = %e, "not observed again after the pass; its wait stands");
            false
        }
    }
}

/// Pure: the first planned step not yet taken in this pass. A step planned again after it
/// was taken changed nothing the decision reads; it is logged (a decision that does not see
/// its own step's outcome is a bug) and passed over so the steps after it still run.
fn next_step<S: Clone + Debug + PartialEq>(planned: &[S], taken: &[S]) -> Option<S> {
    for step in planned {
        if !taken.contains(step) {
            return Some(step.clone());
        }
        tracing::warn!(?step, "a step was planned again after it was taken in this pass; passed over");
    }
    None
}

/// Appends the usage-timeline row the observed power state calls for, if any; true when it
/// wrote one (the observation's tail is then behind, and is read again).
async fn record_usage<K: ManagedObject>(
    object: &K,
    ctx: &Context,
    owner: &Owner,
    status: &K::Status,
    observed: &K::Observed,
) -> Result<bool, ReconcileError> {
    let Some(seen) = object.usage(observed) else { return Ok(false) };
    let Some(row) = server::next_row(seen.tail, &seen.power) else { return Ok(false) };
    // A copy read before the owner was accepted (the cache behind our own status write) must
    // not bill the spec's owner: it may be a new one whose transfer is not recorded yet.
    let Some(billed) = object.billed_owner(status) else { return Ok(false) };
    server::record_transition(ctx, owner, (&seen.intent, Some(seen.server)), &billed, row).await?;
    tracing::info!(transition = row.1.as_str(), "usage timeline");
    Ok(true)
}

/// The requeue after a pass that ended without error, and what the object now waits on. An
/// object waiting for its server or tunnel is woken by the list that shows the change (see
/// [`crate::controllers::fleet::waiters`]); its requeue is the resync's safety net, or the
/// moment an ACPI shutdown turns into a hard power-off, which no list shows.
pub fn next_action(stalled: Option<&'static str>, wait: Wait, ctx: &Context, owner: &Owner) -> Action {
    let uid = owner.uid.as_str();
    match (stalled, wait) {
        (Some(reason), _) => {
            ctx.shared.fleet.done_waiting(uid);
            // A quota or a sold-out type clears by itself: look again each resync (a periodic
            // retry, never a tight loop). A bad spec does not: wait for the spec to change.
            if SELF_CLEARING.contains(&reason) { Action::requeue(ctx.config.resync) } else { Action::await_change() }
        }
        (None, Wait::Nothing) => {
            ctx.shared.fleet.done_waiting(uid);
            Action::requeue(ctx.config.resync)
        }
        (None, Wait::Until(after)) => {
            ctx.shared.fleet.done_waiting(uid);
            Action::requeue(after)
        }
        (None, Wait::Change) => {
            ctx.shared.fleet.done_waiting(uid);
            Action::await_change()
        }
        (None, Wait::Lists) => Action::requeue(ctx.config.fast_poll),
        (None, Wait::Tunnel) => {
            let tunnel = server::names::tunnel_name(ctx.config.installation(), uid);
            ctx.shared.fleet.wait_for_tunnel(owner, &tunnel);
            Action::requeue(ctx.config.resync)
        }
        (None, Wait::Server) => {
            ctx.shared.fleet.wait_for_servers(owner);
            let shutdown_left = ctx
                .power
                .shutdown_sent_at(uid)
                .and_then(|sent| ctx.config.shutdown_timeout.checked_sub(sent.elapsed()));
            // Just past the timeout, so the pass it starts decides the power-off.
            let deadline = shutdown_left.map_or(ctx.config.resync, |left| left + Duration::from_millis(50));
            Action::requeue(deadline.min(ctx.config.resync))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_taken_at_most_once_a_pass() {
        let taken = vec!["dns"];
        assert_eq!(next_step(&["dns", "server"], &taken), Some("server"));
        assert_eq!(next_step(&["dns"], &taken), None);
        assert_eq!(next_step(&["server", "dns"], &[]), Some("server"));
    }
}
