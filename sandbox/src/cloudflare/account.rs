//! The account-level reads clients make before real work: the zone (looked up by name or
//! id), the account, and token verification. Read-only; the one zone and account come from
//! the simulator's configuration.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::envelope::{CfError, Reply, ok, ok_page};
use super::state::CfState;
use crate::http::query_param;

type St = State<Arc<CfState>>;
type Q = Query<Vec<(String, String)>>;

/// Fixed so repeated runs print the same objects.
const CREATED: &str = "2024-01-01T00:00:00.000000Z";

pub fn router() -> Router<Arc<CfState>> {
    Router::new()
        .route("/zones", get(list_zones))
        .route("/zones/{zone}", get(get_zone))
        .route("/accounts", get(list_accounts))
        .route("/accounts/{account}", get(get_account))
        .route("/accounts/{account}/tokens/verify", get(verify))
        .route("/user/tokens/verify", get(verify))
}

fn zone_json(st: &CfState) -> Value {
    let c = &st.config;
    json!({
        "id": c.zone_id,
        "name": c.zone_name,
        "status": "active",
        "paused": false,
        "type": "full",
        "development_mode": 0,
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "original_name_servers": null,
        "original_registrar": null,
        "original_dnshost": null,
        "created_on": CREATED,
        "modified_on": CREATED,
        "activated_on": CREATED,
        "meta": {"step": 2, "custom_certificate_quota": 0, "page_rule_quota": 3, "phishing_detected": false},
        "owner": {"id": null, "type": "user", "email": null},
        "account": {"id": c.account_id, "name": "crabglamp"},
        "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
        "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0, "currency": "USD",
                 "frequency": "", "is_subscribed": false, "can_subscribe": false, "legacy_id": "free",
                 "legacy_discount": false, "externally_managed": false},
    })
}

async fn list_zones(State(st): St, Query(q): Q) -> Reply {
    let matches = query_param(&q, "name").is_none_or(|n| n.eq_ignore_ascii_case(&st.config.zone_name))
        && query_param(&q, "account.id").is_none_or(|a| a == st.config.account_id);
    let items = if matches { vec![zone_json(&st)] } else { Vec::new() };
    ok_page(items, &q, 20, 50)
}

async fn get_zone(State(st): St, Path(zone): Path<String>) -> Reply {
    if zone != st.config.zone_id {
        return Err(CfError::new(StatusCode::NOT_FOUND, 1001, "Invalid zone identifier"));
    }
    ok(zone_json(&st))
}

fn account_json(st: &CfState) -> Value {
    json!({
        "id": st.config.account_id,
        "name": "crabglamp",
        "type": "standard",
        "created_on": CREATED,
        "settings": {"enforce_twofactor": false, "api_access_enabled": null, "abuse_contact_email": null},
    })
}

async fn list_accounts(State(st): St, Query(q): Q) -> Reply {
    ok_page(vec![account_json(&st)], &q, 20, 50)
}

async fn get_account(State(st): St, Path(account): Path<String>) -> Reply {
    if account != st.config.account_id {
        return Err(CfError::forbidden());
    }
    ok(account_json(&st))
}

/// Reached only with a valid token (the gate answers the others).
async fn verify() -> Reply {
    ok(json!({"id": "0f7e1b5c9a2d4e6f8a0b1c2d3e4f5a6b", "status": "active"}))
}
