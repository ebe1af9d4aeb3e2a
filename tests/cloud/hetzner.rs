//! The Hetzner client against the simulator: every operation and every error class.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crabglamp_operator::cloud::hetzner::{ServerSpec, offered_in};
use crabglamp_operator::cloud::{CloudError, RateLimiter};
use crabglamp_sandbox::hetzner as hzsim;
use crabglamp_sandbox::http::FaultPlan;
use hcloud::models::{Rule, rule};

use crabglamp_testkit::cloud::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn spec(name: &str, uid: &str) -> ServerSpec {
    ServerSpec {
        name: name.into(),
        server_type: "cpx22".into(),
        image: "ubuntu-24.04".into(),
        location: "hel1".into(),
        labels: labels(&[("crabglamp.com/kind", "plainvm"), ("crabglamp.com/uid", uid)]),
        user_data: Some("#cloud-config\nssh_authorized_keys: []\n".into()),
        start_after_create: true,
        ..ServerSpec::default()
    }
}

fn ssh_rule() -> Rule {
    Rule {
        description: Some(Some("ssh".into())),
        destination_ips: None,
        direction: rule::Direction::In,
        port: Some(Some("22".into())),
        protocol: rule::Protocol::Tcp,
        source_ips: Some(vec!["203.0.113.0/24".into(), "2001:db8::/32".into()]),
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn server_lifecycle_and_power() {
    let sim = hetzner_sim(hz_config()).await;
    let c = hetzner_client(&sim, fast_retry(1));

    let created = c.create_server(&spec("vm-a", "uid-a")).await.expect("create");
    assert!(!created.adopted);
    assert_eq!(created.server.location.name, "hel1");
    let ids: Vec<i64> = created.actions.iter().map(|a| a.id).collect();
    assert_eq!(ids.len(), 2, "create_server and start_server");
    c.wait_for_actions(&ids, Duration::from_millis(10), Instant::now() + WAIT).await.expect("actions finish");
    let server = c.get_server(created.server.id).await.unwrap().expect("exists");
    assert_eq!(server.status, hcloud::models::server::Status::Running);
    assert!(!server.locked);

    // Same name again with our labels: adopted, not duplicated.
    let again = c.create_server(&spec("vm-a", "uid-a")).await.expect("adopt");
    assert!(again.adopted);
    assert_eq!(again.server.id, created.server.id);
    // Same name, someone else's labels: a conflict, never adopted.
    let foreign = c.create_server(&spec("vm-a", "uid-other")).await.unwrap_err();
    assert!(matches!(foreign, CloudError::Conflict(ref d) if d.code == "uniqueness_error"), "{foreign}");

    let mut relabelled = spec("vm-a", "uid-a").labels;
    relabelled.insert("crabglamp.com/owner".into(), "acct_2".into());
    let updated = c.set_server_labels(server.id, &relabelled).await.expect("relabel");
    assert_eq!(updated.labels.get("crabglamp.com/owner").map(String::as_str), Some("acct_2"));
    let bad = labels(&[("hetzner.cloud/reserved", "x")]);
    let err = c.set_server_labels(server.id, &bad).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent(ref d) if d.code == "invalid_input"), "{err}");

    let off = c.shutdown(server.id).await.expect("shutdown");
    // Waiting on the same action twice (two callers' lists merged) still finishes.
    c.wait_for_actions(&[off.id, off.id], Duration::from_millis(10), Instant::now() + WAIT).await.unwrap();
    assert_eq!(c.get_server(server.id).await.unwrap().unwrap().status, hcloud::models::server::Status::Off);
    let on = c.power_on(server.id).await.expect("poweron");
    // While an action runs the server is locked: a retryable error.
    let locked = c.power_off(server.id).await.unwrap_err();
    assert!(matches!(locked, CloudError::Retryable(ref d) if d.code == "locked"), "{locked}");
    c.wait_for_actions(&[on.id], Duration::from_millis(10), Instant::now() + WAIT).await.unwrap();
    let off = c.power_off(server.id).await.expect("poweroff");
    c.wait_for_actions(&[off.id], Duration::from_millis(10), Instant::now() + WAIT).await.unwrap();
    assert_eq!(c.get_server(server.id).await.unwrap().unwrap().status, hcloud::models::server::Status::Off);

    // An action that fails ends the wait with its code, and changes nothing.
    hzsim::fail_next_actions(&sim, 1);
    let on = c.power_on(server.id).await.expect("poweron accepted");
    let err = c.wait_for_actions(&[on.id], Duration::from_millis(10), Instant::now() + WAIT).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent(ref d) if d.code == "action_failed"), "{err}");
    assert_eq!(c.get_action(on.id).await.unwrap().status, hcloud::models::action::Status::Error);
    assert_eq!(c.get_server(server.id).await.unwrap().unwrap().status, hcloud::models::server::Status::Off);

    assert!(c.delete_server(server.id).await.unwrap().is_some());
    assert!(c.delete_server(server.id).await.unwrap().is_none(), "second delete is a no-op");
    assert!(c.get_server(server.id).await.unwrap().is_none());
    sim.shutdown().await.unwrap();
}

