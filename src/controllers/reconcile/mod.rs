//! The reconcile skeleton every kind runs on, and what it is made of: what a kind supplies
//! (`kind`), one pass top to bottom (`pass`: observe, decide, act, one status write, the
//! requeue), the per-object lifecycle around it (`lifecycle`: pause, finalizer, log line, error
//! policy), each kind's controller (`runner`), conditions, status patches and writes, errors,
//! Events, the trimmed controller caches, what starts a reconcile, the statuses written and not
//! yet cached, the caches' observer and per-object failures.

pub mod conditions;
pub mod destroy;
pub mod error;
pub mod events;
pub mod failures;
pub mod kind;
pub mod lifecycle;
pub mod observe;
pub mod outcome;
pub mod pass;
pub mod runner;
pub mod status_patch;
pub mod status_write;
pub mod trigger;
pub mod trim;
pub mod written;
