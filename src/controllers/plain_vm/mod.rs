//! The PlainVM reconciler: a dedicated Hetzner server in Helsinki behind its own Hetzner Cloud
//! Firewall, created first with exactly the spec's inbound rules and attached in the server's
//! create call, so the server is never open; its power on the usage timeline; one destroy
//! event when it goes.
//!
//! observe (the shared fleet view) -> decide (`decide`, pure, unit-tested) -> act (one
//! idempotent step at a time), on the skeleton and server machinery it shares with Agents
//! (`lifecycle`, `server`). It never reads one server or firewall from the API (the shared
//! paged lists do), never writes `spec`, never creates a server without its firewall, and
//! never leaves a firewall behind when it deletes.

pub mod act;
pub mod decide;
pub mod firewall;
pub mod object;
pub mod observe;

pub use decide::*;
