//! What the reconciler knows of the world for one PlainVM: the shared fleet view.

use super::decide::*;
use crate::controllers::context::Context;
use crate::controllers::server::Owner;

pub(super) fn observe(ctx: &Context, owner: &Owner) -> Observed {
    Observed {
        lists_known: ctx.shared.fleet.servers_known() && ctx.shared.fleet.firewalls_known(),
        firewall: ctx.shared.fleet.firewall(&owner.uid),
        server: ctx.shared.fleet.server(&owner.uid),
        shutdown_sent: ctx.power.shutdown_sent_at(&owner.uid),
    }
}
