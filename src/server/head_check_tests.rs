use super::*;

/// Feeds `input` in pieces of `step` bytes to a check with heads of at
/// most `limit` bytes; returns the first verdict other than `Pass`, with
/// its offset counted from the start of `input`.
fn feed_limited(input: &[u8], step: usize, limit: usize) -> Verdict {
    let mut check = HeadCheck::new(limit);
    let mut offset = 0;
    for piece in input.chunks(step) {
        match check.inspect(piece) {
            Verdict::Pass => offset += piece.len(),
            Verdict::Refuse(at) => return Verdict::Refuse(offset + at),
            Verdict::TooLarge(at) => return Verdict::TooLarge(offset + at),
        }
    }
    Verdict::Pass
}

/// The offset of the refused byte, if any, with no practical size limit.
fn feed(input: &[u8], step: usize) -> Option<usize> {
    match feed_limited(input, step, usize::MAX) {
        Verdict::Refuse(at) => Some(at),
        verdict => {
            assert_eq!(verdict, Verdict::Pass);
            None
        }
    }
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
    let mut check = HeadCheck::new(usize::MAX);
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

/// Where a head of at most `limit` bytes is cut, whatever the read sizes.
fn cut_at(input: &[u8], limit: usize) -> Option<usize> {
    let verdicts: Vec<Verdict> = [1, 3, 7, input.len()]
        .iter()
        .map(|&step| feed_limited(input, step, limit))
        .collect();
    assert!(
        verdicts.iter().all(|v| *v == verdicts[0]),
        "{verdicts:?} for {:?}",
        String::from_utf8_lossy(input)
    );
    match verdicts[0] {
        Verdict::TooLarge(at) => Some(at),
        verdict => {
            assert_eq!(verdict, Verdict::Pass);
            None
        }
    }
}

#[test]
fn heads_up_to_the_limit_pass_with_their_bodies() {
    let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 300\r\n\r\n";
    let mut request = head.to_vec();
    request.extend_from_slice(&[b'b'; 300]);
    // Twice: the count starts again at each head.
    let twice = [request.clone(), request].concat();
    assert_eq!(cut_at(&twice, head.len()), None);
}

#[test]
fn a_head_over_the_limit_is_cut_at_the_limit_in_a_value_a_name_or_the_target() {
    let value = b"GET / HTTP/1.1\r\nX-Big: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n\r\n";
    assert_eq!(cut_at(value, 30), Some(30));
    let name = b"GET / HTTP/1.1\r\nX-Very-Long-Header-Name-Indeed: 1\r\n\r\n";
    assert_eq!(cut_at(name, 25), Some(25));
    let target = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n";
    assert_eq!(cut_at(target, 20), Some(20));
    let blank_lines = [&b"\r\n"[..]; 40].concat();
    assert_eq!(cut_at(&blank_lines, 20), Some(20));
}

#[test]
fn a_cut_that_would_break_the_head_waits_for_the_next_token() {
    // At 14 the request line is in its version; at 16, after a CR.
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(cut_at(head, 9), Some(16));
    assert_eq!(cut_at(head, 16), Some(16));
    // After the CR that ends the head, the head is complete: it passes.
    assert_eq!(cut_at(head, head.len() - 1), None);
}
