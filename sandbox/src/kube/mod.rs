//! An in-process Kubernetes API server that the unchanged `kube::Client`, `kube_runtime`, real
//! `kubectl` and `helm` accept: legacy and aggregated discovery, OpenAPI v3, get/list/watch/create/
//! update/patch/delete of the crabglamp CRDs, the built-ins the operator uses (Namespaces, Secrets,
//! ConfigMaps, core and events.k8s.io Events, Leases, CustomResourceDefinitions) and those a Helm
//! chart renders (Deployments, Services, ServiceAccounts, Roles, RoleBindings, ClusterRoles,
//! ClusterRoleBindings, PodDisruptionBudgets, NetworkPolicies: stored, defaulted and validated
//! as a real server does, never run), with CRD admission through [`crate::admission`], Table
//! output, strategic merge patch and server-side apply with list merge keys ([`schema`]).
//!
//! It owns only its in-memory state; it never talks to a real cluster and never persists
//! anything.
//!
//! # Deliberate differences from kube-apiserver
//!
//! Kept because no client here depends on them. Each has a stable id: the differential
//! conformance test (`tests/real_kube/conformance.rs`, the same scenario against the real
//! kube-apiserver of `testenv/` and this server) allows a difference only where it names one of
//! these ids, and fails when an allowed one no longer shows.
//! - **D1**: Plain HTTP on loopback, no authentication or authorisation (a bearer token is only
//!   taken as the user's name in the request log, [`requests`]), HTTP/1.1 only. Responses are
//!   always JSON (Accept lists with protobuf first get JSON); protobuf request bodies are read
//!   only for Namespace, Secret and ConfigMap (what `kubectl create` sends that way). `/version`
//!   says v1.32.0.
//! - **D2**: `/openapi/v2` is 404 (kubectl uses v3). OpenAPI v3 schemas of built-in kinds are
//!   k8s-openapi's, every reference inlined (no `$ref`), with the list and patch markers of
//!   [`schema`].
//! - **D3**: Built-in kinds are validated by their schema (types, required fields, list keys,
//!   unknown fields) plus the checks of [`crate::admission::builtin`] and, for Leases and Events,
//!   of [`write`] and [`events`]; other checks of kube-apiserver's validation (resource
//!   quantities, most of the pod spec, security contexts, affinity, the immutable fields of an
//!   Event updated through events.k8s.io) are not made, and a wrong JSON type in a kind other
//!   than a Secret or ConfigMap is a 400 with a simplified message. Services get a cluster IP
//!   from 10.96.0.0/12 without collision checks; no Endpoints, no Pods, no status is ever written.
//! - **D4**: Server-side apply follows structured-merge-diff for ownership, merge, conflicts and
//!   removal, but orders merged list-map items more simply, and a `null` in an applied
//!   configuration removes the field. A client may rewrite `managedFields` (kubectl's
//!   client-side to server-side apply migration does). Which structs a built-in kind's Go type
//!   always carries (so that no Update manager owns them with a `"."`) is listed by hand for the
//!   served kinds ([`resource::ResourceType::zero_value_structs`]), not derived from Go types.
//! - **D5**: Garbage collection is synchronous: dependents go in the same request as their
//!   owner (a dangling ownerReference of a dependent with another owner goes at once too);
//!   Foreground deletion deletes dependents first without the `foregroundDeletion` finalizer and
//!   Orphan strips the ownerReferences without the `orphan` finalizer, so such a DELETE answers
//!   with the `Success` Status where kube-apiserver answers with the object, its finalizer and
//!   `deletionTimestamp`.
//! - **D6**: A deleted namespace is `Terminating` for [`NAMESPACE_GRACE`] before the built-in
//!   namespace controller deletes its content (so `kubectl delete -f dir/` can still delete each
//!   object), then goes once empty, its `kubernetes` spec finalizer dropped as it goes (there is
//!   no `finalize` subresource).
//! - **D7**: Deleting a CRD deletes its objects at once, finalizers notwithstanding.
//! - **D8**: A `continue` token pins the snapshot of its first page for [`state::CONTINUE_TTL`]
//!   (and among the last [`state::CONTINUE_SNAPSHOTS`] paged lists; both configurable), then gets
//!   `410 Expired`, as after a real etcd compaction. Lists with a selector are cut the same way
//!   but without `remainingItemCount`, as on a real server. `resourceVersionMatch=Exact` is
//!   served from the latest state.
//! - **D9**: No admission webhooks, quotas, RBAC, `gracePeriodSeconds` (deletions are
//!   immediate), pods or any controller other than garbage collection and the namespace
//!   controller; no CRD version conversion (every CRD here has one version).
//! - **D10**: A watch whose client reads slower than the history turns over gets `410 Expired`
//!   (a real watch cache drops such a watcher too, with a different message).
//! - **D11**: Field selectors of built-in kinds other than Events accept any field path (real
//!   servers allow a fixed list per kind); Events (both APIs) and custom resources accept exactly
//!   the labels real servers do (custom resources: `metadata.name`, `metadata.namespace` and
//!   their `selectableFields`).
//! - **D12**: Events expire [`state::EVENT_TTL`] after their last write (configurable), as with
//!   kube-apiserver's `--event-ttl`; the expiry is checked four times a second.
//! - **D13**: The event history holds [`state::HISTORY_LIMIT`] changes and about
//!   [`state::HISTORY_BYTES`] of objects (both configurable), and starts after the bootstrap (as a
//!   watch cache starts at the revision it was created at): a watch resumed from before it gets
//!   the `410 Expired` ERROR event, as after a real etcd compaction; the revision in its message
//!   differs. Bookmarks come every [`watch::BOOKMARK_INTERVAL`], where kube-apiserver sends one
//!   about a minute into a watch (and two seconds before its `timeoutSeconds`).
//! - **D14**: A custom resource's `x-kubernetes-validations` failures are worded as the reported
//!   v1.32 words them (`Invalid value: "string": <message>`, the node's type) by
//!   [`crate::admission`]; kube-apiserver 1.35 and later show the value of a scalar node and no
//!   value for an object node (`Invalid value: <message>`). kubectl prints either.
//! - **D15**: After a schema error that blocks the rules (an enum or a type error),
//!   [`crate::admission`] still runs the `x-kubernetes-validations` rules and reports their
//!   failures; kube-apiserver skips them and adds the cause `<nil>: Invalid value: null: some
//!   validation rules were not checked because the object was invalid; correct the existing
//!   errors to complete validation`. The code (422) and the schema causes are the same.
//! - **D16**: A malformed label selector is a 400 BadRequest worded by this server's parser
//!   (`unable to parse requirement: invalid label selector term "a==b==c"`), not by Go's, which
//!   names the token it met (`found '==', expected: ',' or 'end of string'`).
//! - **D17**: A `continue` token that does not decode is a 400 `invalid continue token: continue
//!   key is not valid: ...` whose last part is this server's base64 or JSON error, not Go's.
//! - **D18**: Tables of built-in kinds follow kube-apiserver's printers (columns, descriptions,
//!   cells) for ConfigMaps, Secrets, Namespaces, Events (both APIs) and Leases; the other kinds
//!   get simplified columns (Name, a few fields by JSONPath, Age).

