//! The HTTP/1 request head timeout, below hyper: `408` for a head that
//! starts and stalls, a silent close for a new connection that says nothing.
//!
//! hyper's own `header_read_timeout` closes without a word, and its clock
//! starts when hyper begins to wait for a head, so it also ends the idle
//! time of a keep-alive connection. Envoy (`request_headers_timeout`),
//! HAProxy (`timeout http-request`) and nginx instead answer `408` to a
//! head that started and did not finish, and leave idle connections to
//! their idle timeout. `WireIo` does the same with this clock, and hyper's
//! is turned off (`listener::http_builder`):
//!
//! - a new connection's first byte must arrive within the limit, else the
//!   connection is closed without an answer;
//! - from the first byte of a head (blank lines before a request line
//!   included), the whole head must arrive within the limit, else the
//!   client gets `408` with `Connection: close` and the connection is
//!   closed; a head that was only blank lines is closed without an answer;
//! - between requests nothing runs here: `keepalive_timeout` closes an
//!   idle connection, silently.
//!
//! While heads arrive whole in one read the clock costs nothing: a
//! deadline is taken only when a read ends inside a head, and the timer
//! is polled only when the next read would wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a client whose head timed out is told, in the proxy's error shape.
/// There is no route and no request id yet: the head was never read.
const ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 27\r\n\r\n{\"error\":\"request_timeout\"}";
/// How long a timed-out client gets to take the answer and close first.
/// Closing a socket with unread bytes resets the connection, which can
/// destroy the 408 before the client reads it; so what the client still
/// sends is read and dropped, up to this long and `LINGER_BYTES`.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// What the clock waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// Nothing: between requests, in a body, or after heads stopped being followed.
    Off,
    /// A new connection's first byte.
    FirstByte(Instant),
    /// The end of a head that has begun.
    HeadEnd(Instant),
}

/// Once the deadline passed: the steps of answering and closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// This many bytes of `ANSWER` are written.
    Answering(usize),
    Flushing,
    ShuttingDown {
        then_linger: bool,
    },
    /// Reading and dropping what the client sends, this many bytes more at most.
    Lingering(usize),
    /// hyper reads end of stream from now on.
    Closed,
}

/// The head clock of one connection; see the module docs.
#[derive(Debug)]
pub(crate) struct HeadTimeout {
    limit: Duration,
    deadline: Deadline,
    /// Made when first needed, then reset: one timer per connection.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether hyper has written since it last flushed. hyper flushes
    /// only once its own buffer is empty, so when this is false no byte of
    /// an earlier response (to a pipelined request, say) waits to go out,
    /// and a 408 written under hyper cannot land inside one. When it is
    /// true (a client that does not read), the connection is closed
    /// without an answer instead.
    has_unflushed_writes: bool,
    phase: Phase,
}

impl HeadTimeout {
    /// `is_first_head_awaited: false` turns the clock off for good (a
    /// connection known to speak HTTP/2).
    pub(crate) fn new(limit: Duration, is_first_head_awaited: bool) -> HeadTimeout {
        let deadline = if is_first_head_awaited {
            Deadline::FirstByte(Instant::now() + limit)
        } else {
            Deadline::Off
        };
        HeadTimeout {
            limit,
            deadline,
            sleep: None,
            has_unflushed_writes: false,
            phase: Phase::Running,
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// For a parked connection taken up again: it is no new connection,
    /// and its idle time is `keepalive_timeout`'s to end.
    pub(crate) fn forget_first_byte(&mut self) {
        if let Deadline::FirstByte(_) = self.deadline {
            self.deadline = Deadline::Off;
        }
    }

    /// Running with no deadline (between requests) and nothing unflushed.
    pub(crate) fn is_idle(&self) -> bool {
        self.phase == Phase::Running && self.deadline == Deadline::Off && !self.has_unflushed_writes
    }

    /// hyper writes to the client (or tries to).
    pub(crate) fn on_write(&mut self) {
        self.has_unflushed_writes = true;
    }

    /// hyper's flush went through: everything it wrote is on its way.
    pub(crate) fn on_flush(&mut self) {
        self.has_unflushed_writes = false;
    }

    /// After a read that brought bytes: whether the connection is now
    /// inside a head that has not ended.
    pub(crate) fn track(&mut self, is_in_head: bool) {
        self.deadline = match (self.deadline, is_in_head) {
            (_, false) => Deadline::Off,
            (Deadline::HeadEnd(at), true) => Deadline::HeadEnd(at),
            (Deadline::Off | Deadline::FirstByte(_), true) => {
                Deadline::HeadEnd(Instant::now() + self.limit)
            }
        };
    }

    /// When a read would wait: ready once the deadline has passed.
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = match self.deadline {
            Deadline::Off => return Poll::Pending,
            Deadline::FirstByte(at) | Deadline::HeadEnd(at) => at,
        };
        self.sleep_until(at).poll(cx)
    }

    /// The deadline passed: answer 408 when a request line had begun and
    /// hyper has nothing unflushed; else close silently. Returns the
    /// `strangler_rejected_requests_total` reason.
    pub(crate) fn expire(&mut self, has_request_line: bool) -> &'static str {
        let reason = match self.deadline {
            Deadline::FirstByte(_) => "silent_connection",
            Deadline::HeadEnd(_) | Deadline::Off => "head_timeout",
        };
        let is_answered = has_request_line
            && matches!(self.deadline, Deadline::HeadEnd(_))
            && !self.has_unflushed_writes;
        tracing::debug!(answered = is_answered, limit = ?self.limit, "request head timed out");
        self.phase = if is_answered {
            Phase::Answering(0)
        } else {
            Phase::ShuttingDown { then_linger: false }
        };
        self.deadline = Deadline::Off;
        self.sleep_until(Instant::now() + LINGER);
        reason
    }

