//! The VirtualKey's pure parts: money, periods, terms, auth entries, what to do with a key a
//! Secret holds, and the status it shows. Unit-tested below.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use rand::RngCore;

use crate::api::virtual_key::VirtualKey;
use crate::cache::AuthEntry;
use crate::store::audit::ResourceRef;
use crate::store::keys::{self, KeyTerms, VirtualKeyRecord};

use super::runtime::*;
use crate::controllers::reconcile::conditions::Desired;
use crate::controllers::reconcile::error::ReconcileError;

pub(super) const KIND: &str = "VirtualKey";
/// Holds a VirtualKey until its Redis entry is gone and its revoke event committed.
pub const FINALIZER: &str = "crabglamp.com/virtualkey-revoke";
/// Every key starts with this, so leaked keys are recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "cgk_";
/// The Secret's data key holding the key.
pub const SECRET_DATA_KEY: &str = "apiKey";
/// Annotations on the Secret: which key it holds and for which rotation token. Neither is
/// secret; they make a crash between "Secret written" and "row recorded" recoverable
/// without issuing yet another key.
pub const KEY_ID_ANNOTATION: &str = "crabglamp.com/key-id";
pub const ROTATION_ANNOTATION: &str = "crabglamp.com/rotation-token";
/// The label the controller's Secret watch selects on (it never caches other Secrets).
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "crabglamp-operator");
/// The stall reason while someone else's Secret holds the name the spec asks for.
pub const SECRET_NAME_TAKEN: &str = "SecretNameTaken";
/// Characters of the key shown in status (enough to tell keys apart, far too few to guess).
pub(super) const PREFIX_LEN: usize = 12;

/// `"50.00"` -> 50_000_000 micro-USD. `None` for anything but a plain non-negative decimal
/// with at most 6 fraction digits (so no `NaN`, no exponent, no sign).
pub fn usd_to_micros(usd: &str) -> Option<i64> {
    let (int, frac) = usd.split_once('.').unwrap_or((usd, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 12 || frac.len() > 6 || !digits(int) || !digits(frac) {
        return None;
    }
    let whole: i64 = int.parse().ok()?;
    let frac_micros: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    whole.checked_mul(1_000_000)?.checked_add(frac_micros)
}

/// 1_500_000 -> `"1.50"`; at least two decimals, at most six, no trailing zeros beyond two.
pub fn micros_to_usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let frac = format!("{:06}", m % 1_000_000);
    let trimmed = frac.trim_end_matches('0');
    let shown = if trimmed.len() < 2 { &frac[..2] } else { trimmed };
    format!("{sign}{}.{shown}", m / 1_000_000)
}

/// `YYYY-MM` of a time (the billing period, calendar month UTC).
pub fn period(now: DateTime<Utc>) -> String {
    now.format("%Y-%m").to_string()
}

/// Why the proxy must refuse a key, if it must.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    Expired,
    BudgetExceeded,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Expired => "Expired",
            BlockReason::BudgetExceeded => "BudgetExceeded",
        }
    }
}

/// The budget judgement: expired first (it cannot be lifted by money), then spend >= budget.
pub fn block_reason(
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    spend_micros: i64,
    budget_micros: i64,
) -> Option<BlockReason> {
    if expires_at.is_some_and(|t| t <= now) {
        Some(BlockReason::Expired)
    } else if spend_micros >= budget_micros {
        Some(BlockReason::BudgetExceeded)
    } else {
        None
    }
}

/// A newly generated key: 256 bits from a CSPRNG, base64url, after [`KEY_PREFIX`].
pub struct IssuedKey {
    pub key: String,
    pub key_id: String,
}

impl std::fmt::Debug for IssuedKey {
    // The key must never reach a log line, not even through a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

pub fn generate_key() -> IssuedKey {
    use base64::Engine;
    // `rand::rng()` is a ChaCha CSPRNG seeded (and reseeded) from the operating system.
    let mut rng = rand::rng();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let mut id = [0u8; 10];
    rng.fill_bytes(&mut id);
    IssuedKey {
        key: format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)),
        key_id: format!("vk_{}", hex::encode(id)),
    }
}

/// The Secret's name: `spec.secretName` or `<name>-key`.
pub fn secret_name(vk: &VirtualKey) -> String {
    vk.spec.secret_name.clone().unwrap_or_else(|| format!("{}-key", vk.name_any()))
}

pub(super) fn parse_expiry(vk: &VirtualKey) -> Result<Option<DateTime<Utc>>, ReconcileError> {
    vk.spec
        .expires_at
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ReconcileError::InvalidSpec("spec.expiresAt is not an RFC 3339 time".into()))
        })
        .transpose()
}

