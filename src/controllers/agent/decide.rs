//! What an Agent needs next and what its status says, from what was observed: pure functions,
//! unit-tested below.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::agent::TunnelStatus;
use crate::api::{Agent, AgentSpec, AgentStatus};
use crate::cloud::cloudflare::DnsRecord;
use crate::cloud::hetzner::ServerSummary;

use crate::controllers::fleet::tunnel::ObservedTunnel;
use crate::controllers::reconcile::conditions::{self, Desired};
use crate::controllers::reconcile::lifecycle::{self, Stall};
use crate::controllers::server::names::{settled_default_hostname, tunnel_target};
use crate::controllers::server::{self, PowerStep, ServerIntent, TimelineTail};

pub use crate::controllers::reconcile::lifecycle::{FINALIZER, PAUSE_ANNOTATION, Wait};

pub(super) const KIND: &str = "Agent";
pub(super) const PRODUCT: &str = "agent";
/// Where the tunnel secret is sealed (with the object's UID as the row identity).
pub(super) const SECRET_SCOPE: &str = "agent-tunnel";
pub(super) const SECRET_NAME: &str = "tunnel-secret";
/// `DnsReady`'s reason while someone else's record holds the hostname.
pub(super) const DNS_NAME_TAKEN: &str = "DnsNameTaken";
/// `TunnelReady`'s reason (and the stall's) while the Cloudflare account holds all it may.
pub const TUNNEL_QUOTA: &str = "TunnelQuotaExceeded";
/// `DnsReady`'s reason (and the stall's) while the zone holds all the records its plan allows.
pub const DNS_QUOTA: &str = "DnsQuotaExceeded";

/// The tail of an Agent's audit trail: its transfers, and the owner the last one moved it to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferTrail {
    pub transfers: usize,
    pub last_to: Option<String>,
}

/// What the reconciler knows of the world for one Agent.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The hostname the Agent is served at (see [`hostname`]).
    pub hostname: String,
    /// The tunnel's name (this installation's, from the Agent's UID).
    pub tunnel_name: String,
    /// A complete server list has been seen (absence means absence).
    pub servers_known: bool,
    pub server: Option<ServerSummary>,
    pub tunnels_known: bool,
    pub tunnel: Option<ObservedTunnel>,
    pub dns_known: bool,
    pub dns: Option<DnsRecord>,
    pub fleet_firewall: Option<i64>,
    /// When this process asked the guest to shut down.
    pub shutdown_sent: Option<Instant>,
    /// The hostname was refused because a record we do not own holds it (this generation).
    pub dns_name_taken: Option<String>,
    /// The audit trail's transfers: ahead of any cached `status.owner` (a transfer's status
    /// write follows its event, and a cache may not have seen that write yet).
    pub trail: TransferTrail,
    /// The usage timeline's tail, read when there is a server.
    pub timeline: Option<TimelineTail>,
}

/// One idempotent step, with the ids it acts on.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// First sight: the spec's owner becomes the recorded one (no transfer).
    AcceptOwner,
    /// The owner changed: the trail's `sequence`th `agent.transferred` event, then
    /// `status.owner` moves. `from` is the trail's last owner (or, before any transfer, the
    /// accepted one).
    RecordTransfer {
        from: String,
        to: String,
        sequence: usize,
    },
    /// The tunnel, under its name, with the secret sealed first. `replaces`: the tunnel id
    /// status recorded, gone from the account.
    CreateTunnel {
        name: String,
        replaces: Option<String>,
    },
    ConfigureTunnel {
        tunnel_id: String,
        hostname: String,
        service: String,
    },
    /// The hostname's record; `replaces`: our record for an earlier hostname, deleted after.
    CreateDns {
        hostname: String,
        tunnel_id: String,
        replaces: Option<String>,
    },
    /// Our record points elsewhere (the tunnel was re-created): point it at the tunnel.
    RepointDns {
        record_id: String,
        hostname: String,
        tunnel_id: String,
    },
    /// The server, behind the fleet firewall, with the tunnel's token in its user data.
    /// `replaces`: the server id status recorded, gone from the project.
    CreateServer {
        tunnel_id: String,
        tunnel_name: String,
        firewall: Option<i64>,
        replaces: Option<i64>,
    },
    AttachFirewall {
        server_id: i64,
        firewall_id: i64,
    },
    /// A power step on the server as observed (`observed`: its status to believe).
    Power {
        step: PowerStep,
        server: Box<ServerSummary>,
        observed: String,
        tunnel_name: String,
    },
}

