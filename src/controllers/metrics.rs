//! The controllers' Prometheus metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// Filled from the controllers' caches at each scrape ([`crate::controllers::reconcile::observe`]).
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
