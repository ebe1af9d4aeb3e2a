//! The `crabglamp-operator` command line: print CRDs, migrate the database, verify the audit
//! trail. The stand-ins and the sandbox are another binary (`crabglamp-sandbox`).

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format)?;
    match cli.command {
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
