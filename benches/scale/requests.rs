//! Cloud requests of one simulated account, whole and per object: what the goals compare with
//! the call budget's floors (one Hetzner request per Agent, two per PlainVM, three Cloudflare
//! requests per Agent).

use std::collections::BTreeMap;

use crabglamp_sandbox::http::RunningSim;

use crate::floor;

/// Requests by method, route and status since the simulator started.
pub fn routes(sim: &RunningSim) -> BTreeMap<String, u64> {
    sim.control()
        .route_counts()
        .into_iter()
        .map(|r| (format!("{} {} {}", r.method, r.route.unwrap_or_default(), r.status), r.count))
        .collect()
}

/// Hetzner requests that belong to one kind (its servers' and firewalls' creates, by the
/// kind label in the logged body); everything else (lists, the fleet firewall) is shared.
fn hetzner_by_kind(sim: &RunningSim) -> BTreeMap<&'static str, u64> {
    let mut by = BTreeMap::new();
    for r in sim.requests() {
        let kind = r
            .body
            .as_ref()
            .and_then(|b| b["labels"][crabglamp_operator::controllers::server::KIND_LABEL].as_str().map(str::to_owned));
        let key = match (r.method.as_str(), kind.as_deref()) {
            ("POST", Some("agent")) => "Agent",
            ("POST", Some("plainvm")) => "PlainVM",
            _ => "shared",
        };
        *by.entry(key).or_insert(0) += 1;
    }
    by
}

/// One account's requests so far, for `agents` Agents and `vms` PlainVMs.
pub struct AccountRequests {
    pub hetzner_routes: BTreeMap<String, u64>,
    pub cloudflare_routes: BTreeMap<String, u64>,
    pub hetzner_total: u64,
    pub cloudflare_total: u64,
    /// An Agent's own create and its share of the shared requests (weighted by the floor).
    pub hetzner_per_agent: f64,
    pub hetzner_per_plainvm: f64,
    pub cloudflare_per_agent: f64,
}

impl AccountRequests {
    pub fn count(hcloud: &RunningSim, cloudflare: &RunningSim, agents: usize, vms: usize) -> Self {
        let hetzner_routes = routes(hcloud);
        let cloudflare_routes = routes(cloudflare);
        let hetzner_total: u64 = hetzner_routes.values().sum();
        let cloudflare_total: u64 = cloudflare_routes.values().sum();
        let kinds = hetzner_by_kind(hcloud);
        let share = |kind: &str| kinds.get(kind).copied().unwrap_or(0) as f64;
        let shared = share("shared");
        let weight_a = agents as f64 * floor::AGENT_HETZNER;
        let weight_v = vms as f64 * floor::PLAINVM_HETZNER;
        let weights = (weight_a + weight_v).max(1.0);
        AccountRequests {
            hetzner_per_agent: (share("Agent") + shared * weight_a / weights) / agents.max(1) as f64,
            hetzner_per_plainvm: (share("PlainVM") + shared * weight_v / weights) / vms.max(1) as f64,
            cloudflare_per_agent: cloudflare_total as f64 / agents.max(1) as f64,
            hetzner_routes,
            cloudflare_routes,
            hetzner_total,
            cloudflare_total,
        }
    }
}
