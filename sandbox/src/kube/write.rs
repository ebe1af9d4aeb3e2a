//! Create, update and patch (merge, JSON, strategic-as-merge, server-side apply), and the
//! commit every one of them ends in: status rules, server-owned fields, admission, finalizer
//! rules, generation, field ownership, storage and the watch event.
//!
//! A write runs under the state lock so it, its resourceVersion and its watch event are one
//! step, except CEL admission, whose cost must not hold up every other request: a write that
//! needs admission stops, is admitted outside the lock ([`WriteScope`]) and runs again, using
//! that result only if its input is unchanged (optimistic concurrency, as kube-apiserver's
//! `GuaranteedUpdate` retries on a changed object). This is the only module that calls
//! admission; only it and [`super::delete`] change stored objects. It never renders responses.

use std::sync::Arc;

use chrono::{SecondsFormat, Timelike};
use serde_json::{Value, json};

use super::delete::after_removal;
use super::error::ApiError;
use super::events;
use super::fields::{self, Conflict};
use super::meta::{self, meta_mut, meta_str, name_of, now_time, set_field};
use super::resource::{ResourceType, Special, from_crd};
use super::state::{EventType, State};
use super::strategic;
use crate::admission::builtin::{self, Refused};
use crate::admission::{Cause, CauseReason, CrdValidator};

/// `fieldValidation` of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown fields are refused.
    Strict,
    /// Unknown fields are dropped with a `Warning` header (the default).
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the query parameter (absent = Warn).
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Which request a write came from (decides how unknown fields are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH (merge, JSON, strategic).
    Patch,
    /// PATCH with application/apply-patch+yaml.
    Apply,
}

/// Request-wide options of a write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `fieldManager`, or the User-Agent's product name.
    pub manager: String,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The request kind.
    pub verb: Verb,
}

/// The result of a successful write.
#[derive(Debug)]
pub struct Written {
    /// The object as stored (or as it would be, for dry runs), in storage form: [`present`]
    /// it (outside the lock) for the client.
    pub object: Arc<Value>,
    /// `Warning` header values.
    pub warnings: Vec<String>,
    /// 201 instead of 200.
    pub created: bool,
}

/// How many times a write is run with admission outside the lock before it is admitted under
/// it (so a write whose object keeps changing under it still finishes).
const DEFERRED_ATTEMPTS: usize = 4;

/// The outcome of one admission.
type Admission = Result<crate::admission::Admitted, Vec<Cause>>;

/// An admission to run outside the lock.
struct PendingAdmission {
    validator: Arc<CrdValidator>,
    version: String,
    new: Value,
    old: Option<Value>,
}

/// What stays the same across the attempts of one write request: the values a create draws
/// (uid, creationTimestamp, generateName suffix) and the admission results computed outside
/// the lock, each with its input.
pub struct WriteScope {
    uid: String,
    created: String,
    suffix: String,
    admitted: Vec<(Value, Option<Value>, Admission)>,
    pending: Option<PendingAdmission>,
    attempts: usize,
}

impl Default for WriteScope {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteScope {
    /// A new request's scope.
    pub fn new() -> Self {
        Self {
            uid: uuid::Uuid::new_v4().to_string(),
            created: now_time(),
            suffix: random_suffix(),
            admitted: Vec::new(),
            pending: None,
            attempts: 0,
        }
    }

    /// A scope whose admissions run at once, under the lock (the server's own writes at start).
    pub fn inline() -> Self {
        Self { attempts: DEFERRED_ATTEMPTS, ..Self::new() }
    }

    /// Runs `write` against the state behind `lock` until it no longer stops for admission;
    /// admissions run between attempts, without the lock. `done` runs under the lock after a
    /// successful attempt (waking the watches).
    pub fn run<G: std::ops::DerefMut<Target = State>>(
        &mut self,
        lock: impl Fn() -> G,
        mut write: impl FnMut(&mut State, &mut Self) -> Result<Written, ApiError>,
        done: impl Fn(&State),
    ) -> Result<Written, ApiError> {
        loop {
            let result = {
                let mut state = lock();
                let result = write(&mut state, self);
                if result.is_ok() {
                    done(&state);
                }
                result
            };
            match self.pending.take() {
                Some(p) => {
                    let outcome = p.validator.admit(&p.version, &p.new, p.old.as_ref());
                    self.admitted.push((p.new, p.old, outcome));
                    self.attempts += 1;
                }
                None => return result,
            }
        }
    }

    /// The admission of `new` over `old`: computed earlier outside the lock for this very
    /// input, or `None` after asking for it (the write must then stop; [`Self::run`] retries).
    fn admission(
        &mut self,
        validator: &Arc<CrdValidator>,
        version: &str,
        new: &Value,
        old: Option<&Value>,
    ) -> Option<Admission> {
        if let Some(i) = self.admitted.iter().position(|(n, o, _)| n == new && o.as_ref() == old) {
            return Some(self.admitted.swap_remove(i).2);
        }
        if self.attempts >= DEFERRED_ATTEMPTS {
            return Some(validator.admit(version, new, old));
        }
        self.pending = Some(PendingAdmission {
            validator: validator.clone(),
            version: version.to_owned(),
            new: new.clone(),
            old: old.cloned(),
        });
        None
    }
}

/// Who owns the fields a write sets.
enum Ownership {
    /// An Update-operation manager; ownership computed from the change.
    Update,
    /// Server-side apply already computed `metadata.managedFields`.
    Precomputed,
}

/// Where an object lives.
pub struct Target<'a> {
    /// Its kind.
    pub rt: &'a Arc<ResourceType>,
    /// Namespace ("" for cluster-scoped).
    pub namespace: &'a str,
    /// `""` or `"status"`.
    pub subresource: &'a str,
}

