//! The Hetzner Cloud API routes the simulator serves: request parsing and validation,
//! pagination, sorting and the status codes of the real API. State lives in [`World`];
//! these handlers never sleep or hold the lock across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use super::catalog;
use super::envelope::{ApiError, Reply};
use super::labels::{parse_selector, validate_labels};
use super::physics::Command;
use super::state::HzState;
use super::world::{
    Action, AppliedTo, Effect, Firewall, FirewallRule, NewServer, Server, SshKey, World, rfc3339, ssh_key_json,
};
use crate::http::{json_response, now_rfc3339};

type St = State<Arc<HzState>>;
type Q = Query<Vec<(String, String)>>;

/// Hetzner's cap on cloud-init `user_data`: 32 KiB.
const USER_DATA_MAX: usize = 32 * 1024;

pub fn router(state: Arc<HzState>) -> Router {
    Router::new()
        .route("/servers", get(list_servers).post(create_server))
        .route("/servers/actions", get(list_server_actions))
        .route("/servers/actions/{action}", get(get_action))
        .route("/servers/{id}", get(get_server).put(update_server).delete(delete_server))
        .route("/servers/{id}/actions", get(list_one_server_actions))
        .route("/servers/{id}/actions/{action}", get(get_server_action).post(server_command))
        .route("/firewalls", get(list_firewalls).post(create_firewall))
        .route("/firewalls/actions", get(list_firewall_actions))
        .route("/firewalls/actions/{action}", get(get_action))
        .route("/firewalls/{id}", get(get_firewall).put(update_firewall).delete(delete_firewall))
        .route("/firewalls/{id}/actions", get(list_one_firewall_actions))
        .route("/firewalls/{id}/actions/{action}", get(get_firewall_action).post(firewall_command))
        .route("/actions", get(list_actions))
        .route("/actions/{action}", get(get_action))
        .route("/ssh_keys", get(list_ssh_keys).post(create_ssh_key))
        .route("/ssh_keys/{id}", get(get_ssh_key).put(update_ssh_key).delete(delete_ssh_key))
        .route("/locations", get(list_locations))
        .route("/locations/{id}", get(get_location))
        .route("/server_types", get(list_server_types))
        .route("/server_types/{id}", get(get_server_type))
        .route("/images", get(list_images))
        .route("/images/{id}", get(get_image))
        .route("/datacenters", get(datacenters_gone))
        .route("/datacenters/{id}", get(datacenters_gone))
        .with_state(state)
}

// ---------- small helpers ----------

fn q_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn q_all<'a>(q: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    q.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| ApiError::not_found(what))
}

fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::json_error("request body must be a JSON object")),
        Err(e) => Err(ApiError::json_error(&format!("invalid JSON: {e}"))),
    }
}

fn labels_field(body: &serde_json::Map<String, Value>) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    match body.get("labels") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut labels = BTreeMap::new();
            for (k, v) in m {
                let v = v.as_str().ok_or_else(|| ApiError::invalid_input("labels", "label values must be strings"))?;
                labels.insert(k.clone(), v.to_owned());
            }
            validate_labels(&labels).map_err(|e| ApiError::invalid_input("labels", e))?;
            Ok(Some(labels))
        }
        Some(_) => Err(ApiError::invalid_input("labels", "labels must be an object")),
    }
}

fn string_field<'a>(body: &'a serde_json::Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_input(key, "must be a string")),
    }
}

/// RFC 1123 hostname, as Hetzner requires for server names.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn created(status: StatusCode, body: Value) -> Reply {
    Ok(json_response(status, &body))
}

/// The `name` and `label_selector` filters of a list, parsed once: a bad selector is refused
/// even when there is nothing to filter, as the real API does.
struct ListFilter<'a> {
    name: Option<&'a str>,
    selector: Option<super::labels::Selector>,
}

impl<'a> ListFilter<'a> {
    fn parse(q: &'a [(String, String)]) -> Result<Self, ApiError> {
        let selector = q_get(q, "label_selector")
            .map(|sel| parse_selector(sel).map_err(|e| ApiError::invalid_input("label_selector", e)))
            .transpose()?;
        Ok(ListFilter { name: q_get(q, "name"), selector })
    }

    fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.name.is_none_or(|n| n == name) && self.selector.as_ref().is_none_or(|sel| sel.matches(labels))
    }
}

/// Applies `sort=field[:asc|:desc]` (repeatable, first one wins) to `items`, reading each
/// field through `field` (cheap keys, never a rendered resource). Unknown fields sort as
/// null (a no-op), as before.
fn sort_items<T>(items: &mut [T], q: &[(String, String)], field: impl Fn(&T, &str) -> Value) -> Result<(), ApiError> {
    for raw in q_all(q, "sort").into_iter().rev() {
        let (name, desc) = match raw.split_once(':') {
            Some((f, "asc")) => (f, false),
            Some((f, "desc")) => (f, true),
            Some(_) => return Err(ApiError::invalid_input("sort", format!("invalid sort '{raw}'"))),
            None => (raw, false),
        };
        items.sort_by(|a, b| {
            let ord = compare_json(&field(a, name), &field(b, name));
            if desc { ord.reverse() } else { ord }
        });
    }
    Ok(())
}

