//! The client connection's bytes, below hyper: activity for the idle
//! timeout and parking (`park`), the request head timeout
//! (`head_timeout`), and an HTTP/1 head check for what hyper's parser accepts or erases before the proxy could
//! see it.
//!
//! `HeadCheck` (`head_check`) follows the request heads of an HTTP/1
//! connection: what it refuses or cuts, hyper is handed in its stead.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::head_check::{HeadCheck, Verdict, FILLER, REFUSED_TAIL};
use super::head_timeout::HeadTimeout;
use super::park::ConnActivity;
use super::read_ahead::ReadAhead;

/// A client connection's byte stream, watched.
pub struct WireIo<IO> {
    /// Always `Some` until a parked connection's socket is handed back.
    inner: Option<IO>,
    activity: Arc<ConnActivity>,
    check: HeadCheck,
    clock: HeadTimeout,
    /// Where a parked connection's socket goes when hyper lets go of it.
    home: Option<oneshot::Sender<IO>>,
    /// End of stream was reported to hyper to park the connection.
    is_parked: bool,
    /// hyper-util's 24-byte look at the protocol made a full read.
    ahead: ReadAhead,
}

impl<IO> WireIo<IO> {
    /// `awaits_http1: false` for a connection that chose HTTP/2 by ALPN: no
    /// deadline for its first byte. The head check still follows its
    /// bytes, and stops at the HTTP/2 preface: a client that speaks HTTP/1
    /// there anyway (hyper serves it) meets the same checks, limits and
    /// head timeout.
    pub fn new(
        inner: IO,
        activity: Arc<ConnActivity>,
        awaits_http1: bool,
        max_head_bytes: usize,
        header_read_timeout: Duration,
    ) -> Self {
        WireIo {
            inner: Some(inner),
            activity,
            check: HeadCheck::new(max_head_bytes),
            clock: HeadTimeout::new(header_read_timeout, awaits_http1),
            home: None,
            is_parked: false,
            ahead: ReadAhead::default(),
        }
    }

    /// Lets the connection be parked (`server::park`): its socket is sent
    /// to `home` once hyper is done with it.
    pub fn parkable(mut self, home: oneshot::Sender<IO>) -> Self {
        self.home = Some(home);
        self
    }

    /// For a parked connection taken up again (see `HeadTimeout::forget_first_byte`).
    pub fn resumed(mut self) -> Self {
        self.clock.forget_first_byte();
        self
    }

    /// Whether hyper is between requests with nothing to send, so that an
    /// end of stream now ends its connection without a word: no request
    /// in flight, no byte of a next head, nothing unflushed, no clock.
    fn may_park(&self) -> bool {
        self.home.is_some()
            && self.check.is_between_requests()
            && self.clock.is_idle()
            && self.activity.may_park()
    }
}

impl<IO: Unpin> WireIo<IO> {
    fn io(&mut self) -> io::Result<Pin<&mut IO>> {
        match self.inner.as_mut() {
            Some(inner) => Ok(Pin::new(inner)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl<IO> Drop for WireIo<IO> {
    fn drop(&mut self) {
        if let (true, Some(home), Some(inner)) =
            (self.is_parked, self.home.take(), self.inner.take())
        {
            // The receiver is gone only if the connection's task is.
            let _ = home.send(inner);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WireIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.is_parked {
            return Poll::Ready(Ok(()));
        }
        let may_park = this.may_park();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if !this.clock.is_running() {
            return this.clock.poll_close(Pin::new(inner), cx);
        }
        if this.check.is_too_large() {
            // Until hyper's buffer is full and it answers 431.
            fill(buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if this
            .ahead
            .poll_read(Pin::new(&mut *inner), cx, buf)?
            .is_pending()
        {
            if may_park {
                // hyper, idle, reads this as the client's clean close.
                this.is_parked = true;
                return Poll::Ready(Ok(()));
            }
            // Nothing to read: the head may be out of time. A 408 needs a
            // begun request line, whose bytes wait in hyper's buffer until
            // the head parses; hyper reads with bytes buffered only to
            // parse a head, never while it answers, so the 408 cannot land
            // inside a response (and see `HeadTimeout::has_unflushed_writes`).
            ready!(this.clock.poll_deadline(cx));
            let reason = this.clock.expire(this.check.has_request_line());
            this.activity.count_rejection(reason);
            return this.clock.poll_close(Pin::new(inner), cx);
        }
        if this.check.is_refused() {
            // Everything hyper needs to refuse the head has been handed over.
            buf.set_filled(before);
            return Poll::Ready(Ok(()));
        }
        let fresh = &buf.filled()[before..];
        if !fresh.is_empty() {
            this.activity.on_bytes();
            this.activity.cancel_park();
            match this.check.inspect(fresh) {
                Verdict::Pass => {}
                Verdict::Refuse(at) => {
                    buf.set_filled(before + at);
                    let room = buf.remaining().min(REFUSED_TAIL.len());
                    buf.put_slice(&REFUSED_TAIL[..room]);
                }
                Verdict::TooLarge(at) => {
                    buf.set_filled(before + at);
                    fill(buf);
                }
            }
            this.clock.track(this.check.is_in_head());
        }
        Poll::Ready(Ok(()))
    }
}

/// Fills what is left of `buf` with `FILLER`.
fn fill(buf: &mut ReadBuf<'_>) {
    let unfilled = buf.initialize_unfilled();
    unfilled.fill(FILLER);
    let len = unfilled.len();
    buf.advance(len);
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WireIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.clock.on_write();
        let written = ready!(self.io()?.poll_write(cx, buf))?;
        self.activity.on_bytes();
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.clock.on_write();
        let written = ready!(crate::small_writes::poll_write_vectored(
            self.io()?,
            cx,
            bufs
        ))?;
        self.activity.on_bytes();
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(IO::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.io()?.poll_flush(cx))?;
        self.clock.on_flush();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_parked {
            // hyper closing a parked connection: the socket lives on.
            return Poll::Ready(Ok(()));
        }
        self.io()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
