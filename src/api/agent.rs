//! `Agent`: one dedicated Hetzner server reachable only through its own Cloudflare Tunnel.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::shared::{DeletionPolicy, Phase, Region, ServerStatus, default_true};

/// Desired state of an Agent: a dedicated server behind its own Cloudflare Tunnel.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "crabglamp.com",
    version = "v1alpha1",
    kind = "Agent",
    namespaced,
    status = "AgentStatus",
    shortname = "ag",
    category = "crabglamp",
    doc = "An Agent: one dedicated Hetzner Cloud server reachable only through its own Cloudflare Tunnel.",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region", description = "Region the server runs in"),
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner", description = "Billing owner"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the Agent is ready"),
    printcolumn(name = "Hostname", type_ = "string", json_path = ".status.tunnel.hostname", description = "Public hostname served through the tunnel"),
    printcolumn(name = "Server-IP", type_ = "string", json_path = ".status.server.ipv4", description = "Public IPv4 of the server"),
    printcolumn(name = "Server-ID", type_ = "integer", json_path = ".status.server.id", description = "Hetzner server id", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(super::shared::NAME_FITS_SERVER_RULE).message(
        "metadata.name must be a DNS label of at most 50 characters (lowercase letters, digits and '-'), so that the derived server name fits Hetzner's 63-character limit"
    )
)]
// What the server was created with stays: it is never resized or rebuilt in place, and the
// price cell follows the server Hetzner runs, so a changed spec would run and bill nothing new.
#[x_kube(
    validation = Rule::new("self.region == oldSelf.region").field_path(".region").message("spec.region is immutable: an Agent stays in the region it was created in"),
    validation = Rule::new("self.serverType == oldSelf.serverType").field_path(".serverType").message("spec.serverType is immutable: the server is never resized in place; create a new Agent for another server type"),
    validation = Rule::new("self.image == oldSelf.image").field_path(".image").message("spec.image is immutable: the server is never rebuilt in place; create a new Agent for another image"),
    validation = Rule::new("self.sshKeys == oldSelf.sshKeys").field_path(".sshKeys").message("spec.sshKeys is immutable: keys are installed only when the server is created; create a new Agent for other keys")
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Billing owner account (e.g. `acct_7f3a`). Changing it transfers the Agent to the new owner.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$')").message("spec.owner must be 1-63 letters, digits, '_', '-' or '.', starting and ending with a letter or digit"))]
    #[schemars(length(max = 63))]
    pub owner: String,

    /// Region the server runs in: `us` (Hillsboro, `hil`) or `eu` (Helsinki, `hel1`). Immutable.
    pub region: Region,

    /// Hetzner server type (e.g. `cpx22`). Refused when the region does not offer it. Immutable.
    #[serde(default = "default_server_type")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]{2,16}$')").message("spec.serverType must be a Hetzner server type name such as cpx22"))]
    #[schemars(length(max = 16))]
    pub server_type: String,

    /// OS image name (e.g. `ubuntu-24.04`); the architecture matching the server type is used. Immutable.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{0,62}$')").message("spec.image must be a Hetzner image name such as ubuntu-24.04"))]
    #[schemars(length(max = 63))]
    pub image: String,

    /// Desired power state: `true` runs the server, `false` shuts it down (graceful, then hard).
    #[serde(default = "default_true")]
    pub running: bool,

    /// Public SSH keys (OpenSSH format) for the server's default user, installed at create. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/]+=*( .*)?$'))").message("spec.sshKeys entries must be OpenSSH public keys such as 'ssh-ed25519 AAAA... user@host'"))]
    // An OpenSSH RSA-16384 key with a comment is under 3,000 characters; the bound also caps
    // the CEL cost estimate the API server computes for the rule above.
    #[schemars(length(max = 20), inner(length(max = 4096)))]
    pub ssh_keys: Vec<String>,

    /// The Cloudflare Tunnel in front of the server.
    #[serde(default)]
    pub tunnel: TunnelSpec,

    /// `Delete` (default) removes the server, tunnel and DNS record with the Agent; `Orphan` leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// How the Agent is reached through its Cloudflare Tunnel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSpec {
    /// Public hostname (a name in the configured Cloudflare zone). Defaults to `<name>--<namespace>.<zone>` (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\\\.)+[a-z]{2,63}$')").message("spec.tunnel.hostname must be a lowercase DNS name such as bot.agents.example.com"))]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,

    /// Where the tunnel delivers requests inside the server (e.g. `http://localhost:8080`).
    #[serde(default = "default_tunnel_service")]
    #[x_kube(validation = Rule::new("self.matches('^(https?|tcp|ssh|rdp|unix)://[^\\\\s]+$') || self.matches('^http_status:[1-5][0-9][0-9]$')").message("spec.tunnel.service must be a URL such as http://localhost:8080"))]
    #[schemars(length(max = 2048))]
    pub service: String,
}

impl Default for TunnelSpec {
    fn default() -> Self {
        Self { hostname: None, service: default_tunnel_service() }
    }
}

/// Observed state of an Agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Coarse lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Standard conditions: `Ready`, `ServerReady`, `TunnelReady`, `DnsReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // A map keyed by type, as metav1.Condition lists are: server-side apply merges per condition.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The Hetzner server as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerStatus>,
    /// The Cloudflare Tunnel and its DNS record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatus>,
    /// The owner last recorded: what a transfer is measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Stripe price cell for region, product and server type (e.g. `agent-us-cpx22`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_cell: Option<String>,
}

/// The Cloudflare side of an Agent as last observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    /// Cloudflare Tunnel id (UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Public hostname routed to the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Id of the proxied CNAME record pointing the hostname at the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_record_id: Option<String>,
    /// The in-server service the tunnel's ingress routes the hostname to, as last configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

fn default_server_type() -> String {
    "cpx22".into()
}

fn default_image() -> String {
    "ubuntu-24.04".into()
}

fn default_tunnel_service() -> String {
    "http://localhost:8080".into()
}
