//! Production running: leader election on a Lease (one leader reconciles, a stopped leader
//! hands over within seconds, a killed one after its lease expires, with no duplicate server),
//! shards that reconcile and sweep only their own, the /metrics, /healthz and /readyz
//! endpoints, and the `run` command itself (its flags, JSON logs, SIGTERM). Against the
//! sandbox's stand-ins and the real PostgreSQL. The scenarios live in `tests/leader/`.

#[path = "foundation/db.rs"]
mod db;
#[path = "support/fixture.rs"]
pub mod fixture;
#[path = "support/kube_server.rs"]
mod kube_server;
#[path = "support/logs.rs"]
mod logs;

mod leader {
    mod binary;
    mod election;
    mod fencing;
    mod installations;
    mod metrics;
    mod shards;
    pub mod support;
}
