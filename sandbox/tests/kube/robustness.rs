//! Malformed and odd requests: every one gets a Kubernetes `Status` error, never a dropped
//! connection (a panic in a handler), and the server keeps serving and keeps its objects.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::start;

const AGENTS: &str = "/apis/crabglamp.com/v1alpha1/namespaces/default/agents";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const NAMESPACE: &str = "/api/v1/namespaces/default";
const JSON: &str = "application/json";

struct Raw {
    client: reqwest::Client,
    base: String,
}

impl Raw {
    /// A plain HTTP client for `sb`'s server (no proxy: the server is on loopback).
    fn new(sb: &crate::common::Sandbox) -> Self {
        Self { client: reqwest::Client::builder().no_proxy().build().expect("client"), base: sb.kube.base_url.clone() }
    }

    fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("Content-Type", content_type)
            .body(body.to_owned())
            .timeout(Duration::from_secs(30))
    }

    /// The code and body; a connection closed without an answer (a panic) fails the test.
    async fn send(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let what = format!("{method} {path} ({content_type}) {body:?}");
        let resp = self
            .request(method, path, content_type, body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer ({e})"));
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_else(|e| panic!("{what}: body cut off ({e})"));
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_bodies_and_parameters_get_a_status_and_never_crash_the_server() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    let agent = json!({"apiVersion": "crabglamp.com/v1alpha1", "kind": "Agent", "metadata": {"name": "a"},
                       "spec": {"owner": "o", "region": "us"}});
    assert_eq!(raw.send("POST", AGENTS, JSON, &agent.to_string()).await.0, 201);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}});
    assert_eq!(raw.send("POST", SECRETS, JSON, &secret.to_string()).await.0, 201);

    let odd_bodies = [
        "[]",
        "[1]",
        "\"x\"",
        "42",
        "true",
        "{",
        "- a\n- b\n",
        "\u{0}\u{1}",
        r#"{"metadata":[]}"#,
        r#"{"metadata":"x"}"#,
        r#"{"metadata":{"name":7,"labels":"x","finalizers":{}}}"#,
    ];
    let objects = [
        format!("{AGENTS}/a"),
        format!("{AGENTS}/a/status"),
        format!("{SECRETS}/s"),
        NAMESPACE.to_owned(),
        format!("{NAMESPACE}/status"),
    ];
    let patch_types = [
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/apply-patch+yaml",
        "application/strategic-merge-patch+json",
    ];
    let mut cases: Vec<(&str, String, &str, String)> = Vec::new();
    for body in odd_bodies {
        for path in [AGENTS, SECRETS, "/api/v1/namespaces"] {
            cases.push(("POST", path.to_owned(), JSON, body.to_owned()));
        }
        for path in &objects {
            cases.push(("PUT", path.clone(), JSON, body.to_owned()));
            for ct in patch_types {
                if body == "[]" && ct == "application/json-patch+json" {
                    continue; // an empty JSON patch is a valid no-op
                }
                cases.push(("PATCH", path.clone(), ct, body.to_owned()));
            }
            // A body that is not DeleteOptions must not be read as "no options".
            if !serde_json::from_str::<Value>(body).is_ok_and(|v| v.is_object()) {
                cases.push(("DELETE", path.clone(), JSON, body.to_owned()));
            }
        }
    }
    let json_patches = [
        r#"[{"op":"replace","path":"","value":[]}]"#,
        r#"[{"op":"replace","path":"","value":"x"}]"#,
        r#"[{"op":"replace","path":"/metadata","value":[]}]"#,
        r#"[{"op":"add","path":"/metadata/finalizers","value":"x"}]"#,
        r#"[{"op":"test","path":"/a/b/c","value":null}]"#,
        r#"[{"op":"bogus"}]"#,
    ];
    for patch in json_patches {
        for path in &objects {
            cases.push(("PATCH", path.clone(), "application/json-patch+json", patch.to_owned()));
        }
    }
    for query in [
        "?watch=true&resourceVersion=-1",
        "?watch=true&resourceVersionMatch=Exact",
        "?watch=true&resourceVersionMatch=NotOlderThan",
        "?watch=true&sendInitialEvents=true",
        "?watch=true&sendInitialEvents=true&resourceVersionMatch=Exact",
        "?limit=-1&continue=x",
        "?continue=99999999999999999999",
        "?labelSelector=a%20in%20(b",
        "?labelSelector=tier%3Dgold%20silver",
        "?fieldSelector=x",
        "?fieldSelector=spec.bogus%3Dx",
    ] {
        cases.push(("GET", format!("{AGENTS}{query}"), JSON, String::new()));
    }
    cases.push(("POST", format!("{AGENTS}?fieldValidation=Bogus"), JSON, agent.to_string()));
    let mut wrong_kind = agent.clone();
    wrong_kind["kind"] = json!("PlainVM");
    cases.push(("PATCH", format!("{AGENTS}/a?fieldManager=x"), "application/apply-patch+yaml", wrong_kind.to_string()));

    for (method, path, ct, body) in &cases {
        let (code, answer) = raw.send(method, path, ct, body).await;
        let what = format!("{method} {path} ({ct}) {body:?} -> {code} {answer}");
        assert!((400..500).contains(&code), "{what}");
        assert_eq!(answer["kind"], "Status", "{what}");
    }

    // An oversized body is refused with a Status too.
    let huge = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "huge"},
                      "data": {"k": "A".repeat(4 * 1024 * 1024)}});
    let (code, answer) = raw.send("POST", SECRETS, JSON, &huge.to_string()).await;
    assert_eq!((code, answer["reason"].as_str()), (413, Some("RequestEntityTooLarge")), "{answer}");

    // Nothing above changed or deleted an object.
    for (path, rv) in [(format!("{AGENTS}/a"), "spec"), (format!("{SECRETS}/s"), "data")] {
        let (code, object) = raw.send("GET", &path, JSON, "").await;
        assert_eq!(code, 200, "{path}: {object}");
        assert!(object.get(rv).is_some(), "{path}: {object}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_timeout_beyond_the_clock_is_no_timeout() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    let resp = raw
        .client
        .get(format!("{}{SECRETS}?watch=true&timeoutSeconds=18446744073709551615", raw.base))
        .send()
        .await
        .expect("the watch is answered");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "seen"}});
    assert_eq!(raw.send("POST", SECRETS, JSON, &secret.to_string()).await.0, 201);
    // The watch is still open and delivers the change.
    let mut received = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !received.contains("\"seen\"") {
            let chunk = body.next().await.expect("the watch ended").expect("the watch broke");
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no ADDED event within 30 s: {received}"));
    let event: Value = serde_json::from_str(received.lines().next().unwrap_or_default()).expect("a JSON event line");
    assert_eq!((event["type"].as_str(), event["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("seen")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_that_no_url_could_address_are_refused() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    let body =
        |kind: &str, name: &str| json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}).to_string();
    for (path, kind, name, words) in [
        (SECRETS, "Secret", "a/b", "RFC 1123 subdomain"),
        (SECRETS, "Secret", "Upper", "RFC 1123 subdomain"),
        ("/api/v1/namespaces/default/configmaps", "ConfigMap", "..", "RFC 1123 subdomain"),
        ("/api/v1/namespaces", "Namespace", "team.a", "RFC 1123 label"),
    ] {
        let (code, answer) = raw.send("POST", path, JSON, &body(kind, name)).await;
        assert_eq!((code, answer["reason"].as_str()), (422, Some("Invalid")), "{kind} {name:?}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains("metadata.name") && message.contains(words), "{message}");
    }
    let (code, answer) = raw.send("POST", SECRETS, JSON, &body("Secret", "db-creds.v2")).await;
    assert_eq!(code, 201, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_namespace_cannot_be_deleted() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    for ns in ["default", "kube-system", "kube-public"] {
        let (code, answer) = raw.send("DELETE", &format!("/api/v1/namespaces/{ns}"), JSON, "").await;
        assert_eq!((code, answer["reason"].as_str()), (403, Some("Forbidden")), "{ns}: {answer}");
    }
    // Still Active, and still accepting objects.
    let (code, answer) = raw.send("GET", NAMESPACE, JSON, "").await;
    assert_eq!((code, answer["status"]["phase"].as_str()), (200, Some("Active")), "{answer}");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "after"}});
    assert_eq!(raw.send("POST", SECRETS, JSON, &secret.to_string()).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boolean_parameters_are_read_as_go_reads_them() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    // `True` is a watch (not a list), ended by its timeout after the synthetic ADDED events.
    let (code, answer) = raw.send("GET", &format!("{SECRETS}?watch=True&timeoutSeconds=1"), JSON, "").await;
    assert_eq!(code, 200);
    assert!(answer.get("kind").is_none(), "a list instead of a watch: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_patches_cannot_nest_an_object_deeper_than_clients_can_read() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "deep"}});
    let path = "/api/v1/namespaces/default/configmaps";
    assert_eq!(raw.send("POST", path, JSON, &cm.to_string()).await.0, 201);
    // Each value nests 90 levels (a body may nest 128); the second lands inside the first.
    let mut value = json!("leaf");
    for _ in 0..90 {
        value = json!({ "a": value });
    }
    let inner = format!("/x{}", "/a".repeat(80));
    let patch = json!([{"op": "add", "path": "/x", "value": value}, {"op": "add", "path": format!("{inner}/b"), "value": value}]);
    let (code, answer) =
        raw.send("PATCH", &format!("{path}/deep"), "application/json-patch+json", &patch.to_string()).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap_or_default().contains("nested deeper"), "{answer}");
    // The first value alone stays within the limit.
    let patch = json!([{"op": "add", "path": "/x", "value": value}]);
    let (code, answer) =
        raw.send("PATCH", &format!("{path}/deep"), "application/json-patch+json", &patch.to_string()).await;
    assert_eq!(code, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_and_config_map_payloads_must_decode_and_errors_never_quote_them() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    let configmaps = "/api/v1/namespaces/default/configmaps";
    for (path, body) in [
        (
            SECRETS,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "raw"}, "data": {"token": "hunter2!"}}),
        ),
        (
            SECRETS,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "num"}, "stringData": {"token": 42}}),
        ),
        (SECRETS, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "list"}, "data": ["hunter2!"]})),
        (
            configmaps,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bin"}, "binaryData": {"b": "hunter2!"}}),
        ),
        (configmaps, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "num"}, "data": {"n": 1}})),
    ] {
        let (code, answer) = raw.send("POST", path, JSON, &body.to_string()).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(!answer.to_string().contains("hunter2"), "the error quotes the payload: {answer}");
    }
    // A valid one is accepted, and a patch cannot break it afterwards.
    let good =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "good"}, "data": {"token": "aHVudGVyMg=="}});
    assert_eq!(raw.send("POST", SECRETS, JSON, &good.to_string()).await.0, 201);
    let patch = json!({"data": {"token": "not base64"}}).to_string();
    let (code, answer) = raw.send("PATCH", &format!("{SECRETS}/good"), "application/merge-patch+json", &patch).await;
    assert_eq!(code, 400, "{answer}");
    // A null value is an empty one, as Go reads it.
    let empty = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "empty"}, "data": {"k": null}});
    let (code, answer) = raw.send("POST", SECRETS, JSON, &empty.to_string()).await;
    assert_eq!((code, answer["data"]["k"].as_str()), (201, Some("")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_list_options_are_checked_as_a_real_server_checks_them() {
    let sb = start().await;
    let raw = Raw::new(&sb);
    let (code, answer) = raw.send("GET", &format!("{AGENTS}?watch=true&sendInitialEvents=true"), JSON, "").await;
    assert_eq!((code, answer["reason"].as_str()), (422, Some("Invalid")), "{answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message
            .starts_with("ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents"),
        "{message}"
    );
}
