//! Everything a reconciler needs, handed in once: the clients, the database, the sealing keys,
//! the event recorder, the shared fleet view, settings and metrics. Reconcilers reach the
//! outside world only through this, which is what makes them testable against stand-ins.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::cloud::cloudflare::CloudflareClient;
use crate::cloud::hetzner::HetznerClient;
use crate::store::seal::SealingKeys;

use super::fleet::Fleet;

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
    /// resource (see [`super::installation`]). None: derived from the cluster when the
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

/// When this process asked a guest to shut down (per owner UID). Kept in memory on purpose:
/// after a restart the operator asks again and the timeout starts anew, which costs one
/// request and at worst delays the hard power-off by one timeout.
#[derive(Debug, Default)]
pub struct PowerMemory {
    shutdowns: Mutex<HashMap<String, Instant>>,
}

impl PowerMemory {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> R) -> R {
        f(&mut self.shutdowns.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn shutdown_sent(&self, uid: &str, at: Instant) {
        self.with(|m| m.insert(uid.to_owned(), at));
    }

    pub fn shutdown_sent_at(&self, uid: &str) -> Option<Instant> {
        self.with(|m| m.get(uid).copied())
    }

    pub fn forget(&self, uid: &str) {
        self.with(|m| m.remove(uid));
    }
}

/// Hostnames refused because a record we do not own holds them (per owner UID), so the
/// reconciler tries again only after a resync period, not on every pass.
#[derive(Debug, Default)]
pub struct DnsTaken {
    refused: Mutex<HashMap<String, (String, Instant)>>,
    retry_after: Duration,
}

impl DnsTaken {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>) -> R) -> R {
        f(&mut self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn taken(&self, uid: &str, hostname: &str) {
        self.with(|m| m.insert(uid.to_owned(), (hostname.to_owned(), Instant::now())));
    }

    /// The refused hostname, while the refusal is fresh.
    pub fn get(&self, uid: &str) -> Option<String> {
        let retry_after = self.retry_after;
        self.with(|m| m.get(uid).filter(|(_, at)| at.elapsed() < retry_after).map(|(h, _)| h.clone()))
    }

    pub fn clear(&self, uid: &str) {
        self.with(|m| m.remove(uid));
    }
}

/// Consecutive failures per object, for capped exponential backoff.
#[derive(Debug, Default)]
pub struct Failures {
    counts: Mutex<HashMap<String, u32>>,
}

impl Failures {
    /// Counts one more failure; returns how many in a row.
    pub fn failed(&self, uid: &str) -> u32 {
        let mut m = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(uid.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn succeeded(&self, uid: &str) {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(uid);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcome {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStep {
    kind: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindPhase {
    pub(crate) kind: String,
    pub(crate) phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Swept {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditType {
    event_type: String,
}

/// Reconcile durations from 5 ms (a settled object) to about 80 s (a slow cloud step).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The controllers' Prometheus metrics. Clones share the counters.
///
/// Registered without a prefix of their own: the registry's prefix (`crabglamp`, see
/// [`crate::operator::connect`]) makes `crabglamp_reconciles_total` and so on.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    reconciles: Family<KindOutcome, Counter>,
    reconcile_duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    steps: Family<KindStep, Counter>,
    swept: Family<Swept, Counter>,
    sweeps: Counter,
    status_writes: Family<KindStep, Counter>,
    audit_events: Family<AuditType, Counter>,
    /// Filled from the controllers' caches at each scrape ([`super::observe`]).
    pub(crate) objects: Family<KindPhase, Gauge>,
    pub(crate) queue_depth: Family<KindLabel, Gauge>,
    leader: Gauge,
    anchor_publishes: Family<Outcome, Counter>,
    anchored_seq: Gauge,
    refresh_failures: Family<Reason, Counter>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            steps: Family::default(),
            swept: Family::default(),
            sweeps: Counter::default(),
            status_writes: Family::default(),
            audit_events: Family::default(),
            objects: Family::default(),
            queue_depth: Family::default(),
            leader: Gauge::default(),
            anchor_publishes: Family::default(),
            anchored_seq: Gauge::default(),
            refresh_failures: Family::default(),
        }
    }
}

impl ControllerMetrics {
    /// Registered in `registry` (whose prefix names them).
    pub fn register(registry: &mut Registry) -> Self {
        let m = ControllerMetrics::default();
        registry.register("reconciles", "Reconciles by kind and outcome", m.reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile took, by kind",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Objects waiting for a reconcile (changed since their last one started, or never reconciled)",
            m.queue_depth.clone(),
        );
        registry.register("objects", "Objects in the controllers' caches, by kind and phase", m.objects.clone());
        registry.register("steps", "Changes made in the outside world, by kind and step", m.steps.clone());
        registry.register("swept", "Orphaned resources removed by the sweeper", m.swept.clone());
        registry.register("sweeps", "Sweeps the orphan sweeper completed", m.sweeps.clone());
        registry.register("status_writes", "Status patches, by kind", m.status_writes.clone());
        registry.register("audit_events", "Audit events written, by event type", m.audit_events.clone());
        registry.register("leader", "1 while this instance leads (runs the controllers)", m.leader.clone());
        // Every series exists from the start at 0 (an empty family is not exposed at all), so
        // dashboards and rate() see the first removal or event.
        for resource in ["server", "firewall", "tunnel", "dns"] {
            let _ = m.swept.get_or_create(&Swept { resource: resource.into() });
        }
        use crate::store::audit::AuditKind;
        for kind in [
            AuditKind::AgentTransferred,
            AuditKind::AgentDestroyed,
            AuditKind::PlainVmDestroyed,
            AuditKind::VirtualKeyIssued,
            AuditKind::VirtualKeyRotated,
            AuditKind::VirtualKeyRevoked,
            AuditKind::VirtualKeyTransferred,
        ] {
            let _ = m.audit_events.get_or_create(&AuditType { event_type: kind.as_str().into() });
        }
        registry.register(
            "spend_refresh_failures",
            "Spend refresh failures: per key and pass for one key's unreadable data (MalformedCounter, \
             MalformedUsage, WrongType, ModelTooLong, ReadTimeout), per pass for a pass that failed (pass, sweep)",
            m.refresh_failures.clone(),
        );
        for reason in
            ["pass", "sweep", "MalformedCounter", "MalformedUsage", "WrongType", "ModelTooLong", "ReadTimeout"]
        {
            let _ = m.refresh_failures.get_or_create(&Reason { reason: reason.into() });
        }
        registry.register(
            "audit_anchor_publishes",
            "Audit anchor publishes by outcome (published, unchanged, failed, refused)",
            m.anchor_publishes.clone(),
        );
        registry.register(
            "audit_anchored_seq",
            "Sequence number of the audit event the anchor outside the database vouches for",
            m.anchored_seq.clone(),
        );
        m
    }

    /// One finished reconcile: its outcome and how long it took.
    pub fn count_reconcile(&self, kind: &str, outcome: &str, took: Duration) {
        self.reconciles.get_or_create(&KindOutcome { kind: kind.into(), outcome: outcome.into() }).inc();
        self.reconcile_duration.get_or_create(&KindLabel { kind: kind.into() }).observe(took.as_secs_f64());
    }

    /// Reconciles of a kind so far with this outcome (tests, benchmarks).
    pub fn reconciles(&self, kind: &str, outcome: &str) -> u64 {
        self.reconciles.get_or_create(&KindOutcome { kind: kind.into(), outcome: outcome.into() }).get()
    }

    pub fn count_step(&self, kind: &str, step: &str) {
        self.steps.get_or_create(&KindStep { kind: kind.into(), step: step.into() }).inc();
    }

    pub fn count_status_write(&self, kind: &str) {
        self.status_writes.get_or_create(&KindStep { kind: kind.into(), step: "status".into() }).inc();
    }

    pub fn count_swept(&self, resource: &str) {
        self.swept.get_or_create(&Swept { resource: resource.into() }).inc();
    }

    /// An audit append that wrote a row (a retried one that found its event is not counted).
    pub fn count_audit(&self, appended: &crate::store::audit::Appended) {
        if let crate::store::audit::Appended::Recorded(event) = appended {
            self.audit_events.get_or_create(&AuditType { event_type: event.kind.clone() }).inc();
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Whether this instance says it leads (tests).
    pub fn leading(&self) -> bool {
        self.leader.get() == 1
    }

    pub fn count_anchor_publish(&self, outcome: &str) {
        self.anchor_publishes.get_or_create(&Outcome { outcome: outcome.into() }).inc();
    }

    pub fn set_anchored_seq(&self, seq: i64) {
        self.anchored_seq.set(seq);
    }

    /// Anchor publishes with this outcome so far (tests).
    pub fn anchor_publishes(&self, outcome: &str) -> u64 {
        self.anchor_publishes.get_or_create(&Outcome { outcome: outcome.into() }).get()
    }

    /// A spend refresh failure: one key's unreadable data, or a whole pass.
    pub fn count_refresh_failure(&self, reason: &str) {
        self.refresh_failures.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// Spend refresh failures with this reason so far (tests).
    pub fn refresh_failures(&self, reason: &str) -> u64 {
        self.refresh_failures.get_or_create(&Reason { reason: reason.into() }).get()
    }

    /// Current value of a step counter (tests, benchmarks).
    pub fn steps(&self, kind: &str, step: &str) -> u64 {
        self.steps.get_or_create(&KindStep { kind: kind.into(), step: step.into() }).get()
    }

    /// Status patches made for a kind so far (tests, benchmarks).
    pub fn status_writes(&self, kind: &str) -> u64 {
        self.status_writes.get_or_create(&KindStep { kind: kind.into(), step: "status".into() }).get()
    }

    /// One sweep over the fleet view done.
    pub fn count_sweep(&self) {
        self.sweeps.inc();
    }

    /// Sweeps done so far (tests: "after many sweeps").
    pub fn sweeps(&self) -> u64 {
        self.sweeps.get()
    }

    /// Resources the sweeper removed so far.
    pub fn swept(&self, resource: &str) -> u64 {
        self.swept.get_or_create(&Swept { resource: resource.into() }).get()
    }
}

/// What every reconciler gets.
pub struct Context {
    pub client: Client,
    pub hetzner: HetznerClient,
    pub cloudflare: CloudflareClient,
    pub db: PgPool,
    pub sealing: SealingKeys,
    pub events: super::events::EventPublisher,
    pub config: ControllerConfig,
    pub fleet: Fleet,
    pub power: PowerMemory,
    pub failures: Failures,
    pub dns_taken: DnsTaken,
    pub metrics: ControllerMetrics,
    /// The fleet firewall every Agent server is created behind (set once it exists).
    pub fleet_firewall: Mutex<Option<i64>>,
    /// The VirtualKey controller's Redis client and spend snapshot (none: it does not run).
    pub virtual_keys: Option<super::virtual_key::KeyRuntime>,
    /// The controllers' caches, for the objects and queue-depth gauges and readiness.
    pub observer: super::observe::Observer,
    /// Publishes the audit chain's head outside the database.
    pub anchor: super::anchor::AnchorPublisher,
}

impl Context {
    /// After an audit append committed: counts it and asks the anchor publisher to move the
    /// chain's head outside the database (every append site calls this, and only this).
    pub fn audit_committed(&self, appended: &crate::store::audit::Appended) {
        self.metrics.count_audit(appended);
        self.anchor.nudge();
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        hetzner: HetznerClient,
        cloudflare: CloudflareClient,
        db: PgPool,
        sealing: SealingKeys,
        config: ControllerConfig,
        metrics: ControllerMetrics,
    ) -> Self {
        let dns_retry_after = config.resync;
        let anchor = super::anchor::AnchorPublisher::new(&client, &config);
        Context {
            anchor,
            events: super::events::EventPublisher::new(client.clone(), "crabglamp-operator", config.instance.clone()),
            client,
            hetzner,
            cloudflare,
            db,
            sealing,
            config,
            fleet: Fleet::default(),
            power: PowerMemory::default(),
            failures: Failures::default(),
            dns_taken: DnsTaken { refused: Mutex::default(), retry_after: dns_retry_after },
            metrics,
            fleet_firewall: Mutex::new(None),
            virtual_keys: None,
            observer: super::observe::Observer::default(),
        }
    }

    /// The same context with the VirtualKey controller's Redis side.
    pub fn with_virtual_keys(mut self, runtime: super::virtual_key::KeyRuntime) -> Self {
        self.virtual_keys = Some(runtime);
        self
    }

    pub fn fleet_firewall(&self) -> Option<i64> {
        *self.fleet_firewall.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_fleet_firewall(&self, id: i64) {
        *self.fleet_firewall.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id);
    }

    /// Publishes a Kubernetes Event about `object`; a failure is logged, never fatal (the
    /// change it reports has happened either way).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if let Err(e) = self.events.publish(object.object_ref(&()), warning, reason, action, note).await {
            tracing::warn!(error = %e, reason, "cannot publish an Event");
        }
    }
}
