//! Installations: two clusters (two API servers, two databases, two operators, each with the
//! identity it derives from its own `kube-system` namespace) on one Hetzner project and one
//! Cloudflare account and zone, as staging beside production. Each lists, sweeps and adopts
//! only its own: after many sweeps with a one-second grace, neither has touched the other's
//! servers, firewalls, tunnels or DNS records, each has its own fleet firewall, and every
//! object of both is Ready.
//!
//! An upgrade from the marks made before installations had an identity keeps every resource
//! of a live object (re-marked, never re-created nor swept) and leaves old marks of objects that
//! are not live here (another cluster's, not upgraded yet) alone.
//!
//! In real mode (`CRABGLAMP_TEST_KUBE=real`) the first installation runs on the real control
//! plane and the second on the stand-in (the harness starts one real control plane per binary).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crabglamp_operator::cloud::cloudflare::TunnelSecret;
use crabglamp_operator::cloud::hetzner::ServerSpec;
use crabglamp_operator::controllers::Context;
use crabglamp_operator::controllers::installation::INSTALLATION_LABEL;
use crabglamp_operator::controllers::names;
use crabglamp_operator::controllers::server::{
    KIND_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL, NAMESPACE_LABEL, UID_LABEL,
};
use kube::api::PostParams;
use serde_json::{Value, json};

use super::support::eventually;
use crate::fixture::{Operator, agent, plainvm, ready, test_config, vm_ready, wait_for};

const NS: &str = "team-a";
const SWEEPS: u64 = 10;

/// Everything in the shared clouds now: server ids, firewall ids, live tunnel names, record ids.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clouds {
    servers: BTreeSet<i64>,
    firewalls: BTreeSet<i64>,
    tunnels: BTreeSet<String>,
    records: BTreeSet<String>,
}

fn clouds(op: &Operator) -> Clouds {
    let ids = |items: Vec<Value>| items.iter().filter_map(|i| i["id"].as_i64()).collect();
    Clouds {
        servers: ids(crabglamp_sandbox::hetzner::servers(&op.hetzner)),
        firewalls: ids(crabglamp_sandbox::hetzner::firewalls(&op.hetzner)),
        tunnels: crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).into_iter().collect(),
        records: crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare).into_iter().map(|(id, _, _)| id).collect(),
    }
}

/// Two Agents and a PlainVM of installation `prefix`, all Ready.
async fn populate(op: &Operator, prefix: &str) {
    op.create_namespace(NS).await;
    let agents = op.agents(NS);
    let vms = op.plainvms(NS);
    let ssh = json!([{"protocol": "tcp", "port": "22", "sourceIPs": ["203.0.113.0/24"]}]);
    for i in 1..=2 {
        agents
            .create(&PostParams::default(), &agent(&format!("{prefix}-bot-{i}"), "alice", true))
            .await
            .expect("agent");
    }
    vms.create(&PostParams::default(), &plainvm(&format!("{prefix}-vm"), "alice", true, ssh)).await.expect("vm");
    for i in 1..=2 {
        wait_for(&agents, &format!("{prefix}-bot-{i}"), Duration::from_secs(90), "Agent Ready", ready).await;
    }
    wait_for(&vms, &format!("{prefix}-vm"), Duration::from_secs(90), "PlainVM Ready", vm_ready).await;
}

