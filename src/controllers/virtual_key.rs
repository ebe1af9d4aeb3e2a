//! The VirtualKey controller: the only writer of LLM-proxy keys. It issues a key once (into a
//! Secret the VirtualKey owns), records its SHA-256 and terms in PostgreSQL, publishes the
//! auth entry to Redis (see [`crate::cache`] for the contract), watches the spend and blocks
//! the key when its budget or lifetime is over. It must never log, record or report the key
//! itself: only the Secret holds it.
//!
//! Spend is read by one refresher per resync for all keys at once, in batched round trips
//! ([`refresh_spend`]), copied into PostgreSQL's daily aggregates and restored from them when
//! Redis lost it; reconciles read the refresher's snapshot, so an idle resync of N keys costs
//! N/batch Redis round trips, not N.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use rand::RngCore;
use serde_json::json;
use tracing::Instrument;

use crate::api::virtual_key::{Spend, VirtualKey, VirtualKeyStatus};
use crate::cache::{AuthEntry, CacheError, KeyCache, UsageProblem};
use crate::store::audit::{self, AuditKind, NewAuditEvent, ResourceRef};
use crate::store::keys::{self, KeyTerms, NewVirtualKey, VirtualKeyRecord};

use super::conditions::{self, Desired};
use super::secret_versions::{Checked, SecretVersions};
use super::spend_refresh;
pub use super::spend_refresh::{RefreshStats, refresh_spend};
use super::status_patch::status_merge_patch;
use super::{AbortOnDrop, Context, ReconcileError};

const KIND: &str = "VirtualKey";
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
/// Characters of the key shown in status (enough to tell keys apart, far too few to guess).
const PREFIX_LEN: usize = 12;

/// The refresher's view of one key's spend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendView {
    /// `YYYY-MM`.
    pub period: String,
    /// Micro-USD this period.
    pub micros: i64,
    /// SHA-256 hex of the key whose auth entry was read.
    pub key_sha256: String,
    /// The auth entry as Redis had it (None: missing, to be re-published).
    pub auth: Option<String>,
    /// What could not be read of this key's usage in the last refresh (empty: all of it).
    pub problems: Vec<UsageProblem>,
}

/// Passes a key whose usage hashes outlasted the deadline is read without them before it is
/// tried in full again.
pub const SLOW_RETRY_PASSES: u32 = 12;

/// The VirtualKey controller's share of the context: the Redis clients and the spend snapshot.
pub struct KeyRuntime {
    /// Reconciles' reads and writes (small, quick).
    pub cache: KeyCache,
    /// The refresher's own connection: its large batched reads never queue a reconcile's
    /// publish behind them (replaced by a new one after an answer outlasted the deadline).
    refresh_cache: Mutex<KeyCache>,
    snapshot: Mutex<HashMap<String, SpendView>>,
    refreshed_tx: futures::channel::mpsc::UnboundedSender<()>,
    refreshed_rx: Mutex<Option<futures::channel::mpsc::UnboundedReceiver<()>>>,
    /// Keys per Redis round trip, at most.
    pub batch: usize,
    /// Keys per round trip that last fit the response deadline (halved on a timeout, grown
    /// back after a pass without one).
    batch_now: AtomicUsize,
    /// Budget ids whose usage hashes outlasted the deadline, with the passes until their next
    /// full read.
    slow: Mutex<HashMap<String, u32>>,
    /// Which Secrets changed since their key was checked (a settled key is not read again).
    pub secrets: SecretVersions,
}

