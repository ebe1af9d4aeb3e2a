//! The firewall routes (`/firewalls`): rules and their validation, `apply_to` resources with
//! the per-server limit, and the firewall actions.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::action_routes::{action_page, actions_for, scoped_action};
use super::envelope::{ApiError, Reply};
use super::labels::parse_selector;
use super::listing::{ListFilter, paginate, sort_items};
use super::physics::Command;
use super::request::{Q, St, body_object, created, labels_field, parse_id, string_field};
use super::resources::{AppliedTo, Effect, Firewall, FirewallRule};
use super::world::World;
use crate::http::now_rfc3339;

fn parse_rules(value: Option<&Value>) -> Result<Vec<FirewallRule>, ApiError> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let rules = value.as_array().ok_or_else(|| ApiError::invalid_input("rules", "rules must be a list"))?;
    if rules.len() > 50 {
        return Err(ApiError::invalid_input("rules", "at most 50 rules"));
    }
    rules.iter().map(parse_rule).collect()
}

fn parse_ips(rule: &Value, key: &str) -> Result<Vec<String>, ApiError> {
    let Some(list) = rule.get(key).filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list = list.as_array().ok_or_else(|| ApiError::invalid_input(key, "must be a list"))?;
    if list.len() > 100 {
        return Err(ApiError::invalid_input(key, "at most 100 entries"));
    }
    list.iter()
        .map(|ip| {
            let s = ip.as_str().ok_or_else(|| ApiError::invalid_input(key, "must be CIDR strings"))?;
            let net: ipnet::IpNet =
                s.parse().map_err(|_| ApiError::invalid_input(key, format!("'{s}' is not a valid CIDR")))?;
            // IPv6 networks come back canonicalised; IPv4 as given.
            Ok(match net {
                ipnet::IpNet::V6(v6) => v6.to_string(),
                ipnet::IpNet::V4(_) => s.to_owned(),
            })
        })
        .collect()
}

fn valid_port(port: &str) -> bool {
    let num = |s: &str| s.parse::<u16>().ok().filter(|p| *p >= 1);
    port == "any"
        || num(port).is_some()
        || port.split_once('-').and_then(|(a, b)| Some((num(a)?, num(b)?))).is_some_and(|(a, b)| a <= b)
}

fn parse_rule(rule: &Value) -> Result<FirewallRule, ApiError> {
    let direction = rule.get("direction").and_then(Value::as_str).unwrap_or_default();
    if !matches!(direction, "in" | "out") {
        return Err(ApiError::invalid_input("direction", "direction must be in or out"));
    }
    let protocol = rule.get("protocol").and_then(Value::as_str).unwrap_or_default();
    if !matches!(protocol, "tcp" | "udp" | "icmp" | "esp" | "gre") {
        return Err(ApiError::invalid_input("protocol", "protocol must be tcp, udp, icmp, esp or gre"));
    }
    let port = rule.get("port").and_then(Value::as_str).map(str::to_owned);
    match (protocol, &port) {
        ("tcp" | "udp", None) => return Err(ApiError::invalid_input("port", "port is required for tcp and udp")),
        ("tcp" | "udp", Some(p)) if !valid_port(p) => {
            return Err(ApiError::invalid_input("port", format!("invalid port '{p}'")));
        }
        ("icmp" | "esp" | "gre", Some(_)) => {
            return Err(ApiError::invalid_input("port", "port is only allowed for tcp and udp"));
        }
        _ => {}
    }
    let source_ips = parse_ips(rule, "source_ips")?;
    let destination_ips = parse_ips(rule, "destination_ips")?;
    if direction == "in" && source_ips.is_empty() {
        return Err(ApiError::invalid_input("source_ips", "source_ips is required for inbound rules"));
    }
    if direction == "out" && destination_ips.is_empty() {
        return Err(ApiError::invalid_input("destination_ips", "destination_ips is required for outbound rules"));
    }
    let description = rule.get("description").and_then(Value::as_str).map(str::to_owned);
    if description.as_ref().is_some_and(|d| d.len() > 255) {
        return Err(ApiError::invalid_input("description", "at most 255 characters"));
    }
    Ok(FirewallRule {
        direction: direction.to_owned(),
        protocol: protocol.to_owned(),
        port,
        source_ips: if direction == "in" { source_ips } else { Vec::new() },
        destination_ips: if direction == "out" { destination_ips } else { Vec::new() },
        description,
    })
}

