//! What a PlainVM needs next and what its status says, from what was observed: pure functions,
//! unit-tested below.

use std::time::{Duration, Instant};

use hcloud::models::Firewall;
use k8s_openapi::jiff::Timestamp;

use crate::api::plain_vm::FirewallStatus;
use crate::api::{PlainVMSpec, PlainVMStatus};
use crate::cloud::CloudError;
use crate::cloud::hetzner::ServerSummary;
use crate::controllers::reconcile::error::ReconcileError;

use super::firewall;
use crate::controllers::reconcile::conditions::{self, Desired};
use crate::controllers::reconcile::lifecycle::{self, Stall, Wait};
use crate::controllers::server::{self, PowerStep, ServerIntent, TimelineTail};

pub(super) const KIND: &str = "PlainVM";
pub(super) const PRODUCT: &str = "plainvm";
/// The stall reason of a refused firewall create.
pub const FIREWALL_QUOTA: &str = "FirewallQuotaExceeded";

/// One idempotent step, with the ids it acts on.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The firewall, with the spec's rules, before anything else. `replaces`: the firewall id
    /// status recorded, gone from the project.
    CreateFirewall {
        replaces: Option<i64>,
    },
    /// The rules differ from the spec (a spec change, or an edit in the console).
    SetRules {
        firewall: Box<Firewall>,
    },
    /// The server, created with the firewall attached. `replaces`: the server id status
    /// recorded, gone from the project.
    CreateServer {
        firewall_id: i64,
        replaces: Option<i64>,
    },
    /// The firewall was detached in the console.
    AttachFirewall {
        firewall: Box<Firewall>,
        server_id: i64,
    },
    Power {
        step: PowerStep,
        server: Box<ServerSummary>,
    },
}

impl Step {
    /// The step's name, as metrics and logs call it.
    pub fn name(&self) -> &'static str {
        match self {
            Step::CreateFirewall { .. } => "create_firewall",
            Step::SetRules { .. } => "set_firewall_rules",
            Step::CreateServer { .. } => "create_server",
            Step::AttachFirewall { .. } => "attach_firewall",
            Step::Power { step, .. } => step.name(),
        }
    }
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
    /// The usage timeline's tail, read when there is a server.
    pub timeline: Option<TimelineTail>,
}

/// The decision for one pass.
pub type Plan = lifecycle::Plan<Step>;

/// Whether the server is behind the firewall, as the server list shows it (the answer of our
/// own create shows it too, so a new server never looks detached).
pub(super) fn attached(server: &ServerSummary, firewall: &Firewall) -> bool {
    server.public_net.firewalls.iter().any(|a| a.id == firewall.id)
}

/// Pure: the steps a PlainVM needs now.
pub fn decide(
    spec: &PlainVMSpec,
    status: &PlainVMStatus,
    observed: &Observed,
    now: Instant,
    shutdown_timeout: Duration,
) -> Plan {
    let mut steps = Vec::new();
    if !observed.lists_known {
        return Plan { steps, wait: Wait::Lists };
    }
    let Some(fw) = &observed.firewall else {
        // First the firewall: no server exists, or is re-created, without it.
        steps.push(Step::CreateFirewall { replaces: status.firewall.as_ref().and_then(|f| f.id) });
        return Plan { steps, wait: Wait::Nothing };
    };
    if !firewall::rules_match(&spec.firewall.inbound, fw) {
        steps.push(Step::SetRules { firewall: Box::new(fw.clone()) });
    }
    let Some(server) = &observed.server else {
        let replaces = status.server.as_ref().and_then(|s| s.id);
        steps.push(Step::CreateServer { firewall_id: fw.id, replaces });
        return Plan { steps, wait: Wait::Nothing };
    };
    if !attached(server, fw) {
        steps.push(Step::AttachFirewall { firewall: Box::new(fw.clone()), server_id: server.id });
    }
    let power = server::decide_power(spec.running, &server.status, observed.shutdown_sent, now, shutdown_timeout);
    if power != PowerStep::Hold {
        steps.push(Step::Power { step: power, server: Box::new(server.clone()) });
    }
    let settled = if spec.running { "running" } else { "off" };
    let wait = if server.status == settled { Wait::Nothing } else { Wait::Server };
    Plan { steps, wait }
}

