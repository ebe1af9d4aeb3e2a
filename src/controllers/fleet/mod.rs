//! The fleet view: what the operator knows of its servers, firewalls, tunnels and DNS records
//! (`view`), the refresher that fills it with shared paged lists, the sweeper that removes
//! what no object owns, and the waiters a list wakes when it shows their change.

pub mod refresher;
pub mod sweeper;
pub mod tunnel;
pub mod view;
#[cfg(test)]
mod view_tests;
pub mod waiters;

pub use tunnel::ObservedTunnel;
pub use view::*;
pub use waiters::{Wakes, WokenObject};
