//! The schemas of the built-in kinds: k8s-openapi's JSON schemas (what the Kubernetes OpenAPI
//! document says about every field, type and required field), with every `$ref` resolved into
//! one self-contained tree, plus the markers of the Go types that k8s-openapi leaves out and
//! clients depend on: list types and map keys (server-side apply's merge of `containers`, `env`,
//! `ports`...), patch strategies and merge keys (strategic merge patch), atomic maps and
//! structs, and the defaults of list-map key fields.
//!
//! The same annotations a CRD schema carries (`x-kubernetes-list-type` ...), so `fields`
//! and `strategic` read CRD and built-in schemas alike. Built once per kind and shared.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value, json};

/// How a list merges (`x-kubernetes-list-type`; unmarked lists are atomic).
#[derive(Debug, Clone, Copy)]
enum List {
    /// Items are owned one by one (scalars).
    Set,
    /// Items are objects owned one by one, identified by these key fields (and the default of
    /// a key field an item may omit).
    Map(&'static [(&'static str, Option<&'static str>)]),
}

/// What a Go type's markers say about one field (or, with `field` empty, the type itself).
struct Marker {
    type_name: &'static str,
    field: &'static str,
    /// `x-kubernetes-list-type` (and map keys) for lists.
    list: Option<List>,
    /// `x-kubernetes-map-type: atomic` for maps and structs.
    atomic: bool,
    /// `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key`.
    patch: Option<(&'static str, &'static str)>,
}

const fn list(
    type_name: &'static str,
    field: &'static str,
    list: List,
    patch: Option<(&'static str, &'static str)>,
) -> Marker {
    Marker { type_name, field, list: Some(list), atomic: false, patch }
}

const fn atomic(type_name: &'static str, field: &'static str) -> Marker {
    Marker { type_name, field, list: None, atomic: true, patch: None }
}

const fn strategy(type_name: &'static str, field: &'static str, patch: &'static str) -> Marker {
    Marker { type_name, field, list: None, atomic: false, patch: Some((patch, "")) }
}

const NAME: &[(&str, Option<&str>)] = &[("name", None)];
const TYPE: &[(&str, Option<&str>)] = &[("type", None)];
const MERGE_NAME: Option<(&str, &str)> = Some(("merge", "name"));
const MERGE_TYPE: Option<(&str, &str)> = Some(("merge", "type"));

/// The full name of a core/v1 type.
macro_rules! core {
    ($t:literal) => {
        concat!("io.k8s.api.core.v1.", $t)
    };
}

/// The markers of one container type (`Container`, `EphemeralContainer`).
macro_rules! container {
    ($t:literal) => {
        [
            list(core!($t), "env", List::Map(NAME), MERGE_NAME),
            list(core!($t), "ports", List::Map(CONTAINER_PORT), Some(("merge", "containerPort"))),
            list(core!($t), "volumeMounts", List::Map(&[("mountPath", None)]), Some(("merge", "mountPath"))),
            list(core!($t), "volumeDevices", List::Map(&[("devicePath", None)]), Some(("merge", "devicePath"))),
        ]
    };
}

const CONTAINER_PORT: &[(&str, Option<&str>)] = &[("containerPort", None), ("protocol", Some("TCP"))];
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The markers of the types the served kinds use (from their Go definitions: `+listType`,
/// `+listMapKey`, `+mapType`, `+structType`, `patchStrategy`, `patchMergeKey`). A list without
/// a marker is atomic and is replaced by a strategic merge patch, as in Kubernetes.
const MARKERS: &[&[Marker]] = &[
    &[
        list(META, "finalizers", List::Set, Some(("merge", ""))),
        list(META, "ownerReferences", List::Map(&[("uid", None)]), Some(("merge", "uid"))),
        atomic("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", ""),
        // `+structType=atomic`: owned whole (an Event's `involvedObject` / `regarding`, each
        // ownerReference).
        atomic(core!("ObjectReference"), ""),
        atomic("io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference", ""),
        strategy("io.k8s.api.apps.v1.DeploymentSpec", "strategy", "retainKeys"),
        list("io.k8s.api.apps.v1.DeploymentStatus", "conditions", List::Map(TYPE), MERGE_TYPE),
        list(core!("PodSpec"), "containers", List::Map(NAME), MERGE_NAME),
        list(core!("PodSpec"), "initContainers", List::Map(NAME), MERGE_NAME),
        list(core!("PodSpec"), "ephemeralContainers", List::Map(NAME), MERGE_NAME),
        list(core!("PodSpec"), "volumes", List::Map(NAME), Some(("merge,retainKeys", "name"))),
        list(core!("PodSpec"), "imagePullSecrets", List::Map(NAME), MERGE_NAME),
        list(core!("PodSpec"), "hostAliases", List::Map(&[("ip", None)]), Some(("merge", "ip"))),
        list(
            core!("PodSpec"),
            "topologySpreadConstraints",
            List::Map(&[("topologyKey", None), ("whenUnsatisfiable", None)]),
            Some(("merge", "topologyKey")),
        ),
        list(core!("PodSpec"), "resourceClaims", List::Map(NAME), Some(("merge,retainKeys", "name"))),
        list(core!("PodSpec"), "schedulingGates", List::Map(NAME), MERGE_NAME),
        atomic(core!("PodSpec"), "nodeSelector"),
        list(
            core!("ServiceSpec"),
            "ports",
            List::Map(&[("port", None), ("protocol", Some("TCP"))]),
            Some(("merge", "port")),
        ),
        atomic(core!("ServiceSpec"), "selector"),
        list(core!("ServiceStatus"), "conditions", List::Map(TYPE), MERGE_TYPE),
        list(core!("ServiceAccount"), "secrets", List::Map(NAME), MERGE_NAME),
        list(core!("NamespaceStatus"), "conditions", List::Map(TYPE), MERGE_TYPE),
        list("io.k8s.api.policy.v1.PodDisruptionBudgetStatus", "conditions", List::Map(TYPE), MERGE_TYPE),
        strategy("io.k8s.api.policy.v1.PodDisruptionBudgetSpec", "selector", "replace"),
        atomic("io.k8s.api.rbac.v1.RoleRef", ""),
        list(core!("ResourceRequirements"), "claims", List::Map(NAME), None),
    ],
    &container!("Container"),
    &container!("EphemeralContainer"),
];

/// The inlined schema of `T`, markers applied.
fn inline<T: schemars::JsonSchema>() -> Value {
    let mut root = schemars::SchemaGenerator::default().into_root_schema_for::<T>().to_value();
    let defs = root.as_object_mut().and_then(|m| m.remove("$defs")).unwrap_or_else(|| json!({}));
    let mut resolver = Resolver { defs: &defs, stack: Vec::new(), done: HashMap::new() };
    let name = T::schema_name().into_owned();
    resolver.stack.push(name.clone());
    let mut out = resolver.node(&root);
    resolver.stack.pop();
    mark(&name, &mut out);
    strip_root(&mut out);
    out
}

/// `title` and `$schema` of a root schema mean nothing to clients of an OpenAPI document.
fn strip_root(schema: &mut Value) {
    if let Some(m) = schema.as_object_mut() {
        m.remove("$schema");
        m.remove("title");
    }
}

struct Resolver<'a> {
    defs: &'a Value,
    /// The definitions being resolved: a reference back into one of them is a recursive type
    /// (JSONSchemaProps), left open instead of unrolled forever.
    stack: Vec<String>,
    done: HashMap<String, Value>,
}

impl Resolver<'_> {
    fn node(&mut self, schema: &Value) -> Value {
        let Some(obj) = schema.as_object() else { return schema.clone() };
        let mut out = Map::new();
        if let Some(name) = obj.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
            let resolved = self.definition(name);
            if let Value::Object(m) = resolved {
                out = m;
            }
        }
        for (k, v) in obj {
            match k.as_str() {
                "$ref" => {}
                "properties" => {
                    let props: Map<String, Value> =
                        v.as_object().into_iter().flatten().map(|(p, s)| (p.clone(), self.node(s))).collect();
                    out.insert(k.clone(), Value::Object(props));
                }
                "items" | "additionalProperties" => {
                    out.insert(k.clone(), self.node(v));
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let all: Vec<Value> = v.as_array().into_iter().flatten().map(|s| self.node(s)).collect();
                    out.insert(k.clone(), Value::Array(all));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        // `type: object` and nothing declared (FieldsV1, RawExtension): free-form, as the Go
        // types decode it.
        if out.get("type") == Some(&json!("object"))
            && !out.contains_key("properties")
            && !out.contains_key("additionalProperties")
        {
            out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
        }
        Value::Object(out)
    }

    fn definition(&mut self, name: &str) -> Value {
        if let Some(done) = self.done.get(name) {
            return done.clone();
        }
        if self.stack.iter().any(|s| s == name) {
            return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        }
        let Some(def) = self.defs.get(name).cloned() else {
            return json!({"x-kubernetes-preserve-unknown-fields": true});
        };
        self.stack.push(name.to_owned());
        let mut resolved = self.node(&def);
        self.stack.pop();
        // apiextensions' JSON (a CRD's `default`, `example`) holds any JSON value.
        if name == "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON"
            && let Some(m) = resolved.as_object_mut()
        {
            m.remove("type");
        }
        mark(name, &mut resolved);
        self.done.insert(name.to_owned(), resolved.clone());
        resolved
    }
}

/// Applies the markers of type `name` to its resolved schema.
fn mark(name: &str, schema: &mut Value) {
    for marker in MARKERS.iter().flat_map(|m| m.iter()).filter(|m| m.type_name == name) {
        let target = if marker.field.is_empty() {
            Some(&mut *schema)
        } else {
            schema.get_mut("properties").and_then(|p| p.get_mut(marker.field))
        };
        let Some(Value::Object(target)) = target else { continue };
        if marker.atomic {
            target.insert("x-kubernetes-map-type".into(), json!("atomic"));
        }
        if let Some((strategy, key)) = marker.patch {
            target.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if !key.is_empty() {
                target.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
        }
        match marker.list {
            None => {}
            Some(List::Set) => {
                target.insert("x-kubernetes-list-type".into(), json!("set"));
            }
            Some(List::Map(keys)) => {
                target.insert("x-kubernetes-list-type".into(), json!("map"));
                target.insert(
                    "x-kubernetes-list-map-keys".into(),
                    json!(keys.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
                );
                for (key, default) in keys {
                    if let Some(default) = default
                        && let Some(Value::Object(prop)) =
                            target.get_mut("items").and_then(|i| i.get_mut("properties")).and_then(|p| p.get_mut(*key))
                    {
                        prop.insert("default".into(), json!(default));
                    }
                }
            }
        }
    }
}

type Builder = fn() -> Value;

/// The kinds with a built-in schema, by `(group, kind)`.
const KINDS: &[(&str, &str, Builder)] = &[
    ("", "Namespace", inline::<Namespace>),
    ("", "Secret", inline::<Secret>),
    ("", "ConfigMap", inline::<ConfigMap>),
    ("", "Event", inline::<Event>),
    ("", "Service", inline::<Service>),
    ("", "ServiceAccount", inline::<ServiceAccount>),
    ("apps", "Deployment", inline::<Deployment>),
    ("rbac.authorization.k8s.io", "Role", inline::<Role>),
    ("rbac.authorization.k8s.io", "RoleBinding", inline::<RoleBinding>),
    ("rbac.authorization.k8s.io", "ClusterRole", inline::<ClusterRole>),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding", inline::<ClusterRoleBinding>),
    ("policy", "PodDisruptionBudget", inline::<PodDisruptionBudget>),
    ("networking.k8s.io", "NetworkPolicy", inline::<NetworkPolicy>),
    ("coordination.k8s.io", "Lease", inline::<Lease>),
    ("apiextensions.k8s.io", "CustomResourceDefinition", inline::<CustomResourceDefinition>),
];

/// Built schemas by `(group, kind)`.
type Cache = std::sync::Mutex<HashMap<(String, String), Arc<Value>>>;

static SCHEMAS: LazyLock<Cache> = LazyLock::new(|| std::sync::Mutex::new(HashMap::new()));

/// The schema of a built-in kind (built on first use, then shared); None for kinds without one.
pub fn builtin(group: &str, kind: &str) -> Option<Arc<Value>> {
    let (_, _, build) = KINDS.iter().find(|(g, k, _)| *g == group && *k == kind)?;
    let mut cache = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    let key = (group.to_owned(), kind.to_owned());
    Some(cache.entry(key).or_insert_with(|| Arc::new(build())).clone())
}

/// The schema only field ownership reads for a kind served without one (events.k8s.io/v1
/// Events, stored as core Events: their managedFields are the writer's, in its own API).
pub fn merge_only(group: &str, kind: &str) -> Option<Arc<Value>> {
    static EVENTS_V1: LazyLock<Arc<Value>> =
        LazyLock::new(|| Arc::new(inline::<k8s_openapi::api::events::v1::Event>()));
    (group == "events.k8s.io" && kind == "Event").then(|| EVENTS_V1.clone())
}

/// ObjectMeta's schema, markers applied: what every kind's `metadata` is, whatever its own
/// schema says (a CRD's schema leaves metadata open).
pub fn object_meta() -> &'static Value {
    static META: LazyLock<Value> = LazyLock::new(inline::<ObjectMeta>);
    &META
}

/// The schema of `key` in an object schema: a declared property, else `additionalProperties`,
/// else the open schema when the node keeps unknown fields (or is not declared at all).
pub fn child<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(p) = schema.get("properties").and_then(|p| p.get(key)) {
        return Some(p);
    }
    match schema.get("additionalProperties") {
        Some(s @ Value::Object(_)) => Some(s),
        _ if is_open(schema) => Some(open()),
        _ => None,
    }
}

/// Whether a schema node accepts any field (`x-kubernetes-preserve-unknown-fields`, or no
/// declared properties at all).
pub fn is_open(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool).unwrap_or(false)
        || (schema.get("properties").is_none() && schema.get("additionalProperties").is_none())
}

/// The schema of anything: objects are maps of anything, lists atomic.
pub fn open() -> &'static Value {
    static OPEN: LazyLock<Value> = LazyLock::new(|| json!({"x-kubernetes-preserve-unknown-fields": true}));
    &OPEN
}