fn compare_json(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(std::cmp::Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Sort keys of rendered JSON (the static catalog, small enough to render whole).
fn json_field(v: &Value, name: &str) -> Value {
    v[name].clone()
}

/// One page of `items` under `key`, with `meta.pagination` and a `Link` header. Only the
/// page is rendered: a list costs its page, however many resources match.
fn paginate<T>(
    items: Vec<T>,
    q: &[(String, String)],
    key: &str,
    headers: &HeaderMap,
    path: &str,
    render: impl Fn(&T) -> Value,
) -> Reply {
    let page = match q_get(q, "page") {
        None => 1,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| ApiError::invalid_input("page", "page must be a positive integer"))?,
    };
    let per_page = match q_get(q, "per_page") {
        None => 25,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| ApiError::invalid_input("per_page", "per_page must be a positive integer"))?
            .min(50),
    };
    let total = items.len() as i64;
    let last = (total.div_euclid(per_page) + i64::from(total % per_page != 0)).max(1);
    // Saturating: `page` comes from the query and may be anything up to i64::MAX; a page
    // past the end is simply empty.
    let start = (page - 1).saturating_mul(per_page).min(total) as usize;
    let end = page.saturating_mul(per_page).min(total) as usize;
    let slice: Vec<Value> = items.get(start..end).unwrap_or_default().iter().map(render).collect();
    let previous = (page > 1).then(|| (page - 1).min(last));
    let next = (page < last).then(|| page + 1);
    let body = json!({
        key: slice,
        "meta": {"pagination": {
            "page": page, "per_page": per_page, "previous_page": previous, "next_page": next,
            "last_page": last, "total_entries": total,
        }},
    });
    let mut resp = json_response(StatusCode::OK, &body);
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let link = |p: i64, rel: &str| format!("<http://{host}/v1{path}?page={p}&per_page={per_page}>; rel=\"{rel}\"");
        let mut links = Vec::new();
        if let Some(p) = previous {
            links.push(link(p, "prev"));
        }
        if let Some(p) = next {
            links.push(link(p, "next"));
        }
        links.push(link(last, "last"));
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

// ---------- servers ----------

fn server_field(s: &&Server, name: &str) -> Value {
    match name {
        "id" => json!(s.id),
        "name" => json!(s.name),
        "created" => json!(s.created),
        "status" => json!(s.status),
        _ => Value::Null,
    }
}

async fn list_servers(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let filter = ListFilter::parse(&q)?;
    let w = st.world();
    let statuses = q_all(&q, "status");
    let keep =
        |s: &&Server| filter.matches(&s.name, &s.labels) && (statuses.is_empty() || statuses.contains(&s.status));
    // A name is unique: the index answers without walking the project.
    let mut items: Vec<&Server> = match filter.name {
        Some(name) => w.server_by_name(name).into_iter().filter(keep).collect(),
        None => w.servers.values().filter(keep).collect(),
    };
    sort_items(&mut items, &q, server_field)?;
    paginate(items, &q, "servers", &headers, "/servers", |s| w.server_json(s))
}

async fn get_server(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "server")?;
    let w = st.world();
    let s = w.servers.get(&id).ok_or_else(|| ApiError::not_found("server"))?;
    created(StatusCode::OK, json!({"server": w.server_json(s)}))
}

