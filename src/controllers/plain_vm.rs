//! The PlainVM reconciler: a dedicated Hetzner server in Helsinki behind its own Hetzner Cloud
//! Firewall, created first with exactly the spec's inbound rules and attached in the server's
//! create call, so the server is never open; its power on the usage timeline; one destroy
//! event when it goes.
//!
//! observe (the shared fleet view) -> decide (`decide`, pure, unit-tested) -> act (one
//! idempotent step at a time), on the skeleton and server machinery it shares with Agents
//! (`lifecycle`, `server`). It never reads one server or firewall from the API (the shared
//! paged lists do), never writes `spec`, never creates a server without its firewall, and
//! never leaves a firewall behind when it deletes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hcloud::models::Firewall;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::api::plain_vm::FirewallStatus;
use crate::api::{DeletionPolicy, PlainVM, PlainVMSpec, PlainVMStatus};
use crate::cloud::CloudError;
use crate::cloud::hetzner::ServerSummary;
use crate::store::audit::AuditKind;

use super::conditions::{self, Desired};
use super::context::Context;
use super::error::ReconcileError;
use super::firewall;
use super::lifecycle::{self, Destroyed, ManagedObject, Pass, Stall, Target, Wait};
use super::server::{self, Owner, PowerStep, ServerIntent};

const KIND: &str = "PlainVM";
const PRODUCT: &str = "plainvm";
/// The stall reason of a refused firewall create.
pub const FIREWALL_QUOTA: &str = "FirewallQuotaExceeded";

/// One idempotent step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The firewall, with the spec's rules, before anything else.
    CreateFirewall,
    /// The rules differ from the spec (a spec change, or an edit in the console).
    SetRules,
    /// The server, created with the firewall attached.
    CreateServer,
    /// The firewall was detached in the console.
    AttachFirewall,
    Power(PowerStep),
}

/// What the reconciler knows of the world for one PlainVM.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Complete lists of servers and of per-object firewalls have been seen, so absence
    /// means absence.
    pub lists_known: bool,
    pub firewall: Option<Firewall>,
    pub server: Option<ServerSummary>,
    /// When this process asked the guest to shut down.
    pub shutdown_sent: Option<Instant>,
}

/// The decision for one pass.
pub type Plan = lifecycle::Plan<Step>;

/// Whether the server is behind the firewall, as the server list shows it (the answer of our
/// own create shows it too, so a new server never looks detached).
fn attached(server: &ServerSummary, firewall: &Firewall) -> bool {
    server.public_net.firewalls.iter().any(|a| a.id == firewall.id)
}

/// Pure: the steps a PlainVM needs now.
pub fn decide(spec: &PlainVMSpec, observed: &Observed, now: Instant, shutdown_timeout: Duration) -> Plan {
    let mut steps = Vec::new();
    if !observed.lists_known {
        return Plan { steps, wait: Wait::Lists };
    }
    let Some(fw) = &observed.firewall else {
        // First the firewall: no server exists, or is re-created, without it.
        steps.push(Step::CreateFirewall);
        return Plan { steps, wait: Wait::Nothing };
    };
    if !firewall::rules_match(&spec.firewall.inbound, fw) {
        steps.push(Step::SetRules);
    }
    let Some(server) = &observed.server else {
        steps.push(Step::CreateServer);
        return Plan { steps, wait: Wait::Nothing };
    };
    if !attached(server, fw) {
        steps.push(Step::AttachFirewall);
    }
    let power = server::decide_power(spec.running, &server.status, observed.shutdown_sent, now, shutdown_timeout);
    if power != PowerStep::Hold {
        steps.push(Step::Power(power));
    }
    let settled = if spec.running { "running" } else { "off" };
    let wait = if server.status == settled { Wait::Nothing } else { Wait::Server };
    Plan { steps, wait }
}

