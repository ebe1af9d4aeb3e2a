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
use crate::controllers::config::ControllerConfig;
use crate::controllers::fleet::view::Fleet;
use crate::controllers::metrics::ControllerMetrics;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::failures::Failures;
use crate::controllers::server::power_memory::PowerMemory;
use crate::controllers::virtual_key::runtime::KeyRuntime;

/// What every reconciler gets.
pub struct Context {
    pub client: Client,
    pub hetzner: HetznerClient,
    pub cloudflare: CloudflareClient,
    pub db: PgPool,
    pub sealing: SealingKeys,
    pub events: crate::controllers::reconcile::events::EventPublisher,
    pub config: ControllerConfig,
    pub fleet: Fleet,
    pub power: PowerMemory,
    pub failures: Failures,
    pub dns_taken: DnsTaken,
    pub metrics: ControllerMetrics,
    /// The fleet firewall every Agent server is created behind (set once it exists).
    pub fleet_firewall: Mutex<Option<i64>>,
    /// The VirtualKey controller's Redis client and spend snapshot (none: it does not run).
    pub virtual_keys: Option<KeyRuntime>,
    /// The controllers' caches, for the objects and queue-depth gauges and readiness.
    pub observer: crate::controllers::reconcile::observe::Observer,
    /// Publishes the audit chain's head outside the database.
    pub anchor: crate::controllers::anchor::publisher::AnchorPublisher,
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
        let anchor = crate::controllers::anchor::publisher::AnchorPublisher::new(&client, &config);
        Context {
            anchor,
            events: crate::controllers::reconcile::events::EventPublisher::new(
                client.clone(),
                "crabglamp-operator",
                config.instance.clone(),
            ),
            client,
            hetzner,
            cloudflare,
            db,
            sealing,
            config,
            fleet: Fleet::default(),
            power: PowerMemory::default(),
            failures: Failures::default(),
            dns_taken: DnsTaken::new(dns_retry_after),
            metrics,
            fleet_firewall: Mutex::new(None),
            virtual_keys: None,
            observer: crate::controllers::reconcile::observe::Observer::default(),
        }
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
