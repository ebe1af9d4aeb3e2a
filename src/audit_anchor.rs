//! The audit anchor outside PostgreSQL: a ConfigMap in the operator's namespace holding the
//! chain's head under an HMAC (the pure part is [`crate::store::anchor`]). The operator moves it
//! forward after appends and on a timer; `crabglamp-operator audit verify` compares the
//! database with it.
//!
//! The anchor only moves forward, and only along rows that extend it: every write is a
//! create or a replace conditioned on the resourceVersion read (two writers, e.g. a stale
//! leader and a new one, cannot overwrite each other blindly), and before it moves the
//! publisher checks that the database still holds the anchored event and that every newer row
//! links to it. A database that disagrees is never re-anchored: the evidence stays.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use sqlx::PgPool;

use crate::store::StoreError;
use crate::store::anchor::{Anchor, AnchorError, Comparison, compare};
use crate::store::audit::{self, ChainHead, ChainReport, GENESIS_HASH};
use crate::store::seal::SealingKeys;

/// The ConfigMap's name unless configured otherwise (`--anchor-configmap`).
pub const DEFAULT_CONFIGMAP: &str = "crabglamp-audit-anchor";
/// Writes lost to a concurrent writer before a publish gives up until its next turn.
const MAX_ATTEMPTS: usize = 5;

/// Where the anchor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Namespace (the operator's own).
    pub namespace: String,
    /// ConfigMap name.
    pub name: String,
}

impl Location {
    /// `namespace` if given (`--anchor-namespace`, `POD_NAMESPACE`), else the client's default
    /// namespace (the service account's in a cluster, the kubeconfig context's outside);
    /// `name` if given, else [`DEFAULT_CONFIGMAP`].
    pub fn resolve(client: &Client, namespace: Option<&str>, name: Option<&str>) -> Location {
        Location {
            namespace: namespace.filter(|n| !n.is_empty()).unwrap_or(client.default_namespace()).to_owned(),
            name: name.filter(|n| !n.is_empty()).unwrap_or(DEFAULT_CONFIGMAP).to_owned(),
        }
    }

    /// The ConfigMaps of its namespace.
    pub fn api(&self, client: Client) -> Api<ConfigMap> {
        Api::namespaced(client, &self.namespace)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The API server refused or could not be reached.
    #[error("cannot {what} the audit anchor {location}")]
    Kube {
        what: &'static str,
        location: Location,
        #[source]
        source: kube::Error,
    },
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored anchor is malformed, forged or under a key this process lacks.
    #[error("the audit anchor {location} cannot be trusted")]
    Untrusted {
        location: Location,
        #[source]
        source: AnchorError,
    },
    /// The database does not extend the anchor: tampering (or a restore of an older backup).
    #[error(
        "the audit trail does not extend the anchor {location}: {detail}; not re-anchoring (run `crabglamp-operator audit verify`)"
    )]
    Diverged { location: Location, detail: String },
    /// Other writers kept winning.
    #[error("the audit anchor {0} kept changing during the publish; retrying later")]
    Contended(Location),
}

impl PublishError {
    /// `refused` when the anchor or the database shows tampering (a person must look),
    /// `failed` when a retry may succeed.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PublishError::Untrusted { .. } | PublishError::Diverged { .. } => "refused",
            _ => "failed",
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The anchor already held the database's head under the current key.
    Unchanged(i64),
    /// The anchor moved (or was re-made under the current key after a key rotation).
    Moved {
        /// The sequence anchored before (none: the ConfigMap did not exist).
        from: Option<i64>,
        /// The sequence anchored now.
        to: i64,
    },
    /// Other writers kept moving the anchor forward (to `to`) while this one tried: shards or
    /// replicas sharing the trail, each nudged by its own appends. Nothing is lost: whoever
    /// publishes next anchors the head as it is then, this writer included, every resync.
    Overtaken { to: i64 },
}

/// The anchor as read, with what a conditional write needs.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The parsed anchor, or why it does not parse (its MAC is not checked yet).
    pub anchor: Result<Anchor, AnchorError>,
    resource_version: Option<String>,
}

/// Reads the anchor; `None` when the ConfigMap does not exist.
pub async fn read(api: &Api<ConfigMap>, location: &Location) -> Result<Option<Stored>, PublishError> {
    let found = api.get_opt(&location.name).await.map_err(|source| PublishError::Kube {
        what: "read",
        location: location.clone(),
        source,
    })?;
    Ok(found.map(|cm| Stored {
        anchor: Anchor::from_data(&cm.data.unwrap_or_default()),
        resource_version: cm.metadata.resource_version,
    }))
}

/// The stored hash at `seq`; position 0 is the genesis (the empty chain's head).
async fn stored_hash_at(pool: &PgPool, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    if seq == 0 { Ok(Some(GENESIS_HASH.to_vec())) } else { audit::hash_at(pool, seq).await }
}

