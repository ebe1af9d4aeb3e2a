//! The PlainVM's steps in the world: its firewall, its server behind it, power.

use crate::api::plain_vm::FirewallStatus;
use crate::api::{PlainVM, PlainVMStatus};

use super::decide::*;
use super::firewall;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::server::{self, Owner};

/// One step of a PlainVM's pass.
pub(super) async fn act(
    ctx: &Context,
    vm: &PlainVM,
    owner: &Owner,
    status: &mut PlainVMStatus,
    step: &Step,
) -> Result<(), ReconcileError> {
    let inbound = &vm.spec.firewall.inbound;
    match step {
        Step::CreateFirewall { replaces } => {
            let labels = server::server_labels(owner, PRODUCT, ctx.config.installation());
            let (fw, adopted) = firewall::create_firewall(ctx, owner, &labels, inbound).await?;
            status.firewall = Some(FirewallStatus {
                id: Some(fw.id),
                rules: Some(i32::try_from(fw.rules.len()).unwrap_or(i32::MAX)),
            });
            let recreated = replaces.is_some_and(|old| old != fw.id);
            let (reason, note) = if recreated {
                ("FirewallRecreated", "The firewall was deleted outside the operator; a new one was created.")
            } else if adopted {
                ("FirewallCreated", "Adopted the firewall an earlier attempt created.")
            } else {
                ("FirewallCreated", "Firewall created.")
            };
            let msg = format!("{note} Firewall {} with {} inbound rules.", fw.id, inbound.len());
            ctx.event(vm, recreated, reason, "CreateFirewall", msg).await;
        }
        Step::SetRules { firewall: fw } => {
            // The spec was seen already at this generation: the rules changed outside.
            let outside = status.observed_generation == vm.metadata.generation && status.firewall.is_some();
            firewall::set_rules(ctx, owner, fw, inbound).await?;
            let (reason, note) = if outside {
                ("FirewallRulesRepaired", "The firewall's rules were changed outside the operator; set them back to")
            } else {
                ("FirewallRulesUpdated", "The firewall's rules now are")
            };
            let msg = format!("{note} the spec's {} inbound rules (firewall {}).", inbound.len(), fw.id);
            ctx.event(vm, outside, reason, "SetFirewallRules", msg).await;
        }
        Step::CreateServer { firewall_id, replaces } => {
            let user_data = crate::controllers::server::cloud_init::plainvm_user_data(&vm.spec.ssh_keys)
                .map_err(|e| ReconcileError::UserData(e.to_string()))?;
            let intent = intent(&vm.spec);
            // The firewall is in the create call: there is no instant the server is open.
            let spec = server::create_spec(owner, &intent, ctx.config.installation(), user_data, vec![*firewall_id]);
            let created = server::create_server(ctx, owner, &spec).await?;
            status.server = Some(server::server_status(&created, None));
            let (warning, reason, note) = server::created_event(*replaces, &created, &intent);
            ctx.event(vm, warning, reason, "CreateServer", format!("{note} Behind firewall {firewall_id}.")).await;
        }
        Step::AttachFirewall { firewall: fw, server_id } => {
            firewall::attach(ctx, owner, fw, *server_id).await?;
            let msg = format!(
                "Firewall {} was detached from server {server_id} outside the operator; attached it again.",
                fw.id
            );
            ctx.event(vm, true, "FirewallReattached", "AttachFirewall", msg).await;
        }
        Step::Power { step, server } => {
            let observed = server.status.clone();
            let subject = server::PowerSubject {
                server: server.as_ref().clone(),
                observed,
                billed_owner: Some(vm.spec.owner.clone()),
            };
            server::power_step(ctx, vm, owner, &intent(&vm.spec), subject, *step).await?
        }
    }
    Ok(())
}
