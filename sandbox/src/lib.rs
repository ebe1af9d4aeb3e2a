//! crabglamp-sandbox: local stand-ins for the systems nobody can reach from a laptop or CI (a
//! wire-compatible Kubernetes API server with CRD admission, and the Hetzner Cloud and
//! Cloudflare APIs), and the sandbox that runs them beside PostgreSQL, Redis and the operator.
//!
//! A test ground and a demo, never a dependency of production code: this crate depends on the
//! operator library, the operator never on this crate. The operator's controllers never know
//! whether they talk to these stand-ins or to the real thing.

pub mod admission;
pub mod cloudflare;
pub mod hetzner;
pub mod http;
pub mod kube;
pub mod llm_proxy;
pub mod sim_cli;
pub mod stack;
pub mod time_scale;
