//! The SSH key routes (`/ssh_keys`), with the OpenSSH MD5 fingerprints Hetzner reports.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::envelope::{ApiError, Reply};
use super::listing::{ListFilter, json_field, paginate, sort_items};
use super::request::{Q, St, body_object, created, labels_field, parse_id, string_field};
use super::resources::{SshKey, ssh_key_json};
use crate::http::{now_rfc3339, query_param};

/// The OpenSSH-style MD5 fingerprint of a public key (what Hetzner reports).
fn fingerprint(public_key: &str) -> Option<String> {
    use base64::Engine;
    use md5::Digest;
    let blob = public_key.split_whitespace().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    let digest = md5::Md5::digest(&bytes);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

pub(super) async fn list_ssh_keys(State(st): St, Query(q): Q, headers: HeaderMap) -> Reply {
    let filter = ListFilter::parse(&q)?;
    let w = st.world();
    let mut items = Vec::new();
    for k in w.ssh_keys.values() {
        if filter.matches(&k.name, &k.labels) && query_param(&q, "fingerprint").is_none_or(|f| f == k.fingerprint) {
            items.push(ssh_key_json(k));
        }
    }
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "ssh_keys", &headers, "/ssh_keys", Value::clone)
}

pub(super) async fn create_ssh_key(State(st): St, body: Bytes) -> Reply {
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

pub(super) async fn get_ssh_key(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "ssh_key")?;
    let w = st.world();
    let k = w.ssh_keys.get(&id).ok_or_else(|| ApiError::not_found("ssh_key"))?;
    created(StatusCode::OK, json!({"ssh_key": ssh_key_json(k)}))
}

pub(super) async fn update_ssh_key(State(st): St, Path(id): Path<String>, body: Bytes) -> Reply {
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

pub(super) async fn delete_ssh_key(State(st): St, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id, "ssh_key")?;
    let mut w = st.world();
    w.ssh_keys.remove(&id).ok_or_else(|| ApiError::not_found("ssh_key"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