/// The object as clients see it in this kind's version. Custom resources get their schema's
/// defaults again, as a real server applies them on read: a default added to a CRD later shows
/// on objects stored before it.
pub fn present(rt: &ResourceType, object: &Value) -> Value {
    if rt.special == Special::EventsV1 {
        return events::to_events_v1(object);
    }
    let mut v = match (&rt.schema, rt.is_custom()) {
        (Some(schema), true) => kube_cel::apply_defaults(schema.as_ref(), object),
        _ => object.clone(),
    };
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(rt.api_version()));
        m.insert("kind".into(), Value::String(rt.kind.clone()));
    }
    v
}

/// The object as a response carries it: [`present`], plus the fields Go's encoder writes for an
/// Event even when they were never set (structs and fields without `omitempty`).
pub fn present_response(rt: &ResourceType, object: &Value) -> Value {
    let presented = present(rt, object);
    if rt.kind != "Event" || !(rt.group.is_empty() || rt.special == Special::EventsV1) {
        return presented;
    }
    events::with_go_zero_values(&presented, rt.special == Special::EventsV1)
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5].iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

/// A body naming another apiVersion or kind than the URL is refused, as real servers do.
fn check_type(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
    let field = |k: &str| body.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    if let Some(av) = field("apiVersion")
        && av != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(kind) = field("kind")
        && kind != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    Ok(())
}

/// Refuses a body (or patch result) that is no object of this kind, as a real server's decoder
/// does, before anything reads or rewrites its metadata.
fn check_decodes(rt: &ResourceType, object: &Value) -> Result<(), ApiError> {
    match meta::decode_error(object).or_else(|| micro_time_error(rt, object)) {
        None => Ok(()),
        Some(why) => Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {why}",
            kind = rt.kind,
            v = rt.version
        ))),
    }
}

/// Validation of built-in kinds that [`builtin::admit`] does not cover: Leases
/// (`ValidateLeaseSpec`) and Events (in their stored core form, [`events::validate`]).
fn builtin_checks(rt: &ResourceType, new: &Value, namespace: &str, old: Option<&Value>) -> Vec<Cause> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("coordination.k8s.io", "Lease") => {
            let mut causes = Vec::new();
            let int = |p: &str| new.pointer(p).and_then(Value::as_i64);
            if let Some(d) = int("/spec/leaseDurationSeconds").filter(|d| *d <= 0) {
                causes.push(Cause::new(
                    CauseReason::Invalid,
                    "spec.leaseDurationSeconds",
                    format!("Invalid value: {d}: must be greater than 0"),
                ));
            }
            if let Some(t) = int("/spec/leaseTransitions").filter(|t| *t < 0) {
                causes.push(Cause::new(
                    CauseReason::Invalid,
                    "spec.leaseTransitions",
                    format!("Invalid value: {t}: must be greater than or equal to 0"),
                ));
            }
            causes
        }
        ("" | "events.k8s.io", "Event") => events::validate(new, namespace, rt.special == Special::EventsV1, old),
        _ => Vec::new(),
    }
}

/// Times of built-in kinds as Go writes them back: MicroTimes in UTC with six fractional
/// digits, Times in UTC to the second (a time sent as `+00:00` is answered with `Z`).
fn canonical_times(rt: &ResourceType, object: &mut Value) {
    let seconds: &[&str] = if rt.kind == "Event" { &["/firstTimestamp", "/lastTimestamp"] } else { &[] };
    let fields = micro_time_fields(rt)
        .iter()
        .map(|p| (p, SecondsFormat::Micros))
        .chain(seconds.iter().map(|p| (p, SecondsFormat::Secs)));
    for (path, format) in fields {
        if let Some(v) = object.pointer_mut(path)
            && let Some(t) = v.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            let mut t = t.with_timezone(&chrono::Utc);
            if format == SecondsFormat::Secs {
                t = t.with_nanosecond(0).unwrap_or(t);
            }
            *v = json!(t.to_rfc3339_opts(format, true));
        }
    }
}

/// The `metav1.MicroTime` fields of the built-in kinds that have them (Events in their stored
/// core form, whichever API wrote them).
fn micro_time_fields(rt: &ResourceType) -> &'static [&'static str] {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("coordination.k8s.io", "Lease") => &["/spec/acquireTime", "/spec/renewTime"],
        ("" | "events.k8s.io", "Event") => &["/eventTime", "/series/lastObservedTime"],
        _ => &[],
    }
}

/// Why a MicroTime field of `object` does not decode: Go parses it with the layout
/// `2006-01-02T15:04:05.000000Z07:00`, so a time needs exactly six fractional digits (what
/// Python's `isoformat()` of a whole second, `...T00:00:00+00:00`, lacks).
fn micro_time_error(rt: &ResourceType, object: &Value) -> Option<String> {
    micro_time_fields(rt).iter().find_map(|path| {
        let text = object.pointer(path)?.as_str()?;
        go_micro_time_error(text).map(|why| format!("parsing time {text:?} as \"{MICRO_LAYOUT}\": {why}"))
    })
}

