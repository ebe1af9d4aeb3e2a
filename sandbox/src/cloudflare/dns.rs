//! DNS records of the simulated zone as it holds them, and how the API renders them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub(super) const TYPES: &[&str] = &["A", "AAAA", "CNAME", "TXT", "MX", "NS", "SRV", "CAA", "PTR"];

#[derive(Clone)]
pub struct Record {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) content: String,
    pub(super) proxied: bool,
    pub(super) ttl: i64,
    pub(super) comment: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) created_on: String,
    pub(super) modified_on: String,
    /// Set once a comment or tags were written, as the API reports them.
    pub(super) comment_modified_on: Option<String>,
    pub(super) tags_modified_on: Option<String>,
}

impl Record {
    pub(super) fn json(&self, zone_id: &str, zone_name: &str) -> Value {
        let mut json = json!({
            "id": self.id,
            "zone_id": zone_id,
            "zone_name": zone_name,
            "type": self.kind,
            "name": self.name,
            "content": self.content,
            "proxiable": matches!(self.kind.as_str(), "A" | "AAAA" | "CNAME"),
            "proxied": self.proxied,
            "ttl": self.ttl,
            "comment": self.comment,
            "tags": self.tags,
            "settings": {},
            "meta": {},
            "created_on": self.created_on,
            "modified_on": self.modified_on,
        });
        if let Some(at) = &self.comment_modified_on {
            json["comment_modified_on"] = json!(at);
        }
        if let Some(at) = &self.tags_modified_on {
            json["tags_modified_on"] = json!(at);
        }
        json
    }
}

#[derive(Default)]
pub struct Records {
    pub(super) by_id: BTreeMap<String, Record>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every record's id, name and comment, in id order.
    pub fn summary(&self) -> Vec<(String, String, Option<String>)> {
        self.by_id.values().map(|r| (r.id.clone(), r.name.clone(), r.comment.clone())).collect()
    }

    /// Removes a record behind the client's back (as if deleted in the dashboard).
    pub fn vanish(&mut self, id: &str) -> bool {
        self.by_id.remove(id).is_some()
    }
}
