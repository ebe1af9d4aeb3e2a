//! What the anchor and reseal scenarios share: events to append, the CLI with a clean
//! environment, psql as the superuser an attacker would be.

use std::process::{Command, Output};

use chrono::Utc;
use crabglamp_operator::store::audit::{AuditKind, NewAuditEvent, ResourceRef};
use serde_json::json;

/// The fixture's sealing key (32 zero bytes) and its id.
pub const FIXTURE_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
pub const FIXTURE_KEY_ID: &str = "k1";

/// A destroy event for a made-up Agent.
pub fn destroyed(uid: &str) -> NewAuditEvent {
    NewAuditEvent {
        event_key: format!("agent.destroyed/{uid}"),
        kind: AuditKind::AgentDestroyed,
        resource: ResourceRef {
            kind: "Agent".into(),
            namespace: "team-a".into(),
            name: format!("bot-{uid}"),
            uid: uid.into(),
        },
        owners: vec!["acct_a".into()],
        region: Some("eu".into()),
        cloud_ids: json!({"serverId": 42}),
        details: json!({"deletionPolicy": "Delete"}),
        occurred_at: Utc::now(),
    }
}

/// The real binary, with no proxy, kubeconfig, namespace or sealing key inherited from the
/// test's environment: each test says what it gives.
pub fn cli() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"));
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "KUBECONFIG",
        "POD_NAMESPACE",
        "CRABGLAMP_SEALING_KEY",
        "CRABGLAMP_SEALING_KEY_ID",
        "CRABGLAMP_SEALING_PREVIOUS_KEYS",
        "CRABGLAMP_ANCHOR_CONFIGMAP",
    ] {
        command.env_remove(var);
    }
    command
}

/// Standard output and error of a finished command, for assertions and their messages.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `sql` with psql as the test database's superuser.
pub fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("psql is installed (scripts/test installs the PostgreSQL client)");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}