const MICRO_LAYOUT: &str = "2006-01-02T15:04:05.000000Z07:00";

/// Go's `time.Parse(MICRO_LAYOUT, text)` error (`cannot parse "<rest>" as "<element>"`), or
/// None when it parses. Range errors (a 13th month) are not checked.
fn go_micro_time_error(text: &str) -> Option<String> {
    fn digits(s: &str, n: usize) -> bool {
        s.len() >= n && s.as_bytes()[..n].iter().all(u8::is_ascii_digit)
    }
    // (layout element, how many bytes of the rest it takes when it matches)
    type Element = (&'static str, fn(&str) -> Option<usize>);
    let elements: [Element; 13] = [
        ("2006", |s| digits(s, 4).then_some(4)),
        ("-", |s| s.starts_with('-').then_some(1)),
        ("01", |s| digits(s, 2).then_some(2)),
        ("-", |s| s.starts_with('-').then_some(1)),
        ("02", |s| digits(s, 2).then_some(2)),
        ("T", |s| s.starts_with('T').then_some(1)),
        ("15", |s| digits(s, 2).then_some(2)),
        (":", |s| s.starts_with(':').then_some(1)),
        ("04", |s| digits(s, 2).then_some(2)),
        (":", |s| s.starts_with(':').then_some(1)),
        ("05", |s| digits(s, 2).then_some(2)),
        (".000000", |s| (s.len() >= 7 && s.starts_with(['.', ',']) && digits(&s[1..], 6)).then_some(7)),
        ("Z07:00", |s| {
            let b = s.as_bytes();
            if s.starts_with('Z') {
                Some(1)
            } else {
                (b.len() >= 6
                    && matches!(b[0], b'+' | b'-')
                    && digits(&s[1..], 2)
                    && b[3] == b':'
                    && digits(&s[4..], 2))
                .then_some(6)
            }
        }),
    ];
    let mut rest = text;
    for (element, take) in elements {
        match take(rest) {
            Some(n) => rest = &rest[n..],
            None => return Some(format!("cannot parse {rest:?} as {element:?}")),
        }
    }
    (!rest.is_empty()).then(|| format!("extra text: {rest:?}"))
}

/// POST: creates `body` in `target`.
pub fn create(
    state: &mut State,
    scope: &mut WriteScope,
    target: &Target,
    body: Value,
    opts: &WriteOptions,
) -> Result<Written, ApiError> {
    let rt = target.rt;
    check_type(rt, &body)?;
    let mut body = if rt.special == Special::EventsV1 { events::to_core(&body) } else { body };
    check_decodes(rt, &body)?;
    if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    if rt.namespaced {
        match meta_str(&body, "namespace") {
            Some(ns) if !ns.is_empty() && ns != target.namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
    }
    if meta_str(&body, "name").is_none_or(str::is_empty) {
        match meta_str(&body, "generateName") {
            Some(prefix) if !prefix.is_empty() => {
                let name = format!("{prefix}{}", scope.suffix);
                meta_mut(&mut body).insert("name".into(), json!(name));
            }
            _ => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    "",
                    &[Cause::new(
                        CauseReason::Required,
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )],
                ));
            }
        }
    }
    insert(state, scope, target, body, opts, Ownership::Update)
}

fn insert(
    state: &mut State,
    scope: &mut WriteScope,
    target: &Target,
    mut body: Value,
    opts: &WriteOptions,
    ownership: Ownership,
) -> Result<Written, ApiError> {
    let rt = target.rt;
    let name = name_of(&body);
    // Custom resources get the same check from admission. A name that is no valid path segment
    // (`a/b`) would leave an object no client can address again.
    if !rt.is_custom()
        && let Some(message) = builtin::object_name_error(&rt.group, &rt.kind, &name)
    {
        return Err(ApiError::invalid(
            &rt.kind,
            &rt.group,
            &name,
            &[Cause::new(CauseReason::Invalid, "metadata.name", message)],
        ));
    }
    if rt.namespaced {
        match state.get(&(String::new(), "namespaces".into()), "", target.namespace) {
            None => return Err(ApiError::not_found("namespaces", "", target.namespace)),
            Some(ns) if ns.pointer("/metadata/deletionTimestamp").is_some() => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                        super::error::qualified(&rt.plural, &rt.group),
                        target.namespace
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if state.get(&rt.storage, target.namespace, &name).is_some() {
        return Err(ApiError::already_exists(&rt.plural, &rt.group, &name));
    }
    if rt.status_subresource
        && rt.special != Special::Namespace
        && let Some(m) = body.as_object_mut()
    {
        m.remove("status");
    }
    {
        let meta = meta_mut(&mut body);
        for key in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"] {
            meta.remove(key);
        }
        if rt.namespaced {
            meta.insert("namespace".into(), json!(target.namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(scope.uid));
        meta.insert("creationTimestamp".into(), json!(scope.created));
        if rt.generation {
            meta.insert("generation".into(), json!(1));
        }
        if !matches!(ownership, Ownership::Precomputed) {
            meta.remove("managedFields");
        }
    }
    commit(state, scope, target, None, body, opts, ownership)
}

/// PUT: replaces the stored object with `body`.
pub fn update(
    state: &mut State,
    scope: &mut WriteScope,
    target: &Target,
    name: &str,
    body: Value,
    opts: &WriteOptions,
) -> Result<Written, ApiError> {
    let rt = target.rt;
    check_type(rt, &body)?;
    check_decodes(rt, &body)?;
    let body = if rt.special == Special::EventsV1 { events::to_core(&body) } else { body };
    let Some(old) = state.get(&rt.storage, target.namespace, name) else {
        return Err(ApiError::not_found(&rt.plural, &rt.group, name));
    };
    if meta_str(&body, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            name_of(&body)
        )));
    }
    if rt.is_custom() && meta_str(&body, "resourceVersion").is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            &rt.kind,
            &rt.group,
            name,
            &[Cause::new(
                CauseReason::Invalid,
                "metadata.resourceVersion",
                "Invalid value: 0: must be specified for an update",
            )],
        ));
    }
    commit(state, scope, target, Some(old), body, opts, Ownership::Update)
}

