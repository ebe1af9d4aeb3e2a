//! The Agent controller end to end through the sandbox's stand-ins (Kubernetes API server,
//! Hetzner and Cloudflare simulators) with the real PostgreSQL: create -> Ready, power,
//! transfer, delete and its audit event, and the request budget.
//! One test binary (links are slow here); the scenarios live in `tests/agents/`.

#[path = "support/cloud_init_schema.rs"]
mod cloud_init_schema;
#[path = "foundation/db.rs"]
mod db;
#[path = "support/fixture.rs"]
pub mod fixture;
#[path = "support/kube_server.rs"]
mod kube_server;
#[path = "support/logs.rs"]
mod logs;

mod agents {
    mod books;
    mod budget;
    mod crash;
    mod drift;
    mod events;
    mod external;
    mod faults;
    pub use crate::fixture;
    mod lifecycle;
    mod secrets;
    mod settings;
    mod wedges;
}
