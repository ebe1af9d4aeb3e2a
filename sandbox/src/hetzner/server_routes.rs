//! The server routes (`/servers`): create with its validation and project limits, list, get,
//! update, delete, and the power and rebuild actions (`/servers/{id}/actions/{command}`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use super::catalog;
use super::envelope::{ApiError, Reply};
use super::listing::{ListFilter, paginate, sort_items};
use super::physics::Command;
use super::request::{Q, St, body_object, created, labels_field, parse_id, q_all, string_field, valid_hostname};
use super::resources::{AppliedTo, Effect, NewServer, Server};

/// Hetzner's cap on cloud-init `user_data`: 32 KiB.
const USER_DATA_MAX: usize = 32 * 1024;

fn server_field(s: &&Server, name: &str) -> Value {
    match name {
        "id" => json!(s.id),
        "name" => json!(s.name),
        "created" => json!(s.created),
        "status" => json!(s.status),
        _ => Value::Null,
    }
}

pub(super) async fn list_servers(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
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

pub(super) async fn get_server(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "server")?;
    let w = st.world();
    let s = w.servers.get(&id).ok_or_else(|| ApiError::not_found("server"))?;
    created(StatusCode::OK, json!({"server": w.server_json(s)}))
}

pub(super) async fn create_server(State(st): St, body: Bytes) -> Reply {
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

pub(super) fn root_password() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(20).map(char::from).collect()
}

pub(super) async fn update_server(State(st): St, Path(id): Path<String>, body: Bytes) -> Reply {
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

pub(super) async fn delete_server(State(st): St, Path(id): Path<String>) -> Reply {
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

pub(super) async fn server_command(State(st): St, Path((id, command)): Path<(String, String)>, body: Bytes) -> Reply {
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
