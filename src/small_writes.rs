//! Small vectored writes go out as one `send` rather than a `writev`.
//!
//! hyper hands the socket a message's head and body as separate slices,
//! which tokio writes with `writev`. In Linux, `writev` reaches TCP through
//! the VFS (`vfs_writev`, the import of the iovec array, `sock_write_iter`);
//! `send` goes to the socket directly. For a small answer on loopback the
//! system call costs about 5% less that way (`benches/small_writes.rs`),
//! and a proxied request makes two such writes. Copying a few kilobytes
//! into one buffer costs less than that. Larger writes stay vectored: for
//! them, the copy would cost more than the detour saves.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Up to this many bytes in several slices are copied into one buffer.
const JOIN_MAX: usize = 4096;

thread_local! {
    /// Where slices are joined: one per thread, reused, as zeroing a fresh
    /// buffer on the stack for every write cost more than the join.
    static JOINED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(JOIN_MAX));
}

/// Writes `bufs` to `io` with one plain write when they hold one non-empty
/// slice or at most `JOIN_MAX` bytes, vectored otherwise.
pub fn poll_write_vectored<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut slices = bufs.iter().filter(|buf| !buf.is_empty());
    let (Some(first), second) = (slices.next(), slices.next()) else {
        return io.poll_write_vectored(cx, bufs);
    };
    if second.is_none() {
        return io.poll_write(cx, first);
    }
    let total: usize = bufs.iter().map(|buf| buf.len()).sum();
    if total > JOIN_MAX {
        return io.poll_write_vectored(cx, bufs);
    }
    JOINED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut joined) => {
            joined.clear();
            for buf in bufs {
                joined.extend_from_slice(buf);
            }
            // A short write reports the bytes taken from the front, as a
            // vectored write would.
            io.poll_write(cx, &joined)
        }
        // Only if a write below this one wrote through here again.
        Err(_) => io.poll_write_vectored(cx, bufs),
    })
}

/// A byte stream whose small vectored writes are joined (for the backend
/// connections; the client side does it in `server::WireIo`).
#[derive(Debug)]
pub struct Joined<IO>(pub IO);

impl<IO: AsyncRead + Unpin> AsyncRead for Joined<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Joined<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_vectored(Pin::new(&mut self.0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records each write call and the bytes it took.
    #[derive(Default)]
    struct Recorder {
        plain: Vec<Vec<u8>>,
        vectored: Vec<Vec<u8>>,
        /// Takes at most this many bytes per call.
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let taken = buf.len().min(self.limit);
            self.plain.push(buf[..taken].to_vec());
            Poll::Ready(Ok(taken))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let taken = all.len().min(self.limit);
            self.vectored.push(all[..taken].to_vec());
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn recorder(limit: usize) -> Joined<Recorder> {
        Joined(Recorder {
            limit,
            ..Recorder::default()
        })
    }

    #[tokio::test]
    async fn a_small_head_and_body_go_in_one_plain_write() {
        let mut io = recorder(usize::MAX);
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let written = io
            .write_vectored(&[IoSlice::new(head), IoSlice::new(b""), IoSlice::new(b"ok")])
            .await
            .unwrap();
        assert_eq!(written, head.len() + 2);
        assert_eq!(io.0.plain, vec![[&head[..], b"ok"].concat()]);
        assert!(io.0.vectored.is_empty());
    }

    #[tokio::test]
    async fn one_slice_of_any_size_is_a_plain_write() {
        let mut io = recorder(usize::MAX);
        let big = vec![7u8; JOIN_MAX * 4];
        let written = io
            .write_vectored(&[IoSlice::new(b""), IoSlice::new(&big)])
            .await
            .unwrap();
        assert_eq!(written, big.len());
        assert_eq!(io.0.plain, vec![big]);
        assert!(io.0.vectored.is_empty());
    }

    #[tokio::test]
    async fn large_writes_stay_vectored() {
        let mut io = recorder(usize::MAX);
        let body = vec![1u8; JOIN_MAX];
        let written = io
            .write_vectored(&[IoSlice::new(b"head"), IoSlice::new(&body)])
            .await
            .unwrap();
        assert_eq!(written, 4 + body.len());
        assert!(io.0.plain.is_empty());
        assert_eq!(io.0.vectored, vec![[&b"head"[..], &body].concat()]);
    }

    #[tokio::test]
    async fn a_short_write_takes_bytes_from_the_front() {
        let mut io = recorder(5);
        let written = io
            .write_vectored(&[IoSlice::new(b"abc"), IoSlice::new(b"defgh")])
            .await
            .unwrap();
        assert_eq!(written, 5);
        assert_eq!(io.0.plain, vec![b"abcde".to_vec()]);
    }
}