pub mod delete;
pub mod discovery;
pub mod error;
pub mod events;
pub mod fields;
pub mod http;
pub mod jsonpath;
pub mod list;
pub mod meta;
pub mod openapi;
pub mod protobuf;
pub mod requests;
pub mod resource;
pub mod response;
pub mod schema;
pub mod selector;
pub mod shared;
pub mod state;
pub mod strategic;
pub mod table;
pub mod watch;
pub mod write;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::net::TcpListener;

use self::resource::{ResourceType, Special};
use self::state::State;
use self::write::{FieldValidation, Target, Verb, WriteOptions, WriteScope};
pub use shared::Shared;

/// How long a deleted namespace stays Terminating before its content is deleted.
pub const NAMESPACE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How to start the server.
#[derive(Debug, Clone)]
pub struct KubeApiConfig {
    /// Install the crabglamp CRDs ([`crabglamp_operator::api::all_crds`]) at start.
    pub install_crds: bool,
    /// How many changes the watch history keeps.
    pub history_limit: usize,
    /// How many bytes (estimated) of objects the watch history keeps.
    pub history_bytes: usize,
    /// How often a watch that allows bookmarks gets one, busy or not.
    pub bookmark_interval: std::time::Duration,
    /// How long a paged list's `continue` token stays usable.
    pub continue_ttl: std::time::Duration,
    /// How many paged lists' snapshots are kept at most (the oldest go first).
    pub continue_snapshots: usize,
    /// How long an Event lives after its last write (kube-apiserver's `--event-ttl`).
    pub event_ttl: std::time::Duration,
}

