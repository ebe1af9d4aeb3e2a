//! The JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*].b` and
//! `.a[?(@.type=="Ready")].status`. Pure functions over a JSON value.

use serde_json::Value;

/// Every value `path` selects in `root` (empty when nothing matches).
pub fn select<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut current = vec![root];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            current = current.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = find_close(r) else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            current = current.into_iter().flat_map(|v| index(v, inner)).collect();
        } else {
            return Vec::new();
        }
    }
    current
}

fn find_close(s: &str) -> Option<usize> {
    let mut depth = 0;
    let mut in_str = false;
    for (i, ch) in s.char_indices() {
        match ch {
            '"' | '\'' => in_str = !in_str,
            '[' if !in_str => depth += 1,
            ']' if !in_str => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    None
}

fn index<'a>(v: &'a Value, inner: &str) -> Vec<&'a Value> {
    let inner = inner.trim();
    if inner == "*" {
        return match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(o) => o.values().collect(),
            _ => Vec::new(),
        };
    }
    if let Ok(i) = inner.parse::<i64>() {
        let Value::Array(a) = v else { return Vec::new() };
        let idx = if i < 0 { a.len() as i64 + i } else { i };
        return usize::try_from(idx).ok().and_then(|i| a.get(i)).into_iter().collect();
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let Value::Array(a) = v else { return Vec::new() };
        let (lhs, op, rhs) = if let Some((l, r)) = filter.split_once("!=") {
            (l, false, r)
        } else if let Some((l, r)) = filter.split_once("==") {
            (l, true, r)
        } else {
            return Vec::new();
        };
        let lhs = lhs.trim().trim_start_matches('@');
        let rhs = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
        return a
            .iter()
            .filter(|item| {
                let got = select(item, lhs);
                let eq = got.first().is_some_and(|g| match g {
                    Value::String(s) => s == rhs,
                    other => {
                        let text = other.to_string();
                        text == rhs
                    }
                });
                eq == op
            })
            .collect();
    }
    let key = inner.trim_matches(|c| c == '"' || c == '\'');
    v.get(key).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_conditions() {
        let v =
            json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(select(&v, ".status.conditions[?(@.type==\"Ready\")].status"), vec![&json!("True")]);
        assert_eq!(select(&v, ".status.conditions[0].type"), vec![&json!("A")]);
        assert!(select(&v, ".spec.x").is_empty());
    }
}
