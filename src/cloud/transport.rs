//! The request loop both API clients share: wait for the budget, send with the bearer
//! token, learn from the rate-limit headers, classify failures, back off and retry what can
//! be retried, count every attempt. The token never appears in an error or a log line.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{CloudError, Provider, ProviderError, classify_cloudflare, classify_hetzner};
use super::metrics::CloudMetrics;
use super::ratelimit::{MAX_HEADER_WAIT, RateLimiter, RateObservation};
use super::retry::RetryPolicy;
use super::secret::Secret;

/// A 429 storm must not turn into an endless loop: after this many rate-limit pauses in one
/// call the caller gets `RateLimited` and requeues.
const MAX_RATE_LIMIT_PAUSES: u32 = 50;
/// A longer wait than this (Cloudflare blocks for five minutes; an empty hourly budget
/// refills slowly) is not waited out inside a call: the caller gets `RateLimited { reset }`
/// and requeues, while the shared limiter holds every other caller back until the reset.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// One API call as the clients describe it.
pub(crate) struct Call<'a> {
    pub operation: &'static str,
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<&'a Value>,
}

impl<'a> Call<'a> {
    pub fn new(operation: &'static str, method: Method, path: impl Into<String>) -> Self {
        Call { operation, method, path: path.into(), query: Vec::new(), body: None }
    }

