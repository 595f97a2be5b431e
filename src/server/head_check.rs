//! The request-head follower of an HTTP/1 connection (`WireIo` feeds it
//! what the client sends): it refuses what hyper's parser would accept or
//! erase before the proxy could see it, and holds heads to the size limit
//! while hyper's read buffer stays large for bodies.
//!
//! hyper (httparse) takes a bare LF as a line end, as RFC 9112 §2.2 allows,
//! and when a request has both `Content-Length` and `Transfer-Encoding` it
//! drops the length and reads the body as chunked. Both are what request
//! smuggling through a front proxy that reads the bytes otherwise is made
//! of, so DESIGN.md refuses them. On such a head, hyper is handed the bytes
//! before the offending one followed by `NUL CR LF CR LF`, then end of
//! stream. hyper then fails to parse a complete but invalid head, answers
//! 400 and closes the connection: the request is never dispatched. (The
//! head must look complete: httparse waits for more bytes rather than fail
//! early.)
//!
//! **Head size.** hyper has one limit for its read buffer, which is also
//! the largest head it parses (431 beyond). Kept at `max_header_bytes`
//! (64 KiB), it also made request bodies be read 64 KiB at a time; the
//! buffer is now larger (`BODY_READ_BYTES`) and the head limit is kept
//! here: past `max_header_bytes` of a head, hyper is handed filler bytes
//! that continue the head's current token (a header value, a name, the
//! target) instead of the client's, until its buffer is full and it
//! answers 431 itself. Where filler could not continue the head (right
//! after a CR, in the HTTP version), the cut waits for the next place it
//! can: a few bytes more.
//!
//! It follows only what it can frame for sure: bodies with a
//! `Content-Length` are skipped by count. After a chunked body, an upgrade
//! or `CONNECT` it stops looking, and the proxy closes that connection
//! after its answer (`proxy::framing::must_close_after`), so no further
//! head passes unchecked. HTTP/2 (the `PRI` preface) is not looked at.

/// hyper's read buffer for HTTP/1 connections, and so the most of a
/// request body one read takes: 4 times fewer reads and writes for a large
/// upload than at 64 KiB, and a third less CPU per 1 MB upload
/// (`benches/RESULTS.md`, 2026-11-26 15:30).
pub const BODY_READ_BYTES: usize = 256 * 1024;

/// What `WireIo` is to do with the bytes just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Replace the bytes from this offset on with `REFUSED_TAIL`.
    Refuse(usize),
    /// Replace the bytes from this offset on with `FILLER`, and every later
    /// read too: the head is over its limit.
    TooLarge(usize),
}

/// What continues an over-long head: a token byte, valid in a method, a
/// request target, a header name and a header value alike.
pub const FILLER: u8 = b'a';

/// What replaces a refused head from its offending byte on: an invalid
/// byte, then an end of head so that hyper parses (and refuses) at once.
pub const REFUSED_TAIL: &[u8] = b"\0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum State {
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
    /// A head went over its limit; hyper gets `FILLER` from now on.
    TooLarge,
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
#[derive(Debug)]
pub struct HeadCheck {
    state: State,
    /// The most bytes a head may have, and how many the current one has.
    max_head_bytes: usize,
    head_bytes: usize,
    /// Spaces seen in the request line: 2 once in the HTTP version.
    spaces: u8,
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
    /// Follows the heads of a connection, up to `max_head_bytes` each.
    pub fn new(max_head_bytes: usize) -> Self {
        HeadCheck {
            state: State::Start,
            max_head_bytes,
            head_bytes: 0,
            spaces: 0,
            after_cr: false,
            line_len: 0,
            prefix: [0; 20],
            in_value: false,
            field: Field::Other,
            digits: 0,
            length: 0,
            digits_done: false,
            has_length: false,
            has_encoding: false,
            is_tunnel: false,
            has_head_bytes: false,
        }
    }

    /// Whether the connection is between requests: no head begun, no body
    /// being read.
    pub fn is_between_requests(&self) -> bool {
        self.state == State::Start && !self.has_head_bytes
    }

    /// Whether everything hyper needs to refuse the head was handed over.
    pub fn is_refused(&self) -> bool {
        self.state == State::Refused
    }

    /// Whether hyper is to get `FILLER` instead of the client's bytes.
    pub fn is_too_large(&self) -> bool {
        self.state == State::TooLarge
    }

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

    /// Follows freshly read bytes: whether they go to hyper as they are.
    pub fn inspect(&mut self, bytes: &[u8]) -> Verdict {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Passthrough | State::Refused | State::TooLarge => return Verdict::Pass,
                State::Body(remaining) => {
                    let skip = remaining.min((bytes.len() - i) as u64);
                    i += skip as usize;
                    self.state = match remaining - skip {
                        0 => State::Start,
                        left => State::Body(left),
                    };
                }
                State::Start | State::RequestLine | State::Headers => {
                    match self.follow_head(bytes, i) {
                        Ok(next) => i = next,
                        Err(verdict) => return verdict,
                    }
                }
            }
        }
        Verdict::Pass
    }

    /// Follows head bytes from `bytes[i]` until the head ends, the bytes
    /// do, or the limit is reached; returns where it stopped, or the
    /// verdict on the head.
    fn follow_head(&mut self, bytes: &[u8], mut i: usize) -> Result<usize, Verdict> {
        self.has_head_bytes = true;
        let room = self.max_head_bytes.saturating_sub(self.head_bytes);
        if room == 0 && self.may_fill_here() {
            self.state = State::TooLarge;
            return Err(Verdict::TooLarge(i));
        }
        // Runs stop at the limit, so that the cut falls there.
        let end = match room {
            0 => bytes.len(),
            room => i + room.min(bytes.len() - i),
        };
        let start = i;
        loop {
            i += self.take_run(&bytes[i..end]);
            if i == end {
                self.head_bytes += i - start;
                return Ok(i);
            }
            if self.head_byte(bytes[i]).is_err() {
                self.state = State::Refused;
                return Err(Verdict::Refuse(i));
            }
            i += 1;
            if !self.has_head_bytes || !self.is_following_a_head() {
                // The head ended (its count starts again), or is no longer
                // followed.
                return Ok(i);
            }
            if room == 0 {
                // Past the limit: back to look for a place to cut.
                self.head_bytes += i - start;
                return Ok(i);
            }
        }
    }

    fn is_following_a_head(&self) -> bool {
        matches!(
            self.state,
            State::Start | State::RequestLine | State::Headers
        )
    }

    /// Whether `FILLER` here continues the head as a token: not right after
    /// a CR (a LF must follow), nor in the request line's HTTP version.
    fn may_fill_here(&self) -> bool {
        !self.after_cr
            && match self.state {
                State::Start | State::Headers => true,
                State::RequestLine => self.spaces < 2,
                _ => false,
            }
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
        if self.state == State::RequestLine {
            // Counted, not stopped at: a cut must know whether it falls in
            // the HTTP version.
            let spaces = rest[..run].iter().filter(|&&b| b == b' ').count();
            self.spaces = self.spaces.saturating_add(spaces.min(2) as u8);
        }
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
        if self.state == State::RequestLine && byte == b' ' {
            self.spaces = self.spaces.saturating_add(1);
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
            State::Body(_) | State::Passthrough | State::Refused | State::TooLarge => Ok(()),
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
        (self.has_head_bytes, self.head_bytes, self.spaces) = (false, 0, 0);
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
#[path = "head_check_tests.rs"]
mod tests;