/// The patch types custom resources accept, as a 415 lists them (kubectl quotes it).
pub const CUSTOM_PATCH_TYPES: &str =
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";

/// The body formats of PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// application/merge-patch+json.
    Merge,
    /// application/json-patch+json.
    Json,
    /// application/strategic-merge-patch+json (built-ins only; treated as a merge patch).
    Strategic,
    /// application/apply-patch+yaml.
    Apply,
}

impl PatchKind {
    /// From a Content-Type.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies a JSON patch with the quirk kube-rs's finalizer helper relies on: `test` of a
/// missing member against `null` succeeds when the parent exists.
fn json_patch(doc: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    let ops: Vec<json_patch::PatchOperation> =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
    // Details present but empty: what `errors.NewGenericServerResponse` answers for a 422.
    let rejected = || {
        ApiError::new(422, "Invalid", "the server rejected our request due to an error in our request")
            .with_details(json!({}))
    };
    for op in ops {
        if let json_patch::PatchOperation::Test(t) = &op {
            let path = t.path.as_str();
            if t.value.is_null() && doc.pointer(path).is_none() {
                let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or_default();
                if doc.pointer(parent).is_some() {
                    continue;
                }
                return Err(rejected());
            }
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(&op)).map_err(|_| rejected())?;
    }
    Ok(())
}

fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let n = conflicts.len();
    // The wording of structured-merge-diff: one conflict inline, several grouped by manager.
    let message = if n == 1 {
        format!("Apply failed with 1 conflict: {}: {}", conflicts[0].owner_text(), conflicts[0].field)
    } else {
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for c in conflicts {
            let owner = c.owner_text().replacen("conflict with", "conflicts with", 1);
            match groups.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, fields)) => fields.push(&c.field),
                None => groups.push((owner, vec![&c.field])),
            }
        }
        let text: Vec<String> = groups
            .iter()
            .map(|(owner, fields)| {
                format!("{owner}:\n{}", fields.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n"))
            })
            .collect();
        format!("Apply failed with {n} conflicts: {}", text.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": c.owner_text(), "field": c.field}))
        .collect();
    // structured-merge-diff's conflict error names no object: details carry only the causes.
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

/// 422 for bad PATCH options, which kube-apiserver validates as a `PatchOptions` object.
fn patch_options_invalid(cause: Cause) -> ApiError {
    ApiError::invalid("PatchOptions", "meta.k8s.io", "", &[cause])
}

/// PATCH of every kind.
#[allow(clippy::too_many_arguments)]
pub fn patch(
    state: &mut State,
    scope: &mut WriteScope,
    target: &Target,
    name: &str,
    kind: PatchKind,
    body: &[u8],
    force: bool,
    opts: &WriteOptions,
) -> Result<Written, ApiError> {
    let rt = target.rt;
    if force && kind != PatchKind::Apply {
        return Err(patch_options_invalid(Cause::new(
            CauseReason::Forbidden,
            "force",
            "Forbidden: may not be specified for non-apply patch",
        )));
    }
    if kind == PatchKind::Strategic && rt.is_custom() {
        return Err(ApiError::unsupported_media_type(CUSTOM_PATCH_TYPES));
    }
    let old = state.get(&rt.storage, target.namespace, name);
    if kind == PatchKind::Apply {
        return server_side_apply(state, scope, target, name, old, body, force, opts);
    }
    let Some(old) = old else {
        return Err(ApiError::not_found(&rt.plural, &rt.group, name));
    };
    // The stored resourceVersion stays in the document: a patch that sets another one is a
    // precondition that fails with 409, one that leaves it alone is unconditional.
    let mut doc = present(rt, &old);
    match kind {
        PatchKind::Json => json_patch(&mut doc, body)?,
        PatchKind::Merge | PatchKind::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if kind == PatchKind::Strategic {
                strategic::apply(&rt.merge_schema, &mut doc, &p).map_err(|e| ApiError::bad_request(e.to_string()))?;
            } else {
                json_patch::merge(&mut doc, &p);
            }
        }
        PatchKind::Apply => {}
    }
    let doc = if rt.special == Special::EventsV1 { events::to_core(&doc) } else { doc };
    commit(state, scope, target, Some(old), doc, opts, Ownership::Update)
}

#[allow(clippy::too_many_arguments)]
fn server_side_apply(
    state: &mut State,
    scope: &mut WriteScope,
    target: &Target,
    name: &str,
    old: Option<Arc<Value>>,
    body: &[u8],
    force: bool,
    opts: &WriteOptions,
) -> Result<Written, ApiError> {
    let rt = target.rt;
    if opts.manager.is_empty() {
        return Err(patch_options_invalid(Cause::new(
            CauseReason::Required,
            "fieldManager",
            "Required value: is required for apply patch",
        )));
    }
    let mut config: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            serde_norway::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
    };
    check_decodes(rt, &config)?;
    let body_av = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    if body_av != rt.api_version() {
        // The decoder meets a kind of another group/version first (Go prints a GroupVersionKind
        // as `group/version, Kind=kind`, the core group empty).
        let (group, version) = body_av.rsplit_once('/').unwrap_or(("", &body_av));
        let body_kind = config.get("kind").and_then(Value::as_str).unwrap_or_default();
        return Err(ApiError::bad_request(format!("invalid object type: {group}/{version}, Kind={body_kind}")));
    }
    // Else the object would be stored as the URL's kind whatever the body said.
    check_type(rt, &config)?;
    if config.pointer("/metadata/managedFields").is_some() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    // An apply that creates takes the object's name from its body, as a create does.
    if old.is_none() && meta_str(&config, "name").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name} based on URL) was undeterminable: name must be provided"
        )));
    }
    let applied_body = config.clone();
    if rt.special == Special::EventsV1 {
        config = events::to_core(&config);
    }
    {
        let meta = meta_mut(&mut config);
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(target.namespace));
        }
    }
    let live = old.as_deref().map(|o| present_storage(rt, o));
    let merged = fields::apply(
        &rt.merge_schema,
        live.as_ref(),
        &config,
        &opts.manager,
        force,
        target.subresource,
        rt.status_subresource,
    )
    .map_err(|c| conflict_error(&c))?;
    let mut merged = merged;
    update_last_applied(&mut merged, &applied_body, &opts.manager);
    match old {
        None => {
            if target.subresource == "status" {
                return Err(ApiError::not_found(&rt.plural, &rt.group, name));
            }
            insert(state, scope, target, merged, opts, Ownership::Precomputed)
        }
        Some(old) => commit(state, scope, target, Some(old), merged, opts, Ownership::Precomputed),
    }
}

