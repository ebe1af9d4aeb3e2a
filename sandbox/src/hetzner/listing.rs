//! Hetzner's list conventions: the `name` and `label_selector` filters, `sort`, and pages with
//! `meta.pagination` and a `Link` header. Only the page a client asks for is rendered.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::envelope::{ApiError, Reply};
use super::labels::parse_selector;
use super::request::q_all;
use crate::http::{json_response, query_param};

/// The `name` and `label_selector` filters of a list, parsed once: a bad selector is refused
/// even when there is nothing to filter, as the real API does.
pub(super) struct ListFilter<'a> {
    pub(super) name: Option<&'a str>,
    selector: Option<super::labels::Selector>,
}

impl<'a> ListFilter<'a> {
    pub(super) fn parse(q: &'a [(String, String)]) -> Result<Self, ApiError> {
        let selector = query_param(q, "label_selector")
            .map(|sel| parse_selector(sel).map_err(|e| ApiError::invalid_input("label_selector", e)))
            .transpose()?;
        Ok(ListFilter { name: query_param(q, "name"), selector })
    }

    pub(super) fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.name.is_none_or(|n| n == name) && self.selector.as_ref().is_none_or(|sel| sel.matches(labels))
    }
}

/// Applies `sort=field[:asc|:desc]` (repeatable, first one wins) to `items`, reading each
/// field through `field` (cheap keys, never a rendered resource). Unknown fields sort as
/// null (a no-op), as before.
pub(super) fn sort_items<T>(
    items: &mut [T],
    q: &[(String, String)],
    field: impl Fn(&T, &str) -> Value,
) -> Result<(), ApiError> {
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
pub(super) fn json_field(v: &Value, name: &str) -> Value {
    v[name].clone()
}

/// One page of `items` under `key`, with `meta.pagination` and a `Link` header. Only the
/// page is rendered: a list costs its page, however many resources match.
pub(super) fn paginate<T>(
    items: Vec<T>,
    q: &[(String, String)],
    key: &str,
    headers: &HeaderMap,
    path: &str,
    render: impl Fn(&T) -> Value,
) -> Reply {
    let page = match query_param(q, "page") {
        None => 1,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| ApiError::invalid_input("page", "page must be a positive integer"))?,
    };
    let per_page = match query_param(q, "per_page") {
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
