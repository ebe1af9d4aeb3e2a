//! Billing follows the server Hetzner runs, not the spec: a server rescaled by hand in the
//! console (stopped, `change_type`, started again) runs, and is billed at, its new type, in
//! `status.priceCell` and in every usage row written after the change.

use std::time::Duration;

use crabglamp_operator::store::usage;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::support::*;

const NS: &str = "billing";
const DEADLINE: Duration = Duration::from_secs(60);

fn server_status(v: &crabglamp_operator::api::PlainVM) -> Option<&str> {
    v.status.as_ref()?.server.as_ref()?.status.as_deref()
}

/// The server type the simulator's server `id` has now.
fn type_in_hetzner(op: &Operator, id: i64) -> Option<String> {
    crabglamp_sandbox::hetzner::servers(&op.hetzner)
        .into_iter()
        .find(|s| s["id"] == id)
        .and_then(|s| s["server_type"]["name"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_rescaled_by_hand_is_billed_at_the_type_it_runs() {
    let op = Operator::start().await;
    op.create_namespace(NS).await;
    let api = op.plainvms(NS);
    api.create(&PostParams::default(), &plainvm("box", "acct_a", true, two_rules())).await.expect("create");
    let vm = wait_for(&api, "box", DEADLINE, "Ready", vm_ready).await;
    let uid = vm.uid().expect("uid");
    let id = vm.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).expect("server id");
    assert_eq!(vm.status.as_ref().and_then(|s| s.price_cell.as_deref()), Some("plainvm-eu-cx23"));

    // Stopped through the spec, then rescaled in the console (Hetzner needs it off for that).
    api.patch("box", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": false}}))).await.expect("stop");
    wait_for(&api, "box", DEADLINE, "stopped", |v| vm_ready(v) && server_status(v) == Some("off")).await;
    let rescale = reqwest::Client::new()
        .post(format!("{}/servers/{id}/actions/change_type", op.hetzner.base_url))
        .bearer_auth("hz-test")
        .json(&json!({"server_type": "cx33", "upgrade_disk": false}))
        .send()
        .await
        .expect("change_type answered");
    assert!(rescale.status().is_success(), "change_type: {}", rescale.text().await.unwrap_or_default());
    wait_until(DEADLINE, "the rescale done", || type_in_hetzner(&op, id).as_deref() == Some("cx33")).await;

    // Started again: what runs now is a cx33, and that is what status and the timeline bill.
    api.patch("box", &PatchParams::default(), &Patch::Merge(json!({"spec": {"running": true}}))).await.expect("start");
    let vm = wait_for(&api, "box", DEADLINE, "running, billed at the type it runs", |v| {
        vm_ready(v)
            && server_status(v) == Some("running")
            && v.status.as_ref().and_then(|s| s.price_cell.as_deref()) == Some("plainvm-eu-cx33")
    })
    .await;
    assert_eq!(vm.spec.server_type, "cx23", "the spec still names the type it was created with");
    let rows = usage::transitions_for_resource(&op.db.pool, &uid).await.expect("timeline");
    let billed: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (r.transition.as_str(), r.server_type.as_str(), r.price_cell.as_str())).collect();
    assert_eq!(
        billed,
        [
            ("start", "cx23", "plainvm-eu-cx23"),
            ("stop", "cx23", "plainvm-eu-cx23"),
            ("start", "cx33", "plainvm-eu-cx33")
        ],
        "each row bills the type the server had when it changed state"
    );
    op.stop().await;
}
