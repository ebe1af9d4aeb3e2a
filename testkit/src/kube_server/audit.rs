//! The real kube-apiserver's audit log, read as the stand-in's request log is: who made which
//! requests since a test's turn began.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// What a test reads of one kube-apiserver audit event (level Metadata).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    pub request_u_r_i: String,
    pub user: AuditUser,
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    pub stage: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    pub username: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub api_group: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    pub(super) fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map(|s| s.code).unwrap_or(0)
    }
}

pub(super) fn read_audit(path: &Path, offset: u64) -> Vec<AuditEvent> {
    let mut file = std::fs::File::open(path).expect("audit log");
    file.seek(SeekFrom::Start(offset)).expect("seek audit log");
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read audit log");
    // The last line may still be being written: only whole lines count.
    text.lines()
        .filter(|line| line.ends_with('}'))
        .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
        // Once per request: a watch when it opens (its ResponseComplete comes when it ends),
        // everything else when it completes.
        .filter(|e| match e.stage.as_str() {
            "ResponseStarted" => e.verb == "watch",
            "ResponseComplete" => e.verb != "watch",
            other => other == "Panic",
        })
        .collect()
}
