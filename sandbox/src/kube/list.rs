//! Paged lists as kube-apiserver cuts them from etcd: the first page pins a snapshot of the
//! kind, every later page (`continue`) reads the same snapshot and carries its
//! resourceVersion, and `remainingItemCount` counts what is left of it.
//!
//! Owns the `continue` token format and the 400/410 answers to bad or expired tokens. Never
//! holds the state lock while it selects or counts objects: under the lock it only clones a
//! persistent map (O(1)).

use std::ops::Bound;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::resource::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::shared::Shared;
use super::state::Bucket;

/// The message of a real server for a token whose snapshot is compacted away
/// (`k8s.io/apiserver/pkg/storage/etcd3`, `inconsistentContinue`).
pub const EXPIRED_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. \
You can start a new list without the continue parameter, or use the continue token in this response to retrieve \
the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that \
were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// The token format of `k8s.io/apiserver/pkg/storage` (`continueToken`): base64url (no
/// padding) of this JSON. `start` is the key to resume at, relative to the listed prefix;
/// `rv` -1 means "continue at the latest state" (what an expired token's Status offers).
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    #[serde(rename = "v")]
    api_version: String,
    rv: i64,
    start: String,
}

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

fn encode(rv: i64, start: String) -> String {
    let json = serde_json::to_vec(&Token { api_version: TOKEN_VERSION.into(), rv, start }).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// `storage.DecodeContinue`, with its error texts.
fn decode(token: &str) -> Result<Token, String> {
    let generic = "continue key is not valid";
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|e| format!("{generic}: {e}"))?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|e| format!("{generic}: {e}"))?;
    if token.api_version != TOKEN_VERSION {
        return Err(format!("{generic}: server does not recognize this encoded version {}", token.api_version));
    }
    if token.rv == 0 {
        return Err(format!("{generic}: incorrect encoded start resourceVersion (version {TOKEN_VERSION})"));
    }
    if token.start.is_empty() {
        return Err(format!("{generic}: encoded start key empty (version {TOKEN_VERSION})"));
    }
    // The real server refuses a key that `path.Clean` would change, so a token cannot reach
    // outside the listed prefix.
    let key = token.start.trim_end_matches('\0');
    if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(format!("{generic}: {}", token.start));
    }
    Ok(token)
}

/// What a list asked for.
pub struct ListRequest<'a> {
    /// The kind.
    pub rt: &'a ResourceType,
    /// The namespace, or all.
    pub namespace: Option<&'a str>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (absent or 0: everything).
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<&'a str>,
    /// `resourceVersion`.
    pub resource_version: Option<&'a str>,
}

/// One page of a list.
pub struct Page {
    /// The objects (stored form).
    pub items: Vec<std::sync::Arc<Value>>,
    /// `metadata` of the list: `resourceVersion`, `continue`, `remainingItemCount`.
    pub meta: Value,
}

/// Where the list resumes: after this (namespace, name), or at it.
type Start = Bound<(String, String)>;