async fn create_server(State(st): St, body: Bytes) -> Reply {
    let body = body_object(&body)?;
    let name = string_field(&body, "name")?.ok_or_else(|| ApiError::invalid_input("name", "name is required"))?;
    if !valid_hostname(name) {
        return Err(ApiError::invalid_input("name", "name must be a valid RFC 1123 hostname"));
    }
    let server_type = catalog::find_server_type(body.get("server_type").unwrap_or(&Value::Null))
        .ok_or_else(|| ApiError::invalid_input("server_type", "server type not found"))?;
    let image = catalog::find_image(body.get("image").unwrap_or(&Value::Null), server_type.arm)
        .ok_or_else(|| ApiError::invalid_input("image", "image not found"))?;
    if image.arm != server_type.arm {
        return Err(ApiError::invalid_input("image", "image architecture does not match server type"));
    }
    let location = match body.get("location") {
        None | Some(Value::Null) => catalog::LOCATIONS
            .iter()
            .find(|l| server_type.available_in(l.name))
            .ok_or_else(|| ApiError::invalid_input("server_type", "server type is not orderable"))?,
        Some(v) => {
            catalog::find_location(v).ok_or_else(|| ApiError::invalid_input("location", "location not found"))?
        }
    };
    if !server_type.available_in(location.name) {
        return Err(ApiError::invalid_input("server_type", "unsupported location for server type"));
    }
    let labels = labels_field(&body)?.unwrap_or_default();
    let user_data = string_field(&body, "user_data")?;
    if user_data.is_some_and(|ud| ud.len() > USER_DATA_MAX) {
        return Err(ApiError::invalid_input("user_data", "user_data must not exceed 32 KiB"));
    }
    for unsupported in ["networks", "volumes", "placement_group"] {
        match body.get(unsupported) {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(ApiError::invalid_input(unsupported, "resource not found")),
        }
    }
    let start = match body.get("start_after_create") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid_input("start_after_create", "must be a boolean")),
    };
    let (has_ipv4, has_ipv6) = match body.get("public_net") {
        Some(Value::Object(p)) => (
            p.get("enable_ipv4").and_then(Value::as_bool).unwrap_or(true),
            p.get("enable_ipv6").and_then(Value::as_bool).unwrap_or(true),
        ),
        _ => (true, true),
    };

    let mut w = st.world();
    let mut ssh_key_count = 0;
    if let Some(keys) = body.get("ssh_keys").and_then(Value::as_array) {
        for key in keys {
            let found = w.ssh_keys.values().any(|k| match key {
                Value::Number(n) => n.as_i64() == Some(k.id),
                Value::String(s) => s == &k.name || s.parse::<i64>().ok() == Some(k.id),
                _ => false,
            });
            if !found {
                return Err(ApiError::invalid_input("ssh_keys", "ssh key not found"));
            }
            ssh_key_count += 1;
        }
    }
    let mut firewall_ids = BTreeSet::new();
    if let Some(fws) = body.get("firewalls").and_then(Value::as_array) {
        for fw in fws {
            let id = fw.get("firewall").and_then(Value::as_i64).unwrap_or(-1);
            if !w.firewalls.contains_key(&id) {
                return Err(ApiError::code_422("firewall_resource_not_found", "firewall not found"));
            }
            firewall_ids.insert(id);
        }
    }
    if w.server_by_name(name).is_some() {
        return Err(ApiError::uniqueness("name"));
    }
    if w.servers.len() >= w.server_limit {
        return Err(ApiError::limit("server_limit", "server limit exceeded"));
    }
    // Firewalls that will reach the new server: the ones asked for, and any whose label
    // selector matches its labels.
    let by_selector = w
        .firewalls
        .values()
        .filter(|f| f.applied_to.iter().any(|a| matches!(a, AppliedTo::LabelSelector(_, sel) if sel.matches(&labels))))
        .filter(|f| !firewall_ids.contains(&f.id))
        .count();
    if firewall_ids.len() + by_selector > w.firewalls_per_server {
        return Err(ApiError::limit("firewalls_per_server", "firewalls per server limit exceeded"));
    }

    let id = w.insert_server(NewServer {
        name: name.to_owned(),
        labels,
        server_type,
        image,
        location,
        has_ipv4,
        has_ipv6,
        user_data: user_data.map(Arc::from),
        has_ssh_keys: ssh_key_count > 0,
    });
    for fw in &firewall_ids {
        if let Some(f) = w.firewalls.get_mut(fw) {
            f.applied_to.push(AppliedTo::Server(id));
        }
    }
    // create_server and start_server finish together, so a client that waits for the create
    // action (as the documented examples do) finds the server running and unlocked.
    let now = Instant::now();
    let duration = w.duration_of(Command::CreateServer);
    let create_effect = if start { Effect::None } else { Effect::Power { server: id, status: "off", boots: false } };
    let create = w.start_action_for(Command::CreateServer, duration, vec![(id, "server")], create_effect);
    let mut next_actions = Vec::new();
    if start {
        w.schedule_starting(id, now + duration / 2);
        let running = Effect::Power { server: id, status: "running", boots: true };
        let a = w.start_action_for(Command::StartServer, duration, vec![(id, "server")], running);
        next_actions.push(w.action_json(a, now));
        // A create or start that fails (fault injection) leaves the server off, not
        // `starting` for ever.
        let off = Effect::Power { server: id, status: "off", boots: false };
        for action in [create, a] {
            if let Some(action) = w.actions.get_mut(&action) {
                action.revert = off;
            }
        }
    }
    let root_password: Value = if ssh_key_count == 0 { Value::String(root_password()) } else { Value::Null };
    if let Some(s) = w.servers.get_mut(&id) {
        s.root_password = root_password.as_str().map(str::to_owned);
    }
    let server = w.servers.get(&id).map(|s| w.server_json(s)).unwrap_or(Value::Null);
    created(
        StatusCode::CREATED,
        json!({
            "server": server,
            "action": w.action_json(create, now),
            "next_actions": next_actions,
            "root_password": root_password,
        }),
    )
}

fn root_password() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(20).map(char::from).collect()
}

async fn update_server(State(st): St, Path(id): Path<String>, body: Bytes) -> Reply {
    let id = parse_id(&id, "server")?;
    let body = body_object(&body)?;
    let labels = labels_field(&body)?;
    let name = string_field(&body, "name")?;
    let mut w = st.world();
    if !w.servers.contains_key(&id) {
        return Err(ApiError::not_found("server"));
    }
    if let Some(n) = name {
        if !valid_hostname(n) {
            return Err(ApiError::invalid_input("name", "name must be a valid RFC 1123 hostname"));
        }
        if w.server_by_name(n).is_some_and(|s| s.id != id) {
            return Err(ApiError::uniqueness("name"));
        }
        w.rename_server(id, n);
    }
    if let (Some(l), Some(s)) = (labels, w.servers.get_mut(&id)) {
        s.labels = l;
    }
    let s = w.servers.get(&id).ok_or_else(|| ApiError::not_found("server"))?;
    created(StatusCode::OK, json!({"server": w.server_json(s)}))
}

async fn delete_server(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "server")?;
    let mut w = st.world();
    w.remove_server(id).ok_or_else(|| ApiError::not_found("server"))?;
    let a = w.start_action(Command::DeleteServer, vec![(id, "server")], Effect::None);
    created(StatusCode::OK, json!({"action": w.action_json(a, Instant::now())}))
}

/// What a server action does: its command, the status while it runs (if it shows one) and
/// its effect once finished.
struct Plan {
    command: Command,
    during: Option<&'static str>,
    effect: Effect,
    /// `rebuild` answers a new root password (null when the server has SSH keys).
    root_password: Option<Value>,
}

