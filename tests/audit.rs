//! The audit trail against its anchor outside the database (the operator publishes it; deleted
//! tails, rewritten chains and forged anchors are found, a lagging anchor is only noted), and
//! resealing credentials after a key rotation. Real PostgreSQL, the sandbox's API server and
//! the real binary. The scenarios live in `tests/audit/`.

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::{db, fixture, logs};

mod audit {
    mod anchor;
    mod reseal;
    pub mod support;
}
