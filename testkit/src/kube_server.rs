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

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use crabglamp_sandbox::kube::RunningKube;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde::Deserialize;
use serde_json::{Value, json};

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
/// Namespaces a test never deletes.
const KEPT_NAMESPACES: [&str; 5] = ["default", "kube-system", "kube-public", "kube-node-lease", RELEASE_NAMESPACE];
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

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

/// One test's turn on the real control plane.
pub struct RealKube {
    pub plane: &'static ControlPlane,
    relay: Relay,
    audit_offset: u64,
    /// The chart's Secret Roles in the VirtualKey namespaces, granted once in this turn.
    secret_access: std::sync::Once,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// One test at a time per binary: the operator under test watches every namespace.
static TURN: LazyLock<Arc<tokio::sync::Mutex<()>>> = LazyLock::new(|| Arc::new(tokio::sync::Mutex::new(())));

impl RealKube {
    async fn take_turn() -> RealKube {
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
    fn operator(&self) -> &OperatorIdentity {
        let identity = self.plane.operator();
        self.secret_access.call_once(|| self.plane.grant_secret_access(identity));
        identity
    }

    fn audit_events(&self) -> Vec<AuditEvent> {
        read_audit(&self.plane.audit_log, self.audit_offset)
    }
}

/// A TCP relay on loopback to an API server (TLS passes through untouched: the real server's
/// certificate names 127.0.0.1, whatever the port), whose connections a test can drop at once,
/// or stall: a stalled relay keeps every connection open and accepts new ones, but holds every
/// byte either way until it resumes, as a half-open connection or a hung API server does.
struct Relay {
    url: String,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    stalled: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to`, holding each chunk while the relay is stalled.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut chunk = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut chunk).await {
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    /// A relay to `upstream` (`host:port`); its URL has `scheme`.
    async fn start(upstream: &str, scheme: &str) -> Relay {
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let url = format!("{scheme}://{}", listener.local_addr().expect("relay address"));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (stalled, stalled_rx) = tokio::sync::watch::channel(false);
        let open = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let stalled = stalled_rx.clone();
                let relayed = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(pump(in_read, out_write, stalled.clone()), pump(out_read, in_write, stalled));
                    }
                });
                let mut open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                open.retain(|c| !c.is_finished());
                open.push(relayed.abort_handle());
            }
        });
        Relay { url, connections, stalled, task }
    }

    /// Drops every connection open now; returns how many there were.
    fn cut(&self) -> usize {
        let open = std::mem::take(&mut *self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let live = open.iter().filter(|c| !c.is_finished()).count();
        for connection in open {
            connection.abort();
        }
        live
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// A client's own relay to the API server, which the test can stall and resume.
pub struct StallingRelay(Relay);

impl StallingRelay {
    /// From now on nothing passes either way (connections stay open, new ones are accepted).
    pub fn stall(&self) {
        self.0.stalled.send_replace(true);
    }

    /// What was held passes, and everything after it.
    pub fn resume(&self) {
        self.0.stalled.send_replace(false);
    }
}

/// What a test reads of one kube-apiserver audit event (level Metadata).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    pub request_u_r_i: String,
    pub user: AuditUser,
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    pub stage: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    pub username: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub api_group: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map(|s| s.code).unwrap_or(0)
    }
}

fn read_audit(path: &Path, offset: u64) -> Vec<AuditEvent> {
    let mut file = std::fs::File::open(path).expect("audit log");
    file.seek(SeekFrom::Start(offset)).expect("seek audit log");
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read audit log");
    // The last line may still be being written: only whole lines count.
    text.lines()
        .filter(|line| line.ends_with('}'))
        .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
        // Once per request: a watch when it opens (its ResponseComplete comes when it ends),
        // everything else when it completes.
        .filter(|e| match e.stage.as_str() {
            "ResponseStarted" => e.verb == "watch",
            "ResponseComplete" => e.verb != "watch",
            other => other == "Panic",
        })
        .collect()
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

/// kubectl 1.32: the machine's, on PATH (scripts/test installs it when missing).
pub fn kubectl_132() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl is not on PATH: install kubectl 1.32 (these tests drive the real binary)")
}

/// kubectl 1.35, from `KUBECTL_135` (scripts/test sets it with scripts/kubectl-135).
pub fn kubectl_135() -> PathBuf {
    let p = std::env::var("KUBECTL_135")
        .expect("KUBECTL_135 is not set: run `export KUBECTL_135=$(scripts/kubectl-135)` (scripts/test does)");
    PathBuf::from(p)
}

/// What one kubectl run printed, and whether it succeeded.
pub struct KubectlRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl` (a path: 1.32 or 1.35) with `kubeconfig`, `stdin` piped in if given.
pub fn run_kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> KubectlRun {
    let mut command = Command::new(kubectl);
    command.args(args).env("KUBECONFIG", kubeconfig).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", kubectl.display()));
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl finishes");
    KubectlRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
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
    fn admin_client(&self) -> kube::Client {
        kube::Client::try_from(self.config(self.admin.clone(), "default")).expect("admin client")
    }

    /// A client holding `token`, in the release namespace (as a pod of the chart would be),
    /// through `url` (a relay to this server).
    fn token_client_via(&self, token: &str, url: &str) -> kube::Client {
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
