//! The `crabglamp-operator` command line: run the controllers, print CRDs, migrate the
//! database, verify the audit trail. The stand-ins and the sandbox are another binary
//! (`crabglamp-sandbox`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use crabglamp_operator::store;
use crabglamp_operator::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(name = "crabglamp-operator", version, about = "Kubernetes operator for Agents, PlainVMs and VirtualKeys")]
struct Cli {
    /// Log line format on standard error: `text` for people, `json` for log pipelines. The
    /// filter comes from `RUST_LOG` (default: our crates at info, the rest at warn).
    #[arg(long, global = true, value_enum, default_value = "text", env = "CRABGLAMP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers against a cluster (kubeconfig or in-cluster), PostgreSQL and the
    /// clouds, until SIGTERM or Ctrl-C.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions of all kinds as one YAML stream.
    Crd {
        /// Write one file per CRD into this directory instead of printing (how `crds/` is made).
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Apply the PostgreSQL migrations in `migrations/` (embedded in the binary).
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Inspect the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Walk the hash chain from the first event; exit non-zero at the first broken link.
    Verify {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Settings of `run`; every one also comes from the environment (SPEC section 6).
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Redis URL of the LLM proxy (the VirtualKey controller runs only when it is set).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Hetzner Cloud API base URL.
    #[arg(long, env = "HCLOUD_ENDPOINT", default_value = crabglamp_operator::cloud::hetzner::HETZNER_API)]
    hcloud_endpoint: String,
    /// Hetzner Cloud API token.
    #[arg(long, env = "HCLOUD_TOKEN", hide_env_values = true)]
    hcloud_token: crabglamp_operator::cloud::Secret,
    /// Cloudflare API base URL.
    #[arg(long, env = "CLOUDFLARE_ENDPOINT", default_value = crabglamp_operator::cloud::cloudflare::CLOUDFLARE_API)]
    cloudflare_endpoint: String,
    /// Cloudflare API token (tunnels and DNS of one zone).
    #[arg(long, env = "CLOUDFLARE_API_TOKEN", hide_env_values = true)]
    cloudflare_token: crabglamp_operator::cloud::Secret,
    /// The Cloudflare account owning the tunnels.
    #[arg(long, env = "CLOUDFLARE_ACCOUNT_ID")]
    cloudflare_account_id: String,
    /// The zone holding the DNS records.
    #[arg(long, env = "CLOUDFLARE_ZONE_ID")]
    cloudflare_zone_id: String,
    /// The zone's name: default hostnames are `<name>-<namespace>.<zone>`.
    #[arg(long, env = "CLOUDFLARE_ZONE_NAME")]
    cloudflare_zone_name: String,
    /// The Hetzner project's request budget per hour (raise it only when Hetzner raised it).
    #[arg(long, env = "CRABGLAMP_HETZNER_REQUESTS_PER_HOUR", default_value_t = 3600)]
    hetzner_requests_per_hour: u32,
    /// The Cloudflare token's request budget per five minutes.
    #[arg(long, env = "CRABGLAMP_CLOUDFLARE_REQUESTS_PER_5MIN", default_value_t = 1200)]
    cloudflare_requests_per_5min: u32,
    /// Seconds between looks at settled objects and the shared cloud lists.
    #[arg(long, env = "CRABGLAMP_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Milliseconds between shared lists while some object waits for the cloud.
    #[arg(long, env = "CRABGLAMP_FAST_POLL_MS", default_value_t = 5000)]
    fast_poll_ms: u64,
    /// Seconds a guest may take to obey an ACPI shutdown before a hard power-off.
    #[arg(long, env = "CRABGLAMP_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 120)]
    shutdown_timeout_seconds: u64,
    /// Seconds a marked resource without its object waits before the sweeper removes it.
    #[arg(long, env = "CRABGLAMP_SWEEPER_GRACE_SECONDS", default_value_t = 600)]
    sweeper_grace_seconds: u64,
    /// Reconciles of one kind running at once (a burst queues here, not in the database pool).
    #[arg(long, env = "CRABGLAMP_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Only reconcile objects labelled crabglamp.com/shard=<value>.
    #[arg(long, env = "CRABGLAMP_SHARD")]
    shard: Option<String>,
    /// This instance's name in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "crabglamp-operator")]
    instance: String,
    /// Seconds to let in-flight reconciles finish after SIGTERM.
    #[arg(long, default_value_t = 20)]
    drain_seconds: u64,
}

#[derive(clap::Args, Debug)]
struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://crabglamp@db:5432/crabglamp.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

/// Runs one async command on a runtime of its own (most commands need none).
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

async fn migrate(database: DatabaseArgs) -> anyhow::Result<()> {
    let pool = store::connect(&database.database_url, 2).await?;
    store::migrate(&pool).await?;
    println!("migrations applied to {}", store::redact_url(&database.database_url));
    Ok(())
}

/// Returns whether the chain verified.
async fn audit_verify(database: DatabaseArgs) -> anyhow::Result<bool> {
    let pool = store::connect(&database.database_url, 2).await?;
    let report = store::audit::verify_chain(&pool).await?;
    match report.first_break {
        None => {
            println!("audit chain intact: {} events verified", report.verified);
            Ok(true)
        }
        Some(broken) => {
            println!(
                "audit chain BROKEN at event {}: {} ({} events verified before it)",
                broken.seq, broken.reason, report.verified
            );
            Ok(false)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use crabglamp_operator::cloud::cloudflare::CloudflareConfig;
    use crabglamp_operator::cloud::hetzner::HetznerConfig;
    use crabglamp_operator::controllers::ControllerConfig;
    use crabglamp_operator::operator::{self, OperatorSettings};
    use std::time::Duration;

    let kube_config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("invalid kubeconfig")?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not in a cluster")?,
    };
    let client = kube::Client::try_from(kube_config).context("cannot build the Kubernetes client")?;
    let sealing = store::seal::SealingKeys::from_env().context("cannot load the sealing key")?;
    let mut controllers = ControllerConfig::new(args.cloudflare_zone_name);
    controllers.resync = Duration::from_secs(args.resync_seconds.max(1));
    controllers.fast_poll = Duration::from_millis(args.fast_poll_ms.max(50));
    controllers.shutdown_timeout = Duration::from_secs(args.shutdown_timeout_seconds);
    controllers.sweeper_grace = Duration::from_secs(args.sweeper_grace_seconds);
    controllers.shard = args.shard;
    controllers.concurrency = args.concurrency;
    controllers.instance = args.instance;
    let settings = OperatorSettings {
        database_url: args.database.database_url,
        redis_url: args.redis_url,
        hetzner: HetznerConfig::new(args.hcloud_endpoint, args.hcloud_token),
        cloudflare: CloudflareConfig::new(
            args.cloudflare_endpoint,
            args.cloudflare_token,
            args.cloudflare_account_id,
            args.cloudflare_zone_id,
        ),
        controllers,
        hetzner_requests_per_hour: args.hetzner_requests_per_hour,
        cloudflare_requests_per_5min: args.cloudflare_requests_per_5min,
    };
    let connected = operator::connect(client, settings, sealing).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        operator::wait_for_signal().await;
        tracing::info!("stop requested: no new reconciles; finishing the ones in flight");
        let _ = stop_tx.send(true);
    });
    tracing::info!("crabglamp-operator running");
    operator::run(connected.context, stop_rx, Duration::from_secs(args.drain_seconds)).await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format)?;
    match cli.command {
        Command::Run(args) => block_on(run(*args))?,
        Command::Crd { out_dir: None } => {
            print!("{}", crabglamp_operator::api::all_crds_yaml()?);
        }
        Command::Crd { out_dir: Some(dir) } => {
            for crd in crabglamp_operator::api::all_crds() {
                let path = dir.join(crabglamp_operator::api::crd_file_name(&crd));
                std::fs::write(&path, crabglamp_operator::api::crd_yaml(&crd)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Command::Migrate { database } => block_on(migrate(database))?,
        Command::Audit { command: AuditCommand::Verify { database } } => {
            if !block_on(audit_verify(database))? {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}
