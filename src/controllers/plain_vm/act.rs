//! The PlainVM's steps in the world (its firewall, its server behind it, power) and its
//! removal, on the shared reconcile skeleton.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::api::plain_vm::FirewallStatus;
use crate::api::{DeletionPolicy, PlainVM, PlainVMStatus};
use crate::store::audit::AuditKind;

use super::decide::*;
use super::firewall;
use super::observe::observe;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::lifecycle::{self, Destroyed, ManagedObject, Pass, ServerObject, Stall, Target};
use crate::controllers::server::{self, Owner, ServerIntent};

/// One pass's fixed inputs.
pub(super) struct PlainVmPass {
    target: Target<PlainVM>,
}

impl PlainVmPass {
    async fn act(&self, ctx: &Context, status: &mut PlainVMStatus, step: &Step) -> Result<(), ReconcileError> {
        let Target { object: vm, owner } = &self.target;
        let vm = vm.as_ref();
        let inbound = &vm.spec.firewall.inbound;
        match step {
            Step::CreateFirewall => {
                let before = status.firewall.as_ref().and_then(|f| f.id);
                let labels = server::server_labels(owner, PRODUCT, ctx.config.installation());
                let (fw, adopted) = firewall::create_firewall(ctx, owner, &labels, inbound).await?;
                status.firewall = Some(FirewallStatus {
                    id: Some(fw.id),
                    rules: Some(i32::try_from(fw.rules.len()).unwrap_or(i32::MAX)),
                });
                let recreated = before.is_some_and(|old| old != fw.id);
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
            Step::SetRules => {
                let Some(fw) = ctx.shared.fleet.firewall(&owner.uid) else { return Ok(()) };
                // The spec was seen already at this generation: the rules changed outside.
                let outside = status.observed_generation == vm.metadata.generation && status.firewall.is_some();
                firewall::set_rules(ctx, owner, &fw, inbound).await?;
                let (reason, note) = if outside {
                    (
                        "FirewallRulesRepaired",
                        "The firewall's rules were changed outside the operator; set them back to",
                    )
                } else {
                    ("FirewallRulesUpdated", "The firewall's rules now are")
                };
                let msg = format!("{note} the spec's {} inbound rules (firewall {}).", inbound.len(), fw.id);
                ctx.event(vm, outside, reason, "SetFirewallRules", msg).await;
            }
            Step::CreateServer => {
                let Some(fw) = ctx.shared.fleet.firewall(&owner.uid) else { return Ok(()) };
                let user_data = crate::controllers::server::cloud_init::plainvm_user_data(&vm.spec.ssh_keys)
                    .map_err(|e| ReconcileError::UserData(e.to_string()))?;
                let intent = intent(&vm.spec);
                // The firewall is in the create call: there is no instant the server is open.
                let spec = server::create_spec(owner, &intent, ctx.config.installation(), user_data, vec![fw.id]);
                let vanished = status.server.as_ref().and_then(|s| s.id);
                let created = server::create_server(ctx, owner, &spec).await?;
                status.server = Some(server::server_status(&created, None));
                let (warning, reason, note) = server::created_event(vanished, &created, &intent);
                ctx.event(vm, warning, reason, "CreateServer", format!("{note} Behind firewall {}.", fw.id)).await;
            }
            Step::AttachFirewall => {
                let (Some(server), Some(fw)) =
                    (ctx.shared.fleet.server(&owner.uid), ctx.shared.fleet.firewall(&owner.uid))
                else {
                    return Ok(());
                };
                firewall::attach(ctx, owner, &fw, server.id).await?;
                let msg = format!(
                    "Firewall {} was detached from server {} outside the operator; attached it again.",
                    fw.id, server.id
                );
                ctx.event(vm, true, "FirewallReattached", "AttachFirewall", msg).await;
            }
            Step::Power(power) => {
                let Some(server) = ctx.shared.fleet.server(&owner.uid) else { return Ok(()) };
                let observed = server.status.clone();
                let subject = server::PowerSubject { server, observed, billed_owner: Some(vm.spec.owner.clone()) };
                server::power_step(ctx, vm, owner, &intent(&vm.spec), subject, *power).await?
            }
        }
        Ok(())
    }
}

impl Pass for PlainVmPass {
    type Object = PlainVM;
    type Step = Step;

    fn lists_known(&self, ctx: &Context) -> bool {
        ctx.shared.fleet.servers_known() && ctx.shared.fleet.firewalls_known()
    }

