//! crabglamp-operator: a Kubernetes operator that turns `Agent`, `PlainVM` and `VirtualKey`
//! custom resources into Hetzner servers, Cloudflare tunnels and LLM-proxy keys, and keeps an
//! immutable, hash-chained audit trail of every transfer and destroy.

pub mod admission;
pub mod api;
pub mod cloud;
pub mod sandbox;
pub mod sim;
pub mod store;
