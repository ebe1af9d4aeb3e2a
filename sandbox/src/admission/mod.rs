//! Admission of custom resources against their CRD, the way a Kubernetes API server does it:
//! prune unknown fields, apply schema defaults, check the structural schema, then evaluate every
//! `x-kubernetes-validations` rule (with `oldSelf` on updates) through `kube-cel`.
//!
//! The sandbox API server calls this on every create, update and patch of a custom resource, and
//! the tests call it on the manifests in `examples/`. Installing a CRD also estimates the cost of
//! its rules and refuses it over kube-apiserver's budget, as the API server does (`cost`). It
//! never talks to a cluster and never mutates anything but the object it returns.

pub mod builtin;
mod builtin_checks;
mod builtin_defaults;
mod cause;
mod cel;
mod cost;
mod names;
mod schema_error;
mod structural;
mod validator;

pub use cause::{Cause, CauseReason, invalid_message};
pub use cost::{RuleCost, STATIC_ESTIMATED_COST_LIMIT, STATIC_ESTIMATED_CRD_COST_LIMIT, rule_costs};
pub use names::name_error;
pub use schema_error::CrdSchemaError;
pub use validator::{Admitted, CrdValidator, validate};
