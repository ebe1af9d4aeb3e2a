//! The endpoints of a running instance: /metrics carries every metric under its final name
//! (what the chart's dashboard queries) with values that match what happened; /healthz and
//! /readyz answer; anything else is 404.

use std::time::Duration;

use kube::api::{DeleteParams, PostParams};

use super::support::{eventually, lease};
use crate::fixture::{Operator, agent, ready, test_config, wait_for, wait_gone};

/// The value of one sample line `name{labels} value` in a Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The metric families the chart's dashboard queries (`_total` and `_bucket` are sample
/// suffixes of a counter's or histogram's family).
fn dashboard_families() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/crabglamp-operator/dashboards/crabglamp-operator.json");
    let text = std::fs::read_to_string(path).expect("the dashboard JSON");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut families = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for (start, _) in expr.match_indices("crabglamp_") {
                let name: String =
                    expr[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let family = name.strip_suffix("_total").or_else(|| name.strip_suffix("_bucket")).unwrap_or(&name);
                families.insert(family.to_owned());
            }
        }
    }
    assert!(families.len() >= 10, "the dashboard's metrics were found: {families:?}");
    families
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_carry_their_final_names_and_count_what_happened() {
    let op = Operator::start_idle().await;
    op.create_namespace("team-a").await;
    let a = op.instance(test_config(), Some(lease("metrics", Duration::from_secs(15)))).await;
    eventually(Duration::from_secs(10), "it leads", || async { a.leading() }).await;
    let agents = op.agents("team-a");
    agents.create(&PostParams::default(), &agent("watched", "alice", true)).await.expect("create");
    wait_for(&agents, "watched", Duration::from_secs(60), "Ready", ready).await;
    eventually(Duration::from_secs(10), "ready once the caches are synced", || async {
        a.get("/readyz").await.0 == 200
    })
    .await;
    // The cache sees the Ready status a moment after the API server has it.
    let running = "crabglamp_objects{kind=\"Agent\",phase=\"Running\"}";
    eventually(Duration::from_secs(10), "the objects gauge shows it Running", || async {
        sample(&a.get("/metrics").await.1, running) == Some(1.0)
    })
    .await;
    let (status, body) = a.get("/metrics").await;
    assert_eq!(status, 200);
    // Families with samples: their sample lines; the others at least their TYPE line.
    for series in [
        "crabglamp_leader",
        "crabglamp_objects{kind=\"Agent\",phase=\"Running\"}",
        "crabglamp_queue_depth{kind=\"Agent\"}",
        "crabglamp_queue_depth{kind=\"PlainVM\"}",
        "crabglamp_reconcile_duration_seconds_count{kind=\"Agent\"}",
        "crabglamp_steps_total{kind=\"Agent\",step=\"create_server\"}",
        "crabglamp_status_writes_total{kind=\"Agent\",step=\"status\"}",
    ] {
        assert!(sample(&body, series).is_some(), "{series} missing in:\n{body}");
    }
    for family in [
        "crabglamp_reconciles counter",
        "crabglamp_reconcile_duration_seconds histogram",
        "crabglamp_cloud_requests counter",
        "crabglamp_cloud_rate_budget_remaining gauge",
        "crabglamp_cloud_rate_limit_wait_milliseconds counter",
        "crabglamp_audit_events counter",
        "crabglamp_swept counter",
        "crabglamp_objects gauge",
        "crabglamp_queue_depth gauge",
        "crabglamp_steps counter",
        "crabglamp_status_writes counter",
        "crabglamp_leader gauge",
    ] {
        assert!(body.contains(&format!("# TYPE {family}\n")), "# TYPE {family} missing in:\n{body}");
    }
    assert!(!body.contains("crabglamp_crabglamp"), "a doubled prefix:\n{body}");
    // Every metric the chart's Grafana dashboard queries is one this operator serves.
    for family in dashboard_families() {
        assert!(body.contains(&format!("# TYPE {family} ")), "the dashboard queries {family}, not served:\n{body}");
    }
    assert_eq!(sample(&body, "crabglamp_leader"), Some(1.0));
    assert_eq!(sample(&body, "crabglamp_objects{kind=\"Agent\",phase=\"Running\"}"), Some(1.0));
    let ok = sample(&body, "crabglamp_reconciles_total{kind=\"Agent\",outcome=\"ok\"}").expect("reconciles");
    assert!(ok >= 1.0);
    assert!(ok <= a.context.metrics().reconciles("Agent", "ok") as f64, "the scrape counts what the metrics count");
    let created =
        sample(&body, "crabglamp_cloud_requests_total{provider=\"hetzner\",endpoint=\"create_server\",outcome=\"ok\"}");
    assert_eq!(created, Some(1.0), "one server, one create:\n{body}");
    assert!(sample(&body, "crabglamp_cloud_rate_budget_remaining{provider=\"hetzner\"}").is_some_and(|v| v > 0.0));

    // A delete writes one audit event; the Agent leaves the objects gauge.
    agents.delete("watched", &DeleteParams::default()).await.expect("delete");
    wait_gone(&agents, "watched", Duration::from_secs(60)).await;
    eventually(Duration::from_secs(10), "the objects gauge forgets it", || async {
        sample(&a.get("/metrics").await.1, running).is_none()
    })
    .await;
    let body = a.get("/metrics").await.1;
    assert_eq!(sample(&body, "crabglamp_audit_events_total{event_type=\"agent.destroyed\"}"), Some(1.0), "{body}");

    assert_eq!(a.get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(a.get("/nothing").await.0, 404);
    a.stop().await;
}
