//! Background tasks of the controllers: a start-up step retried until it succeeds or the
//! operator stops, and a spawned task that cannot outlive its owner.

use std::time::Duration;

/// Runs `attempt` until it succeeds (true) or `stop` turns true or its sender is gone (false),
/// waiting `pause` between attempts: a start-up step that must not give up, nor spin.
pub async fn retry_until_stopped<F, Fut, E>(
    stop: &tokio::sync::watch::Receiver<bool>,
    pause: Duration,
    what: &str,
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        if *stop.borrow() {
            return false;
        }
        match attempt().await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, "cannot {what} yet; retrying"),
        }
        let mut s = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = s.changed() => if changed.is_err() { return false },
        }
    }
}

/// A spawned task that is aborted when its handle is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(task))
    }

    /// Waits for the task to end on its own (or to be aborted).
    pub async fn join(&mut self) {
        let _ = (&mut self.0).await;
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
