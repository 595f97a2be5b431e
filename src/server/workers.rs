//! The extra threads of `--workers N`: each runs a current-thread runtime
//! with accept loops of its own on the proxy's listening sockets, and
//! serves the connections it accepted from start to end, with backend
//! connections of its own (`crate::worker`).
//!
//! One single-threaded runtime per worker rather than tokio's work-stealing
//! one: a request's tasks (client connection, backend connection, answer
//! body) wake one another on every exchange, and across threads each wake
//! is a system call; stealing also moves tasks away from their sockets'
//! caches. This is how nginx, HAProxy and Envoy run their workers.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::listener::{self, ClientListener, SharedListener};
use super::RunError;
use crate::metrics::Metrics;
use crate::proxy::Shared;

/// The running extra workers.
pub(super) struct Workers {
    /// Told when the first worker is done with its connections, so the
    /// others close theirs and end; dropped, it tells them as well.
    release: watch::Sender<bool>,
    /// One per thread, completed (or dropped) when it has ended.
    ended: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `count - 1` threads, each serving every listener; the caller
    /// is the first worker. They stop accepting when `stop` turns true.
    pub(super) fn start(
        count: usize,
        listeners: &[ClientListener],
        shared: &Arc<Shared>,
        metrics: &Metrics,
        stop: &watch::Receiver<bool>,
    ) -> Result<Workers, RunError> {
        // Every worker's series from the start, at 0 until it accepts.
        for index in 0..count.max(1) {
            metrics
                .worker_connections
                .with_label_values(&[&index.to_string()]);
        }
        let (release, released) = watch::channel(false);
        let mut workers = Workers {
            release,
            ended: Vec::new(),
        };
        for index in 1..count {
            let failed = |source| RunError::Worker { index, source };
            let sockets = listeners
                .iter()
                .map(ClientListener::share)
                .collect::<Result<Vec<_>, _>>()
                .map_err(failed)?;
            let runtime = crate::worker::runtime().map_err(failed)?;
            let (ended, on_end) = oneshot::channel();
            let work = serve(
                index,
                sockets,
                shared.clone(),
                metrics.clone(),
                stop.clone(),
                released.clone(),
            );
            std::thread::Builder::new()
                // Linux shows 15 bytes of a thread name (`top -H`, `/proc`).
                .name(format!("worker-{index}"))
                .spawn(move || {
                    crate::worker::set_current(index);
                    let batching = crate::telemetry::access::batch_on_this_thread();
                    runtime.block_on(work);
                    // Closes the connections still open after the grace period.
                    drop(runtime);
                    drop(batching);
                    let _ = ended.send(());
                })
                .map_err(failed)?;
            workers.ended.push(on_end);
        }
        Ok(workers)
    }

    /// Tells the workers to close what is left of their connections, and
    /// waits until they have.
    pub(super) async fn finish(self) {
        let _ = self.release.send(true);
        for ended in self.ended {
            let _ = ended.await;
        }
    }
}

/// One worker: accepts until `stop`, then serves its open connections
/// until released.
async fn serve(
    index: usize,
    sockets: Vec<SharedListener>,
    shared: Arc<Shared>,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
    mut released: watch::Receiver<bool>,
) {
    for socket in sockets {
        match socket.attach() {
            Ok(listener) => {
                tokio::spawn(listener::serve(
                    listener,
                    shared.clone(),
                    metrics.clone(),
                    stop.clone(),
                ));
            }
            Err(err) => {
                tracing::warn!(worker = index, error = %err, "cannot accept on this worker")
            }
        }
    }
    // Connections hold receivers of `stop`: the first worker learns that
    // all have drained when the last is gone, so this one must not linger.
    drop(stop);
    // An error means the sender is gone: released as well.
    let _ = released.wait_for(|released| *released).await;
}
