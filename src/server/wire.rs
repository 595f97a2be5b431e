//! The client connection's bytes, below hyper: activity for the idle
//! timeout and parking (`park`), the request head timeout
//! (`head_timeout`), and an HTTP/1 head check for what hyper's parser accepts or erases before the proxy could
//! see it.
//!
//! hyper (httparse) takes a bare LF as a line end, as RFC 9112 §2.2 allows,
//! and when a request has both `Content-Length` and `Transfer-Encoding` it
//! drops the length and reads the body as chunked. Both are what request
//! smuggling through a front proxy that reads the bytes otherwise is made
//! of, so DESIGN.md refuses them. `HeadCheck` follows the request heads of
//! an HTTP/1 connection and, on such a head, hands hyper the bytes before
//! the offending one followed by `NUL CR LF CR LF`, then end of stream.
//! hyper then fails to parse a complete but invalid head, answers 400 and
//! closes the connection: the request is never dispatched. (The head must
//! look complete: httparse waits for more bytes rather than fail early.)
//!
//! It follows only what it can frame for sure: bodies with a
//! `Content-Length` are skipped by count. After a chunked body, an upgrade
//! or `CONNECT` it stops looking, and the proxy closes that connection
//! after its answer (`proxy::framing::must_close_after`), so no further
//! head passes unchecked. HTTP/2 (the `PRI` preface) is not looked at.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

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
    /// `check_heads: false` for a connection known to speak HTTP/2 (ALPN):
    /// neither the head check nor the head timeout applies, and it is
    /// never parked.
    pub fn new(
        inner: IO,
        activity: Arc<ConnActivity>,
        check_heads: bool,
        header_read_timeout: Duration,
    ) -> Self {
        let mut check = HeadCheck::default();
        if !check_heads {
            check.state = State::Passthrough;
        }
        WireIo {
            inner: Some(inner),
            activity,
            check,
            clock: HeadTimeout::new(header_read_timeout, check_heads),
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
            && self.check.state == State::Start
            && !self.check.has_head_bytes
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
        if this.check.state == State::Refused {
            // Everything hyper needs to refuse the head has been handed over.
            buf.set_filled(before);
            return Poll::Ready(Ok(()));
        }
        let fresh = &buf.filled()[before..];
        if !fresh.is_empty() {
            this.activity.on_bytes();
            this.activity.cancel_park();
            if let Some(at) = this.check.inspect(fresh) {
                buf.set_filled(before + at);
                let room = buf.remaining().min(REFUSED_TAIL.len());
                buf.put_slice(&REFUSED_TAIL[..room]);
            }
            this.clock.track(this.check.is_in_head());
        }
        Poll::Ready(Ok(()))
    }
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

/// What replaces a refused head from its offending byte on: an invalid
/// byte, then an end of head so that hyper parses (and refuses) at once.
const REFUSED_TAIL: &[u8] = b"\0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Before a request line; empty lines are skipped (RFC 9112 §2.2).
    #[default]
    Start,
    RequestLine,
    Headers,
    /// This many body bytes to skip.
    Body(u64),
    /// No longer looking: HTTP/2, or after a body or upgrade we do not frame.
    Passthrough,
    /// A refused head was seen; nothing more is handed to hyper.
    Refused,
}

/// Which header the current line holds, as far as framing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Field {
    #[default]
    Other,
    ContentLength,
    TransferEncoding,
    Upgrade,
}

/// The request-head follower; see the module docs.
#[derive(Debug, Default)]
pub struct HeadCheck {
    state: State,
    after_cr: bool,
    line_len: usize,
    /// The line's first bytes, lower-cased: the method, or the header name.
    prefix: [u8; 20],
    in_value: bool,
    field: Field,
    /// Content-Length value: digits seen, value, and whether digits ended.
    digits: u8,
    length: u64,
    digits_done: bool,
    has_length: bool,
    has_encoding: bool,
    is_tunnel: bool,
    /// A byte of the next head (a blank line before it included) arrived.
    has_head_bytes: bool,
}

impl HeadCheck {
    /// Whether bytes of a head arrived and the head has not ended (nor
    /// been refused, nor stopped being followed).
    pub fn is_in_head(&self) -> bool {
        self.has_head_bytes
            && matches!(
                self.state,
                State::Start | State::RequestLine | State::Headers
            )
    }

    /// Whether a request line has begun: more than blank lines arrived.
    pub fn has_request_line(&self) -> bool {
        matches!(self.state, State::RequestLine | State::Headers)
    }