/// kubectl's client-side apply annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// kube-apiserver's `lastAppliedUpdater`: a server-side apply by kubectl (manager `kubectl`) to
/// an object that carries the client-side apply annotation rewrites it to the applied
/// configuration, so a later client-side apply diffs against what was applied last. The value is
/// the request body without that annotation, as Go encodes it (sorted keys, a newline).
fn update_last_applied(merged: &mut Value, applied: &Value, manager: &str) {
    if manager != "kubectl" || merged.pointer("/metadata/annotations").and_then(|a| a.get(LAST_APPLIED)).is_none() {
        return;
    }
    let mut applied = applied.clone();
    if let Some(annotations) = applied.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        annotations.remove(LAST_APPLIED);
    }
    let mut text = sorted_keys(&applied).to_string();
    text.push('\n');
    if let Some(annotations) = merged.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        annotations.insert(LAST_APPLIED.into(), Value::String(text));
    }
}

/// `v` with every object's keys in sorted order (as Go's encoding/json writes a map).
fn sorted_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted_keys(&m[k]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// The stored form with this kind's apiVersion (events stay in core form).
fn present_storage(rt: &ResourceType, object: &Value) -> Value {
    if rt.special == Special::EventsV1 { object.clone() } else { present(rt, object) }
}

/// The common tail of every create and update: status rules, server-owned fields, admission,
/// finalizer rules, generation, field ownership, then storage and the watch event.
fn commit(
    state: &mut State,
    scope: &mut WriteScope,
    target: &Target,
    old: Option<Arc<Value>>,
    mut new: Value,
    opts: &WriteOptions,
    mut ownership: Ownership,
) -> Result<Written, ApiError> {
    let rt = target.rt;
    // Patches can produce anything: a merge patch that is no object, a JSON patch replacing the
    // root or setting `metadata.labels` to a number.
    check_decodes(rt, &new)?;
    let storage_av = if rt.special == Special::EventsV1 { "v1".to_owned() } else { rt.api_version() };
    let storage_kind = rt.kind.clone();
    let name = match &old {
        Some(o) => name_of(o),
        None => name_of(&new),
    };
    if let Some(m) = new.as_object_mut() {
        m.insert("apiVersion".into(), json!(storage_av));
        m.insert("kind".into(), json!(storage_kind));
    }
    if let Some(old) = &old {
        let wanted_rv = meta_str(&new, "resourceVersion").map(str::to_owned);
        if let Some(rv) = wanted_rv.filter(|rv| !rv.is_empty())
            && Some(rv.as_str()) != meta_str(old, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.plural, &rt.group, &name));
        }
        if target.subresource == "status" {
            let status = new.get("status").cloned();
            let managed = new.pointer("/metadata/managedFields").cloned();
            new = present_storage(rt, old);
            set_field(&mut new, "status", status);
            if let (Ownership::Precomputed, Some(mf)) = (&ownership, managed) {
                meta_mut(&mut new).insert("managedFields".into(), mf);
            }
        } else if rt.status_subresource {
            set_field(&mut new, "status", old.get("status").cloned());
        }
        let managed = new.pointer("/metadata/managedFields").cloned();
        // A client may rewrite managedFields itself (kubectl does when it moves client-side
        // apply ownership to server-side apply); the server then records nothing of its own.
        let rewritten = managed.as_ref().is_some_and(|m| m.as_array().is_some_and(|a| !a.is_empty()))
            && managed.as_ref() != old.pointer("/metadata/managedFields");
        if rewritten {
            ownership = Ownership::Precomputed;
        }
        meta::keep_server_fields(&mut new, old);
        if let (Ownership::Precomputed, Some(mf)) = (&ownership, managed) {
            meta_mut(&mut new).insert("managedFields".into(), mf);
        }
        let meta = meta_mut(&mut new);
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(target.namespace));
        }
    }

    let mut warnings = Vec::new();
    if let Some(validator) = &rt.validator {
        let old_json = old.as_deref().map(|o| present(rt, o));
        let Some(admission) = scope.admission(validator, &rt.version, &new, old_json.as_ref()) else {
            // Stopped for admission outside the lock: nothing was changed.
            return Err(ApiError::new(500, "InternalError", "admission pending"));
        };
        match admission {
            Ok(admitted) => {
                unknown_fields(rt, &name, opts, &admitted.unknown_fields, &mut warnings)?;
                new = admitted.object;
            }
            Err(causes) => return Err(ApiError::invalid(&rt.kind, &rt.group, &name, &causes)),
        }
    }
    if rt.builtin_admission()
        && let Some(schema) = &rt.schema
    {
        let old_view = old.as_deref().map(|o| present(rt, o));
        match builtin::admit(&rt.group, &rt.kind, schema, &new, old_view.as_ref()) {
            Ok(admitted) => {
                unknown_fields(rt, &name, opts, &admitted.unknown_fields, &mut warnings)?;
                new = admitted.object;
            }
            Err(Refused::Decode(why)) => {
                return Err(ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: {why}",
                    kind = rt.kind,
                    v = rt.version
                )));
            }
            Err(Refused::Invalid(causes)) => return Err(ApiError::invalid(&rt.kind, &rt.group, &name, &causes)),
        }
    }

    let causes = builtin_checks(rt, &new, target.namespace, old.as_deref());
    if !causes.is_empty() {
        // Event validation names no group (it runs on the internal core type).
        let group = if rt.kind == "Event" { "" } else { rt.group.as_str() };
        return Err(ApiError::invalid(&rt.kind, group, &name, &causes));
    }
    canonical_times(rt, &mut new);

    let mut crd_types = None;
    if rt.special == Special::Crd {
        // A schema or rule the server cannot use is refused with its own causes (a rule over
        // the cost budget names the rule's path), as kube-apiserver's CRD validation does.
        let types = from_crd(&new).map_err(|e| {
            let causes = match &e {
                super::resource::CrdError::Schema(schema) => schema.causes(),
                other => vec![Cause::new(CauseReason::Invalid, "spec", format!("Invalid value: \"object\": {other}"))],
            };
            ApiError::invalid(&rt.kind, &rt.group, &name, &causes)
        })?;
        let status = crd_status(&new);
        set_field(&mut new, "status", Some(status));
        crd_types = Some(types);
    }
    if rt.group.is_empty() && matches!(rt.kind.as_str(), "Secret" | "ConfigMap") {
        check_payload(rt, &new)?;
        // Stored as Go would store them: typed clients cannot read a null value back.
        for field in ["data", "binaryData", "stringData"] {
            if let Some(entries) = new.get_mut(field).and_then(Value::as_object_mut) {
                entries.values_mut().filter(|v| v.is_null()).for_each(|v| *v = json!(""));
            }
        }
    }
    if rt.group.is_empty() && rt.kind == "Secret" {
        fold_string_data(&mut new);
    }
    if rt.special == Special::Namespace {
        if new.pointer("/status/phase").is_none() {
            set_field(&mut new, "status", Some(json!({"phase": "Active"})));
        }
        // `SetDefaults_Namespace`: the name as a label, on every write (defaulting comes before
        // the field manager, so it counts as the writer's field).
        if !name.is_empty() {
            let meta = meta_mut(&mut new);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
    }

    if let Some(old) = &old
        && old.pointer("/metadata/deletionTimestamp").is_some()
    {
        let before = meta::finalizers(old);
        let added: Vec<String> = meta::finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
        if !added.is_empty() {
            // Go's `%#v` of the []string.
            let quoted: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
            let cause = Cause::new(
                CauseReason::Forbidden,
                "metadata.finalizers",
                format!(
                    "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    quoted.join(", ")
                ),
            );
            let mut refused = ApiError::invalid(&rt.kind, &rt.group, &name, std::slice::from_ref(&cause));
            // For custom resources kube-apiserver checks object metadata twice (the generic
            // update checks and the custom resource strategy's): the cause comes twice, the
            // message (deduplicated) once.
            if rt.is_custom()
                && let Some(causes) =
                    refused.details.as_mut().and_then(|d| d.get_mut("causes")).and_then(Value::as_array_mut)
                && let Some(first) = causes.first().cloned()
            {
                causes.push(first);
            }
            return Err(refused);
        }
    }
    // The old object as clients read it (schema defaults applied): a default added to the CRD
    // after the object was stored is no change of the object, as on a real server, which
    // defaults what it reads from etcd before comparing.
    let old_view = old.as_deref().map(|o| present_storage(rt, o));
    if let Some(old_view) = &old_view
        && rt.generation
    {
        let generation = old_view.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let changed = meta::spec_changed(old_view, &new, rt.status_subresource);
        meta_mut(&mut new).insert("generation".into(), json!(if changed { generation + 1 } else { generation }));
    }
    meta::normalise(&mut new);
    if matches!(ownership, Ownership::Update) {
        if rt.special == Special::EventsV1 {
            // Ownership is recorded in the writer's API, its field names included (`f:note`,
            // `f:regarding`), and shown as such by both APIs, as kube-apiserver stores it.
            let old_v1 = old_view.as_ref().map(events::to_events_v1);
            let mut new_v1 = events::to_events_v1(&new);
            fields::record_update(
                &rt.merge_schema,
                old_v1.as_ref(),
                &mut new_v1,
                &opts.manager,
                target.subresource,
                &rt.api_version(),
                rt.status_subresource,
                rt.zero_value_structs(),
            );
            let managed = new_v1.pointer("/metadata/managedFields").cloned();
            let meta = meta_mut(&mut new);
            match managed {
                Some(managed) => meta.insert("managedFields".into(), managed),
                None => meta.remove("managedFields"),
            };
        } else {
            fields::record_update(
                &rt.merge_schema,
                old_view.as_ref(),
                &mut new,
                &opts.manager,
                target.subresource,
                &rt.api_version(),
                rt.status_subresource,
                rt.zero_value_structs(),
            );
        }
    }

    // `PrepareForCreate`/`PrepareForUpdate` of Namespaces (after the field manager: nobody owns
    // it): the `kubernetes` finalizer in spec on create; spec.finalizers only ever changed by the
    // namespace controller.
    if rt.special == Special::Namespace {
        let finalizers = match &old {
            Some(old) => old.pointer("/spec/finalizers").cloned(),
            None => {
                let mut finalizers: Vec<Value> =
                    new.pointer("/spec/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
                if !finalizers.iter().any(|f| f == "kubernetes") {
                    finalizers.push(json!("kubernetes"));
                }
                Some(Value::Array(finalizers))
            }
        };
        let spec = new.as_object_mut().map(|m| m.entry("spec").or_insert_with(|| json!({})));
        if let Some(spec) = spec.and_then(Value::as_object_mut) {
            match finalizers {
                Some(f) => spec.insert("finalizers".into(), f),
                None => spec.remove("finalizers"),
            };
        }
    }

    if let (Some(old), Some(old_view)) = (&old, &old_view)
        && meta::content(old_view) == meta::content(&new)
        && same_owners(old, &new)
    {
        return Ok(Written { object: old.clone(), warnings, created: false });
    }
    if opts.dry_run {
        return Ok(Written { object: Arc::new(new), warnings, created: old.is_none() });
    }
    let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
    if deleting && meta::finalizers(&new).is_empty() {
        let rv = state.next_rv();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let last = state.remove(&rt.storage, target.namespace, &name, new, rv);
        after_removal(state, rt, &last);
        return Ok(Written { object: last, warnings, created: false });
    }
    let rv = state.next_rv();
    meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
    let event = if old.is_some() { EventType::Modified } else { EventType::Added };
    let stored = state.put(&rt.storage, target.namespace, &name, new, event, rv);
    if let Some(types) = crd_types {
        let group = stored.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default().to_owned();
        let plural = stored.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_owned();
        state.set_crd_types(&group, &plural, types);
    }
    Ok(Written { object: stored, warnings, created: old.is_none() })
}

/// What `fieldValidation` makes of the unknown fields admission found: nothing (Ignore), a
/// `Warning` each (Warn), or a refusal (Strict: 400 for create/update, 422 for patches, as a
/// real server's strict decoder answers).
fn unknown_fields(
    rt: &ResourceType,
    name: &str,
    opts: &WriteOptions,
    unknown: &[String],
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    if unknown.is_empty() {
        return Ok(());
    }
    match opts.field_validation {
        FieldValidation::Ignore => Ok(()),
        FieldValidation::Warn => {
            warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
            Ok(())
        }
        FieldValidation::Strict => {
            let list = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>().join(", ");
            Err(match opts.verb {
                Verb::Create | Verb::Update => ApiError::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {list}",
                    kind = rt.kind,
                    v = rt.version
                )),
                Verb::Patch | Verb::Apply => ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    &[Cause::new(
                        CauseReason::Invalid,
                        "patch",
                        format!("Invalid value: \"object\": strict decoding error: {list}"),
                    )],
                ),
            })
        }
    }
}