fn describe(comparison: &Comparison) -> String {
    match comparison {
        Comparison::Extends { behind } => format!("the database extends it by {behind} event(s)"),
        Comparison::Truncated { anchored, last } => {
            format!("it vouches for event {anchored} but the database ends at event {last}")
        }
        Comparison::Rewritten { seq, found: Some(found) } => {
            format!("event {seq} has hash {} in the database, another in the anchor", hex::encode(found))
        }
        Comparison::Rewritten { seq, found: None } => format!("the anchored event {seq} is missing from the database"),
    }
}

fn config_map(location: &Location, anchor: &Anchor, resource_version: Option<String>) -> ConfigMap {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "crabglamp-operator".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "audit-anchor".to_owned()),
    ]);
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(location.name.clone()),
            namespace: Some(location.namespace.clone()),
            labels: Some(labels),
            resource_version,
            ..ObjectMeta::default()
        },
        data: Some(anchor.to_data()),
        ..ConfigMap::default()
    }
}

/// Moves the anchor to the database's head if the database extends it (see the module
/// comment); safe to call from any number of processes at once.
pub async fn publish(
    api: &Api<ConfigMap>,
    location: &Location,
    pool: &PgPool,
    keys: &SealingKeys,
) -> Result<Published, PublishError> {
    let untrusted = |source| PublishError::Untrusted { location: location.clone(), source };
    // The sequences anchored at the first and the latest read: a write lost to a writer that
    // moved the anchor forward is that writer's progress, not this one's failure.
    let mut first_read: Option<Option<i64>> = None;
    let mut latest_read = None;
    for _ in 0..MAX_ATTEMPTS {
        let stored = read(api, location).await?;
        let current = match &stored {
            None => None,
            Some(s) => {
                let anchor = s.anchor.clone().map_err(untrusted)?;
                anchor.verify(keys).map_err(untrusted)?;
                Some(anchor)
            }
        };
        latest_read = current.as_ref().map(|a| a.seq);
        first_read.get_or_insert(latest_read);
        let (from_seq, from_hash) = current.as_ref().map_or((0, GENESIS_HASH.to_vec()), |a| (a.seq, a.hash.clone()));
        let held = stored_hash_at(pool, from_seq).await?;
        if let Some(anchor) = current.as_ref().filter(|a| held.as_deref() != Some(a.hash.as_slice())) {
            let head = audit::head(pool).await?;
            let detail = describe(&compare(anchor, head.as_ref(), held.as_deref()));
            return Err(PublishError::Diverged { location: location.clone(), detail });
        }
        let report = audit::verify_after(pool, from_seq, &from_hash).await?;
        if let Some(broken) = report.first_break {
            let detail = format!("event {}: {}", broken.seq, broken.reason);
            return Err(PublishError::Diverged { location: location.clone(), detail });
        }
        let target = match (report.last_verified, &current) {
            (Some(head), _) => head,
            (None, Some(a)) if a.key_id == keys.current_id() => return Ok(Published::Unchanged(a.seq)),
            // Same head, older key: re-made under the current one so the old key can be retired.
            (None, Some(a)) => ChainHead { seq: a.seq, hash: a.hash.clone(), recorded_at: a.recorded_at },
            // The empty chain is anchored too: from start-up on, a missing anchor is suspicious.
            (None, None) => ChainHead { seq: 0, hash: GENESIS_HASH.to_vec(), recorded_at: chrono::Utc::now() },
        };
        let anchor = Anchor::sign(&target, keys).map_err(untrusted)?;
        let written = match stored {
            None => api.create(&PostParams::default(), &config_map(location, &anchor, None)).await,
            Some(s) => {
                let cm = config_map(location, &anchor, s.resource_version);
                api.replace(&location.name, &PostParams::default(), &cm).await
            }
        };
        match written {
            Ok(_) => return Ok(Published::Moved { from: current.map(|a| a.seq), to: anchor.seq }),
            // Created or changed by another writer since the read: look again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(source) => return Err(PublishError::Kube { what: "write", location: location.clone(), source }),
        }
    }
    match (first_read.flatten(), latest_read) {
        (first, Some(to)) if first.is_none_or(|first| to > first) => Ok(Published::Overtaken { to }),
        _ => Err(PublishError::Contended(location.clone())),
    }
}

/// What the anchor says about the database.
#[derive(Debug, Clone)]
pub enum AnchorCheck {
    /// Not looked at (`--no-anchor`).
    NotChecked,
    /// The ConfigMap does not exist.
    Missing,
    /// It is malformed, forged or under a key not configured.
    Rejected(AnchorError),
    /// It verified; how the database compares.
    Compared { anchor: Anchor, comparison: Comparison },
}

/// The outcome of `audit verify`, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Rows altered or deleted, the tail truncated, the chain rewritten or the anchor forged.
    Tampered,
    /// The chain verifies but the anchor is missing or cannot be checked.
    Unanchored,
    /// The chain verifies and extends the anchor (or the anchor was deliberately skipped).
    Intact,
}

