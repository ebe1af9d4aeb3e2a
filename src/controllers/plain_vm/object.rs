//! The PlainVM on the reconcile skeleton: what it observes, decides, does and reports in a
//! pass, and its removal.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::api::{DeletionPolicy, PlainVM, PlainVMStatus};
use crate::store::audit::AuditKind;

use super::act::act;
use super::decide::*;
use super::firewall;
use super::observe::observe;
use crate::controllers::config::ControllerConfig;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::lifecycle::{self, Destroyed, ManagedObject, Stall, UsageSeen};
use crate::controllers::server::{self, Owner};

impl ManagedObject for PlainVM {
    type Observed = Observed;
    type Step = Step;
    lifecycle::managed_kind!(PlainVMStatus, KIND);

    /// The firewalls list runs only once some PlainVM asks for it: asked here, before the
    /// pass waits for it.
    fn lists_known(ctx: &Context) -> bool {
        ctx.shared.fleet.want_firewalls();
        ctx.shared.fleet.servers_known() && ctx.shared.fleet.firewalls_known()
    }

    async fn observe(&self, ctx: &Context, owner: &Owner) -> Result<Observed, ReconcileError> {
        observe(ctx, owner).await
    }

    fn decide(&self, status: &PlainVMStatus, observed: &Observed, config: &ControllerConfig, now: Instant) -> Plan {
        decide(&self.spec, status, observed, now, config.shutdown_timeout)
    }

    async fn act(
        &self,
        ctx: &Context,
        owner: &Owner,
        status: &mut PlainVMStatus,
        step: &Step,
    ) -> Result<(), ReconcileError> {
        act(ctx, self, owner, status, step).await
    }

    fn describe(
        &self,
        status: &PlainVMStatus,
        observed: &Observed,
        stalled: Option<Stall>,
        now: Timestamp,
    ) -> PlainVMStatus {
        desired_status(self.metadata.generation, &self.spec, status, observed, stalled, now)
    }

    fn usage<'a>(&self, observed: &'a Observed) -> Option<UsageSeen<'a>> {
        let server = observed.server.as_ref()?;
        Some(UsageSeen { power: server.status.clone(), server, tail: observed.timeline?, intent: intent(&self.spec) })
    }

    /// The spec's owner: a PlainVM's owner cannot change.
    fn billed_owner(&self, _status: &PlainVMStatus) -> Option<String> {
        Some(self.spec.owner.clone())
    }

    fn stall(step: &Step, error: &ReconcileError) -> Option<Stall> {
        match step {
            Step::CreateFirewall { .. } => firewall_stall(error).or_else(|| lifecycle::stall_reason(error)),
            _ => lifecycle::stall_reason(error),
        }
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