impl Step {
    /// The step's name, as metrics and logs call it.
    pub fn name(&self) -> &'static str {
        match self {
            Step::AcceptOwner => "accept_owner",
            Step::RecordTransfer { .. } => "record_transfer",
            Step::CreateTunnel { .. } => "create_tunnel",
            Step::ConfigureTunnel { .. } => "configure_tunnel",
            Step::CreateDns { .. } => "create_dns",
            Step::RepointDns { .. } => "repoint_dns",
            Step::CreateServer { .. } => "create_server",
            Step::AttachFirewall { .. } => "attach_firewall",
            Step::Power { step, .. } => step.name(),
        }
    }
}

/// The decision for one pass: the steps to take now, in order, and what to wait for after.
pub type Plan = lifecycle::Plan<Step>;

/// The server status to believe: a connected tunnel proves the machine is up even when the
/// last server list (at most one resync old) still said it was booting.
pub fn effective_server_status(server: &ServerSummary, tunnel: Option<&ObservedTunnel>) -> String {
    let booting = matches!(server.status.as_str(), "initializing" | "starting");
    if booting && tunnel.is_some_and(ObservedTunnel::connected) { "running".to_owned() } else { server.status.clone() }
}

/// Pure: the steps an Agent needs now.
pub fn decide(
    spec: &AgentSpec,
    status: &AgentStatus,
    observed: &Observed,
    now: Instant,
    shutdown_timeout: Duration,
) -> Plan {
    let hostname = observed.hostname.as_str();
    let mut steps = Vec::new();
    match status.owner.as_deref() {
        None => steps.push(Step::AcceptOwner),
        Some(from) if from != spec.owner => steps.push(Step::RecordTransfer {
            from: from.to_owned(),
            to: spec.owner.clone(),
            sequence: observed.trail.transfers + 1,
        }),
        Some(_) => {}
    }
    if !(observed.servers_known && observed.tunnels_known && observed.dns_known) {
        return Plan { steps, wait: Wait::Lists };
    }
    let recorded = status.tunnel.clone().unwrap_or_default();
    let Some(tunnel) = &observed.tunnel else {
        steps.push(Step::CreateTunnel { name: observed.tunnel_name.clone(), replaces: recorded.id.clone() });
        return Plan { steps, wait: Wait::Nothing };
    };
    let configured = recorded.id.as_deref() == Some(tunnel.id.as_str())
        && recorded.hostname.as_deref() == Some(hostname)
        && recorded.service.as_deref() == Some(spec.tunnel.service.as_str());
    if !configured {
        steps.push(Step::ConfigureTunnel {
            tunnel_id: tunnel.id.clone(),
            hostname: hostname.to_owned(),
            service: spec.tunnel.service.clone(),
        });
    }
    match &observed.dns {
        Some(r) if r.name == hostname => {
            if !r.content.eq_ignore_ascii_case(&tunnel_target(&tunnel.id)) {
                let (record_id, tunnel_id) = (r.id.clone(), tunnel.id.clone());
                steps.push(Step::RepointDns { record_id, hostname: hostname.to_owned(), tunnel_id });
            }
        }
        // Refused this resync (a foreign record holds the name), whether or not our record for
        // an earlier hostname is still there: asked again only after the refusal expires.
        _ if observed.dns_name_taken.as_deref() == Some(hostname) => {}
        earlier => steps.push(Step::CreateDns {
            hostname: hostname.to_owned(),
            tunnel_id: tunnel.id.clone(),
            replaces: earlier.as_ref().map(|r| r.id.clone()),
        }),
    }
    let Some(server) = &observed.server else {
        steps.push(Step::CreateServer {
            tunnel_id: tunnel.id.clone(),
            tunnel_name: tunnel.name.clone(),
            firewall: observed.fleet_firewall,
            replaces: status.server.as_ref().and_then(|s| s.id),
        });
        return Plan { steps, wait: Wait::Nothing };
    };
    if let Some(fw) = observed.fleet_firewall
        && !server.public_net.firewalls.iter().any(|a| a.id == fw)
    {
        steps.push(Step::AttachFirewall { server_id: server.id, firewall_id: fw });
    }
    let effective = effective_server_status(server, Some(tunnel));
    let power = server::decide_power(spec.running, &effective, observed.shutdown_sent, now, shutdown_timeout);
    if power != PowerStep::Hold {
        steps.push(Step::Power {
            step: power,
            server: Box::new(server.clone()),
            observed: effective.clone(),
            tunnel_name: tunnel.name.clone(),
        });
    }
    let wait = if spec.running {
        match effective.as_str() {
            // Booting: the tunnel connecting is the proof it is up, and one tunnel list serves
            // every waiting Agent, so no server list is spent on it.
            "running" | "initializing" | "starting" if !tunnel.connected() => Wait::Tunnel,
            "running" => Wait::Nothing,
            _ => Wait::Server,
        }
    } else if effective != "off" {
        Wait::Server
    } else {
        Wait::Nothing
    };
    Plan { steps, wait }
}