/// Refuses a Secret or ConfigMap whose payload Go could not decode: `data` of a Secret and
/// `binaryData` of a ConfigMap are maps of base64 strings, `stringData` and a ConfigMap's `data`
/// maps of strings. Stored anyway, such an object would fail every typed client that lists the
/// kind. The message never quotes a value (it may be a secret).
fn check_payload(rt: &ResourceType, object: &Value) -> Result<(), ApiError> {
    use base64::Engine;
    let (base64_field, text_field) = if rt.kind == "Secret" { ("data", "stringData") } else { ("binaryData", "data") };
    let refuse = |why: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {why}",
            kind = rt.kind,
            v = rt.version
        ))
    };
    // encoding/json's words: `cannot unmarshal <JSON type> into Go struct field <Kind>.<field>
    // of type <Go type>`, and base64's own error for bytes.
    let json_type = |v: &Value| match v {
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        _ => "object",
    };
    let wrong = |v: &Value, field: &str, go_type: &str| {
        refuse(format!(
            "json: cannot unmarshal {} into Go struct field {}.{field} of type {go_type}",
            json_type(v),
            rt.kind
        ))
    };
    for (field, base64) in [(base64_field, true), (text_field, false)] {
        let element = if base64 { "[]uint8" } else { "string" };
        let entries = match object.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Object(entries)) => entries,
            Some(other) => return Err(wrong(other, field, &format!("map[string]{element}"))),
        };
        for value in entries.values() {
            if value.is_null() {
                continue; // Go reads null as an empty value; stored as "" (see below)
            }
            let Some(text) = value.as_str() else {
                return Err(wrong(value, field, element));
            };
            if base64 && let Err(e) = base64::engine::general_purpose::STANDARD.decode(text) {
                let at = match e {
                    base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                    _ => text.len(),
                };
                return Err(refuse(format!("illegal base64 data at input byte {at}")));
            }
        }
    }
    Ok(())
}

