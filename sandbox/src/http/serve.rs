//! Serving one simulator: its API routes behind the gate under its base path, its control
//! routes beside the generic ones under `/_sim`, and the handle tests hold. It composes what a
//! simulator hands it ([`SimParts`]) and knows no simulator by name.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::Extensions;
use axum::middleware;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::budget::RateBudget;
use super::control;
use super::dialect::Dialect;
use super::faults::FaultPlan;
use super::gate::gate;
use super::log::RequestRecord;
use super::sim_control::SimControl;

/// A simulator serving on a local socket. Dropping it does not stop the server: call
/// [`RunningSim::shutdown`] (tests) or let the process end (CLI).
pub struct RunningSim {
    /// Base URL clients are pointed at, e.g. `http://127.0.0.1:4000/v1`.
    pub base_url: String,
    pub addr: SocketAddr,
    control: Arc<SimControl>,
    /// The simulator's own state, typed, for its test hooks ([`RunningSim::state`]).
    state: Extensions,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningSim {
    pub fn control(&self) -> &SimControl {
        &self.control
    }

    /// A second handle on the same simulator, for a task that watches or drives it (the
    /// sandbox's cloudflared): it sees the same state; its `shutdown` and `wait` do nothing.
    pub fn handle(&self) -> RunningSim {
        RunningSim {
            base_url: self.base_url.clone(),
            addr: self.addr,
            control: Arc::clone(&self.control),
            state: self.state.clone(),
            shutdown: None,
            task: None,
        }
    }

    /// Base URL of the control API (`http://ADDR/_sim`).
    pub fn control_url(&self) -> String {
        format!("http://{}{}", self.addr, control::PREFIX)
    }

    pub fn set_faults(&self, plan: FaultPlan) {
        self.control.set_faults(plan);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.control.requests()
    }

    /// The simulator's state as it handed it to [`serve`], for its own test hooks; `None` when
    /// this is another simulator.
    pub(crate) fn state<S: Send + Sync + 'static>(&self) -> Option<Arc<S>> {
        self.state.get::<Arc<S>>().cloned()
    }

    /// Stops accepting requests and waits for the server task to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// Serves until the server task ends (used by the CLI, which ends on Ctrl-C).
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

/// Everything a simulator hands over to be served.
pub(crate) struct SimParts<S> {
    /// How its API words the answers the plumbing gives (auth, 404, 429, faults).
    pub dialect: Box<dyn Dialect>,
    pub token: String,
    pub budget: RateBudget,
    /// e.g. `/v1`; the base URL is `http://ADDR{base_path}`.
    pub base_path: &'static str,
    /// Its API, relative to `base_path`.
    pub api: Router,
    /// Its own control routes, relative to [`control::PREFIX`], beside the generic ones.
    pub control: Router,
    /// Its state, which its test hooks read back through [`RunningSim::state`].
    pub state: Arc<S>,
}

/// Serves `parts.api` under its base path behind [`gate`], and the control API under
/// [`control::PREFIX`] beside it (never behind the gate: not logged, counted, limited nor
/// faulted).
pub(crate) async fn serve<S: Send + Sync + 'static>(
    parts: SimParts<S>,
    listener: TcpListener,
) -> std::io::Result<RunningSim> {
    let addr = listener.local_addr()?;
    let control = Arc::new(SimControl::new(parts.dialect, parts.token, parts.budget, parts.base_path));
    let gated = middleware::from_fn_with_state(Arc::clone(&control), gate);
    // Paths no route knows pass the same gate (auth, budget, log) as the real APIs' 404s.
    let answers = Arc::clone(&control);
    let unknown = Router::new()
        .fallback(move || {
            let answers = Arc::clone(&answers);
            async move { answers.dialect().not_found() }
        })
        .layer(gated.clone());
    let app = Router::new()
        .nest(parts.base_path, parts.api)
        // After routing, so the gate knows the matched pattern (`/v1/servers/{id}`).
        .route_layer(gated)
        .nest(control::PREFIX, control::router(Arc::clone(&control), parts.control))
        .fallback_service(unknown);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    let mut state = Extensions::new();
    state.insert(parts.state);
    Ok(RunningSim {
        base_url: format!("http://{addr}{}", parts.base_path),
        addr,
        control,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}
