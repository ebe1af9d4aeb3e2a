//! What the reconciler knows of the world for one PlainVM: the shared fleet view.

use super::decide::*;
use crate::controllers::context::Context;
use crate::controllers::server::Owner;

pub(super) fn observe(ctx: &Context, owner: &Owner) -> Observed {
    Observed {
        lists_known: ctx.fleet.servers_known() && ctx.fleet.firewalls_known(),
        firewall: ctx.fleet.firewall(&owner.uid),
        server: ctx.fleet.server(&owner.uid),
        shutdown_sent: ctx.power.shutdown_sent_at(&owner.uid),
    }
}
