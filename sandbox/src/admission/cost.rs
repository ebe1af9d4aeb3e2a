//! Static cost estimation of `x-kubernetes-validations` rules when a CRD is installed: the
//! worst-case cost kube-apiserver computes for every rule, and the refusal of a CRD whose rule (or
//! whose rules of one schema, summed) exceed the budget, with the API server's field errors.
//!
//! # What it follows
//!
//! kube-apiserver 1.37 (`k8s.io/apiextensions-apiserver` v0.37.2, `k8s.io/apiserver` v0.37.2,
//! cel-go v0.29.2):
//!
//! - the schema → CEL declaration conversion (`SchemaDeclType`): every node's worst-case size
//!   (`maxLength × 4`, `maxItems`, `maxProperties`, the longest `enum` value, or, when unbounded,
//!   what fits in a 3 MiB request) and its minimum serialised size; at a resource root (and under
//!   `x-kubernetes-embedded-resource`) `metadata.name` capped at 253 characters;
//! - cel-go's `checker.Cost` walk over the macro-expanded AST: 1 per identifier and per field
//!   selection on an object or map, 0 for `has()`, comprehensions charged `range size × (step +
//!   condition)`, `&&`/`||` the sum of both sides, comparisons of strings by the shorter operand,
//!   `matches` by `(length + 1) × 0.1 × regex length × 0.25`, size tracking through field paths
//!   (`self.a.@items`) including its quirks (an element of a computed list such as
//!   `self.split('-')` is sized as the rule's own node);
//! - the Kubernetes library's estimates (`library.CostEstimator`: `split`, `isCIDR`, `find`,
//!   `lowerAscii`, `indexOf`, `url`, `quantity`, …) and ext `sets.*`;
//! - the CRD validation (`validation.go`): each rule's cost times its cardinality (the product of
//!   `maxItems`/`maxProperties` of the enclosing lists and maps, or, under an unbounded one, how
//!   many copies of the node fit in a request), refused above 10,000,000 per rule
//!   (`StaticEstimatedCostLimit`) or 100,000,000 for one schema (`StaticEstimatedCRDCostLimit`),
//!   with the same field paths and messages.
//!
//! # Where it may differ
//!
//! - There is no CEL type checker here: types come from the schema and a table of the functions
//!   it knows. A function or macro outside that table (ext `lists`, `math`, two-variable
//!   comprehensions, `cel.bind`, optional syntax, …), a field the schema does not declare, or an
//!   ambiguous overload the table does not list makes the CRD refused with
//!   [`CrdSchemaError::CostUnknown`](super::schema_error::CrdSchemaError::CostUnknown) (fail closed) rather than
//!   admitted with a wrong estimate.
//! - On an update whose schema is unchanged the API server skips the per-rule check; the stand-in
//!   checks every time (it does not see the old CRD).
//! - The API server visits properties in Go map order, so the order of several errors varies
//!   there; here they come sorted by property name (children before the node's own rules).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_cel::cel::IdedExpr;
use kube_cel::cel::common::ast::{ComprehensionExpr, EntryExpr, Expr, LiteralValue};
use kube_cel::cel::parser::Parser;
use serde_json::Value;

use super::cause::{Cause, CauseReason};
use super::schema_error::CrdSchemaError;

/// `celconfig.MaxRequestSizeBytes`: the largest request the API server accepts.
const MAX_REQUEST_SIZE_BYTES: i64 = 3 * 1024 * 1024;
/// `StaticEstimatedCostLimit`: the largest estimated cost of one rule (times its cardinality).
pub const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: the largest sum of the estimated costs of one schema's rules.
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// cel-go `common.StringTraversalCostFactor`.
const STRING_TRAVERSAL: f64 = 0.1;
/// cel-go `common.RegexStringLengthCostFactor`.
const REGEX_LENGTH: f64 = 0.25;
/// cel-go `common.ListCreateBaseCost`, `MapCreateBaseCost` and `StructCreateBaseCost`.
const LIST_CREATE: u64 = 10;
const MAP_CREATE: u64 = 30;
const STRUCT_CREATE: u64 = 40;
/// `metadata.name` is at most a DNS subdomain (253); `generateName` one less for the suffix.
const NAME_MAX_LENGTH: i64 = 253;
/// The k8s format library's worst-case regex size (`MaxNameFormatRegexSize`) and format size.
const MAX_NAME_FORMAT_REGEX_SIZE: f64 = 128.0;
const MAX_FORMAT_SIZE: u64 = 64;
/// The cel-go accumulator of macro comprehensions, whose paths are not passed to size estimators.
const ACCUMULATOR: &str = "@result";

// ---------------------------------------------------------------------------------------------
// Size and cost ranges

/// A `[min, max]` range of sizes or costs with the saturating arithmetic of cel-go's
/// `SizeEstimate`/`CostEstimate` (both behave the same, so one type serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    min: u64,
    max: u64,
}

impl Range {
    const UNKNOWN: Range = Range { min: 0, max: u64::MAX };
    const ZERO: Range = Range { min: 0, max: 0 };

    fn fixed(v: u64) -> Self {
        Range { min: v, max: v }
    }

    fn add(self, o: Range) -> Range {
        Range { min: self.min.saturating_add(o.min), max: self.max.saturating_add(o.max) }
    }

    fn mul(self, o: Range) -> Range {
        Range { min: self.min.saturating_mul(o.min), max: self.max.saturating_mul(o.max) }
    }

    fn factor(self, f: f64) -> Range {
        Range { min: mul_factor(self.min, f), max: mul_factor(self.max, f) }
    }

    fn union(self, o: Range) -> Range {
        Range { min: self.min.min(o.min), max: self.max.max(o.max) }
    }
}

/// `x × f` rounded up, saturating at `u64::MAX` (cel-go `multiplyByCostFactor`). The float
/// arithmetic is the point: the estimates must round exactly as Go's do.
fn mul_factor(x: u64, f: f64) -> u64 {
    let xf = x as f64;
    if xf > 0.0 && f > 0.0 && xf > u64::MAX as f64 / f {
        return u64::MAX;
    }
    let ceil = (xf * f).ceil();
    if ceil >= 18_446_744_073_709_551_616.0 { u64::MAX } else { ceil as u64 }
}

/// `multiplyWithOverflowGuard` of the CRD validation: 0 stays 0, overflow saturates.
fn mul_guard(base: u64, cardinality: u64) -> u64 {
    base.saturating_mul(cardinality)
}

/// A non-negative size from a possibly negative or absurd JSON number (`zeroIfNegative`).
fn non_negative(v: i64) -> u64 {
    v.max(0) as u64
}

// ---------------------------------------------------------------------------------------------
// Schema → CEL declarations

