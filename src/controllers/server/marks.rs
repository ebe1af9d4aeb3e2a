//! How the operator marks what it owns: labels on servers and firewalls, the selectors of its
//! lists (installation, shard, namespace), server names, and the owner an object is.

use std::collections::BTreeMap;

use kube::Resource;

use crate::controllers::config::ControllerConfig;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::server::installation::INSTALLATION_LABEL;
use crate::controllers::shard::SHARD_LABEL;
use crate::store::audit::ResourceRef;

/// Label on everything the operator creates in Hetzner: what the fleet list selects.
pub const MANAGED_BY_LABEL: &str = "crabglamp.com/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "crabglamp-operator";
/// The owning object's UID: the proof of ownership that adoption and the sweeper check.
pub const UID_LABEL: &str = "crabglamp.com/uid";
/// `agent` or `plainvm`.
pub const KIND_LABEL: &str = "crabglamp.com/kind";
/// The owning object's namespace and name, for people reading the Hetzner console.
pub const NAMESPACE_LABEL: &str = "crabglamp.com/namespace";
/// See [`NAMESPACE_LABEL`].
pub const NAME_LABEL: &str = "crabglamp.com/name";

/// The terms that keep an instance to its own servers and firewalls: its shard's (or, without
/// `--shard`, those without a shard label), and its namespace's with `--watch-namespace`. The
/// sweeper judges only what these select, so it never removes another deployment's servers.
pub(super) fn scope_terms(config: &ControllerConfig) -> String {
    let mut terms = match &config.shard {
        Some(shard) => format!(",{SHARD_LABEL}={shard}"),
        None => format!(",!{SHARD_LABEL}"),
    };
    if let Some(ns) = &config.watch_namespace {
        terms.push_str(&format!(",{NAMESPACE_LABEL}={ns}"));
    }
    terms
}

/// Selects this installation's resources, or (`None`) those made before installations had an
/// identity, which carry no installation label.
pub(super) fn installation_term(installation: Option<&str>) -> String {
    match installation {
        Some(installation) => format!(",{INSTALLATION_LABEL}={installation}"),
        None => format!(",!{INSTALLATION_LABEL}"),
    }
}

/// The label selector of the shared fleet list: every server this instance manages (of its
/// installation only: another cluster's servers in the same project are never listed).
pub fn fleet_selector(config: &ControllerConfig) -> String {
    legacy_or_fleet_selector(config, Some(config.installation()))
}

/// The servers of this instance's scope made before installations had an identity.
pub fn legacy_fleet_selector(config: &ControllerConfig) -> String {
    legacy_or_fleet_selector(config, None)
}

pub(super) fn legacy_or_fleet_selector(config: &ControllerConfig, installation: Option<&str>) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}{}{}", installation_term(installation), scope_terms(config))
}

/// The label selector of the shared firewall list: every per-object (PlainVM) firewall of this
/// instance. The fleet firewall has no kind label, so it is not selected.
pub fn per_object_firewall_selector(config: &ControllerConfig) -> String {
    legacy_or_firewall_selector(config, Some(config.installation()))
}

/// The per-object firewalls of this instance's scope made before installations had an identity.
pub fn legacy_per_object_firewall_selector(config: &ControllerConfig) -> String {
    legacy_or_firewall_selector(config, None)
}

pub(super) fn legacy_or_firewall_selector(config: &ControllerConfig, installation: Option<&str>) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{KIND_LABEL}=plainvm{}{}",
        installation_term(installation),
        scope_terms(config)
    )
}

/// `<name>-<first 8 hex digits of the UID>`: unique per object (a re-created object of the same
/// name gets a new server), stable across retries, and a DNS label because admission keeps
/// names within 50 characters.
pub fn server_name(name: &str, uid: &str) -> String {
    let uid8: String = uid.chars().filter(char::is_ascii_hexdigit).take(8).collect::<String>().to_ascii_lowercase();
    format!("{name}-{uid8}")
}

/// The ownership labels of an object's server (and a PlainVM's firewall) in `installation`.
/// Every value is a Kubernetes name or UID or an installation, which already fit Hetzner's
/// label rules (at most 63 characters, alphanumerics, `-`, `_`, `.`).
pub fn server_labels(owner: &Owner, product: &str, installation: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (INSTALLATION_LABEL.to_owned(), installation.to_owned()),
        (KIND_LABEL.to_owned(), product.to_owned()),
        (UID_LABEL.to_owned(), owner.uid.clone()),
        (NAMESPACE_LABEL.to_owned(), owner.namespace.clone()),
        (NAME_LABEL.to_owned(), owner.name.clone()),
    ]);
    // A Kubernetes label value: it fits Hetzner's rules as the others do.
    if let Some(shard) = &owner.shard {
        labels.insert(SHARD_LABEL.to_owned(), shard.clone());
    }
    labels
}

/// The labels left on a server after an `Orphan` deletion: the owner's own labels stay, ours
/// go, so neither the fleet list nor the sweeper ever sees it again.
pub fn without_our_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().filter(|(k, _)| !k.starts_with("crabglamp.com/")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Pure: whether `labels` still mark a resource as the object with `uid`'s. A resource found
/// by an id status recorded may have changed hands since (unmarked by an earlier attempt whose
/// answer was lost): only one still carrying the object's UID is ours to change.
pub fn marked_for(labels: &BTreeMap<String, String>, uid: &str) -> bool {
    labels.get(UID_LABEL).is_some_and(|u| u == uid)
}

/// The identity of the object a server belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The object's `crabglamp.com/shard` label: its servers and firewalls carry it too, so
    /// each shard's lists (and sweeper) see only their own.
    pub shard: Option<String>,
}

impl Owner {
    /// From a namespaced object that has been stored (it has a UID).
    pub fn of<K: Resource>(object: &K, kind: &'static str) -> Result<Self, ReconcileError> {
        let meta = object.meta();
        let uid = meta.uid.clone().ok_or(ReconcileError::NotStored("uid"))?;
        let namespace = meta.namespace.clone().ok_or(ReconcileError::NotStored("namespace"))?;
        let shard = meta.labels.as_ref().and_then(|l| l.get(SHARD_LABEL)).cloned();
        Ok(Owner { kind, namespace, name: meta.name.clone().unwrap_or_default(), uid, shard })
    }

    /// `Agent/team-a/research-bot`: what spans and messages name.
    pub fn display(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    /// The audit and usage rows' view of the object.
    pub fn resource_ref(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}