/// Parses `apply_to` / `remove_from` entries.
fn parse_resources(value: Option<&Value>, field: &str) -> Result<Vec<AppliedTo>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list = value.as_array().ok_or_else(|| ApiError::invalid_input(field, "must be a list"))?;
    list.iter()
        .map(|r| match r.get("type").and_then(Value::as_str) {
            Some("server") => r
                .get("server")
                .and_then(|s| s.get("id"))
                .and_then(Value::as_i64)
                .map(AppliedTo::Server)
                .ok_or_else(|| ApiError::invalid_input(field, "server.id is required")),
            Some("label_selector") => {
                let text = r
                    .get("label_selector")
                    .and_then(|s| s.get("selector"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::invalid_input(field, "label_selector.selector is required"))?;
                let sel = parse_selector(text).map_err(|e| ApiError::invalid_input(field, e))?;
                Ok(AppliedTo::LabelSelector(text.to_owned(), sel))
            }
            _ => Err(ApiError::invalid_input(field, "type must be server or label_selector")),
        })
        .collect()
}

/// Starts one `apply_firewall` action per server a new attachment reaches.
fn apply_actions(w: &mut World, fw: i64, entries: &[AppliedTo]) -> Vec<i64> {
    let mut ids = Vec::new();
    for e in entries {
        let resources = match e {
            AppliedTo::Server(s) => vec![(fw, "firewall"), (*s, "server")],
            AppliedTo::LabelSelector(..) => vec![(fw, "firewall")],
        };
        ids.push(w.start_action(Command::ApplyFirewall, resources, Effect::None));
    }
    ids
}

fn actions_json(w: &World, ids: &[i64]) -> Value {
    let now = Instant::now();
    Value::Array(ids.iter().map(|id| w.action_json(*id, now)).collect())
}

/// Refuses `entries` when they would give a server more firewalls than the project allows
/// (`firewall`: the one being applied, whose servers already count it).
fn check_firewalls_per_server(w: &World, firewall: Option<i64>, entries: &[AppliedTo]) -> Result<(), ApiError> {
    let already = firewall.and_then(|id| w.firewalls.get(&id)).map(|f| w.firewall_servers(f)).unwrap_or_default();
    for id in w.servers_reached(entries) {
        if let Some(s) = w.servers.get(&id)
            && !already.contains(&id)
            && w.firewalls_of(s).count() >= w.firewalls_per_server
        {
            return Err(ApiError::limit("firewalls_per_server", "firewalls per server limit exceeded"));
        }
    }
    Ok(())
}

fn firewall_field(f: &&Firewall, name: &str) -> Value {
    match name {
        "id" => json!(f.id),
        "name" => json!(f.name),
        "created" => json!(f.created),
        _ => Value::Null,
    }
}

pub(super) async fn list_firewalls(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let filter = ListFilter::parse(&q)?;
    let w = st.world();
    let mut items: Vec<&Firewall> = w.firewalls.values().filter(|fw| filter.matches(&fw.name, &fw.labels)).collect();
    sort_items(&mut items, &q, firewall_field)?;
    paginate(items, &q, "firewalls", &headers, "/firewalls", |fw| w.firewall_json(fw))
}

pub(super) async fn get_firewall(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let w = st.world();
    let fw = w.firewalls.get(&id).ok_or_else(|| ApiError::not_found("firewall"))?;
    created(StatusCode::OK, json!({"firewall": w.firewall_json(fw)}))
}

pub(super) async fn create_firewall(State(st): St, body: Bytes) -> Reply {
    let body = body_object(&body)?;
    let name = string_field(&body, "name")?.ok_or_else(|| ApiError::invalid_input("name", "name is required"))?;
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::invalid_input("name", "name must be 1 to 128 characters"));
    }
    let labels = labels_field(&body)?.unwrap_or_default();
    let rules = parse_rules(body.get("rules"))?;
    let apply_to = parse_resources(body.get("apply_to"), "apply_to")?;
    let mut w = st.world();
    if w.firewalls.values().any(|f| f.name == name) {
        return Err(ApiError::uniqueness("name"));
    }
    for e in &apply_to {
        if let AppliedTo::Server(s) = e
            && !w.servers.contains_key(s)
        {
            return Err(ApiError::code_422("firewall_resource_not_found", "server not found"));
        }
    }
    if w.firewalls.len() >= w.firewall_limit {
        return Err(ApiError::limit("firewall_limit", "firewall limit exceeded"));
    }
    check_firewalls_per_server(&w, None, &apply_to)?;
    let id = w.next_id();
    w.firewalls.insert(
        id,
        Firewall { id, name: name.to_owned(), labels, created: now_rfc3339(), rules, applied_to: apply_to.clone() },
    );
    let actions = apply_actions(&mut w, id, &apply_to);
    let fw = w.firewalls.get(&id).map(|f| w.firewall_json(f)).unwrap_or(Value::Null);
    created(StatusCode::CREATED, json!({"firewall": fw, "actions": actions_json(&w, &actions)}))
}

