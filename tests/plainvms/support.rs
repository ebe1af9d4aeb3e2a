//! What the PlainVM scenarios share on top of the operator fixture: the simulator's view of a
//! VM's firewall, request counts by route.

use serde_json::Value;

pub use crate::fixture::*;

/// The firewall named for `uid`, as the simulator renders it (no request spent).
pub fn vm_firewall(op: &Operator, uid: &str) -> Option<Value> {
    let name = crabglamp_operator::controllers::firewall::firewall_name(uid);
    crabglamp_sandbox::hetzner::firewalls(&op.hetzner).into_iter().find(|f| f["name"] == name.as_str())
}

/// A firewall's inbound rules as `(protocol, port, sorted source IPs)`, sorted.
pub fn rules_of(firewall: &Value) -> Vec<(String, Option<String>, Vec<String>)> {
    let mut rules: Vec<_> = firewall["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut ips: Vec<String> = r["source_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            ips.sort();
            (r["protocol"].as_str().unwrap_or_default().to_owned(), r["port"].as_str().map(str::to_owned), ips)
        })
        .collect();
    rules.sort();
    rules
}

/// The server ids a firewall is applied to directly.
pub fn applied_servers(firewall: &Value) -> Vec<i64> {
    firewall["applied_to"].as_array().into_iter().flatten().filter_map(|a| a["server"]["id"].as_i64()).collect()
}

/// Requests the Hetzner simulator served with this method whose path ends with `suffix`.
pub fn hz_requests(op: &Operator, method: &str, suffix: &str) -> usize {
    op.hetzner.requests().iter().filter(|r| r.method.as_str() == method && r.path.ends_with(suffix)).count()
}

/// SSH from an office network and ping from anywhere.
pub fn two_rules() -> Value {
    serde_json::json!([
        {"protocol": "tcp", "port": "22", "sourceIPs": ["203.0.113.0/24", "2001:db8::/32"], "description": "ssh"},
        {"protocol": "icmp", "sourceIPs": ["0.0.0.0/0", "::/0"], "description": "ping"}
    ])
}

/// Waits for the operator's first complete lists (its start-up requests are done).
pub async fn first_lists(op: &Operator) {
    wait_until(std::time::Duration::from_secs(30), "first lists", || {
        op.context.fleet().servers_known() && op.context.fleet().firewalls_known()
    })
    .await;
}
