//! Hetzner Cloud client: servers, power actions, actions and firewalls, typed with the
//! `hcloud` crate's models. Requests go through our own `reqwest` layer rather than the
//! crate's `apis` because those hide the `RateLimit-*` headers and flatten Hetzner's error
//! codes into opaque strings; the models (generated from Hetzner's OpenAPI document) are
//! reused so a shape mismatch shows up as a decode error. Creates are idempotent by name.

pub use super::hetzner_shapes::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hcloud::models::{self, Action, Firewall, Pagination, Rule, Server, ServerType};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{CloudError, ConfigError, Provider, ProviderError};
use super::metrics::CloudMetrics;
use super::ratelimit::RateLimiter;
use super::retry::RetryPolicy;
use super::secret::Secret;
use super::transport::{Call, Transport};

/// The public API's base URL.
pub const HETZNER_API: &str = "https://api.hetzner.cloud/v1";

/// Hetzner allows at most 50 items per page.
pub const MAX_PER_PAGE: u32 = 50;
/// hcloud-go polls at most 25 action ids per request; so do we.
const ACTIONS_PER_POLL: usize = 25;

/// Where and as whom the client talks.
#[derive(Clone, Debug)]
pub struct HetznerConfig {
    pub base_url: String,
    pub token: Secret,
    pub retry: RetryPolicy,
    /// Per-attempt HTTP timeout.
    pub timeout: Duration,
}

impl HetznerConfig {
    pub fn new(base_url: impl Into<String>, token: impl Into<Secret>) -> Self {
        HetznerConfig {
            base_url: base_url.into(),
            token: token.into(),
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
        }
    }

    /// From `HCLOUD_TOKEN` (required) and `HCLOUD_ENDPOINT` (default: the public API).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env) with any source of variables (tests, flags).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let token = lookup("HCLOUD_TOKEN").filter(|t| !t.is_empty()).ok_or(ConfigError::Missing("HCLOUD_TOKEN"))?;
        let endpoint = lookup("HCLOUD_ENDPOINT").filter(|e| !e.is_empty()).unwrap_or_else(|| HETZNER_API.to_owned());
        Ok(Self::new(endpoint, token))
    }
}

#[derive(Deserialize)]
struct SummaryPage {
    servers: Vec<ServerSummary>,
    meta: SummaryMeta,
}

#[derive(Deserialize)]
struct SummaryMeta {
    pagination: Pagination,
}

#[derive(Deserialize)]
struct ServerBody {
    server: Server,
}
#[derive(Deserialize)]
struct ActionBody {
    action: Action,
}
#[derive(Deserialize)]
struct ActionsBody {
    actions: Vec<Action>,
}
#[derive(Deserialize)]
struct FirewallBody {
    firewall: Firewall,
}
#[derive(Deserialize)]
struct ServerTypeBody {
    server_type: ServerType,
}

/// The Hetzner Cloud client. Clone the `Arc<RateLimiter>` into every client of one project.
pub struct HetznerClient {
    t: Transport,
}

impl HetznerClient {
    pub fn new(config: HetznerConfig, limiter: Arc<RateLimiter>, metrics: CloudMetrics) -> Result<Self, CloudError> {
        let t = Transport::new(
            Provider::Hetzner,
            &config.base_url,
            config.token,
            limiter,
            metrics,
            config.retry,
            config.timeout,
        )?;
        Ok(HetznerClient { t })
    }

    pub fn metrics(&self) -> &CloudMetrics {
        &self.t.metrics
    }

    // ---------- servers ----------

