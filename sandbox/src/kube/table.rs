//! `meta.k8s.io/v1` Table and PartialObjectMetadata renderings of objects, for `kubectl get`
//! (printer columns) and kube-rs metadata watchers. Pure functions.

use serde_json::{Value, json};

use super::jsonpath;
use super::meta::human_age;
use super::resource::{Cell, NAME_DESCRIPTION, PrinterColumn, ResourceType};

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

/// Whether the Name column comes first (every printer but the Event printer, which lists the
/// name last among its wide columns).
fn name_first(rt: &ResourceType) -> bool {
    !rt.columns.iter().any(|c| c.cell == Cell::Name)
}

/// The column definitions of `rt`: Name, then its printer columns.
pub fn column_definitions(rt: &ResourceType) -> Vec<Value> {
    let mut cols = Vec::new();
    if name_first(rt) {
        cols.push(json!({
            "name": "Name", "type": "string", "format": "name", "priority": 0, "description": NAME_DESCRIPTION,
        }));
    }
    cols.extend(rt.columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    cols
}

/// `translateTimestampSince` of a time (`<unknown>` when unset).
fn since(time: Option<&Value>) -> Value {
    Value::String(time.and_then(Value::as_str).and_then(human_age).unwrap_or_else(|| "<unknown>".into()))
}

/// A cell of kube-apiserver's Event printer (`printEvent`), from the core/v1 form.
fn event_cell(event: &Value, cell: Cell) -> Value {
    let s = |p: &str| event.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let first_seen = match event.get("firstTimestamp").filter(|t| t.is_string()) {
        Some(t) => since(Some(t)),
        None => since(event.get("eventTime")),
    };
    let series = event.get("series").filter(|v| v.is_object());
    match cell {
        Cell::EventFirstSeen => first_seen,
        Cell::EventLastSeen => match (series, event.get("lastTimestamp").filter(|t| t.is_string())) {
            (Some(series), _) => since(series.get("lastObservedTime")),
            (None, Some(t)) => since(Some(t)),
            (None, None) => first_seen,
        },
        Cell::EventCount => {
            let count = match series {
                Some(series) => series.get("count").and_then(Value::as_i64).unwrap_or(0),
                None => event.get("count").and_then(Value::as_i64).filter(|c| *c != 0).unwrap_or(1),
            };
            json!(count)
        }
        Cell::EventObject => {
            let kind = s("/involvedObject/kind").to_lowercase();
            match s("/involvedObject/name") {
                "" => json!(kind),
                name => json!(format!("{kind}/{name}")),
            }
        }
        Cell::EventSubobject => json!(s("/involvedObject/fieldPath")),
        Cell::EventSource => {
            let first = |a: &'static str, b: &'static str| if s(a).is_empty() { s(b) } else { s(a) };
            let component = first("/source/component", "/reportingComponent");
            match first("/source/host", "/reportingInstance") {
                "" => json!(component),
                instance => json!(format!("{component}, {instance}")),
            }
        }
        Cell::EventMessage => json!(s("/message").trim()),
        _ => Value::Null,
    }
}

fn cell(object: &Value, column: &PrinterColumn) -> Value {
    match column.cell {
        Cell::JsonPath => {}
        Cell::Text => {
            let found = jsonpath::select(object, &column.json_path);
            return json!(found.first().and_then(|v| v.as_str()).unwrap_or_default());
        }
        Cell::Name => return object.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        Cell::Age => return since(object.pointer("/metadata/creationTimestamp")),
        Cell::DataCount => {
            let entries = |k: &str| object.get(k).and_then(Value::as_object).map_or(0, serde_json::Map::len);
            return json!(entries("data") + entries("binaryData"));
        }
        event => {
            // events.k8s.io/v1 objects are printed from their core form, as the server does.
            let core = if object.get("regarding").is_some() || object.get("note").is_some() {
                super::events::to_core(object)
            } else {
                object.clone()
            };
            return event_cell(&core, event);
        }
    }
    let (type_, path) = (column.type_.as_str(), column.json_path.as_str());
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
    let mut cells = Vec::new();
    if name_first(rt) {
        cells.push(object.pointer("/metadata/name").cloned().unwrap_or(Value::Null));
    }
    cells.extend(rt.columns.iter().map(|c| cell(object, c)));
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