pub(super) fn terms(vk: &VirtualKey) -> Result<KeyTerms, ReconcileError> {
    if usd_to_micros(&vk.spec.budget.monthly_usd).is_none() {
        return Err(ReconcileError::InvalidSpec("spec.budget.monthlyUsd is not a non-negative decimal".into()));
    }
    Ok(KeyTerms {
        owner: vk.spec.owner.clone(),
        models: vk.spec.models.clone(),
        budget_monthly_usd: vk.spec.budget.monthly_usd.clone(),
        rate_limit_rpm: vk.spec.rate_limit.as_ref().map(|r| r.requests_per_minute),
        expires_at: parse_expiry(vk)?,
    })
}

pub(super) fn same_terms(record: &VirtualKeyRecord, t: &KeyTerms) -> bool {
    record.owner == t.owner
        && record.models == t.models
        && usd_to_micros(&record.budget_monthly_usd) == usd_to_micros(&t.budget_monthly_usd)
        && record.rate_limit_rpm == t.rate_limit_rpm
        && record.expires_at == t.expires_at.map(|x| chrono::SubsecRound::trunc_subsecs(x, 6))
}

/// The auth entry for a key with these terms.
pub fn auth_entry(key_id: &str, budget_id: &str, t: &KeyTerms, block: Option<BlockReason>) -> AuthEntry {
    AuthEntry {
        v: 1,
        key_id: key_id.to_owned(),
        budget_id: budget_id.to_owned(),
        owner: t.owner.clone(),
        models: t.models.clone(),
        rate_limit_rpm: t.rate_limit_rpm,
        expires_at: t.expires_at.map(|x| x.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        blocked: block.is_some(),
        blocked_reason: block.map(|b| b.as_str().to_owned()),
    }
}

/// The auth entries of the keys still in their rotation grace at `now`, `(sha256 hex, entry)`:
/// each carries the live key's terms and block under its own key id (its budget is the same
/// VirtualKey's), so an old key is never laxer than the new one. Keys whose grace is over get
/// none: they are removed.
pub fn grace_entries(
    budget_id: &str,
    t: &KeyTerms,
    block: Option<BlockReason>,
    retiring: &[keys::RetiringKey],
    now: DateTime<Utc>,
) -> Vec<(String, AuthEntry)> {
    in_grace(retiring, now).map(|r| (hex::encode(&r.key_sha256), auth_entry(&r.key_id, budget_id, t, block))).collect()
}

/// The rotated-away keys still in their grace period at `now`.
pub fn in_grace(retiring: &[keys::RetiringKey], now: DateTime<Utc>) -> impl Iterator<Item = &keys::RetiringKey> {
    retiring.iter().filter(move |r| r.revoked_at > now)
}

/// Whether Redis holds `entry` as it should be (`held`: its value; one it cannot read is not).
pub fn holds(held: Option<&str>, entry: &AuthEntry) -> bool {
    held.and_then(|h| serde_json::from_str::<AuthEntry>(h).ok()).as_ref() == Some(entry)
}

/// Of the `desired` entries, the ones Redis does not hold as they are (`held`: what Redis
/// holds, in the same order): those, and only those, are written.
pub fn entries_to_publish(desired: Vec<(String, AuthEntry)>, held: &[Option<String>]) -> Vec<(String, AuthEntry)> {
    desired
        .into_iter()
        .zip(held.iter().map(Option::as_deref).chain(std::iter::repeat(None)))
        .filter(|((_, want), have)| !holds(*have, want))
        .map(|(entry, _)| entry)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reconcile.

pub(super) struct SecretKey {
    pub(super) key: String,
    pub(super) key_id: String,
    pub(super) rotation: Option<String>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// The key in a Secret we own, if it holds a well-formed one.
pub(super) fn key_in_secret(secret: &Secret, uid: &str) -> Option<SecretKey> {
    let owned = secret.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true));
    if !owned {
        return None;
    }
    let raw = secret.data.as_ref()?.get(SECRET_DATA_KEY)?;
    let key = String::from_utf8(raw.0.clone()).ok().filter(|k| k.starts_with(KEY_PREFIX) && k.len() > 40)?;
    let ann = secret.annotations();
    Some(SecretKey {
        key,
        key_id: ann.get(KEY_ID_ANNOTATION)?.clone(),
        rotation: ann.get(ROTATION_ANNOTATION).cloned(),
    })
}

pub(super) fn resource_ref(vk: &VirtualKey, uid: &str) -> ResourceRef {
    ResourceRef {
        kind: KIND.into(),
        namespace: vk.namespace().unwrap_or_default(),
        name: vk.name_any(),
        uid: uid.into(),
    }
}

/// What a reconcile does about the key, given what the spec's Secret (`target`) and, while
/// `spec.secretName` changes, the previous Secret hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyPlan {
    /// The spec's Secret holds the key to use (the live one, or one written but not recorded).
    Keep,
    /// The previous Secret holds the live key: the same key goes to the spec's Secret.
    Move,
    /// No usable key, a rotation asked for, or a key that is not the one recorded under its id.
    Issue,
}

