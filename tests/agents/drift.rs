//! The world changed behind the operator's back: a server deleted in the console is
//! re-created and reported; a foreign DNS record on the hostname is reported and left alone;
//! a guest that ignores ACPI is powered off after the timeout; an orphaned Agent's resources
//! stay, unmarked, and the sweeper leaves them; a marked server whose object is gone is swept.

use std::time::Duration;

use crabglamp_operator::store::audit;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::fixture::*;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_deleted_behind_our_back_is_recreated_and_reported() {
    let op = Operator::start().await;
    op.create_namespace("drift").await;
    let api = op.agents("drift");
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    let old = a.status.and_then(|s| s.server).and_then(|s| s.id).expect("server id");
    assert!(crabglamp_sandbox::hetzner::vanish_server(&op.hetzner, old));
    // Noticed at the next resync, repaired, and said so.
    wait_for(&api, "bot", DEADLINE, "a new server", |a| {
        ready(a) && a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).is_some_and(|id| id != old)
    })
    .await;
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), 1);
    wait_for_event(&op, "drift", "ServerRecreated", DEADLINE).await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_record_on_the_hostname_is_reported_never_overwritten() {
    let op = Operator::start().await;
    op.create_namespace("dns").await;
    // Someone's own record holds the name first.
    let cf = crabglamp_operator::cloud::cloudflare::CloudflareClient::new(
        crabglamp_operator::cloud::cloudflare::CloudflareConfig::new(
            op.cloudflare.base_url.clone(),
            "cf-test",
            crabglamp_sandbox::cloudflare::CloudflareSimConfig::default().account_id,
            crabglamp_sandbox::cloudflare::CloudflareSimConfig::default().zone_id,
        ),
        std::sync::Arc::new(crabglamp_operator::cloud::RateLimiter::cloudflare_default()),
        crabglamp_operator::cloud::CloudMetrics::default(),
    )
    .expect("client");
    let host = "bot--dns.agents.example.com";
    let (foreign, _) = cf.create_cname(host, "elsewhere.example.net", Some("hand-made")).await.expect("foreign record");
    let api = op.agents("dns");
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "bot", DEADLINE, "DnsNameTaken", |a| {
        a.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "DnsReady" && c.reason == "DnsNameTaken"))
    })
    .await;
    let message =
        a.status.expect("status").conditions.into_iter().find(|c| c.type_ == "DnsReady").expect("DnsReady").message;
    assert!(message.contains(host), "{message}");
    let records = cf.list_dns_records(host).await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].id.as_str(), records[0].content.as_str()),
        (foreign.id.as_str(), "elsewhere.example.net"),
        "untouched"
    );
    // Deleting the Agent leaves the foreign record too.
    api.delete("bot", &DeleteParams::default()).await.expect("delete");
    let start = tokio::time::Instant::now();
    while api.get_opt("bot").await.expect("get").is_some() {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cf.list_dns_records(host).await.expect("records").len(), 1);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_ignoring_acpi_is_powered_off_after_the_timeout() {
    let op = Operator::start().await;
    op.create_namespace("acpi").await;
    let api = op.agents("acpi");
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    let id = a.status.and_then(|s| s.server).and_then(|s| s.id).expect("server id");
    assert!(crabglamp_sandbox::hetzner::set_ignores_acpi(&op.hetzner, id, true));
    api.patch("bot", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": false}}))).await.expect("stop");
    wait_for(&api, "bot", DEADLINE, "off", |a| {
        a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.status.as_deref()) == Some("off")
    })
    .await;
    let posts: Vec<String> = op.hetzner.requests().into_iter().filter(|r| r.method == "POST").map(|r| r.path).collect();
    assert!(posts.iter().any(|p| p.ends_with("/actions/shutdown")), "{posts:?}");
    assert!(posts.iter().any(|p| p.ends_with("/actions/poweroff")), "the hard power-off: {posts:?}");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphaned_resources_stay_unmarked_and_the_sweeper_removes_only_real_orphans() {
    let op = Operator::start().await;
    op.create_namespace("orphan").await;
    let api = op.agents("orphan");
    let mut keep = agent("keep", "acct_a", true);
    keep.spec.deletion_policy = crabglamp_operator::api::DeletionPolicy::Orphan;
    api.create(&PostParams::default(), &keep).await.expect("create");
    api.create(&PostParams::default(), &agent("lost", "acct_a", true)).await.expect("create");
    let kept = wait_for(&api, "keep", DEADLINE, "Ready", ready).await;
    let lost = wait_for(&api, "lost", DEADLINE, "Ready", ready).await;
    let kept_uid = kept.uid().expect("uid");

    // Orphan: the finalizer goes, the cloud resources stay, without our marks.
    api.delete("keep", &DeleteParams::default()).await.expect("delete");
    let start = tokio::time::Instant::now();
    while api.get_opt("keep").await.expect("get").is_some() {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = audit::events_for_resource(&op.db.pool, &kept_uid).await.expect("events");
    let destroyed: Vec<_> = events.iter().filter(|e| e.kind == "agent.destroyed").collect();
    assert_eq!(destroyed.len(), 1);
    assert_eq!(destroyed[0].details["orphaned"], json!(true));
    // Left without our marks: no label of ours on the server, no comment of ours on the record
    // (so neither this operator's sweeper nor adoption ever claims them again).
    let kept_server = format!("keep-{}", &kept_uid.replace('-', "")[..8]);
    let server = crabglamp_sandbox::hetzner::servers(&op.hetzner)
        .into_iter()
        .find(|s| s["name"] == kept_server.as_str())
        .expect("the orphaned server stays");
    assert!(
        server["labels"].as_object().is_none_or(|l| l.keys().all(|k| !k.starts_with("crabglamp.com/"))),
        "our labels are gone: {server}"
    );
    let records = crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare);
    assert_eq!(records.len(), 2, "{records:?}");
    let kept_record = records.iter().find(|r| r.1.starts_with("keep-")).expect("the orphaned record stays");
    assert!(
        kept_record
            .2
            .as_deref()
            .is_none_or(|c| !c.starts_with(crabglamp_operator::controllers::names::DNS_MARK_PREFIX)),
        "our mark is gone from the record: {kept_record:?}"
    );

    // While the operator is down, `lost` loses its finalizer by hand (as a careless admin
    // would) and is deleted: its server, tunnel and record are orphans when it comes back.
    let op = op
        .restart_with_gap(|| async {
            api.patch("lost", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
                .await
                .expect("unfinalize");
            api.delete("lost", &DeleteParams::default()).await.expect("delete");
        })
        .await;
    let lost_server = format!("lost-{}", &lost.uid().expect("uid").replace('-', "")[..8]);
    wait_until(DEADLINE, "the sweeper removes the lost Agent's server", || {
        !crabglamp_sandbox::hetzner::server_names(&op.hetzner).contains(&lost_server)
    })
    .await;
    wait_until(DEADLINE, "and its tunnel", || {
        crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).len() == 1
    })
    .await;
    assert!(op.context.metrics().swept("server") >= 1);

    // Several sweeps later the orphaned Agent's server and tunnel are still there.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).contains(&kept_server), "orphaned server kept");
    assert_eq!(
        crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare),
        vec![crabglamp_operator::controllers::names::tunnel_name(op.context.config().installation(), &kept_uid)]
    );
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), 1, "orphaned record kept");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_changes_are_noticed_and_a_paused_agent_is_left_alone() {
    let op = Operator::start().await;
    op.create_namespace("console").await;
    let api = op.agents("console");
    api.create(&PostParams::default(), &agent("bot", "acct_a", true)).await.expect("create");
    let a = wait_for(&api, "bot", DEADLINE, "Ready", ready).await;
    let uid = a.uid().expect("uid");
    let id = a.status.and_then(|s| s.server).and_then(|s| s.id).expect("server id");
    let hetzner = crabglamp_operator::cloud::hetzner::HetznerClient::new(
        crabglamp_operator::cloud::hetzner::HetznerConfig::new(op.hetzner.base_url.clone(), "hz-test"),
        std::sync::Arc::new(crabglamp_operator::cloud::RateLimiter::hetzner_default()),
        crabglamp_operator::cloud::CloudMetrics::default(),
    )
    .expect("client");

    // Someone detaches the closed fleet firewall in the console: it is attached again.
    let firewall = op.context.fleet_firewall().expect("fleet firewall");
    hetzner.remove_firewall(firewall, id).await.expect("detach");
    let start = tokio::time::Instant::now();
    loop {
        let server = hetzner.get_server(id).await.expect("get").expect("server");
        let attached = server.public_net.firewalls.unwrap_or_default().iter().any(|f| f.id == Some(firewall));
        if attached {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the fleet firewall was not re-attached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_event(&op, "console", "FirewallReattached", DEADLINE).await;

    // Someone powers the server off in the console: noticed, recorded, and powered on again.
    hetzner.power_off(id).await.expect("power off");
    let start = tokio::time::Instant::now();
    loop {
        let rows =
            crabglamp_operator::store::usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
        let kinds: Vec<&str> = rows.iter().map(|r| r.transition.as_str()).collect();
        if kinds == ["start", "stop", "start"] {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "outside stop not recorded and repaired: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Paused: a spec change is not acted on, and a condition says so.
    api.patch(
        "bot",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"crabglamp.com/paused": "true"}}})),
    )
    .await
    .expect("pause");
    wait_for(&api, "bot", DEADLINE, "Paused condition", |a| {
        a.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True"))
    })
    .await;
    let posts_before = op.hetzner.requests().iter().filter(|r| r.method == "POST").count();
    api.patch("bot", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": false}}))).await.expect("stop");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let posts_after = op.hetzner.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts_after, posts_before, "a paused Agent's server is not touched");
    // Unpaused: the stop happens.
    api.patch(
        "bot",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"crabglamp.com/paused": null}}})),
    )
    .await
    .expect("unpause");
    wait_for(&api, "bot", DEADLINE, "stopped after unpausing", |a| {
        a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.status.as_deref()) == Some("off")
            && !a.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Paused"))
    })
    .await;
    op.stop().await;
}
