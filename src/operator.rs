//! Wiring of `crabglamp-operator run`: builds the clients, the database pool and the sealing
//! keys from settings (flags or environment, SPEC section 6), then runs the controllers until
//! told to stop. The sandbox calls the same functions with its stand-ins' endpoints, so both
//! paths build the operator the same way.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::cloud::cloudflare::{CloudflareClient, CloudflareConfig};
use crate::cloud::hetzner::{HetznerClient, HetznerConfig};
use crate::cloud::{CloudMetrics, RateLimiter};
use crate::controllers::{self, Context, ControllerConfig, ControllerMetrics};
use crate::store::{self, seal::SealingKeys};

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot configure the Kubernetes client: {0}")]
    Kube(String),
    #[error("cannot configure a cloud client: {0}")]
    Cloud(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("sealing key: {0}")]
    Sealing(#[from] store::seal::SealError),
    #[error(transparent)]
    Redis(#[from] crate::cache::CacheError),
}

/// Everything `run` needs besides the Kubernetes client.
#[derive(Clone, Debug)]
pub struct OperatorSettings {
    pub database_url: String,
    /// Redis of the LLM proxy (none: the VirtualKey controller does not run).
    pub redis_url: Option<String>,
    pub hetzner: HetznerConfig,
    pub cloudflare: CloudflareConfig,
    pub controllers: ControllerConfig,
    /// The Hetzner project's requests per hour (3600 unless Hetzner raised it).
    pub hetzner_requests_per_hour: u32,
    /// The Cloudflare token's requests per five minutes (1200 unless the plan raises it).
    pub cloudflare_requests_per_5min: u32,
}

/// The operator, connected: the reconcilers' context and the metrics registry.
pub struct Connected {
    pub context: Arc<Context>,
    pub registry: Registry,
}

/// Connects to PostgreSQL (and checks its schema is migrated), builds both cloud clients on
/// their shared rate budgets.
pub async fn connect(
    client: kube::Client,
    settings: OperatorSettings,
    sealing: SealingKeys,
) -> Result<Connected, StartError> {
    let mut registry = Registry::with_prefix("crabglamp");
    let cloud_metrics = CloudMetrics::register(&mut registry);
    let metrics = ControllerMetrics::register(&mut registry);
    let db = store::connect(&settings.database_url, 8).await?;
    let hetzner = HetznerClient::new(
        settings.hetzner,
        Arc::new(RateLimiter::new(settings.hetzner_requests_per_hour.max(1), Duration::from_secs(3600))),
        cloud_metrics.clone(),
    )
    .map_err(|e| StartError::Cloud(e.to_string()))?;
    let cloudflare = CloudflareClient::new(
        settings.cloudflare,
        Arc::new(RateLimiter::cloudflare(settings.cloudflare_requests_per_5min.max(1))),
        cloud_metrics,
    )
    .map_err(|e| StartError::Cloud(e.to_string()))?;
    let virtual_keys = match &settings.redis_url {
        Some(url) => Some(
            controllers::virtual_key::connect_runtime(
                url,
                &settings.controllers.redis_namespace,
                settings.controllers.redis_batch,
            )
            .await?,
        ),
        None => None,
    };
    let mut context = Context::new(client, hetzner, cloudflare, db, sealing, settings.controllers, metrics);
    if let Some(runtime) = virtual_keys {
        context = context.with_virtual_keys(runtime);
    }
    Ok(Connected { context: Arc::new(context), registry })
}

/// Runs the controllers until `stop` turns true, then waits at most `drain` for in-flight
/// reconciles to finish.
pub async fn run(context: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>, drain: Duration) {
    let mut watch_stop = stop.clone();
    // Dropping this future (a crash of its task) aborts the controllers with it.
    let mut task = controllers::AbortOnDrop::spawn(controllers::run(context, stop));
    tokio::select! {
        _ = task.join() => return,
        _ = async { while !*watch_stop.borrow() { if watch_stop.changed().await.is_err() { break; } } } => {}
    }
    if tokio::time::timeout(drain, task.join()).await.is_err() {
        tracing::warn!(?drain, "in-flight reconciles did not finish in time; exiting anyway");
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C (SIGINT).
pub async fn wait_for_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        // No SIGTERM handler can be installed: Ctrl-C still works.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
