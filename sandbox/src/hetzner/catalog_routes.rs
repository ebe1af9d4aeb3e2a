//! The read-only catalog (`/locations`, `/server_types`, `/images`) and the removed
//! `/datacenters` endpoints.

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::catalog;
use super::envelope::{ApiError, Reply};
use super::listing::{json_field, paginate, sort_items};
use super::request::{Q, created, q_all};
use crate::http::query_param;

pub(super) async fn list_locations(Query(q): Q, headers: HeaderMap) -> Reply {
    let mut items: Vec<Value> = catalog::LOCATIONS
        .iter()
        .filter(|l| query_param(&q, "name").is_none_or(|n| n == l.name))
        .map(catalog::location_json)
        .collect();
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "locations", &headers, "/locations", Value::clone)
}

pub(super) async fn get_location(Path(id): Path<String>) -> Reply {
    let l = catalog::find_location(&Value::String(id)).ok_or_else(|| ApiError::not_found("location"))?;
    created(StatusCode::OK, json!({"location": catalog::location_json(l)}))
}

pub(super) async fn list_server_types(Query(q): Q, headers: HeaderMap) -> Reply {
    let mut items: Vec<Value> = catalog::SERVER_TYPES
        .iter()
        .filter(|t| query_param(&q, "name").is_none_or(|n| n == t.name))
        .map(catalog::server_type_json)
        .collect();
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "server_types", &headers, "/server_types", Value::clone)
}

pub(super) async fn get_server_type(Path(id): Path<String>) -> Reply {
    let t = catalog::find_server_type(&Value::String(id)).ok_or_else(|| ApiError::not_found("server_type"))?;
    created(StatusCode::OK, json!({"server_type": catalog::server_type_json(t)}))
}

pub(super) async fn list_images(Query(q): Q, headers: HeaderMap) -> Reply {
    let types = q_all(&q, "type");
    let mut items: Vec<Value> = catalog::IMAGES
        .iter()
        .filter(|i| query_param(&q, "name").is_none_or(|n| n == i.name))
        .filter(|i| query_param(&q, "architecture").is_none_or(|a| a == i.architecture()))
        .filter(|_| types.is_empty() || types.contains(&"system"))
        .map(catalog::image_json)
        .collect();
    sort_items(&mut items, &q, json_field)?;
    paginate(items, &q, "images", &headers, "/images", Value::clone)
}

pub(super) async fn get_image(Path(id): Path<String>) -> Reply {
    let i = id.parse::<i64>().ok().and_then(catalog::image_by_id).ok_or_else(|| ApiError::not_found("image"))?;
    created(StatusCode::OK, json!({"image": catalog::image_json(i)}))
}

/// `/datacenters` was deprecated and answers 410 since 2026-10-01; availability per location
/// lives in `server_type.locations` now.
pub(super) async fn datacenters_gone() -> Reply {
    Err(ApiError {
        status: StatusCode::GONE,
        code: "deprecated_api_endpoint",
        message: "this endpoint was removed; use server_types[].locations".into(),
        details: json!({"announcement": "the datacenters endpoints were removed on 2026-10-01"}),
    })
}
