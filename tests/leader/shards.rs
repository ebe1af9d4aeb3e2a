//! Shards: instances with different `--shard` values (and one without) each reconcile only
//! their own objects, mark their servers with their shard, and never sweep another shard's
//! servers, even in one Hetzner project.

use std::collections::BTreeMap;
use std::time::Duration;

use crabglamp_operator::cloud::hetzner::ServerSpec;
use crabglamp_operator::controllers::SHARD_LABEL;
use crabglamp_operator::controllers::installation::INSTALLATION_LABEL;
use crabglamp_operator::controllers::server::{
    KIND_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL, NAMESPACE_LABEL, UID_LABEL,
};
use kube::api::PostParams;

use super::support::{agent_in, eventually, servers_of};
use crate::fixture::{Instance, Operator, ready, test_config, wait_for};

fn sharded(shard: Option<&str>) -> crabglamp_operator::controllers::ControllerConfig {
    let mut c = test_config();
    c.shard = shard.map(str::to_owned);
    c
}

/// A server that looks like one of ours (this installation's) for an object that no longer
/// exists.
async fn orphan(via: &Instance, name: &str, shard: Option<&str>) -> i64 {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (INSTALLATION_LABEL.to_owned(), via.context.config().installation().to_owned()),
        (KIND_LABEL.to_owned(), "agent".to_owned()),
        (UID_LABEL.to_owned(), uuid::Uuid::new_v4().to_string()),
        (NAMESPACE_LABEL.to_owned(), "team-a".to_owned()),
        (NAME_LABEL.to_owned(), name.to_owned()),
    ]);
    if let Some(shard) = shard {
        labels.insert(SHARD_LABEL.to_owned(), shard.to_owned());
    }
    let spec = ServerSpec {
        name: format!("{name}-deadbeef"),
        server_type: "cpx22".into(),
        image: "ubuntu-24.04".into(),
        location: "hel1".into(),
        labels,
        user_data: None,
        ssh_keys: Vec::new(),
        firewalls: Vec::new(),
        start_after_create: true,
    };
    via.context.clients().hetzner.create_server(&spec).await.expect("orphan created").server.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_reconcile_and_sweep_only_their_own() {
    let op = Operator::start_idle().await;
    op.create_namespace("team-a").await;
    let a = op.instance(sharded(Some("a")), None).await;
    let b = op.instance(sharded(Some("b")), None).await;
    let unsharded = op.instance(sharded(None), None).await;
    let agents = op.agents("team-a");
    for (name, shard) in [("in-a", Some("a")), ("in-b", Some("b")), ("in-none", None)] {
        agents.create(&PostParams::default(), &agent_in(name, shard)).await.expect("create");
    }
    for name in ["in-a", "in-b", "in-none"] {
        wait_for(&agents, name, Duration::from_secs(60), "Ready", ready).await;
        assert_eq!(servers_of(&op, name), 1, "{name}: one server");
    }
    // Each object was reconciled by its own instance alone.
    let mut uids = Vec::new();
    for name in ["in-a", "in-b", "in-none"] {
        uids.push(agents.get(name).await.expect("get").metadata.uid.expect("uid"));
    }
    let (ua, ub, un) = (&uids[0], &uids[1], &uids[2]);
    assert!(
        a.context.fleet().server(ua).is_some()
            && a.context.fleet().server(ub).is_none()
            && a.context.fleet().server(un).is_none()
    );
    assert!(
        b.context.fleet().server(ub).is_some()
            && b.context.fleet().server(ua).is_none()
            && b.context.fleet().server(un).is_none()
    );
    assert!(unsharded.context.fleet().server(un).is_some() && unsharded.context.fleet().server(ua).is_none());
    for (instance, created) in [(&a, 1), (&b, 1), (&unsharded, 1)] {
        assert_eq!(instance.context.metrics().steps("Agent", "create_server"), created);
    }
    let servers = a.context.clients().hetzner.list_server_summaries(None).await.expect("list");
    let shard_of = |name: &str| {
        servers
            .iter()
            .find(|s| s.name.starts_with(&format!("{name}-")))
            .and_then(|s| s.labels.get(SHARD_LABEL).cloned())
    };
    assert_eq!(shard_of("in-a").as_deref(), Some("a"), "servers carry their shard");
    assert_eq!(shard_of("in-none"), None);

    // Orphans of each shard: only that shard's sweeper removes its own.
    let orphan_b = orphan(&a, "orphan-b", Some("b")).await;
    let orphan_a = orphan(&a, "orphan-a", Some("a")).await;
    eventually(Duration::from_secs(30), "each shard swept its own orphan", || async {
        let names = crabglamp_sandbox::hetzner::server_names(&op.hetzner);
        !names.iter().any(|n| n.starts_with("orphan-"))
    })
    .await;
    // A sweeper counts a removal once the cloud's answer is back, a moment after the server is
    // gone from the simulator: wait for both counts before judging who swept what.
    let swept = || [&a, &b, &unsharded].iter().map(|i| i.context.metrics().swept("server")).sum::<u64>();
    eventually(Duration::from_secs(10), "both removals counted", || async { swept() >= 2 }).await;
    assert_eq!(a.context.metrics().swept("server"), 1, "shard a swept only orphan-a ({orphan_a})");
    assert_eq!(b.context.metrics().swept("server"), 1, "shard b swept only orphan-b ({orphan_b})");
    assert_eq!(unsharded.context.metrics().swept("server"), 0, "the unsharded instance swept no shard's server");
    for name in ["in-a", "in-b", "in-none"] {
        assert_eq!(servers_of(&op, name), 1, "{name}: its live server stays");
    }
    for instance in [a, b, unsharded] {
        instance.stop().await;
    }
}