    /// Follows freshly read bytes; returns the offset of the byte that
    /// makes a head refused, if any.
    pub fn inspect(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Passthrough | State::Refused => return None,
                State::Body(remaining) => {
                    let skip = remaining.min((bytes.len() - i) as u64);
                    i += skip as usize;
                    self.state = match remaining - skip {
                        0 => State::Start,
                        left => State::Body(left),
                    };
                }
                State::Start | State::RequestLine | State::Headers => {
                    self.has_head_bytes = true;
                    i += self.take_run(&bytes[i..]);
                    if i == bytes.len() {
                        break;
                    }
                    if self.head_byte(bytes[i]).is_err() {
                        self.state = State::Refused;
                        return Some(i);
                    }
                    i += 1;
                }
            }
        }
        None
    }

    /// Takes the bytes before the next one that matters (CR, LF, or the
    /// colon after a field name), which only count or fill the prefix: most
    /// of a head is skipped with `memchr` rather than a byte at a time.
    /// Returns how many were taken.
    fn take_run(&mut self, rest: &[u8]) -> usize {
        if self.after_cr {
            return 0;
        }
        let next = match self.state {
            State::RequestLine => memchr::memchr2(b'\r', b'\n', rest),
            State::Headers if !self.in_value => memchr::memchr3(b':', b'\r', b'\n', rest),
            // A length's digits are checked one by one.
            State::Headers if self.field != Field::ContentLength => {
                memchr::memchr2(b'\r', b'\n', rest)
            }
            _ => return 0,
        };
        let run = next.unwrap_or(rest.len());
        if !self.in_value && self.line_len < self.prefix.len() {
            let room = (self.prefix.len() - self.line_len).min(run);
            let slots = &mut self.prefix[self.line_len..self.line_len + room];
            for (slot, byte) in slots.iter_mut().zip(rest) {
                *slot = byte.to_ascii_lowercase();
            }
        }
        self.line_len += run;
        run
    }

    fn head_byte(&mut self, byte: u8) -> Result<(), ()> {
        match (byte, self.after_cr) {
            (b'\n', true) => {
                self.after_cr = false;
                return self.end_of_line();
            }
            // A bare LF, or a CR that is not part of CRLF.
            (b'\n', false) | (_, true) => return Err(()),
            (b'\r', false) => {
                self.after_cr = true;
                return Ok(());
            }
            _ => {}
        }
        if self.state == State::Start {
            self.state = State::RequestLine;
        }
        if self.line_len < self.prefix.len() && !self.in_value {
            self.prefix[self.line_len] = byte.to_ascii_lowercase();
        }
        self.line_len += 1;
        if self.state != State::Headers {
            return Ok(());
        }
        if !self.in_value {
            if byte == b':' {
                self.in_value = true;
                self.field = field_of(
                    &self.prefix[..(self.line_len - 1).min(self.prefix.len())],
                    self.line_len - 1,
                );
            }
            return Ok(());
        }
        if self.field == Field::ContentLength {
            self.length_byte(byte)?;
        }
        Ok(())
    }

    /// One byte of a `Content-Length` value: optional blanks around digits.
    fn length_byte(&mut self, byte: u8) -> Result<(), ()> {
        match byte {
            b'0'..=b'9' if !self.digits_done => {
                self.digits = self.digits.saturating_add(1);
                self.length = self
                    .length
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(byte - b'0')))
                    .ok_or(())?;
                Ok(())
            }
            b' ' | b'\t' => {
                self.digits_done = self.digits > 0;
                Ok(())
            }
            _ => Err(()),
        }
    }

    fn end_of_line(&mut self) -> Result<(), ()> {
        let line = (self.line_len, self.field);
        self.line_len = 0;
        self.in_value = false;
        self.field = Field::Other;
        match self.state {
            State::Start => Ok(()),
            State::RequestLine => {
                if self.prefix.starts_with(b"pri ") {
                    self.state = State::Passthrough;
                    return Ok(());
                }
                self.is_tunnel = self.prefix.starts_with(b"connect ");
                self.state = State::Headers;
                Ok(())
            }
            State::Headers if line.0 == 0 => self.end_of_head(),
            State::Headers => {
                match line.1 {
                    Field::ContentLength if self.has_length || self.digits == 0 => return Err(()),
                    Field::ContentLength => self.has_length = true,
                    Field::TransferEncoding => self.has_encoding = true,
                    Field::Upgrade => self.is_tunnel = true,
                    Field::Other => {}
                }
                self.digits_done = false;
                Ok(())
            }
            State::Body(_) | State::Passthrough | State::Refused => Ok(()),
        }
    }

    fn end_of_head(&mut self) -> Result<(), ()> {
        if self.has_length && self.has_encoding {
            return Err(());
        }
        self.state = if self.has_encoding || self.is_tunnel {
            State::Passthrough
        } else if self.has_length && self.length > 0 {
            State::Body(self.length)
        } else {
            State::Start
        };
        (self.has_length, self.has_encoding, self.is_tunnel) = (false, false, false);
        self.has_head_bytes = false;
        (self.length, self.digits, self.digits_done) = (0, 0, false);
        Ok(())
    }
}

fn field_of(prefix: &[u8], name_len: usize) -> Field {
    if name_len != prefix.len() {
        return Field::Other;
    }
    match prefix {
        b"content-length" => Field::ContentLength,
        b"transfer-encoding" => Field::TransferEncoding,
        b"upgrade" => Field::Upgrade,
        _ => Field::Other,
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