    fn plan(&self, ctx: &Context, _status: &PlainVMStatus) -> Plan {
        decide(&self.target.object.spec, &observe(ctx, &self.target.owner), Instant::now(), ctx.config.shutdown_timeout)
    }

    async fn act(&self, ctx: &Context, status: &mut PlainVMStatus, step: &Step) -> Result<(), ReconcileError> {
        PlainVmPass::act(self, ctx, status, step).await
    }

    fn describe(&self, ctx: &Context, status: &PlainVMStatus, stalled: Option<Stall>) -> PlainVMStatus {
        let observed = observe(ctx, &self.target.owner);
        desired_status(
            self.target.object.metadata.generation,
            &self.target.object.spec,
            status,
            &observed,
            stalled,
            Timestamp::now(),
        )
    }

    fn power_status(&self, ctx: &Context) -> Option<String> {
        ctx.shared.fleet.server(&self.target.owner.uid).map(|s| s.status)
    }

    fn stall(&self, step: &Step, error: &ReconcileError) -> Option<Stall> {
        match step {
            Step::CreateFirewall => firewall_stall(error).or_else(|| lifecycle::stall_reason(error)),
            _ => lifecycle::stall_reason(error),
        }
    }

    fn target(&self) -> &Target<PlainVM> {
        &self.target
    }
}

impl ServerObject for PlainVM {
    fn intent(&self) -> ServerIntent {
        intent(&self.spec)
    }
}

impl ManagedObject for PlainVM {
    lifecycle::managed_kind!(PlainVMStatus, KIND);

    async fn apply(vm: Arc<PlainVM>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
        ctx.shared.fleet.want_firewalls();
        lifecycle::apply(&PlainVmPass { target: Target::of(vm)? }, &ctx).await
    }

    /// Removes the server, then the firewall (or takes our labels off both, for `Orphan`), then
    /// commits the destroy event; the finalizer goes only after that commit.
    async fn cleanup(vm: Arc<PlainVM>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
        let ctx = ctx.as_ref();
        ctx.shared.fleet.want_firewalls();
        let owner = Owner::of(vm.as_ref(), KIND)?;
        // Not `Ok(requeue)`: any `Ok` releases the finalizer, which would leak what the lists
        // have not shown yet.
        if !(ctx.shared.fleet.servers_known() && ctx.shared.fleet.firewalls_known()) {
            return Err(ReconcileError::NotReady("the first complete lists of servers and firewalls"));
        }
        let status = vm.status.clone().unwrap_or_default();
        let policy = vm.spec.deletion_policy;
        let server = ctx.shared.fleet.server(&owner.uid);
        let fw = ctx.shared.fleet.firewall(&owner.uid);
        let server_id = server.as_ref().map(|s| s.id).or(status.server.as_ref().and_then(|s| s.id));
        let firewall_id = fw.as_ref().map(|f| f.id).or(status.firewall.as_ref().and_then(|f| f.id));
        let intent = intent(&vm.spec);
        let observed = server.as_ref().map(|s| s.status.clone());
        server::settle_before_removal(ctx, (vm.as_ref(), &owner), (&intent, server.as_ref()), &vm.spec.owner, observed)
            .await?;
        match policy {
            DeletionPolicy::Delete => {
                if let Some(id) = server_id {
                    server::delete_server(ctx, &owner, id).await?;
                }
                // Still applied while the server's delete runs: an error, so this is retried
                // with backoff and the finalizer stays until the firewall is gone.
                if let Some(id) = firewall_id {
                    firewall::delete(ctx, &owner, id).await?;
                }
            }
            // By the fleet view or, when it lacks them, the ids status recorded, as above.
            DeletionPolicy::Orphan => {
                server::unmark_server(ctx, &owner, server.as_ref(), server_id).await?;
                firewall::unmark(ctx, &owner, fw.as_ref(), firewall_id).await?;
            }
        }
        let destroyed = Destroyed {
            kind: AuditKind::PlainVmDestroyed,
            billed_owner: Some(vm.spec.owner.clone()),
            region: Some(intent.region.as_str().to_owned()),
            cloud_ids: json!({"server_id": server_id, "firewall_id": firewall_id}),
            details: json!({
                "deletion_policy": format!("{policy:?}"),
                "orphaned": policy == DeletionPolicy::Orphan,
                "server_name": server::server_name(&owner.name, &owner.uid),
                "firewall_name": firewall::firewall_name(&owner.uid),
                "inbound_rules": vm.spec.firewall.inbound.len(),
                "price_cell": intent.billed_price_cell(server.as_ref()),
            }),
        };
        lifecycle::commit_destroy(ctx, &owner, destroyed).await
    }
}
