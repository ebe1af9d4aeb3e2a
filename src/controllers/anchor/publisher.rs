//! Where the audit anchor goes, and the wake-up its publisher waits on.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::audit_anchor::Location;

use crate::controllers::config::ControllerConfig;

/// Where the anchor goes and the wake-up of its publisher.
pub struct AnchorPublisher {
    /// The ConfigMap.
    pub location: Location,
    pub(super) api: Api<ConfigMap>,
    pub(super) wake: Notify,
}

impl AnchorPublisher {
    pub fn new(client: &Client, config: &ControllerConfig) -> Self {
        let location =
            Location::resolve(client, config.anchor_namespace.as_deref(), Some(config.anchor_configmap.as_str()));
        AnchorPublisher { api: location.api(client.clone()), location, wake: Notify::new() }
    }

    /// An append committed: publish soon. Never waits (the publish runs on its own task).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }
}
