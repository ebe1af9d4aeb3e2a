//! A TCP relay between a client and an API server, which a test can cut (a network blip) or
//! stall (a hung server): how the tests reach the real server, and stall either one.

use std::sync::{Arc, Mutex};

/// A TCP relay on loopback to an API server (TLS passes through untouched: the real server's
/// certificate names 127.0.0.1, whatever the port), whose connections a test can drop at once,
/// or stall: a stalled relay keeps every connection open and accepts new ones, but holds every
/// byte either way until it resumes, as a half-open connection or a hung API server does.
pub(super) struct Relay {
    pub(super) url: String,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    stalled: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to`, holding each chunk while the relay is stalled.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut chunk = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut chunk).await {
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    /// A relay to `upstream` (`host:port`); its URL has `scheme`.
    pub(super) async fn start(upstream: &str, scheme: &str) -> Relay {
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let url = format!("{scheme}://{}", listener.local_addr().expect("relay address"));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (stalled, stalled_rx) = tokio::sync::watch::channel(false);
        let open = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let stalled = stalled_rx.clone();
                let relayed = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(pump(in_read, out_write, stalled.clone()), pump(out_read, in_write, stalled));
                    }
                });
                let mut open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                open.retain(|c| !c.is_finished());
                open.push(relayed.abort_handle());
            }
        });
        Relay { url, connections, stalled, task }
    }

    /// Drops every connection open now; returns how many there were.
    pub(super) fn cut(&self) -> usize {
        let open = std::mem::take(&mut *self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let live = open.iter().filter(|c| !c.is_finished()).count();
        for connection in open {
            connection.abort();
        }
        live
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// A client's own relay to the API server, which the test can stall and resume.
pub struct StallingRelay(pub(super) Relay);

impl StallingRelay {
    /// From now on nothing passes either way (connections stay open, new ones are accepted).
    pub fn stall(&self) {
        self.0.stalled.send_replace(true);
    }

    /// What was held passes, and everything after it.
    pub fn resume(&self) {
        self.0.stalled.send_replace(false);
    }
}
