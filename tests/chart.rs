//! The Helm chart (`charts/crabglamp-operator`): its CRDs are the generated ones, it lints and
//! renders with default and with every value set, the rendered Deployment passes the
//! restricted Pod Security Standard, the values schema refuses malformed values, the RBAC it
//! grants is exactly what the operator calls in a run against the sandbox, and the Argo CD
//! health check says what the statuses mean. Runs the real `helm` ($HELM, set by
//! scripts/test) and Debian's `lua5.4`.

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::kube_server;

mod chart {
    use crabglamp_testkit::{fixture, helm};
    mod files;
    mod gitops;
    pub mod health;
    mod pss;
    mod rbac;
    mod schema;
}