fn plan_server_action(s: &Server, command: &str, body: &serde_json::Map<String, Value>) -> Result<Plan, ApiError> {
    let id = s.id;
    let running = s.status == "running";
    let off = s.status == "off";
    let plan = |command, during, effect| Plan { command, during, effect, root_password: None };
    // Powering on a running server, or off a stopped one, is accepted and changes nothing.
    Ok(match command {
        "poweron" if running => plan(Command::StartServer, None, Effect::None),
        "poweron" => {
            plan(Command::StartServer, Some("starting"), Effect::Power { server: id, status: "running", boots: true })
        }
        "poweroff" if off => plan(Command::StopServer, None, Effect::None),
        "poweroff" => {
            plan(Command::StopServer, Some("stopping"), Effect::Power { server: id, status: "off", boots: false })
        }
        // ACPI: Hetzner finishes the action once the signal is sent; the server stays
        // `running` until (and unless) its guest powers off.
        "shutdown" if off => plan(Command::ShutdownServer, None, Effect::None),
        "shutdown" => plan(Command::ShutdownServer, None, Effect::AcpiShutdown(id)),
        "reboot" if off => plan(Command::RebootServer, None, Effect::None),
        "reboot" => plan(Command::RebootServer, None, Effect::AcpiReboot(id)),
        "reset" if off => plan(Command::ResetServer, None, Effect::None),
        "reset" => plan(Command::ResetServer, None, Effect::Power { server: id, status: "running", boots: true }),
        "change_type" => {
            let to = catalog::find_server_type(body.get("server_type").unwrap_or(&Value::Null))
                .ok_or_else(|| ApiError::invalid_input("server_type", "server type not found"))?;
            let upgrade_disk = match body.get("upgrade_disk") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::invalid_input("upgrade_disk", "must be a boolean")),
            };
            if !off {
                return Err(ApiError::code_422("server_not_stopped", "the server must be stopped to change its type"));
            }
            // Hetzner cannot shrink a disk: the new type must hold the current one.
            if to.arm != s.server_type.arm || !to.available_in(s.location.name) || to.disk < s.primary_disk_size {
                return Err(ApiError::code_422("invalid_server_type", "the server type does not fit this server"));
            }
            plan(Command::ChangeServerType, None, Effect::ChangeType { server: id, to, upgrade_disk })
        }
        "rebuild" => {
            let image = catalog::find_image(body.get("image").unwrap_or(&Value::Null), s.server_type.arm)
                .filter(|i| i.arm == s.server_type.arm)
                .ok_or_else(|| ApiError::invalid_input("image", "image not found"))?;
            let status = if off { "off" } else { "running" };
            Plan {
                command: Command::RebuildServer,
                during: Some("rebuilding"),
                effect: Effect::Rebuild { server: id, image, status },
                root_password: Some(if s.has_ssh_keys { Value::Null } else { Value::String(root_password()) }),
            }
        }
        _ => return Err(ApiError::not_found("action")),
    })
}

async fn server_command(State(st): St, Path((id, command)): Path<(String, String)>, body: Bytes) -> Reply {
    let id = parse_id(&id, "server")?;
    let body = body_object(&body)?;
    let mut w = st.world();
    let s = w.servers.get(&id).ok_or_else(|| ApiError::not_found("server"))?;
    let current = s.status;
    let plan = plan_server_action(s, command.as_str(), &body)?;
    if w.server_locked(id) {
        return Err(ApiError::locked());
    }
    // `rebuild` may replace the cloud-init user data (hcloud-go sends it); same 32 KiB cap.
    if plan.command == Command::RebuildServer {
        let user_data = string_field(&body, "user_data")?;
        if user_data.is_some_and(|ud| ud.len() > USER_DATA_MAX) {
            return Err(ApiError::invalid_input("user_data", "user_data must not exceed 32 KiB"));
        }
        if let (Some(ud), Some(s)) = (user_data, w.servers.get_mut(&id)) {
            s.user_data = Some(Arc::from(ud));
        }
    }
    if let (Some(during), Some(s)) = (plan.during, w.servers.get_mut(&id)) {
        s.status = during;
    }
    let a = w.start_action(plan.command, vec![(id, "server")], plan.effect);
    if let Some(action) = w.actions.get_mut(&a) {
        action.revert = Effect::Power { server: id, status: current, boots: false };
    }
    let action = w.action_json(a, Instant::now());
    match plan.root_password {
        Some(pw) => created(StatusCode::CREATED, json!({"action": action, "root_password": pw})),
        None => created(StatusCode::CREATED, json!({"action": action})),
    }
}

// ---------- actions ----------

fn action_field(a: &&Action, name: &str) -> Value {
    match name {
        "id" => json!(a.id),
        "command" => json!(a.command.name()),
        "status" => json!(a.status()),
        "progress" => json!(a.progress(Instant::now())),
        // Ids grow with the start time.
        "started" => json!(a.id),
        "finished" => a.finished.map_or(Value::Null, |t| json!(rfc3339(t))),
        _ => Value::Null,
    }
}

/// The actions a list asks for, filtered and sorted but not rendered: by `id` when given
/// (a lookup each), else those of one resource (`scope`, from the per-resource index), else
/// every kept action whose first resource is of `kind`.
fn actions_for<'w>(
    w: &'w World,
    q: &[(String, String)],
    scope: Option<(i64, &'static str)>,
    kind: Option<&str>,
) -> Result<Vec<&'w Action>, ApiError> {
    let ids: BTreeSet<i64> = q_all(q, "id")
        .into_iter()
        .map(|s| s.parse::<i64>().map_err(|_| ApiError::invalid_input("id", "id must be an integer")))
        .collect::<Result<_, _>>()?;
    let statuses = q_all(q, "status");
    let candidates: Vec<&Action> = match scope {
        Some((id, k)) => w.actions_of(k, id).filter(|a| ids.is_empty() || ids.contains(&a.id)).collect(),
        None if !ids.is_empty() => w.actions_by_id(&ids),
        None => w.actions.values().collect(),
    };
    let mut items: Vec<&Action> = candidates
        .into_iter()
        .filter(|a| kind.is_none_or(|k| a.resources.first().is_some_and(|(_, rk)| *rk == k)))
        .filter(|a| statuses.is_empty() || statuses.contains(&a.status()))
        .collect();
    sort_items(&mut items, q, action_field)?;
    Ok(items)
}

