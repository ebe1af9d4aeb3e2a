//! OpenAPI v3 documents (`/openapi/v3` and one per group-version), just enough for `kubectl
//! apply` to leave validation to the server (each kind's PATCH lists `fieldValidation`) and for
//! `kubectl explain` to find each kind's schema. Built-in kinds get an open schema. Pure functions.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::resource::ResourceType;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `/openapi/v3`: the index, each entry's hash changes with its document so kubectl's URL cache
/// never serves a stale schema.
pub fn index(types: &[Arc<ResourceType>]) -> Value {
    let mut paths = Map::new();
    let all = [true, false].into_iter().flat_map(|core| super::discovery::group_versions(types, core));
    for (g, v) in all.flat_map(|(g, versions)| versions.into_iter().map(move |v| (g.clone(), v))) {
        let doc = group_version(types, &g, &v).unwrap_or(Value::Null);
        let hash = hex::encode(Sha256::digest(doc.to_string().as_bytes()));
        let p = gv_path(&g, &v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", &hash[..32])}));
    }
    json!({"paths": paths})
}

fn schema_name(t: &ResourceType) -> String {
    let group = if t.group.is_empty() {
        "io.k8s.api.core".to_owned()
    } else {
        t.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{group}.{}.{}", t.version, t.kind)
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn object_meta_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "properties": {
            "name": s("Name must be unique within a namespace."),
            "generateName": s("Prefix of a server-generated name."),
            "namespace": s("Namespace defines the space within which each name must be unique."),
            "uid": s("UID is the unique in time and space value for this object."),
            "resourceVersion": s("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "Creation time."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "Deletion time."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Map of string keys and values for selecting objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Unstructured key value map."},
            "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Objects depended on by this object."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Field ownership."},
        },
    })
}

fn kind_schema(t: &ResourceType) -> Value {
    let mut schema = t.schema.as_deref().cloned().unwrap_or_else(|| {
        json!({
            "type": "object",
            "description": format!("{} ({}).", t.kind, t.api_version()),
            "x-kubernetes-preserve-unknown-fields": true,
        })
    });
    if let Some(m) = schema.as_object_mut() {
        let props = m.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            p.insert(
                "metadata".into(),
                json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "description": "Standard object's metadata."}),
            );
        }
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": t.group, "version": t.version, "kind": t.kind}]),
        );
    }
    schema
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "required": location == "path", "schema": {"type": "string", "uniqueItems": true}})
}

/// The document of one group-version; None when nothing is served there.
pub fn group_version(types: &[Arc<ResourceType>], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Arc<ResourceType>> = types.iter().filter(|t| t.group == group && t.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(OBJECT_META.into(), object_meta_schema());
    for t in served {
        let name = schema_name(t);
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let mut path_params = vec![param("name", "path")];
        let base = format!("/{}", gv_path(group, version));
        let path = if t.namespaced {
            path_params.push(param("namespace", "path"));
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        let mut patch_params =
            vec![param("dryRun", "query"), param("fieldManager", "query"), param("fieldValidation", "query")];
        patch_params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
        paths.insert(
            path,
            json!({
                "get": {"operationId": format!("read{}", t.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": ok},
                "put": {"operationId": format!("replace{}", t.kind), "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk,
                        "parameters": [param("dryRun", "query"), param("fieldManager", "query"), param("fieldValidation", "query")], "responses": ok},
                "patch": {"operationId": format!("patch{}", t.kind), "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
                          "parameters": patch_params,
                          "requestBody": {"content": {
                              "application/json-patch+json": {"schema": {"type": "object"}},
                              "application/merge-patch+json": {"schema": {"type": "object"}},
                              "application/apply-patch+yaml": {"schema": {"type": "object"}},
                          }},
                          "responses": ok},
                "parameters": path_params,
            }),
        );
        schemas.insert(name, kind_schema(t));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
