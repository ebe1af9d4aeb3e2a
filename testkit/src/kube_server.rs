//! The Kubernetes API server a test runs against: the sandbox's in-process stand-in (the
//! default, one per test), or with `CRABGLAMP_TEST_KUBE=real` the real control plane of
//! `testenv/` (etcd, kube-apiserver, kube-controller-manager), one per test binary.
//!
//! On the real server the operator authenticates as the chart's ServiceAccount, bound to exactly
//! the RBAC `helm template` renders, so the real authorizer judges every request it makes; the
//! tests' own requests are the admin's. The tests of one binary then take turns: each starts from
//! a cluster with no object of ours left by the one before (finalizers stripped, namespaces
//! deleted and gone), because the operator under test watches every namespace as the chart's
//! default installation does. What the stand-in's request log answers (writes at idle, who asked
//! for what) the real server answers from its audit log.

mod audit;
mod kubectl;
mod real;
mod relay;

pub use audit::{AuditEvent, AuditObjectRef, AuditStatus, AuditUser};
pub use kubectl::{KubectlRun, kubectl_132, kubectl_135, run_kubectl};
pub use real::{ControlPlane, OperatorIdentity, RealKube};
pub use relay::StallingRelay;

use crabglamp_sandbox::kube::RunningKube;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use serde_json::json;

use relay::Relay;

/// The chart's release namespace on the real server: the operator's ServiceAccount, Leases and
/// audit anchor live here, as they do in a cluster where the chart is installed.
pub const RELEASE_NAMESPACE: &str = "crabglamp";
/// The release name the chart is rendered with (its ServiceAccount is then `crabglamp-operator`).
pub const RELEASE: &str = "crabglamp-operator";
/// The user the operator's requests carry: on the stand-in its request log's name for the
/// chart's ServiceAccount, on the real server that ServiceAccount's own name.
pub const OPERATOR_USER: &str = "system:serviceaccount:crabglamp:crabglamp-operator";
/// The namespaces the tests' VirtualKeys live in. The operator under test serves these only
/// (`ControllerConfig::virtual_key_namespaces`, as the chart's `--virtual-key-namespaces`), and
/// on the real server the chart's Secret Roles are rendered for them (`virtualKeys.namespaces`):
/// the operator has no Secret access anywhere else.
pub const VIRTUAL_KEY_NAMESPACES: [&str; 6] = ["team-a", "keys", "demo", "scale", "reads", "chaos"];

/// Whether this run's tests go to the real control plane.
pub fn real() -> bool {
    std::env::var("CRABGLAMP_TEST_KUBE").is_ok_and(|v| v == "real")
}

/// One test's API server.
pub enum KubeServer {
    Sandbox(RunningKube),
    Real(RealKube),
}

impl KubeServer {
    /// A fresh stand-in, or this test's turn on the real control plane (after the previous
    /// test's objects are gone).
    pub async fn start() -> KubeServer {
        if real() {
            return KubeServer::real().await;
        }
        let server = KubeServer::sandbox().await;
        // As on the real server, where the chart's release namespace holds the operator's
        // ServiceAccount, Leases and audit anchor.
        let namespaces: Api<Namespace> = Api::all(server.client());
        let release = serde_json::from_value(json!({"metadata": {"name": RELEASE_NAMESPACE}})).expect("namespace");
        namespaces.create(&Default::default(), &release).await.expect("create the release namespace");
        server
    }

    /// A turn on the real control plane, whatever the mode: for tests whose subject is the real
    /// server itself (the chart installed into it, the differential test).
    pub async fn real() -> KubeServer {
        KubeServer::Real(RealKube::take_turn().await)
    }

    /// Always the stand-in, whatever the mode: for tests of the stand-in itself, or comparing
    /// it with the real server.
    pub async fn sandbox() -> KubeServer {
        KubeServer::Sandbox(crabglamp_sandbox::kube::spawn_loopback().await.expect("API server starts"))
    }

    /// A client with every right (the stand-in has no authorization; on the real server, the
    /// admin's certificate).
    pub fn client(&self) -> kube::Client {
        match self {
            KubeServer::Sandbox(kube) => kube.client().expect("client"),
            KubeServer::Real(real) => real.plane.admin_client(),
        }
    }

