//! The glamp store's presigned URLs against the official AWS SDK for Python: for the same
//! credentials, time, bucket, key and expiry, botocore's presigner (`scripts/check-presign-
//! botocore.py`) signs the very same URL, byte for byte, in both addressing styles, for GET and
//! HEAD, for Tigris's region `auto` and an AWS region, and for keys that need escaping.
//! Needs CRABGLAMP_PYTHON pointing at a python with botocore (scripts/test installs it).

use std::time::Duration;

use crabglamp_operator::cloud::Secret;
use crabglamp_operator::cloud::glamp_store::{GlampStore, GlampStoreSettings};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

struct Case {
    endpoint: &'static str,
    region: &'static str,
    path_style: bool,
    head: bool,
    name: &'static str,
    version: &'static str,
    expires: u64,
    time: &'static str,
}

const ACCESS_KEY_ID: &str = "tid_AKIAEXAMPLE7Q";
const SECRET_ACCESS_KEY: &str = "tsec_wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn store(case: &Case) -> GlampStore {
    GlampStore::new(GlampStoreSettings {
        endpoint: case.endpoint.into(),
        bucket: "crab-glamps".into(),
        region: case.region.into(),
        prefix: "published/".into(),
        path_style: case.path_style,
        access_key_id: Secret::new(ACCESS_KEY_ID),
        secret_access_key: Secret::new(SECRET_ACCESS_KEY),
        url_expiry: Duration::from_secs(case.expires),
    })
    .expect("store settings")
}

#[test]
fn presigned_urls_agree_with_botocore_byte_for_byte() {
    let Ok(python) = std::env::var("CRABGLAMP_PYTHON") else {
        panic!("CRABGLAMP_PYTHON is not set: point it at a python with botocore (scripts/test does this for you)")
    };
    let cases = [
        Case {
            endpoint: "https://fly.storage.tigris.dev",
            region: "auto",
            path_style: false,
            head: false,
            name: "crab",
            version: "1.2.0",
            expires: 900,
            time: "2026-12-07T12:00:00Z",
        },
        Case {
            endpoint: "https://fly.storage.tigris.dev",
            region: "auto",
            path_style: true,
            head: true,
            name: "crab",
            version: "1.2.0",
            expires: 900,
            time: "2026-12-07T12:00:00Z",
        },
        Case {
            endpoint: "https://s3.eu-central-1.amazonaws.com",
            region: "eu-central-1",
            path_style: false,
            head: false,
            name: "hermit-crab",
            version: "2.0.0-rc.1+build.7",
            expires: 3600,
            time: "2026-01-31T23:59:59Z",
        },
        Case {
            endpoint: "http://127.0.0.1:9000",
            region: "us-east-1",
            path_style: true,
            head: false,
            name: "crab",
            version: "0.1.0~beta 2",
            expires: 60,
            time: "2027-02-28T00:00:01Z",
        },
    ];
    let mut ours = Vec::new();
    let mut input = Vec::new();
    for case in &cases {
        let store = store(case);
        let key = store.tarball_key(case.name, case.version);
        let now: Timestamp = case.time.parse().expect("time");
        let url = if case.head { store.presign_head(&key, now) } else { store.presign_get(&key, now) };
        ours.push(url.expose().to_owned());
        input.push(json!({
            "endpoint": case.endpoint, "bucket": "crab-glamps", "region": case.region, "key": key,
            "method": if case.head { "head_object" } else { "get_object" }, "expires": case.expires,
            "time": case.time, "path_style": case.path_style,
            "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY,
        }));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-presign-botocore.py");
    let mut child = std::process::Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(Value::from(input).to_string().as_bytes()).expect("write the cases");
    }
    let out = child.wait_with_output().expect("botocore's presigner runs");
    assert!(out.status.success(), "botocore failed: {}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<String> = serde_json::from_slice(&out.stdout).expect("botocore prints a JSON list");
    assert_eq!(theirs.len(), ours.len());
    for (case, (ours, theirs)) in cases.iter().zip(ours.iter().zip(&theirs)) {
        assert_eq!(
            ours, theirs,
            "{} {} at {}: the operator's URL differs from botocore's",
            case.endpoint, case.version, case.time
        );
    }
}
