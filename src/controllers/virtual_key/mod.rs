//! The VirtualKey controller: the only writer of LLM-proxy keys. It issues a key once (into a
//! Secret the VirtualKey owns), records its SHA-256 and terms in PostgreSQL, publishes the
//! auth entry to Redis (see [`crate::cache`] for the contract), watches the spend and blocks
//! the key when its budget or lifetime is over. It must never log, record or report the key
//! itself: only the Secret holds it.
//!
//! Spend is read by one refresher per resync for all keys at once, in batched round trips
//! ([`refresh_spend`]), copied into PostgreSQL's daily aggregates and restored from them when
//! Redis lost it; reconciles read the refresher's snapshot, so an idle resync of N keys costs
//! N/batch Redis round trips, not N.

pub mod act;
pub mod decide;
pub mod object;
pub mod observe;
pub mod plan;
pub mod run;
pub mod runtime;
pub mod secret_versions;
pub mod spend_refresh;

pub use decide::*;
pub use run::*;
pub use runtime::*;
pub use spend_refresh::{RefreshStats, refresh_spend};
