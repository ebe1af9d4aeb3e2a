//! `PlainVM`: one dedicated Hetzner server guarded by its own Hetzner Cloud Firewall.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::{DeletionPolicy, Phase, Region, ServerStatus, default_true};

/// Desired state of a PlainVM: a dedicated server whose inbound traffic is only what its firewall allows.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "crabglamp.com",
    version = "v1alpha1",
    kind = "PlainVM",
    plural = "plainvms",
    namespaced,
    status = "PlainVMStatus",
    shortname = "pvm",
    category = "crabglamp",
    doc = "A PlainVM: one dedicated Hetzner Cloud server guarded by its own Hetzner Cloud Firewall.",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region", description = "Region the server runs in"),
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner", description = "Billing owner"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the PlainVM is ready"),
    printcolumn(name = "Server-IP", type_ = "string", json_path = ".status.server.ipv4", description = "Public IPv4 of the server"),
    printcolumn(name = "Server-ID", type_ = "integer", json_path = ".status.server.id", description = "Hetzner server id", priority = 1),
    printcolumn(name = "Firewall-ID", type_ = "integer", json_path = ".status.firewall.id", description = "Hetzner firewall id", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(super::shared::NAME_FITS_SERVER_RULE).message(
        "metadata.name must be a DNS label of at most 50 characters (lowercase letters, digits and '-'), so that the derived server name fits Hetzner's 63-character limit"
    )
)]
#[x_kube(
    validation = Rule::new("self.region == oldSelf.region").field_path(".region").message("spec.region is immutable: a PlainVM stays in the region it was created in"),
    validation = Rule::new("self.owner == oldSelf.owner").field_path(".owner").message("spec.owner is immutable: PlainVMs are never transferred"),
    // What the server was created with stays: it is never resized or rebuilt in place, and the
    // price cell follows the server Hetzner runs, so a changed spec would run and bill nothing new.
    validation = Rule::new("self.serverType == oldSelf.serverType").field_path(".serverType").message("spec.serverType is immutable: the server is never resized in place; create a new PlainVM for another server type"),
    validation = Rule::new("self.image == oldSelf.image").field_path(".image").message("spec.image is immutable: the server is never rebuilt in place; create a new PlainVM for another image"),
    validation = Rule::new("self.sshKeys == oldSelf.sshKeys").field_path(".sshKeys").message("spec.sshKeys is immutable: keys are installed only when the server is created; create a new PlainVM for other keys")
)]
#[serde(rename_all = "camelCase")]
pub struct PlainVMSpec {
    /// Billing owner account (e.g. `acct_7f3a`). Immutable: PlainVMs are never transferred.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$')").message("spec.owner must be 1-63 letters, digits, '_', '-' or '.', starting and ending with a letter or digit"))]
    #[schemars(length(max = 63))]
    pub owner: String,

    /// Region the server runs in. PlainVMs are offered only in `eu` (Helsinki, `hel1`). Immutable.
    #[x_kube(validation = Rule::new("self == 'eu'").message("spec.region must be eu: PlainVMs are offered only in Helsinki"))]
    pub region: Region,

    /// Hetzner server type (e.g. `cx23`). Refused when the region does not offer it. Immutable.
    #[serde(default = "default_server_type")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]{2,16}$')").message("spec.serverType must be a Hetzner server type name such as cx23"))]
    #[schemars(length(max = 16))]
    pub server_type: String,

    /// OS image name (e.g. `debian-12`); the architecture matching the server type is used. Immutable.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{0,62}$')").message("spec.image must be a Hetzner image name such as debian-12"))]
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

    /// The server's own firewall. With no inbound rule, no inbound traffic reaches the server.
    #[serde(default)]
    pub firewall: FirewallSpec,

    /// `Delete` (default) removes the server and firewall with the PlainVM; `Orphan` leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Firewall of a PlainVM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirewallSpec {
    /// The only inbound traffic let in. Empty means nothing is let in.
    #[serde(default)]
    #[schemars(length(max = 50))]
    pub inbound: Vec<FirewallRule>,
}

/// One inbound firewall rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.protocol == 'tcp' || self.protocol == 'udp') == has(self.port)").message("spec.firewall.inbound[].port is required for tcp and udp and not allowed for icmp, esp and gre"))]
pub struct FirewallRule {
    /// IP protocol: `tcp`, `udp`, `icmp`, `esp` or `gre`.
    pub protocol: Protocol,

    /// Port (`"22"`), range (`"8000-8100"`) or `"any"`; tcp and udp only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'any' || (self.matches('^[0-9]{1,5}(-[0-9]{1,5})?$') && self.split('-').all(p, int(p) >= 1 && int(p) <= 65535) && (self.split('-').size() == 1 || int(self.split('-')[0]) <= int(self.split('-')[1])))").message("spec.firewall.inbound[].port must be a port 1-65535 such as \"22\", a range such as \"8000-8100\", or \"any\""))]
    #[schemars(length(max = 11))]
    pub port: Option<String>,

    /// Source networks in CIDR notation (IPv4 or IPv6), e.g. `203.0.113.0/24`.
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.firewall.inbound[].sourceIPs entries must be CIDRs such as 203.0.113.0/24 or 2001:db8::/32"))]
    // The longest CIDR, an IPv4-mapped IPv6 address with a prefix, has 49 characters.
    #[schemars(length(min = 1, max = 100), inner(length(max = 64)))]
    #[serde(rename = "sourceIPs")]
    pub source_ips: Vec<String>,

    /// Free text shown in the Hetzner console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub description: Option<String>,
}

/// IP protocol of a firewall rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP; needs a port.
    Tcp,
    /// UDP; needs a port.
    Udp,
    /// ICMP (ping and friends); no port.
    Icmp,
    /// IPsec ESP; no port.
    Esp,
    /// GRE tunnels; no port.
    Gre,
}

impl Protocol {
    /// Hetzner's name of the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Esp => "esp",
            Protocol::Gre => "gre",
        }
    }
}

/// Observed state of a PlainVM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlainVMStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Coarse lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Standard conditions: `Ready`, `ServerReady`, `FirewallReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // A map keyed by type, as metav1.Condition lists are: server-side apply merges per condition.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The Hetzner server as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerStatus>,
    /// The Hetzner firewall as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallStatus>,
    /// Stripe price cell for region, product and server type (e.g. `plainvm-eu-cx23`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_cell: Option<String>,
}

/// The Hetzner firewall of a PlainVM as last observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirewallStatus {
    /// Hetzner firewall id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// Number of inbound rules in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<i32>,
}

fn default_server_type() -> String {
    "cx23".into()
}

fn default_image() -> String {
    "debian-12".into()
}
