//! Production running: leader election on a Lease (one leader reconciles, a stopped leader
//! hands over within seconds, a killed one after its lease expires, with no duplicate server),
//! shards that reconcile and sweep only their own, the /metrics, /healthz and /readyz
//! endpoints, and the `run` command itself (its flags, JSON logs, SIGTERM). Against the
//! sandbox's stand-ins and the real PostgreSQL. The scenarios live in `tests/leader/`.

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::{fixture, kube_server};

mod leader {
    mod binary;
    mod election;
    mod fencing;
    mod installations;
    mod metrics;
    mod shards;
    pub mod support;
}
