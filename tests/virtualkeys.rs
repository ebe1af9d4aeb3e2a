//! The VirtualKey controller end to end: the sandbox's Kubernetes API server, a fresh
//! PostgreSQL database and the real Redis (each run in its own key namespace, cleared at the
//! end; never a FLUSHALL). One test binary; the scenarios live in `tests/virtualkeys/`.

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::{db, kube_server, logs};

mod virtualkeys {
    mod bad_data;
    pub mod fixture;
    mod flush;
    mod grace_terms;
    mod lifecycle;
    mod pause;
    mod private_redis;
    mod proxy;
    mod restores;
    mod scale;
    mod secret_move;
    mod secret_reads;
}
