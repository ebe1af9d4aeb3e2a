//! What the reconciler knows of the world for one Agent: the shared fleet view, never a
//! per-object cloud read.

use crate::controllers::context::Context;
use crate::controllers::server::Owner;
use crate::controllers::server::names::tunnel_name;

use super::decide::*;

pub(super) fn observe(ctx: &Context, owner: &Owner, name_taken: Option<String>) -> Observed {
    Observed {
        servers_known: ctx.shared.fleet.servers_known(),
        server: ctx.shared.fleet.server(&owner.uid),
        tunnels_known: ctx.shared.fleet.tunnels_known(),
        tunnel: ctx.shared.fleet.tunnel(&tunnel_name(ctx.config.installation(), &owner.uid)),
        dns_known: ctx.shared.fleet.dns_known(),
        dns: ctx.shared.fleet.dns_record(&owner.uid),
        fleet_firewall: ctx.fleet_firewall(),
        shutdown_sent: ctx.power.shutdown_sent_at(&owner.uid),
        dns_name_taken: name_taken,
    }
}
