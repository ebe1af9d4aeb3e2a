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
use crate::controllers::context::Clients;
use crate::controllers::{self, AbortOnDrop, Context, ControllerConfig, ControllerMetrics};
use crate::endpoints::{self, Endpoints, Health};
use crate::leader::{Elector, LeaseConfig, Standing};
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
    #[error(transparent)]
    Installation(#[from] controllers::installation::InstallationError),
}

/// How long the API server may take to accept a connection.
pub const KUBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent while an answer is awaited: a request on a half-open
/// connection fails after this instead of never (which would wedge its object's reconciles,
/// one at a time per object, until a restart). A watch is silent between events for up to its
/// server-side timeout ([`crate::controllers::WATCH_TIMEOUT_SECS`]; the API server then ends
/// it), so this must be longer or every quiet watch would break; kube-runtime's own idle
/// timeout on a watch (its timeout plus 5 s) also comes first. The Lease is not left to this:
/// the elector bounds its requests by the renew deadline itself.
pub const KUBE_READ_TIMEOUT: Duration = Duration::from_secs(crate::controllers::WATCH_TIMEOUT_SECS as u64 + 15);

/// The operator's Kubernetes client settings: the timeouts above, and the read timeout counted
/// from the request (not from when a pooled connection went idle).
pub fn with_timeouts(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(KUBE_CONNECT_TIMEOUT);
    config.read_timeout = Some(KUBE_READ_TIMEOUT);
    config.reset_reader_on_write = true;
    config
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

/// Resolves the installation identity (configured, or derived from the cluster), connects to
/// PostgreSQL, builds both cloud clients on their shared rate budgets. Never migrates: the
/// owner runs `migrate`, so the operator's role needs no right to create anything (see the
/// README's "Least privilege on a managed PostgreSQL").
pub async fn connect(
    client: kube::Client,
    mut settings: OperatorSettings,
    sealing: SealingKeys,
) -> Result<Connected, StartError> {
    let installation =
        controllers::installation::resolve(&client, settings.controllers.installation.as_deref()).await?;
    tracing::info!(%installation, "installation identity");
    settings.controllers.installation = Some(installation);
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
                settings.controllers.redis_response_deadline,
            )
            .await?,
        ),
        None => None,
    };
    let clients = Clients { kube: client, hetzner, cloudflare, db, sealing };
    let mut context = Context::new(clients, settings.controllers, metrics);
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

/// How one instance runs besides its settings: alone or elected, with or without endpoints.
#[derive(Debug)]
pub struct InstanceOptions {
    /// Take part in leader election on this Lease (none: lead alone, as the sandbox and the
    /// tests do).
    pub election: Option<LeaseConfig>,
    /// Serve `/metrics`, `/healthz`, `/readyz` here (none: no endpoints).
    pub endpoints: Option<tokio::net::TcpListener>,
    /// How long in-flight reconciles may take to finish after the stop.
    pub drain: Duration,
}

/// How an instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Told to stop: the controllers drained and the Lease (if held) was released.
    Stopped,
    /// The Lease was lost: the controllers and every reconcile in flight were cancelled at the
    /// renew deadline, before a standby may take over. The process should exit so that it
    /// comes back as a standby.
    LostLeadership,
}

/// Waits until the elector says this instance no longer leads (a closed channel means the
/// elector is gone: a loss too). The elector says so at the renew deadline at the latest.
async fn lost(standing: &mut tokio::sync::watch::Receiver<Standing>) {
    // The guard is dropped inside: none is held across an await.
    let _ = standing.wait_for(|s| !s.leading).await;
}

/// Waits until `stop` turns true or its sender is gone.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Whether the instance could do its work now (see [`crate::endpoints`] for what each part
/// means); `reachable`: the API server answered the elector's last look (none: no election).
async fn readiness(ctx: &Context, leading: bool, reachable: Option<bool>) -> Result<(), String> {
    let ping = tokio::time::timeout(Duration::from_secs(5), sqlx::query("SELECT 1").execute(&ctx.clients.db)).await;
    match ping {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("PostgreSQL does not answer: {e}")),
        Err(_) => return Err("PostgreSQL does not answer within 5 s".into()),
    }
    if reachable == Some(false) {
        return Err("the Kubernetes API server did not answer the last look at the Lease".into());
    }
    if leading && !ctx.shared.observer.synced() {
        return Err("the controllers' caches have not seen their first complete lists yet".into());
    }
    Ok(())
}

