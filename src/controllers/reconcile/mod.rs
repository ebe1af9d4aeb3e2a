//! The reconcile skeleton every kind runs on, and what it is made of: the per-kind lifecycle
//! (pause, finalizer, plan, act, one status write, error policy), each kind's controller
//! (`runner`), conditions, status patches,
//! errors, Events, the trimmed controller caches, what starts a reconcile, the statuses written
//! and not yet cached, the caches' observer and per-object failures.

pub mod conditions;
pub mod destroy;
pub mod error;
pub mod events;
pub mod failures;
pub mod lifecycle;
pub mod observe;
pub mod outcome;
pub mod pass;
pub mod runner;
pub mod status_patch;
pub mod trigger;
pub mod trim;
pub mod written;
