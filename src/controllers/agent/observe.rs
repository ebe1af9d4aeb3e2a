//! What the reconciler knows of the world for one Agent, read once per decision: the shared
//! fleet view (never a per-object cloud read), the tail of its audit trail and, when it has a
//! server, of its usage timeline.

use crate::api::Agent;
use crate::store::audit::{self, AuditKind};

use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::server::names::tunnel_name;
use crate::controllers::server::{self, Owner};

use super::decide::*;

pub(super) async fn observe(ctx: &Context, agent: &Agent, owner: &Owner) -> Result<Observed, ReconcileError> {
    let fleet = &ctx.shared.fleet;
    let trail = transfer_trail(ctx, &owner.uid).await?;
    let timeline = match fleet.server(&owner.uid) {
        Some(_) => Some(server::timeline_tail(ctx, &owner.uid).await?),
        None => None,
    };
    // The fleet last, after the database: what the decision acts on is as fresh as it can be.
    let tunnel_name = tunnel_name(ctx.config.installation(), &owner.uid);
    Ok(Observed {
        hostname: hostname(agent, &ctx.config.zone_name),
        servers_known: fleet.servers_known(),
        server: fleet.server(&owner.uid),
        tunnels_known: fleet.tunnels_known(),
        tunnel: fleet.tunnel(&tunnel_name),
        tunnel_name,
        dns_known: fleet.dns_known(),
        dns: fleet.dns_record(&owner.uid),
        fleet_firewall: ctx.fleet_firewall(),
        shutdown_sent: ctx.power.shutdown_sent_at(&owner.uid),
        dns_name_taken: ctx.dns_taken.get(&owner.uid),
        trail,
        timeline,
    })
}

/// The Agent's transfers as its audit trail records them.
pub(crate) async fn transfer_trail(ctx: &Context, uid: &str) -> Result<TransferTrail, ReconcileError> {
    let events = audit::events_for_resource(&ctx.clients.db, uid).await?;
    let transfers: Vec<_> = events.iter().filter(|e| e.kind == AuditKind::AgentTransferred.as_str()).collect();
    let last_to = transfers.last().and_then(|e| e.details["to"].as_str().map(str::to_owned));
    Ok(TransferTrail { transfers: transfers.len(), last_to })
}