/// Whether a Secret's key is the live one: its id and its hash.
pub(super) fn holds_live(held: &SecretKey, live: Option<&VirtualKeyRecord>) -> bool {
    live.is_some_and(|l| l.key_id == held.key_id && keys::key_sha256(&held.key)[..] == l.key_sha256[..])
}

/// The Secret is the source of truth for which key is current; a new one is issued only when
/// neither Secret holds a usable one or a rotation was asked for. The previous Secret counts
/// only with the live key in it: that key moves rather than being replaced.
pub(super) fn plan_key(
    target: Option<&SecretKey>,
    previous: Option<&SecretKey>,
    live: Option<&VirtualKeyRecord>,
    rotation_token: Option<&str>,
) -> KeyPlan {
    let current = |h: &SecretKey| h.rotation.as_deref() == rotation_token;
    match (target, previous) {
        (Some(h), _) if holds_live(h, live) => {
            if current(h) {
                KeyPlan::Keep
            } else {
                KeyPlan::Issue
            }
        }
        (_, Some(p)) if holds_live(p, live) => {
            if current(p) {
                KeyPlan::Move
            } else {
                KeyPlan::Issue
            }
        }
        (Some(h), _) => {
            // Under the live key's id but another hash: planted or corrupted, never recorded.
            let tampered = live.is_some_and(|l| l.key_id == h.key_id);
            if tampered || !current(h) { KeyPlan::Issue } else { KeyPlan::Keep }
        }
        (None, _) => KeyPlan::Issue,
    }
}

/// Whether the last refresh could read all of the key's usage. When it could not, the key is
/// judged on the last good spend (the condition says which), and its other values still count.
pub(super) fn usage_read(view: &SpendView, spend_text: &str) -> Desired {
    match view.problems.first() {
        None => Desired::new("UsageRead", true, "Read", "The key's usage in Redis was read"),
        Some(first) => {
            let what: Vec<&str> = view.problems.iter().map(|p| p.as_str()).collect();
            Desired::new(
                "UsageRead",
                false,
                first.as_str(),
                format!(
                    "Part of the key's usage in Redis could not be read ({}): those values are skipped, \
                     and the key is judged on its last good spend ({spend_text})",
                    what.join(", ")
                ),
            )
        }
    }
}

/// Whether VirtualKeys in `namespace` are served: in every namespace without a list (Secrets
/// watched cluster-wide), else in the listed ones only, where the chart binds Secret access.
pub fn serves(namespaces: Option<&[String]>, namespace: &str) -> bool {
    namespaces.is_none_or(|list| list.iter().any(|n| n == namespace))
}

/// A VirtualKey's phase for the objects gauge: `Blocked`, `Active` (a live key) or `Pending`.
pub(super) fn phase_name(vk: &VirtualKey) -> String {
    let status = vk.status.as_ref();
    let phase = if status.and_then(|s| s.blocked) == Some(true) {
        "Blocked"
    } else if status.and_then(|s| s.key_id.as_ref()).is_some() {
        "Active"
    } else {
        "Pending"
    };
    phase.to_owned()
}

