use std::io::Write;

use super::*;

/// Encodes `data` with `coding`, for tests here and in `compare`.
pub(crate) fn encode(coding: Coding, data: &[u8]) -> Vec<u8> {
    match coding {
        Coding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("write to Vec");
            enc.finish().expect("finish to Vec")
        }
        Coding::Deflate => {
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("write to Vec");
            enc.finish().expect("finish to Vec")
        }
        Coding::Brotli => {
            let mut out = Vec::new();
            {
                let mut enc = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                enc.write_all(data).expect("write to Vec");
            }
            out
        }
        Coding::Zstd => zstd::encode_all(data, 3).expect("encode to Vec"),
    }
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("write to Vec");
    enc.finish().expect("finish to Vec")
}

const TEXT: &[u8] = b"{\"hello\":\"world\",\"n\":[1,2,3]} and some more text to compress";
const CAP: usize = 1 << 20;

/// No header and `identity` hand back the input without copying.
#[test]
fn identity_is_borrowed() {
    for header in [None, Some("identity"), Some(""), Some(" , identity ")] {
        let out = decode_body(header, TEXT, 4).expect("identity never fails");
        assert!(matches!(out, Cow::Borrowed(_)), "{header:?}");
        assert_eq!(&*out, TEXT);
    }
}

/// Each supported coding decodes back to the original bytes.
#[test]
fn each_coding_decodes() {
    let cases = [
        ("gzip", encode(Coding::Gzip, TEXT)),
        ("x-gzip", encode(Coding::Gzip, TEXT)),
        ("GZIP", encode(Coding::Gzip, TEXT)),
        ("deflate", encode(Coding::Deflate, TEXT)),
        ("deflate", raw_deflate(TEXT)),
        ("br", encode(Coding::Brotli, TEXT)),
        ("zstd", encode(Coding::Zstd, TEXT)),
    ];
    for (header, body) in cases {
        let out = decode_body(Some(header), &body, CAP).expect(header);
        assert_eq!(&*out, TEXT, "{header}");
    }
}

/// "gzip, br" was gzipped first, so it is un-brotlied first.
#[test]
fn stacked_codings_decode_in_reverse() {
    let body = encode(Coding::Brotli, &encode(Coding::Gzip, TEXT));
    let out = decode_body(Some("gzip, br"), &body, CAP).expect("valid stack");
    assert_eq!(&*out, TEXT);
    assert!(decode_body(Some("br, gzip"), &body, CAP).is_err());
}

/// Two concatenated gzip members decode as one body.
#[test]
fn multi_member_gzip() {
    let mut body = encode(Coding::Gzip, b"first ");
    body.extend(encode(Coding::Gzip, b"second"));
    let out = decode_body(Some("gzip"), &body, CAP).expect("two members");
    assert_eq!(&*out, b"first second");
}

/// An empty body under a coding (HEAD, 204, 304) decodes to nothing.
#[test]
fn empty_body_with_coding() {
    let out = decode_body(Some("gzip"), b"", CAP).expect("empty is fine");
    assert!(out.is_empty());
}

/// 4 MiB of zeros, compressed to a few KiB, stops at a 1 MiB cap, per
/// coding. (Small enough to build quickly in a debug test run.)
#[test]
fn zip_bomb_stops_at_cap() {
    let zeros = vec![0u8; 4 << 20];
    for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
        let bomb = encode(coding, &zeros);
        assert!(bomb.len() < 64 << 10, "{coding}: bomb is small");
        let err = decode_body(Some(&coding.to_string()), &bomb, CAP).expect_err("over cap");
        assert!(
            matches!(err, DecodeError::TooLarge { coding: c, limit: CAP } if c == coding),
            "{coding}: {err}"
        );
    }
}

/// A body of exactly the cap is accepted; one byte more is not.
#[test]
fn cap_is_inclusive() {
    let data = vec![7u8; 1000];
    let body = encode(Coding::Gzip, &data);
    assert_eq!(
        decode_body(Some("gzip"), &body, 1000).expect("fits").len(),
        1000
    );
    assert!(matches!(
        decode_body(Some("gzip"), &body, 999),
        Err(DecodeError::TooLarge { .. })
    ));
}

/// Garbage and truncated streams are errors, never panics.
#[test]
fn corrupt_bodies_are_errors() {
    let gz = encode(Coding::Gzip, TEXT);
    let truncated = &gz[..gz.len() / 2];
    for (header, body) in [
        ("gzip", truncated),
        ("gzip", b"not gzip at all".as_slice()),
        ("br", b"\xff\xff\xff\xff not brotli".as_slice()),
        ("zstd", b"not zstd".as_slice()),
        ("deflate", b"\xff\xff\xff".as_slice()),
    ] {
        let err = decode_body(Some(header), body, CAP).expect_err(header);
        assert!(
            matches!(err, DecodeError::Corrupt { .. }),
            "{header}: {err}"
        );
    }
}

/// Unknown codings and over-long stacks are refused by name.
#[test]
fn unsupported_and_too_many_codings() {
    let err = decode_body(Some("gzip, compress"), b"x", CAP).expect_err("compress");
    assert_eq!(
        err.to_string(),
        "content-encoding `compress` is not supported"
    );
    let err = decode_body(Some("gzip,gzip,gzip,gzip,gzip"), b"x", CAP).expect_err("5 layers");
    assert!(matches!(
        err,
        DecodeError::TooManyCodings {
            count: 5,
            max: MAX_CODINGS
        }
    ));
}
