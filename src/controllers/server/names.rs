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

/// The longest DNS label.
const MAX_LABEL: usize = 63;
/// Hex digits of the hash that ends a label too long or too odd to be `<name>--<namespace>`.
const HASH_DIGITS: usize = 12;

/// The default hostname of an object: `<name>--<namespace>.<zone>`, or, when that label would
/// not fit 63 characters, would hold `--` elsewhere, or would have `--` in its third and
/// fourth characters (reserved for IDNA), `<name>-<namespace>` with runs of `-` made single,
/// cut, then `-` and 12 hex digits of SHA-256 of `<namespace>/<name>`.
///
/// Distinct objects get distinct hostnames: a `<name>--<namespace>` label is read back by its
/// first `--` (a name has none and ends in a letter or digit), and a hashed label has no `--`
/// at all, so the two forms never meet. Hashed labels of two objects meet only if 48 bits of
/// SHA-256 do (no scheme can do better: there are more valid pairs than 63-character labels).
/// An Agent published under the earlier scheme keeps its hostname: see
/// [`settled_default_hostname`].
pub fn default_hostname(name: &str, namespace: &str, zone: &str) -> String {
    format!("{}.{}", default_label(name, namespace), zone.trim_end_matches('.'))
}

fn default_label(name: &str, namespace: &str) -> String {
    let exact = format!("{name}--{namespace}");
    if exact.len() <= MAX_LABEL && !name.contains("--") && !namespace.contains("--") && name.len() != 2 {
        return exact;
    }
    let mut joined = String::with_capacity(name.len() + namespace.len() + 1);
    for c in format!("{name}-{namespace}").chars() {
        if !(c == '-' && joined.ends_with('-')) {
            joined.push(c);
        }
    }
    joined.truncate(MAX_LABEL - 1 - HASH_DIGITS);
    let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}", joined.trim_end_matches('-'), &hash[..HASH_DIGITS])
}

/// The default hostname before `--` separated name and namespace (`a` in `b-c` and `a-b` in
/// `c` shared `a-b-c`): kept only for Agents already published under it.
pub fn legacy_default_hostname(name: &str, namespace: &str, zone: &str) -> String {
    let label = format!("{name}-{namespace}");
    let label = if label.len() <= MAX_LABEL {
        label
    } else {
        let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
        let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let keep = label[..54].trim_end_matches('-');
        format!("{keep}-{hash}")
    };
    format!("{label}.{}", zone.trim_end_matches('.'))
}

