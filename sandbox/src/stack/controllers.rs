//! The operator's controllers, in the sandbox's own process, pointed at its stand-ins: the
//! same `crabglamp_operator::operator` wiring `crabglamp-operator run` uses, with timings
//! divided by the sandbox's time scale so the demo moves at the simulated clouds' pace.
//! It never reaches past the sandbox's own endpoints.

use std::time::Duration;

use crabglamp_operator::cloud::cloudflare::CloudflareConfig;
use crabglamp_operator::cloud::hetzner::HetznerConfig;
use crabglamp_operator::controllers::{AbortOnDrop, ControllerConfig};
use crabglamp_operator::operator::{self, OperatorSettings, StartError};
use crabglamp_operator::store::seal::SealingKeys;

use crate::time_scale::scaled;

/// The controllers running in-process; dropping it aborts them, [`InProcess::stop`] lets
/// in-flight reconciles finish.
pub struct InProcess {
    stop: tokio::sync::watch::Sender<bool>,
    task: AbortOnDrop,
}

impl InProcess {
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        self.task.join().await;
    }
}

/// Where the controllers reach the sandbox's services and stand-ins: what `sandbox.json`
/// tells `crabglamp-operator run`.
pub struct Reach {
    pub database_url: String,
    pub redis_url: String,
    pub hetzner: HetznerConfig,
    pub cloudflare: CloudflareConfig,
    /// The Cloudflare zone the Agents' hostnames live in.
    pub zone_name: String,
}

/// The settings `crabglamp-operator run` would get from the sandbox's `sandbox.json`, with
/// production timings divided by `time_scale`.
pub fn settings(reach: Reach, time_scale: f64) -> OperatorSettings {
    let mut controllers = ControllerConfig::new(reach.zone_name);
    controllers.resync = scaled(controllers.resync, time_scale).max(Duration::from_secs(2));
    controllers.fast_poll = scaled(controllers.fast_poll, time_scale).max(Duration::from_millis(100));
    controllers.shutdown_timeout = scaled(controllers.shutdown_timeout, time_scale);
    controllers.removal_settle_timeout = scaled(controllers.removal_settle_timeout, time_scale);
    controllers.sweeper_grace = scaled(controllers.sweeper_grace, time_scale);
    controllers.instance = "crabglamp-sandbox".into();
    OperatorSettings {
        database_url: reach.database_url,
        redis_url: Some(reach.redis_url),
        hetzner: reach.hetzner,
        cloudflare: reach.cloudflare,
        controllers,
        // The simulated budgets refill `time_scale` times faster; so may ours.
        hetzner_requests_per_hour: (3600.0 * time_scale.max(1.0)) as u32,
        cloudflare_requests_per_5min: (1200.0 * time_scale.max(1.0)) as u32,
    }
}

/// Starts the controllers against the sandbox's API server (`client`) and stand-ins.
pub async fn start(
    client: kube::Client,
    reach: Reach,
    keys: SealingKeys,
    time_scale: f64,
) -> Result<InProcess, StartError> {
    let connected = operator::connect(client, settings(reach, time_scale), keys).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = AbortOnDrop::spawn(operator::run(connected.context, stop_rx, Duration::from_secs(10)));
    Ok(InProcess { stop, task })
}
