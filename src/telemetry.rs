//! Logging: one `tracing` subscriber for every command, filtered by `RUST_LOG`, as text for
//! people or JSON lines for log pipelines. It owns the output format only; what may be logged
//! (never a token, password or key) is the business of the code that logs.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default on a terminal).
    Text,
    /// One JSON object per line, with the span fields (`kind`, `namespace`, `name`) of the
    /// object being reconciled: what a production log pipeline ingests.
    Json,
}

/// The filter when `RUST_LOG` is unset: our own crates at `info`, everything else at `warn`
/// (kube's and hyper's `info`/`debug` lines would drown the operator's own).
pub const DEFAULT_FILTER: &str = "warn,crabglamp_operator=info,crabglamp_sandbox=info";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG is not a valid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A subscriber was installed already.
    #[error("logging was already set up: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// The filter from `RUST_LOG` (or [`DEFAULT_FILTER`]); an invalid value is an error rather than
/// silently logging nothing.
pub fn filter_from_env() -> Result<EnvFilter, TelemetryError> {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => Ok(EnvFilter::try_new(value)?),
        _ => Ok(EnvFilter::try_new(DEFAULT_FILTER)?),
    }
}

/// Installs the process-wide subscriber, writing to standard error.
pub fn init(format: LogFormat) -> Result<(), TelemetryError> {
    let filter = filter_from_env()?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    // Colours only for a person at a terminal, never escape codes in a log file.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}