    /// Creates a server, or adopts the one an earlier attempt created: when the name is
    /// taken by a server carrying all of `spec.labels`, that server is returned with
    /// `adopted: true`; a server with that name but other labels is someone else's, and the
    /// conflict is returned. With empty `spec.labels` nothing is ever adopted.
    pub async fn create_server(&self, spec: &ServerSpec) -> Result<ServerCreated, CloudError> {
        let mut body = json!({
            "name": spec.name,
            "server_type": spec.server_type,
            "image": spec.image,
            "location": spec.location,
            "labels": spec.labels,
            "start_after_create": spec.start_after_create,
        });
        if let Some(ud) = &spec.user_data {
            body["user_data"] = json!(ud.expose());
        }
        if !spec.ssh_keys.is_empty() {
            body["ssh_keys"] = json!(spec.ssh_keys);
        }
        if !spec.firewalls.is_empty() {
            body["firewalls"] = Value::Array(spec.firewalls.iter().map(|id| json!({"firewall": id})).collect());
        }
        let call = Call::new("create_server", Method::POST, "/servers").body(&body);
        match self.t.call::<models::CreateServerResponse>(call).await {
            Ok(r) => {
                let mut actions = vec![*r.action];
                actions.extend(r.next_actions);
                Ok(ServerCreated { server: *r.server, actions, adopted: false })
            }
            Err(CloudError::Conflict(detail)) if detail.code == "uniqueness_error" => {
                match self.find_server_by_name(&spec.name).await? {
                    Some(server) if carries_marks(&server.labels, &spec.labels) => {
                        Ok(ServerCreated { server, actions: Vec::new(), adopted: true })
                    }
                    _ => Err(CloudError::Conflict(detail)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The server, or `None` when it does not exist.
    pub async fn get_server(&self, id: i64) -> Result<Option<Server>, CloudError> {
        let call = Call::new("get_server", Method::GET, format!("/servers/{id}"));
        not_found_as_none(self.t.call::<ServerBody>(call).await.map(|b| b.server))
    }

    pub async fn find_server_by_name(&self, name: &str) -> Result<Option<Server>, CloudError> {
        let call = Call::new("list_servers", Method::GET, "/servers").query("name", name);
        let r: models::ListServersResponse = self.t.call(call).await?;
        Ok(r.servers.into_iter().find(|s| s.name == name))
    }

    /// One page of servers matching a label selector (`None` = all).
    pub async fn list_servers_page(
        &self,
        label_selector: Option<&str>,
        page: u32,
        per_page: u32,
    ) -> Result<Page<Server>, CloudError> {
        let call = list_page_call("list_servers", "/servers", label_selector, page, per_page);
        let r: models::ListServersResponse = self.t.call(call).await?;
        Ok(Page { items: r.servers, pagination: *r.meta.pagination })
    }

    /// Every server matching a label selector, page by page (one request per 50 servers).
    pub async fn list_servers(&self, label_selector: Option<&str>) -> Result<Vec<Server>, CloudError> {
        all_pages(|page| self.list_servers_page(label_selector, page, MAX_PER_PAGE)).await
    }

    /// Every server matching a label selector as tolerant summaries, page by page (one
    /// request per 50 servers): what the controllers' shared fleet view is built from.
    pub async fn list_server_summaries(&self, label_selector: Option<&str>) -> Result<Vec<ServerSummary>, CloudError> {
        all_pages(|page| async move {
            let call = list_page_call("list_servers", "/servers", label_selector, page, MAX_PER_PAGE);
            let r: SummaryPage = self.t.call(call).await?;
            Ok(Page { items: r.servers, pagination: r.meta.pagination })
        })
        .await
    }

    /// Replaces the server's labels (Hetzner replaces the whole set), e.g. after a transfer.
    pub async fn set_server_labels(&self, id: i64, labels: &BTreeMap<String, String>) -> Result<Server, CloudError> {
        let body = json!({"labels": labels});
        let call = Call::new("update_server", Method::PUT, format!("/servers/{id}")).body(&body);
        Ok(self.t.call::<ServerBody>(call).await?.server)
    }

    /// Deletes a server; `None` when it was already gone (deletion is idempotent).
    pub async fn delete_server(&self, id: i64) -> Result<Option<Action>, CloudError> {
        let call = Call::new("delete_server", Method::DELETE, format!("/servers/{id}"));
        let r = not_found_as_none(self.t.call::<models::DeleteServerResponse>(call).await)?;
        Ok(r.and_then(|r| r.action.map(|a| *a)))
    }

    async fn server_action(&self, id: i64, operation: &'static str, verb: &str) -> Result<Action, CloudError> {
        let call = Call::new(operation, Method::POST, format!("/servers/{id}/actions/{verb}"));
        Ok(self.t.call::<ActionBody>(call).await?.action)
    }

    pub async fn power_on(&self, id: i64) -> Result<Action, CloudError> {
        self.server_action(id, "poweron_server", "poweron").await
    }

    /// ACPI shutdown: succeeds once the signal is sent, even if the guest ignores it.
    pub async fn shutdown(&self, id: i64) -> Result<Action, CloudError> {
        self.server_action(id, "shutdown_server", "shutdown").await
    }

    /// Hard power-off.
    pub async fn power_off(&self, id: i64) -> Result<Action, CloudError> {
        self.server_action(id, "poweroff_server", "poweroff").await
    }

    // ---------- actions ----------

    pub async fn get_action(&self, id: i64) -> Result<Action, CloudError> {
        let call = Call::new("get_action", Method::GET, format!("/actions/{id}"));
        Ok(self.t.call::<ActionBody>(call).await?.action)
    }

    /// Many actions with one request per 25 ids (how many objects' actions a controller
    /// polls at once, instead of one GET each).
    pub async fn get_actions(&self, ids: &[i64]) -> Result<Vec<Action>, CloudError> {
        let mut all = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ACTIONS_PER_POLL) {
            let mut call = Call::new("get_actions", Method::GET, "/actions");
            for id in chunk {
                call = call.query("id", id);
            }
            call = call.query("sort", "status").query("sort", "id");
            all.extend(self.t.call::<ActionsBody>(call).await?.actions);
        }
        Ok(all)
    }

    /// Polls until every action has finished; an action that ends in `error` fails the wait
    /// with its code. Gives up (retryably) at `deadline`.
    pub async fn wait_for_actions(
        &self,
        ids: &[i64],
        poll: Duration,
        deadline: Instant,
    ) -> Result<Vec<Action>, CloudError> {
        // The API answers each id once: a repeated id would otherwise never count as done.
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let ids = unique.as_slice();
        loop {
            let actions = self.get_actions(ids).await?;
            if let Some(failed) = actions.iter().find(|a| a.status == models::action::Status::Error) {
                let (code, message) = failed
                    .error
                    .as_ref()
                    .map_or(("action_failed".to_owned(), String::new()), |e| (e.code.clone(), e.message.clone()));
                return Err(CloudError::Permanent(self.detail("wait_for_actions", code, message)));
            }
            if actions.iter().all(|a| a.status == models::action::Status::Success) && actions.len() == ids.len() {
                return Ok(actions);
            }
            if Instant::now() + poll > deadline {
                return Err(CloudError::Retryable(self.detail(
                    "wait_for_actions",
                    "timeout".into(),
                    "actions still running at the deadline".into(),
                )));
            }
            tokio::time::sleep(poll).await;
        }
    }

    fn detail(&self, operation: &'static str, code: String, message: String) -> ProviderError {
        ProviderError { provider: Provider::Hetzner, operation, status: None, code, message }
    }

    // ---------- firewalls ----------

    /// Creates a firewall (applied to `servers`), or adopts one of that name carrying all of
    /// `labels` (never with empty `labels`).
    pub async fn create_firewall(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        rules: &[Rule],
        servers: &[i64],
    ) -> Result<FirewallCreated, CloudError> {
        let apply_to: Vec<Value> = servers.iter().map(|id| json!({"type": "server", "server": {"id": id}})).collect();
        let body = json!({"name": name, "labels": labels, "rules": rules, "apply_to": apply_to});
        let call = Call::new("create_firewall", Method::POST, "/firewalls").body(&body);
        match self.t.call::<models::CreateFirewallResponse>(call).await {
            Ok(r) => {
                let firewall = r.firewall.map(|f| *f).ok_or_else(|| {
                    // As for an undecodable answer: the firewall may exist; a retry adopts it.
                    CloudError::Retryable(self.detail(
                        "create_firewall",
                        "decode".into(),
                        "no firewall in answer".into(),
                    ))
                })?;
                Ok(FirewallCreated { firewall, actions: r.actions.unwrap_or_default(), adopted: false })
            }
            Err(CloudError::Conflict(detail)) if detail.code == "uniqueness_error" => {
                match self.find_firewall_by_name(name).await? {
                    Some(fw) if fw.labels.as_ref().is_some_and(|l| carries_marks(l, labels)) => {
                        Ok(FirewallCreated { firewall: fw, actions: Vec::new(), adopted: true })
                    }
                    _ => Err(CloudError::Conflict(detail)),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn get_firewall(&self, id: i64) -> Result<Option<Firewall>, CloudError> {
        let call = Call::new("get_firewall", Method::GET, format!("/firewalls/{id}"));
        not_found_as_none(self.t.call::<FirewallBody>(call).await.map(|b| b.firewall))
    }

    pub async fn find_firewall_by_name(&self, name: &str) -> Result<Option<Firewall>, CloudError> {
        let call = Call::new("list_firewalls", Method::GET, "/firewalls").query("name", name);
        let r: models::ListFirewallsResponse = self.t.call(call).await?;
        Ok(r.firewalls.into_iter().find(|f| f.name == name))
    }

    /// One page of firewalls matching a label selector (`None` = all).
    pub async fn list_firewalls_page(
        &self,
        label_selector: Option<&str>,
        page: u32,
        per_page: u32,
    ) -> Result<Page<Firewall>, CloudError> {
        let call = list_page_call("list_firewalls", "/firewalls", label_selector, page, per_page);
        let r: models::ListFirewallsResponse = self.t.call(call).await?;
        Ok(Page { items: r.firewalls, pagination: *r.meta.pagination })
    }

    /// Every firewall matching a label selector, page by page.
    pub async fn list_firewalls(&self, label_selector: Option<&str>) -> Result<Vec<Firewall>, CloudError> {
        all_pages(|page| self.list_firewalls_page(label_selector, page, MAX_PER_PAGE)).await
    }

    /// Replaces a firewall's labels (an orphaned firewall loses ours).
    pub async fn set_firewall_labels(&self, id: i64, labels: &BTreeMap<String, String>) -> Result<(), CloudError> {
        let body = json!({"labels": labels});
        let call = Call::new("update_firewall", Method::PUT, format!("/firewalls/{id}")).body(&body);
        self.t.call::<FirewallBody>(call).await.map(|_| ())
    }

    /// Replaces all rules (`[]` clears them).
    pub async fn set_firewall_rules(&self, id: i64, rules: &[Rule]) -> Result<Vec<Action>, CloudError> {
        let body = json!({"rules": rules});
        let call =
            Call::new("set_firewall_rules", Method::POST, format!("/firewalls/{id}/actions/set_rules")).body(&body);
        Ok(self.t.call::<ActionsBody>(call).await?.actions)
    }

    /// Applies the firewall to a server; already applied counts as done (no actions).
    pub async fn apply_firewall(&self, firewall: i64, server: i64) -> Result<Vec<Action>, CloudError> {
        let body = json!({"apply_to": [{"type": "server", "server": {"id": server}}]});
        let call =
            Call::new("apply_firewall", Method::POST, format!("/firewalls/{firewall}/actions/apply_to_resources"))
                .body(&body);
        match self.t.call::<ActionsBody>(call).await {
            Ok(r) => Ok(r.actions),
            Err(CloudError::Conflict(d)) if d.code == "firewall_already_applied" => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Removes the firewall from a server. Idempotent like the deletes: when the firewall or
    /// the server is gone (`not_found`, `firewall_resource_not_found`) nothing is applied any
    /// more, so teardown after a lost answer or a vanished server goes on (no actions).
    pub async fn remove_firewall(&self, firewall: i64, server: i64) -> Result<Vec<Action>, CloudError> {
        let body = json!({"remove_from": [{"type": "server", "server": {"id": server}}]});
        let call =
            Call::new("remove_firewall", Method::POST, format!("/firewalls/{firewall}/actions/remove_from_resources"))
                .body(&body);
        Ok(not_found_as_none(self.t.call::<ActionsBody>(call).await)?.map(|b| b.actions).unwrap_or_default())
    }

    /// Deletes a firewall; `false` when it was already gone. Still applied: `Conflict`
    /// (`resource_in_use`).
    pub async fn delete_firewall(&self, id: i64) -> Result<bool, CloudError> {
        let call = Call::new("delete_firewall", Method::DELETE, format!("/firewalls/{id}"));
        Ok(not_found_as_none(self.t.call::<Value>(call).await)?.is_some())
    }

    // ---------- catalog ----------

    pub async fn server_type(&self, name: &str) -> Result<Option<ServerType>, CloudError> {
        let call = Call::new("list_server_types", Method::GET, "/server_types").query("name", name);
        let r: models::ListServerTypesResponse = self.t.call(call).await?;
        Ok(r.server_types.into_iter().find(|t| t.name == name))
    }

    pub async fn server_type_by_id(&self, id: i64) -> Result<Option<ServerType>, CloudError> {
        let call = Call::new("get_server_type", Method::GET, format!("/server_types/{id}"));
        not_found_as_none(self.t.call::<ServerTypeBody>(call).await.map(|b| b.server_type))
    }
}

/// Whether `server_type` can be ordered in `location`: not deprecated, and listed there
/// without a deprecation. (The generated model has no per-location `available` flag; the
/// API lists a type only where it is sold or being phased out.)
pub fn offered_in(server_type: &ServerType, location: &str) -> bool {
    if server_type.deprecated == Some(true) {
        return false;
    }
    server_type.locations.iter().any(|l| l.name == location && l.deprecation.is_none())
}

/// Whether a resource found under our name is ours: it carries every one of our marks. No
/// marks prove nothing (every label set contains the empty one), so a spec without labels
/// never adopts: SPEC §7 forbids taking over a resource that merely shares a name.
fn carries_marks(have: &std::collections::HashMap<String, String>, marks: &BTreeMap<String, String>) -> bool {
    !marks.is_empty() && marks.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// One page of a list, sorted by id so pages stay stable while resources come and go.
fn list_page_call(
    operation: &'static str,
    path: &'static str,
    label_selector: Option<&str>,
    page: u32,
    per_page: u32,
) -> Call<'static> {
    let call = Call::new(operation, Method::GET, path)
        .query("page", page)
        .query("per_page", per_page.min(MAX_PER_PAGE))
        .query("sort", "id:asc");
    match label_selector {
        Some(sel) => call.query("label_selector", sel),
        None => call,
    }
}

/// Follows `meta.pagination.next_page` from page 1 and gathers every item. Only a next page
/// beyond the current one is followed, so an answer that points backwards cannot loop.
async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, CloudError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, CloudError>>,
{
    let mut all = Vec::new();
    let mut page: u32 = 1;
    loop {
        let p = fetch(page).await?;
        all.extend(p.items);
        match p.pagination.next_page.and_then(|n| u32::try_from(n).ok()) {
            Some(next) if next > page => page = next,
            _ => return Ok(all),
        }
    }
}

fn not_found_as_none<T>(r: Result<T, CloudError>) -> Result<Option<T>, CloudError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(CloudError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The cloud-init document that installs `ssh_keys` for root: how servers get their keys
/// (see [`ServerSpec`] for why not `/ssh_keys`). Start of a `#cloud-config` the caller may
/// extend; keys are written as YAML strings, so a comment in a key cannot break the document.
pub fn ssh_keys_cloud_config(ssh_keys: &[String]) -> String {
    let mut doc = String::from("#cloud-config\nssh_authorized_keys:");
    if ssh_keys.is_empty() {
        doc.push_str(" []");
    }
    for key in ssh_keys {
        // JSON strings are valid YAML double-quoted scalars.
        doc.push_str("\n  - ");
        doc.push_str(&Value::String(key.trim().to_owned()).to_string());
    }
    doc.push('\n');
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_variables() {
        let none = HetznerConfig::from_lookup(|_| None).unwrap_err();
        assert_eq!(none, ConfigError::Missing("HCLOUD_TOKEN"));
        let c = HetznerConfig::from_lookup(|n| (n == "HCLOUD_TOKEN").then(|| "secret-t".to_owned())).unwrap();
        assert_eq!(c.base_url, HETZNER_API);
        assert!(!format!("{c:?}").contains("secret-t"), "the token never shows in Debug");
    }

    #[test]
    fn adoption_needs_every_mark_and_at_least_one() {
        let have: std::collections::HashMap<String, String> =
            [("crabglamp.com/uid".to_owned(), "u1".to_owned()), ("team".to_owned(), "x".to_owned())].into();
        let marks = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert!(carries_marks(&have, &marks(&[("crabglamp.com/uid", "u1")])));
        assert!(!carries_marks(&have, &marks(&[("crabglamp.com/uid", "u2")])));
        assert!(!carries_marks(&have, &marks(&[])), "no marks never prove ownership");
    }

    #[test]
    fn cloud_config_quotes_keys() {
        let doc = ssh_keys_cloud_config(&["ssh-ed25519 AAAAC3 ops: \"laptop\" #1".to_owned()]);
        assert_eq!(doc, "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3 ops: \\\"laptop\\\" #1\"\n");
        let parsed: serde_json::Value = serde_norway::from_str(&doc).unwrap();
        assert_eq!(parsed["ssh_authorized_keys"][0], "ssh-ed25519 AAAAC3 ops: \"laptop\" #1");
        assert_eq!(ssh_keys_cloud_config(&[]), "#cloud-config\nssh_authorized_keys: []\n");
    }
}
