//! The fleet view: what the operator knows of its servers, firewalls, tunnels and DNS records
//! (`view`), the refresher that fills it with shared paged lists, and the sweeper that removes
//! what no object owns.

pub mod refresher;
pub mod sweeper;
pub mod view;

pub use view::*;