/// Pure: the `FirewallReady` condition.
pub(super) fn firewall_ready(spec: &PlainVMSpec, observed: &Observed, stalled: Option<&Stall>) -> Desired {
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

pub(super) fn intent(spec: &PlainVMSpec) -> ServerIntent {
    ServerIntent::new(PRODUCT, spec.region, &spec.server_type, &spec.image, spec.running, &spec.owner)
}

/// The stall of a refused firewall create: the project's firewall limit (50 by default).
pub(super) fn firewall_stall(error: &ReconcileError) -> Option<Stall> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;
    use crate::cloud::{Provider, ProviderError};
    use serde_json::json;

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

    /// The plan, its steps by name.
    fn plan(spec: &PlainVMSpec, observed: &Observed) -> lifecycle::Plan<&'static str> {
        let plan = decide(spec, &PlainVMStatus::default(), observed, Instant::now(), Duration::from_secs(60));
        lifecycle::Plan { steps: plan.steps.iter().map(Step::name).collect(), wait: plan.wait }
    }

    #[test]
    fn the_steps_carry_the_ids_they_act_on() {
        let s = spec(true, ssh());
        let o = Observed { firewall: Some(fw_for(&s)), ..known() };
        let status = PlainVMStatus {
            server: Some(crate::api::shared::ServerStatus { id: Some(7), ..Default::default() }),
            ..PlainVMStatus::default()
        };
        let p = decide(&s, &status, &o, Instant::now(), Duration::from_secs(60));
        assert_eq!(p.steps, vec![Step::CreateServer { firewall_id: 40, replaces: Some(7) }]);
    }

    #[test]
    fn nothing_before_the_first_complete_lists() {
        let s = spec(true, ssh());
        assert_eq!(plan(&s, &Observed::default()), lifecycle::Plan { steps: vec![], wait: Wait::Lists });
        let mut o = Observed { server: Some(server("running", &[])), ..Observed::default() };
        assert!(plan(&s, &o).steps.is_empty(), "a partial picture decides nothing");
        o.lists_known = true;
        assert_eq!(plan(&s, &o).steps, vec!["create_firewall"]);
    }

    #[test]
    fn the_firewall_comes_first_then_the_server_behind_it() {
        let s = spec(true, ssh());
        assert_eq!(plan(&s, &known()), lifecycle::Plan { steps: vec!["create_firewall"], wait: Wait::Nothing });
        let mut o = known();
        o.firewall = Some(fw_for(&s));
        assert_eq!(plan(&s, &o), lifecycle::Plan { steps: vec!["create_server"], wait: Wait::Nothing });
        o.server = Some(server("initializing", &[40]));
        assert_eq!(
            plan(&s, &o),
            lifecycle::Plan { steps: vec![], wait: Wait::Server },
            "booting: watch the server list"
        );
        o.server = Some(server("running", &[40]));
        assert_eq!(plan(&s, &o), lifecycle::Plan { steps: vec![], wait: Wait::Nothing });
    }

    #[test]
    fn no_server_while_the_firewall_is_missing_even_after_a_deletion() {
        let s = spec(true, ssh());
        let mut o = known();
        o.server = Some(server("running", &[40]));
        assert_eq!(plan(&s, &o).steps, vec!["create_firewall"], "the firewall vanished: re-created first");
    }

    #[test]
    fn a_rule_change_is_one_set_rules_on_the_same_firewall() {
        let mut o = built(&spec(true, ssh()), "running");
        let new = spec(true, json!([{"protocol": "tcp", "port": "443", "sourceIPs": ["0.0.0.0/0", "::/0"]}]));
        assert_eq!(plan(&new, &o).steps, vec!["set_firewall_rules"]);
        let closed = spec(true, json!([]));
        assert_eq!(plan(&closed, &o).steps, vec!["set_firewall_rules"], "empty inbound: every rule goes");
        o.firewall = Some(fw_for(&closed));
        assert!(plan(&closed, &o).steps.is_empty());
    }

    #[test]
    fn drift_is_repaired() {
        let s = spec(true, ssh());
        let mut o = known();
        o.firewall = Some(fw_for(&s));
        o.server = Some(server("running", &[]));
        assert_eq!(plan(&s, &o).steps, vec!["attach_firewall"], "detached in the console");
        o.server = Some(server("running", &[40, 41]));
        assert!(plan(&s, &o).steps.is_empty(), "another firewall of the owner's is not ours to judge");
        let mut edited = fw_for(&s);
        edited.rules[0].port = Some("1-65535".into());
        o.firewall = Some(edited);
        assert_eq!(plan(&s, &o).steps, vec!["set_firewall_rules"], "a rule widened in the console");
        o.firewall = Some(fw_for(&s));
        o.server = None;
        assert_eq!(plan(&s, &o).steps, vec!["create_server"], "the server deleted in the console");
    }

    #[test]
    fn power_follows_the_spec() {
        let s = spec(false, ssh());
        let mut o = built(&s, "running");
        assert_eq!(plan(&s, &o), lifecycle::Plan { steps: vec!["shutdown"], wait: Wait::Server });
        o.shutdown_sent = Instant::now().checked_sub(Duration::from_secs(61));
        assert_eq!(plan(&s, &o).steps, vec!["power_off"]);
        o.server = Some(server("off", &[40]));
        assert_eq!(plan(&s, &o), lifecycle::Plan { steps: vec![], wait: Wait::Nothing });
        assert_eq!(plan(&spec(true, ssh()), &o), lifecycle::Plan { steps: vec!["power_on"], wait: Wait::Server });
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
