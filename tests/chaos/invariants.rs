//! What must hold once the faults are gone and the operator had time to settle, checked
//! against the ledger of what was asked and the stand-ins' own books (never the operator's
//! view of itself):
//!
//! - every live object is Ready for its latest generation (a non-Ready one is reported with
//!   the condition that names why); every deleted object is gone;
//! - no leak: every server, firewall, tunnel and DNS record carrying our marks points at a live
//!   object, and unmarked ones only exist for objects orphaned on purpose;
//! - no duplicate: each live object has exactly one server, one tunnel and one DNS record
//!   (Agents) or one firewall (PlainVMs), and a PlainVM's firewall holds its spec's rules;
//! - the audit trail: exactly one destroy (revoke) event per deleted object (none for one the
//!   API server removed at once, before the operator put its finalizer on it: nothing was
//!   made, and none for a VirtualKey deleted before its key was issued), none for a live one;
//!   the transfer events of an object chain from its first owner to the owner it has
//!   now (or had when deleted), never more than the owner changes made and never a no-op
//!   transfer; one issue event per VirtualKey and at most one rotation per rotation asked;
//! - the usage timeline: one row per real power transition, where "real" is a transition the
//!   server made in the Hetzner stand-in's own log (it settled `running` after not running, or
//!   stopped running by settling `off` or by being deleted); for an orphaned object the
//!   timeline starts as its server's log does and closes with a stop at the orphaning;
//! - spend: each live key's monthly counter (Redis, copied into PostgreSQL) holds at least
//!   what PostgreSQL held before the last flush or restore from a snapshot plus what was
//!   recorded once the counter was back at that (the restore raises to PostgreSQL's total,
//!   never adds, so what the proxy counted between the loss and the restore may be lost), at
//!   most what was recorded, and exactly that when Redis never
//!   lost data; every auth entry of a key says `blocked` exactly when its counter reached
//!   the budget, and no key shows `UsageRead=False` once its usage data is repaired;
//! - Redis holds no auth entry of a revoked key (past its rotation grace) nor of a key
//!   PostgreSQL does not know;
//! - the audit chain verifies.
//!
//! And at every moment of the run, faults or not (the [`Monitor`], sampling every
//! [`SAMPLE_EVERY`]; a violation names the key, the value and the bound, and fails the seed
//! even if it healed later):
//!
//! - spend is never above what was recorded: every key's monthly counter in Redis and its
//!   copy in PostgreSQL (`virtual_key_spend_monthly`) at most what the proxy recorded for
//!   it (the bound is raised before the proxy's write);
//! - no revoked key authenticates after one resync: an auth entry of a key PostgreSQL has
//!   revoked (`revoked_at <= now`, past any rotation grace) is gone within [`deadline`] of
//!   the later of its revocation and the entry appearing (a restore brings entries back);
//! - no key is usable past its budget for longer than one resync: once the spend that must
//!   survive reaches a live key's budget, every auth entry of that budget says `blocked`
//!   within [`deadline`] of the spend (or of the fault that brought back entries judged
//!   before it: a flush, a restore, the repair of malformed usage), except while the key's
//!   own usage data is malformed (it is judged on its last good spend then).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crabglamp_operator::api::virtual_key::VirtualKey;
use crabglamp_operator::api::{Agent, PlainVM};
use crabglamp_operator::controllers::names::{
    DNS_MARK_PREFIX, default_hostname, tunnel_name, uid_from_dns_comment, uid_from_tunnel_name,
};
use crabglamp_operator::controllers::server::{UID_LABEL, server_name};
use crabglamp_operator::controllers::{firewall, refresher};
use crabglamp_operator::store::{audit, keys, usage};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::ResourceExt;
use redis::AsyncCommands;

use super::plan::Kind;
use super::run::{Books, Chaos, KeyBooks, Ledger, NS, books_of};