async fn list_actions(State(st): St, Query(q): Q) -> Reply {
    if q_get(&q, "id").is_none() {
        return Err(ApiError::invalid_input("id", "id is required"));
    }
    let w = st.world();
    let now = Instant::now();
    let items: Vec<Value> = actions_for(&w, &q, None, None)?.into_iter().map(|a| w.render_action(a, now)).collect();
    created(StatusCode::OK, json!({"actions": items}))
}

async fn get_action(State(st): St, Path(action): Path<String>) -> Reply {
    let id = parse_id(&action, "action")?;
    let w = st.world();
    let a = w.actions.get(&id).ok_or_else(|| ApiError::not_found("action"))?;
    created(StatusCode::OK, json!({"action": w.render_action(a, Instant::now())}))
}

fn action_page(w: &World, items: Vec<&Action>, q: &[(String, String)], headers: &HeaderMap, path: &str) -> Reply {
    let now = Instant::now();
    paginate(items, q, "actions", headers, path, |a| w.render_action(a, now))
}

async fn list_server_actions(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let w = st.world();
    let items = actions_for(&w, &q, None, Some("server"))?;
    action_page(&w, items, &q, &headers, "/servers/actions")
}

async fn list_one_server_actions(State(st): St, Path(id): Path<String>, Query(q): Q, headers: HeaderMap) -> Reply {
    let id = parse_id(&id, "server")?;
    let w = st.world();
    let items = actions_for(&w, &q, Some((id, "server")), None)?;
    action_page(&w, items, &q, &headers, "/servers/actions")
}

async fn get_server_action(State(st): St, Path((id, action)): Path<(String, String)>) -> Reply {
    scoped_action(&st, &id, &action, "server")
}

fn scoped_action(st: &HzState, id: &str, action: &str, kind: &str) -> Reply {
    let id = parse_id(id, kind)?;
    let action = parse_id(action, "action")?;
    let w = st.world();
    let a = w.actions.get(&action).filter(|a| a.touches(id, kind)).ok_or_else(|| ApiError::not_found("action"))?;
    created(StatusCode::OK, json!({"action": w.render_action(a, Instant::now())}))
}

// ---------- firewalls ----------

fn parse_rules(value: Option<&Value>) -> Result<Vec<FirewallRule>, ApiError> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let rules = value.as_array().ok_or_else(|| ApiError::invalid_input("rules", "rules must be a list"))?;
    if rules.len() > 50 {
        return Err(ApiError::invalid_input("rules", "at most 50 rules"));
    }
    rules.iter().map(parse_rule).collect()
}

fn parse_ips(rule: &Value, key: &str) -> Result<Vec<String>, ApiError> {
    let Some(list) = rule.get(key).filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list = list.as_array().ok_or_else(|| ApiError::invalid_input(key, "must be a list"))?;
    if list.len() > 100 {
        return Err(ApiError::invalid_input(key, "at most 100 entries"));
    }
    list.iter()
        .map(|ip| {
            let s = ip.as_str().ok_or_else(|| ApiError::invalid_input(key, "must be CIDR strings"))?;
            let net: ipnet::IpNet =
                s.parse().map_err(|_| ApiError::invalid_input(key, format!("'{s}' is not a valid CIDR")))?;
            // IPv6 networks come back canonicalised; IPv4 as given.
            Ok(match net {
                ipnet::IpNet::V6(v6) => v6.to_string(),
                ipnet::IpNet::V4(_) => s.to_owned(),
            })
        })
        .collect()
}

fn valid_port(port: &str) -> bool {
    let num = |s: &str| s.parse::<u16>().ok().filter(|p| *p >= 1);
    port == "any"
        || num(port).is_some()
        || port.split_once('-').and_then(|(a, b)| Some((num(a)?, num(b)?))).is_some_and(|(a, b)| a <= b)
}

fn parse_rule(rule: &Value) -> Result<FirewallRule, ApiError> {
    let direction = rule.get("direction").and_then(Value::as_str).unwrap_or_default();
    if !matches!(direction, "in" | "out") {
        return Err(ApiError::invalid_input("direction", "direction must be in or out"));
    }
    let protocol = rule.get("protocol").and_then(Value::as_str).unwrap_or_default();
    if !matches!(protocol, "tcp" | "udp" | "icmp" | "esp" | "gre") {
        return Err(ApiError::invalid_input("protocol", "protocol must be tcp, udp, icmp, esp or gre"));
    }
    let port = rule.get("port").and_then(Value::as_str).map(str::to_owned);
    match (protocol, &port) {
        ("tcp" | "udp", None) => return Err(ApiError::invalid_input("port", "port is required for tcp and udp")),
        ("tcp" | "udp", Some(p)) if !valid_port(p) => {
            return Err(ApiError::invalid_input("port", format!("invalid port '{p}'")));
        }
        ("icmp" | "esp" | "gre", Some(_)) => {
            return Err(ApiError::invalid_input("port", "port is only allowed for tcp and udp"));
        }
        _ => {}
    }
    let source_ips = parse_ips(rule, "source_ips")?;
    let destination_ips = parse_ips(rule, "destination_ips")?;
    if direction == "in" && source_ips.is_empty() {
        return Err(ApiError::invalid_input("source_ips", "source_ips is required for inbound rules"));
    }
    if direction == "out" && destination_ips.is_empty() {
        return Err(ApiError::invalid_input("destination_ips", "destination_ips is required for outbound rules"));
    }
    let description = rule.get("description").and_then(Value::as_str).map(str::to_owned);
    if description.as_ref().is_some_and(|d| d.len() > 255) {
        return Err(ApiError::invalid_input("description", "at most 255 characters"));
    }
    Ok(FirewallRule {
        direction: direction.to_owned(),
        protocol: protocol.to_owned(),
        port,
        source_ips: if direction == "in" { source_ips } else { Vec::new() },
        destination_ips: if direction == "out" { destination_ips } else { Vec::new() },
        description,
    })
}

