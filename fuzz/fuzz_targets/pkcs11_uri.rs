//! Fuzz target: RFC 7512 `pkcs11:` URIs through `Pkcs11Uri::parse`.
//!
//! Asserts, for every input:
//! - nothing panics (percent-decoding, UTF-8 boundaries past the 4096-byte
//!   cap, duplicate and unknown attributes, `x-` settings, durations);
//! - a PIN never leaks: the input is also tried with a marker PIN spliced in
//!   (as `pin-value`, upper-case, percent-encoded or blank-padded names, in
//!   the path or the query), and neither the error text (`Display`, `Debug`)
//!   nor an accepted URI's `display` / `Debug` may contain the marker;
//! - parsing is deterministic (the same input gives the same answer).
#![no_main]

use keycore_pkcs11::Pkcs11Uri;
use libfuzzer_sys::fuzz_target;

/// Long and unlikely enough that it only appears where the PIN was put.
const MARKER: &str = "Zq9PinMarker7Xw";

/// Spellings of the attribute name that all mean `pin-value`.
const NAMES: [&str; 5] = [
    "pin-value",
    "PIN-VALUE",
    "pin%2Dvalue",
    "%70in-value",
    " pin-value ",
];

fn check(uri: &str) {
    let first = Pkcs11Uri::parse(uri);
    let again = Pkcs11Uri::parse(uri);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert!(a == b, "parse is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a, b, "parse is not deterministic"),
        _ => panic!("parse is not deterministic"),
    }
    if !uri.contains(MARKER) {
        return;
    }
    match first {
        Ok(u) => {
            assert!(!u.display.contains(MARKER), "PIN in display: {}", u.display);
            assert!(!format!("{u:?}").contains(MARKER), "PIN in Debug");
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(MARKER), "PIN in error: {text}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check(s);
    // Splice a marker PIN in at a point the input picks (its first byte), with
    // one of the name spellings and a separator the position calls for.
    let Some(&b) = data.first() else {
        return;
    };
    let name = NAMES[b as usize % NAMES.len()];
    let mut at = (b as usize * 31) % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    let (head, tail) = s.split_at(at);
    let sep = if head.contains('?') { '&' } else { ';' };
    let spliced = format!("{head}{sep}{name}={MARKER}{tail}");
    check(&spliced);
    check(&format!("pkcs11:token=t;object=k?{name}={MARKER}&{s}"));
});
