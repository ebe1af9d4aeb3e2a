//! Hetzner label rules: validation of keys and values, and the `label_selector` language
//! (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, ANDed by `,`).
//! Pure functions; they never touch simulator state.

use std::collections::BTreeMap;

/// One parsed selector term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Term {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::NotExists(k) => !labels.contains_key(k),
            Term::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

/// A parsed selector: all terms must match.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector(pub Vec<Term>);

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|t| t.matches(labels))
    }
}

/// Splits on commas that are not inside parentheses (`k in (a,b),x=y`).
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected (values) in '{rest}'"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

/// Parses a `label_selector` query value.
pub fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut terms = Vec::new();
    for raw in split_terms(s) {
        let t = raw.trim();
        if t.is_empty() {
            return Err(format!("empty term in label selector '{s}'"));
        }
        let term = if let Some(k) = t.strip_prefix('!') {
            Term::NotExists(valid_key(k.trim())?)
        } else if let Some((k, v)) = t.split_once("!=") {
            Term::NotEquals(valid_key(k.trim())?, v.trim().to_owned())
        } else if let Some((k, v)) = t.split_once("==") {
            Term::Equals(valid_key(k.trim())?, v.trim().to_owned())
        } else if let Some((k, v)) = t.split_once('=') {
            Term::Equals(valid_key(k.trim())?, v.trim().to_owned())
        } else if let Some((k, rest)) = t.split_once(" notin ") {
            Term::NotIn(valid_key(k.trim())?, parse_set(rest)?)
        } else if let Some((k, rest)) = t.split_once(" in ") {
            Term::In(valid_key(k.trim())?, parse_set(rest)?)
        } else {
            Term::Exists(valid_key(t)?)
        };
        terms.push(term);
    }
    Ok(Selector(terms))
}

fn valid_key(k: &str) -> Result<String, String> {
    validate_key(k).map(|()| k.to_owned())
}

fn is_name(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let ok_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    let ends_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63 && ok_chars && ends_ok
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A label key: `[prefix/]name`.
pub fn validate_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Err(format!("label key '{k}' has an invalid prefix"));
    }
    if !is_name(name, false) {
        return Err(format!("label key '{k}' is invalid"));
    }
    Ok(())
}

/// A whole label set as sent in a request; `hetzner.cloud/` is reserved for Hetzner.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in labels {
        validate_key(k)?;
        if k.starts_with("hetzner.cloud/") {
            return Err(format!("label key '{k}' uses the reserved prefix hetzner.cloud/"));
        }
        if !is_name(v, true) {
            return Err(format!("label value '{v}' of key '{k}' is invalid"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn selector_forms() {
        let l = labels(&[("app", "web"), ("crabglamp.com/kind", "agent")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("!db", true),
            ("app in (db,web)", true),
            ("app notin (db,web)", false),
            ("app=web,crabglamp.com/kind=agent", true),
            ("app=web,crabglamp.com/kind=vm", false),
            ("db!=x", true),
            ("db notin (x)", true),
        ] {
            assert_eq!(parse_selector(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn bad_selectors_and_labels() {
        assert!(parse_selector("app=web,").is_err());
        assert!(parse_selector("-bad=1").is_err());
        assert!(validate_labels(&labels(&[("hetzner.cloud/x", "y")])).is_err());
        assert!(validate_labels(&labels(&[("ok", "bad value")])).is_err());
        assert!(validate_labels(&labels(&[("Crab.Glamp/x", "y")])).is_err());
        assert!(validate_labels(&labels(&[("crabglamp.com/uid", ""), ("a_b.c", "x-y")])).is_ok());
    }
}
