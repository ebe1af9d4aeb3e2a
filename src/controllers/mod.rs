//! The controllers: one folder per kind (`agent`, `plain_vm`, `virtual_key`), each with its
//! observe, pure decide and act, and what they share: the reconcile skeleton (`reconcile`),
//! the Hetzner-server machinery (`server`), the fleet view with its refresher and sweeper
//! (`fleet`), the audit anchor's publisher (`anchor`) and the context handed to every
//! reconcile (`context`, `config`, `metrics`).
//!
//! [`run`] wires them to a cluster with kube-runtime's `Controller` and stops them gracefully:
//! on the stop signal no new reconcile starts, in-flight ones finish, and it returns.
//!
//! This file only declares and re-exports: code inside `controllers` names the module that
//! defines what it uses, so no module depends on another through this one.

pub mod agent;
pub mod anchor;
pub mod config;
pub mod context;
pub mod fleet;
pub mod metrics;
pub mod plain_vm;
pub mod reconcile;
pub mod run;
pub mod server;
pub mod settings;
pub mod shard;
pub mod task;
pub mod virtual_key;
pub mod watch;

pub use config::ControllerConfig;
pub use context::Context;
pub use fleet::{refresher, sweeper};
pub use metrics::ControllerMetrics;
pub use plain_vm::firewall;
pub use reconcile::error::ReconcileError;
pub use reconcile::{conditions, error, events, lifecycle, observe, status_patch, trim};
pub use run::run;
pub use server::{cloud_init, installation, legacy, names};
pub use shard::{SHARD_LABEL, shard_selector};
pub use task::{AbortOnDrop, retry_until_stopped};
pub use virtual_key::{secret_versions, spend_refresh};
pub use watch::{WATCH_LIST_PAGE, WATCH_TIMEOUT_SECS, scoped_api};
