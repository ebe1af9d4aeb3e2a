//! values.schema.json: malformed values fail `helm template` and `helm lint` with a message
//! naming the value; well-formed ones (default, ci/full-values.yaml) pass.

use super::helm;

/// A malformed value (as `--set`, or a values file's text) and what helm's message must name.
const MALFORMED: [(&str, &str); 15] = [
    ("replicaCount=two", "/replicaCount"),
    ("replicaCount=-1", "/replicaCount"),
    ("logFormat=xml", "/logFormat"),
    ("secrets.hcloudToken.existingSecret=", "/secrets/hcloudToken/existingSecret"),
    ("secrets.databaseUrl.existingSecret=Not_A_Name", "/secrets/databaseUrl/existingSecret"),
    ("secrets.sealingKey=null", "/secrets"),
    ("secrets.redisUrl.value=redis://secret@host", "/secrets/redisUrl"),
    ("hcloudToken=plain-token", "hcloudToken"),
    ("leaderElection.enabled=false", "/replicaCount"),
    ("watchNamespace=Team_A", "/watchNamespace"),
    ("virtualKeys.namespaces={Team_A}", "/virtualKeys/namespaces"),
    ("metrics.port=70000", "/metrics/port"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("config.resyncSeconds=0", "/config/resyncSeconds"),
    ("podDisruptionBudget.maxUnavailable=half", "/podDisruptionBudget/maxUnavailable"),
];

#[test]
fn malformed_values_are_refused_by_template_and_lint() {
    for (set, names) in MALFORMED {
        let err = helm::template(&[], &[set]).err().unwrap_or_else(|| panic!("helm template accepted --set {set}"));
        assert!(
            err.contains("values don't meet the specifications of the schema") && err.contains(names),
            "--set {set}: helm's message should name {names}:\n{err}"
        );
        let err = helm::lint(&[], &[set]).err().unwrap_or_else(|| panic!("helm lint accepted --set {set}"));
        assert!(err.contains(names), "helm lint --set {set}: {err}");
    }
}

#[test]
fn wellformed_values_are_accepted() {
    helm::defaults();
    helm::full();
    // One replica without leader election is fine; so is an optional credential left unnamed.
    helm::template(&[], &["leaderElection.enabled=false", "replicaCount=1"]).expect("single replica");
    helm::template(&[], &["secrets.redisUrl.existingSecret=llm-proxy", "virtualKeys.namespaces={team-a}"])
        .expect("redis from a Secret");
}