/// Parses `apply_to` / `remove_from` entries.
fn parse_resources(value: Option<&Value>, field: &str) -> Result<Vec<AppliedTo>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list = value.as_array().ok_or_else(|| ApiError::invalid_input(field, "must be a list"))?;
    list.iter()
        .map(|r| match r.get("type").and_then(Value::as_str) {
            Some("server") => r
                .get("server")
                .and_then(|s| s.get("id"))
                .and_then(Value::as_i64)
                .map(AppliedTo::Server)
                .ok_or_else(|| ApiError::invalid_input(field, "server.id is required")),
            Some("label_selector") => {
                let text = r
                    .get("label_selector")
                    .and_then(|s| s.get("selector"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::invalid_input(field, "label_selector.selector is required"))?;
                let sel = parse_selector(text).map_err(|e| ApiError::invalid_input(field, e))?;
                Ok(AppliedTo::LabelSelector(text.to_owned(), sel))
            }
            _ => Err(ApiError::invalid_input(field, "type must be server or label_selector")),
        })
        .collect()
}

/// Starts one `apply_firewall` action per server a new attachment reaches.
fn apply_actions(w: &mut World, fw: i64, entries: &[AppliedTo]) -> Vec<i64> {
    let mut ids = Vec::new();
    for e in entries {
        let resources = match e {
            AppliedTo::Server(s) => vec![(fw, "firewall"), (*s, "server")],
            AppliedTo::LabelSelector(..) => vec![(fw, "firewall")],
        };
        ids.push(w.start_action(Command::ApplyFirewall, resources, Effect::None));
    }
    ids
}

fn actions_json(w: &World, ids: &[i64]) -> Value {
    let now = Instant::now();
    Value::Array(ids.iter().map(|id| w.action_json(*id, now)).collect())
}

/// Refuses `entries` when they would give a server more firewalls than the project allows
/// (`firewall`: the one being applied, whose servers already count it).
fn check_firewalls_per_server(w: &World, firewall: Option<i64>, entries: &[AppliedTo]) -> Result<(), ApiError> {
    let already = firewall.and_then(|id| w.firewalls.get(&id)).map(|f| w.firewall_servers(f)).unwrap_or_default();
    for id in w.servers_reached(entries) {
        if let Some(s) = w.servers.get(&id)
            && !already.contains(&id)
            && w.firewalls_of(s).count() >= w.firewalls_per_server
        {
            return Err(ApiError::limit("firewalls_per_server", "firewalls per server limit exceeded"));
        }
    }
    Ok(())
}

fn firewall_field(f: &&Firewall, name: &str) -> Value {
    match name {
        "id" => json!(f.id),
        "name" => json!(f.name),
        "created" => json!(f.created),
        _ => Value::Null,
    }
}

async fn list_firewalls(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let filter = ListFilter::parse(&q)?;
    let w = st.world();
    let mut items: Vec<&Firewall> = w.firewalls.values().filter(|fw| filter.matches(&fw.name, &fw.labels)).collect();
    sort_items(&mut items, &q, firewall_field)?;
    paginate(items, &q, "firewalls", &headers, "/firewalls", |fw| w.firewall_json(fw))
}

async fn get_firewall(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let w = st.world();
    let fw = w.firewalls.get(&id).ok_or_else(|| ApiError::not_found("firewall"))?;
    created(StatusCode::OK, json!({"firewall": w.firewall_json(fw)}))
}

async fn create_firewall(State(st): St, body: Bytes) -> Reply {
    let body = body_object(&body)?;
    let name = string_field(&body, "name")?.ok_or_else(|| ApiError::invalid_input("name", "name is required"))?;
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::invalid_input("name", "name must be 1 to 128 characters"));
    }
    let labels = labels_field(&body)?.unwrap_or_default();
    let rules = parse_rules(body.get("rules"))?;
    let apply_to = parse_resources(body.get("apply_to"), "apply_to")?;
    let mut w = st.world();
    if w.firewalls.values().any(|f| f.name == name) {
        return Err(ApiError::uniqueness("name"));
    }
    for e in &apply_to {
        if let AppliedTo::Server(s) = e
            && !w.servers.contains_key(s)
        {
            return Err(ApiError::code_422("firewall_resource_not_found", "server not found"));
        }
    }
    if w.firewalls.len() >= w.firewall_limit {
        return Err(ApiError::limit("firewall_limit", "firewall limit exceeded"));
    }
    check_firewalls_per_server(&w, None, &apply_to)?;
    let id = w.next_id();
    w.firewalls.insert(
        id,
        Firewall { id, name: name.to_owned(), labels, created: now_rfc3339(), rules, applied_to: apply_to.clone() },
    );
    let actions = apply_actions(&mut w, id, &apply_to);
    let fw = w.firewalls.get(&id).map(|f| w.firewall_json(f)).unwrap_or(Value::Null);
    created(StatusCode::CREATED, json!({"firewall": fw, "actions": actions_json(&w, &actions)}))
}