    /// The operator's client: on the stand-in its requests carry `user` in the request log; on
    /// the real server it holds the chart's ServiceAccount token (and `user` must be that
    /// account's name, which the real authenticator decides).
    pub fn operator_client(&self, user: &str) -> kube::Client {
        match self {
            KubeServer::Sandbox(kube) => kube.client_as(user).expect("operator client"),
            KubeServer::Real(real) => {
                let identity = real.operator();
                assert_eq!(user, identity.user, "on the real server the operator is the chart's ServiceAccount");
                real.plane.token_client_via(&identity.token, &real.relay.url)
            }
        }
    }

    /// As [`Self::operator_client`], through a relay of its own that the test can stall: the
    /// operator's API server stops answering while the connections stay up.
    pub async fn stalling_operator_client(&self, user: &str) -> (kube::Client, StallingRelay) {
        match self {
            KubeServer::Sandbox(kube) => {
                let relay = Relay::start(&kube.addr.to_string(), "http").await;
                let mut config = kube::Config::new(relay.url.parse().expect("relay URL"));
                let token = hyper::header::HeaderValue::from_str(&format!("Bearer {user}")).expect("bearer header");
                config.headers.push((hyper::header::AUTHORIZATION, token));
                (kube::Client::try_from(config).expect("operator client"), StallingRelay(relay))
            }
            KubeServer::Real(real) => {
                let identity = real.plane.operator();
                assert_eq!(user, identity.user, "on the real server the operator is the chart's ServiceAccount");
                let relay = Relay::start(real.plane.server.trim_start_matches("https://"), "https").await;
                (real.plane.token_client_via(&identity.token, &relay.url), StallingRelay(relay))
            }
        }
    }

    /// A kubeconfig for kubectl and the operator binary: on the real server the operator's
    /// ServiceAccount (its namespace the release namespace); on the stand-in, no credentials.
    pub fn kubeconfig_yaml(&self) -> String {
        match self {
            KubeServer::Sandbox(kube) => kube.kubeconfig_yaml(),
            KubeServer::Real(real) => real.plane.token_kubeconfig(&real.operator().token),
        }
    }

    /// The admin's kubeconfig (the stand-in's has no credentials and every right).
    pub fn admin_kubeconfig_yaml(&self) -> String {
        match self {
            KubeServer::Sandbox(kube) => kube.kubeconfig_yaml(),
            KubeServer::Real(real) => std::fs::read_to_string(&real.plane.kubeconfig).expect("admin kubeconfig"),
        }
    }

    /// A number that grows with every write: the stand-in's resourceVersion (any writer); on the
    /// real server the writes `user` made since this test's turn began, from the audit log
    /// (etcd's revision also moves with the control plane's own lease renewals).
    pub fn writes_by(&self, user: &str) -> u64 {
        match self {
            KubeServer::Sandbox(kube) => kube.resource_version(),
            KubeServer::Real(real) => {
                real.audit_events().iter().filter(|e| e.user.username == user && e.is_write()).count() as u64
            }
        }
    }

    /// How many GETs of `path` (a request path, no query) the server answered, from anyone:
    /// the stand-in's request log, or since this test's turn began the real one's audit log.
    pub fn gets_of(&self, path: &str) -> usize {
        match self {
            KubeServer::Sandbox(kube) => {
                kube.requests().0.iter().filter(|r| r.method == "GET" && r.path == path).count()
            }
            KubeServer::Real(real) => real
                .audit_events()
                .iter()
                .filter(|e| e.verb == "get" && e.request_u_r_i.split('?').next() == Some(path))
                .count(),
        }
    }

    /// Ends the operator's watch streams now, as a network blip or an API-server restart would;
    /// returns how many streams (stand-in) or connections (real server) were open. On the real
    /// server the operator's client goes through a relay of this test's, which drops every
    /// connection it carries: requests in flight fail too, as in a real blip.
    pub fn cut_watches(&self) -> usize {
        match self {
            KubeServer::Sandbox(kube) => kube.cut_watches(),
            KubeServer::Real(real) => real.relay.cut(),
        }
    }

    /// The real server's audit events since this test's turn began.
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        match self {
            KubeServer::Sandbox(_) => panic!("audit events come from the real server (CRABGLAMP_TEST_KUBE=real)"),
            KubeServer::Real(real) => real.audit_events(),
        }
    }
}
