//! The one task that reads the clouds for everybody: paged lists of this installation's servers
//! and per-object firewalls (by label), tunnels (by name prefix) and DNS records (by comment
//! mark), on the pace the fleet view asks for, plus the fleet firewall every Agent server is
//! created behind. It lists and repairs the fleet firewall; it never creates, changes or
//! deletes anything an object owns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cloud::CloudError;
use crate::cloud::hetzner::FirewallCreated;

use crate::controllers::context::Context;
use crate::controllers::fleet::tunnel::ObservedTunnel;
use crate::controllers::fleet::{Collection, ListPace};
use crate::controllers::server::installation::INSTALLATION_LABEL;
use crate::controllers::server::names::{dns_mark_prefix, tunnel_prefix, uid_from_dns_comment, uid_from_tunnel_name};
use crate::controllers::server::{
    MANAGED_BY, MANAGED_BY_LABEL, UID_LABEL, fleet_selector, per_object_firewall_selector,
};

/// The fleet firewall's name before installations had an identity: one per Hetzner project,
/// shared by every cluster using it (which is why each installation now has its own).
pub const FLEET_FIREWALL_NAME: &str = "crabglamp-agents-closed";
/// Label that tells the fleet firewall apart from per-VM firewalls.
pub const ROLE_LABEL: &str = "crabglamp.com/role";
/// Its value.
pub const FLEET_FIREWALL_ROLE: &str = "agent-fleet-firewall";

/// The fleet firewall of `installation`: `crabglamp-agents-closed-<installation>`, one per
/// installation in a project, no inbound rules at all.
pub fn fleet_firewall_name(installation: &str) -> String {
    format!("{FLEET_FIREWALL_NAME}-{installation}")
}

fn fleet_firewall_labels(installation: &str) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (ROLE_LABEL.to_owned(), FLEET_FIREWALL_ROLE.to_owned()),
        (INSTALLATION_LABEL.to_owned(), installation.to_owned()),
    ])
}

/// Finds or creates this installation's fleet firewall (closed: no rules), and closes it again
/// if someone added a rule. Returns its id. Another installation's is never selected, nor the
/// one all installations shared before they had an identity.
pub async fn ensure_fleet_firewall(ctx: &Context) -> Result<i64, CloudError> {
    let installation = ctx.config.installation();
    let selector = format!("{ROLE_LABEL}={FLEET_FIREWALL_ROLE},{INSTALLATION_LABEL}={installation}");
    let found = ctx.clients.hetzner.list_firewalls(Some(&selector)).await?;
    let firewall = match found.into_iter().min_by_key(|f| f.id) {
        Some(f) => f,
        None => {
            let name = fleet_firewall_name(installation);
            let FirewallCreated { firewall, adopted, .. } =
                ctx.clients.hetzner.create_firewall(&name, &fleet_firewall_labels(installation), &[], &[]).await?;
            tracing::info!(firewall = firewall.id, adopted, "fleet firewall ready (no inbound rules)");
            firewall
        }
    };
    if !firewall.rules.is_empty() {
        tracing::warn!(firewall = firewall.id, rules = firewall.rules.len(), "fleet firewall had rules: removing them");
        ctx.clients.hetzner.set_firewall_rules(firewall.id, &[]).await?;
        ctx.telemetry.metrics.count_step("Agent", "close_fleet_firewall");
    }
    ctx.set_fleet_firewall(firewall.id);
    Ok(firewall.id)
}

/// Lists one collection and merges it into the fleet view.
async fn refresh(ctx: &Context, which: Collection) -> Result<(), CloudError> {
    let started = Instant::now();
    match which {
        Collection::Servers => {
            let servers = ctx.clients.hetzner.list_server_summaries(Some(&fleet_selector(&ctx.config))).await?;
            let listed: HashMap<_, _> =
                servers.into_iter().filter_map(|s| s.labels.get(UID_LABEL).cloned().map(|uid| (uid, s))).collect();
            ctx.shared.fleet.merge_servers(listed, started);
        }
        Collection::Firewalls => {
            // One paged list for every PlainVM's firewall: drift is seen here, never by a GET
            // per object. The fleet firewall carries no UID label, so it is not in this view.
            let firewalls =
                ctx.clients.hetzner.list_firewalls(Some(&per_object_firewall_selector(&ctx.config))).await?;
            let listed: HashMap<_, _> = firewalls
                .into_iter()
                .filter_map(|f| f.labels.as_ref().and_then(|l| l.get(UID_LABEL)).cloned().map(|uid| (uid, f)))
                .collect();
            ctx.shared.fleet.merge_firewalls(listed, started);
        }
        Collection::Tunnels => {
            let installation = ctx.config.installation();
            let tunnels = ctx.clients.cloudflare.list_tunnels(Some(&tunnel_prefix(installation))).await?;
            let listed: HashMap<_, _> = tunnels
                .iter()
                .filter(|t| t.deleted_at.is_none() && uid_from_tunnel_name(installation, &t.name).is_some())
                .map(|t| (t.name.clone(), ObservedTunnel::from_api(t)))
                .collect();
            ctx.shared.fleet.merge_tunnels(listed, started);
        }
        Collection::Dns => {
            let installation = ctx.config.installation();
            let records =
                ctx.clients.cloudflare.list_dns_records_by_comment_prefix(&dns_mark_prefix(installation)).await?;
            let listed: HashMap<_, _> = records
                .into_iter()
                .filter_map(|r| {
                    let uid = r.comment.as_deref().and_then(|c| uid_from_dns_comment(installation, c))?;
                    Some((uid.to_owned(), r))
                })
                .collect();
            ctx.shared.fleet.merge_dns(listed, started);
        }
    }
    Ok(())
}

/// Runs until `stop` resolves: lists what is due, then sleeps until the next list is due or
/// someone starts waiting.
pub async fn run(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    let mut stop = stop;
    let mut last_firewall_audit = Instant::now();
    let audit_every = ctx.config.resync.saturating_mul(ctx.config.firewall_audit_every.max(1));
    let pace = ListPace { resync: ctx.config.resync, fast: ctx.config.fast_poll, firewall_audit: audit_every };
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Instant::now();
        let (due, next) = ctx.shared.fleet.due(now, &pace);
        // `next` only knows the collections that were not due: after listing, look again.
        let listed_any = !due.is_empty();
        for which in due {
            tracing::debug!(collection = ?which, "listing");
            if let Err(e) = refresh(&ctx, which).await {
                tracing::warn!(error = %e, collection = ?which, "shared list failed; the next try follows its pace");
                ctx.shared.fleet.list_failed(which);
            }
        }
        if last_firewall_audit.elapsed() >= audit_every {
            last_firewall_audit = Instant::now();
            if let Err(e) = ensure_fleet_firewall(&ctx).await {
                tracing::warn!(error = %e, "cannot audit the fleet firewall");
            }
        }
        if listed_any {
            continue;
        }
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until.into()) => {}
            _ = ctx.shared.fleet.wake.notified() => {}
            // A dropped sender means the operator is gone: stop too, never spin.
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}