    pub fn query(mut self, key: &'static str, value: impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    pub fn body(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }
}

pub(crate) struct Transport {
    pub provider: Provider,
    http: reqwest::Client,
    base_url: String,
    token: Secret,
    pub limiter: Arc<RateLimiter>,
    pub metrics: CloudMetrics,
    retry: RetryPolicy,
}

impl Transport {
    pub fn new(
        provider: Provider,
        base_url: &str,
        token: Secret,
        limiter: Arc<RateLimiter>,
        metrics: CloudMetrics,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> Result<Self, CloudError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("crabglamp-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                CloudError::Permanent(ProviderError {
                    provider,
                    operation: "client",
                    status: None,
                    code: "transport".into(),
                    message: format!("cannot build the HTTP client: {e}"),
                })
            })?;
        Ok(Transport {
            provider,
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            limiter,
            metrics,
            retry,
        })
    }

    /// Runs `call` until it succeeds, fails for good, or runs out of retries.
    pub async fn call<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, CloudError> {
        let mut retries = 0;
        let mut pauses = 0;
        loop {
            let waited = match self.limiter.acquire_within(MAX_RATE_LIMIT_WAIT).await {
                Ok(waited) => waited,
                Err(reset) => {
                    // Our own budget says no for longer than a call should block: nothing is
                    // sent, the caller requeues after `reset`. Counted apart from the API's
                    // 429s (`rate_limited`), which did reach the provider.
                    self.metrics.count(self.provider.as_str(), call.operation, "not_sent");
                    let message = "request budget exhausted; not sent".to_owned();
                    let error = self.error(call.operation, None, "client_rate_limit", message);
                    return Err(CloudError::RateLimited { error, reset });
                }
            };
            if waited >= Duration::from_millis(1) {
                self.metrics.waited(self.provider.as_str(), waited.as_millis() as u64);
            }
            let result = self.once::<T>(&call).await;
            let outcome = result.as_ref().map_or_else(CloudError::outcome, |_| "ok");
            self.metrics.count(self.provider.as_str(), call.operation, outcome);
            match result {
                Ok(value) => return Ok(value),
                Err(CloudError::RateLimited { error, reset }) => {
                    // Everyone sharing the budget pauses, not just this caller.
                    self.limiter.pause(reset);
                    if pauses >= MAX_RATE_LIMIT_PAUSES || reset > MAX_RATE_LIMIT_WAIT {
                        return Err(CloudError::RateLimited { error, reset });
                    }
                    pauses += 1;
                }
                Err(CloudError::Retryable(detail)) if retries + 1 < self.retry.max_attempts => {
                    let delay = self.retry.delay(retries, &mut rand::rng());
                    tracing::debug!(error = %detail, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    retries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn error(&self, operation: &'static str, status: Option<u16>, code: &str, message: String) -> ProviderError {
        ProviderError { provider: self.provider, operation, status, code: code.to_owned(), message }
    }

    async fn once<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, CloudError> {
        let url = format!("{}{}", self.base_url, call.path);
        let mut request =
            self.http.request(call.method.clone(), url).bearer_auth(self.token.expose()).query(&call.query);
        if let Some(body) = call.body {
            request = request.json(body);
        }
        let transport = |e: reqwest::Error| {
            CloudError::Retryable(self.error(call.operation, None, "transport", e.without_url().to_string()))
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let observation = self.observation(&headers);
        if let Some(remaining) = observation.remaining {
            self.metrics.budget_remaining(self.provider.as_str(), remaining);
        }
        self.limiter.observe(observation);
        let bytes = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            // Retryable, not Permanent: the call succeeded, so for a create the resource now
            // exists. Retrying meets the name taken and adopts it by its marks; giving up would
            // leave it unrecorded until the sweeper found it.
            return serde_json::from_slice(body).map_err(|e| {
                CloudError::Retryable(self.error(
                    call.operation,
                    Some(status.as_u16()),
                    "decode",
                    format!("unexpected response shape: {e}"),
                ))
            });
        }
        let (code, message) = self.error_body(status.as_u16(), &bytes);
        let detail = self.error(call.operation, Some(status.as_u16()), &code, message);
        let retry_after = self.retry_after(&headers);
        Err(match self.provider {
            Provider::Hetzner => classify_hetzner(detail, retry_after),
            Provider::Cloudflare => classify_cloudflare(detail, retry_after),
        })
    }

    /// Code and message from either error envelope; a body that is neither keeps the status.
    fn error_body(&self, status: u16, bytes: &[u8]) -> (String, String) {
        let fallback = || (format!("http_{status}"), String::from_utf8_lossy(bytes).chars().take(200).collect());
        let Ok(body) = serde_json::from_slice::<Value>(bytes) else { return fallback() };
        match self.provider {
            Provider::Hetzner => match (body["error"]["code"].as_str(), body["error"]["message"].as_str()) {
                (Some(code), message) => (code.to_owned(), message.unwrap_or_default().to_owned()),
                _ => fallback(),
            },
            Provider::Cloudflare => match body["errors"].as_array().and_then(|e| e.first()) {
                Some(first) => (
                    first["code"].as_i64().map_or_else(|| first["code"].to_string(), |c| c.to_string()),
                    first["message"].as_str().unwrap_or_default().to_owned(),
                ),
                None => fallback(),
            },
        }
    }

    fn observation(&self, headers: &HeaderMap) -> RateObservation {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self.provider {
            Provider::Hetzner => RateObservation {
                limit: text("ratelimit-limit").and_then(|v| v.trim().parse().ok()),
                remaining: text("ratelimit-remaining").and_then(|v| v.trim().parse().ok()),
                window: None,
            },
            Provider::Cloudflare => RateObservation {
                limit: text("ratelimit-policy").and_then(|v| structured_param(v, "q")),
                remaining: text("ratelimit").and_then(|v| structured_param(v, "r")),
                window: text("ratelimit-policy").and_then(|v| structured_param(v, "w")).map(Duration::from_secs),
            },
        }
    }

    /// How long to stay away after a 429: `Retry-After`, else Cloudflare's `t=`, else the
    /// time one request takes to refill. Clamped: the caller requeues after it.
    fn retry_after(&self, headers: &HeaderMap) -> Duration {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(secs) = text("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
            return Duration::from_secs(secs).min(MAX_HEADER_WAIT);
        }
        if self.provider == Provider::Cloudflare
            && let Some(secs) = text("ratelimit").and_then(|v| structured_param::<u64>(v, "t"))
        {
            return Duration::from_secs(secs.max(1)).min(MAX_HEADER_WAIT);
        }
        self.limiter.one_token()
    }
}

/// A parameter of a structured header such as `"default";r=12;t=30`.
fn structured_param<T: std::str::FromStr>(value: &str, key: &str) -> Option<T> {
    value.split(';').filter_map(|p| p.trim().split_once('=')).find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn structured_header_params() {
        assert_eq!(super::structured_param::<u32>("\"default\";r=12;t=30", "r"), Some(12));
        assert_eq!(super::structured_param::<u32>("\"burst\";q=1200;w=300", "w"), Some(300));
        assert_eq!(super::structured_param::<u32>("\"burst\";q=1200", "x"), None);
    }
}
