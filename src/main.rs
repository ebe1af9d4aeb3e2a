//! The `crabglamp-operator` command line: run the operator, print CRDs, migrate the database,
//! verify the audit trail, and start the local sandbox.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "crabglamp-operator", version, about = "Kubernetes operator for Agents, PlainVMs and VirtualKeys")]
struct Cli {
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    }
    Ok(())
}
