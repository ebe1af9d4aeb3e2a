//! Deterministic outside names and ownership marks derived from an object: the tunnel name,
//! the DNS record's comment mark and the default hostname. Pure functions only: a retry after
//! a crash derives the same names and so finds, never duplicates, what it made.

use sha2::{Digest, Sha256};

/// Every tunnel the operator makes is named `crabglamp-<installation>-<uid>` (before
/// installations had an identity: `crabglamp-<uid>`, see [`legacy_uid_from_tunnel_name`]).
pub const TUNNEL_PREFIX: &str = "crabglamp-";
/// Every DNS record the operator makes has a comment starting with this, then the
/// installation, `:` and the UID (before installations: the UID right after it).
pub const DNS_MARK_PREFIX: &str = "crabglamp:";

/// The start of the name of every tunnel of `installation`: what its tunnel list asks for.
pub fn tunnel_prefix(installation: &str) -> String {
    format!("{TUNNEL_PREFIX}{installation}-")
}

/// The tunnel of the object with `uid`.
pub fn tunnel_name(installation: &str, uid: &str) -> String {
    format!("{}{uid}", tunnel_prefix(installation))
}

/// The owner UID in one of `installation`'s tunnel names. The rest must be a whole UID, so
/// installation `prod` never takes `crabglamp-prod-eu-<uid>` (of `prod-eu`) for its own.
pub fn uid_from_tunnel_name<'a>(installation: &str, name: &'a str) -> Option<&'a str> {
    name.strip_prefix(&tunnel_prefix(installation)).filter(|uid| looks_like_uid(uid))
}

/// The owner UID in a tunnel name made before installations had an identity.
pub fn legacy_uid_from_tunnel_name(name: &str) -> Option<&str> {
    name.strip_prefix(TUNNEL_PREFIX).filter(|uid| looks_like_uid(uid))
}

/// The start of every DNS comment of `installation`: what its record list asks for.
pub fn dns_mark_prefix(installation: &str) -> String {
    format!("{DNS_MARK_PREFIX}{installation}:")
}

/// The comment that marks a DNS record as `installation`'s: at most 93 characters (a UID is
/// 36, an installation at most 16), within the free plan's 100.
pub fn dns_mark(installation: &str, uid: &str) -> String {
    format!("{}{uid} managed by crabglamp-operator", dns_mark_prefix(installation))
}

/// The owner UID in one of `installation`'s DNS comments.
pub fn uid_from_dns_comment<'a>(installation: &str, comment: &'a str) -> Option<&'a str> {
    let rest = comment.strip_prefix(&dns_mark_prefix(installation))?;
    rest.split_whitespace().next().filter(|uid| looks_like_uid(uid))
}

/// The owner UID in a DNS comment made before installations had an identity.
pub fn legacy_uid_from_dns_comment(comment: &str) -> Option<&str> {
    let rest = comment.strip_prefix(DNS_MARK_PREFIX)?;
    rest.split_whitespace().next().filter(|uid| looks_like_uid(uid))
}

/// A Kubernetes UID: a UUID in its 36-character form (`8-4-4-4-12` hex digits).
fn looks_like_uid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// `<name>-<namespace>.<zone>` when that first label fits DNS's 63 characters; otherwise the
/// label is cut and ends in 8 hex digits of a hash of name and namespace, so two long names
/// never share a hostname and every valid object gets a valid one.
pub fn default_hostname(name: &str, namespace: &str, zone: &str) -> String {
    let label = format!("{name}-{namespace}");
    let label = if label.len() <= 63 {
        label
    } else {
        let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
        let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let keep = label[..54].trim_end_matches('-');
        format!("{keep}-{hash}")
    };
    format!("{label}.{}", zone.trim_end_matches('.'))
}

/// The CNAME target of a tunnel.
pub fn tunnel_target(tunnel_id: &str) -> String {
    format!("{tunnel_id}.cfargotunnel.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f2a9c1e-0b4d-4c55-9e1a-7d2b8c6f0a11";

    #[test]
    fn marks_round_trip_and_fit_cloudflare_limits() {
        let longest = "p".repeat(crate::controllers::installation::MAX_LEN);
        for installation in ["prod", "3f2a9c1e", longest.as_str()] {
            assert_eq!(uid_from_tunnel_name(installation, &tunnel_name(installation, UID)), Some(UID));
            let mark = dns_mark(installation, UID);
            assert!(mark.len() <= 100, "{} characters", mark.len());
            assert_eq!(uid_from_dns_comment(installation, &mark), Some(UID));
        }
        assert_eq!(dns_mark(&longest, UID).len(), 93, "the longest installation and a UID");
        assert_eq!(uid_from_tunnel_name("prod", "someone-elses-tunnel"), None);
        assert_eq!(uid_from_dns_comment("prod", "hand-made record"), None);
        assert_eq!(uid_from_dns_comment("prod", "crabglamp:prod:"), None);
    }

    #[test]
    fn one_installation_never_reads_anothers_marks_as_its_own() {
        let theirs = tunnel_name("prod-eu", UID);
        assert!(theirs.starts_with(&tunnel_prefix("prod")), "a tunnel list by prefix returns it");
        assert_eq!(uid_from_tunnel_name("prod", &theirs), None, "but it is not prod's");
        assert_eq!(uid_from_dns_comment("prod", &dns_mark("prod-eu", UID)), None);
        assert_eq!(uid_from_dns_comment("prod-eu", &dns_mark("prod", UID)), None);
        // Marks of today are never legacy marks, and legacy marks are nobody's today.
        assert_eq!(legacy_uid_from_tunnel_name(&tunnel_name("prod", UID)), None);
        assert_eq!(legacy_uid_from_dns_comment(&dns_mark("prod", UID)), None);
        let old_tunnel = format!("crabglamp-{UID}");
        let old_comment = format!("crabglamp:{UID} managed by crabglamp-operator");
        assert_eq!(legacy_uid_from_tunnel_name(&old_tunnel), Some(UID));
        assert_eq!(legacy_uid_from_dns_comment(&old_comment), Some(UID));
        // An installation named like the UID's first group still cannot claim an old tunnel.
        assert_eq!(uid_from_tunnel_name("3f2a9c1e", &old_tunnel), None);
        assert_eq!(uid_from_dns_comment("3f2a9c1e", &old_comment), None);
    }

    #[test]
    fn default_hostnames_fit_a_dns_label_for_every_valid_name() {
        assert_eq!(
            default_hostname("research-bot", "team-a", "agents.example.com"),
            "research-bot-team-a.agents.example.com"
        );
        // Longest valid names: 50 for the object, 63 for the namespace.
        for (n, ns) in [(50, 63), (50, 13), (1, 63), (12, 51), (12, 50)] {
            let name = "n".repeat(n);
            let namespace = "s".repeat(ns);
            let host = default_hostname(&name, &namespace, "example.com");
            let label = host.split('.').next().unwrap_or_default();
            assert!(label.len() <= 63, "{label} is {} long", label.len());
            assert!(!label.ends_with('-') && !label.starts_with('-'));
            assert!(label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
        let a = default_hostname(&"a".repeat(50), &"b".repeat(63), "z.io");
        let b = default_hostname(&"a".repeat(50), &format!("{}c", "b".repeat(62)), "z.io");
        assert_ne!(a, b, "cut labels stay distinct");
        assert!(a.ends_with(".z.io"));
    }
}
