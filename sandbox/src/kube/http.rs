//! The HTTP face of the API server: parses paths, query parameters and content types, then
//! hands over to discovery, OpenAPI, reads, writes and watches. Never mutates objects itself,
//! and never renders or serialises a response while it holds the state lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::delete::{self, DeleteOptions, Deleted, Propagation};
use super::discovery;
use super::error::ApiError;
use super::list::{ListRequest, Page};
use super::openapi;
use super::resource::ResourceType;
pub use super::response::json_response;
use super::selector::{FieldSelector, LabelSelector};
use super::shared::Shared;
use super::table::{self, IncludeObject, Rendering};
use super::watch::{self, WatchRequest};
use super::write::{self, FieldValidation, PatchKind, Target, Verb, WriteOptions};
use crate::admission::{Cause, CauseReason};

/// The router of the whole server.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body, &[])
}

struct Request {
    method: Method,
    headers: HeaderMap,
    query: HashMap<String, String>,
    body: Bytes,
}

impl Request {
    fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    /// A boolean parameter, read as Go's `strconv.ParseBool` reads it.
    fn flag(&self, key: &str) -> bool {
        matches!(self.q(key), Some("true" | "True" | "TRUE" | "t" | "T" | "1"))
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn write_options(&self, verb: Verb) -> Result<WriteOptions, ApiError> {
        let manager = match self.q("fieldManager") {
            Some(m) => m.to_owned(),
            None if verb == Verb::Apply => String::new(),
            None => {
                let ua = self.header(header::USER_AGENT);
                let product = ua.split('/').next().unwrap_or_default();
                if product.is_empty() { "unknown".to_owned() } else { product.to_owned() }
            }
        };
        Ok(WriteOptions {
            field_validation: FieldValidation::parse(self.q("fieldValidation"))?,
            manager,
            dry_run: self.q("dryRun") == Some("All"),
            verb,
        })
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        if self.header(header::CONTENT_TYPE).starts_with("application/vnd.kubernetes.protobuf") {
            return super::protobuf::decode(&self.body)
                .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e.to_string()));
        }
        serde_json::from_slice(&self.body).or_else(|_| {
            serde_norway::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("the request body could not be decoded: {e}")))
        })
    }
}

/// The largest request body accepted, as on a real API server (etcd's request limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How much of an oversized body is still read (and dropped) before the 413 goes out: a client
/// still sending when the server closes gets a reset instead of the answer.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// The request body, at most [`MAX_BODY_BYTES`] of it: read here rather than with the `Bytes`
/// extractor so an oversized body gets a `Status` too.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    use futures::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the request body could not be read: {e}")))?;
        total = total.saturating_add(chunk.len());
        if total <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else {
            kept = Vec::new();
            if total > DRAIN_BYTES {
                break;
            }
        }
    }
    if total > MAX_BODY_BYTES {
        let message = format!("Request entity too large: limit is {MAX_BODY_BYTES}");
        return Err(ApiError::new(413, "RequestEntityTooLarge", message));
    }
    Ok(Bytes::from(kept))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    shared.log_request(super::requests::KubeRequest {
        user: super::requests::user_of(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())),
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
    });
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // An unreadable query is refused: ignoring it would turn e.g. a watch into a list.
    let query: HashMap<String, String> = match Query::<Vec<(String, String)>>::try_from_uri(&uri) {
        Ok(q) => q.0.into_iter().collect(),
        Err(e) => return ApiError::bad_request(format!("invalid query string: {e}")).into_response(),
    };
    let req = Request { method, headers, query, body };
    if let Some(refused) = wait_for_resource_version(&shared, &req).await {
        return refused;
    }
    let path = uri.path().to_owned();
    match route(&shared, &path, &req) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// How long a read waits for a resourceVersion the server has not reached yet
/// (`blockTimeout` of the apiserver's watch cache).
pub const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);

/// A read (get, list, streaming watch) at a resourceVersion newer than the server's waits for
/// it, as the watch cache's `waitUntilFreshAndBlock` does, and fails with 504
/// `ResourceVersionTooLarge` if it does not come within [`TOO_LARGE_WAIT`]: directly for a get
/// or list, as the one ERROR event of a 200 stream for a watch. A plain watch needs no wait: it
/// delivers only events newer than its resourceVersion anyway. `None`: go on with the request.
async fn wait_for_resource_version(shared: &Shared, req: &Request) -> Option<Response> {
    if req.method != Method::GET || (req.flag("watch") && !req.flag("sendInitialEvents")) {
        return None;
    }
    // Unparsable versions are refused by the request itself; continue pins its own version.
    let asked: u64 = req.q("resourceVersion")?.parse().ok()?;
    if req.q("continue").is_some_and(|c| !c.is_empty()) || shared.reached(asked, Duration::ZERO).await {
        return None;
    }
    if shared.reached(asked, TOO_LARGE_WAIT).await {
        return None;
    }
    let error = ApiError::too_large_resource_version(asked, shared.lock().rv());
    if !req.flag("watch") {
        return Some(error.into_response());
    }
    let mut line = json!({"type": "ERROR", "object": error.to_status()}).to_string();
    line.push('\n');
    let mut resp = Response::new(Body::from(line));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Some(resp)
}