async fn update_firewall(State(st): St, Path(id): Path<String>, body: Bytes) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let body = body_object(&body)?;
    let labels = labels_field(&body)?;
    let name = string_field(&body, "name")?;
    let mut w = st.world();
    if !w.firewalls.contains_key(&id) {
        return Err(ApiError::not_found("firewall"));
    }
    if let Some(n) = name
        && w.firewalls.values().any(|f| f.name == n && f.id != id)
    {
        return Err(ApiError::uniqueness("name"));
    }
    if let Some(f) = w.firewalls.get_mut(&id) {
        if let Some(n) = name {
            f.name = n.to_owned();
        }
        if let Some(l) = labels {
            f.labels = l;
        }
    }
    let fw = w.firewalls.get(&id).ok_or_else(|| ApiError::not_found("firewall"))?;
    created(StatusCode::OK, json!({"firewall": w.firewall_json(fw)}))
}

async fn delete_firewall(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let mut w = st.world();
    let fw = w.firewalls.get(&id).ok_or_else(|| ApiError::not_found("firewall"))?;
    if !fw.applied_to.is_empty() {
        return Err(ApiError::code_422("resource_in_use", "firewall is still applied to resources"));
    }
    w.firewalls.remove(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn firewall_command(State(st): St, Path((id, command)): Path<(String, String)>, body: Bytes) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let body = body_object(&body)?;
    let mut w = st.world();
    if !w.firewalls.contains_key(&id) {
        return Err(ApiError::not_found("firewall"));
    }
    let actions = match command.as_str() {
        "set_rules" => {
            let rules = parse_rules(Some(body.get("rules").unwrap_or(&Value::Array(Vec::new()))))?;
            let servers = w.firewalls.get(&id).map(|f| w.firewall_servers(f)).unwrap_or_default();
            if let Some(f) = w.firewalls.get_mut(&id) {
                f.rules = rules;
            }
            let mut ids = vec![w.start_action(Command::SetFirewallRules, vec![(id, "firewall")], Effect::None)];
            for s in servers {
                ids.push(w.start_action(Command::ApplyFirewall, vec![(id, "firewall"), (s, "server")], Effect::None));
            }
            ids
        }
        "apply_to_resources" => {
            let entries = parse_resources(body.get("apply_to"), "apply_to")?;
            let current = w.firewalls.get(&id).map(|f| f.applied_to.clone()).unwrap_or_default();
            for e in &entries {
                if let AppliedTo::Server(s) = e
                    && !w.servers.contains_key(s)
                {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "firewall_resource_not_found",
                        "server not found",
                    ));
                }
                if current.contains(e) {
                    return Err(ApiError::code_422("firewall_already_applied", "firewall is already applied"));
                }
            }
            check_firewalls_per_server(&w, Some(id), &entries)?;
            if let Some(f) = w.firewalls.get_mut(&id) {
                f.applied_to.extend(entries.iter().cloned());
            }
            apply_actions(&mut w, id, &entries)
        }
        "remove_from_resources" => {
            let entries = parse_resources(body.get("remove_from"), "remove_from")?;
            let current = w.firewalls.get(&id).map(|f| f.applied_to.clone()).unwrap_or_default();
            let mut ids = Vec::new();
            for e in &entries {
                if let AppliedTo::Server(s) = e {
                    if !w.servers.contains_key(s) {
                        return Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            "firewall_resource_not_found",
                            "server not found",
                        ));
                    }
                    let by_selector = w.firewalls.get(&id).is_some_and(|f| w.firewall_servers(f).contains(s));
                    if !current.contains(e) && by_selector {
                        return Err(ApiError::code_422(
                            "firewall_managed_by_label_selector",
                            "firewall is applied to this server by a label selector",
                        ));
                    }
                }
            }
            if let Some(f) = w.firewalls.get_mut(&id) {
                f.applied_to.retain(|a| !entries.contains(a));
            }
            for e in &entries {
                let resources = match e {
                    AppliedTo::Server(s) => vec![(id, "firewall"), (*s, "server")],
                    AppliedTo::LabelSelector(..) => vec![(id, "firewall")],
                };
                ids.push(w.start_action(Command::RemoveFirewall, resources, Effect::None));
            }
            ids
        }
        _ => return Err(ApiError::not_found("action")),
    };
    created(StatusCode::CREATED, json!({"actions": actions_json(&w, &actions)}))
}

async fn list_firewall_actions(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let w = st.world();
    let items = actions_for(&w, &q, None, Some("firewall"))?;
    action_page(&w, items, &q, &headers, "/firewalls/actions")
}

async fn list_one_firewall_actions(State(st): St, Path(id): Path<String>, Query(q): Q, headers: HeaderMap) -> Reply {
    let id = parse_id(&id, "firewall")?;
    let w = st.world();
    let items = actions_for(&w, &q, Some((id, "firewall")), None)?;
    action_page(&w, items, &q, &headers, "/firewalls/actions")
}

async fn get_firewall_action(State(st): St, Path((id, action)): Path<(String, String)>) -> Reply {
    scoped_action(&st, &id, &action, "firewall")
}

// ---------- SSH keys ----------

