//! Admission, proved against the sandbox's API server: an owner change, a region other than
//! `eu`, a malformed CIDR or port are refused with the CRD rule's message, and nothing reaches
//! the cloud for them.

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::support::*;

fn refusal(result: Result<crabglamp_operator::api::PlainVM, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_server_refuses_what_the_rules_forbid() {
    let op = Operator::start().await;
    op.create_namespace("adm").await;
    let api = op.plainvms("adm");
    let pp = PostParams::default();

    let mut us = plainvm("us", "acct_a", true, two_rules());
    us.spec.region = crabglamp_operator::api::Region::Us;
    let msg = refusal(api.create(&pp, &us).await);
    assert!(msg.contains("spec.region must be eu: PlainVMs are offered only in Helsinki"), "{msg}");

    let cidr = json!([{"protocol": "tcp", "port": "22", "sourceIPs": ["203.0.113.0/33"]}]);
    let msg = refusal(api.create(&pp, &plainvm("cidr", "acct_a", true, cidr)).await);
    assert!(msg.contains("sourceIPs entries must be CIDRs"), "{msg}");

    let port = json!([{"protocol": "tcp", "port": "70000", "sourceIPs": ["0.0.0.0/0"]}]);
    let msg = refusal(api.create(&pp, &plainvm("port", "acct_a", true, port)).await);
    assert!(msg.contains("port must be a port 1-65535"), "{msg}");

    let icmp_port = json!([{"protocol": "icmp", "port": "22", "sourceIPs": ["0.0.0.0/0"]}]);
    let msg = refusal(api.create(&pp, &plainvm("icmp", "acct_a", true, icmp_port)).await);
    assert!(msg.contains("port is required for tcp and udp and not allowed for icmp"), "{msg}");

    api.create(&pp, &plainvm("web", "acct_a", true, two_rules())).await.expect("a valid PlainVM is admitted");
    let msg =
        refusal(api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"owner": "acct_b"}}))).await);
    assert!(msg.contains("spec.owner is immutable: PlainVMs are never transferred"), "{msg}");

    assert!(crabglamp_sandbox::hetzner::servers_created(&op.hetzner) <= 1, "only the valid one");
    op.stop().await;
}
