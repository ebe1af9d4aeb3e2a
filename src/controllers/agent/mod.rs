//! The Agent reconciler: a dedicated Hetzner server, reachable only through its own Cloudflare
//! Tunnel at its own hostname, its power on the usage timeline, and an audit event for every
//! transfer and destroy.
//!
//! observe (the shared fleet view and the object) -> decide (`decide`, pure, unit-tested) ->
//! act (one idempotent step at a time). Status is patched only when it changed. It never reads
//! one object from a cloud API (the fleet view does that for all), never writes `spec`, and
//! never logs the tunnel token, the tunnel secret or the root password.

pub mod act;
pub mod decide;
pub mod dns_taken;
pub mod object;
pub mod observe;

pub use decide::*;