/// The chain walk and the anchor check together.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The walk of every row.
    pub chain: ChainReport,
    /// The database's newest event.
    pub head: Option<ChainHead>,
    /// Where the anchor was looked for (none with `--no-anchor`).
    pub location: Option<Location>,
    /// What the anchor says.
    pub anchor: AnchorCheck,
}

/// Walks the chain and, given the anchor's place and the sealing keys, compares it with the
/// anchor.
pub async fn verify(
    pool: &PgPool,
    anchor: Option<(&Api<ConfigMap>, &Location, &SealingKeys)>,
) -> Result<Verification, PublishError> {
    let chain = audit::verify_chain(pool).await?;
    let head = audit::head(pool).await?;
    let (location, check) = match anchor {
        None => (None, AnchorCheck::NotChecked),
        Some((api, location, keys)) => {
            let check = match read(api, location).await? {
                None => AnchorCheck::Missing,
                Some(stored) => match stored.anchor.and_then(|a| a.verify(keys).map(|()| a)) {
                    Err(e) => AnchorCheck::Rejected(e),
                    Ok(anchor) => {
                        let held = stored_hash_at(pool, anchor.seq).await?;
                        let comparison = compare(&anchor, head.as_ref(), held.as_deref());
                        AnchorCheck::Compared { anchor, comparison }
                    }
                },
            };
            (Some(location.clone()), check)
        }
    };
    Ok(Verification { chain, head, location, anchor: check })
}

impl Verification {
    /// The worst finding.
    pub fn outcome(&self) -> Outcome {
        let anchor = match &self.anchor {
            AnchorCheck::NotChecked | AnchorCheck::Compared { comparison: Comparison::Extends { .. }, .. } => {
                Outcome::Intact
            }
            AnchorCheck::Missing | AnchorCheck::Rejected(AnchorError::UnknownKey(_)) => Outcome::Unanchored,
            AnchorCheck::Rejected(_) | AnchorCheck::Compared { .. } => Outcome::Tampered,
        };
        let chain = if self.chain.first_break.is_some() { Outcome::Tampered } else { Outcome::Intact };
        anchor.min(chain)
    }

    /// What to tell the auditor, one finding a line.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![match &self.chain.first_break {
            None => format!("audit chain intact: {} events verified", self.chain.verified),
            Some(broken) => format!(
                "audit chain BROKEN at event {}: {} ({} events verified before it)",
                broken.seq, broken.reason, self.chain.verified
            ),
        }];
        let place = self.location.as_ref().map(ToString::to_string).unwrap_or_default();
        let last = self.head.as_ref().map_or(0, |h| h.seq);
        match &self.anchor {
            AnchorCheck::NotChecked => lines.push(
                "audit anchor not checked (--no-anchor): a deleted tail or a consistently rewritten chain would go unnoticed"
                    .into(),
            ),
            AnchorCheck::Missing => lines.push(format!(
                "no audit anchor: {place} does not exist, so deleted or rewritten newest events cannot be detected \
                 (the operator creates it at start-up; check --anchor-namespace, or pass --no-anchor to check the chain alone)"
            )),
            AnchorCheck::Rejected(e @ AnchorError::UnknownKey(_)) => {
                lines.push(format!("cannot check the audit anchor in {place}: {e}"));
            }
            AnchorCheck::Rejected(e) => {
                lines.push(format!("audit anchor in {place} REJECTED: {e}; treat the audit trail as rewritten"));
            }
            AnchorCheck::Compared { anchor, comparison } => {
                let what = format!(
                    "the anchor in {place} (event {}, published {}, key {:?})",
                    anchor.seq,
                    anchor.published_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    anchor.key_id
                );
                lines.push(match comparison {
                    Comparison::Extends { behind: 0 } => {
                        format!("audit trail matches {what}: the newest event is anchored")
                    }
                    Comparison::Extends { behind } => format!(
                        "audit trail matches {what}; note: the anchor is {behind} event(s) behind the database \
                         (newest: event {last}), normal while a publish is pending or after a failed one (the operator \
                         retries); events {}..{last} are verified by the chain only",
                        anchor.seq + 1
                    ),
                    Comparison::Truncated { anchored, last } => format!(
                        "audit trail TRUNCATED: {what} vouches for event {anchored} but the database ends at event \
                         {last}: the newest {} event(s) were deleted",
                        anchored - last
                    ),
                    Comparison::Rewritten { seq, found: Some(found) } => format!(
                        "audit trail REWRITTEN: event {seq} has hash {} in the database but {} in {what}: the chain \
                         was recomputed from there or earlier",
                        hex::encode(found),
                        hex::encode(&anchor.hash)
                    ),
                    Comparison::Rewritten { seq, found: None } => {
                        format!("audit trail REWRITTEN: event {seq}, anchored in {what}, is missing from the database")
                    }
                });
            }
        }
        lines
    }
}
