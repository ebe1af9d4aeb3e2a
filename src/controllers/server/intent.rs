//! What a kind wants of its server (type, image, region, power, price) and how a Hetzner server
//! shows in status.

use crate::api::{Region, ServerStatus};
use crate::cloud::Secret;
use crate::cloud::hetzner::{ServerSpec, ServerSummary};

use super::marks::*;
use crate::controllers::reconcile::conditions::Desired;

/// What a kind asks of its server; the rest of this module needs nothing else of the object.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerIntent {
    /// `agent` or `plainvm` (label value and price-cell product).
    pub product: &'static str,
    pub region: Region,
    pub server_type: String,
    pub image: String,
    pub running: bool,
    pub owner: String,
}

impl ServerIntent {
    /// What a kind's spec fields ask for (every server-backed spec has these).
    pub fn new(
        product: &'static str,
        region: Region,
        server_type: &str,
        image: &str,
        running: bool,
        owner: &str,
    ) -> Self {
        let (server_type, image, owner) = (server_type.to_owned(), image.to_owned(), owner.to_owned());
        ServerIntent { product, region, server_type, image, running, owner }
    }

    /// Stripe price cell of the spec's server type, e.g. `agent-us-cpx22`.
    pub fn price_cell(&self) -> String {
        self.price_cell_of(&self.server_type)
    }

    /// Stripe price cell of a server of `server_type` of this product in this region.
    pub fn price_cell_of(&self, server_type: &str) -> String {
        format!("{}-{}-{}", self.product, self.region.as_str(), server_type)
    }

    /// The price cell `server` is billed at (see [`billed_type`]).
    pub fn billed_price_cell(&self, server: Option<&ServerSummary>) -> String {
        self.price_cell_of(&billed_type(self, server))
    }
}

/// The server type billing follows: the one Hetzner reports for the server, since that is what
/// runs and costs (a server rescaled in the console, or created before the spec was edited,
/// runs another type than the spec names); the spec's only while no server is observed (or a
/// summary lacks the type).
pub fn billed_type(intent: &ServerIntent, server: Option<&ServerSummary>) -> String {
    server.and_then(|s| s.server_type.as_ref()).map_or_else(|| intent.server_type.clone(), |t| t.name.clone())
}

/// The create call for an object's server in `installation`: attached to `firewalls` from its
/// first instant, with `user_data` (a secret: it may carry a token).
pub fn create_spec(
    owner: &Owner,
    intent: &ServerIntent,
    installation: &str,
    user_data: Secret,
    firewalls: Vec<i64>,
) -> ServerSpec {
    ServerSpec {
        name: server_name(&owner.name, &owner.uid),
        server_type: intent.server_type.clone(),
        image: intent.image.clone(),
        location: intent.region.hetzner_location().to_owned(),
        labels: server_labels(owner, intent.product, installation),
        user_data: Some(user_data),
        ssh_keys: Vec::new(),
        firewalls,
        start_after_create: intent.running,
    }
}

/// The status block of an observed server.
pub fn server_status(server: &ServerSummary, status_override: Option<&str>) -> ServerStatus {
    ServerStatus {
        id: Some(server.id),
        name: Some(server.name.clone()),
        location: server.location.as_ref().map(|l| l.name.clone()),
        status: Some(status_override.unwrap_or(&server.status).to_owned()),
        ipv4: server.public_net.ipv4.as_ref().map(|a| a.ip.clone()),
        ipv6: server.public_net.ipv6.as_ref().map(|a| a.ip.clone()),
    }
}

/// Pure: the `ServerReady` condition for a server believed to be in `effective` (none: not
/// created yet) when the spec wants `running`.
pub fn server_ready(running: bool, effective: Option<&str>) -> Desired {
    match (running, effective) {
        (true, Some("running")) | (false, Some("off")) => Desired::new(
            "ServerReady",
            true,
            if running { "Running" } else { "Stopped" },
            "The server is in the requested power state.",
        ),
        (_, Some(s)) => Desired::new(
            "ServerReady",
            false,
            "PowerTransition",
            format!("The server is {s}; waiting for it to be {}.", if running { "running" } else { "off" }),
        ),
        (_, None) => Desired::new("ServerReady", false, "Provisioning", "The server is being created."),
    }
}

/// Pure: the Event a created server deserves: whether it is a warning, its reason and note.
/// `vanished` is the server id status recorded before (a different one: deleted outside).
pub fn created_event(
    vanished: Option<i64>,
    created: &ServerSummary,
    intent: &ServerIntent,
) -> (bool, &'static str, String) {
    match vanished {
        Some(old) if old != created.id => (
            true,
            "ServerRecreated",
            format!("Server {old} was deleted outside the operator; created server {} in its place.", created.id),
        ),
        _ => (
            false,
            "ServerCreated",
            format!(
                "Server {} ({}) created in {}.",
                created.name,
                intent.server_type,
                intent.region.hetzner_location()
            ),
        ),
    }
}

/// The fleet view's status of a server after a power call whose outcome is not known.
pub const UNKNOWN_STATUS: &str = "unknown";
