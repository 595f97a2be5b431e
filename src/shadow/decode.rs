//! Content-Encoding decoding for shadow comparison, bounded so that a small
//! compressed body cannot expand into gigabytes (a "zip bomb").
//!
//! Only the comparison sees decoded bytes; the client always gets the
//! primary's answer untouched.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read};

/// A header listing more codings than this is refused before any work:
/// every layer may expand up to the cap, so layers multiply the cost.
pub const MAX_CODINGS: usize = 4;

// RFC 9659: HTTP zstd encoders must not use a window above 8 MiB, and
// decoders may refuse one. Without this limit a frame header could make the
// decoder reserve up to 2 GiB before producing a byte.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A content coding this module can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl fmt::Display for Coding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("content-encoding `{coding}` is not supported")]
    Unsupported { coding: String },

    #[error("content-encoding lists {count} codings; at most {max} are decoded")]
    TooManyCodings { count: usize, max: usize },

    #[error("body is not valid `{coding}` data")]
    Corrupt {
        coding: Coding,
        #[source]
        source: io::Error,
    },

    #[error("body decoded with `{coding}` exceeds the {limit}-byte limit")]
    TooLarge { coding: Coding, limit: usize },
}

/// Decodes `body` according to a Content-Encoding header value.
///
/// Codings are listed in the order they were applied ("gzip, br" means
/// gzip first), so they are undone from the last. `identity` and empty
/// list items are skipped, and names are matched case-insensitively.
///
/// Every layer stops at `max_decoded_bytes`. An identity body is returned
/// as it is, whatever its size: it is already in memory, and the shadow
/// buffer that holds it has its own limit.
pub fn decode_body<'a>(
    content_encoding: Option<&str>,
    body: &'a [u8],
    max_decoded_bytes: usize,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let Some(header) = content_encoding else {
        return Ok(Cow::Borrowed(body));
    };
    // Check the whole list first, so an unknown coding costs nothing.
    let mut count = 0;
    for token in header.split(',') {
        if parse_coding(token)?.is_some() {
            count += 1;
        }
    }
    if count > MAX_CODINGS {
        return Err(DecodeError::TooManyCodings {
            count,
            max: MAX_CODINGS,
        });
    }

    let mut current = Cow::Borrowed(body);
    for token in header.rsplit(',') {
        let Some(coding) = parse_coding(token)? else {
            continue;
        };
        // An empty body under a coding is common for HEAD, 204 and 304
        // answers, and no decoder accepts zero bytes as a stream.
        if current.is_empty() {
            break;
        }
        current = Cow::Owned(decode_layer(coding, &current, max_decoded_bytes)?);
    }
    Ok(current)
}

/// `None` for `identity` and empty items, which need no work.
fn parse_coding(token: &str) -> Result<Option<Coding>, DecodeError> {
    let token = token.trim();
    let coding = if token.is_empty() || token.eq_ignore_ascii_case("identity") {
        return Ok(None);
    } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
        Coding::Gzip
    } else if token.eq_ignore_ascii_case("deflate") {
        Coding::Deflate
    } else if token.eq_ignore_ascii_case("br") {
        Coding::Brotli
    } else if token.eq_ignore_ascii_case("zstd") {
        Coding::Zstd
    } else {
        return Err(DecodeError::Unsupported {
            coding: token.to_owned(),
        });
    };
    Ok(Some(coding))
}

fn decode_layer(coding: Coding, input: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let corrupt = |source| DecodeError::Corrupt { coding, source };
    match coding {
        // Multi-member: RFC 1952 allows several gzip members back to back,
        // and some servers write one per flush.
        Coding::Gzip => read_capped(coding, flate2::read::MultiGzDecoder::new(input), limit),
        // "deflate" is meant to be zlib (RFC 9110), but servers that send
        // raw deflate are common enough that browsers accept both.
        Coding::Deflate if has_zlib_header(input) => {
            read_capped(coding, flate2::read::ZlibDecoder::new(input), limit)
        }
        Coding::Deflate => read_capped(coding, flate2::read::DeflateDecoder::new(input), limit),
        Coding::Brotli => read_capped(coding, brotli::Decompressor::new(input, 4096), limit),
        Coding::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(corrupt)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(corrupt)?;
            read_capped(coding, decoder, limit)
        }
    }
}

/// Reads at most `limit + 1` bytes: one byte over is enough to know the
/// body is too large, and nothing past it is ever produced.
fn read_capped(coding: Coding, reader: impl Read, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|source| DecodeError::Corrupt { coding, source })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { coding, limit });
    }
    Ok(out)
}

/// RFC 1950: CM = 8 (deflate), window at most 32 KiB, and the two header
/// bytes form a multiple of 31. Raw deflate rarely passes all three.
fn has_zlib_header(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

// `pub(crate)`: the compare tests build encoded bodies with its encoders.
#[cfg(test)]
pub(crate) mod tests;
