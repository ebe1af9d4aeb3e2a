//! The Hetzner-server machinery Agents and PlainVMs share: deterministic names, ownership
//! labels, the create spec, power decisions, the usage timeline, drift and deletion.
//!
//! Everything here is either a pure function (names, labels, decisions: unit-tested in `unit_tests.rs`) or
//! one idempotent cloud step. It never decides what a kind adds around its server (tunnel,
//! firewall); it never polls a single server: observations come from the shared fleet view.

pub mod cloud_init;
pub mod installation;
pub mod intent;
pub mod legacy;
pub mod marks;
pub mod names;
pub mod power;
pub mod power_memory;
pub mod steps;
pub mod timeline;
#[cfg(test)]
mod unit_tests;

pub use intent::*;
pub use marks::*;
pub use power::*;
pub use steps::*;
pub use timeline::*;
