//! Label and field selectors (`labelSelector=`, `fieldSelector=`), parsed once per request and
//! matched against stored objects. Never touches the store.

use serde_json::Value;

use super::error::ApiError;
use super::resource::{ResourceType, Special};

#[derive(Debug, Clone)]
enum LabelTerm {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let prefix_ok = key.rsplit_once('/').is_none()
        || (!prefix.is_empty()
            && prefix.len() <= 253
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
    prefix_ok && !name.is_empty() && valid_value(name)
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` or `.`, starting and ending
/// alphanumeric.
fn valid_value(value: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && edge_ok(value.chars().next())
        && edge_ok(value.chars().last())
}

fn unparsable(term: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: invalid label selector term {term:?}"))
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector(Vec<LabelTerm>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    out.into_iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect()
}

fn parse_set(s: &str) -> Result<Vec<String>, ApiError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: invalid set {s:?}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),!h`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let t = if let Some(k) = term.strip_prefix('!') {
                LabelTerm::NotExists(k.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelTerm::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelTerm::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                LabelTerm::NotIn(k.trim().into(), parse_set(v)?)
            } else if let Some((k, v)) = term.split_once(" in ") {
                LabelTerm::In(k.trim().into(), parse_set(v)?)
            } else if let Some((k, v)) = term.split_once('>') {
                LabelTerm::Gt(k.trim().into(), v.trim().parse().map_err(|_| unparsable(&term))?)
            } else if let Some((k, v)) = term.split_once('<') {
                LabelTerm::Lt(k.trim().into(), v.trim().parse().map_err(|_| unparsable(&term))?)
            } else {
                LabelTerm::Exists(term.clone())
            };
            // A typo must be a 400, as on a real server, not a selector that silently matches
            // nothing.
            let (key, values): (&str, Vec<&str>) = match &t {
                LabelTerm::Eq(k, v) | LabelTerm::NotEq(k, v) => (k, vec![v.as_str()]),
                LabelTerm::In(k, vs) | LabelTerm::NotIn(k, vs) => (k, vs.iter().map(String::as_str).collect()),
                LabelTerm::Exists(k) | LabelTerm::NotExists(k) | LabelTerm::Gt(k, _) | LabelTerm::Lt(k, _) => {
                    (k, Vec::new())
                }
            };
            if !valid_key(key) || !values.iter().all(|v| valid_value(v)) {
                return Err(unparsable(&term));
            }
            terms.push(t);
        }
        Ok(Self(terms))
    }

    /// Whether `object`'s labels satisfy every term.
    /// Whether the selector has no terms (selects everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
            LabelTerm::Gt(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
            LabelTerm::Lt(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
        })
    }
}

/// One `label=value` / `label!=value` term: the paths of the stored object the label reads
/// (the first non-empty one counts), whether it is `=`, and the value.
#[derive(Debug, Clone)]
struct FieldTerm {
    paths: Vec<String>,
    eq: bool,
    value: String,
}

/// A parsed field selector: `path=value` / `path!=value` terms.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<FieldTerm>);

impl FieldSelector {
    /// Parses and checks the fields against what `rt` supports (400 otherwise, as real servers).
    pub fn parse(s: &str, rt: &ResourceType) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{s}'; can't understand '{term}'")));
            };
            let k = k.trim();
            let is_event = rt.kind == "Event" && (rt.group.is_empty() || rt.special == Special::EventsV1);
            let paths: Option<Vec<String>> = if is_event {
                // Events are stored in core form: a label of either API reads its core field.
                super::events::field_label(rt.special == Special::EventsV1, k)
                    .map(|paths| paths.iter().map(|p| (*p).to_owned()).collect())
            } else {
                let allowed = k == "metadata.name"
                    || k == "metadata.namespace"
                    || rt.selectable_fields.iter().any(|f| f == k)
                    || !rt.is_custom();
                allowed.then(|| vec![k.to_owned()])
            };
            let Some(paths) = paths else {
                // kube-apiserver's words (kubectl adds the "Unable to find ..." part itself).
                return Err(ApiError::bad_request(format!("field label not supported: {k}")));
            };
            terms.push(FieldTerm { paths, eq, value: v.trim().to_owned() });
        }
        Ok(Self(terms))
    }

    /// Whether the selector has no terms (selects everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `object` satisfies every term (a missing field reads as "").
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|term| {
            let have =
                term.paths.iter().map(|path| field_text(object, path)).find(|v| !v.is_empty()).unwrap_or_default();
            (have == term.value) == term.eq
        })
    }
}

/// The value at a dotted path as a field selector compares it (a missing field reads as "").
fn field_text(object: &Value, path: &str) -> String {
    let mut cur = Some(object);
    for part in path.split('.') {
        cur = cur.and_then(|c| c.get(part));
    }
    match cur {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"tier": "gold", "app": "x"}}});
        let m = |s: &str| LabelSelector::parse(s).map(|l| l.matches(&obj)).unwrap_or(false);
        assert!(m("tier=gold"));
        assert!(m("tier==gold,app"));
        assert!(m("tier in (gold, silver)"));
        assert!(!m("tier notin (gold)"));
        assert!(m("!missing"));
        assert!(!m("tier!=gold"));
        assert!(m(""));
        assert!(m("app.kubernetes.io/name!=y,tier"));
        let obj = json!({"metadata": {"labels": {"gen": "3"}}});
        assert!(LabelSelector::parse("gen>2").is_ok_and(|l| l.matches(&obj)));
        assert!(LabelSelector::parse("gen<3").is_ok_and(|l| !l.matches(&obj)));
        for typo in ["a b", "tier=gold silver", "-x", "Tier/x=y", "a in (b c)", "gen>two", "x=-y"] {
            assert!(LabelSelector::parse(typo).is_err(), "{typo:?} must be refused");
        }
    }
}
