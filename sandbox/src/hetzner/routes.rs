//! The Hetzner Cloud API routes the simulator serves, in one table: each resource's handlers
//! live in their own module (request parsing and validation, pagination, sorting and the
//! status codes of the real API). State lives in `World`; no handler sleeps or holds the lock
//! across an await.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use super::action_routes::{get_action, get_server_action, list_actions, list_one_server_actions, list_server_actions};
use super::catalog_routes::{
    datacenters_gone, get_image, get_location, get_server_type, list_images, list_locations, list_server_types,
};
use super::firewall_routes::{
    create_firewall, delete_firewall, firewall_command, get_firewall, get_firewall_action, list_firewall_actions,
    list_firewalls, list_one_firewall_actions, update_firewall,
};
use super::key_routes::{create_ssh_key, delete_ssh_key, get_ssh_key, list_ssh_keys, update_ssh_key};
use super::server_routes::{create_server, delete_server, get_server, list_servers, server_command, update_server};
use super::state::HzState;

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
