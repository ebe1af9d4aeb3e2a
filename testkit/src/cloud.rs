//! Fixtures: simulators on ephemeral local ports and clients pointed at them.

use std::sync::Arc;
use std::time::Duration;

use crabglamp_operator::cloud::cloudflare::{CloudflareClient, CloudflareConfig};
use crabglamp_operator::cloud::hetzner::{HetznerClient, HetznerConfig};
use crabglamp_operator::cloud::{CloudMetrics, RateLimiter, RetryPolicy};
use crabglamp_sandbox::cloudflare::{self as cfsim, CloudflareSimConfig};
use crabglamp_sandbox::hetzner::{self as hzsim, HetznerSimConfig};
use crabglamp_sandbox::http::RunningSim;

/// The rate-limit test measures timing: its budget leaves the simulator ~40 ms of slack
/// before requests bunch up into a 429. On a two-core machine a Python interpreter or the
/// 200-operation fault run beside it stalls the simulator longer than that, so the timing
/// test holds this exclusively and the CPU-heavy tests hold it shared: never both at once.
pub static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub const HZ_TOKEN: &str = "test-hetzner-token";
pub const CF_TOKEN: &str = "test-cloudflare-token";

pub async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port")
}

/// Every action takes 40 ms and the guest OS boots and obeys ACPI at once: client tests
/// wait on actions, not on real-world physics.
pub fn hz_config() -> HetznerSimConfig {
    HetznerSimConfig {
        token: HZ_TOKEN.into(),
        durations: hzsim::ActionDurations::uniform(Duration::from_millis(40)),
        ..HetznerSimConfig::default()
    }
}

pub async fn hetzner_sim(config: HetznerSimConfig) -> RunningSim {
    hzsim::spawn(config, listener().await).await.expect("start the Hetzner simulator")
}

pub fn cf_config() -> CloudflareSimConfig {
    CloudflareSimConfig { token: CF_TOKEN.into(), ..CloudflareSimConfig::default() }
}

pub async fn cloudflare_sim(config: CloudflareSimConfig) -> RunningSim {
    cfsim::spawn(config, listener().await).await.expect("start the Cloudflare simulator")
}

/// Fast retries so tests of retryable errors take milliseconds.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, base: Duration::from_millis(5), cap: Duration::from_millis(40) }
}

pub fn hetzner_client(sim: &RunningSim, retry: RetryPolicy) -> HetznerClient {
    hetzner_client_with(sim, HZ_TOKEN, retry, Arc::new(RateLimiter::hetzner_default()))
}

pub fn hetzner_client_with(
    sim: &RunningSim,
    token: &str,
    retry: RetryPolicy,
    limiter: Arc<RateLimiter>,
) -> HetznerClient {
    let mut config = HetznerConfig::new(sim.base_url.clone(), token);
    config.retry = retry;
    config.timeout = Duration::from_secs(10);
    HetznerClient::new(config, limiter, CloudMetrics::default()).expect("build the Hetzner client")
}

pub fn cloudflare_client(sim: &RunningSim, token: &str, retry: RetryPolicy) -> CloudflareClient {
    let d = CloudflareSimConfig::default();
    let mut config = CloudflareConfig::new(sim.base_url.clone(), token, d.account_id, d.zone_id);
    config.retry = retry;
    config.timeout = Duration::from_secs(10);
    CloudflareClient::new(config, Arc::new(RateLimiter::cloudflare_default()), CloudMetrics::default())
        .expect("build the Cloudflare client")
}
