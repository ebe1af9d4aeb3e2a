//! The real control plane of `testenv/`, one per test binary, started the first time a test
//! asks for it: the chart's CRDs and RBAC installed, and each test's turn on it from a cluster
//! cleared of what the test before it left.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde::Deserialize;
use serde_json::{Value, json};

use super::audit::{AuditEvent, read_audit};
use super::relay::Relay;
use super::run_kubectl;
use super::{RELEASE_NAMESPACE, VIRTUAL_KEY_NAMESPACES};

/// Namespaces a test never deletes.
const KEPT_NAMESPACES: [&str; 5] = ["default", "kube-system", "kube-public", "kube-node-lease", RELEASE_NAMESPACE];

/// One test's turn on the real control plane.
pub struct RealKube {
    pub plane: &'static ControlPlane,
    pub(super) relay: Relay,
    audit_offset: u64,
    /// The chart's Secret Roles in the VirtualKey namespaces, granted once in this turn.
    secret_access: std::sync::Once,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// One test at a time per binary: the operator under test watches every namespace.
static TURN: LazyLock<Arc<tokio::sync::Mutex<()>>> = LazyLock::new(|| Arc::new(tokio::sync::Mutex::new(())));

impl RealKube {
    pub(super) async fn take_turn() -> RealKube {
        let turn = Arc::clone(&TURN).lock_owned().await;
        // Blocks this test's thread once per binary, while the control plane starts.
        let plane = control_plane();
        plane.clear_leftovers().await;
        let audit_offset = std::fs::metadata(&plane.audit_log).map(|m| m.len()).unwrap_or(0);
        let relay = Relay::start(plane.server.trim_start_matches("https://"), "https").await;
        RealKube { plane, relay, audit_offset, secret_access: std::sync::Once::new(), _turn: turn }
    }

    /// The operator's identity, its Secret access granted in this turn: the namespaces of the
    /// Roles go with every turn's leftovers, so they and the Roles are made again.
    pub(super) fn operator(&self) -> &OperatorIdentity {
        let identity = self.plane.operator();
        self.secret_access.call_once(|| self.plane.grant_secret_access(identity));
        identity
    }

    pub(super) fn audit_events(&self) -> Vec<AuditEvent> {
        read_audit(&self.plane.audit_log, self.audit_offset)
    }
}

/// The control plane of this test binary.
pub struct ControlPlane {
    pub server: String,
    /// The admin's kubeconfig (a client certificate in group system:masters).
    pub kubeconfig: PathBuf,
    pub ca_file: PathBuf,
    audit_log: PathBuf,
    ca_pem: Vec<u8>,
    admin: kube::config::AuthInfo,
    operator: OnceLock<OperatorIdentity>,
    // Held for the life of the binary: when the process exits, the pipe closes and testenv
    // stops the control plane and removes its directory.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

/// The chart's ServiceAccount on the real server and a token for it.
pub struct OperatorIdentity {
    pub user: String,
    pub token: String,
    /// The chart's Roles and RoleBindings in [`VIRTUAL_KEY_NAMESPACES`].
    secret_access: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadyLine {
    server: String,
    kubeconfig: PathBuf,
    ca_file: PathBuf,
    audit_log: PathBuf,
}

/// The running test binary's target name (`agents` of `target/debug/deps/agents-0123abcd`),
/// so a kept control-plane directory says which suite it served.
fn test_binary_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe.file_stem().unwrap_or_default().to_string_lossy();
    stem.rsplit_once('-').map_or(&*stem, |(name, _hash)| name).to_owned()
}

/// Starts the control plane the first time it is asked for (blocking: call it from a blocking
/// context), installs the CRDs, and returns it.
fn control_plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(ControlPlane::start)
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let binary = std::env::var_os("CRABGLAMP_TESTENV").filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!(
                "CRABGLAMP_TEST_KUBE=real needs the real control plane: set CRABGLAMP_TESTENV to the binary \
                 `scripts/test` builds (source scripts/lib/services.sh scripts/lib/testenv.sh; ensure_testenv)"
            )
        });
        let log = tempfile::NamedTempFile::new().expect("testenv log file");
        let (log_file, log_path) = log.keep().expect("keep testenv log");
        let mut command = Command::new(&binary);
        command.args(["up", "--until-stdin-eof"]);
        // A directory to keep the control plane's state and logs in after the run (by default
        // testenv removes its temporary directory when it stops).
        if let Some(dir) = std::env::var_os("CRABGLAMP_TESTENV_STATE").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir).join(format!("{}-{}", test_binary_name(), std::process::id()));
            command.arg("--dir").arg(dir);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", PathBuf::from(&binary).display()));
        let stdout = child.stdout.take().expect("testenv stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading to the end: a closed pipe would kill testenv (SIGPIPE) the next time
            // anything in it wrote to its standard output.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(Duration::from_secs(240)).unwrap_or_default();
        let ready: ReadyLine = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "testenv did not become ready; its log ({}):\n{}",
                log_path.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
        let ca_pem = std::fs::read(&ready.ca_file).expect("CA file");
        let kubeconfig_text = std::fs::read_to_string(&ready.kubeconfig).expect("admin kubeconfig");
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig_text).expect("admin kubeconfig parses");
        let admin = kubeconfig.auth_infos.first().and_then(|a| a.auth_info.clone()).expect("admin user");
        let plane = ControlPlane {
            server: ready.server,
            kubeconfig: ready.kubeconfig,
            ca_file: ready.ca_file,
            audit_log: ready.audit_log,
            ca_pem,
            admin,
            operator: OnceLock::new(),
            _stdin: Mutex::new(child.stdin.take().expect("testenv stdin")),
            _child: Mutex::new(child),
        };
        plane.install_crds();
        plane
    }

    /// kubectl against this control plane as the admin; panics with what it printed on failure.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let run = run_kubectl(Path::new(&kubectl), &self.kubeconfig, args, stdin);
        assert!(run.ok, "kubectl {} failed: {}{}", args.join(" "), run.stderr, run.stdout);
        run.stdout
    }
}

