//! Cloudflare client: remotely managed tunnels (create with our own secret, configuration,
//! token, delete) and the zone's DNS records, in Cloudflare's response envelope. A small
//! typed `reqwest` layer: the `cloudflare` crate lacks tunnel tokens, configurations and
//! DNS comments and hides response headers. Secrets never reach `Debug` output or errors.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{CloudError, ConfigError, Provider};
use super::metrics::CloudMetrics;
use super::ratelimit::RateLimiter;
use super::retry::RetryPolicy;
use super::secret::Secret;
use super::transport::{Call, Transport};

pub const CLOUDFLARE_API: &str = "https://api.cloudflare.com/client/v4";

#[derive(Clone, Debug)]
pub struct CloudflareConfig {
    pub base_url: String,
    pub token: Secret,
    pub account_id: String,
    pub zone_id: String,
    pub retry: RetryPolicy,
    pub timeout: Duration,
}

impl CloudflareConfig {
    pub fn new(
        base_url: impl Into<String>,
        token: impl Into<Secret>,
        account_id: impl Into<String>,
        zone_id: impl Into<String>,
    ) -> Self {
        CloudflareConfig {
            base_url: base_url.into(),
            token: token.into(),
            account_id: account_id.into(),
            zone_id: zone_id.into(),
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
        }
    }

    /// From `CLOUDFLARE_API_TOKEN`, `CLOUDFLARE_ACCOUNT_ID`, `CLOUDFLARE_ZONE_ID` (required)
    /// and `CLOUDFLARE_ENDPOINT` (default: the public API).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env) with any source of variables (tests, flags).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| lookup(name).filter(|v| !v.is_empty()).ok_or(ConfigError::Missing(name));
        let token = required("CLOUDFLARE_API_TOKEN")?;
        let account_id = required("CLOUDFLARE_ACCOUNT_ID")?;
        let zone_id = required("CLOUDFLARE_ZONE_ID")?;
        let endpoint =
            lookup("CLOUDFLARE_ENDPOINT").filter(|e| !e.is_empty()).unwrap_or_else(|| CLOUDFLARE_API.to_owned());
        Ok(Self::new(endpoint, token, account_id, zone_id))
    }
}

/// A tunnel secret we generate, so the connector token can be derived without asking.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelSecret(Vec<u8>);

impl TunnelSecret {
    /// 32 random bytes (the API's minimum).
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        TunnelSecret(bytes)
    }

    /// A secret read back (e.g. unsealed from the database); `None` below the 32 bytes the API
    /// requires, which would otherwise surface only as a permanent 400 at tunnel creation.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= 32).then_some(TunnelSecret(bytes))
    }

    /// The raw bytes, to seal them (never to print them).
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_base64(&self) -> Secret {
        Secret::new(B64.encode(&self.0))
    }
}

impl std::fmt::Debug for TunnelSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelSecret(<redacted>)")
    }
}

/// The token `cloudflared tunnel run --token` takes: base64 of `{"a","t","s"}`.
pub fn derive_tunnel_token(account_id: &str, tunnel_id: &str, secret: &TunnelSecret) -> Secret {
    let inner = json!({"a": account_id, "t": tunnel_id, "s": secret.to_base64().expose()});
    Secret::new(B64.encode(inner.to_string()))
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Tunnel {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub deleted_at: Option<String>,
    #[serde(default)]
    pub config_src: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub connections: Vec<TunnelConnection>,
}

/// One of a tunnel's connections. Only their number is read (a connector is serving), so
/// none of the fields is kept: at 5,000 tunnels, keeping each connection as a JSON value was
/// the largest part of the operator's peak heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TunnelConnection {}

/// One ingress rule; the configuration always ends with a catch-all 404 (cloudflared
/// refuses one without).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngressRule {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hostname: Option<String>,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TunnelConfiguration {
    pub tunnel_id: String,
    pub version: i64,
    pub config: Value,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DnsRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub content: String,
    pub proxied: bool,
    pub ttl: i64,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    result: T,
}

/// A list answer: the page's items and, when the API sends it, where the list ends.
#[derive(Deserialize)]
struct ListEnvelope<T> {
    result: Vec<T>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Deserialize)]
struct ResultInfo {
    #[serde(default)]
    total_pages: Option<u64>,
}

/// Items asked for per page: the most the tunnel list documents (1000; DNS records allow more),
/// so a shared list of a 1,000-Agent fleet is one request, not ten, out of a budget of 1200
/// per five minutes. A server that caps lower is still read to the end (see `all_pages`).
pub const PER_PAGE: usize = 1000;

