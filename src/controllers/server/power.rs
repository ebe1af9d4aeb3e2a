//! Power: what to do about a server's state (start, ACPI shutdown, hard power-off), and the
//! step with its Event and its usage-timeline row.

use std::time::{Duration, Instant};

use kube::Resource;

use crate::cloud::CloudError;
use crate::cloud::hetzner::ServerSummary;

use super::{intent::*, marks::Owner, timeline::*};
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;

/// Pure: the note of a power step's Event (a hard power-off is a warning).
pub fn power_note(step: PowerStep) -> (bool, &'static str) {
    match step {
        PowerStep::PowerOn => (false, "Powering the server on."),
        PowerStep::Shutdown => (false, "Asked the server to shut down (ACPI)."),
        PowerStep::PowerOff => (true, "The server ignored the ACPI shutdown past the timeout; powered it off."),
        PowerStep::Hold => (false, ""),
    }
}

/// Whether a status means the machine is (or is about to be) up.
pub fn is_up(status: &str) -> bool {
    matches!(status, "running" | "starting" | "initializing" | "rebuilding" | "migrating")
}

/// The next power step for a server in `status` when the spec wants `running`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerStep {
    /// Nothing to do now (already there, or a transition is under way).
    Hold,
    PowerOn,
    /// ACPI: the guest shuts down cleanly if it listens.
    Shutdown,
    /// Hard power-off: the guest ignored the ACPI request for longer than the timeout.
    PowerOff,
}

impl PowerStep {
    /// The step's name, as metrics and logs call it.
    pub fn name(self) -> &'static str {
        match self {
            PowerStep::Hold => "hold",
            PowerStep::PowerOn => "power_on",
            PowerStep::Shutdown => "shutdown",
            PowerStep::PowerOff => "power_off",
        }
    }
}

/// Pure: what to do about power. `shutdown_sent` is when this operator last asked the guest to
/// shut down (none = never, or the request was forgotten in a restart: then it is asked again).
pub fn decide_power(
    want_running: bool,
    status: &str,
    shutdown_sent: Option<Instant>,
    now: Instant,
    timeout: Duration,
) -> PowerStep {
    match (want_running, status) {
        (true, "off") => PowerStep::PowerOn,
        (false, "running") => match shutdown_sent {
            None => PowerStep::Shutdown,
            Some(sent) if now.saturating_duration_since(sent) >= timeout => PowerStep::PowerOff,
            Some(_) => PowerStep::Hold,
        },
        _ => PowerStep::Hold,
    }
}

/// Performs a power step; the fleet view shows the transition as under way so nothing asks
/// twice, and the fast refresh watches for it to settle.
pub async fn apply_power(
    ctx: &Context,
    owner: &Owner,
    server: &ServerSummary,
    step: PowerStep,
) -> Result<(), ReconcileError> {
    let (result, under_way) = match step {
        PowerStep::Hold => return Ok(()),
        PowerStep::PowerOn => (ctx.clients.hetzner.power_on(server.id).await, "starting"),
        PowerStep::Shutdown => {
            let r = ctx.clients.hetzner.shutdown(server.id).await;
            if r.is_ok() {
                ctx.power.shutdown_sent(&owner.uid, Instant::now());
            }
            // ACPI leaves the status `running` until the guest is down.
            (r, "running")
        }
        PowerStep::PowerOff => (ctx.clients.hetzner.power_off(server.id).await, "stopping"),
    };
    let mut seen = server.clone();
    if let Err(e) = result {
        // The call may have been applied with its answer lost: until a list shows the server
        // again, nothing may be decided (or billed) from the state it was in before.
        if !matches!(e, CloudError::Permanent(_) | CloudError::NotFound(_)) {
            seen.status = UNKNOWN_STATUS.to_owned();
            ctx.shared.fleet.record_server(&owner.uid, seen);
            ctx.shared.fleet.wait_for_servers(owner);
        }
        return Err(ReconcileError::Hetzner(e));
    }
    seen.status = under_way.to_owned();
    ctx.shared.fleet.record_server(&owner.uid, seen);
    ctx.shared.fleet.wait_for_servers(owner);
    ctx.telemetry.metrics.count_step(owner.kind, step.name());
    Ok(())
}

/// What a power step acts on: the fleet view's server at one instant, the status the usage
/// timeline reads from it (an Agent's counts a connected tunnel as booted), and the owner a
/// row written now bills (`None`: no owner accepted yet).
pub struct PowerSubject {
    pub server: ServerSummary,
    pub observed: String,
    pub billed_owner: Option<String>,
}

/// The power step of a reconcile, on the server as the fleet view shows it now, reported with
/// an Event on `object`. The status the step acts on is recorded on the timeline first: the
/// pass looked at the fleet view before it planned, and a list merged in between (the server
/// settled `off`) would otherwise let that stop, and the start this step makes, pass
/// unrecorded. A step the fleet view no longer calls for is left to the next plan.
pub async fn power_step<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    owner: &Owner,
    intent: &ServerIntent,
    subject: PowerSubject,
    step: PowerStep,
) -> Result<(), ReconcileError> {
    let PowerSubject { server, observed, billed_owner } = subject;
    if let Some(billed) = &billed_owner
        && let Some(row) = pending_transition(ctx, &owner.uid, &observed).await?
    {
        record_transition(ctx, owner, (intent, Some(&server)), billed, row).await?;
        tracing::info!(transition = row.1.as_str(), "usage timeline");
    }
    let shutdown_sent = ctx.power.shutdown_sent_at(&owner.uid);
    if decide_power(intent.running, &observed, shutdown_sent, Instant::now(), ctx.config.shutdown_timeout) != step {
        return Ok(());
    }
    apply_power(ctx, owner, &server, step).await?;
    let (warning, note) = power_note(step);
    ctx.event(object, warning, "Power", "Power", note.to_owned()).await;
    Ok(())
}