fn route(shared: &Arc<Shared>, path: &str, req: &Request) -> Result<Response, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let types = || shared.lock().types().to_vec();
    match segments.as_slice() {
        ["version"] => Ok(ok(&discovery::version())),
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api" | "apis"] if discovery::wants_aggregated(req.header(header::ACCEPT)) => {
            let body = discovery::aggregated(&types(), segments[0] == "api");
            let mut resp = ok(&body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE));
            Ok(resp)
        }
        ["api"] => Ok(ok(&discovery::core_versions(&shared.server_address))),
        ["apis"] => Ok(ok(&discovery::groups(&types()))),
        ["apis", group] => discovery::group(&types(), group).map(|v| ok(&v)).ok_or_else(ApiError::unknown_path),
        ["api", version] => {
            discovery::resources(&types(), "", version).map(|v| ok(&v)).ok_or_else(ApiError::unknown_path)
        }
        ["apis", group, version] => {
            discovery::resources(&types(), group, version).map(|v| ok(&v)).ok_or_else(ApiError::unknown_path)
        }
        ["openapi", "v3"] => Ok(ok(&openapi::index(&types()))),
        ["openapi", "v3", "api", version] => {
            openapi::group_version(&types(), "", version).map(|v| ok(&v)).ok_or_else(ApiError::unknown_path)
        }
        ["openapi", "v3", "apis", group, version] => {
            openapi::group_version(&types(), group, version).map(|v| ok(&v)).ok_or_else(ApiError::unknown_path)
        }
        ["api", version, rest @ ..] => resource_request(shared, "", version, rest, req),
        ["apis", group, version, rest @ ..] => resource_request(shared, group, version, rest, req),
        _ => Err(ApiError::unknown_path()),
    }
}

