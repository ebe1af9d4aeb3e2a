//! The `sim` subcommand: runs the Hetzner or Cloudflare simulator standalone on a local
//! address, prints its base URL once it accepts connections, and serves until Ctrl-C.
//! It never prints the token it was given.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::http::{FaultPlan, FaultRule};
use crate::{cloudflare, hetzner};
use crabglamp_operator::cloud::Secret;

/// `crabglamp-sandbox sim <provider> ...`
#[derive(Args, Debug)]
pub struct SimCommand {
    #[command(subcommand)]
    pub provider: SimProvider,
}

#[derive(Subcommand, Debug)]
pub enum SimProvider {
    /// Serve a simulated Hetzner Cloud API at http://LISTEN/v1.
    Hetzner {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The API token clients must send as `Authorization: Bearer`.
        #[arg(long, env = "HCLOUD_TOKEN", hide_env_values = true)]
        token: Secret,
        /// Requests per hour (RateLimit-Limit).
        #[arg(long, default_value_t = 3600)]
        rate_limit_per_hour: u32,
        /// How long each action takes, in milliseconds.
        #[arg(long, default_value_t = 500)]
        action_duration_ms: u64,
        /// Most servers the project may hold.
        #[arg(long, default_value_t = 100)]
        server_limit: usize,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Serve a simulated Cloudflare API at http://LISTEN/client/v4.
    Cloudflare {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The API token clients must send as `Authorization: Bearer`.
        #[arg(long, env = "CLOUDFLARE_API_TOKEN", hide_env_values = true)]
        token: Secret,
        #[arg(long)]
        account_id: String,
        #[arg(long)]
        zone_id: String,
        #[arg(long, default_value = "example.com")]
        zone_name: String,
        /// Requests per five minutes.
        #[arg(long, default_value_t = 1200)]
        rate_limit: u32,
        #[command(flatten)]
        faults: FaultArgs,
    },
}

/// Faults to inject from the start (tests change them at run time through `RunningSim`).
#[derive(Args, Debug, Default)]
pub struct FaultArgs {
    /// Probability (0..1) that any request fails with a random 5xx.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed of the fault dice (printed runs replay exactly).
    #[arg(long, default_value_t = 0)]
    pub fault_seed: u64,
}

impl FaultArgs {
    fn plan(&self) -> FaultPlan {
        FaultPlan {
            rules: if self.fault_rate > 0.0 { FaultRule::any_5xx(self.fault_rate) } else { Vec::new() },
            latency: Duration::from_millis(self.latency_ms),
            seed: self.fault_seed,
            ..FaultPlan::default()
        }
    }
}

impl SimCommand {
    /// Runs the simulator on its own runtime until Ctrl-C.
    pub fn run(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.serve())
    }

    async fn serve(self) -> anyhow::Result<()> {
        let token = match &self.provider {
            SimProvider::Hetzner { token, .. } | SimProvider::Cloudflare { token, .. } => token,
        };
        // An empty token would make every request without credentials look authenticated.
        anyhow::ensure!(!token.expose().trim().is_empty(), "--token must not be empty");
        let (listen, sim, faults) = match self.provider {
            SimProvider::Hetzner { listen, token, rate_limit_per_hour, action_duration_ms, server_limit, faults } => {
                let listener = bind(&listen).await?;
                let config = hetzner::HetznerSimConfig {
                    token: token.expose().to_owned(),
                    rate_limit_per_hour,
                    rate_refill_per_sec: None,
                    action_duration: Duration::from_millis(action_duration_ms),
                    server_limit,
                };
                (listen, hetzner::spawn(config, listener).await, faults)
            }
            SimProvider::Cloudflare { listen, token, account_id, zone_id, zone_name, rate_limit, faults } => {
                let listener = bind(&listen).await?;
                let config = cloudflare::CloudflareSimConfig {
                    token: token.expose().to_owned(),
                    account_id,
                    zone_id,
                    zone_name,
                    rate_limit,
                    rate_refill_per_sec: None,
                };
                (listen, cloudflare::spawn(config, listener).await, faults)
            }
        };
        let sim = sim.with_context(|| format!("cannot start the simulator on {listen}"))?;
        sim.set_faults(faults.plan());
        // The one line scripts wait for: the base URL, printed only once the socket accepts.
        println!("{}", sim.base_url);
        tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
        sim.shutdown().await.context("simulator did not stop cleanly")?;
        Ok(())
    }
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        provider: super::SimProvider,
    }

    #[test]
    fn parsed_command_never_shows_the_token() {
        let cli = Cli::try_parse_from(["sim", "hetzner", "--token", "hunter2-token"]).expect("parses");
        assert!(!format!("{cli:?}").contains("hunter2-token"), "{cli:?}");
        let cli = Cli::try_parse_from([
            "sim",
            "cloudflare",
            "--token",
            "hunter2-token",
            "--account-id",
            "a",
            "--zone-id",
            "z",
        ])
        .expect("parses");
        assert!(!format!("{cli:?}").contains("hunter2-token"), "{cli:?}");
    }
}