/// The item schema of a list schema.
pub fn items(schema: &Value) -> &Value {
    schema.get("items").unwrap_or_else(|| open())
}

/// How a schema node merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A scalar, or a map/struct/list replaced whole.
    Atomic,
    /// An object merged field by field (struct or map).
    Object,
    /// A list whose items are owned one by one.
    Set,
    /// A list of objects identified by key fields.
    ListMap(Vec<String>),
}

/// The shape of a value under `schema`.
pub fn shape(schema: &Value, value: &Value) -> Shape {
    let s = |k: &str| schema.get(k).and_then(Value::as_str);
    match value {
        Value::Object(_) if s("x-kubernetes-map-type") == Some("atomic") => Shape::Atomic,
        Value::Object(_) => Shape::Object,
        Value::Array(_) => match s("x-kubernetes-list-type") {
            Some("set") => Shape::Set,
            Some("map") => {
                let keys = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                Shape::ListMap(keys)
            }
            _ => Shape::Atomic,
        },
        _ => Shape::Atomic,
    }
}

/// The key of a list-map item: its key fields (their schema default when absent), as an object
/// with sorted fields; None when a key field is missing without a default.
pub fn item_key(schema: &Value, keys: &[String], item: &Value) -> Option<Map<String, Value>> {
    let item_schema = items(schema);
    let mut key = Map::new();
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    for k in sorted {
        let v =
            item.get(k).filter(|v| !v.is_null()).cloned().or_else(|| {
                item_schema.get("properties").and_then(|p| p.get(k)).and_then(|p| p.get("default")).cloned()
            })?;
        key.insert(k.clone(), v);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_schema_is_inlined_and_marked() {
        let d = builtin("apps", "Deployment").unwrap_or_else(|| panic!("Deployment"));
        let pod = &d["properties"]["spec"]["properties"]["template"]["properties"]["spec"];
        let containers = &pod["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let ports = &containers["items"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-list-map-keys"], json!(["containerPort", "protocol"]));
        assert_eq!(ports["items"]["properties"]["protocol"]["default"], "TCP");
        assert_eq!(d["properties"]["spec"]["properties"]["selector"]["x-kubernetes-map-type"], "atomic");
        assert_eq!(d["properties"]["spec"]["required"], json!(["selector", "template"]));
        assert!(!d.to_string().contains("$ref"), "every reference resolved");
    }

    #[test]
    fn recursive_types_are_left_open() {
        let crd = builtin("apiextensions.k8s.io", "CustomResourceDefinition").unwrap_or_else(|| panic!("CRD"));
        // JSONSchemaProps has a property named `$ref`; no reference into `$defs` is left.
        assert!(!crd.to_string().contains("#/$defs/"));
    }
}