/// The conditions a VirtualKey's status shows: its key, budget, expiry, usage read, readiness,
/// and a refused `spec.secretName` change (the key works on from its Secret, and the status
/// says the spec is not followed: kstatus and Argo CD then call it failed, not progressing).
/// `published`: whether Redis holds the key's auth entry as it should be (a publish that
/// failed leaves the key not ready, whatever its budget).
pub fn key_conditions(
    (key_id, secret_name): (&str, &str),
    published: bool,
    block: Option<BlockReason>,
    (view, spend_text): (&SpendView, &str),
    refused: Option<String>,
) -> Vec<Desired> {
    let key_ready = if published {
        Desired::new(
            "KeyReady",
            true,
            "Published",
            format!("Key {key_id} is in Secret {secret_name} and published to the proxy"),
        )
    } else {
        Desired::new(
            "KeyReady",
            false,
            "Publishing",
            format!("Key {key_id} is in Secret {secret_name}; its entry is being published to the proxy"),
        )
    };
    let desired = [
        key_ready,
        match block {
            Some(BlockReason::BudgetExceeded) => {
                Desired::new("BudgetExceeded", true, "BudgetReached", format!("Spend reached the budget: {spend_text}"))
            }
            _ => Desired::new("BudgetExceeded", false, "WithinBudget", spend_text.to_owned()),
        },
        match block {
            Some(BlockReason::Expired) => Desired::new("Expired", true, "Expired", "The key's expiry time has passed"),
            _ => Desired::new("Expired", false, "NotExpired", "The key has not expired"),
        },
        usage_read(view, spend_text),
        match block {
            Some(r) => Desired::new("Ready", false, r.as_str(), format!("The proxy refuses the key: {}", r.as_str())),
            None if !published => {
                Desired::new("Ready", false, "Publishing", "The key's entry is being published to the proxy")
            }
            None => Desired::new("Ready", true, "Ready", "The key is published and within its budget"),
        },
    ];
    desired.into_iter().chain(refused.map(|why| Desired::new("Stalled", true, SECRET_NAME_TAKEN, why))).collect()
}

