//! The `sim` subcommand: runs the Hetzner or Cloudflare simulator standalone on a local
//! address, prints its base URL once it accepts connections, and serves until Ctrl-C.
//! It never prints the token it was given.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::http::FaultPlan;
use crate::http::control::{FaultPlanSpec, FaultRuleSpec};
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
        /// Every action takes this many milliseconds and guests boot at once (a flat test
        /// profile; default: Hetzner's real-world figures, see hetzner/physics.rs).
        #[arg(long)]
        action_duration_ms: Option<u64>,
        #[command(flatten)]
        project: HetznerArgs,
        /// How much faster than real time simulated time runs (actions, boots, rate refill).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
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
        /// Most cloudflared tunnels the account may hold (Cloudflare's limit: 1,000).
        #[arg(long, default_value_t = cloudflare::TUNNELS_PER_ACCOUNT)]
        tunnel_limit: usize,
        /// Most DNS records the zone may hold (its plan's quota: 200 on a Free zone, 3,500 on Pro).
        #[arg(long, default_value_t = cloudflare::DNS_RECORDS_PER_ZONE)]
        dns_record_limit: usize,
        /// How much faster than real time simulated time runs (the five-minute window).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        #[command(flatten)]
        faults: FaultArgs,
    },
}

/// What a simulated Hetzner project is like, beyond its token (shared by `sim hetzner` and
/// the sandbox).
#[derive(Args, Debug, Clone, Default)]
pub struct HetznerArgs {
    /// How long one action command or guest step takes in simulated time,
    /// `COMMAND=DURATION` (e.g. `create_server=15s`, `start_server=800ms`, `boot=5s`,
    /// `acpi_shutdown=2s`); repeatable.
    #[arg(long = "action-duration", value_name = "COMMAND=DURATION", value_parser = parse_action_duration)]
    pub action_durations: Vec<(String, Duration)>,
    /// Most servers the project may hold (`resource_limit_exceeded` beyond).
    #[arg(long)]
    pub server_limit: Option<usize>,
    /// Most firewalls the project may hold.
    #[arg(long)]
    pub firewall_limit: Option<usize>,
    /// Most firewalls that may apply to one server.
    #[arg(long)]
    pub firewalls_per_server: Option<usize>,
    /// The project's guests ignore ACPI shutdown and reboot (per server: the control API).
    #[arg(long)]
    pub ignores_acpi: bool,
}

impl HetznerArgs {
    /// `config` with these settings applied; an unknown action command is refused.
    pub fn apply(&self, mut config: hetzner::HetznerSimConfig) -> anyhow::Result<hetzner::HetznerSimConfig> {
        for (command, d) in &self.action_durations {
            // The guest OS's own steps are figures beside the action commands.
            match command.as_str() {
                "boot" => config.durations.boot = *d,
                "acpi_shutdown" => config.durations.acpi_shutdown = *d,
                _ => config.durations.set(command, *d).context("--action-duration")?,
            }
        }
        config.server_limit = self.server_limit.unwrap_or(config.server_limit);
        config.firewall_limit = self.firewall_limit.unwrap_or(config.firewall_limit);
        config.firewalls_per_server = self.firewalls_per_server.unwrap_or(config.firewalls_per_server);
        config.ignores_acpi |= self.ignores_acpi;
        Ok(config)
    }
}

/// `15s`, `500ms`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 15s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a valid duration"))
}

fn parse_action_duration(text: &str) -> Result<(String, Duration), String> {
    let (command, duration) =
        text.split_once('=').ok_or_else(|| format!("{text:?}: expected COMMAND=DURATION, e.g. create_server=15s"))?;
    let command = command.trim();
    if command.is_empty() || !command.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(format!("{command:?} is not an action command like create_server"));
    }
    Ok((command.to_owned(), parse_duration(duration)?))
}

/// A time scale must be a positive, finite factor.
pub fn check_time_scale(scale: f64) -> anyhow::Result<()> {
    anyhow::ensure!(crate::time_scale::valid(scale), "--time-scale must be a positive number, not {scale}");
    Ok(())
}

/// A fault plan from `--fault-file` (the body of `PUT /_sim/faults`) plus `--fault` rules.
pub fn fault_plan(file: Option<&std::path::Path>, rules: &[FaultRuleSpec], seed: u64) -> anyhow::Result<FaultPlan> {
    let mut spec = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<FaultPlanSpec>(&text)
                .with_context(|| format!("{} is not a fault plan", path.display()))?
        }
        None => FaultPlanSpec::default(),
    };
    spec.rules.extend(rules.iter().cloned());
    if seed != 0 {
        spec.seed = seed;
    }
    Ok(FaultPlan::try_from(spec)?)
}