fn resource_request(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    req: &Request,
) -> Result<Response, ApiError> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !(tail.is_empty() && matches!(*plural, "status" | "finalize")) => {
            (Some((*ns).to_owned()), [&[*plural][..], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [p] => (*p, None, ""),
        [p, n] => (*p, Some(*n), ""),
        [p, n, s] => (*p, Some(*n), *s),
        _ => return Err(ApiError::unknown_path()),
    };
    let rt = shared.lock().find_type(group, version, plural).ok_or_else(ApiError::unknown_path)?;
    if !matches!(subresource, "" | "status") || (subresource == "status" && !rt.status_subresource) {
        return Err(ApiError::unknown_path());
    }
    if !rt.namespaced && namespace.is_some() {
        return Err(ApiError::unknown_path());
    }
    let ns = if rt.namespaced { namespace.clone() } else { Some(String::new()) };
    match (&req.method, name) {
        (&Method::GET, Some(name)) => get(shared, &rt, ns.as_deref().unwrap_or_default(), name, req),
        (&Method::GET, None) if req.flag("watch") => watch(shared, &rt, namespace, req),
        (&Method::GET, None) => list(shared, &rt, namespace.as_deref(), req),
        (&Method::POST, None) => {
            let Some(ns) = ns else { return Err(ApiError::method_not_allowed()) };
            let opts = req.write_options(Verb::Create)?;
            let body = req.json_body()?;
            let target = Target { rt: &rt, namespace: &ns, subresource: "" };
            written(shared, &rt, |state, scope| write::create(state, scope, &target, body.clone(), &opts))
        }
        (&Method::PUT, Some(name)) => {
            let Some(ns) = ns else { return Err(ApiError::unknown_path()) };
            let opts = req.write_options(Verb::Update)?;
            let body = req.json_body()?;
            let target = Target { rt: &rt, namespace: &ns, subresource };
            written(shared, &rt, |state, scope| write::update(state, scope, &target, name, body.clone(), &opts))
        }
        (&Method::PATCH, Some(name)) => {
            let Some(ns) = ns else { return Err(ApiError::unknown_path()) };
            let kind = PatchKind::from_content_type(req.header(header::CONTENT_TYPE))
                .ok_or_else(|| ApiError::unsupported_media_type(write::CUSTOM_PATCH_TYPES))?;
            let verb = if kind == PatchKind::Apply { Verb::Apply } else { Verb::Patch };
            let opts = req.write_options(verb)?;
            let target = Target { rt: &rt, namespace: &ns, subresource };
            written(shared, &rt, |state, scope| {
                write::patch(state, scope, &target, name, kind, &req.body, req.flag("force"), &opts)
            })
        }
        (&Method::DELETE, Some(name)) => {
            let Some(ns) = ns else { return Err(ApiError::unknown_path()) };
            let opts = delete_options(req)?;
            let result = {
                let mut state = shared.lock();
                let result = delete::delete(&mut state, &rt, &ns, name, &opts)?;
                shared.notify(&state);
                result
            };
            Ok(match result {
                Deleted::Pending(obj) => ok(&write::present_response(&rt, &obj)),
                Deleted::Gone(status) => ok(&status),
            })
        }
        (&Method::DELETE, None) => {
            let opts = delete_options(req)?;
            let labels = LabelSelector::parse(req.q("labelSelector").unwrap_or_default())?;
            let fields = FieldSelector::parse(req.q("fieldSelector").unwrap_or_default(), &rt)?;
            let mut state = shared.lock();
            let doomed: Vec<(String, String)> = state
                .list(&rt.storage, namespace.as_deref())
                .iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .map(|o| {
                    let s = |k: &str| o.pointer(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                    (s("/metadata/namespace"), s("/metadata/name"))
                })
                .collect();
            let mut items = Vec::new();
            for (ns, name) in doomed {
                match delete::delete(&mut state, &rt, &ns, &name, &opts) {
                    Ok(Deleted::Pending(obj)) => items.push(obj),
                    Ok(Deleted::Gone(_)) | Err(_) => {}
                }
            }
            shared.notify(&state);
            let rv = state.rv();
            drop(state);
            let items: Vec<Value> = items.iter().map(|o| write::present_response(&rt, o)).collect();
            Ok(ok(&json!({
                "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items,
            })))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Runs one write (admission outside the lock), then answers with the object, rendered after
/// the lock is released (201 when it was created).
fn written(
    shared: &Shared,
    rt: &ResourceType,
    write: impl FnMut(&mut super::state::State, &mut write::WriteScope) -> Result<write::Written, ApiError>,
) -> Result<Response, ApiError> {
    let written = shared.write(write)?;
    let code = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(code, &write::present_response(rt, &written.object), &written.warnings))
}

fn delete_options(req: &Request) -> Result<DeleteOptions, ApiError> {
    // Helm 4 sends DeleteOptions as protobuf; its options (none but the defaults) then come
    // from the query, as for a body-less delete.
    let protobuf = req.header(header::CONTENT_TYPE).starts_with("application/vnd.kubernetes.protobuf");
    let body = if protobuf || req.body.iter().all(u8::is_ascii_whitespace) { Value::Null } else { req.json_body()? };
    let body = match body {
        Value::Null => json!({}),
        options @ Value::Object(_) => options,
        // Anything else is not DeleteOptions: refused, never read as "no options" (which would
        // delete the object).
        _ => return Err(ApiError::bad_request("the body of a delete must be a DeleteOptions object")),
    };
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| req.q("propagationPolicy").map(str::to_owned))
        .or_else(|| {
            let orphan =
                body.get("orphanDependents").and_then(Value::as_bool) == Some(true) || req.flag("orphanDependents");
            orphan.then(|| "Orphan".to_owned())
        });
    let propagation = match policy.as_deref() {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => return Err(ApiError::bad_request(format!("propagationPolicy: Unsupported value: \"{other}\""))),
    };
    let dry_run = body.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == "All"))
        || req.q("dryRun") == Some("All");
    let pre = |k: &str| body.pointer(&format!("/preconditions/{k}")).and_then(Value::as_str).map(str::to_owned);
    Ok(DeleteOptions { propagation, uid: pre("uid"), resource_version: pre("resourceVersion"), dry_run })
}

fn get(
    shared: &Arc<Shared>,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let obj =
        shared.lock().get(&rt.storage, ns, name).ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, name))?;
    let presented = write::present_response(rt, &obj);
    Ok(match Rendering::from_accept(req.header(header::ACCEPT)) {
        Rendering::Full => ok(&presented),
        Rendering::Metadata => ok(&table::partial_metadata(&presented)),
        Rendering::Table => {
            let rv = presented.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
            ok(&table::table(
                rt,
                &[presented],
                json!({"resourceVersion": rv}),
                IncludeObject::parse(req.q("includeObject")),
                true,
            ))
        }
    })
}

