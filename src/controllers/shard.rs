//! Shards: several operator deployments splitting one cluster's objects by a label.

use crate::controllers::config::ControllerConfig;

/// The label that assigns an object to one of several operator deployments (`--shard`).
pub const SHARD_LABEL: &str = "crabglamp.com/shard";

/// The label selector of the objects this instance owns: its shard's, or without `--shard`
/// only those without a shard label, so a sharded and an unsharded deployment never both
/// reconcile one object.
pub fn shard_selector(config: &ControllerConfig) -> String {
    match &config.shard {
        Some(shard) => format!("{SHARD_LABEL}={shard}"),
        None => format!("!{SHARD_LABEL}"),
    }
}
