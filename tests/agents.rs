//! The Agent controller end to end through the sandbox's stand-ins (Kubernetes API server,
//! Hetzner and Cloudflare simulators) with the real PostgreSQL: create -> Ready, power,
//! transfer, delete and its audit event, and the request budget.
//! One test binary (links are slow here); the scenarios live in `tests/agents/`.

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::{cloud_init_schema, db};

mod agents {
    mod books;
    mod budget;
    mod crash;
    mod drift;
    mod events;
    mod external;
    mod faults;
    use crabglamp_testkit::fixture;
    mod cloudflare_quotas;
    mod lifecycle;
    mod secrets;
    mod settings;
    mod wedges;
}