/// Polls [`violations`] until none is left or `deadline` passes; `Err` lists what is left.
pub async fn settle(chaos: &Chaos, deadline: Duration) -> Result<(), String> {
    let start = tokio::time::Instant::now();
    loop {
        let found = violations(chaos).await;
        if found.is_empty() {
            return Ok(());
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "{} invariant(s) broken after {deadline:?} of quiescence:\n  {}",
                found.len(),
                found.join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition_summary(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn ready_for_generation(generation: Option<i64>, observed: Option<i64>, conditions: &[Condition]) -> bool {
    observed == generation && conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Everything broken right now, one line each.
pub async fn violations(chaos: &Chaos) -> Vec<String> {
    let mut v = Vec::new();
    objects(chaos, &mut v).await;
    cloud(chaos, &mut v);
    for o in &chaos.objects {
        trail(chaos, o, &mut v).await;
    }
    spend(chaos, &mut v).await;
    match audit::verify_chain(&chaos.op().db.pool).await {
        Ok(report) => {
            if let Some(b) = report.first_break {
                v.push(format!("audit chain broken at {}: {}", b.seq, b.reason));
            }
        }
        Err(e) => v.push(format!("audit chain unreadable: {e}")),
    }
    v
}

async fn objects(chaos: &Chaos, v: &mut Vec<String>) {
    let client = chaos.op().client.clone();
    let agents: Api<Agent> = Api::namespaced(client.clone(), NS);
    let vms: Api<PlainVM> = Api::namespaced(client.clone(), NS);
    let keys: Api<VirtualKey> = Api::namespaced(client, NS);
    for o in &chaos.objects {
        let got = match o.kind {
            Kind::Agent => agents.get_opt(&o.name).await.map(|a| {
                a.map(|a| {
                    let st = a.status.clone().unwrap_or_default();
                    let owner_ok = st.owner.as_deref() == o.owners.last().map(String::as_str);
                    (
                        a.uid(),
                        ready_for_generation(a.metadata.generation, st.observed_generation, &st.conditions) && owner_ok,
                        format!("{} owner {:?}", condition_summary(&st.conditions), st.owner),
                    )
                })
            }),
            Kind::PlainVm => vms.get_opt(&o.name).await.map(|a| {
                a.map(|a| {
                    let st = a.status.clone().unwrap_or_default();
                    (
                        a.uid(),
                        ready_for_generation(a.metadata.generation, st.observed_generation, &st.conditions),
                        condition_summary(&st.conditions),
                    )
                })
            }),
            Kind::Key => keys.get_opt(&o.name).await.map(|a| {
                a.map(|a| {
                    let st = a.status.clone().unwrap_or_default();
                    let rotated = st.rotation_token == o.rotation_token;
                    // A key whose budget ran out is settled blocked (whether it should be is
                    // judged by its auth entries, in `spend`); usage read again once repaired.
                    let settled = st.observed_generation == a.metadata.generation
                        && st
                            .conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && (c.status == "True" || c.reason == "BudgetExceeded"))
                        && !st.conditions.iter().any(|c| c.type_ == "UsageRead" && c.status == "False");
                    (
                        a.uid(),
                        settled && rotated,
                        format!("{} rotation {:?}", condition_summary(&st.conditions), st.rotation_token),
                    )
                })
            }),
        };
        match (got, o.deleted) {
            (Err(e), _) => v.push(format!("{}: cannot read: {e}", o.name)),
            (Ok(Some(_)), Some(_)) => v.push(format!("{}: deleted but still there (finalizer held)", o.name)),
            (Ok(None), None) => v.push(format!("{}: live in the ledger but gone from the cluster", o.name)),
            (Ok(Some((uid, ready, why))), None) => {
                if uid.as_deref() != Some(o.uid.as_str()) {
                    v.push(format!("{}: uid changed", o.name));
                } else if !ready {
                    v.push(format!("{}: not Ready for its latest spec: {why}", o.name));
                }
            }
            (Ok(None), Some(_)) => {}
        }
    }
}

fn labelled_uid(resource: &serde_json::Value) -> Option<String> {
    resource["labels"][UID_LABEL].as_str().map(str::to_owned)
}

fn cloud(chaos: &Chaos, v: &mut Vec<String>) {
    let op = chaos.op();
    let installation = op.context.config().installation();
    let live = |kind: Kind| -> BTreeMap<&str, &Ledger> {
        chaos.objects.iter().filter(|o| o.kind == kind && o.deleted.is_none()).map(|o| (o.uid.as_str(), o)).collect()
    };
    let orphaned: BTreeMap<&str, &Ledger> =
        chaos.objects.iter().filter(|o| o.deleted == Some(true)).map(|o| (o.uid.as_str(), o)).collect();
    let (agents, vms) = (live(Kind::Agent), live(Kind::PlainVm));
    let orphan_server_names: BTreeSet<String> = orphaned.values().map(|o| server_name(&o.name, &o.uid)).collect();

    // Servers.
    let mut servers_of: BTreeMap<String, usize> = BTreeMap::new();
    for s in crabglamp_sandbox::hetzner::servers(&op.hetzner) {
        let name = s["name"].as_str().unwrap_or_default();
        match labelled_uid(&s) {
            Some(uid) if agents.contains_key(uid.as_str()) || vms.contains_key(uid.as_str()) => {
                *servers_of.entry(uid).or_default() += 1;
            }
            Some(uid) => v.push(format!("leak: server {name} labelled for {uid}, which is no live object")),
            None if orphan_server_names.contains(name) => {}
            None => v.push(format!("leak: server {name} has no owner and was orphaned by nobody")),
        }
    }
    for o in agents.values().chain(vms.values()) {
        let n = servers_of.get(&o.uid).copied().unwrap_or(0);
        if n != 1 {
            v.push(format!("{}: {n} servers, not one", o.name));
        }
    }

    // Firewalls (the Agents' shared fleet firewall aside).
    let mut firewalls_of: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for f in crabglamp_sandbox::hetzner::firewalls(&op.hetzner) {
        let name = f["name"].as_str().unwrap_or_default().to_owned();
        if f["labels"][refresher::ROLE_LABEL] == refresher::FLEET_FIREWALL_ROLE
            || name == refresher::fleet_firewall_name(installation)
        {
            continue;
        }
        match labelled_uid(&f) {
            Some(uid) if vms.contains_key(uid.as_str()) => firewalls_of.entry(uid).or_default().push(f),
            Some(uid) => v.push(format!("leak: firewall {name} labelled for {uid}, which is no live PlainVM")),
            None if orphaned.keys().any(|uid| firewall::firewall_name(uid) == name) => {}
            None => v.push(format!("leak: firewall {name} has no owner and was orphaned by nobody")),
        }
    }
    for o in vms.values() {
        let fws = firewalls_of.get(&o.uid).map(Vec::as_slice).unwrap_or_default();
        if fws.len() != 1 {
            v.push(format!("{}: {} firewalls, not one", o.name, fws.len()));
            continue;
        }
        let mut have: Vec<String> = fws[0]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["port"].as_str().map(str::to_owned))
            .collect();
        have.sort();
        let mut want: Vec<String> = o.ports.iter().map(|p| (*p).to_owned()).collect();
        want.sort();
        if have != want {
            v.push(format!("{}: firewall ports {have:?}, spec asks {want:?}", o.name));
        }
    }

    // Tunnels.
    let mut tunnels_of: BTreeMap<String, usize> = BTreeMap::new();
    for t in crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare) {
        match uid_from_tunnel_name(installation, &t) {
            Some(uid) if agents.contains_key(uid) => *tunnels_of.entry(uid.to_owned()).or_default() += 1,
            Some(uid) if orphaned.contains_key(uid) => {}
            _ => v.push(format!("leak: tunnel {t} belongs to no live Agent")),
        }
    }
    // DNS records.
    let mut records_of: BTreeMap<String, usize> = BTreeMap::new();
    for (id, name, comment) in crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare) {
        match comment.as_deref().and_then(|c| uid_from_dns_comment(installation, c)) {
            Some(uid) if agents.contains_key(uid) => *records_of.entry(uid.to_owned()).or_default() += 1,
            Some(uid) => v.push(format!("leak: DNS record {name} ({id}) marked for {uid}, which is no live Agent")),
            None if comment.as_deref().is_some_and(|c| c.starts_with(DNS_MARK_PREFIX)) => {
                v.push(format!("DNS record {name} carries a malformed mark"))
            }
            None if orphaned.values().any(|o| name == default_hostname(&o.name, NS, crate::fixture::ZONE)) => {}
            None => v.push(format!("leak: DNS record {name} ({id}) belongs to nobody")),
        }
    }
    for o in agents.values() {
        for (what, n) in [
            ("tunnels", tunnels_of.get(&o.uid).copied().unwrap_or(0)),
            ("DNS records", records_of.get(&o.uid).copied().unwrap_or(0)),
        ] {
            if n != 1 {
                v.push(format!("{}: {n} {what}, not one (tunnel {})", o.name, tunnel_name(installation, &o.uid)));
            }
        }
    }
}

async fn trail(chaos: &Chaos, o: &Ledger, v: &mut Vec<String>) {
    let op = chaos.op();
    let events = match audit::events_for_resource(&op.db.pool, &o.uid).await {
        Ok(e) => e,
        Err(e) => return v.push(format!("{}: audit unreadable: {e}", o.name)),
    };
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    let (destroy_kind, transfer_kind) = match o.kind {
        Kind::Agent => ("agent.destroyed", "agent.transferred"),
        Kind::PlainVm => ("plainvm.destroyed", ""),
        Kind::Key => ("virtualkey.revoked", "virtualkey.transferred"),
    };
    let destroyed = if o.kind == Kind::Key {
        // Rotations revoke the old key too; the deletion's event is the one keyed by the UID.
        events.iter().filter(|e| e.event_key == format!("virtualkey.revoked/{}", o.uid)).count()
    } else {
        count(destroy_kind)
    };
    // A VirtualKey deleted before its key was issued has nothing to revoke.
    let never_issued = o.kind == Kind::Key && count("virtualkey.issued") == 0;
    let want_destroyed = usize::from(o.deleted.is_some() && !o.gone_before_finalizer && !never_issued);
    if destroyed != want_destroyed {
        v.push(format!("{}: {destroyed} destroy events, want {want_destroyed}", o.name));
    }

    // Transfers: a chain of real changes through the owners the spec had, in their order,
    // starting at the owner the operator first accepted (an owner replaced before the
    // operator ever acted for it needs no transfer) and ending at the owner it has now.
    let mut chain: Vec<String> = Vec::new();
    if !transfer_kind.is_empty() {
        let links: Vec<(String, String)> = events
            .iter()
            .filter(|e| e.kind == transfer_kind)
            .map(|e| {
                let s = |k: &str| e.details[k].as_str().unwrap_or_default().to_owned();
                (s("from"), s("to"))
            })
            .collect();
        let changes = o.owners.windows(2).filter(|w| w[0] != w[1]).count();
        let last = o.owners.last().cloned().unwrap_or_default();
        // Without a transfer the trail is the one owner the operator accepted: the current one
        // for a live object; for a deleted one the owner its destroy event bills (an owner
        // change made just before the delete may never have been acted on).
        let destroyed_owner = events
            .iter()
            .find(|e| e.kind == destroy_kind && o.kind != Kind::Key)
            .and_then(|e| e.owners.first().cloned());
        let start = match (links.first(), o.deleted) {
            (Some(l), _) => l.0.clone(),
            (None, Some(_)) => destroyed_owner.unwrap_or_else(|| last.clone()),
            (None, None) => last.clone(),
        };
        chain.push(start.clone());
        match o.owners.iter().position(|x| *x == start) {
            None => v.push(format!("{}: the trail starts at {start}, never an owner: {links:?}", o.name)),
            Some(mut at) => {
                for (from, to) in &links {
                    let next = o.owners[at + 1..].iter().position(|x| x == to).map(|i| at + 1 + i);
                    match next {
                        Some(n) if *from == o.owners[at] && from != to => {
                            at = n;
                            chain.push(to.clone());
                        }
                        _ => {
                            v.push(format!(
                                "{}: transfer {from} -> {to} does not follow the owners {:?}: {links:?}",
                                o.name, o.owners
                            ));
                            break;
                        }
                    }
                }
            }
        }
        if links.len() > changes {
            v.push(format!("{}: {} transfer events for {changes} owner changes: {links:?}", o.name, links.len()));
        }
        let end = chain.last().cloned().unwrap_or_default();
        if o.deleted.is_none() && end != last {
            v.push(format!("{}: transfers end at {end}, the owner is {last}: {links:?}", o.name));
        }
        // The destroy event bills the owner the trail ends at.
        for e in events.iter().filter(|e| e.kind == destroy_kind && o.kind != Kind::Key) {
            if e.owners != [end.clone()] {
                v.push(format!("{}: destroyed as owned by {:?}, the trail ends at {end}", o.name, e.owners));
            }
        }
    }

    match o.kind {
        Kind::Key => key_rows(chaos, o, &events, v).await,
        Kind::Agent | Kind::PlainVm => timeline(chaos, o, &chain, v).await,
    }
}

async fn key_rows(chaos: &Chaos, o: &Ledger, events: &[audit::AuditEvent], v: &mut Vec<String>) {
    let op = chaos.op();
    let issued = events.iter().filter(|e| e.kind == "virtualkey.issued").count();
    let rotated = events.iter().filter(|e| e.kind == "virtualkey.rotated").count();
    // Exactly one, but none for a key deleted before it was issued.
    if issued > 1 || (issued == 0 && o.deleted.is_none()) {
        v.push(format!("{}: {issued} issue events", o.name));
    }
    if rotated > o.rotations {
        v.push(format!("{}: {rotated} rotations recorded for {} asked", o.name, o.rotations));
    }
    let live = match keys::live_for_resource(&op.db.pool, &o.uid).await {
        Ok(l) => l,
        Err(e) => return v.push(format!("{}: keys unreadable: {e}", o.name)),
    };
    match (&live, o.deleted) {
        (Some(_), Some(_)) => v.push(format!("{}: deleted but its key is live", o.name)),
        (None, None) => v.push(format!("{}: no live key", o.name)),
        (Some(k), None) => {
            let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(op.client.clone(), NS);
            let held =
                secrets.get_opt(&format!("{}-key", o.name)).await.ok().flatten().and_then(|s| {
                    s.data.and_then(|d| d.get("apiKey").map(|b| String::from_utf8_lossy(&b.0).into_owned()))
                });
            let Some(held) = held else { return v.push(format!("{}: no key in its Secret", o.name)) };
            let hash = crabglamp_operator::store::keys::key_sha256(&held);
            if hash[..] != k.key_sha256[..] {
                v.push(format!("{}: the Secret's key is not the live key", o.name));
            }
            let mut r = chaos.redis.clone();
            let entry: Option<String> =
                r.get(format!("{}auth:{}", chaos.redis_ns, hex::encode(hash))).await.unwrap_or(None);
            if entry.is_none() {
                v.push(format!("{}: the live key is not published in Redis", o.name));
            }
        }
        (None, Some(_)) => {}
    }
}

/// `chain`: the owners the transfer trail went through (empty for kinds without transfers).
async fn timeline(chaos: &Chaos, o: &Ledger, chain: &[String], v: &mut Vec<String>) {
    let op = chaos.op();
    let rows = match usage::transitions_for_resource(&op.db.pool, &o.uid).await {
        Ok(r) => r,
        Err(e) => return v.push(format!("{}: timeline unreadable: {e}", o.name)),
    };
    let recorded: Vec<&str> = rows.iter().map(|r| r.transition.as_str()).collect();
    // Every row bills an owner the trail had made owner by then (rows follow the chain).
    if !chain.is_empty() {
        let mut at = 0;
        for r in &rows {
            match chain[at..].iter().position(|c| *c == r.owner) {
                Some(i) => at += i,
                None => {
                    let billed: Vec<&str> = rows.iter().map(|r| r.owner.as_str()).collect();
                    v.push(format!("{}: timeline bills {billed:?}, the transfer trail is {chain:?}", o.name));
                    break;
                }
            }
        }
    }
    let server = server_name(&o.name, &o.uid);
    let real: Vec<&'static str> = crabglamp_sandbox::hetzner::power_log(&op.hetzner)
        .into_iter()
        .filter(|c| c.server_name == server)
        .map(|c| c.change)
        .collect();
    if o.deleted == Some(true) {
        // Orphaned: billing ends at the orphaning though the server lives on.
        let mut want: Vec<&str> = real.clone();
        if want.last() == Some(&"start") {
            want.push("stop");
        }
        if recorded != want {
            v.push(format!("{}: timeline {recorded:?}, orphaned server made {real:?}", o.name));
        }
    } else if recorded != real {
        v.push(format!("{}: timeline {recorded:?}, the server really made {real:?}", o.name));
    }
}

/// Every auth entry of the run's namespace: `(sha256 hex, JSON)`.
async fn auth_entries(chaos: &Chaos) -> Result<Vec<(String, String)>, String> {
    let mut r = chaos.redis.clone();
    let prefix = format!("{}auth:", chaos.redis_ns);
    let mut names: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut r)
            .await
            .map_err(|e| format!("scanning auth entries: {e}"))?;
        names.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = r.mget(&names).await.map_err(|e| format!("reading auth entries: {e}"))?;
    Ok(names.iter().zip(values).filter_map(|(n, v)| v.map(|v| (n.trim_start_matches(&prefix).to_owned(), v))).collect())
}