/// What CEL sees of a schema node (`apiservercel.DeclType`): its kind, its worst-case size
/// (`MaxElements`: characters, bytes, items or properties) and its smallest JSON encoding.
#[derive(Debug, Clone, PartialEq)]
struct Decl {
    kind: DeclKind,
    max_elements: u64,
    min_size: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum DeclKind {
    Bool,
    Int,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    /// `x-kubernetes-int-or-string`.
    Dyn,
    List(Box<Decl>),
    /// `additionalProperties`: string keys.
    Map(Box<Decl>),
    /// `properties`, by CEL-escaped name.
    Object(BTreeMap<String, Decl>),
}

/// The key type of every schema map (`apiservercel.StringType`, whose `MaxElements` is 0).
static MAP_KEY: Decl = Decl { kind: DeclKind::String, max_elements: 0, min_size: 2 };

fn simple(kind: DeclKind, min_size: i64) -> Decl {
    Decl { kind, max_elements: 0, min_size }
}

fn int_field(schema: &Value, key: &str) -> Option<i64> {
    schema.get(key).and_then(Value::as_i64)
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// What fits of an unbounded string in one request, less its quotes.
fn max_string_per_request(schema: &Value) -> u64 {
    match schema.get("format").and_then(Value::as_str) {
        Some("duration" | "date-time") => 32,
        Some("date") => 12,
        _ => non_negative(MAX_REQUEST_SIZE_BYTES - 2),
    }
}

/// `SchemaDeclType`: `None` for nodes CEL cannot see (untyped, or containing such nodes).
fn decl_type(schema: &Value, resource_root: bool) -> Option<Decl> {
    if flag(schema, "x-kubernetes-int-or-string") {
        // maxLength counts characters, the estimate bytes: up to 4 per character.
        let max = int_field(schema, "maxLength")
            .map_or(non_negative(MAX_REQUEST_SIZE_BYTES - 2), |l| non_negative(l).saturating_mul(4));
        return Some(Decl { kind: DeclKind::Dyn, max_elements: max, min_size: 1 });
    }
    let rooted;
    let schema = if resource_root {
        rooted = with_type_and_object_meta(schema);
        &rooted
    } else {
        schema
    };
    match schema.get("type").and_then(Value::as_str)? {
        "array" => {
            let items = schema.get("items").filter(|i| i.is_object())?;
            let item = decl_type(items, flag(items, "x-kubernetes-embedded-resource"))?;
            let max = int_field(schema, "maxItems").map_or_else(
                || non_negative((MAX_REQUEST_SIZE_BYTES - 2) / item.min_size.saturating_add(1)),
                non_negative,
            );
            Some(Decl { kind: DeclKind::List(Box::new(item)), max_elements: max, min_size: 2 })
        }
        "object" => {
            if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let value = decl_type(values, flag(values, "x-kubernetes-embedded-resource"))?;
                // Each entry costs at least its value, two quotes, a colon and a comma.
                let max = int_field(schema, "maxProperties").map_or_else(
                    || non_negative((MAX_REQUEST_SIZE_BYTES - 2) / value.min_size.saturating_add(6)),
                    non_negative,
                );
                return Some(Decl { kind: DeclKind::Map(Box::new(value)), max_elements: max, min_size: 2 });
            }
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut fields = BTreeMap::new();
            let mut min_size: i64 = 2;
            for (name, prop) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
                let Some(field) = decl_type(prop, flag(prop, "x-kubernetes-embedded-resource")) else { continue };
                // Only required fields without a default must appear in the smallest encoding.
                if required.contains(&name.as_str()) && prop.get("default").is_none_or(Value::is_null) {
                    let name_len = i64::try_from(name.len()).unwrap_or(i64::MAX);
                    // "name": plus a comma: the name, its quotes, the colon and the separator.
                    min_size = min_size.saturating_add(name_len).saturating_add(field.min_size).saturating_add(4);
                }
                if let Some(escaped) = escape(name) {
                    fields.insert(escaped, field);
                }
            }
            Some(Decl { kind: DeclKind::Object(fields), max_elements: 0, min_size })
        }
        "string" => Some(match schema.get("format").and_then(Value::as_str) {
            Some("byte") => Decl {
                kind: DeclKind::Bytes,
                max_elements: int_field(schema, "maxLength")
                    .map_or_else(|| max_string_per_request(schema), non_negative),
                min_size: 2,
            },
            Some("duration") => {
                Decl { kind: DeclKind::Duration, max_elements: max_string_per_request(schema), min_size: 3 }
            }
            Some("date") => {
                Decl { kind: DeclKind::Timestamp, max_elements: max_string_per_request(schema), min_size: 12 }
            }
            Some("date-time") => {
                Decl { kind: DeclKind::Timestamp, max_elements: max_string_per_request(schema), min_size: 21 }
            }
            _ => {
                let enum_max =
                    schema.get("enum").and_then(Value::as_array).filter(|e| !e.is_empty()).map(|values| {
                        values.iter().filter_map(Value::as_str).map(|s| s.len() as u64).max().unwrap_or(0)
                    });
                let max = match (int_field(schema, "maxLength"), enum_max) {
                    (Some(l), _) => non_negative(l).saturating_mul(4),
                    (None, Some(e)) => e,
                    (None, None) => max_string_per_request(schema),
                };
                Decl { kind: DeclKind::String, max_elements: max, min_size: 2 }
            }
        }),
        "boolean" => Some(simple(DeclKind::Bool, 4)),
        "number" => Some(simple(DeclKind::Double, 1)),
        "integer" => Some(simple(DeclKind::Int, 1)),
        _ => None,
    }
}

/// `WithTypeAndObjectMeta` at a resource root: `kind`, `apiVersion` and `metadata.name`/
/// `generateName` are always visible, the names capped at their API maximum.
fn with_type_and_object_meta(schema: &Value) -> Value {
    let props = schema.get("properties");
    let typed = |v: Option<&Value>, t: &str| v.and_then(|v| v.get("type")).and_then(Value::as_str) == Some(t);
    let meta = props.and_then(|p| p.get("metadata"));
    let meta_props = meta.and_then(|m| m.get("properties")).filter(|p| p.is_object());
    if props.is_some_and(Value::is_object)
        && typed(props.and_then(|p| p.get("kind")), "string")
        && typed(props.and_then(|p| p.get("apiVersion")), "string")
        && typed(meta, "object")
        && meta_props.is_some()
        && typed(meta_props.and_then(|p| p.get("name")), "string")
        && typed(meta_props.and_then(|p| p.get("generateName")), "string")
    {
        return schema.clone();
    }
    let capped = |field: &str, cap: i64| {
        let declared = meta_props.and_then(|p| p.get(field)).and_then(|f| int_field(f, "maxLength"));
        serde_json::json!({"type": "string", "maxLength": declared.map_or(cap, |d| d.min(cap))})
    };
    let mut out = schema.clone();
    if let Some(obj) = out.as_object_mut() {
        let mut new_props = props.and_then(Value::as_object).cloned().unwrap_or_default();
        new_props.insert("kind".into(), serde_json::json!({"type": "string"}));
        new_props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
        new_props.insert(
            "metadata".into(),
            serde_json::json!({"type": "object", "properties": {
                "name": capped("name", NAME_MAX_LENGTH),
                "generateName": capped("generateName", NAME_MAX_LENGTH - 1),
            }}),
        );
        obj.insert("properties".into(), Value::Object(new_props));
    }
    out
}

