//! One system call, not two, for the first bytes of a connection.
//!
//! To choose between HTTP/1 and HTTP/2, hyper-util reads 24 bytes (the
//! length of the HTTP/2 preface), and hyper then reads the rest of the
//! head: two `recvfrom` for every new connection where nginx makes one.
//! A read that small is made a full one here, and what does not fit is
//! handed out on the next reads.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Reads asking for less than this read ahead.
const SMALL_READ: usize = 512;
/// How much a small read reads: a typical request head, and on the stack.
const READ_AHEAD: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    /// Read from the socket, not yet handed out; empty (no allocation)
    /// but for a moment after a small read.
    kept: Vec<u8>,
    at: usize,
}

impl ReadAhead {
    /// Reads into `buf` what was read ahead, or from `io`. `Pending` only
    /// when nothing is kept and `io` has nothing.
    pub fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        io: Pin<&mut IO>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.kept.len() {
            let n = (self.kept.len() - self.at).min(buf.remaining());
            buf.put_slice(&self.kept[self.at..self.at + n]);
            self.at += n;
            if self.at == self.kept.len() {
                *self = ReadAhead::default();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SMALL_READ {
            return io.poll_read(cx, buf);
        }
        let mut space = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut ahead = ReadBuf::uninit(&mut space);
        ready!(io.poll_read(cx, &mut ahead))?;
        let read = ahead.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            self.kept = read[n..].to_vec();
            self.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// An I/O that counts the reads made of it.
    struct Counted {
        inner: tokio::io::DuplexStream,
        reads: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    async fn read(ahead: &mut ReadAhead, io: &mut Counted, size: usize) -> Vec<u8> {
        let mut space = vec![0u8; size];
        let mut buf = ReadBuf::new(&mut space);
        std::future::poll_fn(|cx| ahead.poll_read(Pin::new(&mut *io), cx, &mut buf))
            .await
            .expect("read");
        buf.filled().to_vec()
    }

    #[tokio::test]
    async fn a_small_first_read_and_the_next_take_one_read_of_the_socket() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let head = b"GET /some/path HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n";
        client.write_all(head).await.expect("write");
        let mut io = Counted {
            inner: server,
            reads: 0,
        };
        let mut ahead = ReadAhead::default();

        let first = read(&mut ahead, &mut io, 24).await;
        assert_eq!(first, head[..24]);
        let rest = read(&mut ahead, &mut io, 8192).await;
        assert_eq!(rest, head[24..]);
        assert_eq!(io.reads, 1);
        assert!(ahead.kept.is_empty() && ahead.kept.capacity() == 0);

        // Nothing kept: a large read goes straight to the socket.
        client.write_all(b"next").await.expect("write");
        assert_eq!(read(&mut ahead, &mut io, 8192).await, b"next");
        assert_eq!(io.reads, 2);
    }

    #[tokio::test]
    async fn what_is_kept_is_handed_out_in_order_across_small_reads() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let bytes: Vec<u8> = (0..100u8).collect();
        client.write_all(&bytes).await.expect("write");
        let mut io = Counted {
            inner: server,
            reads: 0,
        };
        let mut ahead = ReadAhead::default();
        let mut seen = Vec::new();
        while seen.len() < bytes.len() {
            seen.extend(read(&mut ahead, &mut io, 7).await);
        }
        assert_eq!(seen, bytes);
        assert_eq!(io.reads, 1);
    }
}
