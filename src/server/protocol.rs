//! HTTP/1 or HTTP/2 on a client connection, told from its first bytes, and
//! served by hyper.
//!
//! hyper-util's `auto` connection does the same, but it reads exactly the
//! 24 bytes of the HTTP/2 preface and hands them to hyper ahead of the rest.
//! hyper's read buffer then holds 24 bytes; its next read wants a whole
//! buffer free, so it reallocates and copies, and it parses the head twice
//! (the 24 bytes, then the whole): about 3,000 instructions per new
//! connection, a twentieth of a proxied request on a new connection
//! (`benches/RESULTS.md`, 2026-11-26 20:50). Here the first read takes
//! what the client sent (a whole request head, as a rule), and hyper gets
//! all of it at once.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::Body;
use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type BoxError = Box<dyn StdError + Send + Sync>;

/// What every connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most the first read takes: a typical request head, on the stack.
const FIRST_READ: usize = 4096;

/// hyper's settings for both protocols.
#[derive(Clone)]
pub(super) struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

/// A client connection: its first bytes being read, then hyper serving it.
pub(super) struct Serving<'b, IO, S>
where
    S: HttpService<Incoming>,
{
    state: State<'b, IO, S>,
}

// HTTP/2's connection is the largest by far; the caller boxes the whole
// `Serving`, so boxing it too would only add an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum State<'b, IO, S>
where
    S: HttpService<Incoming>,
{
    FirstBytes {
        io: Option<IO>,
        seen: Vec<u8>,
        service: Option<S>,
        builders: &'b Builders,
    },
    Http1(http1::UpgradeableConnection<TokioIo<Replayed<IO>>, S>),
    Http2(http2::Connection<TokioIo<Replayed<IO>>, S, TokioExecutor>),
    /// Shut down before its first bytes told the protocol.
    Closed,
}

impl<'b, IO, S> Serving<'b, IO, S>
where
    S: HttpService<Incoming>,
{
    pub fn new(builders: &'b Builders, io: IO, service: S) -> Self {
        Serving {
            state: State::FirstBytes {
                io: Some(io),
                seen: Vec::new(),
                service: Some(service),
                builders,
            },
        }
    }
}

impl<IO, S, B> Serving<'_, IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// HTTP/1: close after the response in flight. HTTP/2: GOAWAY, then
    /// close once the streams in flight are done. Before the protocol is
    /// known: close now.
    pub fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::FirstBytes { .. } => self.state = State::Closed,
            State::Http1(conn) => Pin::new(conn).graceful_shutdown(),
            State::Http2(conn) => Pin::new(conn).graceful_shutdown(),
            State::Closed => {}
        }
    }
}

impl<IO, S, B> Future for Serving<'_, IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::FirstBytes {
                    io,
                    seen,
                    service,
                    builders,
                } => {
                    let Some(stream) = io.as_mut() else {
                        return Poll::Ready(Ok(()));
                    };
                    let is_http2 = ready!(poll_protocol(Pin::new(stream), cx, seen))?;
                    let (Some(io), Some(service)) = (io.take(), service.take()) else {
                        return Poll::Ready(Ok(()));
                    };
                    let io = TokioIo::new(Replayed {
                        first: std::mem::take(seen),
                        at: 0,
                        io,
                    });
                    this.state = if is_http2 {
                        State::Http2(builders.http2.serve_connection(io, service))
                    } else {
                        State::Http1(builders.http1.serve_connection(io, service).with_upgrades())
                    };
                }
                State::Http1(conn) => return Pin::new(conn).poll(cx).map_err(Into::into),
                State::Http2(conn) => return Pin::new(conn).poll(cx).map_err(Into::into),
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Reads until the bytes tell the protocol: `true` for HTTP/2 (the whole
/// preface came), `false` for HTTP/1 (a byte differs, or the client
/// closed). What was read is in `seen`, for hyper.
fn poll_protocol<IO: AsyncRead>(
    mut io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    seen: &mut Vec<u8>,
) -> Poll<io::Result<bool>> {
    loop {
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut space);
        ready!(io.as_mut().poll_read(cx, &mut read))?;
        if read.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        seen.extend_from_slice(read.filled());
        let compared = seen.len().min(H2_PREFACE.len());
        if seen[..compared] != H2_PREFACE[..compared] {
            return Poll::Ready(Ok(false));
        }
        if compared == H2_PREFACE.len() {
            return Poll::Ready(Ok(true));
        }
    }
}

/// A byte stream whose first bytes, already read, are read again.
pub(super) struct Replayed<IO> {
    first: Vec<u8>,
    at: usize,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replayed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = (this.first.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            if this.at == this.first.len() {
                // Freed now: a long-lived connection keeps none of it.
                this.first = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replayed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn protocol_of(sent: &[u8], close: bool) -> (bool, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(sent).await.expect("write");
        // Kept open unless asked: the verdict must not wait for more bytes
        // than it needs.
        let open = (!close).then_some(client);
        let mut seen = Vec::new();
        let is_http2 =
            std::future::poll_fn(|cx| poll_protocol(Pin::new(&mut server), cx, &mut seen))
                .await
                .expect("read");
        drop(open);
        (is_http2, seen)
    }

    #[tokio::test]
    async fn a_request_head_is_http1_and_read_whole() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(protocol_of(head, false).await, (false, head.to_vec()));
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_kept_for_hyper() {
        let sent = [H2_PREFACE.as_slice(), b"\0\0\0\x04"].concat();
        assert_eq!(protocol_of(&sent, false).await, (true, sent));
    }

    #[tokio::test]
    async fn a_method_starting_like_the_preface_is_http1() {
        let head = b"PRIX / HTTP/1.1\r\n\r\n";
        assert_eq!(protocol_of(head, false).await, (false, head.to_vec()));
    }

    #[tokio::test]
    async fn a_client_closing_early_is_handed_to_http1() {
        assert_eq!(
            protocol_of(b"PRI * HT", true).await,
            (false, b"PRI * HT".to_vec())
        );
        assert_eq!(protocol_of(b"", true).await, (false, Vec::new()));
    }

    #[tokio::test]
    async fn replayed_bytes_come_first_then_the_stream() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut replayed = Replayed {
            first: b"hello".to_vec(),
            at: 0,
            io: server,
        };
        let mut all = String::new();
        replayed.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
    }
}
