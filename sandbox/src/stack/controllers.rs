//! The operator's controllers, in the sandbox's own process, pointed at its stand-ins: the
//! same `crabglamp_operator::operator` wiring `crabglamp-operator run` uses, with timings
//! divided by the sandbox's time scale so the demo moves at the simulated clouds' pace.
//! It never reaches past the sandbox's own endpoints.

use std::time::Duration;

use crabglamp_operator::cloud::cloudflare::CloudflareConfig;
use crabglamp_operator::cloud::hetzner::HetznerConfig;
use crabglamp_operator::controllers::{AbortOnDrop, ControllerConfig};
use crabglamp_operator::operator::{self, OperatorSettings, StartError};

use super::Sandbox;
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

/// The settings `crabglamp-operator run` would get from the sandbox's `sandbox.json`, with
/// production timings divided by `time_scale`.
pub fn settings(sandbox: &Sandbox, time_scale: f64) -> OperatorSettings {
    let mut controllers = ControllerConfig::new(sandbox.cloudflare_config.zone_name.clone());
    controllers.resync = scaled(controllers.resync, time_scale).max(Duration::from_secs(2));
    controllers.fast_poll = scaled(controllers.fast_poll, time_scale).max(Duration::from_millis(100));
    controllers.shutdown_timeout = scaled(controllers.shutdown_timeout, time_scale);
    controllers.removal_settle_timeout = scaled(controllers.removal_settle_timeout, time_scale);
    controllers.sweeper_grace = scaled(controllers.sweeper_grace, time_scale);
    controllers.instance = "crabglamp-sandbox".into();
    OperatorSettings {
        database_url: sandbox.database_url.clone(),
        redis_url: Some(sandbox.redis.url.clone()),
        hetzner: HetznerConfig::new(sandbox.hcloud.base_url.clone(), sandbox.hetzner_config.token.clone()),
        cloudflare: CloudflareConfig::new(
            sandbox.cloudflare.base_url.clone(),
            sandbox.cloudflare_config.token.clone(),
            sandbox.cloudflare_config.account_id.clone(),
            sandbox.cloudflare_config.zone_id.clone(),
        ),
        controllers,
        // The simulated budgets refill `time_scale` times faster; so may ours.
        hetzner_requests_per_hour: (3600.0 * time_scale.max(1.0)) as u32,
        cloudflare_requests_per_5min: (1200.0 * time_scale.max(1.0)) as u32,
    }
}

/// Starts the controllers against the sandbox.
pub async fn start(sandbox: &Sandbox, time_scale: f64) -> Result<InProcess, StartError> {
    let client = sandbox.kube.client().map_err(|e| StartError::Kube(e.to_string()))?;
    let connected = operator::connect(client, settings(sandbox, time_scale), sandbox.sealing_keys()?).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = AbortOnDrop::spawn(operator::run(connected.context, stop_rx, Duration::from_secs(10)));
    Ok(InProcess { stop, task })
}