    /// Answers and closes; ready (for hyper: end of stream) when done or
    /// when the linger ran out. Errors end it quietly: the client is gone.
    pub(crate) fn poll_close<IO>(
        &mut self,
        mut io: Pin<&mut IO>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>>
    where
        IO: AsyncRead + AsyncWrite,
    {
        loop {
            let next = match self.phase {
                Phase::Running | Phase::Closed => Phase::Closed,
                Phase::Answering(sent) => match io.as_mut().poll_write(cx, &ANSWER[sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 && sent + n < ANSWER.len() => {
                        Phase::Answering(sent + n)
                    }
                    Poll::Ready(Ok(n)) if n > 0 => Phase::Flushing,
                    Poll::Ready(_) => Phase::Closed,
                    Poll::Pending => break,
                },
                Phase::Flushing => match io.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => Phase::ShuttingDown { then_linger: true },
                    Poll::Ready(Err(_)) => Phase::Closed,
                    Poll::Pending => break,
                },
                Phase::ShuttingDown { then_linger } => match io.as_mut().poll_shutdown(cx) {
                    Poll::Ready(Ok(())) if then_linger => Phase::Lingering(LINGER_BYTES),
                    Poll::Ready(_) => Phase::Closed,
                    Poll::Pending => break,
                },
                Phase::Lingering(left) => {
                    let mut scratch = [0u8; 4096];
                    let mut sink = ReadBuf::new(&mut scratch);
                    match io.as_mut().poll_read(cx, &mut sink) {
                        Poll::Ready(Ok(())) if !sink.filled().is_empty() => {
                            match left.checked_sub(sink.filled().len()) {
                                Some(left) if left > 0 => Phase::Lingering(left),
                                _ => Phase::Closed,
                            }
                        }
                        Poll::Ready(_) => Phase::Closed,
                        Poll::Pending => break,
                    }
                }
            };
            self.phase = next;
            if next == Phase::Closed {
                self.sleep = None;
                return Poll::Ready(Ok(()));
            }
        }
        // Waiting on the client, for at most the linger.
        let is_over = self
            .sleep
            .as_mut()
            .is_none_or(|sleep| sleep.as_mut().poll(cx).is_ready());
        if is_over {
            self.phase = Phase::Closed;
            self.sleep = None;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    fn sleep_until(&mut self, at: Instant) -> Pin<&mut Sleep> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A clock whose head began (or not) and whose deadline then passed.
    fn expired(has_head_begun: bool, has_request_line: bool, is_flushed: bool) -> HeadTimeout {
        let mut clock = HeadTimeout::new(Duration::from_secs(10), true);
        clock.track(has_head_begun);
        clock.on_write();
        if is_flushed {
            clock.on_flush();
        }
        let _ = clock.expire(has_request_line);
        clock
    }

    /// Runs the clock's answer and close over one end of a pipe; returns
    /// what the client end read before the end of stream.
    async fn answer(mut clock: HeadTimeout) -> Vec<u8> {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let closing = std::future::poll_fn(|cx| clock.poll_close(Pin::new(&mut server), cx));
        let reading = async move {
            let mut seen = Vec::new();
            client.read_to_end(&mut seen).await.expect("read");
            // `client` is dropped here, which ends the proxy's linger at once.
            seen
        };
        let (closed, seen) = tokio::join!(closing, reading);
        closed.expect("closed");
        seen
    }

    #[tokio::test]
    async fn a_begun_request_line_gets_408_once_everything_is_flushed() {
        assert_eq!(answer(expired(true, true, true)).await, ANSWER);
    }

    #[tokio::test]
    async fn silence_blank_lines_and_unflushed_answers_get_no_408() {
        // Nothing came on a new connection.
        assert_eq!(answer(expired(false, false, true)).await, b"");
        // Only blank lines came.
        assert_eq!(answer(expired(true, false, true)).await, b"");
        // hyper has bytes of an earlier answer that did not go out.
        assert_eq!(answer(expired(true, true, false)).await, b"");
    }
}
