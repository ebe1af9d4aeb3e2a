//! The PlainVM controller end to end through the sandbox's stand-ins (Kubernetes API server,
//! Hetzner simulator) with the real PostgreSQL: created closed behind its own firewall, rules
//! kept in sync, drift repaired, the firewall limit, delete and its audit event, crashes,
//! faults, the request budget, and admission. The scenarios live in `tests/plainvms/`.

#[path = "foundation/db.rs"]
mod db;
#[path = "support/fixture.rs"]
pub mod fixture;
#[path = "support/kube_server.rs"]
mod kube_server;
#[path = "support/logs.rs"]
mod logs;

mod plainvms {
    mod admission;
    mod billing;
    mod budget;
    mod crash;
    mod drift;
    mod faults;
    mod lifecycle;
    mod limits;
    mod orphan;
    pub mod support;
}