impl ControlPlane {
    fn install_crds(&self) {
        let crds = crate::repo().join("crds");
        self.kubectl(&["apply", "--server-side", "-f", &crds.display().to_string()], None);
        self.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], None);
    }

    /// The chart's ServiceAccount and RBAC, as `helm template` renders them with default values
    /// into the release namespace (nothing written again by hand), and a token for it.
    pub fn operator(&self) -> &OperatorIdentity {
        self.operator.get_or_init(|| {
            // VirtualKeys on (a REDIS_URL Secret), served in the tests' namespaces only.
            let virtual_keys = format!("virtualKeys.namespaces={{{}}}", VIRTUAL_KEY_NAMESPACES.join(","));
            let rendered =
                crate::helm::template(&[], &["secrets.redisUrl.existingSecret=crabglamp-operator", &virtual_keys])
                    .unwrap_or_else(|e| panic!("helm template failed: {e}"));
            let mut access = Vec::new();
            let mut secret_access = Vec::new();
            let mut account = None;
            for object in rendered {
                let kind = object["kind"].as_str().unwrap_or_default();
                if kind == "ServiceAccount" {
                    account = object["metadata"]["name"].as_str().map(str::to_owned);
                }
                let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
                if VIRTUAL_KEY_NAMESPACES.contains(&namespace) {
                    secret_access.push(object);
                } else if ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].contains(&kind)
                {
                    access.push(object);
                }
            }
            let account = account.expect("the chart renders a ServiceAccount");
            let namespaces = self.kubectl(&["get", "namespaces", "-o", "name"], None);
            if !namespaces.lines().any(|l| l == format!("namespace/{RELEASE_NAMESPACE}")) {
                self.kubectl(&["create", "namespace", RELEASE_NAMESPACE], None);
            }
            let list = json!({"apiVersion": "v1", "kind": "List", "items": access});
            self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&list.to_string()));
            let token =
                self.kubectl(&["create", "token", &account, "-n", RELEASE_NAMESPACE, "--duration", "24h"], None);
            assert!(!secret_access.is_empty(), "the chart renders Secret Roles in the VirtualKey namespaces");
            OperatorIdentity {
                user: format!("system:serviceaccount:{RELEASE_NAMESPACE}:{account}"),
                token: token.trim().to_owned(),
                secret_access,
            }
        })
    }

    /// Makes the VirtualKey namespaces (a test creating one again is told it exists) and
    /// applies the chart's Secret Roles and RoleBindings in them.
    fn grant_secret_access(&self, identity: &OperatorIdentity) {
        let namespaces: Vec<Value> = VIRTUAL_KEY_NAMESPACES
            .iter()
            .map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": namespaces});
        self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&list.to_string()));
        let list = json!({"apiVersion": "v1", "kind": "List", "items": identity.secret_access});
        self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&list.to_string()));
    }

    fn config(&self, auth: kube::config::AuthInfo, namespace: &str) -> kube::Config {
        let mut config = kube::Config::new(self.server.parse().expect("server URL"));
        let der = pem_certificates(&self.ca_pem);
        config.root_cert = Some(der);
        config.auth_info = auth;
        config.default_namespace = namespace.to_owned();
        config
    }

    /// The admin's client (for the test's own requests).
    pub(super) fn admin_client(&self) -> kube::Client {
        kube::Client::try_from(self.config(self.admin.clone(), "default")).expect("admin client")
    }

    /// A client holding `token`, in the release namespace (as a pod of the chart would be),
    /// through `url` (a relay to this server).
    pub(super) fn token_client_via(&self, token: &str, url: &str) -> kube::Client {
        let auth = kube::config::AuthInfo { token: Some(token.to_owned().into()), ..Default::default() };
        let mut config = self.config(auth, RELEASE_NAMESPACE);
        config.cluster_url = url.parse().expect("relay URL");
        kube::Client::try_from(config).expect("token client")
    }

    /// A kubeconfig holding `token`, its namespace the release namespace.
    pub fn token_kubeconfig(&self, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\n\
             users:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: testenv\n  context: {{cluster: testenv, user: operator, namespace: {RELEASE_NAMESPACE}}}\n\
             current-context: testenv\n",
            self.server
        )
    }

    /// Removes what earlier tests left: every object of our kinds (finalizers stripped: the
    /// operator that put them there is gone), every namespace but the system ones and the release
    /// namespace (waiting until they are gone, so a test can create one of the same name), and
    /// the Leases and ConfigMaps of the release namespace (a dead test's Lease would hold the
    /// next test's election; its audit anchor would not match the next test's database).
    async fn clear_leftovers(&self) {
        let client = self.admin_client();
        for plural in ["agents", "plainvms", "virtualkeys"] {
            let resource = ApiResource {
                group: "crabglamp.com".into(),
                version: "v1alpha1".into(),
                api_version: "crabglamp.com/v1alpha1".into(),
                kind: String::new(),
                plural: plural.into(),
            };
            let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            for object in all.list(&ListParams::default()).await.expect("list leftovers").items {
                let namespace = object.metadata.namespace.clone().unwrap_or_default();
                let name = object.metadata.name.clone().unwrap_or_default();
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
                let unfinalize = Patch::Merge(json!({"metadata": {"finalizers": null}}));
                let _ = api.patch(&name, &PatchParams::default(), &unfinalize).await;
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let doomed = |list: &[Namespace]| -> Vec<String> {
            list.iter()
                .filter_map(|n| n.metadata.name.clone())
                .filter(|n| !KEPT_NAMESPACES.contains(&n.as_str()))
                .collect()
        };
        for name in doomed(&namespaces.list(&ListParams::default()).await.expect("namespaces").items) {
            let _ = namespaces.delete(&name, &DeleteParams::background()).await;
        }
        let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
        let _ = leases.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
        for cm in config_maps.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            let name = cm.metadata.name.unwrap_or_default();
            if name != "kube-root-ca.crt" {
                let _ = config_maps.delete(&name, &DeleteParams::default()).await;
            }
        }
        let start = tokio::time::Instant::now();
        loop {
            let left = doomed(&namespaces.list(&ListParams::default()).await.expect("namespaces").items);
            if left.is_empty() {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "namespaces of earlier tests not gone: {left:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        match line.trim() {
            "-----BEGIN CERTIFICATE-----" => {
                inside = true;
                body.clear();
            }
            "-----END CERTIFICATE-----" => {
                inside = false;
                out.push(base64::engine::general_purpose::STANDARD.decode(&body).expect("CA certificate base64"));
            }
            l if inside => body.push_str(l),
            _ => {}
        }
    }
    out
}