/// Pure: the `FirewallReady` condition.
fn firewall_ready(spec: &PlainVMSpec, observed: &Observed, stalled: Option<&Stall>) -> Desired {
    let n = spec.firewall.inbound.len();
    match (&observed.firewall, stalled) {
        (None, Some((reason, message))) if *reason == FIREWALL_QUOTA => {
            Desired::new("FirewallReady", false, FIREWALL_QUOTA, message.clone())
        }
        (None, _) => Desired::new("FirewallReady", false, "Provisioning", "The firewall is being created."),
        (Some(fw), _) if !firewall::rules_match(&spec.firewall.inbound, fw) => Desired::new(
            "FirewallReady",
            false,
            "RulesOutOfSync",
            format!("Firewall {} is being set to the spec's {n} inbound rules.", fw.id),
        ),
        (Some(fw), _) if observed.server.as_ref().is_some_and(|s| !attached(s, fw)) => Desired::new(
            "FirewallReady",
            false,
            "Detached",
            format!("Firewall {} is being attached to the server again.", fw.id),
        ),
        (Some(fw), _) if n == 0 => Desired::new(
            "FirewallReady",
            true,
            "InSync",
            format!("Firewall {} has no inbound rule: no inbound traffic reaches the server.", fw.id),
        ),
        (Some(fw), _) => Desired::new(
            "FirewallReady",
            true,
            "InSync",
            format!("Firewall {} lets in exactly the spec's {n} inbound rules, nothing else.", fw.id),
        ),
    }
}

/// Pure: the status that describes what was observed (conditions keep their transition
/// times when unchanged; `stalled` is a permanent error's reason and message).
pub fn desired_status(
    generation: Option<i64>,
    spec: &PlainVMSpec,
    old: &PlainVMStatus,
    observed: &Observed,
    stalled: Option<Stall>,
    now: Timestamp,
) -> PlainVMStatus {
    let server = observed.server.as_ref();
    let effective = server.map(|s| s.status.clone());
    let parts = vec![
        server::server_ready(spec.running, effective.as_deref()),
        firewall_ready(spec, observed, stalled.as_ref()),
    ];
    let ready = parts.iter().all(|c| c.status);
    let ready_message = if spec.running {
        "The PlainVM is running behind its firewall."
    } else {
        "The PlainVM is stopped as requested; its firewall is in place."
    };
    let desired = lifecycle::summary_conditions(ready_message, stalled.as_ref(), parts);
    let phase = lifecycle::phase(
        stalled.is_some(),
        server.is_none() && observed.firewall.is_none(),
        spec.running,
        ready,
        effective.as_deref(),
    );
    PlainVMStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: conditions::merge(&old.conditions, &desired, generation, now),
        server: server.map(|s| server::server_status(s, None)).or_else(|| old.server.clone()),
        firewall: observed
            .firewall
            .as_ref()
            .map(|f| FirewallStatus { id: Some(f.id), rules: Some(i32::try_from(f.rules.len()).unwrap_or(i32::MAX)) })
            .or_else(|| old.firewall.clone()),
        price_cell: Some(intent(spec).billed_price_cell(server)),
    }
}

fn intent(spec: &PlainVMSpec) -> ServerIntent {
    ServerIntent::new(PRODUCT, spec.region, &spec.server_type, &spec.image, spec.running, &spec.owner)
}

fn observe(ctx: &Context, owner: &Owner) -> Observed {
    Observed {
        lists_known: ctx.fleet.servers_known() && ctx.fleet.firewalls_known(),
        firewall: ctx.fleet.firewall(&owner.uid),
        server: ctx.fleet.server(&owner.uid),
        shutdown_sent: ctx.power.shutdown_sent_at(&owner.uid),
    }
}

/// One pass's fixed inputs.
struct PlainVmPass {
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
                let Some(fw) = ctx.fleet.firewall(&owner.uid) else { return Ok(()) };
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
                let Some(fw) = ctx.fleet.firewall(&owner.uid) else { return Ok(()) };
                let user_data = super::cloud_init::plainvm_user_data(&vm.spec.ssh_keys)
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
                let (Some(server), Some(fw)) = (ctx.fleet.server(&owner.uid), ctx.fleet.firewall(&owner.uid)) else {
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
                let Some(server) = ctx.fleet.server(&owner.uid) else { return Ok(()) };
                let observed = server.status.clone();
                let subject = server::PowerSubject { server, observed, billed_owner: Some(vm.spec.owner.clone()) };
                server::power_step(ctx, vm, owner, &intent(&vm.spec), subject, *power).await?
            }
        }
        Ok(())
    }
}