impl ListRequest<'_> {
    /// The key of an object relative to the listed prefix, as etcd keys are: `name` within a
    /// namespace or for cluster-scoped kinds, `namespace/name` across namespaces.
    fn relative_key(&self, ns: &str, name: &str) -> String {
        if self.namespace.is_none() && self.rt.namespaced { format!("{ns}/{name}") } else { name.to_owned() }
    }

    fn start_of(&self, token: &Token) -> Result<Start, String> {
        let (key, after) = match token.start.strip_suffix('\0') {
            Some(k) => (k, true),
            None => (token.start.as_str(), false),
        };
        let pair = match self.namespace {
            Some(ns) => (ns.to_owned(), key.to_owned()),
            None if self.rt.namespaced => match key.split_once('/') {
                Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                None => return Err(format!("continue key is not valid: {}", token.start)),
            },
            None => (String::new(), key.to_owned()),
        };
        Ok(if after { Bound::Excluded(pair) } else { Bound::Included(pair) })
    }

    /// Cuts the page: under the lock only the snapshot is taken (or looked up).
    pub fn page(&self, shared: &Shared) -> Result<Page, ApiError> {
        let storage = &self.rt.storage;
        let token = match self.continue_token.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => {
                if self.resource_version.is_some_and(|rv| !rv.is_empty() && rv != "0") {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let token = decode(raw).map_err(|e| ApiError::bad_request(format!("invalid continue token: {e}")))?;
                let start =
                    self.start_of(&token).map_err(|e| ApiError::bad_request(format!("invalid continue token: {e}")))?;
                Some((token, start))
            }
        };
        let (bucket, rv, start, pinned) = {
            let mut state = shared.lock();
            match &token {
                None => (state.bucket(storage), state.rv(), Bound::Unbounded, false),
                Some((t, start)) if t.rv < 0 => (state.bucket(storage), state.rv(), start.clone(), false),
                Some((t, start)) => match state.snapshot(storage, t.rv.unsigned_abs()) {
                    Some(bucket) => (bucket, t.rv.unsigned_abs(), start.clone(), true),
                    None => {
                        // As etcd3's handleCompactedErrorForPaging: 410 with a token that
                        // continues from the same key at the latest state.
                        return Err(ApiError::new(410, "Expired", EXPIRED_CONTINUE)
                            .with_list_meta(serde_json::json!({"continue": encode(-1, t.start.clone())})));
                    }
                },
            }
        };
        let limit = self.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let selecting = !self.labels.is_empty() || !self.fields.is_empty();
        let (items, next, remaining) = self.cut(&bucket, start, limit);
        let mut meta = serde_json::json!({"resourceVersion": rv.to_string()});
        if let Some((ns, name)) = next {
            meta["continue"] = Value::String(encode(
                i64::try_from(rv).unwrap_or(i64::MAX),
                format!("{}\0", self.relative_key(&ns, &name)),
            ));
            // A real server omits the count under a selector: etcd counts keys, not matches.
            if !selecting {
                meta["remainingItemCount"] = Value::from(remaining);
            }
            if !pinned {
                shared.lock().keep_snapshot(storage, rv, bucket);
            }
        }
        Ok(Page { items, meta })
    }

    /// Up to `limit` matching objects from `start`; the key of the last one when more match
    /// after it, and how many objects (matching or not) follow it.
    fn cut(
        &self,
        bucket: &Bucket,
        start: Start,
        limit: usize,
    ) -> (Vec<std::sync::Arc<Value>>, Option<(String, String)>, usize) {
        let lower = match (start, self.namespace) {
            (Bound::Unbounded, Some(ns)) => Bound::Included((ns.to_owned(), String::new())),
            (start, _) => start,
        };
        let in_scope = bucket
            .range((lower, Bound::Unbounded))
            .take_while(|((ns, _), _)| self.namespace.is_none_or(|want| want == ns));
        let mut items = Vec::new();
        let mut last = None;
        let mut rest = 0usize;
        let mut more = false;
        for (key, object) in in_scope {
            if items.len() < limit {
                if self.labels.matches(object) && self.fields.matches(object) {
                    items.push(object.clone());
                    last = Some(key.clone());
                }
                continue;
            }
            rest += 1;
            more = more || (self.labels.matches(object) && self.fields.matches(object));
            // Under a selector only "is there more" matters; stop at the first match.
            if more && (!self.labels.is_empty() || !self.fields.is_empty()) {
                break;
            }
        }
        (items, if more { last } else { None }, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let t = decode(&encode(42, "default/a\0".into())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.rv, t.start.as_str()), (42, "default/a\0"));
        assert!(decode("not base64!").is_err());
        assert!(decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{}")).is_err());
        assert!(decode(&encode(0, "a".into())).is_err());
        assert!(decode(&encode(3, "../x".into())).is_err());
    }
}
