//! One PlainVM's whole life: its firewall created first with exactly the spec's rules and
//! attached in the server's create call (never an open instant); a rule change is one
//! `set_rules` on the same firewall; stop and start are timeline rows; delete leaves no server
//! and no firewall, one `plainvm.destroyed` event and an intact chain.

use std::time::Duration;

use crabglamp_operator::store::{audit, usage};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::support::*;

const NS: &str = "team-a";
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_change_rules_power_delete() {
    let op = Operator::start().await;
    op.create_namespace(NS).await;
    let api = op.plainvms(NS);
    api.create(&PostParams::default(), &plainvm("web", "acct_a", true, two_rules())).await.expect("create");

    let vm = wait_for(&api, "web", DEADLINE, "Ready", vm_ready).await;
    let uid = vm.uid().expect("uid");
    let status = vm.status.clone().expect("status");
    let server_id = status.server.as_ref().and_then(|s| s.id).expect("server id");
    assert!(status.server.as_ref().and_then(|s| s.ipv4.clone()).is_some(), "{status:?}");
    assert_eq!(status.server.as_ref().and_then(|s| s.location.as_deref()), Some("hel1"));
    let fw = vm_firewall(&op, &uid).expect("the VM's firewall");
    let fw_id = fw["id"].as_i64().expect("firewall id");
    assert_eq!(status.firewall.as_ref().and_then(|f| f.id), Some(fw_id));
    assert_eq!(status.firewall.as_ref().and_then(|f| f.rules), Some(2));
    assert_eq!(status.price_cell.as_deref(), Some("plainvm-eu-cx23"));
    assert_eq!(status.observed_generation, vm.metadata.generation);
    assert_eq!(vm_condition(&vm, "FirewallReady").map(|c| c.1), Some("InSync".to_owned()));
    assert_eq!(vm_condition(&vm, "ServerReady").map(|c| c.0), Some("True".to_owned()));
    assert!(vm_condition(&vm, "Reconciling").is_none() && vm_condition(&vm, "Stalled").is_none());

    // Exactly the spec's rules, our labels, applied to the server.
    assert_eq!(
        rules_of(&fw),
        vec![
            ("icmp".to_owned(), None, vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()]),
            ("tcp".to_owned(), Some("22".to_owned()), vec!["2001:db8::/32".to_owned(), "203.0.113.0/24".to_owned()]),
        ]
    );
    for (k, v) in [
        ("crabglamp.com/managed-by", "crabglamp-operator"),
        ("crabglamp.com/kind", "plainvm"),
        ("crabglamp.com/uid", uid.as_str()),
        ("crabglamp.com/namespace", NS),
        ("crabglamp.com/name", "web"),
    ] {
        assert_eq!(fw["labels"][k], v, "label {k}");
    }
    assert_eq!(applied_servers(&fw), vec![server_id]);
    // Attached in the create call: the firewall was created before the server, and nothing
    // was ever applied afterwards.
    let log = op.hetzner.requests();
    let fw_create = log.iter().filter(|r| r.method == "POST" && r.path.ends_with("/firewalls") && r.status < 300);
    let server_create = log.iter().find(|r| r.method == "POST" && r.path.ends_with("/servers")).expect("server create");
    assert!(fw_create.clone().any(|r| r.seq < server_create.seq), "firewall first");
    let body = server_create.body.clone().expect("create body");
    assert_eq!(body["firewalls"], json!([{"firewall": fw_id}]), "the firewall is in the create call");
    assert_eq!(hz_requests(&op, "POST", "/actions/apply_to_resources"), 0, "never attached after the fact");
    assert_eq!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).len(), 1);
    // The fleet firewall of the Agents and this VM's own.
    assert_eq!(crabglamp_sandbox::hetzner::firewall_count(&op.hetzner), 2);

    // A rule change: one set_rules on the same firewall, no new firewall.
    let creates_before = hz_requests(&op, "POST", "/firewalls");
    let sets_before = hz_requests(&op, "POST", "/actions/set_rules");
    let https = json!([{"protocol": "tcp", "port": "443", "sourceIPs": ["0.0.0.0/0"], "description": "https"}]);
    api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"firewall": {"inbound": https}}})))
        .await
        .expect("rule change");
    let vm = wait_for(&api, "web", DEADLINE, "one rule in force", |v| {
        vm_ready(v)
            && v.status.as_ref().and_then(|s| s.firewall.as_ref()).and_then(|f| f.rules) == Some(1)
            && v.status.as_ref().and_then(|s| s.observed_generation) == v.metadata.generation
    })
    .await;
    let fw = vm_firewall(&op, &uid).expect("firewall");
    assert_eq!(fw["id"].as_i64(), Some(fw_id), "the same firewall");
    assert_eq!(rules_of(&fw), vec![("tcp".to_owned(), Some("443".to_owned()), vec!["0.0.0.0/0".to_owned()])]);
    assert_eq!(hz_requests(&op, "POST", "/actions/set_rules") - sets_before, 1, "one set_rules");
    assert_eq!(hz_requests(&op, "POST", "/firewalls"), creates_before, "no new firewall");
    assert_eq!(vm.status.as_ref().and_then(|s| s.firewall.as_ref()).and_then(|f| f.id), Some(fw_id));

    // Empty inbound: no rule at all.
    api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"firewall": {"inbound": []}}})))
        .await
        .expect("close");
    wait_for(&api, "web", DEADLINE, "closed", |v| {
        vm_ready(v) && v.status.as_ref().and_then(|s| s.firewall.as_ref()).and_then(|f| f.rules) == Some(0)
    })
    .await;
    assert!(rules_of(&vm_firewall(&op, &uid).expect("firewall")).is_empty());

    // Stop, then start: two more timeline rows after the first start.
    api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": false}}))).await.expect("stop");
    wait_for(&api, "web", DEADLINE, "stopped", |v| {
        vm_ready(v)
            && v.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.status.as_deref()) == Some("off")
    })
    .await;
    api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": true}}))).await.expect("start");
    wait_for(&api, "web", DEADLINE, "running again", |v| {
        vm_ready(v)
            && v.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.status.as_deref()) == Some("running")
    })
    .await;
    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    let kinds: Vec<&str> = rows.iter().map(|r| r.transition.as_str()).collect();
    assert_eq!(kinds, ["start", "stop", "start"], "{rows:?}");
    assert!(rows.iter().all(|r| r.price_cell == "plainvm-eu-cx23"));

    // Delete: no server, no firewall of ours, one destroy event, the timeline closed.
    api.delete("web", &DeleteParams::default()).await.expect("delete");
    wait_gone(&api, "web", DEADLINE).await;
    assert!(crabglamp_sandbox::hetzner::server_names(&op.hetzner).is_empty());
    assert!(vm_firewall(&op, &uid).is_none(), "the firewall is gone");
    assert_eq!(crabglamp_sandbox::hetzner::firewall_count(&op.hetzner), 1, "only the Agents' fleet firewall");
    let events = audit::events_for_resource(&op.db.pool, &uid).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.kind == "plainvm.destroyed").count(), 1);
    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    assert_eq!(rows.last().map(|r| r.transition.as_str()), Some("stop"), "deletion closes the timeline");
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    op.stop().await;
}
