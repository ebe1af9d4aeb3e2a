//! The per-object Hetzner Cloud Firewall a PlainVM's server lives behind: its name and labels
//! (from the owner's UID, like the server's), the rules a spec asks for, the comparison with
//! what Hetzner shows (drift), and the idempotent firewall steps (create, set rules, attach,
//! delete, unmark), each recorded in the fleet view at once.
//!
//! It never reads one firewall from the API (the shared paged list does that for all), and it
//! never touches the fleet firewall of the Agents (that is the refresher's).

use std::collections::BTreeMap;

use hcloud::models::{self, Firewall, Rule, RuleResponse};

use crate::api::plain_vm::{FirewallRule, Protocol};
use crate::cloud::CloudError;

use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::server::{Owner, marked_for, without_our_labels};

/// `crabglamp-vm-<uid>`: unique per object, stable across retries, within Hetzner's 63
/// characters (a UID is 36) and made only of characters a firewall name allows.
pub fn firewall_name(uid: &str) -> String {
    let clean: String = uid.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    format!("crabglamp-vm-{}", clean.to_ascii_lowercase())
}

/// One inbound rule in a form that compares equal when Hetzner would treat it the same:
/// the order of rules and of source networks does not matter, `any` is a port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NormalRule {
    pub protocol: &'static str,
    pub port: Option<String>,
    pub source_ips: Vec<String>,
    pub description: Option<String>,
}

fn protocol_name(p: models::rule_response::Protocol) -> &'static str {
    use models::rule_response::Protocol as P;
    match p {
        P::Tcp => "tcp",
        P::Udp => "udp",
        P::Icmp => "icmp",
        P::Esp => "esp",
        P::Gre => "gre",
    }
}

fn hetzner_protocol(p: Protocol) -> models::rule::Protocol {
    use models::rule::Protocol as P;
    match p {
        Protocol::Tcp => P::Tcp,
        Protocol::Udp => P::Udp,
        Protocol::Icmp => P::Icmp,
        Protocol::Esp => P::Esp,
        Protocol::Gre => P::Gre,
    }
}

fn sorted(mut ips: Vec<String>) -> Vec<String> {
    for ip in &mut ips {
        *ip = ip.to_ascii_lowercase();
    }
    ips.sort();
    ips.dedup();
    ips
}

fn with_port(protocol: Protocol, port: Option<&str>) -> Option<String> {
    // Admission refuses a port on icmp/esp/gre; dropping one here keeps the request valid anyway.
    matches!(protocol, Protocol::Tcp | Protocol::Udp).then(|| port.unwrap_or("any").to_owned())
}

/// Pure: the spec's rules, normalised and sorted.
pub fn desired_rules(spec: &[FirewallRule]) -> Vec<NormalRule> {
    let mut rules: Vec<NormalRule> = spec
        .iter()
        .map(|r| NormalRule {
            protocol: r.protocol.as_str(),
            port: with_port(r.protocol, r.port.as_deref()),
            source_ips: sorted(r.source_ips.clone()),
            description: r.description.clone().filter(|d| !d.is_empty()),
        })
        .collect();
    rules.sort();
    rules
}

/// Pure: the inbound rules a firewall has in force, normalised and sorted (outbound rules are
/// not ours to judge; the spec has none).
pub fn observed_rules(firewall: &Firewall) -> Vec<NormalRule> {
    let mut rules: Vec<NormalRule> = firewall
        .rules
        .iter()
        .filter(|r| r.direction == models::rule_response::Direction::In)
        .map(|r: &RuleResponse| NormalRule {
            protocol: protocol_name(r.protocol),
            port: r.port.clone(),
            source_ips: sorted(r.source_ips.clone()),
            description: r.description.clone().flatten().filter(|d| !d.is_empty()),
        })
        .collect();
    rules.sort();
    rules
}

/// Whether the firewall lets in exactly what the spec asks (and, having only inbound rules
/// of ours, nothing else).
pub fn rules_match(spec: &[FirewallRule], firewall: &Firewall) -> bool {
    observed_rules(firewall) == desired_rules(spec) && firewall.rules.len() == spec.len()
}