pub struct CloudflareClient {
    t: Transport,
    account_id: String,
    zone_id: String,
}

impl CloudflareClient {
    pub fn new(config: CloudflareConfig, limiter: Arc<RateLimiter>, metrics: CloudMetrics) -> Result<Self, CloudError> {
        let t = Transport::new(
            Provider::Cloudflare,
            &config.base_url,
            config.token,
            limiter,
            metrics,
            config.retry,
            config.timeout,
        )?;
        Ok(CloudflareClient { t, account_id: config.account_id, zone_id: config.zone_id })
    }

    pub fn metrics(&self) -> &CloudMetrics {
        &self.t.metrics
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    async fn result<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, CloudError> {
        Ok(self.t.call::<Envelope<T>>(call).await?.result)
    }

    fn tunnels(&self) -> String {
        format!("/accounts/{}/cfd_tunnel", self.account_id)
    }

    // ---------- tunnels ----------

    /// Creates a remotely managed tunnel with `secret`, or adopts the live tunnel of that
    /// name when it was made with this very `secret` (a retry whose first answer was lost).
    /// Tunnels carry no labels, so the secret is the only proof of ownership: a same-named
    /// tunnel with another secret is someone else's (or an attempt whose secret was never
    /// stored) and comes back as `Conflict`, never adopted (SPEC §7). A caller that must
    /// survive a crash between this call and its own record stores the secret first and
    /// passes the same one again; the derived token then stays valid for the adopted tunnel.
    pub async fn create_tunnel(&self, name: &str, secret: &TunnelSecret) -> Result<(Tunnel, bool), CloudError> {
        let body = json!({"name": name, "config_src": "cloudflare", "tunnel_secret": secret.to_base64().expose()});
        let call = Call::new("create_tunnel", Method::POST, self.tunnels()).body(&body);
        match self.result::<Tunnel>(call).await {
            Ok(t) => Ok((t, false)),
            Err(CloudError::Conflict(d)) => {
                let Some(existing) = self.find_tunnel_by_name(name).await? else {
                    return Err(CloudError::Conflict(d));
                };
                let token = self.tunnel_token(&existing.id).await?;
                if token_secret(&token).is_some_and(|s| s == secret.0) {
                    Ok((existing, true))
                } else {
                    Err(CloudError::Conflict(d))
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn get_tunnel(&self, id: &str) -> Result<Option<Tunnel>, CloudError> {
        let call = Call::new("get_tunnel", Method::GET, format!("{}/{id}", self.tunnels()));
        not_found_as_none(self.result::<Tunnel>(call).await)
    }

    /// The live (not deleted) tunnel with this exact name.
    pub async fn find_tunnel_by_name(&self, name: &str) -> Result<Option<Tunnel>, CloudError> {
        let call =
            Call::new("list_tunnels", Method::GET, self.tunnels()).query("name", name).query("is_deleted", false);
        let list: Vec<Tunnel> = self.result(call).await?;
        Ok(list.into_iter().find(|t| t.name == name && t.deleted_at.is_none()))
    }

    /// Live tunnels whose names start with `prefix`, all pages.
    pub async fn list_tunnels(&self, prefix: Option<&str>) -> Result<Vec<Tunnel>, CloudError> {
        self.all_pages(|| {
            let call = Call::new("list_tunnels", Method::GET, self.tunnels()).query("is_deleted", false);
            match prefix {
                Some(p) => call.query("include_prefix", p),
                None => call,
            }
        })
        .await
    }

    /// Every page of a list. The end is where `result_info.total_pages` says; without it, an
    /// empty page (the Python SDK's rule). A short page is not the end: the server may cap
    /// `per_page` below what we asked, and stopping there would hide resources from the
    /// sweeper (a leak).
    async fn all_pages<T: DeserializeOwned>(&self, call: impl Fn() -> Call<'static>) -> Result<Vec<T>, CloudError> {
        let mut all = Vec::new();
        for page in 1u64.. {
            let answer: ListEnvelope<T> = self.t.call(call().query("page", page).query("per_page", PER_PAGE)).await?;
            let empty = answer.result.is_empty();
            all.extend(answer.result);
            let last = match answer.result_info.and_then(|i| i.total_pages) {
                Some(total) => page >= total,
                None => empty,
            };
            if last || empty {
                break;
            }
        }
        Ok(all)
    }

    /// Deletes a tunnel (dropping connectors); `false` when already gone or deleted.
    pub async fn delete_tunnel(&self, id: &str) -> Result<bool, CloudError> {
        let call =
            Call::new("delete_tunnel", Method::DELETE, format!("{}/{id}", self.tunnels())).query("cascade", true);
        match self.result::<Tunnel>(call).await {
            Ok(_) => Ok(true),
            Err(CloudError::NotFound(_)) => Ok(false),
            // The code for "already deleted" is unverified (the simulator says 1003), and
            // trusting a code that means something else would report a live tunnel as gone: a
            // leak. So a refused delete counts as done only if the tunnel reads as deleted.
            Err(CloudError::Permanent(d)) if d.status == Some(400) => match self.get_tunnel(id).await? {
                None => Ok(false),
                Some(t) if t.deleted_at.is_some() => Ok(false),
                Some(_) => Err(CloudError::Permanent(d)),
            },
            Err(e) => Err(e),
        }
    }

    /// Renames a tunnel (PATCH: its id, secret, connectors and configuration stay, so the token
    /// on its server stays valid). A live tunnel already holding `name` is a `Conflict`.
    pub async fn rename_tunnel(&self, id: &str, name: &str) -> Result<Tunnel, CloudError> {
        let body = json!({"name": name});
        let call = Call::new("update_tunnel", Method::PATCH, format!("{}/{id}", self.tunnels())).body(&body);
        self.result(call).await
    }

    /// Replaces the ingress rules; a catch-all `http_status:404` is appended when missing.
    pub async fn put_tunnel_config(&self, id: &str, rules: &[IngressRule]) -> Result<TunnelConfiguration, CloudError> {
        let mut ingress = rules.to_vec();
        if ingress.last().is_none_or(|r| r.hostname.is_some() || r.path.is_some()) {
            ingress.push(IngressRule { hostname: None, service: "http_status:404".into(), path: None });
        }
        let body = json!({"config": {"ingress": ingress}});
        let call =
            Call::new("put_tunnel_config", Method::PUT, format!("{}/{id}/configurations", self.tunnels())).body(&body);
        self.result(call).await
    }

    pub async fn get_tunnel_config(&self, id: &str) -> Result<TunnelConfiguration, CloudError> {
        let call = Call::new("get_tunnel_config", Method::GET, format!("{}/{id}/configurations", self.tunnels()));
        self.result(call).await
    }

    /// The connector token of a tunnel created elsewhere (ours is derived locally).
    pub async fn tunnel_token(&self, id: &str) -> Result<Secret, CloudError> {
        let call = Call::new("get_tunnel_token", Method::GET, format!("{}/{id}/token", self.tunnels()));
        Ok(Secret::new(self.result::<String>(call).await?))
    }

    // ---------- DNS ----------

    fn records(&self) -> String {
        format!("/zones/{}/dns_records", self.zone_id)
    }

    /// Creates a proxied CNAME `name -> target` (ttl automatic). If the name already holds
    /// exactly that CNAME (an earlier attempt) and, when `comment` is our mark, carries that
    /// mark, it is returned with `true`; anything else there is a conflict we do not
    /// overwrite (SPEC §7: records we own carry our comment).
    pub async fn create_cname(
        &self,
        name: &str,
        target: &str,
        comment: Option<&str>,
    ) -> Result<(DnsRecord, bool), CloudError> {
        let body =
            json!({"type": "CNAME", "name": name, "content": target, "proxied": true, "ttl": 1, "comment": comment});
        let call = Call::new("create_dns_record", Method::POST, self.records()).body(&body);
        match self.result::<DnsRecord>(call).await {
            Ok(r) => Ok((r, false)),
            Err(CloudError::Conflict(d)) => {
                let existing = self.list_dns_records(name).await?;
                let ours = |r: &DnsRecord| {
                    r.kind == "CNAME"
                        && r.content.eq_ignore_ascii_case(target)
                        && comment.is_none_or(|c| r.comment.as_deref() == Some(c))
                };
                match existing.into_iter().find(ours) {
                    Some(r) => Ok((r, true)),
                    None => Err(CloudError::Conflict(d)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Records with exactly this name (all types), all pages.
    pub async fn list_dns_records(&self, name: &str) -> Result<Vec<DnsRecord>, CloudError> {
        self.all_pages(|| Call::new("list_dns_records", Method::GET, self.records()).query("name.exact", name)).await
    }

    /// Records whose comment starts with `prefix`, all pages: how the operator finds every
    /// record carrying its mark in one paged list instead of a lookup per object.
    pub async fn list_dns_records_by_comment_prefix(&self, prefix: &str) -> Result<Vec<DnsRecord>, CloudError> {
        self.all_pages(|| {
            Call::new("list_dns_records", Method::GET, self.records()).query("comment.startswith", prefix)
        })
        .await
    }

    /// Replaces a record's comment (`None` clears it): how an orphaned record loses our mark.
    pub async fn set_dns_record_comment(&self, id: &str, comment: Option<&str>) -> Result<DnsRecord, CloudError> {
        let body = json!({"comment": comment});
        let call = Call::new("update_dns_record", Method::PATCH, format!("{}/{id}", self.records())).body(&body);
        self.result(call).await
    }

    /// Points a record elsewhere (PATCH: other fields stay).
    pub async fn update_dns_record(&self, id: &str, content: &str, proxied: bool) -> Result<DnsRecord, CloudError> {
        let body = json!({"content": content, "proxied": proxied});
        let call = Call::new("update_dns_record", Method::PATCH, format!("{}/{id}", self.records())).body(&body);
        self.result(call).await
    }

    /// Deletes a record; `false` when it was already gone.
    pub async fn delete_dns_record(&self, id: &str) -> Result<bool, CloudError> {
        let call = Call::new("delete_dns_record", Method::DELETE, format!("{}/{id}", self.records()));
        Ok(not_found_as_none(self.result::<Value>(call).await)?.is_some())
    }
}

/// The tunnel secret inside a connector token (`base64({"a","t","s": base64(secret)})`);
/// `None` when the token is not in that form.
fn token_secret(token: &Secret) -> Option<Vec<u8>> {
    let inner: Value = serde_json::from_slice(&B64.decode(token.expose()).ok()?).ok()?;
    B64.decode(inner.get("s")?.as_str()?).ok()
}

fn not_found_as_none<T>(r: Result<T, CloudError>) -> Result<Option<T>, CloudError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(CloudError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_keeps_how_many_connections_it_has_and_nothing_of_them() {
        let tunnel: Tunnel = serde_json::from_value(json!({
            "id": "t1", "name": "cg-x", "created_at": "2026-01-01T00:00:00Z", "deleted_at": null,
            "status": "healthy",
            "connections": [
                {"colo_name": "fra06", "id": "c1", "is_pending_reconnect": false, "origin_ip": "198.51.100.7",
                 "opened_at": "2026-01-01T00:00:03Z", "client_id": "k1", "client_version": "2025.1.0"},
                {"colo_name": "ams01", "id": "c2"}
            ]
        }))
        .expect("a tunnel as the API sends it");
        assert_eq!(tunnel.connections.len(), 2);
        assert_eq!(std::mem::size_of::<TunnelConnection>(), 0, "a connection costs no memory");
    }

    #[test]
    fn config_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let err = CloudflareConfig::from_lookup(vars(&[("CLOUDFLARE_API_TOKEN", "t")])).unwrap_err();
        assert_eq!(err, ConfigError::Missing("CLOUDFLARE_ACCOUNT_ID"));
        let c = CloudflareConfig::from_lookup(vars(&[
            ("CLOUDFLARE_API_TOKEN", "secret-t"),
            ("CLOUDFLARE_ACCOUNT_ID", "a"),
            ("CLOUDFLARE_ZONE_ID", "z"),
        ]))
        .unwrap();
        assert_eq!((c.base_url.as_str(), c.account_id.as_str()), (CLOUDFLARE_API, "a"));
        assert!(!format!("{c:?}").contains("secret-t"), "the token never shows in Debug");
    }

    #[test]
    fn token_derivation_matches_cloudflared_format() {
        let secret = TunnelSecret::from_bytes(vec![7u8; 32]).expect("32 bytes");
        assert!(TunnelSecret::from_bytes(vec![7u8; 31]).is_none(), "too short for the API");
        let token = derive_tunnel_token("acc", "tid", &secret);
        let decoded: Value = serde_json::from_slice(&B64.decode(token.expose()).unwrap()).unwrap();
        assert_eq!(decoded, json!({"a": "acc", "t": "tid", "s": B64.encode([7u8; 32])}));
        assert!(!format!("{secret:?} {token:?}").contains(&B64.encode([7u8; 32])));
        assert_eq!(token_secret(&token), Some(vec![7u8; 32]), "the secret reads back out of the token");
        assert_eq!(token_secret(&Secret::new("not base64 json")), None);
    }
}
