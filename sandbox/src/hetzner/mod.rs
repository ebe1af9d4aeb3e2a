//! A stateful simulator of the Hetzner Cloud API (`/v1`): servers, power actions, firewalls,
//! SSH keys, actions and the read-only catalog, faithful enough for the official clients,
//! with real-world timings ([`ActionDurations`]) run faster under one time scale.
//! It never reaches the network beyond its own listener.
//!
//! Choices where the public material is silent or unverified (judged by what hcloud-python,
//! hcloud-go and the `hcloud` crate's models accept):
//! - `create_server` and `start_server` finish together, so waiting for the create action
//!   (as the documented examples do) leaves a running, unlocked server.
//! - `shutdown` (ACPI) finishes once the signal is sent, as Hetzner documents; the server
//!   stays `running` until its guest powers off `acpi_shutdown` later, or forever when the
//!   guest ignores ACPI ([`set_ignores_acpi`]). `reboot` is ACPI too: an ignoring guest does
//!   not restart. A `poweron` while the guest shuts down changes nothing (it still runs);
//!   `poweroff` and `reset` override the pending shutdown.
//! - 429 carries `RateLimit-*` but no `Retry-After` (unverified for Hetzner; clients ignore it).
//! - Deleting a server detaches its firewalls at once; the server disappears immediately.
//! - `server_type.locations[]` carries `available`/`recommended` although the crate's model
//!   predates them; a type is listed only where it is sold (or everywhere once deprecated).
//! - `/datacenters` answers 410 `deprecated_api_endpoint` (removed 2026-10-01).
//! - Project limits answer 403 `resource_limit_exceeded` with `details.limits[{name}]`
//!   (Hetzner's error table); the per-server firewall limit is checked where a server gains
//!   a firewall by request (create, `apply_to_resources`), not when labels change later.
//! - `change_type` on a running server: 422 `server_not_stopped` (status unverified).

mod action_routes;
mod catalog;
mod catalog_routes;
mod config;
// The Hetzner half of the control API (`/_sim/`), handed to the shared plumbing by `spawn`.
mod control;
mod dialect;
mod envelope;
mod firewall_routes;
mod hooks;
mod key_routes;
pub mod labels;
mod listing;
mod physics;
mod render;
mod request;
mod resources;
mod routes;
mod server_routes;
mod state;
mod world;

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

pub use crate::http::RunningSim;
use crate::http::{SimParts, serve};
use crate::time_scale;
pub use config::HetznerSimConfig;
pub use hooks::{
    BootedServer, booted_servers, fail_next_actions, firewall_count, firewalls, power_log, server_names,
    server_root_password, server_user_data, servers, servers_created, set_firewall_limit, set_ignores_acpi,
    set_server_limit, vanish_server, work_counts,
};
pub use physics::{ActionDurations, Command, UnknownCommand};
pub use world::{PowerChange, WorkCounts};

use dialect::HetznerDialect;
use state::HzState;
use world::World;

/// Serves a fresh, empty project on `listener`; the base URL ends in `/v1`. A time scale
/// that is not finite and positive is refused (`InvalidInput`).
pub async fn spawn(config: HetznerSimConfig, listener: TcpListener) -> std::io::Result<RunningSim> {
    if !time_scale::valid(config.time_scale) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("time_scale must be finite and positive, not {}", config.time_scale),
        ));
    }
    let state = Arc::new(HzState { world: Mutex::new(World::new(&config)) });
    serve(
        SimParts {
            dialect: Box::new(HetznerDialect),
            token: config.token.clone(),
            budget: config.budget(),
            base_path: "/v1",
            api: routes::router(Arc::clone(&state)),
            control: control::router(Arc::clone(&state)),
            state,
        },
        listener,
    )
    .await
}