/// Beats the liveness clock and re-judges readiness every second until dropped.
async fn supervise(ctx: Arc<Context>, health: Arc<Health>, standing: Option<tokio::sync::watch::Receiver<Standing>>) {
    loop {
        health.beat();
        let (leading, reachable) = match &standing {
            Some(s) => {
                let now = *s.borrow();
                (now.leading, Some(now.reachable))
            }
            None => (true, None),
        };
        health.set_ready(readiness(&ctx, leading, reachable).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs one instance until `stop` turns true (SIGTERM in `run`) or, when elected, until it
/// loses the Lease. Elected, it first waits as a standby; only the holder of the Lease runs
/// the controllers. On the stop the leader starts no new reconcile, lets in-flight ones finish
/// (at most `drain`, and never past the Lease), then releases the Lease so that a standby takes
/// over at its next look. On a lost Lease it cancels the controllers at once.
pub async fn run_instance(
    connected: Connected,
    options: InstanceOptions,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Ending {
    let Connected { context, registry } = connected;
    let health = Arc::new(Health::default());
    let mut stop = stop;
    let _endpoints = options.endpoints.map(|listener| {
        let endpoints = Arc::new(Endpoints { registry, context: Arc::clone(&context), health: Arc::clone(&health) });
        // Served until the instance ends (dropping the handle aborts it), so a draining
        // instance still answers its probes.
        AbortOnDrop::spawn(endpoints::serve(listener, endpoints))
    });
    let Some(lease) = options.election else {
        let _supervisor = AbortOnDrop::spawn(supervise(Arc::clone(&context), Arc::clone(&health), None));
        context.telemetry.metrics.set_leader(true);
        run(Arc::clone(&context), stop, options.drain).await;
        context.telemetry.metrics.set_leader(false);
        return Ending::Stopped;
    };
    let (standing_tx, mut standing) = tokio::sync::watch::channel(Standing::default());
    let (release, release_rx) = tokio::sync::watch::channel(false);
    tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "standing by for the lease");
    let mut campaign =
        AbortOnDrop::spawn(Elector::new(context.clients.kube.clone(), lease).campaign(standing_tx, release_rx));
    let _supervisor = AbortOnDrop::spawn(supervise(Arc::clone(&context), Arc::clone(&health), Some(standing.clone())));

    // Standby: nothing runs but the elector until this instance leads.
    // (The watch guards are dropped inside the async blocks: none is held across an await.)
    let leading = tokio::select! {
        became = async { standing.wait_for(|s| s.leading).await.is_ok() } => became,
        _ = stopped(&mut stop) => false,
    };
    let mut ending = Ending::Stopped;
    if leading {
        context.telemetry.metrics.set_leader(true);
        let (halt, halt_rx) = tokio::sync::watch::channel(false);
        // Dropping this future cancels the controllers and every reconcile in flight (they
        // are aborted, not drained): what a lost lease calls for.
        let mut controllers = Box::pin(run(Arc::clone(&context), halt_rx, options.drain));
        tokio::select! {
            _ = &mut controllers => {}
            _ = lost(&mut standing) => ending = Ending::LostLeadership,
            _ = stopped(&mut stop) => {
                let _ = halt.send(true);
                // Drained while the Lease is still ours, never past it.
                tokio::select! {
                    _ = &mut controllers => {}
                    _ = lost(&mut standing) => ending = Ending::LostLeadership,
                }
            }
        }
        if ending == Ending::LostLeadership {
            drop(controllers);
            tracing::warn!("lost the lease: cancelled the controllers and the reconciles in flight");
        }
        context.telemetry.metrics.set_leader(false);
    }
    // Only now, with every reconcile finished, may another instance take over.
    let _ = release.send(true);
    campaign.join().await;
    ending
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_timeout_outlasts_a_quiet_watch() {
        // A watch may carry nothing until the API server ends it, and kube-runtime's own idle
        // timeout (the watch's timeout plus 5 s) must fire before the read timeout would.
        let quiet = Duration::from_secs(u64::from(crate::controllers::WATCH_TIMEOUT_SECS)) + Duration::from_secs(5);
        assert!(KUBE_READ_TIMEOUT > quiet);
        let config = with_timeouts(kube::Config::new("https://127.0.0.1:6443".parse().expect("url")));
        assert_eq!(config.read_timeout, Some(KUBE_READ_TIMEOUT));
        assert_eq!(config.connect_timeout, Some(KUBE_CONNECT_TIMEOUT));
        assert!(config.reset_reader_on_write);
    }
}
