//! `proxy::path::normalize` on arbitrary text: never panics, and what it
//! returns is a normal path: absolute, without `//`, `/./` or `/../`, and a
//! fixed point (normalising it again changes nothing). Routing and
//! forwarding both read the normal form, so a second pass that changed it
//! would mean the two could disagree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strangler::proxy::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(once) = normalize(raw) else {
        return;
    };
    assert!(once.starts_with('/'), "{raw:?} -> {once:?} is not absolute");
    assert!(!once.contains("//"), "{raw:?} -> {once:?} has `//`");
    assert!(!once.contains("/./"), "{raw:?} -> {once:?} has `/./`");
    assert!(!once.contains("/../"), "{raw:?} -> {once:?} has `/../`");
    assert!(
        !once.ends_with("/.") && !once.ends_with("/.."),
        "{raw:?} -> {once:?} ends in a dot segment"
    );
    match normalize(&once) {
        Ok(twice) => assert_eq!(once, twice, "not idempotent for {raw:?}"),
        Err(err) => panic!("{raw:?} -> {once:?}, which is then refused: {err}"),
    }
});
