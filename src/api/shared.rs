//! Types shared by the Agent and PlainVM kinds: region, deletion policy, phase and the
//! observed Hetzner server.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rule text shared by Agent and PlainVM: the object name becomes part of the Hetzner server
/// name `<name>-<first 8 hex digits of the UID>`, which must be a DNS label (at most 63).
pub const NAME_FITS_SERVER_RULE: &str =
    "self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// Where a server runs. Fixed for the lifetime of the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Hillsboro, OR (Hetzner location `hil`). Agents only.
    Us,
    /// Helsinki (Hetzner location `hel1`). Agents and PlainVMs.
    Eu,
}

impl Region {
    /// The Hetzner location that serves this region.
    pub fn hetzner_location(self) -> &'static str {
        match self {
            Region::Us => "hil",
            Region::Eu => "hel1",
        }
    }

    /// The region a Hetzner location serves, if it is one of ours.
    pub fn of_hetzner_location(location: &str) -> Option<Region> {
        [Region::Us, Region::Eu].into_iter().find(|r| r.hetzner_location() == location)
    }

    /// The value used in `spec.region` and in price cells.
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Us => "us",
            Region::Eu => "eu",
        }
    }
}

/// What happens to the cloud resources when the object is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the server and everything created for it.
    #[default]
    Delete,
    /// Leave the cloud resources in place; the audit event records that they were orphaned.
    Orphan,
}

/// Coarse lifecycle phase, for people and GitOps health checks. Conditions carry the detail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Cloud resources are being created or started.
    Provisioning,
    /// The server is running and reachable as specified.
    Running,
    /// The server is shutting down.
    Stopping,
    /// The server is powered off as requested.
    Stopped,
    /// Cloud resources are being torn down.
    Deleting,
    /// A permanent error stopped progress until the spec changes.
    Failed,
}

/// The Hetzner server as last observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// Hetzner server id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// Hetzner server name (derived from the object's name and UID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hetzner location the server runs in (`hil` or `hel1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Hetzner server status (`initializing`, `starting`, `running`, `stopping`, `off`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Public IPv4 address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// Public IPv6 network, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

pub(crate) fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_names_the_region_it_serves() {
        for region in [Region::Us, Region::Eu] {
            assert_eq!(Region::of_hetzner_location(region.hetzner_location()), Some(region));
        }
        assert_eq!(Region::of_hetzner_location("fsn1"), None, "not a region of ours");
    }
}
