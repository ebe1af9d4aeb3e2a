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
