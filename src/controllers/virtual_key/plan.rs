//! What a VirtualKey needs next and what its status says, from what was observed: pure
//! functions, unit-tested below.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::jiff::Timestamp;

use crate::api::virtual_key::{Spend, VirtualKey, VirtualKeyStatus};
use crate::cache::AuthEntry;
use crate::store::keys::{KeyTerms, RetiringKey, VirtualKeyRecord};

use super::decide::*;
use super::runtime::SpendView;
use crate::controllers::reconcile::conditions::{self, Desired};
use crate::controllers::reconcile::lifecycle::{self, Plan, Stall, Wait};

/// What the reconciler knows of one VirtualKey.
#[derive(Clone, Debug)]
pub enum Observed {
    /// Outside the served namespaces (`served`: the list): no key is issued there.
    NotServed {
        served: String,
    },
    Served(Box<KeyObserved>),
}

/// A served VirtualKey's key, terms, spend and rotated-away keys.
#[derive(Clone, Debug)]
pub struct KeyObserved {
    pub terms: KeyTerms,
    pub now: DateTime<Utc>,
    /// The live key's row, if there is one.
    pub live: Option<VirtualKeyRecord>,
    /// Where the live key is, when the Secrets are as they were when it was last checked
    /// there (see `SecretVersions`). `None`: they must be read, and the key found, moved or
    /// issued first.
    pub location: Option<Location>,
    /// The live key's spend this period (when located), with its auth entry as Redis has it.
    pub spend: Option<SpendView>,
    /// Keys rotated away whose auth entries may still be in Redis.
    pub retiring: Vec<RetiringKey>,
    /// Redis's auth entries of those still in their grace (in `retiring`'s order).
    pub grace_held: Vec<Option<String>>,
}

/// Where the live key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub secret_name: String,
    /// Why it is not in the Secret the spec names, if it is not.
    pub refused: Option<String>,
}

/// One step, with the ids it acts on.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Read the Secret the spec names (and the previous one while `spec.secretName` changes),
    /// move the live key there or issue one, record it.
    EnsureKey { secret_name: String, live: Option<Box<VirtualKeyRecord>> },
    /// The row follows the spec's terms; an owner change is one transfer event.
    FollowTerms { key_id: String, transfer_from: Option<String> },
    /// Redis lacks the live key's auth entry or holds another one (a flush heals here);
    /// `view`: the key's spend, whose entry the snapshot then holds.
    Publish { view: Box<SpendView>, entry: Box<AuthEntry>, was_blocked: Option<bool> },
    /// The keys in their rotation grace carry the live key's terms and block.
    PublishGrace { entries: Vec<(String, AuthEntry)> },
    /// A rotated-away key whose grace is over leaves Redis.
    Retire { key_id: String, key_sha256: String },
}

/// Pure: the steps a VirtualKey needs now, and when to look again.
pub fn decide(vk: &VirtualKey, observed: &Observed, resync: Duration) -> Plan<Step> {
    let Observed::Served(o) = observed else { return Plan { steps: Vec::new(), wait: Wait::Change } };
    let uid = vk_uid(vk);
    let uid = uid.as_str();
    let mut steps = Vec::new();
    let (Some(record), Some(_), Some(view)) = (&o.live, &o.location, &o.spend) else {
        let live = o.live.clone().map(Box::new);
        steps.push(Step::EnsureKey { secret_name: secret_name(vk), live });
        return Plan { steps, wait: Wait::Until(resync) };
    };
    if !same_terms(record, &o.terms) {
        let transfer_from = (record.owner != o.terms.owner).then(|| record.owner.clone());
        steps.push(Step::FollowTerms { key_id: record.key_id.clone(), transfer_from });
    }
    let block = block_of(o, view);
    let entry = auth_entry(&record.key_id, uid, &o.terms, block);
    if !holds(view.auth.as_deref(), &entry) {
        let was_blocked =
            view.auth.as_deref().and_then(|a| serde_json::from_str::<AuthEntry>(a).ok()).map(|a| a.blocked);
        steps.push(Step::Publish { view: Box::new(view.clone()), entry: Box::new(entry), was_blocked });
    }
    let stale = entries_to_publish(grace_entries(uid, &o.terms, block, &o.retiring, o.now), &o.grace_held);
    if !stale.is_empty() {
        steps.push(Step::PublishGrace { entries: stale });
    }
    for over in o.retiring.iter().filter(|r| r.revoked_at <= o.now) {
        steps.push(Step::Retire { key_id: over.key_id.clone(), key_sha256: hex::encode(&over.key_sha256) });
    }
    Plan { steps, wait: Wait::Until(next_look(o, resync)) }
}