impl KeyRuntime {
    pub fn new(cache: KeyCache, refresh_cache: KeyCache, batch: usize) -> Self {
        let (refreshed_tx, rx) = futures::channel::mpsc::unbounded();
        KeyRuntime {
            cache,
            refresh_cache: Mutex::new(refresh_cache),
            snapshot: Mutex::default(),
            refreshed_tx,
            refreshed_rx: Mutex::new(Some(rx)),
            batch: batch.max(1),
            batch_now: AtomicUsize::new(batch.max(1)),
            slow: Mutex::default(),
            secrets: SecretVersions::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, SpendView>) -> R) -> R {
        f(&mut self.snapshot.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn with_slow<R>(&self, f: impl FnOnce(&mut HashMap<String, u32>) -> R) -> R {
        f(&mut self.slow.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The refresher's Redis client.
    pub fn refresh_cache(&self) -> KeyCache {
        self.refresh_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(super) fn set_refresh_cache(&self, cache: KeyCache) {
        *self.refresh_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = cache;
    }

    /// The snapshot entry of a VirtualKey (by UID).
    pub fn spend(&self, budget_id: &str) -> Option<SpendView> {
        self.with(|m| m.get(budget_id).cloned())
    }

    pub(super) fn remember(&self, budget_id: &str, view: SpendView) {
        self.with(|m| m.insert(budget_id.to_owned(), view));
    }

    pub(super) fn replace_snapshot(&self, fresh: HashMap<String, SpendView>) {
        self.with(|m| *m = fresh);
    }

    /// Wakes every VirtualKey's reconcile (a pass is done).
    pub(super) fn refreshed(&self) {
        let _ = self.refreshed_tx.unbounded_send(());
    }

    /// Keys per round trip for the next reads.
    pub fn batch_now(&self) -> usize {
        self.batch_now.load(Ordering::Relaxed).clamp(1, self.batch)
    }

    pub(super) fn shrink_batch(&self, fits: usize) {
        self.batch_now.fetch_min(fits.max(1), Ordering::Relaxed);
    }

    pub(super) fn grow_batch(&self) {
        let next = self.batch_now().saturating_mul(2).min(self.batch);
        self.batch_now.store(next, Ordering::Relaxed);
    }

    /// Whether this pass reads the key without its usage hashes (counts the pass down: every
    /// [`SLOW_RETRY_PASSES`]th pass reads it fully again, and a success makes it normal).
    pub(super) fn read_without_usage(&self, budget_id: &str) -> bool {
        self.with_slow(|s| match s.get_mut(budget_id) {
            Some(0) => {
                s.remove(budget_id);
                false
            }
            Some(left) => {
                *left -= 1;
                true
            }
            None => false,
        })
    }

    pub(super) fn slow(&self, budget_id: &str) {
        self.with_slow(|s| s.insert(budget_id.to_owned(), SLOW_RETRY_PASSES));
    }
}

pub(super) fn runtime(ctx: &Context) -> Result<&KeyRuntime, ReconcileError> {
    ctx.virtual_keys.as_ref().ok_or(ReconcileError::NotReady("a Redis connection (REDIS_URL)"))
}

// ---------------------------------------------------------------------------------------
// Pure parts: money, time, decisions.

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

fn parse_expiry(vk: &VirtualKey) -> Result<Option<DateTime<Utc>>, ReconcileError> {
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

fn terms(vk: &VirtualKey) -> Result<KeyTerms, ReconcileError> {
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

fn same_terms(record: &VirtualKeyRecord, t: &KeyTerms) -> bool {
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

/// The auth entries of the keys still in their rotation grace at `now`, `(sha256 hex, JSON)`:
/// each carries the live key's terms and block under its own key id (its budget is the same
/// VirtualKey's), so an old key is never laxer than the new one. Keys whose grace is over get
/// none: they are removed.
pub fn grace_entries(
    budget_id: &str,
    t: &KeyTerms,
    block: Option<BlockReason>,
    retiring: &[keys::RetiringKey],
    now: DateTime<Utc>,
) -> Result<Vec<(String, String)>, ReconcileError> {
    retiring
        .iter()
        .filter(|r| r.revoked_at > now)
        .map(|r| {
            let entry = serde_json::to_string(&auth_entry(&r.key_id, budget_id, t, block))
                .map_err(|_| ReconcileError::Decode("an auth entry"))?;
            Ok((hex::encode(&r.key_sha256), entry))
        })
        .collect()
}

/// Of the `desired` entries, the ones Redis does not hold as they are (`held`: what Redis
/// holds, in the same order): those, and only those, are written.
pub fn entries_to_publish(desired: Vec<(String, String)>, held: &[Option<String>]) -> Vec<(String, String)> {
    desired
        .into_iter()
        .zip(held.iter().map(Option::as_deref).chain(std::iter::repeat(None)))
        .filter(|((_, want), have)| *have != Some(want.as_str()))
        .map(|(entry, _)| entry)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reconcile.

struct SecretKey {
    key: String,
    key_id: String,
    rotation: Option<String>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// The key in a Secret we own, if it holds a well-formed one.
fn key_in_secret(secret: &Secret, uid: &str) -> Option<SecretKey> {
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

fn resource_ref(vk: &VirtualKey, uid: &str) -> ResourceRef {
    ResourceRef {
        kind: KIND.into(),
        namespace: vk.namespace().unwrap_or_default(),
        name: vk.name_any(),
        uid: uid.into(),
    }
}

/// Writes `held` into the Secret `name` (`existing`: its current version, if there is one).
/// `copy_of`: the Secret a key moves out of, whose labels and annotations come along.
async fn write_secret(
    ctx: &Context,
    vk: &VirtualKey,
    name: &str,
    existing: Option<&Secret>,
    copy_of: Option<&Secret>,
    held: &SecretKey,
) -> Result<Option<String>, ReconcileError> {
    let ns = vk.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = vk.controller_owner_ref(&()).ok_or(ReconcileError::NotStored("uid"))?;
    let mut secret = existing.cloned().unwrap_or_default();
    if let Some(from) = copy_of {
        secret.metadata.labels.clone_from(&from.metadata.labels);
        secret.metadata.annotations.clone_from(&from.metadata.annotations);
    }
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = Some(ns);
    secret.metadata.owner_references = Some(vec![owner]);
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
    let ann = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(KEY_ID_ANNOTATION.into(), held.key_id.clone());
    match &held.rotation {
        Some(t) => ann.insert(ROTATION_ANNOTATION.into(), t.clone()),
        None => ann.remove(ROTATION_ANNOTATION),
    };
    secret.type_ = Some("Opaque".into());
    secret.string_data = None;
    secret.data = Some(BTreeMap::from([(SECRET_DATA_KEY.to_owned(), ByteString(held.key.clone().into_bytes()))]));
    let written = if existing.is_some() {
        api.replace(name, &PostParams::default(), &secret).await?
    } else {
        api.create(&PostParams::default(), &secret).await?
    };
    Ok(written.metadata.resource_version)
}

/// Deletes the Secret a key moved out of, if it is still this VirtualKey's (its controller, with
/// the managed-by label), and only that very object (a UID precondition): a Secret someone put
/// under that name since is left alone.
async fn delete_moved_from(ctx: &Context, vk: &VirtualKey, uid: &str, previous: &Secret) -> Result<(), ReconcileError> {
    let ours = previous.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true))
        && previous.labels().get(MANAGED_BY_LABEL.0).map(String::as_str) == Some(MANAGED_BY_LABEL.1);
    if !ours {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &vk.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: previous.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(&previous.name_any(), &params).await {
        Ok(_) => Ok(()),
        // Gone already, or another object by now: nothing of ours to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes PostgreSQL follow the Secret `secret`: its key is the live one. Returns the record.
async fn record_key(
    ctx: &Context,
    vk: &VirtualKey,
    uid: &str,
    secret: &str,
    held: &SecretKey,
    live: Option<VirtualKeyRecord>,
    t: &KeyTerms,
) -> Result<VirtualKeyRecord, ReconcileError> {
    let hash = keys::key_sha256(&held.key);
    let new = NewVirtualKey {
        key_id: held.key_id.clone(),
        resource: resource_ref(vk, uid),
        owner: t.owner.clone(),
        key_sha256: hash,
        prefix: held.key.chars().take(PREFIX_LEN).collect(),
        models: t.models.clone(),
        budget_monthly_usd: t.budget_monthly_usd.clone(),
        rate_limit_rpm: t.rate_limit_rpm,
        expires_at: t.expires_at,
        scope: spend_refresh::scope(ctx),
    };
    let now = Utc::now();
    let mut tx = ctx
        .db
        .begin()
        .await
        .map_err(|e| crate::store::StoreError::Query { what: "starting a key transaction", source: e })?;
    let (kind, old) = match &live {
        None => (AuditKind::VirtualKeyIssued, None),
        Some(old) => {
            let grace = vk.spec.rotation_grace_seconds.unwrap_or(0).max(0);
            if grace == 0 {
                // The old key stops authenticating before the new row commits: a crash in
                // between re-runs this rotation, and the old hash never stays published
                // unrecorded.
                runtime(ctx)?.cache.remove(&[hex::encode(&old.key_sha256)]).await?;
                keys::revoke(&mut *tx, &old.key_id, now).await?;
                keys::mark_unpublished(&mut *tx, &old.key_id).await?;
            } else {
                // Revoked as of the end of the grace period; its entry stays in Redis until
                // then and is removed by the reconcile requeued for that time.
                keys::revoke(&mut *tx, &old.key_id, now + chrono::Duration::seconds(grace)).await?;
            }
            (AuditKind::VirtualKeyRotated, Some(old.key_id.clone()))
        }
    };
    keys::insert(&mut tx, &new).await?;
    let event = NewAuditEvent {
        event_key: format!("{}/{}/{}", kind.as_str(), uid, held.key_id),
        kind,
        resource: resource_ref(vk, uid),
        owners: vec![t.owner.clone()],
        region: None,
        cloud_ids: json!({"keyId": held.key_id}),
        details: json!({"keyId": held.key_id, "previousKeyId": old, "prefix": new.prefix, "rotationToken": held.rotation}),
        occurred_at: now,
    };
    let appended = audit::append(&mut *tx, &event).await?;
    tx.commit().await.map_err(|e| crate::store::StoreError::Query { what: "committing a key", source: e })?;
    ctx.audit_committed(&appended);
    ctx.metrics.count_step(KIND, if live.is_some() { "rotate" } else { "issue" });
    let verb = if live.is_some() { "Rotated" } else { "Issued" };
    ctx.event(
        vk,
        false,
        verb,
        verb,
        format!("Key {} issued (prefix {}) into Secret {secret}", held.key_id, new.prefix),
    )
    .await;
    keys::live_for_resource(&ctx.db, uid).await?.ok_or(ReconcileError::Decode("the key row just recorded"))
}

/// What a reconcile does about the key, given what the spec's Secret (`target`) and, while
/// `spec.secretName` changes, the previous Secret hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyPlan {
    /// The spec's Secret holds the key to use (the live one, or one written but not recorded).
    Keep,
    /// The previous Secret holds the live key: the same key goes to the spec's Secret.
    Move,
    /// No usable key, a rotation asked for, or a key that is not the one recorded under its id.
    Issue,
}

/// Whether a Secret's key is the live one: its id and its hash.
fn holds_live(held: &SecretKey, live: Option<&VirtualKeyRecord>) -> bool {
    live.is_some_and(|l| l.key_id == held.key_id && keys::key_sha256(&held.key)[..] == l.key_sha256[..])
}

/// The Secret is the source of truth for which key is current; a new one is issued only when
/// neither Secret holds a usable one or a rotation was asked for. The previous Secret counts
/// only with the live key in it: that key moves rather than being replaced.
fn plan_key(
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

/// Where the key is after the key half of a reconcile.
struct Located {
    record: VirtualKeyRecord,
    /// The Secret holding it: the spec's, or the previous one while the spec's name is taken.
    secret_name: String,
    /// Why the key is not in the spec's Secret, if it is not.
    refused: Option<String>,
}

/// The key half of a reconcile: reads the Secret (and, while `spec.secretName` changes, the
/// previous one, named by the status), moves the live key to the spec's Secret or issues a key
/// into it when neither holds a usable one (or a rotation was asked), makes PostgreSQL follow
/// it, deletes the previous Secret once the key is recorded in the new one, and remembers in
/// which version of the Secret the key was checked.
///
/// A move is crash-safe: the new Secret is written before the old one is deleted, the status
/// names the old one until then, and a later reconcile that finds the live key in the new
/// Secret only finishes the delete.
async fn ensure_key(
    ctx: &Context,
    rt: &KeyRuntime,
    vk: &VirtualKey,
    uid: &str,
    name: &str,
    mut live: Option<VirtualKeyRecord>,
    t: &KeyTerms,
) -> Result<Located, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &vk.namespace().unwrap_or_default());
    let previous_name = vk.status.as_ref().and_then(|s| s.secret_name.clone()).filter(|p| p != name);
    let mut target = secrets.get_opt(name).await?;
    let mut previous = match &previous_name {
        Some(p) => secrets.get_opt(p).await?,
        None => None,
    };
    let mut name = name.to_owned();
    let mut refused = None;
    if let Some(s) = &target
        && !s.owner_references().iter().any(|o| o.uid == uid)
    {
        let taken = format!("Secret {name} exists and does not belong to this VirtualKey");
        // A move refused: the live key stays where it is and keeps being judged and published.
        let keeps =
            previous.as_ref().and_then(|p| key_in_secret(p, uid)).is_some_and(|h| holds_live(&h, live.as_ref()));
        match &previous_name {
            Some(p) if keeps => {
                refused = Some(format!("{taken}: the key stays in Secret {p}"));
                name.clone_from(p);
                target = previous.take();
            }
            _ => return Err(ReconcileError::InvalidSpec(taken)),
        }
    }
    let mut version = target.as_ref().and_then(|s| s.metadata.resource_version.clone());
    let held = target.as_ref().and_then(|s| key_in_secret(s, uid));
    let moving = previous.as_ref().and_then(|s| key_in_secret(s, uid));
    let plan = plan_key(held.as_ref(), moving.as_ref(), live.as_ref(), vk.spec.rotation_token.as_deref());
    let held = match plan {
        KeyPlan::Keep => held.ok_or(ReconcileError::Decode("a key in the Secret"))?,
        KeyPlan::Move => {
            let moved = moving.ok_or(ReconcileError::Decode("a key in the previous Secret"))?;
            version = write_secret(ctx, vk, &name, target.as_ref(), previous.as_ref(), &moved).await?;
            ctx.metrics.count_step(KIND, "move");
            let from = previous_name.as_deref().unwrap_or_default();
            ctx.event(
                vk,
                false,
                "Moved",
                "Move",
                format!("Key {} moved from Secret {from} to Secret {name}", moved.key_id),
            )
            .await;
            moved
        }
        KeyPlan::Issue => {
            let issued = generate_key();
            let held = SecretKey { key: issued.key, key_id: issued.key_id, rotation: vk.spec.rotation_token.clone() };
            version = write_secret(ctx, vk, &name, target.as_ref(), None, &held).await?;
            held
        }
    };
    if live.as_ref().is_none_or(|l| l.key_id != held.key_id) {
        live = Some(record_key(ctx, vk, uid, &name, &held, live.take(), t).await?);
    }
    let record = live.ok_or(ReconcileError::Decode("the live key"))?;
    if let Some(previous) = &previous {
        delete_moved_from(ctx, vk, uid, previous).await?;
    }
    if let Some(resource_version) = version {
        rt.secrets.checked(
            uid,
            Checked {
                secret_name: name.clone(),
                resource_version,
                key_id: held.key_id.clone(),
                rotation: held.rotation.clone(),
            },
        );
    }
    Ok(Located { record, secret_name: name, refused })
}

async fn apply(vk: Arc<VirtualKey>, ctx: &Context) -> Result<Action, ReconcileError> {
    if !serves(ctx.config.virtual_key_namespaces.as_deref(), &vk.namespace().unwrap_or_default()) {
        return not_served(&vk, ctx).await;
    }
    let rt = runtime(ctx)?;
    let uid = vk.uid().ok_or(ReconcileError::NotStored("uid"))?;
    let t = terms(&vk)?;
    let name = secret_name(&vk);

    // Observe: the live row, and the Secret only if it changed since its key was checked.
    let live = keys::live_for_resource(&ctx.db, &uid).await?;
    let settled =
        live.as_ref().is_some_and(|l| rt.secrets.unchanged(&uid, &name, &l.key_id, vk.spec.rotation_token.as_deref()));
    let Located { mut record, secret_name: name, refused } = match live {
        Some(record) if settled => Located { record, secret_name: name, refused: None },
        live => ensure_key(ctx, rt, &vk, &uid, &name, live, &t).await?,
    };

    // Terms follow the spec; an owner change is one transfer event per generation.
    if !same_terms(&record, &t) {
        let mut tx = ctx
            .db
            .begin()
            .await
            .map_err(|e| crate::store::StoreError::Query { what: "starting a terms update", source: e })?;
        keys::update_terms(&mut *tx, &record.key_id, &t).await?;
        let transfer = (record.owner != t.owner).then(|| record.owner.clone());
        let mut appended = None;
        if let Some(from) = &transfer {
            let event = NewAuditEvent {
                event_key: format!(
                    "{}/{}/{}",
                    AuditKind::VirtualKeyTransferred.as_str(),
                    uid,
                    vk.metadata.generation.unwrap_or(0)
                ),
                kind: AuditKind::VirtualKeyTransferred,
                resource: resource_ref(&vk, &uid),
                owners: vec![from.clone(), t.owner.clone()],
                region: None,
                cloud_ids: json!({"keyId": record.key_id}),
                details: json!({"from": from, "to": t.owner, "generation": vk.metadata.generation}),
                occurred_at: Utc::now(),
            };
            appended = Some(audit::append(&mut *tx, &event).await?);
        }
        tx.commit()
            .await
            .map_err(|e| crate::store::StoreError::Query { what: "committing a terms update", source: e })?;
        if let Some(appended) = &appended {
            ctx.audit_committed(appended);
        }
        if let Some(from) = transfer {
            ctx.event(&*vk, false, "Transferred", "Transfer", format!("Owner changed from {from} to {}", t.owner))
                .await;
        }
        record = keys::live_for_resource(&ctx.db, &uid).await?.ok_or(ReconcileError::Decode("the live key"))?;
    }

    // Spend: from the refresher's snapshot; a key it does not hold yet (new, or not yet of
    // this instance's scope) is claimed and refreshed on its own, restore included.
    let now = Utc::now();
    let this_period = period(now);
    let hash_hex = hex::encode(&record.key_sha256);
    let view = match rt.spend(&uid).filter(|v| v.period == this_period && v.key_sha256 == hash_hex) {
        Some(v) => v,
        None => {
            keys::claim(&ctx.db, &record.key_id, &spend_refresh::scope(ctx)).await?;
            let key = keys::LiveKey {
                key_id: record.key_id.clone(),
                resource_uid: uid.clone(),
                key_sha256: record.key_sha256.clone(),
            };
            spend_refresh::refresh_one(ctx, key).await?
        }
    };
    let budget_micros = usd_to_micros(&t.budget_monthly_usd).unwrap_or(0);
    let block = block_reason(now, t.expires_at, view.micros, budget_micros);

    // Publish when Redis lacks the entry or holds another one (a flush heals here).
    let desired = serde_json::to_string(&auth_entry(&record.key_id, &uid, &t, block))
        .map_err(|_| ReconcileError::Decode("an auth entry"))?;
    if view.auth.as_deref() != Some(desired.as_str()) {
        let was_blocked =
            view.auth.as_deref().and_then(|a| serde_json::from_str::<AuthEntry>(a).ok()).map(|a| a.blocked);
        rt.cache.publish(&hash_hex, &desired).await?;
        ctx.metrics.count_step(KIND, "publish");
        rt.with(|m| {
            m.insert(uid.clone(), SpendView { auth: Some(desired.clone()), ..view.clone() });
        });
        match (was_blocked, block) {
            (Some(false) | None, Some(r)) => {
                ctx.event(
                    &*vk,
                    true,
                    r.as_str(),
                    "Block",
                    format!("The proxy now refuses key {}: {}", record.key_id, r.as_str()),
                )
                .await;
            }
            (Some(true), None) => {
                ctx.event(
                    &*vk,
                    false,
                    "Unblocked",
                    "Unblock",
                    format!("The proxy accepts key {} again", record.key_id),
                )
                .await;
            }
            _ => {}
        }
    }

    // Keys rotated away with a grace period: the same terms and block as the live key until it
    // is over, then removed from Redis.
    let retiring = keys::retiring(&ctx.db, &uid).await?;
    follow_terms_in_grace(ctx, rt, &uid, &t, block, &retiring, now).await?;
    let mut next_retirement: Option<DateTime<Utc>> = None;
    for retiring in retiring {
        if retiring.revoked_at <= now {
            rt.cache.remove(&[hex::encode(&retiring.key_sha256)]).await?;
            keys::mark_unpublished(&ctx.db, &retiring.key_id).await?;
            ctx.event(
                &*vk,
                false,
                "Retired",
                "Revoke",
                format!("Previous key {} removed from the proxy", retiring.key_id),
            )
            .await;
        } else {
            next_retirement = Some(next_retirement.map_or(retiring.revoked_at, |t| t.min(retiring.revoked_at)));
        }
    }

    // Status.
    let old = vk.status.clone().unwrap_or_default();
    let spend_text = format!("{} of {} USD this month", micros_to_usd(view.micros), micros_to_usd(budget_micros));
    let desired_conditions = [
        Desired::new(
            "KeyReady",
            true,
            "Published",
            format!("Key {} is in Secret {name} and published to the proxy", record.key_id),
        ),
        match block {
            Some(BlockReason::BudgetExceeded) => {
                Desired::new("BudgetExceeded", true, "BudgetReached", format!("Spend reached the budget: {spend_text}"))
            }
            _ => Desired::new("BudgetExceeded", false, "WithinBudget", spend_text.clone()),
        },
        match block {
            Some(BlockReason::Expired) => Desired::new("Expired", true, "Expired", "The key's expiry time has passed"),
            _ => Desired::new("Expired", false, "NotExpired", "The key has not expired"),
        },
        usage_read(&view, &spend_text),
        match block {
            Some(r) => Desired::new("Ready", false, r.as_str(), format!("The proxy refuses the key: {}", r.as_str())),
            None => Desired::new("Ready", true, "Ready", "The key is published and within its budget"),
        },
    ];
    // A refused `spec.secretName` change: the key works on from its Secret, and the status says
    // the spec is not followed (kstatus and Argo CD then call it failed, not progressing).
    let desired_conditions: Vec<Desired> = desired_conditions
        .into_iter()
        .chain(refused.map(|why| Desired::new("Stalled", true, "SecretNameTaken", why)))
        .collect();
    let next = VirtualKeyStatus {
        observed_generation: vk.metadata.generation,
        key_id: Some(record.key_id.clone()),
        prefix: Some(record.prefix.clone()),
        secret_name: Some(name),
        spend: Some(Spend { period: this_period, usd: micros_to_usd(view.micros) }),
        blocked: Some(block.is_some()),
        rotation_token: vk.spec.rotation_token.clone(),
        conditions: conditions::merge(&old.conditions, &desired_conditions, vk.metadata.generation, Timestamp::now()),
    };
    write_status(ctx, &vk, &old, &next).await?;
    ctx.failures.succeeded(&uid);

    // Look again at the expiry time itself, not a resync later; the refresher's trigger
    // covers spend, the fallback covers a refresher that keeps failing.
    let mut after = ctx.config.resync.saturating_mul(2);
    for at in [t.expires_at, next_retirement].into_iter().flatten().filter(|e| *e > now) {
        let until = (at - now).to_std().unwrap_or_default() + Duration::from_millis(50);
        after = after.min(until);
    }
    Ok(Action::requeue(after))
}

/// Whether the last refresh could read all of the key's usage. When it could not, the key is
/// judged on the last good spend (the condition says which), and its other values still count.
fn usage_read(view: &SpendView, spend_text: &str) -> Desired {
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

/// Makes the auth entries of the keys in their rotation grace carry the live key's terms and
/// block: one `MGET` of them, and a write only of those Redis lost or holds otherwise (an idle
/// resync writes nothing; a key rotated without grace costs no round trip at all).
async fn follow_terms_in_grace(
    ctx: &Context,
    rt: &KeyRuntime,
    uid: &str,
    t: &KeyTerms,
    block: Option<BlockReason>,
    retiring: &[keys::RetiringKey],
    now: DateTime<Utc>,
) -> Result<(), ReconcileError> {
    let desired = grace_entries(uid, t, block, retiring, now)?;
    if desired.is_empty() {
        return Ok(());
    }
    let hashes: Vec<String> = desired.iter().map(|(hash, _)| hash.clone()).collect();
    let held = rt.cache.read_auth(&hashes).await?;
    let stale = entries_to_publish(desired, &held);
    if !stale.is_empty() {
        rt.cache.publish_many(&stale).await?;
        ctx.metrics.count_step(KIND, "publish");
    }
    Ok(())
}

/// Whether VirtualKeys in `namespace` are served: in every namespace without a list (Secrets
/// watched cluster-wide), else in the listed ones only, where the chart binds Secret access.
pub fn serves(namespaces: Option<&[String]>, namespace: &str) -> bool {
    namespaces.is_none_or(|list| list.iter().any(|n| n == namespace))
}

/// A VirtualKey outside the served namespaces: no Secret is read or written there (the
/// operator has no right to), and its status says why it gets no key.
async fn not_served(vk: &VirtualKey, ctx: &Context) -> Result<Action, ReconcileError> {
    let old = vk.status.clone().unwrap_or_default();
    let served = ctx.config.virtual_key_namespaces.as_deref().unwrap_or_default().join(", ");
    let message = format!(
        "VirtualKeys are served only in the namespaces {served} (--virtual-key-namespaces, the chart's \
         virtualKeys.namespaces): no key is issued here"
    );
    // Stalled: nothing changes until the object moves or the operator's list does (kstatus
    // and Argo CD then call it failed, not progressing).
    let desired = [
        Desired::new("Stalled", true, "NamespaceNotServed", message.clone()),
        Desired::new("Ready", false, "NamespaceNotServed", message),
    ];
    let next = VirtualKeyStatus {
        observed_generation: vk.metadata.generation,
        conditions: conditions::merge(&old.conditions, &desired, vk.metadata.generation, Timestamp::now()),
        ..old.clone()
    };
    write_status(ctx, vk, &old, &next).await?;
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    vk: &VirtualKey,
    old: &VirtualKeyStatus,
    new: &VirtualKeyStatus,
) -> Result<(), ReconcileError> {
    let Some(patch) = status_merge_patch(old, new) else { return Ok(()) };
    let api: Api<VirtualKey> = Api::namespaced(ctx.client.clone(), &vk.namespace().unwrap_or_default());
    api.patch_status(&vk.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.metrics.count_status_write(KIND);
    Ok(())
}

/// Delete: the Redis entry goes first (the key stops working), then the row is revoked and
/// the revoke event committed in one transaction; only then is the finalizer released.
async fn cleanup(vk: Arc<VirtualKey>, ctx: &Context) -> Result<Action, ReconcileError> {
    let rt = runtime(ctx)?;
    let uid = vk.uid().ok_or(ReconcileError::NotStored("uid"))?;
    // Keys still in a rotation's grace period go with it.
    for retiring in keys::retiring(&ctx.db, &uid).await? {
        rt.cache.remove(&[hex::encode(&retiring.key_sha256)]).await?;
        keys::mark_unpublished(&ctx.db, &retiring.key_id).await?;
    }
    let Some(live) = keys::live_for_resource(&ctx.db, &uid).await? else {
        return Ok(Action::await_change());
    };
    rt.cache.remove(&[hex::encode(&live.key_sha256)]).await?;
    let now = Utc::now();
    let mut tx =
        ctx.db.begin().await.map_err(|e| crate::store::StoreError::Query { what: "starting a revoke", source: e })?;
    keys::revoke(&mut *tx, &live.key_id, now).await?;
    keys::mark_unpublished(&mut *tx, &live.key_id).await?;
    let event = NewAuditEvent {
        event_key: format!("{}/{}", AuditKind::VirtualKeyRevoked.as_str(), uid),
        kind: AuditKind::VirtualKeyRevoked,
        resource: resource_ref(&vk, &uid),
        owners: vec![live.owner.clone()],
        region: None,
        cloud_ids: json!({"keyId": live.key_id}),
        details: json!({"keyId": live.key_id, "prefix": live.prefix, "reason": "deleted"}),
        occurred_at: now,
    };
    let appended = audit::append(&mut *tx, &event).await?;
    tx.commit().await.map_err(|e| crate::store::StoreError::Query { what: "committing a revoke", source: e })?;
    ctx.audit_committed(&appended);
    rt.with(|m| m.remove(&uid));
    rt.secrets.forget(&uid);
    ctx.metrics.count_step(KIND, "revoke");
    ctx.event(&*vk, false, "Revoked", "Revoke", format!("Key {} revoked and removed from the proxy", live.key_id))
        .await;
    Ok(Action::await_change())
}

pub async fn reconcile(vk: Arc<VirtualKey>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    // `object_name`, not `name`: JSON log lines give the span's own name under `name`.
    let span = tracing::info_span!("reconcile", kind = KIND, namespace = %vk.namespace().unwrap_or_default(), object_name = %vk.name_any());
    async move {
        ctx.observer.started(vk.as_ref());
        let started = std::time::Instant::now();
        let api: Api<VirtualKey> = Api::namespaced(ctx.client.clone(), &vk.namespace().unwrap_or_default());
        let result = finalizer(&api, FINALIZER, vk, |event| async {
            match event {
                Finalizer::Apply(vk) => apply(vk, &ctx).await,
                Finalizer::Cleanup(vk) => cleanup(vk, &ctx).await,
            }
        })
        .await;
        ctx.metrics.count_reconcile(KIND, if result.is_ok() { "ok" } else { "error" }, started.elapsed());
        super::lifecycle::log_reconcile(KIND, result.is_ok(), started);
        result.map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => ReconcileError::Finalizer(other.to_string()),
        })
    }
    .instrument(span)
    .await
}

/// Requeue after an error: capped exponential backoff with jitter, per object.
pub fn error_policy(vk: Arc<VirtualKey>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures.failed(&vk.uid().unwrap_or_default());
    let delay = super::backoff_delay(failures, ctx.config.fast_poll, ctx.config.max_backoff);
    tracing::warn!(kind = KIND, namespace = %vk.namespace().unwrap_or_default(), object_name = %vk.name_any(), error = %error, class = error.metric_label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the VirtualKey controller (and its refresher) until `stop` turns true. Does nothing
/// without a Redis connection. The first refresh completes before any reconcile, so a
/// restarted operator never judges a budget without the month's spend.
pub async fn run(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    let Some(rt) = ctx.virtual_keys.as_ref() else {
        tracing::info!("no REDIS_URL: the VirtualKey controller does not run");
        return;
    };
    if !super::retry_until_stopped(&stop, ctx.config.fast_poll, "read spend", || async {
        spend_refresh::refresh_spend(&ctx).await.map(|_| ())
    })
    .await
    {
        return;
    }
    let Some(refreshed) = rt.refreshed_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
        tracing::warn!("the VirtualKey controller runs once per context");
        return;
    };
    let mut refresher = AbortOnDrop::spawn(spend_refresh::refresh_loop(Arc::clone(&ctx), stop.clone()));
    let vks: Api<VirtualKey> = super::scoped_api(&ctx);
    let label = format!("{}={}", MANAGED_BY_LABEL.0, MANAGED_BY_LABEL.1);
    let mut shutdown = stop.clone();
    let mut controller = super::trim::controller(vks, super::watcher_config(&ctx.config).any_semantic())
        .with_config(super::controller_config(&ctx.config));
    ctx.observer.watch(KIND, controller.store(), phase_name);
    let watching = Arc::clone(&ctx);
    let observe = move |event: &watcher::Event<kube::api::PartialObjectMeta<Secret>>| {
        if let Some(rt) = watching.virtual_keys.as_ref() {
            rt.secrets.observe(event);
        }
    };
    let secrets_config =
        watcher::Config::default().labels(&label).page_size(super::WATCH_LIST_PAGE).timeout(super::WATCH_TIMEOUT_SECS);
    for secrets in secret_apis(&ctx) {
        controller = super::trim::owns_metadata(controller, secrets, secrets_config.clone(), observe.clone());
    }
    controller
        .reconcile_all_on(refreshed)
        .graceful_shutdown_on(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "virtualkey controller event");
            }
        })
        .await;
    refresher.join().await;
}

/// Where the controller watches its Secrets: one watch per served namespace, so the operator
/// needs Secret access there only; without a list, the watched scope (every namespace, or
/// `--watch-namespace`). A relist in one namespace makes every key's Secret be read again once
/// (SecretVersions forgets all it saw): more GETs after a watch restart, never a stale answer.
fn secret_apis(ctx: &Context) -> Vec<Api<kube::api::PartialObjectMeta<Secret>>> {
    match &ctx.config.virtual_key_namespaces {
        Some(list) => list.iter().map(|ns| Api::namespaced(ctx.client.clone(), ns)).collect(),
        None => vec![super::scoped_api(ctx)],
    }
}

/// A VirtualKey's phase for the objects gauge: `Blocked`, `Active` (a live key) or `Pending`.
fn phase_name(vk: &VirtualKey) -> String {
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

/// Connects the VirtualKey controller's Redis clients (one for reconciles, one for the
/// refresher), each answer due within `deadline`.
pub async fn connect_runtime(
    url: &str,
    namespace: &str,
    batch: usize,
    deadline: Duration,
) -> Result<KeyRuntime, CacheError> {
    let cache = KeyCache::connect_with_deadline(url, namespace, deadline).await?;
    let refresh_cache = KeyCache::connect_with_deadline(url, namespace, deadline).await?;
    Ok(KeyRuntime::new(cache, refresh_cache, batch))
}

#[cfg(test)]
mod tests {
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
        let entries = grace_entries("uid-1", &t, Some(BlockReason::BudgetExceeded), &keys, now).expect("entries");
        let hashes: Vec<&str> = entries.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hashes, [hex::encode([1u8; 32]), hex::encode([3u8; 32])], "the grace over at `now` is over");
        let entry: AuthEntry = serde_json::from_str(&entries[0].1).expect("json");
        let live = auth_entry("vk_new", "uid-1", &t, Some(BlockReason::BudgetExceeded));
        assert_eq!(entry, AuthEntry { key_id: "vk_old".into(), ..live }, "only the key id differs");
        assert!(grace_entries("uid-1", &t, None, &[], now).expect("none").is_empty());
    }

    #[test]
    fn only_entries_redis_lost_or_holds_otherwise_are_written() {
        let desired = vec![("a".to_owned(), "A".to_owned()), ("b".into(), "B".into()), ("c".into(), "C".into())];
        let held = [Some("A".to_owned()), None, Some("laxer".to_owned())];
        assert_eq!(entries_to_publish(desired.clone(), &held), desired[1..].to_vec());
        let all_held: Vec<Option<String>> = desired.iter().map(|(_, j)| Some(j.clone())).collect();
        assert!(entries_to_publish(desired.clone(), &all_held).is_empty(), "nothing changed, nothing written");
        assert_eq!(entries_to_publish(desired.clone(), &[]), desired, "an answer too short writes the rest");
    }

    fn held(key_id: &str, key: &str, rotation: Option<&str>) -> SecretKey {
        SecretKey { key: key.into(), key_id: key_id.into(), rotation: rotation.map(str::to_owned) }
    }

    fn live_record(key_id: &str, key: &str) -> VirtualKeyRecord {
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
