//! What the operator sends to Hetzner Cloud and keeps of what it answers: a server to create,
//! and the slim summaries of servers and firewalls the fleet view holds.

use std::collections::BTreeMap;

use hcloud::models::{Action, Firewall, Pagination, Server};
use serde::Deserialize;

use super::secret::Secret;

/// What a server should be. SSH access is expected through cloud-init (`user_data`), not
/// through `/ssh_keys` objects: those are project-wide, unique by fingerprint, and shared
/// between servers, so deleting one object's server could not safely delete its keys; with
/// cloud-init each server carries its own keys and nothing outlives it. `ssh_keys` still
/// passes names or ids of keys registered elsewhere.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSpec {
    /// Deterministic, unique per project: a retry after a crash finds the same server.
    pub name: String,
    pub server_type: String,
    pub image: String,
    pub location: String,
    /// Marks pointing back to the owning object; also what adoption checks.
    pub labels: BTreeMap<String, String>,
    /// cloud-init; a secret because it carries the tunnel token (`Debug` must not print it).
    pub user_data: Option<Secret>,
    pub ssh_keys: Vec<String>,
    pub firewalls: Vec<i64>,
    pub start_after_create: bool,
}

/// The outcome of [`HetznerClient::create_server`].
#[derive(Clone, Debug, PartialEq)]
pub struct ServerCreated {
    pub server: Server,
    /// `create_server` and `start_server`; empty when an existing server was adopted.
    pub actions: Vec<Action>,
    /// True when the name was taken by a server carrying the spec's labels (ours, from an
    /// earlier attempt whose answer was lost).
    pub adopted: bool,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub pagination: Pagination,
}

/// A firewall as created.
#[derive(Clone, Debug, PartialEq)]
pub struct FirewallCreated {
    pub firewall: Firewall,
    pub actions: Vec<Action>,
    pub adopted: bool,
}

/// A server as the controllers read it from a list: only the fields they use, decoded
/// tolerantly. The generated model fails a whole page on one value it does not know (a server
/// status Hetzner adds next year); here unknown values stay text and unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ServerSummary {
    pub id: i64,
    pub name: String,
    /// `initializing`, `starting`, `running`, `stopping`, `off`, `deleting`, ... as sent.
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub public_net: PublicNetSummary,
    #[serde(default)]
    pub server_type: Option<NamedSummary>,
    #[serde(default)]
    pub location: Option<NamedSummary>,
}

/// The addresses and firewalls of a [`ServerSummary`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PublicNetSummary {
    #[serde(default)]
    pub ipv4: Option<AddressSummary>,
    #[serde(default)]
    pub ipv6: Option<AddressSummary>,
    #[serde(default)]
    pub firewalls: Vec<FirewallAttachment>,
}

/// One address (`ip` is a network such as `2001:db8::/64` for IPv6).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct AddressSummary {
    pub ip: String,
}

/// A firewall applied to a server; `status` is `applied` or `pending`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct FirewallAttachment {
    pub id: i64,
    #[serde(default)]
    pub status: Option<String>,
}

/// A referenced catalog entry, by name.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NamedSummary {
    pub name: String,
}

impl ServerSummary {
    /// The summary of a server decoded with the generated model (e.g. a create's answer).
    pub fn from_model(server: &Server) -> Option<Self> {
        serde_json::to_value(server).ok().and_then(|v| serde_json::from_value(v).ok())
    }
}