/// Pure: when to look again: at the expiry time itself or the end of a rotation's grace, not
/// a resync later; the refresher's trigger covers spend, the fallback covers a refresher that
/// keeps failing.
fn next_look(o: &KeyObserved, resync: Duration) -> Duration {
    let next_retirement = super::decide::in_grace(&o.retiring, o.now).map(|r| r.revoked_at).min();
    let mut after = resync.saturating_mul(2);
    for at in [o.terms.expires_at, next_retirement].into_iter().flatten().filter(|e| *e > o.now) {
        let until = (at - o.now).to_std().unwrap_or_default() + Duration::from_millis(50);
        after = after.min(until);
    }
    after
}

/// Pure: whether the proxy must refuse the key, and why.
fn block_of(o: &KeyObserved, view: &SpendView) -> Option<BlockReason> {
    let budget_micros = usd_to_micros(&o.terms.budget_monthly_usd).unwrap_or(0);
    block_reason(o.now, o.terms.expires_at, view.micros, budget_micros)
}

/// Pure: the status that describes what was observed (`stalled`: a permanent error).
pub fn describe(
    vk: &VirtualKey,
    old: &VirtualKeyStatus,
    observed: &Observed,
    stalled: Option<Stall>,
    now: Timestamp,
) -> VirtualKeyStatus {
    let generation = vk.metadata.generation;
    let desired = match observed {
        Observed::NotServed { served } => not_served(served),
        Observed::Served(o) => match (&o.live, &o.location, &o.spend, &stalled) {
            (Some(record), Some(location), Some(view), None) => {
                let budget_micros = usd_to_micros(&o.terms.budget_monthly_usd).unwrap_or(0);
                let block = block_of(o, view);
                let spend_text =
                    format!("{} of {} USD this month", micros_to_usd(view.micros), micros_to_usd(budget_micros));
                let refused = location.refused.clone();
                let published = holds(view.auth.as_deref(), &auth_entry(&record.key_id, &vk_uid(vk), &o.terms, block));
                let names = (record.key_id.as_str(), location.secret_name.as_str());
                let mut desired = key_conditions(names, published, block, (view, &spend_text), refused);
                if lifecycle::paused(vk) {
                    desired.push(not_pausable());
                }
                let next = VirtualKeyStatus {
                    observed_generation: generation,
                    key_id: Some(record.key_id.clone()),
                    prefix: Some(record.prefix.clone()),
                    secret_name: Some(location.secret_name.clone()),
                    spend: Some(Spend { period: view.period.clone(), usd: micros_to_usd(view.micros) }),
                    blocked: Some(block.is_some()),
                    rotation_token: vk.spec.rotation_token.clone(),
                    conditions: conditions::merge(&old.conditions, &desired, generation, now),
                };
                return next;
            }
            (_, _, _, Some((reason, message))) => vec![
                Desired::new("Stalled", true, reason, message.clone()),
                Desired::new("Ready", false, reason, message.clone()),
            ],
            // A key not found yet: what status says stays until it is (a retry names why).
            _ => return old.clone(),
        },
    };
    VirtualKeyStatus {
        observed_generation: generation,
        conditions: conditions::merge(&old.conditions, &desired, generation, now),
        ..old.clone()
    }
}

/// The VirtualKey's UID: its keys' budget id.
fn vk_uid(vk: &VirtualKey) -> String {
    vk.metadata.uid.clone().unwrap_or_default()
}

