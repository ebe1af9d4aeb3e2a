//! Under injected faults (30% 5xx on every endpoint, answers lost after the change was
//! applied, and 429 bursts) the Rust clients complete a scripted sequence of 200 operations
//! with no duplicate server, firewall, tunnel or DNS record. Seeded: a failure replays.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crabglamp_operator::cloud::RateLimiter;
use crabglamp_operator::cloud::cloudflare::{IngressRule, TunnelSecret};
use crabglamp_operator::cloud::hetzner::ServerSpec;
use crabglamp_sandbox::http::{FaultPlan, FaultRule};
use crabglamp_sandbox::{cloudflare as cfsim, hetzner as hzsim};
use hcloud::models::{Rule, rule};

use crabglamp_testkit::cloud::*;

/// The default seed; `CRABGLAMP_FAULT_SEED=<n>` replays (or explores) another one.
const SEED: u64 = 0x5eed_0003;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_operations_under_faults_without_duplicates() {
    let _cpu_heavy = TIMING.read().await;
    let seed = std::env::var("CRABGLAMP_FAULT_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(SEED);
    println!("fault seed {seed} (replay with CRABGLAMP_FAULT_SEED={seed})");
    let hz = hetzner_sim(hzsim::HetznerSimConfig {
        durations: hzsim::ActionDurations::uniform(Duration::from_millis(20)),
        ..hz_config()
    })
    .await;
    let cf = cloudflare_sim(cf_config()).await;
    for (sim, seed) in [(&hz, seed), (&cf, seed.wrapping_add(1))] {
        sim.set_faults(FaultPlan {
            rules: FaultRule::any_5xx(0.3),
            seed,
            fail_after_apply: true,
            ..FaultPlan::default()
        });
    }
    // Enough attempts that 30% failures cannot exhaust them (0.3^15 per call).
    let retry = fast_retry(15);
    let limiter = Arc::new(RateLimiter::new(3600, Duration::from_secs(36)));
    let h = hetzner_client_with(&hz, HZ_TOKEN, retry, limiter);
    let c = cloudflare_client(&cf, CF_TOKEN, retry);

    let mut ops = 0usize;
    let mut names = Vec::new();
    let deadline = || Instant::now() + Duration::from_secs(20);
    let poll = Duration::from_millis(10);
    let mut i = 0;
    while ops < 200 {
        if i % 4 == 1 {
            hz.control().rate_limit_storm(4);
        }
        let uid = format!("uid-{i}");
        let name = format!("agent-{uid}");
        let labels: BTreeMap<String, String> = [("crabglamp.com/uid".to_string(), uid.clone())].into();
        let spec = ServerSpec {
            name: name.clone(),
            server_type: "cpx22".into(),
            image: "ubuntu-24.04".into(),
            location: if i % 2 == 0 { "hel1".into() } else { "hil".into() },
            labels: labels.clone(),
            start_after_create: true,
            ..ServerSpec::default()
        };
        let created = h.create_server(&spec).await.expect("create server");
        names.push(name.clone());
        let id = created.server.id;
        let action_ids: Vec<i64> = created.actions.iter().map(|a| a.id).collect();
        // An adopted server has no actions to wait for; a fresh one does.
        if !action_ids.is_empty() {
            h.wait_for_actions(&action_ids, poll, deadline()).await.expect("create actions");
        }
        let listed = h.list_servers(Some(&format!("crabglamp.com/uid={uid}"))).await.expect("list");
        assert_eq!(listed.len(), 1, "exactly one server for {uid}");
        let a = h.shutdown(id).await.expect("shutdown");
        h.wait_for_actions(&[a.id], poll, deadline()).await.expect("shutdown action");
        let a = h.power_on(id).await.expect("poweron");
        h.wait_for_actions(&[a.id], poll, deadline()).await.expect("poweron action");
        ops += 8;

        let rules = [Rule {
            description: None,
            destination_ips: None,
            direction: rule::Direction::In,
            port: Some(Some("22".into())),
            protocol: rule::Protocol::Tcp,
            source_ips: Some(vec!["203.0.113.0/24".into()]),
        }];
        let fw = h.create_firewall(&format!("fw-{uid}"), &labels, &rules, &[]).await.expect("create firewall");
        h.apply_firewall(fw.firewall.id, id).await.expect("apply firewall");
        h.set_firewall_rules(fw.firewall.id, &[]).await.expect("set rules");
        ops += 3;

        let secret = TunnelSecret::generate();
        let (tunnel, _) = c.create_tunnel(&name, &secret).await.expect("create tunnel");
        let host = format!("{uid}.example.com");
        let ingress =
            [IngressRule { hostname: Some(host.clone()), service: "http://localhost:8080".into(), path: None }];
        c.put_tunnel_config(&tunnel.id, &ingress).await.expect("config");
        c.tunnel_token(&tunnel.id).await.expect("token");
        let (record, _) =
            c.create_cname(&host, &format!("{}.cfargotunnel.com", tunnel.id), Some("crabglamp")).await.expect("cname");
        ops += 4;

        // Tear down every other object, as deletes would.
        if i % 2 == 0 {
            c.delete_dns_record(&record.id).await.expect("delete record");
            c.delete_tunnel(&tunnel.id).await.expect("delete tunnel");
            h.delete_server(id).await.expect("delete server");
            h.delete_firewall(fw.firewall.id).await.expect("delete firewall");
            ops += 4;
        }
        i += 1;
    }

    assert!(hz.control().requests().iter().any(|r| r.injected), "faults were injected");
    assert!(hz.control().count_status(429) > 0, "429 bursts were answered");
    assert_eq!(hzsim::servers_created(&hz), names.len() as u64, "one server created per name, no duplicates");
    let live = hzsim::server_names(&hz);
    let mut dedup = live.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(live.len(), dedup.len());
    assert_eq!(live.len(), names.len() / 2, "the other half was deleted");
    assert_eq!(hzsim::firewall_count(&hz), names.len() / 2);
    assert_eq!(cfsim::live_tunnel_names(&cf).len(), names.len() / 2);
    assert_eq!(cfsim::dns_record_count(&cf), names.len() / 2);
    println!("{ops} operations, {} objects, {} Hetzner requests", names.len(), hz.requests().len());
    hz.shutdown().await.unwrap();
    cf.shutdown().await.unwrap();
}

/// Ten controllers racing to create the same object's server (under faults that lose
/// answers) end with exactly one server, adopted by the nine that lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_make_one_server() {
    let hz = hetzner_sim(hz_config()).await;
    hz.set_faults(FaultPlan {
        rules: FaultRule::any_5xx(0.3),
        seed: SEED,
        fail_after_apply: true,
        ..FaultPlan::default()
    });
    let client = Arc::new(hetzner_client(&hz, fast_retry(15)));
    let labels: BTreeMap<String, String> = [("crabglamp.com/uid".to_string(), "race".to_string())].into();
    let spec = ServerSpec {
        name: "agent-race".into(),
        server_type: "cpx22".into(),
        image: "ubuntu-24.04".into(),
        location: "hel1".into(),
        labels,
        start_after_create: true,
        ..ServerSpec::default()
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, spec) = (Arc::clone(&client), spec.clone());
        tasks.push(tokio::spawn(async move { client.create_server(&spec).await }));
    }
    let mut ids = Vec::new();
    let mut fresh = 0;
    for t in tasks {
        let created = t.await.expect("task").expect("every racer gets the server");
        fresh += usize::from(!created.adopted);
        ids.push(created.server.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "all racers see the same server");
    assert!(fresh <= 1, "at most one racer created it ({fresh})");
    assert_eq!(hzsim::servers_created(&hz), 1);
    hz.shutdown().await.unwrap();
}