/// `ValidateListOptions` of k8s.io/apiserver for `resourceVersionMatch` (422 ListOptions).
fn check_resource_version_match(req: &Request) -> Result<(), ApiError> {
    let Some(matching) = req.q("resourceVersionMatch").filter(|m| !m.is_empty()) else { return Ok(()) };
    let rv = req.q("resourceVersion").unwrap_or_default();
    let forbidden =
        |message: &str| Cause::new(CauseReason::Forbidden, "resourceVersionMatch", format!("Forbidden: {message}"));
    let mut causes = Vec::new();
    if rv.is_empty() {
        causes.push(forbidden("resourceVersionMatch is forbidden unless resourceVersion is provided"));
    }
    if req.q("continue").is_some_and(|c| !c.is_empty()) {
        causes.push(forbidden("resourceVersionMatch is forbidden when continue is provided"));
    }
    if !matches!(matching, "Exact" | "NotOlderThan") {
        causes.push(Cause::new(
            CauseReason::NotSupported,
            "resourceVersionMatch",
            format!("Unsupported value: {matching:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""),
        ));
    }
    if matching == "Exact" && rv == "0" {
        causes.push(forbidden("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
    }
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", &causes)) }
}

fn list(shared: &Arc<Shared>, rt: &Arc<ResourceType>, ns: Option<&str>, req: &Request) -> Result<Response, ApiError> {
    check_resource_version_match(req)?;
    let request = ListRequest {
        rt,
        namespace: ns,
        labels: LabelSelector::parse(req.q("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(req.q("fieldSelector").unwrap_or_default(), rt)?,
        limit: req.q("limit").and_then(|l| l.parse().ok()),
        continue_token: req.q("continue"),
        resource_version: req.q("resourceVersion"),
    };
    let Page { items, meta } = request.page(shared)?;
    let page: Vec<Value> = items.iter().map(|o| write::present_response(rt, o)).collect();
    Ok(match Rendering::from_accept(req.header(header::ACCEPT)) {
        Rendering::Full => {
            // A custom resource list is unstructured: a paged one (limit) carries `continue` even
            // on its last page, as an empty string (typed lists, Tables and metadata lists omit it).
            let mut meta = meta;
            let mut page = page;
            if rt.is_custom() {
                if request.limit.is_some_and(|l| l > 0) && meta.get("continue").is_none() {
                    meta["continue"] = json!("");
                }
            } else {
                // The items of a typed list carry no apiVersion and kind (the list says them).
                for item in page.iter_mut().filter_map(Value::as_object_mut) {
                    item.remove("apiVersion");
                    item.remove("kind");
                }
            }
            ok(
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": page}),
            )
        }
        // kube-apiserver encodes an empty PartialObjectMetadataList's items as null (a nil Go
        // slice), unlike a full list's `[]`: clients must take both.
        Rendering::Metadata => ok(&json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "items": (!page.is_empty()).then(|| page.iter().map(table::partial_metadata).collect::<Vec<_>>()),
        })),
        Rendering::Table => ok(&table::table(rt, &page, meta, IncludeObject::parse(req.q("includeObject")), true)),
    })
}

fn watch(
    shared: &Arc<Shared>,
    rt: &Arc<ResourceType>,
    namespace: Option<String>,
    req: &Request,
) -> Result<Response, ApiError> {
    // The ListOptions rules of a real server (422, which kubectl 1.35 treats as "no streaming
    // lists here"): sendInitialEvents and resourceVersionMatch=NotOlderThan go together.
    let list_options_invalid = |field: &str, message: &str| {
        ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            &[Cause::new(CauseReason::Forbidden, field, format!("Forbidden: {message}"))],
        )
    };
    match (req.q("sendInitialEvents").is_some(), req.q("resourceVersionMatch")) {
        (true, Some("NotOlderThan")) | (false, None) => {}
        (true, _) => {
            return Err(list_options_invalid(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        (false, Some(_)) => {
            return Err(list_options_invalid(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
    }
    let request = WatchRequest {
        rt: rt.clone(),
        namespace,
        labels: LabelSelector::parse(req.q("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(req.q("fieldSelector").unwrap_or_default(), rt)?,
        resource_version: req.q("resourceVersion").map(str::to_owned),
        send_initial_events: req.flag("sendInitialEvents"),
        bookmarks: req.flag("allowWatchBookmarks"),
        timeout: req.q("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs),
        rendering: Rendering::from_accept(req.header(header::ACCEPT)),
        include: IncludeObject::parse(req.q("includeObject")),
    };
    let stream = watch::start(shared.clone(), request)?;
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
