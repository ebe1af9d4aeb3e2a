//! The custom resource types of `crabglamp.com/v1alpha1`: the contract users write against.
//!
//! Every admission rule lives here, next to the field it guards, so the CRD YAML in `crds/`
//! is generated from these types and never edited by hand.

pub mod agent;
pub mod plain_vm;
pub mod shared;
pub mod virtual_key;

pub use agent::{Agent, AgentSpec, AgentStatus, TunnelSpec};
pub use plain_vm::{FirewallRule, FirewallSpec, PlainVM, PlainVMSpec, PlainVMStatus, Protocol};
pub use shared::{DeletionPolicy, Phase, Region, ServerStatus};
pub use virtual_key::{Budget, RateLimit, VirtualKey, VirtualKeySpec, VirtualKeyStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every kind this operator serves.
pub const GROUP: &str = "crabglamp.com";
/// The only served (and stored) version.
pub const VERSION: &str = "v1alpha1";

/// All CRDs this operator owns, in a stable order (the order of the files in `crds/`).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![Agent::crd(), PlainVM::crd(), VirtualKey::crd()]
}

/// Errors of rendering the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdRenderError {
    /// A CRD could not be rendered as YAML.
    #[error("cannot render CRD {name} as YAML")]
    Yaml {
        /// The CRD's name.
        name: String,
        /// What the YAML serialiser said.
        #[source]
        source: serde_norway::Error,
    },
}

/// The file name a CRD is committed under in `crds/` (`<plural>.<group>.yaml`).
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document, starting with `---` so the files concatenate into a stream.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdRenderError> {
    let body = serde_norway::to_string(crd)
        .map_err(|source| CrdRenderError::Yaml { name: crd.metadata.name.clone().unwrap_or_default(), source })?;
    Ok(format!("---\n{body}"))
}

/// Every CRD as one YAML stream: exactly the concatenation of the files in `crds/`.
pub fn all_crds_yaml() -> Result<String, CrdRenderError> {
    all_crds().iter().map(crd_yaml).collect()
}
