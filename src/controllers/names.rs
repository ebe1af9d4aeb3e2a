//! Deterministic outside names and ownership marks derived from an object: the tunnel name,
//! the DNS record's comment mark and the default hostname. Pure functions only: a retry after
//! a crash derives the same names and so finds, never duplicates, what it made.

use sha2::{Digest, Sha256};

/// Every tunnel the operator makes is named `crabglamp-<uid>`.
pub const TUNNEL_PREFIX: &str = "crabglamp-";
/// Every DNS record the operator makes has a comment starting with this, then the UID.
pub const DNS_MARK_PREFIX: &str = "crabglamp:";

/// The tunnel of the object with `uid`.
pub fn tunnel_name(uid: &str) -> String {
    format!("{TUNNEL_PREFIX}{uid}")
}

/// The owner UID in one of our tunnel names.
pub fn uid_from_tunnel_name(name: &str) -> Option<&str> {
    name.strip_prefix(TUNNEL_PREFIX).filter(|uid| looks_like_uid(uid))
}

/// The comment that marks a DNS record as ours: 75 characters, within the free plan's 100.
pub fn dns_mark(uid: &str) -> String {
    format!("{DNS_MARK_PREFIX}{uid} managed by crabglamp-operator")
}

/// The owner UID in one of our DNS comments.
pub fn uid_from_dns_comment(comment: &str) -> Option<&str> {
    let rest = comment.strip_prefix(DNS_MARK_PREFIX)?;
    let uid = rest.split_whitespace().next()?;
    looks_like_uid(uid).then_some(uid)
}

fn looks_like_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
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
        assert_eq!(uid_from_tunnel_name(&tunnel_name(UID)), Some(UID));
        assert_eq!(uid_from_tunnel_name("someone-elses-tunnel"), None);
        let mark = dns_mark(UID);
        assert!(mark.len() <= 100, "{} characters", mark.len());
        assert_eq!(uid_from_dns_comment(&mark), Some(UID));
        assert_eq!(uid_from_dns_comment("hand-made record"), None);
        assert_eq!(uid_from_dns_comment("crabglamp:"), None);
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