/// The request body's rules for `spec` (empty: no inbound traffic at all).
pub fn request_rules(spec: &[FirewallRule]) -> Vec<Rule> {
    spec.iter()
        .map(|r| Rule {
            description: r.description.clone().filter(|d| !d.is_empty()).map(Some),
            destination_ips: None,
            direction: models::rule::Direction::In,
            port: with_port(r.protocol, r.port.as_deref()).map(Some),
            protocol: hetzner_protocol(r.protocol),
            source_ips: Some(r.source_ips.clone()),
        })
        .collect()
}

/// Pure: the rules a firewall shows once `rules` are set (what the fleet view records after our
/// own `set_rules`, so the next pass does not set them again).
pub fn in_force(rules: &[Rule]) -> Vec<RuleResponse> {
    rules
        .iter()
        .map(|r| RuleResponse {
            description: r.description.clone(),
            destination_ips: Vec::new(),
            direction: models::rule_response::Direction::In,
            port: r.port.clone().flatten(),
            protocol: match r.protocol {
                models::rule::Protocol::Tcp => models::rule_response::Protocol::Tcp,
                models::rule::Protocol::Udp => models::rule_response::Protocol::Udp,
                models::rule::Protocol::Icmp => models::rule_response::Protocol::Icmp,
                models::rule::Protocol::Esp => models::rule_response::Protocol::Esp,
                models::rule::Protocol::Gre => models::rule_response::Protocol::Gre,
            },
            source_ips: r.source_ips.clone().unwrap_or_default(),
        })
        .collect()
}

/// Whether the firewall reaches server `server_id` directly (as our create and attach do).
pub fn applied_to(firewall: &Firewall, server_id: i64) -> bool {
    firewall.applied_to.iter().any(|a| a.server.as_ref().is_some_and(|s| s.id == server_id))
}

/// Creates (or adopts, after a lost answer or a crash) the object's firewall with the spec's
/// rules, applied to nothing yet: the server is created with it.
pub async fn create_firewall(
    ctx: &Context,
    owner: &Owner,
    labels: &BTreeMap<String, String>,
    spec: &[FirewallRule],
) -> Result<(Firewall, bool), ReconcileError> {
    let created = ctx
        .clients
        .hetzner
        .create_firewall(&firewall_name(&owner.uid), labels, &request_rules(spec), &[])
        .await
        .map_err(ReconcileError::Hetzner)?;
    ctx.shared.fleet.record_firewall(&owner.uid, created.firewall.clone());
    ctx.telemetry.metrics.count_step(owner.kind, "create_firewall");
    Ok((created.firewall, created.adopted))
}

/// A 404 on our firewall means it was deleted outside (the firewall list, which would show
/// it, runs only once per audit period): forgotten at once, so the next pass creates it again
/// (or adopts it by name, should the 404 have been about something else).
fn gone_if_not_found(ctx: &Context, owner: &Owner, error: CloudError) -> ReconcileError {
    if matches!(error, CloudError::NotFound(_)) {
        ctx.shared.fleet.forget_firewall(&owner.uid);
    }
    ReconcileError::Hetzner(error)
}

/// Replaces the firewall's rules with the spec's (one request, the same firewall).
pub async fn set_rules(
    ctx: &Context,
    owner: &Owner,
    firewall: &Firewall,
    spec: &[FirewallRule],
) -> Result<(), ReconcileError> {
    let rules = request_rules(spec);
    ctx.clients.hetzner.set_firewall_rules(firewall.id, &rules).await.map_err(|e| gone_if_not_found(ctx, owner, e))?;
    let mut seen = firewall.clone();
    seen.rules = in_force(&rules);
    ctx.shared.fleet.record_firewall(&owner.uid, seen);
    ctx.telemetry.metrics.count_step(owner.kind, "set_firewall_rules");
    Ok(())
}

/// Applies the firewall to the server again (detached in the console).
pub async fn attach(ctx: &Context, owner: &Owner, firewall: &Firewall, server_id: i64) -> Result<(), ReconcileError> {
    ctx.clients.hetzner.apply_firewall(firewall.id, server_id).await.map_err(|e| gone_if_not_found(ctx, owner, e))?;
    let mut seen = firewall.clone();
    let mut target = models::FirewallResourceId::new(models::firewall_resource_id::Type::Server);
    target.server = Some(Box::new(models::ResourceId::new(server_id)));
    seen.applied_to.push(target);
    ctx.shared.fleet.record_firewall(&owner.uid, seen);
    ctx.shared.fleet.record_attachment(&owner.uid, firewall.id);
    ctx.telemetry.metrics.count_step(owner.kind, "attach_firewall");
    Ok(())
}