/// Pure: the condition a VirtualKey carrying the pause annotation shows: the annotation holds
/// the other kinds, never a key (its budget and expiry are kept while it exists).
pub fn not_pausable() -> Desired {
    Desired::new(
        "Paused",
        false,
        "NotPausable",
        "A VirtualKey is never paused: its budget and expiry are enforced while it exists (the annotation has no effect)",
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn money_parses_exactly_and_refuses_nan() {
        assert_eq!(usd_to_micros("50.00"), Some(50_000_000));
        assert_eq!(usd_to_micros("0.000001"), Some(1));
        assert_eq!(usd_to_micros("12"), Some(12_000_000));
        for bad in ["NaN", "-1", "1e3", "", ".5", "1.0000001", "inf"] {
            assert_eq!(usd_to_micros(bad), None, "{bad}");
        }
        assert_eq!(micros_to_usd(1_500_000), "1.50");
        assert_eq!(micros_to_usd(123), "0.000123");
        assert_eq!(micros_to_usd(0), "0.00");
    }

    #[test]
    fn only_listed_namespaces_are_served_when_there_is_a_list() {
        assert!(serves(None, "anywhere"));
        let list = vec!["team-a".to_owned(), "team-b".to_owned()];
        assert!(serves(Some(&list), "team-a"));
        assert!(serves(Some(&list), "team-b"));
        assert!(!serves(Some(&list), "team-c"));
        assert!(!serves(Some(&[]), "team-a"), "an empty list serves nothing");
    }

    #[test]
    fn expiry_beats_budget_and_spend_at_budget_blocks() {
        let now = Utc::now();
        assert_eq!(block_reason(now, None, 9, 10), None);
        assert_eq!(block_reason(now, None, 10, 10), Some(BlockReason::BudgetExceeded));
        assert_eq!(block_reason(now, Some(now), 0, 10), Some(BlockReason::Expired));
        assert_eq!(
            block_reason(now, Some(now + chrono::Duration::seconds(1)), 11, 10),
            Some(BlockReason::BudgetExceeded)
        );
    }

    #[test]
    fn keys_are_256_bit_and_prefixed_and_never_debug_printed() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.key.starts_with(KEY_PREFIX));
        assert_eq!(a.key.len(), KEY_PREFIX.len() + 43, "32 bytes in unpadded base64url");
        assert_ne!(a.key, b.key);
        assert!(!format!("{a:?}").contains(&a.key));
    }

    fn terms_for_test() -> KeyTerms {
        KeyTerms {
            owner: "acct_b".into(),
            models: vec!["claude-*".into()],
            budget_monthly_usd: "1.00".into(),
            rate_limit_rpm: Some(7),
            expires_at: None,
        }
    }

    fn retiring(id: &str, byte: u8, revoked_at: DateTime<Utc>) -> keys::RetiringKey {
        keys::RetiringKey { key_id: id.into(), key_sha256: vec![byte; 32], revoked_at }
    }

    #[test]
    fn keys_in_their_grace_carry_the_live_terms_and_block_and_keys_past_it_none() {
        let now = Utc::now();
        let t = terms_for_test();
        let later = now + chrono::Duration::seconds(60);
        let keys = [retiring("vk_old", 1, later), retiring("vk_over", 2, now), retiring("vk_older", 3, later)];
        let entries = grace_entries("uid-1", &t, Some(BlockReason::BudgetExceeded), &keys, now);
        let hashes: Vec<&str> = entries.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hashes, [hex::encode([1u8; 32]), hex::encode([3u8; 32])], "the grace over at `now` is over");
        let entry = entries[0].1.clone();
        let live = auth_entry("vk_new", "uid-1", &t, Some(BlockReason::BudgetExceeded));
        assert_eq!(entry, AuthEntry { key_id: "vk_old".into(), ..live }, "only the key id differs");
        assert!(grace_entries("uid-1", &t, None, &[], now).is_empty());
    }

    #[test]
    fn only_entries_redis_lost_or_holds_otherwise_are_written() {
        let t = terms_for_test();
        let entry = |id: &str| auth_entry(id, "uid-1", &t, None);
        let json = |e: &AuthEntry| serde_json::to_string(e).expect("json");
        let desired = vec![("a".to_owned(), entry("A")), ("b".into(), entry("B")), ("c".into(), entry("C"))];
        let laxer = AuthEntry { rate_limit_rpm: Some(1000), ..entry("C") };
        let held = [Some(json(&entry("A"))), None, Some(json(&laxer))];
        assert_eq!(entries_to_publish(desired.clone(), &held), desired[1..].to_vec());
        assert_eq!(
            entries_to_publish(desired[..1].to_vec(), &[Some("{not json".to_owned())]),
            desired[..1].to_vec(),
            "an entry Redis holds unreadable is written again"
        );
        let all_held: Vec<Option<String>> = desired.iter().map(|(_, e)| Some(json(e))).collect();
        assert!(entries_to_publish(desired.clone(), &all_held).is_empty(), "nothing changed, nothing written");
        assert_eq!(entries_to_publish(desired.clone(), &[]), desired, "an answer too short writes the rest");
    }

    fn held(key_id: &str, key: &str, rotation: Option<&str>) -> SecretKey {
        SecretKey { key: key.into(), key_id: key_id.into(), rotation: rotation.map(str::to_owned) }
    }

    pub(in crate::controllers::virtual_key) fn live_record(key_id: &str, key: &str) -> VirtualKeyRecord {
        VirtualKeyRecord {
            key_id: key_id.into(),
            resource_uid: "uid-1".into(),
            owner: "acct_a".into(),
            key_sha256: keys::key_sha256(key).to_vec(),
            prefix: key.chars().take(PREFIX_LEN).collect(),
            models: vec![],
            budget_monthly_usd: "1.00".into(),
            rate_limit_rpm: None,
            expires_at: None,
            created_at: Utc::now(),
            revoked_at: None,
        }
    }

    #[test]
    fn the_live_key_moves_to_the_new_secret_and_is_replaced_only_when_it_must_be() {
        let live = live_record("vk_1", "cgk_live");
        let l = Some(&live);
        let live_held = held("vk_1", "cgk_live", None);
        let planted = held("vk_1", "cgk_planted", None);
        let unrecorded = held("vk_2", "cgk_new", None);
        // No move.
        assert_eq!(plan_key(Some(&live_held), None, l, None), KeyPlan::Keep);
        assert_eq!(plan_key(Some(&live_held), None, l, Some("r2")), KeyPlan::Issue, "a rotation asked");
        assert_eq!(plan_key(Some(&planted), None, l, None), KeyPlan::Issue, "another key under the live id");
        assert_eq!(plan_key(Some(&unrecorded), None, l, None), KeyPlan::Keep, "written, not yet recorded");
        assert_eq!(plan_key(None, None, l, None), KeyPlan::Issue);
        assert_eq!(plan_key(None, None, None, None), KeyPlan::Issue);
        // A move: the same key, unless a rotation is asked at the same time.
        assert_eq!(plan_key(None, Some(&live_held), l, None), KeyPlan::Move);
        assert_eq!(plan_key(Some(&unrecorded), Some(&live_held), l, None), KeyPlan::Move, "the live key wins");
        assert_eq!(plan_key(None, Some(&live_held), l, Some("r2")), KeyPlan::Issue);
        assert_eq!(plan_key(Some(&live_held), Some(&live_held), l, None), KeyPlan::Keep, "moved, not yet deleted");
        // The previous Secret without the live key (deleted, edited): nothing to move.
        assert_eq!(plan_key(None, Some(&planted), l, None), KeyPlan::Issue);
    }
}
