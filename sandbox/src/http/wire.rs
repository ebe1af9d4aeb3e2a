//! Small pieces of HTTP both simulated APIs share: JSON answers, bearer tokens and the
//! timestamps both print.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

/// A JSON response with `Content-Type` exactly `application/json` (cloudflared only reads
/// error bodies with that exact value).
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Sets a header whose value is computed (a number, a policy); a value that is no valid header
/// leaves the header out rather than failing the answer.
pub fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The token of an `Authorization: Bearer <token>` header. An empty token is no token: a
/// simulator started with an empty `--token` must still refuse a bare `Bearer `.
pub fn bearer(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty())
}

/// The first value of query parameter `key`.
pub fn query_param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Current time as RFC 3339 with a `+00:00` offset, as both APIs print it.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_tokens() {
        assert_eq!(super::bearer("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer("Bearer  abc "), Some("abc"));
        assert_eq!(super::bearer("Bearer "), None, "an empty token authenticates nobody");
        assert_eq!(super::bearer("Basic abc"), None);
    }
}