/// A spec without labels has no mark to prove a same-named server is ours: the name clash is
/// reported, never adopted (SPEC §7), for servers and firewalls alike.
#[tokio::test]
async fn unlabelled_creates_never_adopt() {
    let sim = hetzner_sim(hz_config()).await;
    let c = hetzner_client(&sim, fast_retry(1));
    let mut bare = spec("vm-bare", "unused");
    bare.labels.clear();
    c.create_server(&spec("vm-bare", "someone-else")).await.expect("someone else's server");
    let err = c.create_server(&bare).await.unwrap_err();
    assert!(matches!(err, CloudError::Conflict(ref d) if d.code == "uniqueness_error"), "{err}");

    c.create_firewall("fw-bare", &labels(&[("team", "other")]), &[], &[]).await.expect("someone else's firewall");
    let err = c.create_firewall("fw-bare", &BTreeMap::new(), &[], &[]).await.unwrap_err();
    assert!(matches!(err, CloudError::Conflict(ref d) if d.code == "uniqueness_error"), "{err}");
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn list_by_label_selector_across_pages() {
    let sim = hetzner_sim(hz_config()).await;
    let c = hetzner_client(&sim, fast_retry(1));
    // A malformed selector is refused even when nothing would be filtered.
    let bad = c.list_servers(Some("a in (b")).await.unwrap_err();
    assert!(matches!(bad, CloudError::Permanent(ref d) if d.code == "invalid_input"), "{bad}");
    let bad = c.list_firewalls(Some("!")).await.unwrap_err();
    assert!(matches!(bad, CloudError::Permanent(ref d) if d.code == "invalid_input"), "{bad}");
    for i in 0..57 {
        let mut s = spec(&format!("vm-{i}"), &format!("uid-{i}"));
        if i % 3 == 0 {
            s.labels.insert("crabglamp.com/kind".into(), "agent".into());
            s.location = "hil".into();
        }
        c.create_server(&s).await.expect("create");
    }
    let agents = c.list_servers(Some("crabglamp.com/kind=agent")).await.unwrap();
    assert_eq!(agents.len(), 19);
    assert!(agents.iter().all(|s| s.location.name == "hil"));
    assert_eq!(c.list_servers(Some("crabglamp.com/kind!=agent")).await.unwrap().len(), 38);
    assert_eq!(c.list_servers(Some("crabglamp.com/kind in (agent,plainvm)")).await.unwrap().len(), 57);
    assert_eq!(c.list_servers(Some("!crabglamp.com/uid")).await.unwrap().len(), 0);
    let all = c.list_servers(None).await.unwrap();
    assert_eq!(all.len(), 57);
    let page = c.list_servers_page(None, 2, 50).await.unwrap();
    assert_eq!(page.items.len(), 7);
    assert_eq!((page.pagination.previous_page, page.pagination.next_page), (Some(1), None));
    assert_eq!(page.pagination.total_entries, Some(57));
    let bad = c.list_servers(Some("a=b,")).await.unwrap_err();
    assert!(matches!(bad, CloudError::Permanent(ref d) if d.code == "invalid_input"), "{bad}");
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn firewalls_apply_rules_remove_delete() {
    let sim = hetzner_sim(hz_config()).await;
    let c = hetzner_client(&sim, fast_retry(1));
    let server = c.create_server(&spec("vm-fw", "uid-fw")).await.unwrap().server;
    let fw_labels = labels(&[("crabglamp.com/uid", "uid-fw")]);

    let created = c.create_firewall("fw-vm", &fw_labels, &[ssh_rule()], &[]).await.expect("create firewall");
    assert!(!created.adopted);
    let fw = created.firewall;
    assert_eq!(fw.rules[0].source_ips, vec!["203.0.113.0/24".to_string(), "2001:db8::/32".to_string()]);
    let adopted = c.create_firewall("fw-vm", &fw_labels, &[ssh_rule()], &[]).await.unwrap();
    assert!(adopted.adopted && adopted.firewall.id == fw.id);

    let actions = c.apply_firewall(fw.id, server.id).await.expect("apply");
    let ids: Vec<i64> = actions.iter().map(|a| a.id).collect();
    c.wait_for_actions(&ids, Duration::from_millis(10), Instant::now() + WAIT).await.unwrap();
    assert!(c.apply_firewall(fw.id, server.id).await.unwrap().is_empty(), "already applied counts as done");
    let on_server = c.get_server(server.id).await.unwrap().unwrap();
    let fws = on_server.public_net.firewalls.unwrap_or_default();
    assert_eq!(fws.len(), 1);
    assert_eq!(fws[0].id, Some(fw.id));

    let actions = c.set_firewall_rules(fw.id, &[]).await.expect("clear rules");
    assert_eq!(actions.len(), 2, "set_firewall_rules plus apply_firewall for the server");
    assert!(c.get_firewall(fw.id).await.unwrap().unwrap().rules.is_empty());

    let in_use = c.delete_firewall(fw.id).await.unwrap_err();
    assert!(matches!(in_use, CloudError::Conflict(ref d) if d.code == "resource_in_use"), "{in_use}");
    c.remove_firewall(fw.id, server.id).await.expect("remove");
    assert!(hzsim::vanish_server(&sim, server.id));
    assert!(c.remove_firewall(fw.id, server.id).await.expect("server gone: nothing to remove").is_empty());
    assert!(c.delete_firewall(fw.id).await.unwrap());
    assert!(c.remove_firewall(fw.id, server.id).await.expect("firewall gone: nothing to remove").is_empty());
    assert!(!c.delete_firewall(fw.id).await.unwrap(), "second delete is a no-op");
    assert_eq!(c.list_firewalls(Some("crabglamp.com/uid=uid-fw")).await.unwrap().len(), 0);

    let bad_rule = Rule { port: None, ..ssh_rule() };
    let err = c.create_firewall("fw-bad", &fw_labels, &[bad_rule], &[]).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent(ref d) if d.code == "invalid_input"), "{err}");
    let err = c.apply_firewall(999_999, server.id).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn error_classes() {
    let sim = hetzner_sim(hz_config()).await;
    let c = hetzner_client(&sim, fast_retry(1));

    // Catalog: a type a region does not offer is refused before and by the API.
    let cx23 = c.server_type("cx23").await.unwrap().expect("cx23 listed");
    assert!(offered_in(&cx23, "hel1") && !offered_in(&cx23, "hil"));
    let cx22 = c.server_type("cx22").await.unwrap().expect("deprecated types stay listed");
    assert!(!offered_in(&cx22, "hel1"));
    let mut s = spec("vm-hil", "uid");
    s.server_type = "cx23".into();
    s.location = "hil".into();
    let err = c.create_server(&s).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent(ref d) if d.code == "invalid_input"), "{err}");
    let mut s = spec("Not_A_Hostname", "uid");
    s.location = "hel1".into();
    assert!(matches!(c.create_server(&s).await.unwrap_err(), CloudError::Permanent(_)));

    let err = c.power_on(123_456).await.unwrap_err();
    assert!(matches!(err, CloudError::NotFound(ref d) if d.code == "not_found"), "{err}");

    let unauthorized = hetzner_client_with(&sim, "wrong", fast_retry(3), Arc::new(RateLimiter::hetzner_default()));
    let err = unauthorized.list_servers(None).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent(ref d) if d.code == "unauthorized" && d.status == Some(401)), "{err}");
    assert!(!err.to_string().contains("wrong"), "token must not appear in errors: {err}");

    // Injected 5xx on every call: retried, then reported as retryable with the code.
    sim.set_faults(FaultPlan { rules: crabglamp_sandbox::http::FaultRule::any_5xx(1.0), ..FaultPlan::default() });
    // A fast refill, so the pause after a 429 (one token's time) is 10 ms, not a second.
    let c3 =
        hetzner_client_with(&sim, HZ_TOKEN, fast_retry(3), Arc::new(RateLimiter::new(3600, Duration::from_secs(36))));
    let err = c3.list_servers(None).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(c3.metrics().requests("hetzner", "list_servers", "retryable"), 3, "three attempts counted");
    sim.set_faults(FaultPlan::default());

    // A 429 storm: the limiter pauses and the call still succeeds.
    sim.control().rate_limit_storm(3);
    let before = sim.control().count_status(429);
    c3.list_servers(None).await.expect("succeeds after the storm");
    assert_eq!(sim.control().count_status(429) - before, 3);
    assert_eq!(c3.metrics().requests("hetzner", "list_servers", "rate_limited"), 3);

    // Quota: permanent until something changes.
    let small = hetzner_sim(hzsim::HetznerSimConfig { server_limit: 1, ..hz_config() }).await;
    let cs = hetzner_client(&small, fast_retry(3));
    cs.create_server(&spec("vm-q1", "q1")).await.expect("first server fits");
    let err = cs.create_server(&spec("vm-q2", "q2")).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent(ref d) if d.code == "resource_limit_exceeded"), "{err}");
    small.shutdown().await.unwrap();

    // A server that vanishes behind our back is simply not found.
    let id = c.create_server(&spec("vm-vanish", "uid-v")).await.unwrap().server.id;
    assert!(hzsim::vanish_server(&sim, id));
    assert!(c.get_server(id).await.unwrap().is_none());
    sim.shutdown().await.unwrap();
}

/// A 2xx whose body does not decode means the call took effect (a create made its server), so
/// it is retryable, never permanent: the retry meets the taken name and adopts by labels.
#[tokio::test]
async fn an_undecodable_success_is_retryable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = listener().await;
    let base_url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut buf).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = r#"{"unexpected": true}"#;
            let response = format!(
                "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    let mut config = crabglamp_operator::cloud::hetzner::HetznerConfig::new(base_url, HZ_TOKEN);
    config.retry = fast_retry(2);
    let client = crabglamp_operator::cloud::hetzner::HetznerClient::new(
        config,
        Arc::new(RateLimiter::hetzner_default()),
        crabglamp_operator::cloud::CloudMetrics::default(),
    )
    .expect("client");
    let spec = ServerSpec {
        name: "agent-decode".into(),
        server_type: "cpx22".into(),
        image: "ubuntu-24.04".into(),
        location: "hel1".into(),
        ..ServerSpec::default()
    };
    let err = client.create_server(&spec).await.expect_err("garbage answer");
    assert!(matches!(err, CloudError::Retryable(_)), "{err:?}");
    assert_eq!(err.code(), "decode");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 2, "retried within the policy");
}
