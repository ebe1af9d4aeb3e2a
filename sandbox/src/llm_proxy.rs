//! A reference stand-in for the LLM proxy: the proxy's half of the Redis contract written in
//! `crabglamp_operator::cache`, exactly as stated there, behind an OpenAI-shaped endpoint
//! (`POST /v1/chat/completions`, and `POST /v1/audio/speech` for the `tts` surface). It
//! authenticates by SHA-256 lookup, refuses blocked, expired, over-rate and disallowed-model
//! requests, and adds a fixed cost per request to the counters. It never calls a model and
//! never stores or logs a key or a request body.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use crabglamp_operator::cache::{AuthEntry, DAY_TTL_SECONDS, MONTH_TTL_SECONDS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How the stand-in runs.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Redis holding the auth entries and counters.
    pub redis_url: String,
    /// The contract's `{ns}` (the operator's `redis_namespace`).
    pub namespace: String,
    /// What one request costs, in micro-USD.
    pub cost_micros_per_request: i64,
}

impl ProxyConfig {
    /// The operator's default namespace and 0.25 USD a request (a 1 USD budget lasts 4).
    pub fn new(redis_url: impl Into<String>) -> Self {
        ProxyConfig { redis_url: redis_url.into(), namespace: "cgk:".into(), cost_micros_per_request: 250_000 }
    }
}

/// The running stand-in; dropping it stops it.
pub struct RunningProxy {
    /// e.g. `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    config: ProxyConfig,
    redis: redis::aio::ConnectionManager,
}

/// Starts the stand-in on `listener`.
pub async fn spawn(config: ProxyConfig, listener: tokio::net::TcpListener) -> Result<RunningProxy, redis::RedisError> {
    let redis = redis::Client::open(config.redis_url.as_str())?.get_connection_manager().await?;
    let addr = listener.local_addr().map_err(redis::RedisError::from)?;
    let shared = Arc::new(Shared { config, redis });
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/audio/speech", post(speech))
        .with_state(shared);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the LLM proxy stand-in stopped");
        }
    });
    Ok(RunningProxy { base_url: format!("http://{addr}/v1"), task })
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})))
        .into_response()
}

/// `*` matches any run of characters, everything else itself.
pub fn model_matches(pattern: &str, model: &str) -> bool {
    let (p, m): (Vec<char>, Vec<char>) = (pattern.chars().collect(), model.chars().collect());
    // Classic wildcard matching with one backtrack point: linear in practice.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while j < m.len() {
        if i < p.len() && p[i] != '*' && p[i] == m[j] {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    serve(&shared, &headers, &body, "llm").await
}

async fn speech(State(shared): State<Arc<Shared>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    serve(&shared, &headers, &body, "tts").await
}

async fn serve(shared: &Shared, headers: &HeaderMap, body: &Value, surface: &str) -> Response {
    let Some(key) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return refuse(StatusCode::UNAUTHORIZED, "missing_api_key", "An Authorization: Bearer header is required.");
    };
    let ns = &shared.config.namespace;
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let mut redis = shared.redis.clone();
    let entry: Option<String> = match redis::cmd("GET").arg(format!("{ns}auth:{hash}")).query_async(&mut redis).await {
        Ok(e) => e,
        Err(_) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "cache_unavailable", "The key cache is unavailable."),
    };
    let Some(entry) = entry.and_then(|e| serde_json::from_str::<AuthEntry>(&e).ok()) else {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_api_key", "The API key is unknown or revoked.");
    };
    if entry.blocked {
        let reason = entry.blocked_reason.as_deref().unwrap_or("Blocked");
        let code = if reason == "Expired" { "key_expired" } else { "budget_exceeded" };
        return refuse(StatusCode::FORBIDDEN, code, &format!("The API key is blocked: {reason}."));
    }
    let now = chrono::Utc::now();
    let expired = entry
        .expires_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t <= now);
    if expired {
        return refuse(StatusCode::FORBIDDEN, "key_expired", "The API key has expired.");
    }
    let Some(model) = body.get("model").and_then(Value::as_str).filter(|m| !m.is_empty() && !m.contains('|')) else {
        return refuse(StatusCode::BAD_REQUEST, "missing_model", "The request names no valid model.");
    };
    if !entry.models.iter().any(|p| model_matches(p, model)) {
        return refuse(
            StatusCode::FORBIDDEN,
            "model_not_allowed",
            &format!("The API key may not use the model {model}."),
        );
    }
    let budget = &entry.budget_id;
    if let Some(rpm) = entry.rate_limit_rpm {
        let rate_key = format!("{ns}rate:{budget}:{}", now.timestamp() / 60);
        let counted: redis::RedisResult<(i64,)> = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(&rate_key)
            .cmd("EXPIRE")
            .arg(&rate_key)
            .arg(120)
            .ignore()
            .query_async(&mut redis)
            .await;
        match counted {
            Ok((n,)) if n > i64::from(rpm) => {
                return refuse(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests this minute.");
            }
            Ok(_) => {}
            Err(_) => {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "cache_unavailable", "The key cache is unavailable.");
            }
        }
    }
    let cost = shared.config.cost_micros_per_request;
    let added = record_spend(&mut redis, ns, budget, surface, model, cost, now).await;
    if added.is_err() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "cache_unavailable", "The key cache is unavailable.");
    }
    Json(json!({
        "id": format!("chatcmpl-sandbox-{}", now.timestamp_millis()),
        "object": "chat.completion",
        "created": now.timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the sandbox proxy."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost_micros_usd": cost}
    }))
    .into_response()
}

/// The proxy's half of the contract after serving a request: one `MULTI` that adds `cost`
/// micro-USD to the month's counter and the day's usage hash (with their TTLs). The one place
/// that writes these keys the way the README says; tests that play the proxy call it too.
pub async fn record_spend(
    redis: &mut impl redis::aio::ConnectionLike,
    ns: &str,
    budget: &str,
    surface: &str,
    model: &str,
    cost: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> redis::RedisResult<()> {
    let spend = format!("{ns}spend:{budget}:{}", now.format("%Y-%m"));
    let usage = format!("{ns}usage:{budget}:{}", now.format("%Y-%m-%d"));
    redis::pipe()
        .atomic()
        .cmd("INCRBY")
        .arg(&spend)
        .arg(cost)
        .ignore()
        .cmd("EXPIRE")
        .arg(&spend)
        .arg(MONTH_TTL_SECONDS)
        .ignore()
        .cmd("HINCRBY")
        .arg(&usage)
        .arg(format!("{surface}|{model}|cost"))
        .arg(cost)
        .ignore()
        .cmd("HINCRBY")
        .arg(&usage)
        .arg(format!("{surface}|{model}|requests"))
        .arg(1)
        .ignore()
        .cmd("EXPIRE")
        .arg(&usage)
        .arg(DAY_TTL_SECONDS)
        .ignore()
        .query_async(redis)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(model_matches("gpt-4o*", "gpt-4o-mini"));
        assert!(model_matches("gpt-4o*", "gpt-4o"));
        assert!(model_matches("*sonnet*", "claude-3-5-sonnet-latest"));
        assert!(!model_matches("gpt-4o*", "gpt-3.5"));
        assert!(!model_matches("claude-*", "gpt-4o"));
        assert!(model_matches("exact", "exact") && !model_matches("exact", "exactly"));
    }
}