pub(super) async fn update_firewall(State(st): St, Path(id): Path<String>, body: Bytes) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let body = body_object(&body)?;
    let labels = labels_field(&body)?;
    let name = string_field(&body, "name")?;
    let mut w = st.world();
    if !w.firewalls.contains_key(&id) {
        return Err(ApiError::not_found("firewall"));
    }
    if let Some(n) = name
        && w.firewalls.values().any(|f| f.name == n && f.id != id)
    {
        return Err(ApiError::uniqueness("name"));
    }
    if let Some(f) = w.firewalls.get_mut(&id) {
        if let Some(n) = name {
            f.name = n.to_owned();
        }
        if let Some(l) = labels {
            f.labels = l;
        }
    }
    let fw = w.firewalls.get(&id).ok_or_else(|| ApiError::not_found("firewall"))?;
    created(StatusCode::OK, json!({"firewall": w.firewall_json(fw)}))
}

pub(super) async fn delete_firewall(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let mut w = st.world();
    let fw = w.firewalls.get(&id).ok_or_else(|| ApiError::not_found("firewall"))?;
    if !fw.applied_to.is_empty() {
        return Err(ApiError::code_422("resource_in_use", "firewall is still applied to resources"));
    }
    w.firewalls.remove(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn firewall_command(State(st): St, Path((id, command)): Path<(String, String)>, body: Bytes) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let body = body_object(&body)?;
    let mut w = st.world();
    if !w.firewalls.contains_key(&id) {
        return Err(ApiError::not_found("firewall"));
    }
    let actions = match command.as_str() {
        "set_rules" => {
            let rules = parse_rules(Some(body.get("rules").unwrap_or(&Value::Array(Vec::new()))))?;
            let servers = w.firewalls.get(&id).map(|f| w.firewall_servers(f)).unwrap_or_default();
            if let Some(f) = w.firewalls.get_mut(&id) {
                f.rules = rules;
            }
            let mut ids = vec![w.start_action(Command::SetFirewallRules, vec![(id, "firewall")], Effect::None)];
            for s in servers {
                ids.push(w.start_action(Command::ApplyFirewall, vec![(id, "firewall"), (s, "server")], Effect::None));
            }
            ids
        }
        "apply_to_resources" => {
            let entries = parse_resources(body.get("apply_to"), "apply_to")?;
            let current = w.firewalls.get(&id).map(|f| f.applied_to.clone()).unwrap_or_default();
            for e in &entries {
                if let AppliedTo::Server(s) = e
                    && !w.servers.contains_key(s)
                {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "firewall_resource_not_found",
                        "server not found",
                    ));
                }
                if current.contains(e) {
                    return Err(ApiError::code_422("firewall_already_applied", "firewall is already applied"));
                }
            }
            check_firewalls_per_server(&w, Some(id), &entries)?;
            if let Some(f) = w.firewalls.get_mut(&id) {
                f.applied_to.extend(entries.iter().cloned());
            }
            apply_actions(&mut w, id, &entries)
        }
        "remove_from_resources" => {
            let entries = parse_resources(body.get("remove_from"), "remove_from")?;
            let current = w.firewalls.get(&id).map(|f| f.applied_to.clone()).unwrap_or_default();
            let mut ids = Vec::new();
            for e in &entries {
                if let AppliedTo::Server(s) = e {
                    if !w.servers.contains_key(s) {
                        return Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            "firewall_resource_not_found",
                            "server not found",
                        ));
                    }
                    let by_selector = w.firewalls.get(&id).is_some_and(|f| w.firewall_servers(f).contains(s));
                    if !current.contains(e) && by_selector {
                        return Err(ApiError::code_422(
                            "firewall_managed_by_label_selector",
                            "firewall is applied to this server by a label selector",
                        ));
                    }
                }
            }
            if let Some(f) = w.firewalls.get_mut(&id) {
                f.applied_to.retain(|a| !entries.contains(a));
            }
            for e in &entries {
                let resources = match e {
                    AppliedTo::Server(s) => vec![(id, "firewall"), (*s, "server")],
                    AppliedTo::LabelSelector(..) => vec![(id, "firewall")],
                };
                ids.push(w.start_action(Command::RemoveFirewall, resources, Effect::None));
            }
            ids
        }
        _ => return Err(ApiError::not_found("action")),
    };
    created(StatusCode::CREATED, json!({"actions": actions_json(&w, &actions)}))
}

pub(super) async fn list_firewall_actions(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let w = st.world();
    let items = actions_for(&w, &q, None, Some("firewall"))?;
    action_page(&w, items, &q, &headers, "/firewalls/actions")
}

pub(super) async fn list_one_firewall_actions(
    State(st): St,
    Path(id): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let w = st.world();
    let items = actions_for(&w, &q, Some((id, "firewall")), None)?;
    action_page(&w, items, &q, &headers, "/firewalls/actions")
}

pub(super) async fn get_firewall_action(State(st): St, Path((id, action)): Path<(String, String)>) -> Reply {
    scoped_action(&st, &id, &action, "firewall")
}
