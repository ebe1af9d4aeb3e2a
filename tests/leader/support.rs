//! What the scenarios share: a Lease configuration for tests, Agents labelled for a shard,
//! and counting servers per object in the Hetzner simulator.

use std::time::Duration;

use crabglamp_operator::api::Agent;
use crabglamp_operator::controllers::SHARD_LABEL;
use crabglamp_operator::leader::LeaseConfig;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::fixture::Operator;

pub const LEASE: &str = "crabglamp-operator";
/// The chart's release namespace: the only one where its RBAC lets the operator hold a Lease
/// (enforced on the real server).
pub const LEASE_NAMESPACE: &str = crate::kube_server::RELEASE_NAMESPACE;

/// A Lease of `duration` with looks every 200 ms.
pub fn lease(identity: &str, duration: Duration) -> LeaseConfig {
    let mut c = LeaseConfig::new(LEASE, LEASE_NAMESPACE, identity);
    c.duration = duration;
    c.renew_deadline = duration.mul_f64(0.66);
    c.retry_period = Duration::from_millis(200);
    c
}

/// The Lease's holder as the API server has it.
pub async fn holder(op: &Operator, name: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(op.client.clone(), LEASE_NAMESPACE);
    api.get_opt(name).await.expect("get lease")?.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// An Agent labelled for `shard` (none: unlabelled).
pub fn agent_in(name: &str, shard: Option<&str>) -> Agent {
    let mut a = crate::fixture::agent(name, "alice", true);
    if let Some(shard) = shard {
        a.metadata.labels = Some([(SHARD_LABEL.to_owned(), shard.to_owned())].into());
    }
    a
}

/// How many simulated servers belong to the Agent `name` (server names are `<name>-<uid8>`).
pub fn servers_of(op: &Operator, name: &str) -> usize {
    let prefix = format!("{name}-");
    crabglamp_sandbox::hetzner::server_names(&op.hetzner)
        .iter()
        .filter(|n| n.strip_prefix(&prefix).is_some_and(|rest| rest.len() == 8 && !rest.contains('-')))
        .count()
}

/// Waits until `check` holds, polling an async probe.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "{what}: not reached within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