/// The default hostname of an object whose status records `published` as its hostname: one
/// published under the earlier scheme stays where it is (an upgrade must not move a name
/// people use); any other gets [`default_hostname`]. `published` is `None` when nothing holds
/// the name for the object (a hostname refused because someone else's record holds it moves
/// to the new scheme, where it is its own).
pub fn settled_default_hostname(name: &str, namespace: &str, zone: &str, published: Option<&str>) -> String {
    let legacy = legacy_default_hostname(name, namespace, zone);
    if published == Some(legacy.as_str()) { legacy } else { default_hostname(name, namespace, zone) }
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
        let longest = "p".repeat(crate::controllers::server::installation::MAX_LEN);
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
            "research-bot--team-a.agents.example.com"
        );
        // Longest valid names: 50 for the object, 63 for the namespace.
        for (n, ns) in [(50, 63), (50, 13), (1, 63), (12, 51), (12, 50), (2, 5), (1, 1)] {
            let name = "n".repeat(n);
            let namespace = "s".repeat(ns);
            let host = default_hostname(&name, &namespace, "example.com");
            let label = host.split('.').next().unwrap_or_default();
            assert!(valid_label(label), "{label} ({} long)", label.len());
        }
        let a = default_hostname(&"a".repeat(50), &"b".repeat(63), "z.io");
        let b = default_hostname(&"a".repeat(50), &format!("{}c", "b".repeat(62)), "z.io");
        assert_ne!(a, b, "cut labels stay distinct");
        assert!(a.ends_with(".z.io"));
    }

    #[test]
    fn names_and_namespaces_that_joined_the_same_get_different_hostnames() {
        let a = default_hostname("a", "b-c", "z.io");
        let b = default_hostname("a-b", "c", "z.io");
        assert_ne!(a, b);
        assert_eq!((a.as_str(), b.as_str()), ("a--b-c.z.io", "a-b--c.z.io"));
        // The earlier scheme gave both `a-b-c`.
        assert_eq!(legacy_default_hostname("a", "b-c", "z.io"), legacy_default_hostname("a-b", "c", "z.io"));
        // `--` inside a name or a namespace, and a two-character name, take the hashed form.
        for (n, ns) in [("a--b", "c"), ("a", "b--c"), ("ab", "c")] {
            let label = default_label(n, ns);
            assert!(!label.contains("--") && valid_label(&label), "{label}");
        }
        assert_ne!(default_label("a--b", "c"), default_label("a", "b--c"));
    }

    /// A DNS label as Cloudflare and browsers take it: 1 to 63 of `[a-z0-9-]`, no `-` at either
    /// end, no `--` in the third and fourth characters.
    fn valid_label(label: &str) -> bool {
        (1..=MAX_LABEL).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.get(2..4) != Some("--")
    }

    /// Every valid name or namespace of up to `max` characters over a few letters and `-`,
    /// hyphen runs included: what makes `-` joins ambiguous.
    fn dns_labels(max: usize) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let mut layer = vec![String::new()];
        for _ in 0..max {
            let mut next = Vec::new();
            for prefix in &layer {
                for c in ['a', 'b', '-'] {
                    next.push(format!("{prefix}{c}"));
                }
            }
            all.extend(next.iter().filter(|l| !l.starts_with('-') && !l.ends_with('-')).cloned());
            layer = next;
        }
        all
    }

    /// A valid label of 1 to `max` characters over {a, b, -}, drawn from `next`.
    fn generated_label(max: usize, next: &mut impl FnMut(usize) -> usize) -> String {
        let len = 1 + next(max);
        let mut label: String = (0..len).map(|_| ['a', 'b', '-'][next(3)]).collect();
        label.replace_range(0..1, "a");
        if label.ends_with('-') {
            label.pop();
            label.push('b');
        }
        label
    }

    #[test]
    fn default_hostnames_are_injective_over_every_small_pair_and_many_long_ones() {
        use std::collections::HashMap;
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        let mut check = |name: &str, namespace: &str| {
            let host = default_hostname(name, namespace, "z.io");
            let label = host.strip_suffix(".z.io").unwrap_or_default();
            assert!(valid_label(label), "{name}/{namespace}: {label}");
            if let Some(other) = seen.insert(host.clone(), (name.to_owned(), namespace.to_owned())) {
                assert_eq!(other, (name.to_owned(), namespace.to_owned()), "{host} twice");
            }
        };
        // Exhaustive: every pair of labels of up to 6 characters over {a, b, -}.
        let small = dns_labels(6);
        for name in &small {
            for namespace in &small {
                check(name, namespace);
            }
        }
        // Generated: long pairs around the 63-character boundary, from a fixed-seed xorshift.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for _ in 0..50_000 {
            let name = generated_label(50, &mut next);
            let namespace = generated_label(63, &mut next);
            check(&name, &namespace);
        }
        assert!(seen.len() > 100_000, "{} pairs", seen.len());
    }

    #[test]
    fn an_agent_published_under_the_earlier_scheme_keeps_its_hostname() {
        let legacy = legacy_default_hostname("research-bot", "team-a", "z.io");
        assert_eq!(legacy, "research-bot-team-a.z.io");
        assert_eq!(settled_default_hostname("research-bot", "team-a", "z.io", Some(&legacy)), legacy);
        let new = default_hostname("research-bot", "team-a", "z.io");
        for published in [None, Some(new.as_str()), Some("elsewhere.z.io")] {
            assert_eq!(settled_default_hostname("research-bot", "team-a", "z.io", published), new, "{published:?}");
        }
    }
}
