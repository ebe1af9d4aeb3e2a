//! The operator's own HTTP endpoints, for Prometheus and the kubelet: `/metrics` (the registry
//! in Prometheus/OpenMetrics text), `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Plain hyper 1 (already in the tree under kube and reqwest) rather than a web framework: three
//! GET routes need no router, and the operator's dependency tree stays free of axum.
//!
//! - `/healthz` is 200 while the supervising loop of [`crate::operator::run_instance`] ticks
//!   (it beats every second; a runtime or loop wedged for 30 s fails the probe and the kubelet
//!   restarts the pod).
//! - `/readyz` is 200 when this instance could do its work now: PostgreSQL answers, the
//!   Kubernetes API answered the last look, and, on the instance that runs the controllers,
//!   every controller's cache has seen its first complete list. A standby is ready when it
//!   could take over: it reaches PostgreSQL and the API server (it holds no caches yet). The
//!   body says what is missing.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

use crate::controllers::Context;

/// How long the supervising loop may go without a beat before `/healthz` fails.
pub const WEDGED_AFTER: Duration = Duration::from_secs(30);

/// Liveness and readiness, written by the supervising loop, read by the endpoints.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the last beat.
    beat: AtomicU64,
    ready: AtomicBool,
    /// What readiness waits for (empty when ready).
    missing: Mutex<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            beat: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            missing: Mutex::new("starting".into()),
        }
    }
}

impl Health {
    fn since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The supervising loop is alive.
    pub fn beat(&self) {
        self.beat.store(self.since_start(), Ordering::Release);
    }

    pub fn alive(&self) -> bool {
        self.since_start().saturating_sub(self.beat.load(Ordering::Acquire)) < WEDGED_AFTER.as_millis() as u64
    }

    /// Readiness as of now: `Err` names what is missing.
    pub fn set_ready(&self, result: Result<(), String>) {
        let mut missing = self.missing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => missing.clear(),
            Err(why) => *missing = why,
        }
        self.ready.store(missing.is_empty(), Ordering::Release);
    }

    pub fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(self.missing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// What the endpoints serve.
pub struct Endpoints {
    pub registry: Registry,
    pub context: Arc<Context>,
    pub health: Arc<Health>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").field("health", &self.health).finish_non_exhaustive()
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

impl Endpoints {
    /// The Prometheus text of every metric, the cache gauges filled as of now.
    pub fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        self.context.shared.observer.fill(&self.context.telemetry.metrics);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        const PLAIN: &str = "text/plain; charset=utf-8";
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
        }
        match request.uri().path() {
            "/metrics" => match self.metrics_text() {
                Ok(body) => text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, "cannot encode the metrics\n".into()),
            },
            "/healthz" if self.health.alive() => text(StatusCode::OK, PLAIN, "ok\n".into()),
            "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "the supervising loop is wedged\n".into()),
            "/readyz" => match self.health.ready() {
                Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
                Err(missing) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("not ready: {missing}\n")),
            },
            _ => text(StatusCode::NOT_FOUND, PLAIN, "not found; try /metrics, /healthz, /readyz\n".into()),
        }
    }
}

/// Serves the endpoints on `listener` until its task is aborted (the instance ends): a draining
/// instance still answers its probes.
pub async fn serve(listener: tokio::net::TcpListener, endpoints: Arc<Endpoints>) {
    loop {
        let accepted = listener.accept().await;
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoints = Arc::clone(&endpoints);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = endpoints.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