/// Pure: the status that describes what was observed (conditions keep their transition
/// times when unchanged; `stalled` is a permanent error's reason and message).
pub fn desired_status(
    agent_generation: Option<i64>,
    spec: &AgentSpec,
    old: &AgentStatus,
    observed: &Observed,
    stalled: Option<Stall>,
    now: Timestamp,
) -> AgentStatus {
    let hostname = observed.hostname.as_str();
    let server = observed.server.as_ref();
    let tunnel = observed.tunnel.as_ref();
    let effective = server.map(|s| effective_server_status(s, tunnel));
    let server_ready = server::server_ready(spec.running, effective.as_deref());
    let tunnel_ready = match tunnel {
        Some(t) if t.connected() => {
            Desired::new("TunnelReady", true, "Connected", "cloudflared is connected to the tunnel.")
        }
        Some(_) if !spec.running => {
            Desired::new("TunnelReady", false, "ServerStopped", "The tunnel has no connector while the server is off.")
        }
        Some(_) => Desired::new(
            "TunnelReady",
            false,
            "WaitingForConnector",
            "The tunnel exists; waiting for cloudflared on the server to connect.",
        ),
        None => match &stalled {
            Some((reason, message)) if *reason == TUNNEL_QUOTA => {
                Desired::new("TunnelReady", false, TUNNEL_QUOTA, message.clone())
            }
            _ => Desired::new("TunnelReady", false, "Provisioning", "The tunnel is being created."),
        },
    };
    let dns_ready = match (&observed.dns, &observed.dns_name_taken) {
        (Some(r), _) if r.name == hostname => {
            Desired::new("DnsReady", true, "RecordInPlace", format!("{hostname} points at the tunnel."))
        }
        (_, Some(taken)) if taken == hostname => Desired::new(
            "DnsReady",
            false,
            DNS_NAME_TAKEN,
            format!(
                "{hostname} is held by a DNS record this operator does not own; remove it or choose another spec.tunnel.hostname."
            ),
        ),
        _ => match &stalled {
            Some((reason, message)) if *reason == DNS_QUOTA => {
                Desired::new("DnsReady", false, DNS_QUOTA, message.clone())
            }
            _ => Desired::new(
                "DnsReady",
                false,
                "Provisioning",
                format!("The DNS record for {hostname} is being created."),
            ),
        },
    };
    // A stopped Agent needs no connector (nor, for Ready, its DNS record).
    let parts =
        if spec.running { vec![server_ready, tunnel_ready.clone(), dns_ready.clone()] } else { vec![server_ready] };
    let ready = parts.iter().all(|c| c.status);
    let ready_message = if spec.running {
        "The Agent is running and reachable through its tunnel."
    } else {
        "The Agent is stopped as requested."
    };
    let mut desired = lifecycle::summary_conditions(ready_message, stalled.as_ref(), parts);
    if !spec.running {
        // Still described, just not required.
        desired.insert(2, tunnel_ready);
        desired.insert(3, dns_ready);
    }
    let phase = lifecycle::phase(
        stalled.is_some(),
        server.is_none() && tunnel.is_none(),
        spec.running,
        ready,
        effective.as_deref(),
    );
    AgentStatus {
        observed_generation: agent_generation,
        phase: Some(phase),
        conditions: conditions::merge(&old.conditions, &desired, agent_generation, now),
        server: server.map(|s| server::server_status(s, effective.as_deref())).or_else(|| old.server.clone()),
        tunnel: Some(TunnelStatus {
            id: tunnel.map(|t| t.id.clone()),
            hostname: Some(hostname.to_owned()),
            dns_record_id: observed.dns.as_ref().filter(|r| r.name == hostname).map(|r| r.id.clone()),
            service: old.tunnel.as_ref().and_then(|t| t.service.clone()),
        }),
        owner: old.owner.clone(),
        price_cell: Some(intent(spec).billed_price_cell(server)),
    }
}