/// The stall of a refused firewall create: the project's firewall limit (50 by default).
fn firewall_stall(error: &ReconcileError) -> Option<Stall> {
    let cloud = error.cloud()?;
    (matches!(cloud, CloudError::Permanent(_)) && cloud.detail().code == "resource_limit_exceeded").then(|| {
        (
            FIREWALL_QUOTA,
            format!(
                "{}; the Hetzner project's firewall limit (50 by default) is reached: ask Hetzner for a higher limit. No server is created without its firewall; retried every resync.",
                cloud.detail()
            ),
        )
    })
}

impl Pass for PlainVmPass {
    type Object = PlainVM;
    type Step = Step;

    fn lists_known(&self, ctx: &Context) -> bool {
        ctx.fleet.servers_known() && ctx.fleet.firewalls_known()
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
        ctx.fleet.server(&self.target.owner.uid).map(|s| s.status)
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

impl ManagedObject for PlainVM {
    lifecycle::managed_kind!(PlainVMStatus, KIND);

    async fn apply(vm: Arc<PlainVM>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
        ctx.fleet.want_firewalls();
        lifecycle::apply(&PlainVmPass { target: Target::of(vm)? }, &ctx).await
    }

    /// Removes the server, then the firewall (or takes our labels off both, for `Orphan`), then
    /// commits the destroy event; the finalizer goes only after that commit.
    async fn cleanup(vm: Arc<PlainVM>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
        let ctx = ctx.as_ref();
        ctx.fleet.want_firewalls();
        let owner = Owner::of(vm.as_ref(), KIND)?;
        // Not `Ok(requeue)`: any `Ok` releases the finalizer, which would leak what the lists
        // have not shown yet.
        if !(ctx.fleet.servers_known() && ctx.fleet.firewalls_known()) {
            return Err(ReconcileError::NotReady("the first complete lists of servers and firewalls"));
        }
        let status = vm.status.clone().unwrap_or_default();
        let policy = vm.spec.deletion_policy;
        let server = ctx.fleet.server(&owner.uid);
        let fw = ctx.fleet.firewall(&owner.uid);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;
    use crate::cloud::{Provider, ProviderError};

    fn spec(running: bool, inbound: serde_json::Value) -> PlainVMSpec {
        serde_json::from_value(json!({"owner": "acct_a", "region": "eu", "running": running,
            "firewall": {"inbound": inbound}}))
        .expect("spec")
    }

    fn ssh() -> serde_json::Value {
        json!([{"protocol": "tcp", "port": "22", "sourceIPs": ["203.0.113.0/24"], "description": "ssh"}])
    }

    fn fw_for(spec: &PlainVMSpec) -> Firewall {
        let rules = firewall::in_force(&firewall::request_rules(&spec.firewall.inbound));
        serde_json::from_value(json!({
            "id": 40, "name": "crabglamp-vm-u", "labels": {}, "created": "2026-01-01T00:00:00Z",
            "applied_to": [], "rules": rules,
        }))
        .expect("firewall")
    }

    fn server(status: &str, firewalls: &[i64]) -> ServerSummary {
        server::summary_for_tests("vm-12345678", status, firewalls)
    }

    fn known() -> Observed {
        Observed { lists_known: true, ..Observed::default() }
    }

    /// The firewall of `spec` in place and the server in `status` behind it.
    fn built(spec: &PlainVMSpec, status: &str) -> Observed {
        Observed { firewall: Some(fw_for(spec)), server: Some(server(status, &[40])), ..known() }
    }

    fn plan(spec: &PlainVMSpec, observed: &Observed) -> Plan {
        decide(spec, observed, Instant::now(), Duration::from_secs(60))
    }

    #[test]
    fn nothing_before_the_first_complete_lists() {
        let s = spec(true, ssh());
        assert_eq!(plan(&s, &Observed::default()), Plan { steps: vec![], wait: Wait::Lists });
        let mut o = Observed { server: Some(server("running", &[])), ..Observed::default() };
        assert_eq!(plan(&s, &o).steps, vec![], "a partial picture decides nothing");
        o.lists_known = true;
        assert_eq!(plan(&s, &o).steps, vec![Step::CreateFirewall]);
    }

    #[test]
    fn the_firewall_comes_first_then_the_server_behind_it() {
        let s = spec(true, ssh());
        assert_eq!(plan(&s, &known()), Plan { steps: vec![Step::CreateFirewall], wait: Wait::Nothing });
        let mut o = known();
        o.firewall = Some(fw_for(&s));
        assert_eq!(plan(&s, &o), Plan { steps: vec![Step::CreateServer], wait: Wait::Nothing });
        o.server = Some(server("initializing", &[40]));
        assert_eq!(plan(&s, &o), Plan { steps: vec![], wait: Wait::Server }, "booting: watch the server list");
        o.server = Some(server("running", &[40]));
        assert_eq!(plan(&s, &o), Plan { steps: vec![], wait: Wait::Nothing });
    }

    #[test]
    fn no_server_while_the_firewall_is_missing_even_after_a_deletion() {
        let s = spec(true, ssh());
        let mut o = known();
        o.server = Some(server("running", &[40]));
        assert_eq!(plan(&s, &o).steps, vec![Step::CreateFirewall], "the firewall vanished: re-created first");
    }

    #[test]
    fn a_rule_change_is_one_set_rules_on_the_same_firewall() {
        let mut o = built(&spec(true, ssh()), "running");
        let new = spec(true, json!([{"protocol": "tcp", "port": "443", "sourceIPs": ["0.0.0.0/0", "::/0"]}]));
        assert_eq!(plan(&new, &o).steps, vec![Step::SetRules]);
        let closed = spec(true, json!([]));
        assert_eq!(plan(&closed, &o).steps, vec![Step::SetRules], "empty inbound: every rule goes");
        o.firewall = Some(fw_for(&closed));
        assert_eq!(plan(&closed, &o).steps, vec![]);
    }

    #[test]
    fn drift_is_repaired() {
        let s = spec(true, ssh());
        let mut o = known();
        o.firewall = Some(fw_for(&s));
        o.server = Some(server("running", &[]));
        assert_eq!(plan(&s, &o).steps, vec![Step::AttachFirewall], "detached in the console");
        o.server = Some(server("running", &[40, 41]));
        assert_eq!(plan(&s, &o).steps, vec![], "another firewall of the owner's is not ours to judge");
        let mut edited = fw_for(&s);
        edited.rules[0].port = Some("1-65535".into());
        o.firewall = Some(edited);
        assert_eq!(plan(&s, &o).steps, vec![Step::SetRules], "a rule widened in the console");
        o.firewall = Some(fw_for(&s));
        o.server = None;
        assert_eq!(plan(&s, &o).steps, vec![Step::CreateServer], "the server deleted in the console");
    }

    #[test]
    fn power_follows_the_spec() {
        let s = spec(false, ssh());
        let mut o = built(&s, "running");
        assert_eq!(plan(&s, &o), Plan { steps: vec![Step::Power(PowerStep::Shutdown)], wait: Wait::Server });
        o.shutdown_sent = Instant::now().checked_sub(Duration::from_secs(61));
        assert_eq!(plan(&s, &o).steps, vec![Step::Power(PowerStep::PowerOff)]);
        o.server = Some(server("off", &[40]));
        assert_eq!(plan(&s, &o), Plan { steps: vec![], wait: Wait::Nothing });
        assert_eq!(
            plan(&spec(true, ssh()), &o),
            Plan { steps: vec![Step::Power(PowerStep::PowerOn)], wait: Wait::Server }
        );
    }

    fn cond<'a>(st: &'a PlainVMStatus, t: &str) -> Option<(&'a str, &'a str)> {
        conditions::find(&st.conditions, t).map(|c| (c.status.as_str(), c.reason.as_str()))
    }

    #[test]
    fn ready_means_running_behind_exactly_the_spec_rules() {
        let now = Timestamp::now();
        let s = spec(true, ssh());
        let mut o = known();
        o.firewall = Some(fw_for(&s));
        o.server = Some(server("running", &[40]));
        let st = desired_status(Some(2), &s, &PlainVMStatus::default(), &o, None, now);
        assert_eq!(cond(&st, "Ready"), Some(("True", "Ready")));
        assert_eq!(cond(&st, "ServerReady"), Some(("True", "Running")));
        assert_eq!(cond(&st, "FirewallReady"), Some(("True", "InSync")));
        assert!(cond(&st, "Reconciling").is_none() && cond(&st, "Stalled").is_none());
        assert_eq!(st.phase, Some(Phase::Running));
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(st.firewall, Some(FirewallStatus { id: Some(40), rules: Some(1) }));
        assert_eq!(st.server.as_ref().and_then(|s| s.id), Some(7));
        assert_eq!(st.price_cell.as_deref(), Some("plainvm-eu-cx23"));
        // The same world described again is the same status: no write.
        assert_eq!(desired_status(Some(2), &s, &st, &o, None, now), st);
        o.server = Some(server("running", &[]));
        let st = desired_status(Some(2), &s, &st, &o, None, now);
        assert_eq!(cond(&st, "FirewallReady"), Some(("False", "Detached")));
        assert_eq!(cond(&st, "Ready"), Some(("False", "Detached")));
        assert_eq!(cond(&st, "Reconciling"), Some(("True", "Progressing")));
    }

    #[test]
    fn the_firewall_limit_stalls_with_advice_and_no_server() {
        let s = spec(true, ssh());
        let err = ReconcileError::Hetzner(CloudError::Permanent(ProviderError {
            provider: Provider::Hetzner,
            operation: "create_firewall",
            status: Some(403),
            code: "resource_limit_exceeded".into(),
            message: "firewall limit exceeded".into(),
        }));
        let stall = firewall_stall(&err).expect("a stall");
        assert_eq!(stall.0, FIREWALL_QUOTA);
        assert!(stall.1.contains("ask Hetzner for a higher limit"), "{}", stall.1);
        assert!(lifecycle::SELF_CLEARING.contains(&FIREWALL_QUOTA), "retried each resync");
        let st = desired_status(Some(1), &s, &PlainVMStatus::default(), &known(), Some(stall), Timestamp::now());
        assert_eq!(cond(&st, "FirewallReady"), Some(("False", FIREWALL_QUOTA)));
        assert_eq!(cond(&st, "Stalled"), Some(("True", FIREWALL_QUOTA)));
        assert_eq!(cond(&st, "Ready"), Some(("False", FIREWALL_QUOTA)));
        assert_eq!(st.phase, Some(Phase::Failed));
        assert!(st.server.is_none());
        let busy = ReconcileError::Hetzner(CloudError::Retryable(ProviderError {
            provider: Provider::Hetzner,
            operation: "create_firewall",
            status: Some(503),
            code: "unavailable".into(),
            message: "later".into(),
        }));
        assert!(firewall_stall(&busy).is_none(), "a retryable error is not a stall");
    }

    #[test]
    fn stopped_is_ready_when_off_behind_its_firewall() {
        let s = spec(false, json!([]));
        let mut o = known();
        o.firewall = Some(fw_for(&s));
        o.server = Some(server("off", &[40]));
        let st = desired_status(Some(3), &s, &PlainVMStatus::default(), &o, None, Timestamp::now());
        assert_eq!(cond(&st, "Ready"), Some(("True", "Ready")));
        assert_eq!(st.phase, Some(Phase::Stopped));
        assert_eq!(st.firewall.and_then(|f| f.rules), Some(0));
        o.server = Some(server("stopping", &[40]));
        let st = desired_status(Some(3), &s, &PlainVMStatus::default(), &o, None, Timestamp::now());
        assert_eq!(st.phase, Some(Phase::Stopping));
        assert_eq!(cond(&st, "ServerReady"), Some(("False", "PowerTransition")));
    }
}