/// Faults to inject from the start (changed at run time through the control API).
#[derive(Args, Debug, Default)]
pub struct FaultArgs {
    /// Probability (0..1) that any request fails with a random 5xx.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// A fault rule `METHOD ROUTE RATE [ERROR] [lost]` (e.g. `POST /v1/servers 0.5`, `* * 0.1
    /// timeout`); repeatable.
    #[arg(long = "fault", value_name = "RULE")]
    pub faults: Vec<FaultRuleSpec>,
    /// A fault plan in JSON, the body `PUT /_sim/faults` takes (see CONTROL-API.md).
    #[arg(long)]
    pub fault_file: Option<PathBuf>,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed of the fault dice (printed runs replay exactly).
    #[arg(long, default_value_t = 0)]
    pub fault_seed: u64,
}

impl FaultArgs {
    fn plan(&self) -> anyhow::Result<FaultPlan> {
        let mut rules = self.faults.clone();
        if self.fault_rate > 0.0 {
            rules.push(FaultRuleSpec { rate: self.fault_rate, ..FaultRuleSpec::default() });
        }
        let mut plan = fault_plan(self.fault_file.as_deref(), &rules, self.fault_seed)?;
        if self.latency_ms > 0 {
            plan.latency = Duration::from_millis(self.latency_ms);
        }
        Ok(plan)
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
            SimProvider::Hetzner {
                listen,
                token,
                rate_limit_per_hour,
                action_duration_ms,
                project,
                time_scale,
                faults,
            } => {
                check_time_scale(time_scale)?;
                let defaults = hetzner::HetznerSimConfig::default();
                let durations = action_duration_ms.map_or(defaults.durations.clone(), |ms| {
                    hetzner::ActionDurations::uniform(Duration::from_millis(ms))
                });
                let config = project.apply(hetzner::HetznerSimConfig {
                    token: token.expose().to_owned(),
                    rate_limit_per_hour,
                    durations,
                    time_scale,
                    ..defaults
                })?;
                let listener = bind(&listen).await?;
                (listen, hetzner::spawn(config, listener).await, faults)
            }
            SimProvider::Cloudflare {
                listen,
                token,
                account_id,
                zone_id,
                zone_name,
                rate_limit,
                tunnel_limit,
                dns_record_limit,
                time_scale,
                faults,
            } => {
                check_time_scale(time_scale)?;
                let listener = bind(&listen).await?;
                let config = cloudflare::CloudflareSimConfig {
                    token: token.expose().to_owned(),
                    account_id,
                    zone_id,
                    zone_name,
                    rate_limit,
                    rate_refill_per_sec: None,
                    time_scale,
                    tunnel_limit,
                    dns_record_limit,
                };
                (listen, cloudflare::spawn(config, listener).await, faults)
            }
        };
        let plan = faults.plan()?;
        let sim = sim.with_context(|| format!("cannot start the simulator on {listen}"))?;
        sim.set_faults(plan);
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
    fn durations_and_action_flags() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(super::parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(super::parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(super::parse_duration("15 parsecs").is_err());
        assert!(super::parse_duration("-1s").is_err());

        let cli = Cli::try_parse_from([
            "sim",
            "hetzner",
            "--token",
            "t",
            "--action-duration",
            "create_server=30s",
            "--action-duration",
            "boot=2s",
            "--firewall-limit",
            "3",
            "--fault",
            "POST /v1/servers 0.5 timeout",
        ])
        .expect("parses");
        let super::SimProvider::Hetzner { project, faults, .. } = cli.provider else { panic!("hetzner") };
        let config = project.apply(crate::hetzner::HetznerSimConfig::default()).expect("known commands");
        assert_eq!(config.durations.create_server, Duration::from_secs(30));
        assert_eq!(config.durations.boot, Duration::from_secs(2));
        assert_eq!(config.firewall_limit, 3);
        let plan = faults.plan().expect("valid plan");
        assert_eq!(plan.rules.len(), 1);
        assert_eq!(plan.rules[0].error, crate::http::InjectedError::Timeout);

        let cli = Cli::try_parse_from(["sim", "hetzner", "--token", "t", "--action-duration", "make_coffee=1s"])
            .expect("parses");
        let super::SimProvider::Hetzner { project, .. } = cli.provider else { panic!("hetzner") };
        assert!(project.apply(crate::hetzner::HetznerSimConfig::default()).is_err(), "unknown command refused");
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