/// Every key PostgreSQL knows: sha256 hex -> (key id, VirtualKey UID, seconds since its
/// revocation: `None` while live, negative during a rotation's grace).
async fn known_keys(pool: &sqlx::PgPool) -> Result<BTreeMap<String, (String, String, Option<f64>)>, String> {
    let rows: Vec<(String, String, String, Option<f64>)> = sqlx::query_as(
        "SELECT encode(key_sha256, 'hex'), key_id, resource_uid, \
                EXTRACT(EPOCH FROM now() - revoked_at)::float8 FROM virtual_keys",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| format!("reading keys: {e}"))?;
    Ok(rows.into_iter().map(|(h, k, u, r)| (h, (k, u, r))).collect())
}

async fn spend(chaos: &Chaos, v: &mut Vec<String>) {
    let op = chaos.op();
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let (entries, known) = match (auth_entries(chaos).await, known_keys(&op.db.pool).await) {
        (Ok(e), Ok(k)) => (e, k),
        (Err(e), _) | (_, Err(e)) => return v.push(e),
    };
    // Revoked or unknown keys that still authenticate.
    let books = books_of(&chaos.books).clone();
    let mut entries_of: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for (hash, json) in &entries {
        let Some((key_id, uid, revoked)) = known.get(hash) else {
            v.push(format!("an auth entry of a key PostgreSQL does not know ({}...)", &hash[..12.min(hash.len())]));
            continue;
        };
        if revoked.is_some_and(|secs| secs >= 0.0) {
            let name = books.get(uid).map_or(uid.as_str(), |b| b.name.as_str());
            v.push(format!("{name}: key {key_id} is revoked and still authenticates"));
            continue;
        }
        match serde_json::from_str::<crabglamp_operator::cache::AuthEntry>(json) {
            Ok(entry) => entries_of.entry(uid.clone()).or_default().push(entry.blocked),
            Err(e) => v.push(format!("key {key_id}: an auth entry the proxy cannot read: {e}")),
        }
    }
    for o in chaos.objects.iter().filter(|o| o.kind == Kind::Key && o.deleted.is_none()) {
        let Some(b) = books.get(&o.uid) else { continue };
        let mut r = chaos.redis.clone();
        let counter: Option<i64> = r.get(format!("{}spend:{}:{month}", chaos.redis_ns, o.uid)).await.unwrap_or(None);
        let counter = counter.unwrap_or(0);
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT cost_micros FROM virtual_key_spend_monthly WHERE budget_id = $1 AND month = $2")
                .bind(&o.uid)
                .bind(&month)
                .fetch_optional(&op.db.pool)
                .await
                .unwrap_or(None);
        let stored = stored.unwrap_or(0);
        if counter != stored {
            v.push(format!("{}: spend not copied yet (Redis {counter}, PostgreSQL {stored})", o.name));
        } else if counter < b.must_keep {
            v.push(format!(
                "{}: spend {counter} fell below the {} that must survive Redis's losses",
                o.name, b.must_keep
            ));
        } else if counter > b.spent {
            v.push(format!("{}: spend {counter} exceeds the {} recorded", o.name, b.spent));
        } else if !b.flushed && counter != b.spent {
            v.push(format!("{}: spend {counter}, {} recorded and Redis never lost data", o.name, b.spent));
        }
        let want_blocked = counter >= b.budget_micros;
        for blocked in entries_of.get(&o.uid).into_iter().flatten() {
            if *blocked != want_blocked {
                v.push(format!(
                    "{}: an auth entry says blocked: {blocked} with spend {counter} of a {} budget",
                    o.name, b.budget_micros
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The monitor: what must hold at every moment.

/// How often the monitor samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How long the operator has to block a key over budget, or remove a revoked key's entry:
/// one resync, plus a margin for what follows the resync's wait (the refresh itself, the
/// reconciles it triggers, one of them publishing) and for the monitor's own sampling
/// period. See the README's chaos section.
pub fn deadline(resync: Duration) -> Duration {
    resync + MARGIN
}

/// See [`deadline`].
const MARGIN: Duration = Duration::from_secs(2);

/// What the monitor saw.
#[derive(Debug, Default)]
pub struct Watched {
    /// The first violation of each kind per key.
    pub violations: BTreeMap<String, String>,
    pub samples: u64,
    /// Samples that could not be read (a fault of the plan in force).
    pub unreadable: u64,
    /// The longest a key over budget stayed usable, and a revoked key's entry stayed.
    pub worst_unblocked: Duration,
    pub worst_revoked: Duration,
}

impl Watched {
    pub fn summary(&self) -> String {
        format!(
            "monitor: {} samples ({} unreadable), a key over budget usable at most {:.1}s, a revoked key at most {:.1}s",
            self.samples,
            self.unreadable,
            self.worst_unblocked.as_secs_f64(),
            self.worst_revoked.as_secs_f64()
        )
    }

    /// The violations, as `settle` reports its own.
    pub fn report(&self) -> String {
        if self.violations.is_empty() {
            return String::new();
        }
        format!(
            "{} invariant(s) broken during the run:\n  {}",
            self.violations.len(),
            self.violations.values().cloned().collect::<Vec<_>>().join("\n  ")
        )
    }

    fn violated(&mut self, what: String, message: impl FnOnce() -> String) {
        self.violations.entry(what).or_insert_with(message);
    }
}

/// Samples Redis and PostgreSQL against the books for the whole run (see the module's doc).
pub struct Monitor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Watched>,
}

struct Watch {
    redis: redis::aio::MultiplexedConnection,
    pool: sqlx::PgPool,
    ns: String,
    books: Books,
    deadline: Duration,
    /// Since when each revoked key's entry (by hash) has been seen, without a gap.
    revoked_seen: BTreeMap<String, tokio::time::Instant>,
    watched: Watched,
}

impl Monitor {
    pub fn start(
        redis: redis::aio::MultiplexedConnection,
        pool: sqlx::PgPool,
        ns: String,
        books: Books,
        resync: Duration,
    ) -> Monitor {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut w = Watch {
            redis,
            pool,
            ns,
            books,
            deadline: deadline(resync),
            revoked_seen: BTreeMap::new(),
            watched: Watched::default(),
        };
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return w.watched,
                }
                w.watched.samples += 1;
                if let Err(e) = w.sample().await {
                    tracing::debug!(target: "chaos", error = %e, "monitor sample unreadable");
                    w.watched.unreadable += 1;
                }
            }
        });
        Monitor { stop, task }
    }

    pub async fn stop(self) -> Watched {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_else(|e| panic!("the monitor: {e}"))
    }
}

impl Watch {
    /// One sample. PostgreSQL's keys first, then Redis, then PostgreSQL's copies, then the
    /// books: a bound only grows but for a fault the plan plays (which restarts the clocks),
    /// so reading it last never makes a value look above it.
    async fn sample(&mut self) -> Result<(), String> {
        let month = chrono::Utc::now().format("%Y-%m").to_string();
        let known = known_keys(&self.pool).await?;
        let uids: Vec<String> = books_of(&self.books).keys().cloned().collect();
        let hashes: Vec<&String> = known.keys().collect();
        let mut pipe = redis::pipe();
        if !hashes.is_empty() {
            pipe.cmd("MGET").arg(hashes.iter().map(|h| format!("{}auth:{h}", self.ns)).collect::<Vec<_>>());
        }
        if !uids.is_empty() {
            pipe.cmd("MGET").arg(uids.iter().map(|u| format!("{}spend:{u}:{month}", self.ns)).collect::<Vec<_>>());
        }
        let mut answers: Vec<Vec<Option<String>>> = if hashes.is_empty() && uids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.redis).await.map_err(|e| format!("reading Redis: {e}"))?
        };
        let counters = if uids.is_empty() { Vec::new() } else { answers.pop().unwrap_or_default() };
        let auths = if hashes.is_empty() { Vec::new() } else { answers.pop().unwrap_or_default() };
        let copies: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT budget_id, cost_micros FROM virtual_key_spend_monthly WHERE month = $1",
        )
        .bind(&month)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("reading spend copies: {e}"))?
        .into_iter()
        .collect();
        let books = books_of(&self.books).clone();

        for (uid, counter) in uids.iter().zip(&counters) {
            let Some(b) = books.get(uid) else { continue };
            let counter = counter.as_deref().map(|c| c.parse::<i64>().unwrap_or(i64::MAX));
            for (where_, value) in [("Redis", counter), ("PostgreSQL", copies.get(uid).copied())] {
                if let Some(value) = value.filter(|v| *v > b.spent) {
                    self.watched.violated(format!("{uid} above recorded in {where_}"), || {
                        format!("{}: spend {value} in {where_}, above the {} recorded", b.name, b.spent)
                    });
                }
            }
        }

        let now = tokio::time::Instant::now();
        let mut still_seen = BTreeMap::new();
        for (hash, auth) in hashes.iter().zip(&auths) {
            let Some(json) = auth else { continue };
            let Some((key_id, uid, revoked)) = known.get(*hash) else { continue };
            let Some(b) = books.get(uid) else { continue };
            if let Some(revoked_secs) = revoked.filter(|s| *s >= 0.0) {
                let since = *self.revoked_seen.get(*hash).unwrap_or(&now);
                still_seen.insert((*hash).clone(), since);
                let late = (now - since).min(Duration::from_secs_f64(revoked_secs));
                self.watched.worst_revoked = self.watched.worst_revoked.max(late);
                if late > self.deadline {
                    self.watched.violated(format!("{key_id} revoked"), || {
                        format!(
                            "{}: key {key_id} still authenticates {:.1}s after its revocation (or its entry came back), \
                             more than {:?}",
                            b.name,
                            late.as_secs_f64(),
                            self.deadline
                        )
                    });
                }
                continue;
            }
            self.over_budget(b, key_id, json);
        }
        self.revoked_seen = still_seen;
        Ok(())
    }

    /// A live key's entry (or one in its rotation's grace) while its budget is spent.
    fn over_budget(&mut self, b: &KeyBooks, key_id: &str, json: &str) {
        let Some(since) = b.over_budget_since else { return };
        if b.deleted || !b.malformed.is_empty() {
            return;
        }
        let blocked = serde_json::from_str::<crabglamp_operator::cache::AuthEntry>(json).map(|e| e.blocked);
        if blocked.as_ref().is_ok_and(|blocked| *blocked) {
            return;
        }
        let late = since.elapsed();
        self.watched.worst_unblocked = self.watched.worst_unblocked.max(late);
        if late > self.deadline {
            self.watched.violated(format!("{key_id} over budget"), || {
                format!(
                    "{}: key {key_id} still usable {:.1}s after its spend reached the budget ({} of {} recorded \
                     and kept), more than {:?}",
                    b.name,
                    late.as_secs_f64(),
                    b.must_keep,
                    b.budget_micros,
                    self.deadline
                )
            });
        }
    }
}
