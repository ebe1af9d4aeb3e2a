//! Admission throughput: how many custom-resource writes per second the admission module
//! (pruning, defaults, structural checks, CEL) can judge on one core. Prints figures; it has
//! no pass/fail threshold.

use std::time::Instant;

use crabglamp_operator::api::all_crds;
use crabglamp_sandbox::admission::CrdValidator;
use serde_json::json;

fn main() {
    let crds = all_crds();
    let plain_vm = crds.iter().find(|c| c.spec.names.kind == "PlainVM").expect("PlainVM CRD");
    let validator = CrdValidator::new(plain_vm).expect("CRD compiles");
    let object = json!({
        "apiVersion": "crabglamp.com/v1alpha1", "kind": "PlainVM",
        "metadata": {"name": "build-box", "namespace": "team-a"},
        "spec": {"owner": "acct_7f3a", "region": "eu", "firewall": {"inbound": [
            {"protocol": "tcp", "port": "22", "sourceIPs": ["203.0.113.0/24", "2001:db8::/32"]},
            {"protocol": "tcp", "port": "8000-8100", "sourceIPs": ["0.0.0.0/0"]},
            {"protocol": "icmp", "sourceIPs": ["0.0.0.0/0"]}
        ]}}
    });
    let mut updated = object.clone();
    updated["spec"]["running"] = json!(false);

    let started = Instant::now();
    let setup = Instant::now();
    let _ = CrdValidator::new(plain_vm).expect("CRD compiles");
    let setup = setup.elapsed();
    for (label, old) in [("create", None), ("update", Some(&object))] {
        let n = 5_000;
        let t = Instant::now();
        for _ in 0..n {
            validator.admit("v1alpha1", &updated, old).expect("admitted");
        }
        let per = t.elapsed() / n;
        println!("admission {label}: {per:?} per object, {:.0} objects/s", 1.0 / per.as_secs_f64());
    }
    println!("validator setup (compile schema and CEL rules): {setup:?}");
    println!("total: {:?}", started.elapsed());
}
