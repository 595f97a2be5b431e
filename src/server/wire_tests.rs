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
