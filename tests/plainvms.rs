//! The PlainVM controller end to end through the sandbox's stand-ins (Kubernetes API server,
//! Hetzner simulator) with the real PostgreSQL: created closed behind its own firewall, rules
//! kept in sync, drift repaired, the firewall limit, delete and its audit event, crashes,
//! faults, the request budget, and admission. The scenarios live in `tests/plainvms/`.

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::fixture;

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
