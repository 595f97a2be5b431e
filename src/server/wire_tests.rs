use super::*;

/// Feeds `input` in pieces of `step` bytes; returns the offset of the
/// refused byte, if any.
fn feed(input: &[u8], step: usize) -> Option<usize> {
    let mut check = HeadCheck::default();
    let mut offset = 0;
    for piece in input.chunks(step) {
        if let Some(at) = check.inspect(piece) {
            return Some(offset + at);
        }
        offset += piece.len();
    }
    None
}

fn is_refused(input: &[u8]) -> bool {
    // Whatever the read sizes, the verdict is the same.
    let verdicts: Vec<Option<usize>> = [1, 3, 7, input.len()]
        .iter()
        .map(|&step| feed(input, step))
        .collect();
    assert!(
        verdicts.iter().all(|v| *v == verdicts[0]),
        "{verdicts:?} for {:?}",
        String::from_utf8_lossy(input)
    );
    verdicts[0].is_some()
}
#[test]
fn plain_requests_and_their_bodies_pass_untouched() {
    let pipelined = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\nab\ncdGET /y HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(!is_refused(pipelined));
}

#[test]
fn bare_lf_in_a_head_is_refused_but_not_in_a_body() {
    assert!(is_refused(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
    assert!(is_refused(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"));
    assert!(is_refused(b"GET / HTTP/1.1\r\nHost: a\r\rX: b\r\n\r\n"));
    assert!(!is_refused(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n\n\n\n"
    ));
}

#[test]
fn length_with_encoding_and_repeated_lengths_are_refused() {
    assert!(is_refused(
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ));
    assert!(is_refused(
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"
    ));
    assert!(is_refused(
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"
    ));
    assert!(is_refused(
        b"POST / HTTP/1.1\r\nContent-Length: 4 4\r\n\r\nabcd"
    ));
    assert!(is_refused(
        b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd"
    ));
}

#[test]
fn refusal_points_at_the_offending_byte() {
    // "GET / HTTP/1.1\r\n" is 16 bytes, "Host: a" 7: the bare LF is at 23.
    assert_eq!(
        feed(b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 5),
        Some(23)
    );
}

#[test]
fn stops_looking_after_chunked_bodies_upgrades_and_h2() {
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n";
    assert!(!is_refused(chunked));
    assert!(!is_refused(
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\n\n\x00"
    ));
    assert!(!is_refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\n"));
}

#[test]
fn a_head_in_progress_is_known_and_bodies_are_not_heads() {
    let mut check = HeadCheck::default();
    assert!(!check.is_in_head());
    check.inspect(b"\r\n");
    assert!(check.is_in_head() && !check.has_request_line());
    check.inspect(b"GET / HTTP/1.1\r\nHost: a\r\n");
    assert!(check.is_in_head() && check.has_request_line());
    check.inspect(b"\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\na");
    assert!(!check.is_in_head(), "in a body");
    check.inspect(b"b");
    assert!(!check.is_in_head(), "between requests");
    check.inspect(b"G");
    assert!(check.is_in_head() && check.has_request_line());
}

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
    let mut wire =
        WireIo::new(server, activity.clone(), true, Duration::from_secs(10)).parkable(home);
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