pub(super) fn intent(spec: &AgentSpec) -> ServerIntent {
    ServerIntent::new(PRODUCT, spec.region, &spec.server_type, &spec.image, spec.running, &spec.owner)
}

/// The hostname the Agent is served at: the spec's, else the default one (an Agent already
/// published at the earlier scheme's default stays there, unless someone else's record holds
/// that name: then it moves to its own).
pub fn hostname(agent: &Agent, zone: &str) -> String {
    if let Some(hostname) = &agent.spec.tunnel.hostname {
        return hostname.clone();
    }
    let status = agent.status.as_ref();
    let refused =
        status.and_then(|s| conditions::find(&s.conditions, "DnsReady")).is_some_and(|c| c.reason == DNS_NAME_TAKEN);
    let published = status.and_then(|s| s.tunnel.as_ref()).and_then(|t| t.hostname.as_deref()).filter(|_| !refused);
    settled_default_hostname(&agent.name_any(), &agent.namespace().unwrap_or_default(), zone, published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Phase, Region};
    use serde_json::json;

    const HOST: &str = "bot-team-a.agents.example.com";

    fn spec(running: bool) -> AgentSpec {
        serde_json::from_value(json!({"owner": "acct_a", "region": "eu", "running": running})).expect("spec")
    }

    fn server(status: &str, firewalls: &[i64]) -> ServerSummary {
        server::summary_for_tests("bot-12345678", status, firewalls)
    }

    fn tunnel(connections: usize) -> ObservedTunnel {
        ObservedTunnel {
            id: "t1".into(),
            name: "crabglamp-u".into(),
            status: if connections > 0 { "healthy" } else { "inactive" }.into(),
            connections,
        }
    }

    fn dns(name: &str, target: &str) -> DnsRecord {
        DnsRecord {
            id: "r1".into(),
            kind: "CNAME".into(),
            name: name.into(),
            content: target.into(),
            proxied: true,
            ttl: 1,
            comment: None,
            tags: Vec::new(),
        }
    }

    fn known() -> Observed {
        Observed {
            servers_known: true,
            tunnels_known: true,
            dns_known: true,
            fleet_firewall: Some(99),
            hostname: HOST.into(),
            tunnel_name: "crabglamp-u".into(),
            ..Observed::default()
        }
    }

    fn configured(owner: &str) -> AgentStatus {
        AgentStatus {
            owner: Some(owner.into()),
            tunnel: Some(TunnelStatus {
                id: Some("t1".into()),
                hostname: Some(HOST.into()),
                dns_record_id: Some("r1".into()),
                service: Some("http://localhost:8080".into()),
            }),
            ..AgentStatus::default()
        }
    }

    fn names(plan: &Plan) -> Vec<&'static str> {
        plan.steps.iter().map(Step::name).collect()
    }

    fn plan(spec: &AgentSpec, status: &AgentStatus, observed: &Observed) -> Plan {
        decide(spec, status, observed, Instant::now(), Duration::from_secs(60))
    }

    #[test]
    fn nothing_happens_before_the_first_complete_lists() {
        let p = plan(&spec(true), &configured("acct_a"), &Observed::default());
        assert_eq!(p, Plan { steps: vec![], wait: Wait::Lists });
    }

    #[test]
    fn a_new_agent_gets_its_tunnel_first_then_config_dns_and_server() {
        let s = spec(true);
        let p = plan(&s, &AgentStatus::default(), &known());
        assert_eq!(names(&p), ["accept_owner", "create_tunnel"]);
        assert_eq!(p.steps[1], Step::CreateTunnel { name: "crabglamp-u".into(), replaces: None });
        let mut o = known();
        o.tunnel = Some(tunnel(0));
        let p = plan(&s, &AgentStatus { owner: Some("acct_a".into()), ..AgentStatus::default() }, &o);
        assert_eq!(names(&p), ["configure_tunnel", "create_dns", "create_server"]);
        let server = Step::CreateServer {
            tunnel_id: "t1".into(),
            tunnel_name: "crabglamp-u".into(),
            firewall: Some(99),
            replaces: None,
        };
        assert_eq!(p.steps[2], server, "the steps carry the ids they act on");
    }

    #[test]
    fn a_booting_server_waits_on_the_tunnel_list_not_the_server_list() {
        let mut o = known();
        o.tunnel = Some(tunnel(0));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        for status in ["initializing", "starting", "running"] {
            o.server = Some(server(status, &[99]));
            let p = plan(&spec(true), &configured("acct_a"), &o);
            assert_eq!(p, Plan { steps: vec![], wait: Wait::Tunnel }, "{status}");
        }
        o.tunnel = Some(tunnel(1));
        o.server = Some(server("initializing", &[99]));
        assert_eq!(
            plan(&spec(true), &configured("acct_a"), &o).wait,
            Wait::Nothing,
            "a connected tunnel proves it is up"
        );
    }

    #[test]
    fn power_follows_the_spec_and_waits_on_the_server_list() {
        let mut o = known();
        o.tunnel = Some(tunnel(1));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        o.server = Some(server("running", &[99]));
        let p = plan(&spec(false), &configured("acct_a"), &o);
        assert_eq!((names(&p), p.wait), (vec!["shutdown"], Wait::Server));
        o.shutdown_sent = Instant::now().checked_sub(Duration::from_secs(61));
        assert_eq!(names(&plan(&spec(false), &configured("acct_a"), &o)), ["power_off"]);
        o.server = Some(server("off", &[99]));
        assert_eq!(plan(&spec(false), &configured("acct_a"), &o), Plan { steps: vec![], wait: Wait::Nothing });
        o.tunnel = Some(tunnel(0));
        let p = plan(&spec(true), &configured("acct_a"), &o);
        assert_eq!((names(&p), p.wait), (vec!["power_on"], Wait::Server));
    }

    #[test]
    fn drift_is_repaired() {
        let mut o = known();
        o.tunnel = Some(tunnel(1));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        o.server = Some(server("running", &[]));
        assert_eq!(names(&plan(&spec(true), &configured("acct_a"), &o)), ["attach_firewall"], "firewall detached");
        o.server = None;
        assert_eq!(names(&plan(&spec(true), &configured("acct_a"), &o)), ["create_server"], "server deleted");
        o.server = Some(server("running", &[99]));
        o.dns = Some(dns(HOST, "old.cfargotunnel.com"));
        assert_eq!(names(&plan(&spec(true), &configured("acct_a"), &o)), ["repoint_dns"]);
        o.dns = None;
        o.dns_name_taken = Some(HOST.into());
        assert!(plan(&spec(true), &configured("acct_a"), &o).steps.is_empty(), "a foreign record is left alone");
        o.dns_name_taken = None;
        assert_eq!(names(&plan(&spec(true), &configured("acct_a"), &o)), ["create_dns"]);
    }

    #[test]
    fn a_new_hostname_held_by_a_foreign_record_leaves_the_other_steps_to_run() {
        // Our record still has the old name; the new one was refused this resync.
        let mut o = known();
        o.tunnel = Some(tunnel(0));
        o.dns = Some(dns("old.agents.example.com", "t1.cfargotunnel.com"));
        o.dns_name_taken = Some(HOST.into());
        assert_eq!(names(&plan(&spec(true), &configured("acct_a"), &o)), ["create_server"]);
        o.server = Some(server("off", &[]));
        assert_eq!(names(&plan(&spec(true), &configured("acct_a"), &o)), ["attach_firewall", "power_on"]);
        // The refusal expired: asked again.
        o.dns_name_taken = None;
        let p = plan(&spec(true), &configured("acct_a"), &o);
        let create = Step::CreateDns { hostname: HOST.into(), tunnel_id: "t1".into(), replaces: Some("r1".into()) };
        assert_eq!(p.steps[0], create, "our record for the old name goes after");
    }

    #[test]
    fn a_hostname_published_under_the_earlier_default_stays_unless_someone_else_holds_it() {
        let mut agent: Agent = serde_json::from_value(json!({
            "apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent",
            "metadata": {"name": "a", "namespace": "b-c"},
            "spec": {"owner": "acct_a", "region": "eu"}
        }))
        .expect("agent");
        assert_eq!(hostname(&agent, "z.io"), "a--b-c.z.io", "a new Agent");
        let mut status = AgentStatus {
            tunnel: Some(TunnelStatus { hostname: Some("a-b-c.z.io".into()), ..TunnelStatus::default() }),
            ..AgentStatus::default()
        };
        agent.status = Some(status.clone());
        assert_eq!(hostname(&agent, "z.io"), "a-b-c.z.io", "published before the upgrade");
        status.conditions = conditions::merge(
            &[],
            &[Desired::new("DnsReady", false, DNS_NAME_TAKEN, "held")],
            Some(1),
            Timestamp::now(),
        );
        agent.status = Some(status);
        assert_eq!(hostname(&agent, "z.io"), "a--b-c.z.io", "someone else holds the old name");
        agent.spec.tunnel.hostname = Some("mine.z.io".into());
        assert_eq!(hostname(&agent, "z.io"), "mine.z.io");
    }

    #[test]
    fn an_owner_change_is_one_transfer() {
        let mut s = spec(true);
        s.owner = "acct_b".into();
        let p = plan(&s, &configured("acct_a"), &known());
        let first = Step::RecordTransfer { from: "acct_a".into(), to: "acct_b".into(), sequence: 1 };
        assert_eq!(p.steps.first(), Some(&first));
        let mut o = known();
        o.trail = TransferTrail { transfers: 2, last_to: Some("acct_a".into()) };
        let p = plan(&s, &configured("acct_a"), &o);
        assert!(matches!(p.steps.first(), Some(Step::RecordTransfer { sequence: 3, .. })), "the trail's next");
        let p = plan(&s, &configured("acct_b"), &known());
        assert!(!p.steps.iter().any(|s| matches!(s, Step::RecordTransfer { .. })));
    }

    #[test]
    fn ready_means_the_world_matches_the_spec() {
        let now = Timestamp::now();
        let mut o = known();
        o.tunnel = Some(tunnel(1));
        o.dns = Some(dns(HOST, "t1.cfargotunnel.com"));
        o.server = Some(server("running", &[99]));
        let st = desired_status(Some(1), &spec(true), &configured("acct_a"), &o, None, now);
        let ready = conditions::find(&st.conditions, "Ready").map(|c| c.status.clone());
        assert_eq!(ready.as_deref(), Some("True"));
        assert_eq!(st.phase, Some(Phase::Running));
        assert_eq!(st.price_cell.as_deref(), Some("agent-eu-cpx22"));
        assert!(conditions::find(&st.conditions, "Reconciling").is_none());
        // The same world described again is the same status: no write.
        assert_eq!(desired_status(Some(1), &spec(true), &st, &o, None, now), st);
        o.tunnel = Some(tunnel(0));
        let st = desired_status(Some(1), &spec(true), &st, &o, None, now);
        assert_eq!(conditions::find(&st.conditions, "Ready").map(|c| c.reason.as_str()), Some("WaitingForConnector"));
        let stalled =
            desired_status(Some(1), &spec(true), &st, &o, Some(("QuotaExceeded", "no more servers".into())), now);
        assert_eq!(stalled.phase, Some(Phase::Failed));
        assert_eq!(conditions::find(&stalled.conditions, "Stalled").map(|c| c.status.as_str()), Some("True"));
        let _ = Region::Eu;
    }
}
