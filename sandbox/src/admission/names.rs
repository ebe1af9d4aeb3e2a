//! Object names as the API server checks them: DNS-1123 labels and subdomains, with its wording.
//! One place for custom resources (admission) and built-in kinds (the sandbox's API server).

/// Why `name` is not a valid object name (a DNS-1123 label when `label_only`, as for
/// namespaces; a subdomain otherwise, as for Secrets and custom resources), in the API server's words.
pub fn name_error(name: &str, label_only: bool) -> Option<String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if label_only {
        return (!label_ok(name)).then(|| {
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
        });
    }
    let ok = name.len() <= 253 && name.split('.').all(label_ok);
    (!ok).then(|| {
        format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
    })
}

/// Why `name` is not a valid name for a kind whose names need only be a path segment (RBAC
/// roles and bindings: `system:controller:x` is fine), in the API server's words.
pub fn path_segment_error(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("Invalid value: {name:?}: may not be '{name}'"));
    }
    ["/", "%"]
        .into_iter()
        .find(|bad| name.contains(bad))
        .map(|bad| format!("Invalid value: {name:?}: may not contain '{bad}'"))
}

/// Why `key: value` is no valid label, in the API server's words (prefix `field`).
pub fn label_error(key: &str, value: &str) -> Option<(String, String)> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && n.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && n.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
    };
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    if !name_ok(name) || prefix.is_some_and(|p| name_error(p, false).is_some()) {
        return Some((
            "key".into(),
            format!(
                "Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ),
        ));
    }
    if !value.is_empty() && !name_ok(value) {
        return Some((
            "value".into(),
            format!(
                "Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
            ),
        ));
    }
    None
}
