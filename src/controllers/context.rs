//! Everything a reconciler needs, handed in once: the clients, the database, the sealing keys,
//! the event recorder, the shared fleet view, settings and metrics. Reconcilers reach the
//! outside world only through this, which is what makes them testable against stand-ins.

use std::sync::Mutex;

use kube::{Client, Resource};
use sqlx::PgPool;

use crate::cloud::cloudflare::CloudflareClient;
use crate::cloud::hetzner::HetznerClient;
use crate::store::seal::SealingKeys;

use crate::controllers::agent::dns_taken::DnsTaken;
use crate::controllers::anchor::publisher::AnchorPublisher;
use crate::controllers::config::ControllerConfig;
use crate::controllers::fleet::view::Fleet;
use crate::controllers::metrics::ControllerMetrics;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::events::EventPublisher;
use crate::controllers::reconcile::failures::Failures;
use crate::controllers::reconcile::observe::Observer;
use crate::controllers::reconcile::written::WrittenStatuses;
use crate::controllers::server::power_memory::PowerMemory;
use crate::controllers::virtual_key::runtime::KeyRuntime;

/// The outside world's clients, each a cheap handle.
pub struct Clients {
    pub kube: Client,
    pub hetzner: HetznerClient,
    pub cloudflare: CloudflareClient,
    pub db: PgPool,
    pub sealing: SealingKeys,
}

/// What the reconciles of every kind share in memory.
pub struct Shared {
    /// The shared view of the clouds, filled by the refresher's paged lists.
    pub(crate) fleet: Fleet,
    /// The fleet firewall every Agent server is created behind (set once it exists).
    fleet_firewall: Mutex<Option<i64>>,
    /// The controllers' caches, for the objects and queue-depth gauges and readiness.
    pub(crate) observer: Observer,
    /// Publishes the audit chain's head outside the database.
    pub(crate) anchor: AnchorPublisher,
    /// The statuses written and not yet in the controllers' caches.
    pub(crate) written: WrittenStatuses,
}

/// What the controllers tell the outside: metrics and Events.
pub struct Telemetry {
    pub(crate) metrics: ControllerMetrics,
    pub(crate) events: EventPublisher,
}

/// What every reconciler gets: clients, shared state and telemetry, the settings, and the
/// memories each part of the controllers keeps for itself (defined where they are used).
pub struct Context {
    pub(crate) clients: Clients,
    pub(crate) shared: Shared,
    pub(crate) telemetry: Telemetry,
    pub(crate) config: ControllerConfig,
    /// The skeleton's consecutive failures per object (its backoff).
    pub(crate) failures: Failures,
    /// The server machinery's shutdown requests.
    pub(crate) power: PowerMemory,
    /// The Agent's hostnames held by someone else.
    pub(crate) dns_taken: DnsTaken,
    /// The VirtualKey controller's Redis client and spend snapshot (none: it does not run).
    pub(crate) virtual_keys: Option<KeyRuntime>,
}

impl Context {
    /// After an audit append committed: counts it and asks the anchor publisher to move the
    /// chain's head outside the database (every append site calls this, and only this).
    pub fn audit_committed(&self, appended: &crate::store::audit::Appended) {
        self.telemetry.metrics.count_audit(appended);
        self.shared.anchor.nudge();
    }

    pub fn new(clients: Clients, config: ControllerConfig, metrics: ControllerMetrics) -> Self {
        let events = EventPublisher::new(clients.kube.clone(), "crabglamp-operator", config.instance.clone());
        let shared = Shared {
            fleet: Fleet::default(),
            fleet_firewall: Mutex::new(None),
            observer: Observer::default(),
            anchor: AnchorPublisher::new(&clients.kube, &config),
            written: WrittenStatuses::default(),
        };
        Context {
            clients,
            shared,
            telemetry: Telemetry { metrics, events },
            dns_taken: DnsTaken::new(config.resync),
            config,
            failures: Failures::default(),
            power: PowerMemory::default(),
            virtual_keys: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The outside world's clients.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The shared view of the clouds.
    pub fn fleet(&self) -> &Fleet {
        &self.shared.fleet
    }

    /// The controllers' metrics.
    pub fn metrics(&self) -> &ControllerMetrics {
        &self.telemetry.metrics
    }

    /// The controllers' caches (readiness, gauges).
    pub fn observer(&self) -> &Observer {
        &self.shared.observer
    }

    /// The audit anchor's publisher.
    pub fn anchor(&self) -> &AnchorPublisher {
        &self.shared.anchor
    }

    /// The same context with the VirtualKey controller's Redis side.
    pub fn with_virtual_keys(mut self, runtime: KeyRuntime) -> Self {
        self.virtual_keys = Some(runtime);
        self
    }

    /// The VirtualKey controller's Redis side, which runs only with a Redis connection.
    pub fn key_runtime(&self) -> Result<&KeyRuntime, ReconcileError> {
        self.virtual_keys.as_ref().ok_or(ReconcileError::NotReady("a Redis connection (REDIS_URL)"))
    }

    pub fn fleet_firewall(&self) -> Option<i64> {
        *self.shared.fleet_firewall.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_fleet_firewall(&self, id: i64) {
        *self.shared.fleet_firewall.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id);
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
        if let Err(e) = self.telemetry.events.publish(object.object_ref(&()), warning, reason, action, note).await {
            tracing::warn!(error = %e, reason, "cannot publish an Event");
        }
    }
}