/// The CEL identifier of a property name (`apiservercel.Escape`), `None` when it has none.
fn escape(name: &str) -> Option<String> {
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // CEL's reserved words get underscores around them.
    const RESERVED: &str = concat!(
        "true false null in as break const continue else for function if import let loop package namespace ",
        "return var void while"
    );
    if RESERVED.split(' ').any(|w| w == name) {
        return Some(format!("__{name}__"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')) {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("__") {
            out.push_str("__underscores__");
            rest = &rest[2..];
            continue;
        }
        match c {
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Types: what the CEL checker would infer, as far as cost depends on it

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opaque {
    Ip,
    Cidr,
    Url,
    Quantity,
    Semver,
    Format,
}

#[derive(Debug, Clone, PartialEq)]
enum Ty<'a> {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    Duration,
    Timestamp,
    TypeValue,
    List(Box<Ty<'a>>),
    Map(Box<Ty<'a>>, Box<Ty<'a>>),
    Object(&'a BTreeMap<String, Decl>),
    Optional(Box<Ty<'a>>),
    Opaque(Opaque),
    Dyn,
}

impl<'a> Ty<'a> {
    fn of(decl: &'a Decl) -> Ty<'a> {
        match &decl.kind {
            DeclKind::Bool => Ty::Bool,
            DeclKind::Int => Ty::Int,
            DeclKind::Double => Ty::Double,
            DeclKind::String => Ty::String,
            DeclKind::Bytes => Ty::Bytes,
            DeclKind::Duration => Ty::Duration,
            DeclKind::Timestamp => Ty::Timestamp,
            DeclKind::Dyn => Ty::Dyn,
            DeclKind::List(item) => Ty::List(Box::new(Ty::of(item))),
            DeclKind::Map(value) => Ty::Map(Box::new(Ty::String), Box::new(Ty::of(value))),
            DeclKind::Object(fields) => Ty::Object(fields),
        }
    }

    /// cel-go `isScalar`: types whose size is 1 when nothing better is known.
    fn is_scalar(&self) -> bool {
        match self {
            Ty::Bool | Ty::Double | Ty::Duration | Ty::Int | Ty::Timestamp | Ty::Uint => true,
            Ty::Optional(inner) => inner.is_scalar(),
            _ => false,
        }
    }

    /// Strings, bytes and lists: the operands whose operators cost by size.
    fn is_sequence(&self) -> bool {
        matches!(self, Ty::String | Ty::Bytes | Ty::List(_))
    }

    fn is_dyn(&self) -> bool {
        *self == Ty::Dyn
    }

    /// Whether a value of this type may be `t` (dyn may be anything).
    fn may_be(&self, t: &Ty<'_>) -> bool {
        self.is_dyn() || std::mem::discriminant(self) == std::mem::discriminant(t)
    }

    fn element(&self) -> Ty<'a> {
        match self {
            Ty::List(item) => (**item).clone(),
            Ty::Map(key, _) => (**key).clone(),
            _ => Ty::Dyn,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cost walk (cel-go `checker.Cost` with the Kubernetes estimator)

/// The overloads whose cost differs from the O(1) default; `Plain` covers the rest (costed by
/// function name in the Kubernetes library, else 1 plus the arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ov {
    Plain,
    LogicalAnd,
    LogicalOr,
    Conditional,
    Equals,
    NotEquals,
    CompareString,
    CompareBytes,
    AddString,
    AddBytes,
    AddList,
    InList,
    IndexList,
    IndexMap,
    Matches,
    MatchesString,
    ContainsString,
    StartsWith,
    EndsWith,
    StringToBytes,
    BytesToString,
    QuoteString,
    FormatString,
    Sets(f64),
    CidrIp,
    ContainsIpString,
    ContainsCidrString,
}

/// What an estimator learns of an argument or target (cel-go `AstNode`).
struct Node<'a> {
    /// The field path from a variable (`self`, `@items`, …); empty when there is none.
    path: Vec<String>,
    ty: Ty<'a>,
    /// The size derived from the expression (literal, computed result, or path lookup).
    size: Option<Range>,
    /// An integer literal, for `split`'s limit.
    int_literal: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Container {
    List,
    Map,
}

/// Sizes of the entries of a list or map built in the expression.
#[derive(Debug, Clone, Copy)]
struct EntrySize {
    container: Container,
    key: Range,
    value: Range,
}

fn union_entries(a: Option<EntrySize>, b: Option<EntrySize>) -> Option<EntrySize> {
    let (a, b) = (a?, b?);
    Some(EntrySize { container: a.container, key: a.key.union(b.key), value: a.value.union(b.value) })
}

struct Local<'a> {
    path: Vec<String>,
    size: Option<Range>,
    entry: Option<EntrySize>,
    ty: Ty<'a>,
}

struct CallEstimate {
    cost: Range,
    result_size: Option<Range>,
}

struct Coster<'a> {
    root: &'a Decl,
    self_ty: Ty<'a>,
    old_self_ty: Ty<'a>,
    paths: HashMap<u64, Vec<String>>,
    sizes: HashMap<u64, Range>,
    entries: HashMap<u64, EntrySize>,
    types: HashMap<u64, Ty<'a>>,
    locals: HashMap<String, Vec<Local<'a>>>,
}

type Walk<T> = Result<T, String>;

/// Namespaces of qualified function names (`sets.contains`, `format.dns1123Label`, …), which the
/// parser reads as member calls on an identifier.
const NAMESPACES: [&str; 8] = ["sets", "strings", "math", "ip", "format", "optional", "cel", "base64"];

impl<'a> Coster<'a> {
    fn new(root: &'a Decl, optional_old_self: bool) -> Self {
        let self_ty = Ty::of(root);
        let old_self_ty = if optional_old_self { Ty::Optional(Box::new(self_ty.clone())) } else { self_ty.clone() };
        Coster {
            root,
            self_ty,
            old_self_ty,
            paths: HashMap::new(),
            sizes: HashMap::new(),
            entries: HashMap::new(),
            types: HashMap::new(),
            locals: HashMap::new(),
        }
    }

    fn ty(&self, e: &IdedExpr) -> Ty<'a> {
        self.types.get(&e.id).cloned().unwrap_or(Ty::Dyn)
    }

    fn local(&self, name: &str) -> Option<&Local<'a>> {
        self.locals.get(name).and_then(|stack| stack.last())
    }

    fn push_local(&mut self, name: &str, local: Local<'a>) {
        self.locals.entry(name.to_owned()).or_default().push(local);
    }

    fn pop_local(&mut self, name: &str) {
        if let Some(stack) = self.locals.get_mut(name) {
            stack.pop();
        }
    }

    fn path(&self, e: &IdedExpr) -> Vec<String> {
        if let Expr::Ident(name) = &e.expr
            && let Some(local) = self.local(name)
        {
            return local.path.clone();
        }
        self.paths.get(&e.id).cloned().unwrap_or_default()
    }

    /// The Kubernetes `sizeEstimator`: walks the path (after its variable) through the rule's
    /// node; `None` when the path is empty or leaves the schema.
    fn estimate_size(&self, path: &[String]) -> Option<Range> {
        let (_, rest) = path.split_first()?;
        let mut node = self.root;
        for name in rest {
            node = match (name.as_str(), &node.kind) {
                ("@items" | "@values", DeclKind::List(inner) | DeclKind::Map(inner)) => inner,
                ("@keys", DeclKind::Map(_)) => &MAP_KEY,
                (field, DeclKind::Object(fields)) if !field.starts_with('@') => fields.get(field)?,
                _ => return None,
            };
        }
        Some(Range { min: 0, max: node.max_elements })
    }

    /// cel-go `computeSize`.
    fn compute_size(&mut self, e: &IdedExpr) -> Option<Range> {
        if let Some(size) = self.sizes.get(&e.id) {
            return Some(*size);
        }
        if let Some(size) = literal_size(e) {
            return Some(size);
        }
        if let Some(size) = self.estimate_size(&self.path(e)) {
            self.sizes.insert(e.id, size);
            return Some(size);
        }
        if self.ty(e).is_scalar() {
            return Some(Range::fixed(1));
        }
        if let Expr::Ident(name) = &e.expr {
            return self.local(name).and_then(|l| l.size);
        }
        None
    }

    fn size_or_unknown(&mut self, e: &IdedExpr) -> Range {
        self.compute_size(e).unwrap_or(Range::UNKNOWN)
    }

    fn compute_entry(&self, e: &IdedExpr) -> Option<EntrySize> {
        if let Some(entry) = self.entries.get(&e.id) {
            return Some(*entry);
        }
        if let Expr::Ident(name) = &e.expr {
            return self.local(name).and_then(|l| l.entry);
        }
        None
    }

    fn node(&mut self, e: &IdedExpr) -> Node<'a> {
        let mut path = self.path(e);
        if path.first().is_some_and(|p| p == ACCUMULATOR) {
            path.clear();
        }
        let int_literal = match &e.expr {
            Expr::Literal(LiteralValue::Int(i)) => Some(**i),
            _ => None,
        };
        Node { path, ty: self.ty(e), size: self.compute_size(e), int_literal }
    }

    /// The Kubernetes estimator's `sizeEstimate`: computed size, else a path lookup, else unknown.
    fn lib_size(&self, node: &Node<'_>) -> Range {
        node.size.or_else(|| self.estimate_size(&node.path)).unwrap_or(Range::UNKNOWN)
    }

    fn cost(&mut self, e: &IdedExpr) -> Walk<Range> {
        match &e.expr {
            Expr::Literal(lit) => {
                self.types.insert(e.id, literal_type(lit));
                Ok(Range::ZERO)
            }
            Expr::Ident(name) => self.cost_ident(e, name),
            Expr::Select(sel) => {
                if sel.test {
                    // has(): the presence test itself is free (PresenceTestHasCost(false)).
                    let cost = self.cost(&sel.operand)?;
                    self.types.insert(e.id, Ty::Bool);
                    return Ok(cost);
                }
                let mut cost = self.cost(&sel.operand)?;
                let operand = self.ty(&sel.operand);
                let ty = match &operand {
                    Ty::Object(fields) => {
                        cost = cost.add(Range::fixed(1));
                        Ty::of(fields.get(&sel.field).ok_or_else(|| format!("undefined field '{}'", sel.field))?)
                    }
                    Ty::Map(_, value) => {
                        cost = cost.add(Range::fixed(1));
                        (**value).clone()
                    }
                    Ty::Dyn => Ty::Dyn,
                    other => return Err(format!("cannot select field '{}' from a value of type {other:?}", sel.field)),
                };
                let mut path = self.path(&sel.operand);
                path.push(sel.field.clone());
                self.paths.insert(e.id, path);
                self.types.insert(e.id, ty);
                Ok(cost)
            }
            Expr::Call(call) => {
                // A qualified function name (`sets.contains`) arrives as a call on an identifier
                // that is no variable.
                if let Some(target) = &call.target
                    && let Expr::Ident(ns) = &target.expr
                    && NAMESPACES.contains(&ns.as_str())
                    && self.local(ns).is_none()
                {
                    let name = format!("{ns}.{}", call.func_name);
                    if name == "cel.bind" {
                        // Its first argument is a new variable, not an expression to cost.
                        return Err("function 'cel.bind' is not covered by the cost estimator".into());
                    }
                    return self.cost_call(e, &name, None, &call.args);
                }
                self.cost_call(e, &call.func_name, call.target.as_deref(), &call.args)
            }
            Expr::List(list) => {
                if !list.optional_indices.is_empty() {
                    return Err("optional list elements are not supported".into());
                }
                let mut sum = Range::ZERO;
                let mut item = if list.elements.is_empty() { Range::ZERO } else { Range { min: u64::MAX, max: 0 } };
                let mut item_ty = Ty::Dyn;
                for (i, element) in list.elements.iter().enumerate() {
                    sum = sum.add(self.cost(element)?);
                    item = item.union(self.size_or_unknown(element));
                    if i == 0 {
                        item_ty = self.ty(element);
                    }
                }
                self.entries.insert(e.id, EntrySize { container: Container::List, key: Range::fixed(1), value: item });
                self.types.insert(e.id, Ty::List(Box::new(item_ty)));
                Ok(sum.add(Range::fixed(LIST_CREATE)))
            }
            Expr::Map(map) => {
                let mut sum = Range::ZERO;
                let start = if map.entries.is_empty() { Range::ZERO } else { Range { min: u64::MAX, max: 0 } };
                let (mut key, mut value) = (start, start);
                let (mut key_ty, mut value_ty) = (Ty::Dyn, Ty::Dyn);
                for (i, entry) in map.entries.iter().enumerate() {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return Err("struct literals are not supported".into());
                    };
                    if entry.optional {
                        return Err("optional map entries are not supported".into());
                    }
                    sum = sum.add(self.cost(&entry.key)?).add(self.cost(&entry.value)?);
                    key = key.union(self.size_or_unknown(&entry.key));
                    value = value.union(self.size_or_unknown(&entry.value));
                    if i == 0 {
                        (key_ty, value_ty) = (self.ty(&entry.key), self.ty(&entry.value));
                    }
                }
                self.entries.insert(e.id, EntrySize { container: Container::Map, key, value });
                self.types.insert(e.id, Ty::Map(Box::new(key_ty), Box::new(value_ty)));
                Ok(sum.add(Range::fixed(MAP_CREATE)))
            }
            Expr::Struct(_) => Err("message literals are not supported".into()),
            Expr::Comprehension(comp) => self.cost_comprehension(e, comp),
            Expr::Unspecified => Err("empty expression".into()),
        }
    }

    fn cost_ident(&mut self, e: &IdedExpr, name: &str) -> Walk<Range> {
        let (path, ty) = if let Some(local) = self.local(name) {
            (local.path.clone(), local.ty.clone())
        } else {
            let ty = match name {
                "self" => self.self_ty.clone(),
                "oldSelf" => self.old_self_ty.clone(),
                "int" | "uint" | "double" | "bool" | "string" | "bytes" | "list" | "map" | "null_type" | "type" => {
                    Ty::TypeValue
                }
                other => return Err(format!("undeclared reference to '{other}'")),
            };
            (vec![name.to_owned()], ty)
        };
        self.paths.insert(e.id, path);
        self.types.insert(e.id, ty);
        Ok(Range::fixed(1))
    }

    fn cost_comprehension(&mut self, e: &IdedExpr, comp: &ComprehensionExpr) -> Walk<Range> {
        if comp.iter_var2.is_some() {
            return Err("two-variable comprehensions are not supported".into());
        }
        let mut sum = self.cost(&comp.iter_range)?.add(self.cost(&comp.accu_init)?);
        let accu = Local {
            path: self.path(&comp.accu_init),
            size: self.compute_size(&comp.accu_init),
            entry: self.compute_entry(&comp.accu_init),
            ty: self.ty(&comp.accu_init),
        };
        self.push_local(&comp.accu_var, accu);

        // The single iteration variable: list items, or map keys.
        let range_entry = self.compute_entry(&comp.iter_range);
        let range_ty = self.ty(&comp.iter_range);
        let container = match range_entry {
            Some(entry) => entry.container,
            None if matches!(range_ty, Ty::List(_)) => Container::List,
            None => Container::Map,
        };
        let (size, step) = match container {
            Container::List => (range_entry.map(|e| e.value), "@items"),
            Container::Map => (range_entry.map(|e| e.key), "@keys"),
        };
        let mut path = self.path(&comp.iter_range);
        path.push(step.to_owned());
        self.push_local(&comp.iter_var, Local { path, size, entry: None, ty: range_ty.element() });

        let loop_cost = self.cost(&comp.loop_cond)?;
        let step_cost = self.cost(&comp.loop_step)?;
        self.pop_local(&comp.iter_var);
        sum = sum.add(self.cost(&comp.result)?);
        self.pop_local(&comp.accu_var);

        let range_count = self.size_or_unknown(&comp.iter_range);
        sum = sum.add(range_count.mul(step_cost.add(loop_cost)));
        match &comp.accu_init.expr {
            Expr::Literal(_) => {
                if let Some(size) = self.compute_size(&comp.accu_init) {
                    self.sizes.insert(e.id, size);
                }
            }
            Expr::List(_) | Expr::Map(_) => {
                self.sizes.insert(e.id, range_count);
                if let Some(entry) = self.compute_entry(&comp.loop_step) {
                    self.entries.insert(e.id, entry);
                }
            }
            _ => {}
        }
        let ty = self.ty(&comp.result);
        self.types.insert(e.id, ty);
        Ok(sum)
    }

    fn cost_call(&mut self, e: &IdedExpr, name: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Walk<Range> {
        if name == "dyn" && target.is_none() && args.len() == 1 {
            let cost = self.cost(&args[0])?;
            if let Some(size) = self.compute_size(&args[0]) {
                self.sizes.insert(e.id, size);
            }
            if let Some(entry) = self.compute_entry(&args[0]) {
                self.entries.insert(e.id, entry);
            }
            self.types.insert(e.id, Ty::Dyn);
            return Ok(cost.add(Range::fixed(1)));
        }
        let mut arg_costs = Vec::with_capacity(args.len());
        let mut arg_nodes = Vec::with_capacity(args.len());
        for arg in args {
            arg_costs.push(self.cost(arg)?);
            arg_nodes.push(self.node(arg));
        }
        let mut sum = Range::ZERO;
        let target_node = match target {
            Some(t) => {
                sum = sum.add(self.cost(t)?);
                Some(self.node(t))
            }
            None => None,
        };
        let arg_tys: Vec<Ty<'a>> = arg_nodes.iter().map(|n| n.ty.clone()).collect();
        let (overloads, result_ty) = resolve(name, target_node.as_ref().map(|t| &t.ty), &arg_tys)?;
        self.types.insert(e.id, result_ty);

        let mut fn_cost = Range { min: u64::MAX, max: 0 };
        let mut result_size: Option<Range> = None;
        for ov in overloads {
            let est = self.function_cost(e, name, ov, target_node.as_ref(), args, &arg_nodes, &arg_costs);
            fn_cost = fn_cost.union(est.cost);
            if let Some(size) = est.result_size {
                result_size = Some(result_size.map_or(size, |r| r.union(size)));
            }
            if let (Ov::IndexList | Ov::IndexMap, Some(container)) = (ov, args.first()) {
                result_size = self.compute_entry(container).map(|entry| entry.value);
                let mut path = self.path(container);
                path.push(if ov == Ov::IndexList { "@items" } else { "@values" }.to_owned());
                self.paths.insert(e.id, path);
            }
            if result_size.is_none() {
                result_size = self.compute_size(e);
            }
        }
        if let Some(size) = result_size {
            self.sizes.insert(e.id, size);
        }
        Ok(sum.add(fn_cost))
    }

    /// cel-go `functionCost`: ext `sets` estimators, then the Kubernetes library's, then cel-go's
    /// own, then 1 plus the arguments.
    #[allow(clippy::too_many_arguments)]
    fn function_cost(
        &mut self,
        e: &IdedExpr,
        name: &str,
        ov: Ov,
        target: Option<&Node<'a>>,
        arg_exprs: &[IdedExpr],
        args: &[Node<'a>],
        arg_costs: &[Range],
    ) -> CallEstimate {
        let arg_sum = arg_costs.iter().fold(Range::ZERO, |acc, c| acc.add(*c));
        let with_args = |est: CallEstimate| CallEstimate { cost: est.cost.add(arg_sum), result_size: est.result_size };
        if let (Ov::Sets(factor), [a, b]) = (ov, args) {
            let cost = self.lib_size(a).mul(self.lib_size(b)).factor(factor).add(Range::fixed(1));
            return with_args(CallEstimate { cost, result_size: None });
        }
        if let Some(est) = self.k8s_estimate(name, ov, target, args) {
            return with_args(est);
        }
        let size = |n: &Node<'_>| n.size.unwrap_or(Range::UNKNOWN);
        let cost = |c: Range| CallEstimate { cost: c.add(arg_sum), result_size: None };
        match (ov, target, args) {
            (Ov::FormatString, Some(t), _) => cost(size(t).factor(STRING_TRAVERSAL)),
            (Ov::StringToBytes, _, [a]) => {
                let sz = size(a);
                CallEstimate {
                    cost: sz.factor(STRING_TRAVERSAL).add(arg_sum),
                    result_size: Some(Range { min: sz.min, max: sz.max.saturating_mul(4) }),
                }
            }
            (Ov::BytesToString, _, [a]) => {
                let sz = size(a);
                CallEstimate {
                    cost: sz.factor(STRING_TRAVERSAL).add(arg_sum),
                    result_size: Some(Range { min: sz.min / 4, max: sz.max }),
                }
            }
            (Ov::QuoteString, _, [a]) => {
                let sz = size(a);
                CallEstimate {
                    cost: sz.factor(STRING_TRAVERSAL).add(arg_sum),
                    result_size: Some(Range {
                        min: sz.min.saturating_add(2),
                        max: sz.max.saturating_mul(2).saturating_add(2),
                    }),
                }
            }
            (Ov::StartsWith | Ov::EndsWith, _, [a]) => cost(size(a).factor(STRING_TRAVERSAL)),
            (Ov::InList, _, [_, list]) => cost(size(list).factor(1.0)),
            (Ov::Matches | Ov::MatchesString, _, _) => {
                let (text, regex) = match (ov, target, args) {
                    (Ov::MatchesString, Some(t), [r]) => (t, r),
                    (Ov::Matches, None, [t, r]) => (t, r),
                    _ => return cost(Range::fixed(1)),
                };
                // +1 so that an empty string still pays for an expensive regex.
                let text_cost = size(text).add(Range::fixed(1)).factor(STRING_TRAVERSAL);
                let regex_cost = size(regex).factor(REGEX_LENGTH);
                cost(text_cost.mul(regex_cost))
            }
            (Ov::ContainsString, Some(t), [a]) => {
                cost(size(t).factor(STRING_TRAVERSAL).mul(size(a).factor(STRING_TRAVERSAL)))
            }
            (Ov::LogicalAnd | Ov::LogicalOr, _, _) if arg_costs.len() == 2 => CallEstimate {
                // Short-circuit: at least the left side, at most both.
                cost: Range { min: arg_costs[0].min, max: arg_costs[0].add(arg_costs[1]).max },
                result_size: None,
            },
            (Ov::Conditional, _, [_, when_true, when_false]) if arg_costs.len() == 3 => {
                let result = size(when_true).union(size(when_false));
                if let Some(entry) = union_entries(self.compute_entry(&arg_exprs[1]), self.compute_entry(&arg_exprs[2]))
                {
                    self.entries.insert(e.id, entry);
                }
                CallEstimate { cost: arg_costs[0].add(arg_costs[1].union(arg_costs[2])), result_size: Some(result) }
            }
            (Ov::AddString | Ov::AddBytes | Ov::AddList, _, [l, r]) => {
                let result = size(l).add(size(r));
                if let Some(entry) = union_entries(self.compute_entry(&arg_exprs[0]), self.compute_entry(&arg_exprs[1]))
                {
                    self.entries.insert(e.id, entry);
                }
                let own = if ov == Ov::AddList { Range::fixed(1) } else { result.factor(STRING_TRAVERSAL) };
                CallEstimate { cost: own.add(arg_sum), result_size: Some(result) }
            }
            (Ov::CompareString | Ov::CompareBytes | Ov::Equals | Ov::NotEquals, _, [l, r]) => {
                // Comparing stops at the end of the shorter operand.
                let shorter = size(l).max.min(size(r).max);
                let min = u64::from(shorter > 0);
                cost(Range { min, max: shorter }.factor(STRING_TRAVERSAL))
            }
            _ => cost(Range::fixed(1)),
        }
    }

    /// The Kubernetes library's `EstimateCallCost` (by function name), without the arguments.
    fn k8s_estimate(&self, name: &str, ov: Ov, target: Option<&Node<'a>>, args: &[Node<'a>]) -> Option<CallEstimate> {
        let plain = |c: Range| Some(CallEstimate { cost: c, result_size: None });
        let one = || plain(Range::fixed(1));
        match name {
            "check" => plain(Range::fixed(350_000)),
            "serviceAccount" | "path" | "group" | "resource" | "subresource" | "namespace" | "name" | "allowed"
            | "reason" | "error" | "errored" => one(),
            "fieldSelector" | "labelSelector" if args.len() == 1 => {
                let sz = self.lib_size(&args[0]);
                // About one requirement per two characters, each a list and a struct.
                let requirements = sz.factor(0.5).factor(f64_of(LIST_CREATE + STRUCT_CREATE));
                plain(Range::fixed(LIST_CREATE).add(sz.factor(STRING_TRAVERSAL)).add(requirements))
            }
            "isSorted" | "sum" | "max" | "min" | "indexOf" | "lastIndexOf" | "includes" => {
                let t = target?;
                if let Ty::List(item) | Ty::Map(item, _) = &t.ty {
                    let mut element = Range::fixed(1);
                    if matches!(**item, Ty::String | Ty::Bytes) {
                        let mut path = t.path.clone();
                        if !path.is_empty() {
                            path.push("@items".into());
                        }
                        let item_size = self.estimate_size(&path).unwrap_or(Range::UNKNOWN);
                        element = element.add(item_size.factor(STRING_TRAVERSAL));
                    }
                    plain(self.lib_size(t).mul(element))
                } else if name == "includes" {
                    plain(self.lib_size(t))
                } else {
                    plain(self.lib_size(t).factor(STRING_TRAVERSAL))
                }
            }
            "url" | "jsonpatch.escapeKey" if args.len() == 1 => {
                let sz = self.lib_size(&args[0]);
                Some(CallEstimate { cost: sz.factor(STRING_TRAVERSAL), result_size: Some(sz) })
            }
            "lowerAscii" | "upperAscii" | "substring" | "trim" => {
                let sz = self.lib_size(target?);
                Some(CallEstimate { cost: sz.factor(STRING_TRAVERSAL), result_size: Some(sz) })
            }
            "replace" if args.len() >= 2 => {
                let sz = self.lib_size(target?);
                Some(CallEstimate {
                    cost: sz.factor(2.0 * STRING_TRAVERSAL),
                    result_size: Some(replace_size(sz, self.lib_size(&args[0]), self.lib_size(&args[1]))),
                })
            }
            "split" => {
                let sz = self.lib_size(target?);
                // The worst case is a separator of "": one element per character, unless a
                // literal limit says otherwise (Go converts a negative one to a huge uint64).
                let max = args.get(1).and_then(|a| a.int_literal).map_or(sz.max, |i| i as u64);
                Some(CallEstimate { cost: sz.factor(2.0 * STRING_TRAVERSAL), result_size: Some(Range { min: 0, max }) })
            }
            "join" => {
                let t = target?;
                let list = self.lib_size(t);
                let mut sz = Range::ZERO;
                if let Ty::List(_) | Ty::Map(..) = &t.ty {
                    let mut path = t.path.clone();
                    if !path.is_empty() {
                        path.push("@items".into());
                    }
                    sz = list.mul(self.estimate_size(&path).unwrap_or(Range::UNKNOWN));
                }
                if let Some(sep) = args.first() {
                    let separators = Range { min: list.min.saturating_sub(1), max: list.max.saturating_sub(1) };
                    sz = sz.add(self.lib_size(sep).mul(separators));
                }
                Some(CallEstimate { cost: sz.factor(STRING_TRAVERSAL), result_size: Some(sz) })
            }
            "find" | "findAll" if !args.is_empty() => {
                let sz = self.lib_size(target?);
                let text = sz.add(Range::fixed(1)).factor(STRING_TRAVERSAL);
                let regex = self.lib_size(&args[0]).factor(REGEX_LENGTH);
                Some(CallEstimate { cost: text.mul(regex), result_size: Some(Range { min: 0, max: sz.max }) })
            }
            "cidr" | "isIP" | "isCIDR" if !args.is_empty() => plain(self.lib_size(&args[0]).factor(STRING_TRAVERSAL)),
            "ip" if ov == Ov::CidrIp => one(),
            "ip" if !args.is_empty() => plain(self.lib_size(&args[0]).factor(STRING_TRAVERSAL)),
            "ip.isCanonical" if !args.is_empty() => plain(self.lib_size(&args[0]).factor(2.0 * STRING_TRAVERSAL)),
            "masked"
            | "prefixLength"
            | "family"
            | "isUnspecified"
            | "isLoopback"
            | "isLinkLocalMulticast"
            | "isLinkLocalUnicast"
            | "isGlobalUnicast" => one(),
            "containsIP" | "containsCIDR" if !args.is_empty() => {
                // Comparing two IPv4 or IPv6 byte lists.
                let bytes = Range { min: 4, max: 16 };
                let mut c = bytes.add(bytes).factor(STRING_TRAVERSAL);
                if name == "containsCIDR" {
                    c = c.add(bytes.factor(STRING_TRAVERSAL)).add(Range::fixed(1));
                }
                if matches!(ov, Ov::ContainsIpString | Ov::ContainsCidrString) {
                    c = c.add(self.lib_size(&args[0]).factor(STRING_TRAVERSAL));
                }
                plain(c)
            }
            "quantity" | "isQuantity" | "semver" | "isSemver" if !args.is_empty() => {
                plain(self.lib_size(&args[0]).factor(STRING_TRAVERSAL))
            }
            "validate" if !args.is_empty() => plain(
                self.lib_size(&args[0]).factor(STRING_TRAVERSAL).factor(MAX_NAME_FORMAT_REGEX_SIZE * REGEX_LENGTH),
            ),
            "format.named" | "sign" | "asInteger" | "isInteger" | "asApproximateFloat" | "isGreaterThan"
            | "isLessThan" | "compareTo" | "add" | "sub" | "major" | "minor" | "patch" | "getScheme"
            | "getHostname" | "getHost" | "getPort" | "getEscapedPath" | "getQuery" => one(),
            "_==_" => match (args, target) {
                ([l, r], None) if l.ty == r.ty => match l.ty {
                    Ty::Opaque(Opaque::Ip | Opaque::Cidr | Opaque::Quantity | Opaque::Semver) => one(),
                    Ty::Opaque(Opaque::Format) => {
                        plain(Range { min: 1, max: MAX_FORMAT_SIZE }.factor(STRING_TRAVERSAL))
                    }
                    Ty::Opaque(Opaque::Url) => {
                        // Upstream takes both sizes from the right operand.
                        let max = r.size.map_or(1, |s| s.max);
                        plain(Range { min: 1, max }.factor(STRING_TRAVERSAL))
                    }
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    }
}

/// The Kubernetes estimate of the size of `s.replace(from, to)`.
fn replace_size(sz: Range, from: Range, to: Range) -> Range {
    let (mut count, mut retained) = (Range::ZERO, Range::ZERO);
    if from.min == 0 {
        count.max = sz.max.saturating_add(1);
        retained.max = sz.max;
    } else if to.max <= from.min {
        retained.max = sz.max;
    } else {
        // The shortest match replaced by the longest replacement, as often as it fits.
        count.max = (f64_of(sz.max) / f64_of(from.min)).ceil() as u64;
    }
    if from.max == 0 {
        count.min = sz.min.saturating_add(1);
        retained.min = sz.min;
    } else if from.max <= to.min {
        retained.min = sz.min;
    } else {
        count.min = (f64_of(sz.min) / f64_of(from.max)).ceil() as u64;
    }
    count.mul(to).add(retained)
}

fn f64_of(v: u64) -> f64 {
    v as f64
}

/// cel-go `computeExprSize`: exact sizes of literals and of list and map literals.
fn literal_size(e: &IdedExpr) -> Option<Range> {
    let n = match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => s.inner().chars().count(),
        Expr::Literal(LiteralValue::Bytes(b)) => b.inner().len(),
        Expr::Literal(_) => 1,
        Expr::List(list) => list.elements.len(),
        Expr::Map(map) => map.entries.len(),
        _ => return None,
    };
    Some(Range::fixed(n as u64))
}

fn literal_type(lit: &LiteralValue) -> Ty<'static> {
    match lit {
        LiteralValue::Boolean(_) => Ty::Bool,
        LiteralValue::Bytes(_) => Ty::Bytes,
        LiteralValue::Double(_) => Ty::Double,
        LiteralValue::Int(_) => Ty::Int,
        LiteralValue::Null => Ty::Null,
        LiteralValue::String(_) => Ty::String,
        LiteralValue::UInt(_) => Ty::Uint,
    }
}

/// The overloads the CEL checker would pick for a call, and its result type. Where an operand is
/// `dyn` the checker keeps every overload that may apply and the estimate covers all of them.
fn resolve<'a>(name: &str, target: Option<&Ty<'a>>, args: &[Ty<'a>]) -> Walk<(Vec<Ov>, Ty<'a>)> {
    use Ty as T;
    let one = |ov: Ov, ty: Ty<'a>| Ok((vec![ov], ty));
    let unsupported = || {
        Err(format!(
            "function '{name}' ({} with {} argument(s)) is not covered by the cost estimator",
            if target.is_some() { "method" } else { "global" },
            args.len()
        ))
    };
    match (name, target, args) {
        ("_&&_", None, [_, _]) => one(Ov::LogicalAnd, T::Bool),
        ("_||_", None, [_, _]) => one(Ov::LogicalOr, T::Bool),
        ("!_" | "@not_strictly_false", None, [_]) => one(Ov::Plain, T::Bool),
        ("-_", None, [t]) => one(Ov::Plain, t.clone()),
        ("_?_:_", None, [_, t, f]) => {
            one(Ov::Conditional, if matches!(t, T::Null | T::Dyn) { f.clone() } else { t.clone() })
        }
        ("_==_", None, [_, _]) => one(Ov::Equals, T::Bool),
        ("_!=_", None, [_, _]) => one(Ov::NotEquals, T::Bool),
        ("_<_" | "_<=_" | "_>_" | "_>=_", None, [l, r]) => {
            let mut ovs = Vec::new();
            if l.may_be(&T::String) && r.may_be(&T::String) {
                ovs.push(Ov::CompareString);
            }
            if l.may_be(&T::Bytes) && r.may_be(&T::Bytes) {
                ovs.push(Ov::CompareBytes);
            }
            // Numbers, timestamps, durations, booleans: O(1).
            if !l.is_sequence() && !r.is_sequence() {
                ovs.push(Ov::Plain);
            }
            Ok((ovs, T::Bool))
        }
        ("_+_", None, [l, r]) => {
            let mut ovs = Vec::new();
            let mut ty = if l.is_dyn() { r.clone() } else { l.clone() };
            if l.may_be(&T::String) && r.may_be(&T::String) {
                ovs.push(Ov::AddString);
            }
            if l.may_be(&T::Bytes) && r.may_be(&T::Bytes) {
                ovs.push(Ov::AddBytes);
            }
            if l.may_be(&T::List(Box::new(T::Dyn))) && r.may_be(&T::List(Box::new(T::Dyn))) {
                ovs.push(Ov::AddList);
                if let (T::List(a), T::List(_)) = (l, r)
                    && a.is_dyn()
                {
                    ty = r.clone();
                }
            }
            if !l.is_sequence() && !r.is_sequence() {
                ovs.push(Ov::Plain);
            }
            if ovs.len() > 1 {
                ty = T::Dyn;
            }
            Ok((ovs, ty))
        }
        ("_-_", None, [T::Timestamp, T::Timestamp]) => one(Ov::Plain, T::Duration),
        ("_-_" | "_*_" | "_/_" | "_%_", None, [l, _]) => one(Ov::Plain, l.clone()),
        ("@in", None, [_, r]) => match r {
            T::List(_) => one(Ov::InList, T::Bool),
            T::Map(..) => one(Ov::Plain, T::Bool),
            T::Dyn => Ok((vec![Ov::InList, Ov::Plain], T::Bool)),
            _ => unsupported(),
        },
        ("_[_]", None, [c, _]) => match c {
            T::List(item) => one(Ov::IndexList, (**item).clone()),
            T::Map(_, value) => one(Ov::IndexMap, (**value).clone()),
            T::Dyn => Ok((vec![Ov::IndexList, Ov::IndexMap], T::Dyn)),
            _ => unsupported(),
        },
        ("size", None, [_]) | ("size", Some(_), []) => one(Ov::Plain, T::Int),
        ("matches", Some(_), [_]) => one(Ov::MatchesString, T::Bool),
        ("matches", None, [_, _]) => one(Ov::Matches, T::Bool),
        ("contains", Some(t), [_]) if t.may_be(&T::String) => one(Ov::ContainsString, T::Bool),
        ("startsWith", Some(_), [_]) => one(Ov::StartsWith, T::Bool),
        ("endsWith", Some(_), [_]) => one(Ov::EndsWith, T::Bool),
        ("int", None, [_]) => one(Ov::Plain, T::Int),
        ("uint", None, [_]) => one(Ov::Plain, T::Uint),
        ("double", None, [_]) => one(Ov::Plain, T::Double),
        ("bool", None, [_]) => one(Ov::Plain, T::Bool),
        ("string", None, [a]) => match a {
            T::Bytes => one(Ov::BytesToString, T::String),
            T::Dyn => Ok((vec![Ov::Plain, Ov::BytesToString], T::String)),
            _ => one(Ov::Plain, T::String),
        },
        ("bytes", None, [a]) => match a {
            T::String => one(Ov::StringToBytes, T::Bytes),
            T::Dyn => Ok((vec![Ov::Plain, Ov::StringToBytes], T::Bytes)),
            _ => one(Ov::Plain, T::Bytes),
        },
        ("timestamp", None, [_]) => one(Ov::Plain, T::Timestamp),
        ("duration", None, [_]) => one(Ov::Plain, T::Duration),
        ("type", None, [_]) => one(Ov::Plain, T::TypeValue),
        (
            "getFullYear" | "getMonth" | "getDate" | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear" | "getHours"
            | "getMinutes" | "getSeconds" | "getMilliseconds",
            Some(_),
            _,
        ) => one(Ov::Plain, T::Int),
        // ext strings (version 2, as the API server configures it)
        ("charAt", Some(_), [_]) => one(Ov::Plain, T::String),
        ("indexOf" | "lastIndexOf", Some(_), [_] | [_, _]) => one(Ov::Plain, T::Int),
        ("lowerAscii" | "upperAscii" | "trim", Some(_), []) => one(Ov::Plain, T::String),
        ("replace", Some(_), [_, _] | [_, _, _]) => one(Ov::Plain, T::String),
        ("split", Some(_), [_] | [_, _]) => one(Ov::Plain, T::List(Box::new(T::String))),
        ("substring", Some(_), [_] | [_, _]) => one(Ov::Plain, T::String),
        ("join", Some(_), [] | [_]) => one(Ov::Plain, T::String),
        ("format", Some(_), [_]) => one(Ov::FormatString, T::String),
        ("strings.quote", None, [_]) => one(Ov::QuoteString, T::String),
        // Kubernetes lists library
        ("isSorted", Some(_), []) => one(Ov::Plain, T::Bool),
        ("sum" | "max" | "min", Some(t), []) => one(Ov::Plain, t.element()),
        // ext sets
        ("sets.contains" | "sets.intersects", None, [_, _]) => one(Ov::Sets(1.0), T::Bool),
        ("sets.equivalent", None, [_, _]) => one(Ov::Sets(2.0), T::Bool),
        // Kubernetes regex library
        ("find", Some(_), [_]) => one(Ov::Plain, T::String),
        ("findAll", Some(_), [_] | [_, _]) => one(Ov::Plain, T::List(Box::new(T::String))),
        // Kubernetes URL library
        ("url", None, [_]) => one(Ov::Plain, T::Opaque(Opaque::Url)),
        ("isURL", None, [_]) => one(Ov::Plain, T::Bool),
        ("getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath", Some(_), []) => {
            one(Ov::Plain, T::String)
        }
        ("getQuery", Some(_), []) => {
            one(Ov::Plain, T::Map(Box::new(T::String), Box::new(T::List(Box::new(T::String)))))
        }
        // Kubernetes IP and CIDR libraries
        ("ip", None, [_]) => one(Ov::Plain, T::Opaque(Opaque::Ip)),
        ("ip", Some(_), []) => one(Ov::CidrIp, T::Opaque(Opaque::Ip)),
        ("cidr", None, [_]) => one(Ov::Plain, T::Opaque(Opaque::Cidr)),
        ("isIP" | "isCIDR" | "ip.isCanonical", None, [_]) => one(Ov::Plain, T::Bool),
        ("family" | "prefixLength", Some(_), []) => one(Ov::Plain, T::Int),
        (
            "isUnspecified" | "isLoopback" | "isLinkLocalMulticast" | "isLinkLocalUnicast" | "isGlobalUnicast",
            Some(_),
            [],
        ) => one(Ov::Plain, T::Bool),
        ("masked", Some(_), []) => one(Ov::Plain, T::Opaque(Opaque::Cidr)),
        ("containsIP", Some(_), [a]) => match a {
            T::String => one(Ov::ContainsIpString, T::Bool),
            T::Dyn => Ok((vec![Ov::ContainsIpString, Ov::Plain], T::Bool)),
            _ => one(Ov::Plain, T::Bool),
        },
        ("containsCIDR", Some(_), [a]) => match a {
            T::String => one(Ov::ContainsCidrString, T::Bool),
            T::Dyn => Ok((vec![Ov::ContainsCidrString, Ov::Plain], T::Bool)),
            _ => one(Ov::Plain, T::Bool),
        },
        // Kubernetes quantity and semver libraries
        ("quantity", None, [_]) => one(Ov::Plain, T::Opaque(Opaque::Quantity)),
        ("semver", None, [_] | [_, _]) => one(Ov::Plain, T::Opaque(Opaque::Semver)),
        ("isQuantity", None, [_]) | ("isSemver", None, [_] | [_, _]) => one(Ov::Plain, T::Bool),
        ("isInteger" | "isGreaterThan" | "isLessThan", Some(_), _) => one(Ov::Plain, T::Bool),
        ("sign" | "asInteger" | "compareTo" | "major" | "minor" | "patch", Some(_), _) => one(Ov::Plain, T::Int),
        ("asApproximateFloat", Some(_), []) => one(Ov::Plain, T::Double),
        ("add" | "sub", Some(t), [_]) => one(Ov::Plain, t.clone()),
        // Kubernetes format library
        (n, None, []) if n.starts_with("format.") => one(Ov::Plain, T::Opaque(Opaque::Format)),
        ("format.named", None, [_]) => one(Ov::Plain, T::Optional(Box::new(T::Opaque(Opaque::Format)))),
        ("validate", Some(_), [_]) => one(Ov::Plain, T::Optional(Box::new(T::List(Box::new(T::String))))),
        // optionals (`optionalOldSelf`)
        ("hasValue", Some(T::Optional(_)), []) => one(Ov::Plain, T::Bool),
        ("value", Some(T::Optional(inner)), []) => one(Ov::Plain, (**inner).clone()),
        ("orValue", Some(T::Optional(inner)), [_]) => one(Ov::Plain, (**inner).clone()),
        ("optional.of" | "optional.ofNonZeroValue", None, [a]) => one(Ov::Plain, T::Optional(Box::new(a.clone()))),
        ("optional.none", None, []) => one(Ov::Plain, T::Optional(Box::new(T::Dyn))),
        _ => unsupported(),
    }
}

/// The worst-case cost of one CEL expression evaluated on a node of type `decl`: what
/// `cel.EstimateCost(...).Max` gives the API server.
fn expression_cost(expression: &str, decl: &Decl, optional_old_self: bool) -> Walk<u64> {
    let ast = Parser::new().parse(expression).map_err(|e| format!("parse error: {e}"))?;
    let mut coster = Coster::new(decl, optional_old_self);
    Ok(coster.cost(&ast)?.max)
}

// ---------------------------------------------------------------------------------------------
// The CRD walk

/// The estimated cost of one rule (or `messageExpression`) of a CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCost {
    /// Field path of the rule, e.g.
    /// `spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule`.
    pub field: String,
    /// The expression.
    pub expression: String,
    /// The worst-case cost of one evaluation.
    pub per_call: u64,
    /// How many times it may be evaluated per object (`None`: the cost already is per object,
    /// as for `messageExpression`).
    pub cardinality: Option<u64>,
    /// What is checked against the limits: per-call cost times cardinality.
    pub total: u64,
}

/// The estimate of one schema: every rule's cost and the API server's field errors.
#[derive(Debug, Default)]
struct SchemaCost {
    rules: Vec<RuleCost>,
    causes: Vec<Cause>,
    total: u64,
    /// The (at most 4) most expensive rules of at least 1% of the schema budget, by cost.
    most_expensive: Vec<(String, u64)>,
    unknown: Option<CrdCostUnknown>,
}

/// Why a rule could not be costed.
#[derive(Debug, Clone)]
struct CrdCostUnknown {
    field: String,
    rule: String,
    reason: String,
}

impl SchemaCost {
    fn observe(&mut self, field: &str, cost: u64) {
        self.total = self.total.saturating_add(cost);
        if cost < STATIC_ESTIMATED_CRD_COST_LIMIT / 100 {
            return;
        }
        self.most_expensive.push((field.to_owned(), cost));
        // Stable: among equal costs the first visited stays first.
        self.most_expensive.sort_by_key(|(_, cost)| std::cmp::Reverse(*cost));
        self.most_expensive.truncate(4);
    }

    /// Estimates the rules of `schema` at `path` and below. `cardinality` is how many times the
    /// node may occur in one object (`None`: under an unbounded list or map).
    fn walk(&mut self, schema: &Value, path: &str, cardinality: Option<u64>, root: bool) {
        // Children first, as the API server reports them; allOf/anyOf/oneOf/not carry no rules
        // it compiles.
        let child = cardinality.and_then(|c| max_elements(schema).map(|m| mul_guard(c, m)));
        if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            self.walk(values, &format!("{path}.additionalProperties"), child, false);
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let mut names: Vec<&String> = props.keys().collect();
            names.sort();
            for name in names {
                self.walk(&props[name], &format!("{path}.properties[{name}]"), child, false);
            }
        }
        match schema.get("items") {
            Some(items @ Value::Object(_)) => self.walk(items, &format!("{path}.items"), child, false),
            Some(Value::Array(items)) => {
                for (i, items) in items.iter().enumerate() {
                    self.walk(items, &format!("{path}.items[{i}]"), child, false);
                }
            }
            _ => {}
        }
        self.rules_of(schema, path, cardinality, root);
    }

    fn rules_of(&mut self, schema: &Value, path: &str, cardinality: Option<u64>, root: bool) {
        let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) else { return };
        if rules.is_empty() {
            return;
        }
        // A node CEL cannot see fails to compile in the API server; kube-cel reports that.
        let Some(decl) = decl_type(schema, root || flag(schema, "x-kubernetes-embedded-resource")) else { return };
        // Under an unbounded list or map: as many copies as fit in a request.
        let unbounded = non_negative(MAX_REQUEST_SIZE_BYTES / decl.min_size.saturating_add(1));
        for (i, rule) in rules.iter().enumerate() {
            let optional_old_self = flag(rule, "optionalOldSelf");
            let prefix = format!("{path}.x-kubernetes-validations[{i}]");
            let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
            if !text.trim().is_empty() {
                let field = format!("{prefix}.rule");
                match expression_cost(text, &decl, optional_old_self) {
                    Ok(per_call) => {
                        let card = cardinality.unwrap_or(unbounded);
                        let total = mul_guard(per_call, card);
                        if total > STATIC_ESTIMATED_COST_LIMIT {
                            self.causes.push(forbidden(
                                &field,
                                &budget_message("estimated rule cost", total, STATIC_ESTIMATED_COST_LIMIT),
                            ));
                        }
                        self.observe(&field, total);
                        self.rules.push(RuleCost {
                            field,
                            expression: text.to_owned(),
                            per_call,
                            cardinality: Some(card),
                            total,
                        });
                    }
                    Err(reason) => self.unknown(field, text, reason),
                }
            }
            // Upstream checks a messageExpression's cost alone, not times the rule's cardinality.
            let message = rule.get("messageExpression").and_then(Value::as_str).unwrap_or_default();
            if !message.trim().is_empty() {
                let field = format!("{prefix}.messageExpression");
                match expression_cost(message, &decl, optional_old_self) {
                    Ok(cost) => {
                        if cost > STATIC_ESTIMATED_COST_LIMIT {
                            self.causes.push(forbidden(
                                &field,
                                &budget_message("estimated messageExpression cost", cost, STATIC_ESTIMATED_COST_LIMIT),
                            ));
                        }
                        self.observe(&field, cost);
                        self.rules.push(RuleCost {
                            field,
                            expression: message.to_owned(),
                            per_call: cost,
                            cardinality: None,
                            total: cost,
                        });
                    }
                    Err(reason) => self.unknown(field, message, reason),
                }
            }
        }
    }

    fn unknown(&mut self, field: String, rule: &str, reason: String) {
        if self.unknown.is_none() {
            self.unknown = Some(CrdCostUnknown { field, rule: rule.to_owned(), reason });
        }
    }

    /// The schema-wide check, after every rule has been observed.
    fn finish(&mut self, schema_path: &str) {
        if self.total > STATIC_ESTIMATED_CRD_COST_LIMIT {
            for (field, _) in &self.most_expensive {
                self.causes.push(forbidden(
                    field,
                    "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema",
                ));
            }
            self.causes.push(forbidden(
                schema_path,
                &budget_message(
                    "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                    self.total,
                    STATIC_ESTIMATED_CRD_COST_LIMIT,
                ),
            ));
        }
    }
}

/// `extractMaxElements`: how many times a node's children may occur per occurrence of the node.
fn max_elements(schema: &Value) -> Option<u64> {
    match schema.get("type").and_then(Value::as_str) {
        Some("object") if schema.get("additionalProperties").is_some() => {
            int_field(schema, "maxProperties").map(non_negative)
        }
        Some("array") => int_field(schema, "maxItems").map(non_negative),
        _ => Some(1),
    }
}

fn forbidden(field: &str, message: &str) -> Cause {
    Cause::new(CauseReason::Forbidden, field, format!("Forbidden: {message}"))
}

/// `getCostErrorMessage`: the factor with one decimal, six below 1.5 (never "1.0x"), or "more
/// than 100x" where the number says nothing more.
fn budget_message(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_owned()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// Every version's schema with the field path the API server reports it under: one schema
/// shared by all versions is validated once, as `spec.validation.openAPIV3Schema`.
fn schemas(crd: &CustomResourceDefinition) -> Result<Vec<(String, Value)>, CrdSchemaError> {
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (i, version) in crd.spec.versions.iter().enumerate() {
        let Some(schema) = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()) else { continue };
        let schema = serde_json::to_value(schema).map_err(|source| CrdSchemaError::Serialise {
            crd: crd_name.clone(),
            version: version.name.clone(),
            source,
        })?;
        out.push((format!("spec.versions[{i}].schema.openAPIV3Schema"), schema));
    }
    let identical = out.len() == crd.spec.versions.len() && out.windows(2).all(|w| w[0].1 == w[1].1);
    if identical && let Some((_, schema)) = out.pop() {
        return Ok(vec![("spec.validation.openAPIV3Schema".to_owned(), schema)]);
    }
    Ok(out)
}

/// The estimated cost of every rule of `crd`, as the API server computes it at creation.
pub fn rule_costs(crd: &CustomResourceDefinition) -> Result<Vec<RuleCost>, CrdSchemaError> {
    Ok(estimate(crd)?.into_iter().flat_map(|(_, s)| s.rules).collect())
}

fn estimate(crd: &CustomResourceDefinition) -> Result<Vec<(String, SchemaCost)>, CrdSchemaError> {
    let mut out = Vec::new();
    for (path, schema) in schemas(crd)? {
        let mut cost = SchemaCost::default();
        cost.walk(&schema, &path, Some(1), true);
        cost.finish(&path);
        out.push((path, cost));
    }
    Ok(out)
}

/// Refuses `crd` as kube-apiserver does when its rules' estimated cost exceeds the budget, and
/// (failing closed) when a rule uses what the estimator cannot cost.
pub(super) fn check(crd: &CustomResourceDefinition) -> Result<(), CrdSchemaError> {
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let mut causes = Vec::new();
    for (_, schema) in estimate(crd)? {
        if let Some(u) = schema.unknown {
            return Err(CrdSchemaError::CostUnknown { crd: crd_name, field: u.field, rule: u.rule, reason: u.reason });
        }
        causes.extend(schema.causes);
    }
    if causes.is_empty() { Ok(()) } else { Err(CrdSchemaError::RuleCost { crd: crd_name, causes }) }
}

#[cfg(test)]
mod tests;
