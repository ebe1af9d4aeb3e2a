//! What only the real control plane of `testenv/` can judge, whatever `CRABGLAMP_TEST_KUBE`
//! says: the CRDs and `examples/` as a real kube-apiserver admits them, the chart installed
//! into it with helm, and the differential test that keeps the sandbox's stand-in honest.
//! Each test takes its turn on the one control plane of this binary (`KubeServer::real`).

// The shared fixtures, from the test kit (testkit/).
use crabglamp_testkit::{db, kube_server};

mod real_kube {
    mod chart_install;
    mod chart_shards;
    mod conformance;
    mod crds;
    mod release;
}