/// The OpenSSH-style MD5 fingerprint of a public key (what Hetzner reports).
fn fingerprint(public_key: &str) -> Option<String> {
    use base64::Engine;
    use md5::Digest;
    let blob = public_key.split_whitespace().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    let digest = md5::Md5::digest(&bytes);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

async fn list_ssh_keys(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let filter = ListFilter::parse(&q)?;
    let w = st.world();
    let mut items = Vec::new();
    for k in w.ssh_keys.values() {
        if filter.matches(&k.name, &k.labels) && q_get(&q, "fingerprint").is_none_or(|f| f == k.fingerprint) {
            items.push(ssh_key_json(k));
        }
    }
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "ssh_keys", &headers, "/ssh_keys", Value::clone)
}

async fn create_ssh_key(State(st): St, body: Bytes) -> Reply {
    let body = body_object(&body)?;
    let name = string_field(&body, "name")?.ok_or_else(|| ApiError::invalid_input("name", "name is required"))?;
    let public_key = string_field(&body, "public_key")?
        .ok_or_else(|| ApiError::invalid_input("public_key", "public_key is required"))?;
    let fp = fingerprint(public_key).ok_or_else(|| ApiError::invalid_input("public_key", "invalid public key"))?;
    let labels = labels_field(&body)?.unwrap_or_default();
    let mut w = st.world();
    if w.ssh_keys.values().any(|k| k.name == name) {
        return Err(ApiError::uniqueness("name"));
    }
    if w.ssh_keys.values().any(|k| k.fingerprint == fp) {
        return Err(ApiError::uniqueness("public_key"));
    }
    let id = w.next_id();
    let key = SshKey {
        id,
        name: name.to_owned(),
        fingerprint: fp,
        public_key: public_key.trim().to_owned(),
        labels,
        created: now_rfc3339(),
    };
    let json = ssh_key_json(&key);
    w.ssh_keys.insert(id, key);
    created(StatusCode::CREATED, json!({"ssh_key": json}))
}

async fn get_ssh_key(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "ssh_key")?;
    let w = st.world();
    let k = w.ssh_keys.get(&id).ok_or_else(|| ApiError::not_found("ssh_key"))?;
    created(StatusCode::OK, json!({"ssh_key": ssh_key_json(k)}))
}

async fn update_ssh_key(State(st): St, Path(id): Path<String>, body: Bytes) -> Reply {
    let id = parse_id(&id, "ssh_key")?;
    let body = body_object(&body)?;
    let labels = labels_field(&body)?;
    let name = string_field(&body, "name")?;
    let mut w = st.world();
    if let Some(n) = name
        && w.ssh_keys.values().any(|k| k.name == n && k.id != id)
    {
        return Err(ApiError::uniqueness("name"));
    }
    let k = w.ssh_keys.get_mut(&id).ok_or_else(|| ApiError::not_found("ssh_key"))?;
    if let Some(n) = name {
        k.name = n.to_owned();
    }
    if let Some(l) = labels {
        k.labels = l;
    }
    created(StatusCode::OK, json!({"ssh_key": ssh_key_json(k)}))
}

async fn delete_ssh_key(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "ssh_key")?;
    let mut w = st.world();
    w.ssh_keys.remove(&id).ok_or_else(|| ApiError::not_found("ssh_key"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------- catalog ----------

async fn list_locations(Query(q): Q, headers: HeaderMap) -> Reply {
    let mut items: Vec<Value> = catalog::LOCATIONS
        .iter()
        .filter(|l| q_get(&q, "name").is_none_or(|n| n == l.name))
        .map(catalog::location_json)
        .collect();
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "locations", &headers, "/locations", Value::clone)
}

async fn get_location(Path(id): Path<String>) -> Reply {
    let l = catalog::find_location(&Value::String(id)).ok_or_else(|| ApiError::not_found("location"))?;
    created(StatusCode::OK, json!({"location": catalog::location_json(l)}))
}

async fn list_server_types(Query(q): Q, headers: HeaderMap) -> Reply {
    let mut items: Vec<Value> = catalog::SERVER_TYPES
        .iter()
        .filter(|t| q_get(&q, "name").is_none_or(|n| n == t.name))
        .map(catalog::server_type_json)
        .collect();
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "server_types", &headers, "/server_types", Value::clone)
}

async fn get_server_type(Path(id): Path<String>) -> Reply {
    let t = catalog::find_server_type(&Value::String(id)).ok_or_else(|| ApiError::not_found("server_type"))?;
    created(StatusCode::OK, json!({"server_type": catalog::server_type_json(t)}))
}

async fn list_images(Query(q): Q, headers: HeaderMap) -> Reply {
    let types = q_all(&q, "type");
    let mut items: Vec<Value> = catalog::IMAGES
        .iter()
        .filter(|i| q_get(&q, "name").is_none_or(|n| n == i.name))
        .filter(|i| q_get(&q, "architecture").is_none_or(|a| a == i.architecture()))
        .filter(|_| types.is_empty() || types.contains(&"system"))
        .map(catalog::image_json)
        .collect();
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "images", &headers, "/images", Value::clone)
}

async fn get_image(Path(id): Path<String>) -> Reply {
    let i = id.parse::<i64>().ok().and_then(catalog::image_by_id).ok_or_else(|| ApiError::not_found("image"))?;
    created(StatusCode::OK, json!({"image": catalog::image_json(i)}))
}

/// `/datacenters` was deprecated and answers 410 since 2026-10-01; availability per location
/// lives in `server_type.locations` now.
async fn datacenters_gone() -> Reply {
    Err(ApiError {
        status: StatusCode::GONE,
        code: "deprecated_api_endpoint",
        message: "this endpoint was removed; use server_types[].locations".into(),
        details: json!({"announcement": "the datacenters endpoints were removed on 2026-10-01"}),
    })
}