async fn all_ready(op: &Operator, prefix: &str) {
    for i in 1..=2 {
        let a = op.agents(NS).get(&format!("{prefix}-bot-{i}")).await.expect("agent");
        assert!(ready(&a), "{prefix}-bot-{i} is still Ready: {:?}", a.status);
    }
    let v = op.plainvms(NS).get(&format!("{prefix}-vm")).await.expect("vm");
    assert!(vm_ready(&v), "{prefix}-vm is still Ready: {:?}", v.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_installations_on_one_project_and_zone_never_touch_each_others_resources() {
    let production = Operator::start().await;
    let staging = Operator::start_beside(&production, test_config()).await;
    populate(&production, "prod").await;
    populate(&staging, "stage").await;
    let before = clouds(&production);
    assert_eq!(before.servers.len(), 6, "three servers each: {before:?}");
    assert_eq!(before.tunnels.len(), 4, "a tunnel per Agent: {before:?}");
    assert_eq!(before.records.len(), 4, "a record per Agent: {before:?}");

    // Many sweeps of each, with a one-second grace: long enough for either to take the other's
    // resources for orphans several times over.
    let (p0, s0) = (production.context.metrics().sweeps(), staging.context.metrics().sweeps());
    eventually(Duration::from_secs(60), "many sweeps of each installation", || async {
        production.context.metrics().sweeps() >= p0 + SWEEPS && staging.context.metrics().sweeps() >= s0 + SWEEPS
    })
    .await;
    let after = clouds(&production);
    assert_eq!(after, before, "no installation removed or added anything of the other's");
    for op in [&production, &staging] {
        for what in ["server", "firewall", "tunnel", "dns"] {
            assert_eq!(op.context.metrics().swept(what), 0, "nothing swept: every {what} belongs to a live object");
        }
    }
    all_ready(&production, "prod").await;
    all_ready(&staging, "stage").await;

    // Each has a fleet firewall of its own, and each Agent server is behind its own
    // installation's only: neither adopted nor attached the other's.
    let (fw_prod, fw_stage) = (production.context.fleet_firewall(), staging.context.fleet_firewall());
    assert!(fw_prod.is_some() && fw_stage.is_some());
    assert_ne!(fw_prod, fw_stage, "one fleet firewall per installation");
    for server in crabglamp_sandbox::hetzner::servers(&production.hetzner) {
        let name = server["name"].as_str().unwrap_or_default().to_owned();
        let attached: Vec<i64> = server["public_net"]["firewalls"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["id"].as_i64()).collect())
            .unwrap_or_default();
        let (own, other) = if name.starts_with("prod-") { (fw_prod, fw_stage) } else { (fw_stage, fw_prod) };
        if name.contains("-bot-") {
            assert!(own.is_some_and(|f| attached.contains(&f)), "{name} is behind its own fleet firewall");
        }
        assert!(other.is_none_or(|f| !attached.contains(&f)), "{name} is not behind the other's fleet firewall");
    }
    production.stop().await;
    staging.stop().await;
}

/// Turns every mark of `installation` in the clouds into the mark the version before
/// installations made: no installation label, tunnels `crabglamp-<uid>`, comments
/// `crabglamp:<uid> managed by crabglamp-operator`.
async fn to_old_marks(ctx: &Context, installation: &str) {
    let strip = |labels: BTreeMap<String, String>| -> BTreeMap<String, String> {
        labels.into_iter().filter(|(k, _)| k != INSTALLATION_LABEL).collect()
    };
    for s in ctx.clients().hetzner.list_server_summaries(None).await.expect("servers") {
        ctx.clients().hetzner.set_server_labels(s.id, &strip(s.labels)).await.expect("old server labels");
    }
    let selector = format!("{INSTALLATION_LABEL}={installation},{KIND_LABEL}=plainvm");
    for f in ctx.clients().hetzner.list_firewalls(Some(&selector)).await.expect("firewalls") {
        let labels = strip(f.labels.unwrap_or_default().into_iter().collect());
        ctx.clients().hetzner.set_firewall_labels(f.id, &labels).await.expect("old firewall labels");
    }
    for t in ctx.clients().cloudflare.list_tunnels(Some(&names::tunnel_prefix(installation))).await.expect("tunnels") {
        let uid = names::uid_from_tunnel_name(installation, &t.name).expect("one of ours");
        ctx.clients().cloudflare.rename_tunnel(&t.id, &format!("crabglamp-{uid}")).await.expect("old tunnel name");
    }
    let ours = names::dns_mark_prefix(installation);
    for r in ctx.clients().cloudflare.list_dns_records_by_comment_prefix(&ours).await.expect("records") {
        let uid = r.comment.as_deref().and_then(|c| names::uid_from_dns_comment(installation, c)).expect("ours");
        let old = format!("crabglamp:{uid} managed by crabglamp-operator");
        ctx.clients().cloudflare.set_dns_record_comment(&r.id, Some(&old)).await.expect("old comment");
    }
}

/// What a cluster not upgraded yet has in the shared clouds, with the old marks: a server, a
/// PlainVM firewall, a tunnel and a DNS record of an object that is not live here.
async fn plant_foreign_old_marks(ctx: &Context) -> (i64, i64, String, String) {
    let uid = uuid::Uuid::new_v4().to_string();
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (KIND_LABEL.to_owned(), "plainvm".to_owned()),
        (UID_LABEL.to_owned(), uid.clone()),
        (NAMESPACE_LABEL.to_owned(), NS.to_owned()),
        (NAME_LABEL.to_owned(), "theirs".to_owned()),
    ]);
    let firewall = ctx
        .clients()
        .hetzner
        .create_firewall(&format!("crabglamp-vm-{uid}"), &labels, &[], &[])
        .await
        .expect("their firewall")
        .firewall
        .id;
    let spec = ServerSpec {
        name: format!("theirs-{}", &uid[..8]),
        server_type: "cx23".into(),
        image: "debian-12".into(),
        location: "hel1".into(),
        labels,
        user_data: None,
        ssh_keys: Vec::new(),
        firewalls: vec![firewall],
        start_after_create: true,
    };
    let server = ctx.clients().hetzner.create_server(&spec).await.expect("their server").server.id;
    let tunnel_name = format!("crabglamp-{uid}");
    ctx.clients().cloudflare.create_tunnel(&tunnel_name, &TunnelSecret::generate()).await.expect("their tunnel");
    let comment = format!("crabglamp:{uid} managed by crabglamp-operator");
    let host = format!("theirs.{}", crate::fixture::ZONE);
    let (record, _) =
        ctx.clients().cloudflare.create_cname(&host, "x.cfargotunnel.com", Some(&comment)).await.expect("record");
    (server, firewall, tunnel_name, record.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_re_marks_old_marks_of_live_objects_and_leaves_the_rest_alone() {
    let op = Operator::start().await;
    populate(&op, "old").await;
    let installation = op.context.config().installation().to_owned();
    let before = clouds(&op);
    let ctx = Arc::clone(&op.context);
    let foreign = Arc::new(Mutex::new(None));
    let planted = Arc::clone(&foreign);
    // Down, the operator of the version before made these marks; another cluster on the same
    // project and zone, not upgraded yet, has resources with old marks too.
    let op = op
        .restart_with_gap(|| async move {
            to_old_marks(&ctx, &installation).await;
            *planted.lock().expect("lock") = Some(plant_foreign_old_marks(&ctx).await);
        })
        .await;
    let (their_server, their_firewall, their_tunnel, their_record) =
        foreign.lock().expect("lock").clone().expect("planted");
    let installation = op.context.config().installation().to_owned();

    // Every old mark of a live object is re-marked, keeping the resource's id.
    let m = &op.context.metrics();
    eventually(Duration::from_secs(60), "the old marks of live objects re-marked", || async {
        m.steps("Installation", "remark_server") == 3
            && m.steps("Installation", "remark_firewall") == 1
            && m.steps("Installation", "remark_tunnel") == 2
            && m.steps("Installation", "remark_dns") == 2
    })
    .await;
    let s0 = m.sweeps();
    eventually(Duration::from_secs(60), "many sweeps", || async { m.sweeps() >= s0 + SWEEPS }).await;
    all_ready(&op, "old").await;
    let after = clouds(&op);
    let mut expected = before.clone();
    expected.servers.insert(their_server);
    expected.firewalls.insert(their_firewall);
    expected.records.insert(their_record.clone());
    expected.tunnels.insert(their_tunnel.clone());
    assert_eq!(after, expected, "nothing re-created, nothing swept: the same resources, ours renamed back");
    for what in ["server", "firewall", "tunnel", "dns"] {
        assert_eq!(m.swept(what), 0, "no {what} swept");
    }
    for (kind, step) in [("Agent", "create_server"), ("Agent", "create_tunnel"), ("PlainVM", "create_firewall")] {
        assert_eq!(m.steps(kind, step), 0, "{kind} {step}: the re-marked one is used");
    }
    // Ours carry this installation's marks again; theirs still carry the old ones.
    for s in crabglamp_sandbox::hetzner::servers(&op.hetzner) {
        let label = s["labels"][INSTALLATION_LABEL].as_str();
        if s["id"].as_i64() == Some(their_server) {
            assert_eq!(label, None, "their server untouched");
        } else {
            assert_eq!(label, Some(installation.as_str()), "{s}");
        }
    }
    for (_, name, comment) in crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare) {
        let comment = comment.unwrap_or_default();
        if name.starts_with("theirs.") {
            assert!(names::legacy_uid_from_dns_comment(&comment).is_some(), "their record untouched: {comment}");
        } else {
            assert!(names::uid_from_dns_comment(&installation, &comment).is_some(), "{name}: {comment}");
        }
    }
    op.stop().await;
}