/// A Secret's write-only `stringData` goes into `data`, base64-encoded, as the API server does.
fn fold_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(plain)) = secret.as_object_mut().and_then(|m| m.remove("stringData")) else { return };
    if !secret.get("data").is_some_and(Value::is_object) {
        set_field(secret, "data", Some(json!({})));
    }
    if let Some(data) = secret.get_mut("data").and_then(Value::as_object_mut) {
        for (k, v) in plain {
            let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

/// Whether two objects have the same field owners (ignoring the times of the entries).
fn same_owners(a: &Value, b: &Value) -> bool {
    let owners = |v: &Value| -> Vec<Value> {
        v.pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|e| {
                        let mut e = e.clone();
                        if let Some(m) = e.as_object_mut() {
                            m.remove("time");
                        }
                        e
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    owners(a) == owners(b)
}

fn crd_status(crd: &Value) -> Value {
    let now = now_time();
    json!({
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).map(|vs| {
            vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()
        }).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(verb: Verb) -> WriteOptions {
        WriteOptions { field_validation: FieldValidation::Strict, manager: "test".into(), dry_run: false, verb }
    }

    /// A state with the `default` namespace and the Agent kind, and that kind.
    fn agents() -> (State, Arc<ResourceType>) {
        let mut state = State::new();
        let ns_type = state.find_type("", "v1", "namespaces").unwrap_or_else(|| panic!("namespaces"));
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
        let target = Target { rt: &ns_type, namespace: "", subresource: "" };
        create(&mut state, &mut WriteScope::inline(), &target, ns, &options(Verb::Create))
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
        let crd = crabglamp_operator::api::all_crds().into_iter().find(|c| c.spec.names.kind == "Agent");
        let crd = serde_json::to_value(crd.unwrap_or_else(|| panic!("Agent CRD"))).unwrap_or_default();
        state.set_crd_types("crabglamp.com", "agents", from_crd(&crd).unwrap_or_else(|e| panic!("{e}")));
        let rt = state.find_type("crabglamp.com", "v1alpha1", "agents").unwrap_or_else(|| panic!("agents"));
        (state, rt)
    }

    #[test]
    fn admission_runs_between_attempts_and_a_changed_object_is_admitted_again() {
        let (state, rt) = agents();
        let state = std::sync::Mutex::new(state);
        let target = Target { rt: &rt, namespace: "default", subresource: "" };
        let agent = json!({"apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent", "metadata": {"name": "a"}, "spec": {"owner": "acct_1", "region": "us"}});
        let created = WriteScope::new()
            .run(
                || state.lock().unwrap_or_else(|e| e.into_inner()),
                |st, scope| create(st, scope, &target, agent.clone(), &options(Verb::Create)),
                |_| {},
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(created.object["spec"]["serverType"], "cpx22", "admitted (defaulted) outside the lock");

        let mut attempts = 0;
        let patched = WriteScope::new()
            .run(
                || state.lock().unwrap_or_else(|e| e.into_inner()),
                |st, scope| {
                    attempts += 1;
                    if attempts == 2 {
                        // Another request changes the object while this one is admitted.
                        let other = br#"{"spec": {"running": false}}"#;
                        patch(
                            st,
                            &mut WriteScope::inline(),
                            &target,
                            "a",
                            PatchKind::Merge,
                            other,
                            false,
                            &options(Verb::Patch),
                        )?;
                    }
                    let mine = br#"{"spec": {"owner": "acct_2"}}"#;
                    patch(st, scope, &target, "a", PatchKind::Merge, mine, false, &options(Verb::Patch))
                },
                |_| {},
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(attempts, 3, "admitted, found the object changed, admitted again, stored");
        assert_eq!(
            (&patched.object["spec"]["owner"], &patched.object["spec"]["running"]),
            (&json!("acct_2"), &json!(false)),
            "no lost update"
        );
    }
}
