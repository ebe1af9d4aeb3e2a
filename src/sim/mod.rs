//! Local stand-ins for the systems nobody can reach from a laptop or CI: a Kubernetes API
//! server, and the Hetzner Cloud and Cloudflare APIs. Used by the tests and by `sandbox`;
//! the controllers never know whether they talk to these or to the real thing.

pub mod cli;
pub mod cloudflare;
pub mod hetzner;
pub mod http;
pub mod kube;
