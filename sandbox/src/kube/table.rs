//! `meta.k8s.io/v1` Table and PartialObjectMetadata renderings of objects, for `kubectl get`
//! (printer columns) and kube-rs metadata watchers. Pure functions.

use serde_json::{Value, json};

use super::jsonpath;
use super::meta::human_age;
use super::resource::ResourceType;

/// How `rows[].object` is filled (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// null.
    None,
    /// PartialObjectMetadata (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// From the query parameter.
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// What an `Accept` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    /// Plain objects.
    Full,
    /// A Table.
    Table,
    /// PartialObjectMetadata(List).
    Metadata,
}

impl Rendering {
    /// From the Accept header: the first supported `as=` wins.
    pub fn from_accept(accept: &str) -> Self {
        for part in accept.split(',') {
            let part = part.replace(' ', "");
            if part.contains("as=Table") && part.contains("g=meta.k8s.io") {
                return Self::Table;
            }
            if part.contains("as=PartialObjectMetadata") {
                return Self::Metadata;
            }
            if part.starts_with("application/json") || part.starts_with("*/*") {
                return Self::Full;
            }
        }
        Self::Full
    }
}

/// `{"kind":"PartialObjectMetadata",...}` of an object.
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// The column definitions of `rt`: Name, then its printer columns.
pub fn column_definitions(rt: &ResourceType) -> Vec<Value> {
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    cols.extend(rt.columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    cols
}

fn cell(object: &Value, type_: &str, path: &str) -> Value {
    let found = jsonpath::select(object, path);
    if found.is_empty() {
        return Value::Null;
    }
    match type_ {
        "date" => found.first().and_then(|v| v.as_str()).and_then(human_age).map(Value::String).unwrap_or(Value::Null),
        "integer" | "number" | "boolean" if found.len() == 1 => found[0].clone(),
        _ => Value::String(
            found
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// One row.
pub fn row(rt: &ResourceType, object: &Value, include: IncludeObject) -> Value {
    let mut cells = vec![object.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
    cells.extend(rt.columns.iter().map(|c| cell(object, &c.type_, &c.json_path)));
    let obj = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => partial_metadata(object),
        IncludeObject::Object => object.clone(),
    };
    json!({"cells": cells, "object": obj})
}

/// A Table of `objects`; `columns` false leaves out the definitions (watch events after the first).
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: Value, include: IncludeObject, columns: bool) -> Value {
    let defs = if columns { column_definitions(rt) } else { Vec::new() };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": objects.iter().map(|o| row(rt, o, include)).collect::<Vec<_>>(),
    })
}
