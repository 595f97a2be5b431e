//! Keep-alive connections to one backend: the most recently used idle one
//! is taken, or a new one opened; it comes back when its answer has been
//! read to the end.
//!
//! Ours rather than hyper-util's pool, whose price per request was a
//! hashed pool key and a task spawned for each answer to hand its
//! connection back. Here the answer's body hands it back as it ends.
//!
//! Each worker thread has a shard of its own, as in nginx (`keepalive` is
//! per worker process) and Envoy (pools per worker): a connection is
//! driven by the runtime that opened it, and taken from another thread it
//! would cost a cross-thread wake-up on every read and write.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::connect::{Connector, ExchangeError};
use crate::body::ProxyBody;

type Sender = SendRequest<ProxyBody>;

/// The connections of one backend. Shared by the answers in flight, which
/// return their connection to it.
pub struct Pool {
    connector: Connector,
    /// Sent when the request carries no `Host` of its own.
    host: HeaderValue,
    /// One per worker (`crate::worker`); in each, most recently returned last.
    shards: Box<[Shard]>,
    /// Per shard, so per worker.
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Aligned to a cache line, so that workers taking and returning their
/// connections do not contend for their neighbour's line.
#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<Vec<Idle>>);

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The list stays consistent whatever panicked while holding it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pool {
    /// Starts the sweep of expired idle connections when a runtime is
    /// there; it ends when the pool is dropped.
    pub fn start(
        connector: Connector,
        host: HeaderValue,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connector,
            host,
            // One per worker, and one for the shadow thread.
            shards: (0..crate::worker::shard_count() + 1)
                .map(|_| Shard::default())
                .collect(),
            max_idle,
            idle_timeout,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool), idle_timeout));
        }
        pool
    }

    /// Sends `req` (origin-form URI) on an idle connection or a new one.
    /// A request that a reused connection could not take, because the
    /// backend had just closed it, is sent again on another: it never left.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ExchangeError> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        loop {
            let (mut sender, is_reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                // Boxed: the connect future (resolver, TCP, TLS state) is
                // large, and inline it would grow every request's future,
                // which is moved at each await, for a path seldom taken.
                None => (Box::pin(self.connector.connect()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.track(response, sender)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if is_reused => req = unsent,
                    // Never left: safe to resend elsewhere, like a refused connect.
                    Some(_) => return Err(ExchangeError::NotSent(err.into_error())),
                    None => return Err(ExchangeError::Http(err.into_error())),
                },
            }
        }
    }

    /// The calling worker's shard.
    fn shard(&self) -> &Shard {
        &self.shards[crate::worker::shard_index(self.shards.len())]
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.shard().lock();
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    fn track(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: Sender,
    ) -> Response<UpstreamBody> {
        // After a 101 the socket belongs to the tunnel; the sender stays with
        // the body only so that the connection is not told to close early.
        let is_reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        let (parts, inner) = response.into_parts();
        let mut body = UpstreamBody {
            inner,
            connection: Some(Held {
                pool: self.clone(),
                sender,
                is_reusable,
            }),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    /// Takes back a connection whose answer was read to the end.
    fn put_back(self: Arc<Self>, mut sender: Sender) {
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            // Still sending the request body (the backend answered before
            // reading it all) or not yet past the answer's end: wait for it
            // off the request path.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if sender.ready().await.is_ok() {
                        self.push(sender);
                    }
                });
            }
        }
    }

    fn push(&self, sender: Sender) {
        let mut idle = self.shard().lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Closes connections idle for longer than the pool's `idle_timeout`.
async fn sweep(pool: Weak<Pool>, idle_timeout: Duration) {
    let mut ticker = tokio::time::interval(idle_timeout.max(Duration::from_millis(10)));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        for shard in pool.shards.iter() {
            let expired: Vec<Idle> = {
                let mut idle = shard.lock();
                let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(|entry| {
                    entry.since.elapsed() < idle_timeout && !entry.sender.is_closed()
                });
                *idle = keep;
                expired
            };
            // Dropped outside the lock: each wakes its connection to close.
            drop(expired);
        }
    }
}

/// A connection lent to one answer.
struct Held {
    pool: Arc<Pool>,
    sender: Sender,
    is_reusable: bool,
}

/// A backend's answer body; its connection goes back to the pool when the
/// body ends, and closes if the body is dropped before.
pub struct UpstreamBody {
    inner: Incoming,
    connection: Option<Held>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(held) = self.connection.take() {
            if held.is_reusable {
                held.pool.put_back(held.sender);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Err(_))) => self.connection = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}
