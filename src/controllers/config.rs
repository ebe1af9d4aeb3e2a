//! Settings of the controllers (flags and environment of `crabglamp-operator run`).

use std::time::Duration;

/// Settings of the controllers (flags and environment of `crabglamp-operator run`).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The Cloudflare zone's name (`CLOUDFLARE_ZONE_NAME`): default hostnames live in it.
    pub zone_name: String,
    /// How often settled objects and the shared lists are looked at again.
    pub resync: Duration,
    /// How often the shared lists run while some object waits for the cloud.
    pub fast_poll: Duration,
    /// How long a guest may take to obey an ACPI shutdown before a hard power-off.
    pub shutdown_timeout: Duration,
    /// How long the removal of a server waits for it to settle in a power state (a create or
    /// power action still running), so that the usage timeline sees the transition the action
    /// makes before the removal ends it. Longer than any create, boot or power action takes.
    pub removal_settle_timeout: Duration,
    /// How long a labelled resource without an object must stay so before the sweeper
    /// removes it (covers an object whose watch event has not arrived yet).
    pub sweeper_grace: Duration,
    /// Firewall rules are re-read every this many resyncs: the fleet firewall's and, in one
    /// shared list, every PlainVM's (a firewall's attachment is visible in every server list
    /// already, so only a rule edited in the console waits this long to be set back).
    pub firewall_audit_every: u32,
    /// Longest per-object retry delay after repeated failures.
    pub max_backoff: Duration,
    /// Only objects with this value of the label `crabglamp.com/shard`; none: only objects
    /// without that label (so a sharded and an unsharded deployment never share an object).
    pub shard: Option<String>,
    /// Watch and reconcile this namespace only (none: all namespaces).
    pub watch_namespace: Option<String>,
    /// This installation's identity, carried in every mark the operator puts on a cloud
    /// resource (see [`crate::controllers::server::installation`]). None: derived from the cluster when the
    /// operator connects ([`crate::operator::connect`] always sets it).
    pub installation: Option<String>,
    /// The namespaces VirtualKeys are served in, one Secret watch each (none: every watched
    /// namespace, Secrets watched cluster-wide). The chart grants Secrets there only.
    pub virtual_key_namespaces: Option<Vec<String>>,
    /// Name of this instance in Events (`reportingInstance`), e.g. the pod name.
    pub instance: String,
    /// Prefix of every Redis name the VirtualKey controller reads or writes (the contract's
    /// `{ns}`; tests give each run its own).
    pub redis_namespace: String,
    /// VirtualKeys per Redis round trip in the spend refresher (at most: halved while a batch
    /// outlasts the response deadline).
    pub redis_batch: usize,
    /// How long the Redis clients wait for an answer before giving up on it.
    pub redis_response_deadline: Duration,
    /// Reconciles of one kind running at once. Bounded so that a burst (a thousand objects
    /// applied at once, or every object after a restart) queues in the controller instead of
    /// in the database pool: unbounded, each reconcile's several pool acquisitions wait behind
    /// all the others, time out, and almost none completes end to end.
    pub concurrency: u16,
    /// Namespace of the audit anchor ConfigMap (none: the client's default namespace, which
    /// in a cluster is the operator's own).
    pub anchor_namespace: Option<String>,
    /// Name of the audit anchor ConfigMap.
    pub anchor_configmap: String,
}

impl ControllerConfig {
    /// This installation's identity (set once the operator connected).
    pub fn installation(&self) -> &str {
        self.installation.as_deref().unwrap_or_default()
    }

    /// Defaults for production: a five-minute resync, a two-minute ACPI timeout.
    pub fn new(zone_name: impl Into<String>) -> Self {
        ControllerConfig {
            zone_name: zone_name.into(),
            resync: Duration::from_secs(300),
            fast_poll: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(120),
            removal_settle_timeout: Duration::from_secs(600),
            sweeper_grace: Duration::from_secs(600),
            firewall_audit_every: 12,
            max_backoff: Duration::from_secs(300),
            shard: None,
            watch_namespace: None,
            installation: None,
            virtual_key_namespaces: None,
            instance: "crabglamp-operator".into(),
            redis_namespace: "cgk:".into(),
            redis_batch: 500,
            redis_response_deadline: crate::cache::DEFAULT_RESPONSE_DEADLINE,
            concurrency: 16,
            anchor_namespace: None,
            anchor_configmap: crate::audit_anchor::DEFAULT_CONFIGMAP.into(),
        }
    }
}
