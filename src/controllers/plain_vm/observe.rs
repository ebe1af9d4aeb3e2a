//! What the reconciler knows of the world for one PlainVM, read once per decision: the shared
//! fleet view and, when it has a server, the tail of its usage timeline.

use super::decide::*;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::server::{self, Owner};

pub(super) async fn observe(ctx: &Context, owner: &Owner) -> Result<Observed, ReconcileError> {
    let fleet = &ctx.shared.fleet;
    let timeline = match fleet.server(&owner.uid) {
        Some(_) => Some(server::timeline_tail(ctx, &owner.uid).await?),
        None => None,
    };
    // The fleet after the database: what the decision acts on is as fresh as it can be.
    Ok(Observed {
        lists_known: fleet.servers_known() && fleet.firewalls_known(),
        firewall: fleet.firewall(&owner.uid),
        server: fleet.server(&owner.uid),
        shutdown_sent: ctx.power.shutdown_sent_at(&owner.uid),
        timeline,
    })
}
