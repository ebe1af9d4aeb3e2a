//! crabglamp-operator: a Kubernetes operator that turns `Agent`, `PlainVM` and `VirtualKey`
//! custom resources into Hetzner servers, Cloudflare tunnels and LLM-proxy keys, and keeps an
//! immutable, hash-chained audit trail of every transfer and destroy.
//!
//! This crate is what runs in production: it never depends on the stand-ins of the
//! `crabglamp-sandbox` crate (that one depends on this one).

pub mod api;
pub mod audit_anchor;
pub mod backoff;
pub mod cache;
pub mod cloud;
pub mod controllers;
pub mod endpoints;
pub mod leader;
pub mod operator;
pub mod store;
pub mod telemetry;
