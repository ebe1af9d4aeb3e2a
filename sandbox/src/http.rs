//! HTTP plumbing the Hetzner and Cloudflare simulators share: serving and shutdown, the gate
//! (auth, the rate-limit bucket, fault injection, the request log and counters) and the
//! generic half of the control API ([`control`]). Each simulator hands it its routes, its
//! control routes and its [`Dialect`] (error envelope, auth failures, rate headers); the
//! plumbing composes them and knows no simulator. It owns no provider resources and must
//! never log, record or echo a token or any other secret.
//!
//! This module only declares its parts and names what the simulators and tests use.

mod budget;
pub mod control;
mod dialect;
mod faults;
mod gate;
mod log;
mod mutex;
mod redact;
mod serve;
mod sim_control;
mod wire;

pub use budget::{RateBucket, RateBudget};
pub use dialect::Dialect;
pub use faults::{FaultPlan, FaultRule, InjectedError};
pub use log::{RequestRecord, RouteCount};
pub(crate) use mutex::lock;
pub use redact::{redact_body, token_like_runs};
pub use serve::RunningSim;
pub(crate) use serve::{SimParts, serve};
pub use sim_control::SimControl;
pub use wire::{bearer, json_response, now_rfc3339, query_param, set_header};
