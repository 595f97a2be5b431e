use super::*;
use crate::server::head_check::FILLER;

/// Reads once from `wire`: `Some(bytes)` when the read is ready (an empty
/// one is the end of stream hyper sees), `None` when it would wait.
fn read_now(wire: &mut WireIo<tokio::io::DuplexStream>) -> Option<Vec<u8>> {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut space = [0u8; 64];
    let mut buf = ReadBuf::new(&mut space);
    match Pin::new(wire).poll_read(&mut cx, &mut buf) {
        Poll::Ready(result) => {
            result.expect("read");
            Some(buf.filled().to_vec())
        }
        Poll::Pending => None,
    }
}

/// A connection between requests, one request already served on it.
fn served_connection() -> (
    WireIo<tokio::io::DuplexStream>,
    tokio::io::DuplexStream,
    Arc<ConnActivity>,
    oneshot::Receiver<tokio::io::DuplexStream>,
) {
    let (server, mut client) = tokio::io::duplex(1024);
    let activity = Arc::new(ConnActivity::default());
    let (home, parked) = oneshot::channel();
    let mut wire = WireIo::new(
        server,
        activity.clone(),
        true,
        64 * 1024,
        Duration::from_secs(10),
    )
    .parkable(home);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let written = Pin::new(&mut client).poll_write(&mut cx, request);
    assert!(matches!(written, Poll::Ready(Ok(n)) if n == request.len()));
    assert_eq!(read_now(&mut wire).map(|b| b.len()), Some(request.len()));
    (wire, client, activity, parked)
}

#[tokio::test]
async fn a_quiet_connection_between_requests_parks_and_its_socket_comes_home() {
    let (mut wire, _client, activity, mut parked) = served_connection();
    assert_eq!(read_now(&mut wire), None, "nothing to read, no park asked");
    activity.request_park();
    assert_eq!(read_now(&mut wire), Some(Vec::new()), "hyper sees the end");
    assert_eq!(read_now(&mut wire), Some(Vec::new()), "and keeps seeing it");
    assert!(
        parked.try_recv().is_err(),
        "the socket is hyper's until dropped"
    );
    drop(wire);
    assert!(parked.try_recv().is_ok(), "the socket came home");
}

#[tokio::test]
async fn no_park_with_a_request_in_flight_a_head_begun_or_bytes_unflushed() {
    let (mut wire, mut client, activity, mut parked) = served_connection();
    activity.request_park();
    let in_flight = activity.enter();
    assert_eq!(read_now(&mut wire), None, "a response is under way");
    drop(in_flight);

    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = Pin::new(&mut wire).poll_write(&mut cx, b"HTTP/1.1 200 OK\r\n");
    assert_eq!(read_now(&mut wire), None, "hyper wrote and did not flush");
    assert!(matches!(
        Pin::new(&mut wire).poll_flush(&mut cx),
        Poll::Ready(Ok(()))
    ));

    assert!(matches!(
        Pin::new(&mut client).poll_write(&mut cx, b"GET /next"),
        Poll::Ready(Ok(9))
    ));
    assert_eq!(read_now(&mut wire).map(|b| b.len()), Some(9));
    activity.request_park();
    assert_eq!(read_now(&mut wire), None, "the next head has begun");
    drop(wire);
    assert!(
        parked.try_recv().is_err(),
        "never parked: the socket closes"
    );
}

#[tokio::test]
async fn past_the_head_limit_hyper_reads_filler_instead_of_the_client() {
    let (server, mut client) = tokio::io::duplex(1024);
    let activity = Arc::new(ConnActivity::default());
    let mut wire = WireIo::new(server, activity, true, 20, Duration::from_secs(10));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let head = b"GET / HTTP/1.1\r\nX-A: 0123456789";
    assert!(matches!(
        Pin::new(&mut client).poll_write(&mut cx, head),
        Poll::Ready(Ok(n)) if n == head.len()
    ));
    let first = read_now(&mut wire).expect("a read");
    assert_eq!(first.len(), 64, "the whole buffer is filled");
    assert_eq!(&first[..20], &head[..20]);
    assert!(first[20..].iter().all(|&b| b == FILLER), "{first:?}");
    let next = read_now(&mut wire).expect("filler needs no client bytes");
    assert!(next.len() == 64 && next.iter().all(|&b| b == FILLER));
}
