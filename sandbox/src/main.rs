//! The `crabglamp-sandbox` command line: with no subcommand, the whole sandbox (Kubernetes API
//! server, Hetzner and Cloudflare simulators, PostgreSQL, Redis) until Ctrl-C; `sim hetzner` or
//! `sim cloudflare` runs one simulator on its own.

use anyhow::Context;
use clap::{Parser, Subcommand};
use crabglamp_operator::telemetry::{self, LogFormat};
use crabglamp_sandbox::sim_cli::SimCommand;
use crabglamp_sandbox::stack::{self, SandboxArgs};

#[derive(Parser, Debug)]
#[command(
    name = "crabglamp-sandbox",
    version,
    about = "Local stand-ins for Kubernetes, Hetzner Cloud and Cloudflare, with PostgreSQL and Redis",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Log line format on standard error (`text` or `json`); the filter comes from `RUST_LOG`.
    #[arg(long, global = true, value_enum, default_value = "text", env = "CRABGLAMP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Hetzner Cloud or Cloudflare API simulator standalone.
    Sim(SimCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format)?;
    match cli.command {
        Some(Command::Sim(sim)) => sim.run(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(async { Ok(stack::run(cli.sandbox).await?) }),
    }
}
