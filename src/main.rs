//! The `crabglamp-operator` command line: run the operator, print CRDs, migrate the database,
//! verify the audit trail, and start the local sandbox.

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
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crabglamp_operator::api::all_crds_yaml()?);
        }
    }
    Ok(())
}