/// Deletes the firewall after its server. Gone already counts as done; one Hetzner still
/// shows as applied (the server's delete is under way) is an error, so the finalizer stays
/// and the delete is retried: the firewall is never orphaned.
pub async fn delete(ctx: &Context, owner: &Owner, id: i64) -> Result<(), ReconcileError> {
    ctx.clients.hetzner.delete_firewall(id).await.map_err(ReconcileError::Hetzner)?;
    ctx.shared.fleet.forget_firewall(&owner.uid);
    ctx.telemetry.metrics.count_step(owner.kind, "delete_firewall");
    Ok(())
}

/// Takes our labels off the object's firewall as it is orphaned (the owner's own labels stay),
/// so neither the shared list nor the sweeper sees it again. Found as the server is (see
/// [`crate::controllers::server::unmark_server`]): in the fleet view, else by the id status recorded, and
/// changed only while it still carries the object's UID.
pub async fn unmark(
    ctx: &Context,
    owner: &Owner,
    seen: Option<&Firewall>,
    recorded: Option<i64>,
) -> Result<(), ReconcileError> {
    let found = match (seen, recorded) {
        (Some(firewall), _) => Some(firewall.clone()),
        (None, Some(id)) => ctx.clients.hetzner.get_firewall(id).await.map_err(ReconcileError::Hetzner)?,
        (None, None) => None,
    };
    let found = found.map(|f| (f.id, f.labels.unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>()));
    if let Some((id, labels)) = found.filter(|(_, labels)| marked_for(labels, &owner.uid)) {
        match ctx.clients.hetzner.set_firewall_labels(id, &without_our_labels(&labels)).await {
            Ok(()) | Err(CloudError::NotFound(_)) => {}
            Err(e) => return Err(ReconcileError::Hetzner(e)),
        }
    }
    ctx.shared.fleet.forget_firewall(&owner.uid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(protocol: &str, port: Option<&str>, ips: &[&str]) -> FirewallRule {
        serde_json::from_value(serde_json::json!({
            "protocol": protocol, "port": port, "sourceIPs": ips, "description": "d"
        }))
        .expect("rule")
    }

    fn firewall_with(rules: &[Rule]) -> Firewall {
        let json = serde_json::json!({
            "id": 5, "name": "f", "labels": {}, "created": "2026-01-01T00:00:00Z", "applied_to": [],
            "rules": in_force(rules),
        });
        serde_json::from_value(json).expect("firewall")
    }

    #[test]
    fn names_fit_hetzner() {
        let name = firewall_name("3F2A9C1E-0B4D-4C55-9E1A-7D2B8C6F0A11");
        assert_eq!(name, "crabglamp-vm-3f2a9c1e-0b4d-4c55-9e1a-7d2b8c6f0a11");
        assert!(name.len() <= 63);
    }

    #[test]
    fn rules_compare_regardless_of_order() {
        let spec =
            vec![rule("tcp", Some("22"), &["203.0.113.0/24", "2001:db8::/32"]), rule("icmp", None, &["0.0.0.0/0"])];
        let mut sent = request_rules(&spec);
        sent.reverse();
        if let Some(ips) = sent[1].source_ips.as_mut() {
            ips.reverse();
        }
        assert!(rules_match(&spec, &firewall_with(&sent)));
        assert!(!rules_match(&spec, &firewall_with(&sent[..1])), "a rule removed in the console");
        let mut widened = sent.clone();
        widened[1].port = Some(Some("1-65535".into()));
        assert!(!rules_match(&spec, &firewall_with(&widened)), "a port edited in the console");
        assert!(rules_match(&[], &firewall_with(&[])), "empty inbound: no rules at all");
        assert!(!rules_match(&[], &firewall_with(&sent)));
    }

    #[test]
    fn ports_only_for_tcp_and_udp() {
        let rules = request_rules(&[rule("udp", Some("8000-8100"), &["::/0"]), rule("gre", None, &["10.0.0.0/8"])]);
        assert_eq!(rules[0].port, Some(Some("8000-8100".into())));
        assert_eq!(rules[1].port, None);
        assert_eq!(rules[0].direction, models::rule::Direction::In);
    }
}