/// Pure: the conditions of a VirtualKey outside the served namespaces. Stalled: nothing
/// changes until the object moves or the operator's list does (kstatus and Argo CD then call it
/// failed, not progressing).
fn not_served(served: &str) -> Vec<Desired> {
    let message = format!(
        "VirtualKeys are served only in the namespaces {served} (--virtual-key-namespaces, the chart's \
         virtualKeys.namespaces): no key is issued here"
    );
    vec![
        Desired::new("Stalled", true, "NamespaceNotServed", message.clone()),
        Desired::new("Ready", false, "NamespaceNotServed", message),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys;
    use serde_json::json;

    const RESYNC: Duration = Duration::from_secs(300);

    fn vk() -> VirtualKey {
        serde_json::from_value(json!({
            "apiVersion": "crabglamp.com/v1alpha1", "kind": "VirtualKey",
            "metadata": {"name": "k", "namespace": "team-a", "uid": "uid-1", "generation": 1},
            "spec": {"owner": "acct_a", "models": [], "budget": {"monthlyUsd": "1.00"}}
        }))
        .expect("virtual key")
    }

    fn record() -> VirtualKeyRecord {
        super::super::decide::tests::live_record("vk_1", "cgk_abcdefghijkl")
    }

    /// A located key whose entry Redis holds as it should be, at `micros` spent.
    fn settled(micros: i64) -> KeyObserved {
        let vk = vk();
        let terms = terms(&vk).expect("terms");
        let now = Utc::now();
        let entry = auth_entry("vk_1", "uid-1", &terms, block_reason(now, None, micros, 1_000_000));
        let spend = SpendView {
            period: period(now),
            micros,
            key_sha256: hex::encode(record().key_sha256),
            auth: Some(serde_json::to_string(&entry).expect("json")),
            problems: vec![],
        };
        KeyObserved {
            terms,
            now,
            live: Some(record()),
            location: Some(Location { secret_name: "k-key".into(), refused: None }),
            spend: Some(spend),
            retiring: vec![],
            grace_held: vec![],
        }
    }

    fn names(plan: &Plan<Step>) -> Vec<&'static str> {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::EnsureKey { .. } => "ensure_key",
                Step::FollowTerms { .. } => "follow_terms",
                Step::Publish { .. } => "publish",
                Step::PublishGrace { .. } => "publish_grace",
                Step::Retire { .. } => "retire",
            })
            .collect()
    }

    fn decided(o: KeyObserved) -> Plan<Step> {
        decide(&vk(), &Observed::Served(Box::new(o)), RESYNC)
    }

    #[test]
    fn a_settled_key_needs_nothing_until_the_fallback_resync() {
        let p = decided(settled(0));
        assert!(p.steps.is_empty());
        assert_eq!(p.wait, Wait::Until(RESYNC * 2));
        let outside = decide(&vk(), &Observed::NotServed { served: "team-b".into() }, RESYNC);
        assert_eq!(outside, Plan { steps: vec![], wait: Wait::Change });
    }

    #[test]
    fn a_key_not_located_is_found_or_issued_first() {
        let mut o = settled(0);
        o.location = None;
        let p = decided(o);
        let Some(Step::EnsureKey { secret_name, live }) = p.steps.first() else { panic!("{p:?}") };
        assert_eq!((secret_name.as_str(), live.as_ref().map(|l| l.key_id.as_str())), ("k-key", Some("vk_1")));
        let mut o = settled(0);
        o.live = None;
        assert_eq!(names(&decided(o)), ["ensure_key"]);
    }

    #[test]
    fn spend_at_the_budget_publishes_the_block_once() {
        let mut o = settled(0);
        let within = o.spend.clone().expect("spend");
        o.spend = Some(SpendView { micros: 1_000_000, ..within.clone() });
        let p = decided(o.clone());
        let Some(Step::Publish { entry, was_blocked, .. }) = p.steps.first() else { panic!("{p:?}") };
        assert!(entry.blocked);
        assert_eq!(*was_blocked, Some(false));
        o.spend =
            Some(SpendView { micros: 1_000_000, auth: Some(serde_json::to_string(entry).expect("json")), ..within });
        assert!(decided(o).steps.is_empty(), "published: nothing more");
    }

    #[test]
    fn redis_lost_or_garbled_entries_are_published_again() {
        for held in [None, Some("{garbled".to_owned())] {
            let mut o = settled(0);
            o.spend.as_mut().expect("spend").auth = held;
            assert_eq!(names(&decided(o)), ["publish"]);
        }
    }

    #[test]
    fn terms_follow_the_spec_and_an_owner_change_is_a_transfer() {
        let mut o = settled(0);
        o.live.as_mut().expect("live").owner = "acct_z".into();
        let p = decided(o);
        let transfer = Step::FollowTerms { key_id: "vk_1".into(), transfer_from: Some("acct_z".into()) };
        assert_eq!(p.steps.first(), Some(&transfer));
    }

    #[test]
    fn rotated_keys_follow_the_live_terms_in_their_grace_and_leave_after_it() {
        let mut o = settled(0);
        let now = o.now;
        let in_grace = keys::RetiringKey {
            key_id: "vk_0".into(),
            key_sha256: vec![1; 32],
            revoked_at: now + chrono::Duration::seconds(30),
        };
        let over = keys::RetiringKey { key_id: "vk_00".into(), key_sha256: vec![2; 32], revoked_at: now };
        o.retiring = vec![in_grace, over];
        o.grace_held = vec![None];
        let p = decided(o);
        assert_eq!(names(&p), ["publish_grace", "retire"]);
        assert_eq!(p.steps[1], Step::Retire { key_id: "vk_00".into(), key_sha256: hex::encode([2u8; 32]) });
        let Wait::Until(after) = p.wait else { panic!("{p:?}") };
        assert!(after <= Duration::from_secs(31), "looked at again when the grace ends: {after:?}");
    }

    #[test]
    fn status_names_the_key_its_secret_and_a_refused_move() {
        let mut o = settled(0);
        o.location = Some(Location { secret_name: "old".into(), refused: Some("Secret new is not ours".into()) });
        let st = describe(&vk(), &VirtualKeyStatus::default(), &Observed::Served(Box::new(o)), None, Timestamp::now());
        assert_eq!(st.key_id.as_deref(), Some("vk_1"));
        assert_eq!(st.secret_name.as_deref(), Some("old"));
        let stalled = conditions::find(&st.conditions, "Stalled").map(|c| c.reason.as_str());
        assert_eq!(stalled, Some(SECRET_NAME_TAKEN));
    }
}
