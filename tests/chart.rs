//! The Helm chart (`charts/crabglamp-operator`): its CRDs are the generated ones, it lints and
//! renders with default and with every value set, the rendered Deployment passes the
//! restricted Pod Security Standard, the values schema refuses malformed values, the RBAC it
//! grants is exactly what the operator calls in a run against the sandbox, and the Argo CD
//! health check says what the statuses mean. Runs the real `helm` ($HELM, set by
//! scripts/test) and Debian's `lua5.4`.

#[path = "foundation/db.rs"]
mod db;
#[path = "support/fixture.rs"]
pub mod fixture;
#[path = "support/kube_server.rs"]
mod kube_server;
#[path = "support/logs.rs"]
mod logs;

mod chart {
    pub use crate::fixture;
    mod files;
    mod gitops;
    pub mod health;
    pub mod helm;
    mod pss;
    mod rbac;
    mod schema;
}
