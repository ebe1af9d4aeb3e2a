//! Keeps the audit anchor (see [`crate::audit_anchor`]) up with the database: a publish after
//! every committed append (reconcilers nudge), on every resync (catches up after a failed
//! publish or an append made by another process), and once more on shutdown.
//!
//! The event is committed in PostgreSQL before any publish, so a failed publish never loses an
//! event: the anchor lags until the next attempt succeeds. A lag of a few events is normal;
//! an anchor ahead of the database, or one whose event the database holds with another hash,
//! is tampering, and the publisher then refuses to move it (a person must look).

pub mod publisher;
pub mod task;

pub use publisher::AnchorPublisher;
pub use task::{publish_and_count, run};
