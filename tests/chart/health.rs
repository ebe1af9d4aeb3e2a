//! The Argo CD health check (charts/crabglamp-operator/argocd-health.lua) run by a real Lua
//! 5.4 (Debian's `lua5.4`, what Argo CD's gopher-lua implements: 5.1 syntax, which 5.4 runs)
//! on sample statuses of the three kinds, next to what kstatus (Flux, `kubectl wait`,
//! cli-utils) makes of the same status: every sample states both.

use std::process::Command;

use serde_json::{Value, json};

use super::helm::chart_dir;

/// A JSON value as a Lua table constructor (null fields are left out, as Argo CD's
/// conversion leaves them nil).
fn lua_literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for b in s.bytes() {
                match b {
                    b'"' | b'\\' => out.push_str(&format!("\\{}", b as char)),
                    0x20..=0x7e => out.push(b as char),
                    other => out.push_str(&format!("\\{other:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_literal(&Value::String(k.clone())), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the health check on `object`: Argo CD's (status, message).
pub fn argo_health(object: &Value) -> (String, String) {
    let script = chart_dir().join("argocd-health.lua");
    let driver = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua_literal(object),
        lua_literal(&Value::String(script.display().to_string()))
    );
    let out = Command::new("lua5.4").arg("-e").arg(&driver).output().unwrap_or_else(|e| {
        panic!("cannot run lua5.4 ({e}): scripts/test installs it (Debian: apt-get install lua5.4)")
    });
    assert!(out.status.success(), "the health check failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.to_owned(), message.to_owned())
}

/// kstatus' reading of a custom resource's status (cli-utils `pkg/kstatus/status`, the generic
/// rules a kind without a built-in rule gets): Terminating once deleted; InProgress while
/// `status.observedGeneration` differs from `metadata.generation`; then the first of
/// Reconciling=True (InProgress) and Stalled=True (Failed) in list order; Current otherwise.
/// kstatus never reads Ready: the controllers' Reconciling and Stalled carry that meaning.
pub fn kstatus(object: &Value) -> &'static str {
    if object["metadata"]["deletionTimestamp"].as_str().is_some_and(|t| !t.is_empty()) {
        return "Terminating";
    }
    let status = &object["status"];
    if let (Some(generation), Some(observed)) =
        (object["metadata"]["generation"].as_i64(), status["observedGeneration"].as_i64())
        && generation != observed
    {
        return "InProgress";
    }
    for c in status["conditions"].as_array().into_iter().flatten().filter(|c| c["status"] == "True") {
        match c["type"].as_str() {
            Some("Reconciling") => return "InProgress",
            Some("Stalled") => return "Failed",
            _ => {}
        }
    }
    "Current"
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason, "message": message,
           "observedGeneration": 2, "lastTransitionTime": "2026-12-01T10:00:00Z"})
}

fn object(kind: &str, generation: i64, status: Option<Value>) -> Value {
    let mut o = json!({"apiVersion": "crabglamp.com/v1alpha1", "kind": kind,
                       "metadata": {"name": "sample", "namespace": "team-a", "generation": generation},
                       "spec": {"owner": "acct_7f3a", "running": true}});
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

/// The sample statuses: (what, object, Argo CD health, kstatus). Shapes as the controllers
/// write them (conditions from `lifecycle::summary_conditions` and the VirtualKey status).
fn samples() -> Vec<(&'static str, Value, &'static str, &'static str)> {
    let agent_ready = json!({"observedGeneration": 2, "phase": "Running", "conditions": [
        condition("Ready", true, "Ready", "The server runs and its tunnel is connected."),
        condition("ServerReady", true, "Running", "The server is running."),
        condition("TunnelReady", true, "Connected", "cloudflared is connected to the tunnel."),
        condition("DnsReady", true, "RecordInPlace", "research-bot.agents.example.com points at the tunnel."),
    ]});
    let provisioning = json!({"observedGeneration": 2, "phase": "Provisioning", "conditions": [
        condition("Ready", false, "WaitingForTunnel", "The server boots; waiting for cloudflared."),
        condition("ServerReady", true, "Running", "The server is running."),
        condition("TunnelReady", false, "Disconnected", "No connector yet."),
        condition("Reconciling", true, "Progressing", "Cloud resources are being created or changed."),
    ]});
    let stalled = json!({"observedGeneration": 2, "phase": "Failed", "conditions": [
        condition("Ready", false, "FirewallQuotaExceeded", "The project's firewall limit is reached."),
        condition("FirewallReady", false, "FirewallQuotaExceeded", "The project's firewall limit is reached."),
        condition("Stalled", true, "FirewallQuotaExceeded", "The project's firewall limit is reached."),
    ]});
    let stopped = json!({"observedGeneration": 3, "phase": "Stopped", "conditions": [
        condition("Ready", true, "Ready", "The server is off, as requested."),
        condition("ServerReady", true, "Off", "The server is off."),
    ]});
    let key_ready = json!({"observedGeneration": 2, "keyId": "vk_1", "blocked": false, "conditions": [
        condition("KeyReady", true, "Published", "Key vk_1 is in Secret k and published to the proxy"),
        condition("BudgetExceeded", false, "WithinBudget", "1.00 of 50.00 USD this month"),
        condition("Expired", false, "NotExpired", "The key has not expired"),
        condition("Ready", true, "Ready", "The key is published and within its budget"),
    ]});
    let key_blocked = json!({"observedGeneration": 2, "keyId": "vk_1", "blocked": true, "conditions": [
        condition("KeyReady", true, "Published", "Key vk_1 is in Secret k and published to the proxy"),
        condition("BudgetExceeded", true, "BudgetReached", "Spend reached the budget: 50.00 of 50.00 USD this month"),
        condition("Expired", false, "NotExpired", "The key has not expired"),
        condition("Ready", false, "BudgetExceeded", "The proxy refuses the key: BudgetExceeded"),
    ]});
    let key_expired = json!({"observedGeneration": 2, "blocked": true, "conditions": [
        condition("Ready", false, "Expired", "The proxy refuses the key: Expired"),
    ]});
    let mut stopped_agent = object("Agent", 3, Some(stopped.clone()));
    stopped_agent["spec"]["running"] = false.into();
    vec![
        // kstatus cannot tell "not looked at yet" without an observedGeneration; Argo CD can.
        ("a new Agent nobody has looked at", object("Agent", 1, None), "Progressing", "Current"),
        ("an Agent being provisioned", object("Agent", 2, Some(provisioning.clone())), "Progressing", "InProgress"),
        ("a Ready Agent", object("Agent", 2, Some(agent_ready.clone())), "Healthy", "Current"),
        ("a Ready Agent whose spec changed since", object("Agent", 3, Some(agent_ready)), "Progressing", "InProgress"),
        ("a stopped Agent", stopped_agent, "Healthy", "Current"),
        ("a PlainVM at the firewall limit", object("PlainVM", 2, Some(stalled)), "Degraded", "Failed"),
        ("a PlainVM being provisioned", object("PlainVM", 2, Some(provisioning)), "Progressing", "InProgress"),
        ("a stopped PlainVM", object("PlainVM", 3, Some(stopped)), "Healthy", "Current"),
        (
            "a PlainVM without conditions yet",
            object("PlainVM", 2, Some(json!({"observedGeneration": 2}))),
            "Progressing",
            "Current",
        ),
        ("a published VirtualKey", object("VirtualKey", 2, Some(key_ready)), "Healthy", "Current"),
        // A refused key is settled (nothing is left to do until the budget, the month or the
        // expiry changes), so kstatus calls it Current and `kubectl wait`/Flux move on; Argo
        // CD's health shows the refusal as Degraded, which is what a person wants to see.
        ("a VirtualKey over its budget", object("VirtualKey", 2, Some(key_blocked)), "Degraded", "Current"),
        ("an expired VirtualKey", object("VirtualKey", 2, Some(key_expired)), "Degraded", "Current"),
    ]
}

#[test]
fn argo_cd_health_and_kstatus_read_sample_statuses_as_they_should() {
    for (what, object, argo, ks) in samples() {
        let (status, message) = argo_health(&object);
        assert_eq!(status, argo, "{what}: Argo CD health (message {message:?})");
        assert!(!message.is_empty(), "{what}: a message says why");
        assert_eq!(kstatus(&object), ks, "{what}: kstatus");
        // kstatus conventions the controllers follow: Ready is the summary, Reconciling and
        // Stalled are abnormal-true and never both.
        let conditions = object["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let is_true = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
        assert!(!(is_true("Reconciling") && is_true("Stalled")), "{what}");
        if !conditions.is_empty() {
            assert!(conditions.iter().any(|c| c["type"] == "Ready"), "{what}: a Ready condition");
            assert!(object["status"]["observedGeneration"].is_i64(), "{what}: observedGeneration");
        }
    }
}

#[test]
fn the_messages_carry_the_reason() {
    let (status, message) = argo_health(&object(
        "PlainVM",
        2,
        Some(json!({"observedGeneration": 2, "conditions": [
            condition("Stalled", true, "FirewallQuotaExceeded", "Ask Hetzner for a higher \"firewall\" limit.")]})),
    ));
    assert_eq!(status, "Degraded");
    assert_eq!(message, "FirewallQuotaExceeded: Ask Hetzner for a higher \"firewall\" limit.");
}