impl Default for KubeApiConfig {
    fn default() -> Self {
        Self {
            install_crds: true,
            history_limit: state::HISTORY_LIMIT,
            history_bytes: state::HISTORY_BYTES,
            bookmark_interval: watch::BOOKMARK_INTERVAL,
            continue_ttl: state::CONTINUE_TTL,
            continue_snapshots: state::CONTINUE_SNAPSHOTS,
            event_ttl: state::EVENT_TTL,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener is unusable.
    #[error("cannot use the listener: {0}")]
    Io(#[from] std::io::Error),
    /// A built-in CRD was refused.
    #[error("cannot install CRD {name}: {message}")]
    Crd {
        /// The CRD.
        name: String,
        /// Why.
        message: String,
    },
}

/// Why a client for the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL does not parse (cannot happen for a URL this module built).
    #[error("invalid server URL: {0}")]
    Url(#[from] axum::http::uri::InvalidUri),
    /// kube-client refused the configuration (e.g. a proxy variable it cannot honour).
    #[error("cannot build a kube client: {0}")]
    Kube(#[from] ::kube::Error),
    /// The user name cannot be sent as a bearer token.
    #[error("{0:?} cannot be sent as a bearer token")]
    User(String),
}

/// A running server; stops when dropped.
pub struct RunningKube {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl RunningKube {
    /// A kubeconfig pointing at this server (context `sandbox`, namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.base_url)
    }

    /// A kube client for this server.
    pub fn client(&self) -> Result<::kube::Client, ClientError> {
        let url = self.base_url.parse::<axum::http::Uri>()?;
        Ok(::kube::Client::try_from(::kube::Config::new(url))?)
    }

    /// A kube client whose requests the request log attributes to `user` (it presents `user`
    /// as its bearer token).
    pub fn client_as(&self, user: &str) -> Result<::kube::Client, ClientError> {
        let url = self.base_url.parse::<axum::http::Uri>()?;
        let mut config = ::kube::Config::new(url);
        let token = axum::http::HeaderValue::from_str(&format!("Bearer {user}"))
            .map_err(|_| ClientError::User(user.to_owned()))?;
        config.headers.push((axum::http::header::AUTHORIZATION, token));
        Ok(::kube::Client::try_from(config)?)
    }

    /// Every request received so far (at most [`requests::REQUEST_LOG_LIMIT`], the newest), and
    /// how many older ones were dropped.
    pub fn requests(&self) -> (Vec<requests::KubeRequest>, u64) {
        let log = self.shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        (log.records(), log.dropped())
    }

    /// Server-side applies `manifest` (any served kind) as `manager`, forcing conflicts: what
    /// `sandbox --apply` uses. Namespaced objects without a namespace go to `default`.
    pub fn apply(&self, manifest: &serde_json::Value, manager: &str) -> Result<serde_json::Value, error::ApiError> {
        let s = |p: &str| manifest.pointer(p).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let (api_version, kind, name) = (s("/apiVersion"), s("/kind"), s("/metadata/name"));
        let rt = self
            .shared
            .lock()
            .types()
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
            .ok_or_else(|| error::ApiError::not_found("kinds", "", &format!("{api_version}, Kind={kind}")))?;
        let namespace = if rt.namespaced {
            Some(s("/metadata/namespace")).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        let opts = WriteOptions {
            field_validation: FieldValidation::Strict,
            manager: manager.into(),
            dry_run: false,
            verb: Verb::Apply,
        };
        let target = Target { rt: &rt, namespace: &namespace, subresource: "" };
        let body = manifest.to_string();
        let written = self.shared.write(|state, scope| {
            write::patch(state, scope, &target, &name, write::PatchKind::Apply, body.as_bytes(), true, &opts)
        })?;
        Ok(write::present(&rt, &written.object))
    }

    /// Forgets the watch history up to now, as an etcd compaction does: a watch resumed from an
    /// older resourceVersion then gets the `410 Expired` ERROR event. A test hook.
    pub fn compact_history(&self) {
        self.shared.lock().compact();
    }

    /// Ends every open watch stream now, as a network blip or an API-server restart would: the
    /// clients see their streams close and must watch again (a test hook). Returns how many
    /// were open.
    pub fn cut_watches(&self) -> usize {
        let open = self.open_watches();
        self.shared.cut.send_modify(|n| *n += 1);
        open
    }

    /// How many watch streams are open: lets a test wait until a client (kubectl wait, delete)
    /// is really watching before it makes the change the client waits for.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The current resourceVersion (for tests that need to know how far the server got).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv()
    }
}

impl Drop for RunningKube {
    fn drop(&mut self) {
        // Watches end and idle connections close; the task finishes once every connection has.
        self.shared.stopping.send_replace(true);
    }
}

/// A kubeconfig for a server at `base_url`, with an empty user (no credentials).
pub fn kubeconfig_yaml(base_url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {base_url}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox\n    namespace: default\ncurrent-context: sandbox\nusers:\n- name: sandbox\n  user: {{}}\npreferences: {{}}\n"
    )
}

fn builtin_type(state: &State, special: Special, plural: &str) -> Option<Arc<ResourceType>> {
    state.types().iter().find(|t| t.special == special && t.plural == plural).cloned()
}

/// Starts a server with the crabglamp CRDs on a free loopback port (what tests want).
pub async fn spawn_loopback() -> Result<RunningKube, StartError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    spawn(KubeApiConfig::default(), listener).await
}

/// Starts the server on `listener`.
pub async fn spawn(config: KubeApiConfig, listener: TcpListener) -> Result<RunningKube, StartError> {
    let addr = listener.local_addr()?;
    let mut state = State::with_history_limits(config.history_limit, config.history_bytes);
    state.set_snapshot_limits(config.continue_ttl, config.continue_snapshots);
    state.set_event_ttl(config.event_ttl);
    let opts = WriteOptions {
        field_validation: FieldValidation::Strict,
        manager: "sandbox".into(),
        dry_run: false,
        verb: Verb::Create,
    };
    if let Some(ns_type) = builtin_type(&state, Special::Namespace, "namespaces") {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let target = Target { rt: &ns_type, namespace: "", subresource: "" };
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            write::create(&mut state, &mut WriteScope::inline(), &target, body, &opts)
                .map_err(|e| StartError::Crd { name: ns.into(), message: e.message })?;
        }
    }
    if config.install_crds
        && let Some(crd_type) = builtin_type(&state, Special::Crd, "customresourcedefinitions")
    {
        for crd in crabglamp_operator::api::all_crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body = serde_json::to_value(&crd)
                .map_err(|e| StartError::Crd { name: name.clone(), message: e.to_string() })?;
            let target = Target { rt: &crd_type, namespace: "", subresource: "" };
            write::create(&mut state, &mut WriteScope::inline(), &target, body, &opts)
                .map_err(|e| StartError::Crd { name, message: e.message })?;
        }
    }
    // The watch history starts after the bootstrap, as a real watch cache starts at the
    // revision it was created at: a watch from an older resourceVersion (`resourceVersion=1`)
    // gets `410 Expired` from both, instead of a replay of the bootstrap here.
    state.compact();
    let (latest, _) = tokio::sync::watch::channel(state.rv());
    let (stopping, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        latest,
        stopping,
        cut: tokio::sync::watch::channel(0).0,
        server_address: addr.to_string(),
        bookmark_interval: config.bookmark_interval,
        open_watches: std::sync::atomic::AtomicUsize::new(0),
        requests: Mutex::new(requests::RequestLog::default()),
    });
    let mut stop_signal = shared.stopping.subscribe();
    let app = http::router(shared.clone());
    let controller_state = shared.clone();
    tokio::spawn(async move {
        let namespace_controller = async move {
            let grace = chrono::Duration::from_std(NAMESPACE_GRACE).unwrap_or_else(|_| chrono::Duration::seconds(1));
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                let mut state = controller_state.lock();
                let purged = delete::purge_terminating_namespaces(&mut state, grace);
                // Events expire here too: etcd revokes an expired lease on its own clock.
                let expired = state.expire_events(std::time::Instant::now());
                if purged || expired {
                    controller_state.notify(&state);
                }
            }
        };
        tokio::select! {
            served = axum::serve(listener, app).with_graceful_shutdown(async move {
                // Only `true` is ever sent; an error means the server state is gone.
                let _ = stop_signal.changed().await;
            }) => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "kube API server stopped");
                }
            }
            () = namespace_controller => {}
        }
    });
    Ok(RunningKube { base_url: format!("http://{addr}"), addr, shared })
}
