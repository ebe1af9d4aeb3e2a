//! The installation identity: which cluster's operator made a resource. Several installations
//! (production, staging, a developer's laptop) may share one Hetzner project and one Cloudflare
//! account and zone; every mark the operator puts on a resource carries its installation, and
//! every list, sweep and adoption looks only at resources of its own.
//!
//! By default it is derived from the `kube-system` namespace's UID, which is unique per cluster
//! and stable for its life: 8 hex digits of its SHA-256 (a few clusters share a project, so a
//! collision of 32 random bits is improbable enough; the hash keeps it short whatever the UID
//! looks like). `--installation` (a chart value) overrides it, e.g. to keep the identity when a
//! cluster is rebuilt.

use sha2::{Digest, Sha256};

/// Label on every server and firewall the operator makes: the installation that made it.
pub const INSTALLATION_LABEL: &str = "crabglamp.com/installation";
/// The longest installation: it is in a DNS comment of at most 100 characters (see
/// [`crate::controllers::server::names::dns_mark`]) and in a Hetzner label value (at most 63).
pub const MAX_LEN: usize = 16;
/// Where the default identity comes from.
const IDENTITY_NAMESPACE: &str = "kube-system";

/// Why there is no installation identity.
#[derive(Debug, thiserror::Error)]
pub enum InstallationError {
    #[error(
        "invalid installation {0:?}: 1 to {MAX_LEN} lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    Invalid(String),
    #[error("cannot read the {IDENTITY_NAMESPACE} namespace to derive the installation (or set --installation): {0}")]
    Kube(#[source] kube::Error),
    #[error("the {IDENTITY_NAMESPACE} namespace has no UID to derive the installation from (set --installation)")]
    NoUid,
}

/// Checks an installation given by hand: it must fit a Hetzner label value, a tunnel name
/// part and a DNS comment, and be unambiguous in them (no `:`, which ends it in a comment).
pub fn validate(installation: &str) -> Result<(), InstallationError> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ok = !installation.is_empty()
        && installation.len() <= MAX_LEN
        && installation.chars().all(valid_char)
        && !installation.starts_with('-')
        && !installation.ends_with('-');
    if ok { Ok(()) } else { Err(InstallationError::Invalid(installation.to_owned())) }
}

/// The default installation of the cluster whose `kube-system` namespace has `uid`.
pub fn derive(kube_system_uid: &str) -> String {
    let digest = Sha256::digest(kube_system_uid.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The configured installation (checked), or the one derived from this cluster.
pub async fn resolve(client: &kube::Client, configured: Option<&str>) -> Result<String, InstallationError> {
    if let Some(installation) = configured {
        validate(installation)?;
        return Ok(installation.to_owned());
    }
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let namespace = namespaces.get(IDENTITY_NAMESPACE).await.map_err(InstallationError::Kube)?;
    let uid = namespace.metadata.uid.filter(|u| !u.is_empty()).ok_or(InstallationError::NoUid)?;
    Ok(derive(&uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_identities_are_short_stable_and_valid() {
        let a = derive("3f2a9c1e-0b4d-4c55-9e1a-7d2b8c6f0a11");
        assert_eq!(a, derive("3f2a9c1e-0b4d-4c55-9e1a-7d2b8c6f0a11"), "stable");
        assert_ne!(a, derive("3f2a9c1e-0b4d-4c55-9e1a-7d2b8c6f0a12"), "another cluster, another identity");
        assert_eq!(a.len(), 8);
        assert!(validate(&a).is_ok());
    }

    #[test]
    fn a_configured_identity_must_fit_every_mark() {
        for good in ["prod", "staging-eu", "laptop-jo", "a", &"x".repeat(MAX_LEN)] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "prod:1", "-prod", "prod-", "prod eu", "prod_eu", &"x".repeat(MAX_LEN + 1)] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
