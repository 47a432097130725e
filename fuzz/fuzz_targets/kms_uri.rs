//! Fuzz target: cloud KMS key URIs (Azure Key Vault / Managed HSM URLs,
//! Google Cloud KMS resource names, AWS KMS ARNs) through the KMS backend's
//! one parser (`keycore_kms::fuzzing::parse_key_uri`).
//!
//! Asserts, for every input:
//! - nothing panics (UTF-8 boundaries, the length cap, empty segments);
//! - an accepted URI round-trips: its canonical text parses again to the same
//!   canonical text (what logs and metrics labels show is itself a valid URI).
#![no_main]

use keycore_kms::fuzzing::parse_key_uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // The three forms start with fixed prefixes; give the fuzzer each one so
    // it spends its time past the scheme check.
    for prefix in ["", "https://", "projects/", "arn:aws:kms:"] {
        let uri = format!("{prefix}{s}");
        if let Ok(canonical) = parse_key_uri(&uri) {
            let again = parse_key_uri(&canonical)
                .unwrap_or_else(|e| panic!("canonical form {canonical:?} of {uri:?} refused: {e}"));
            assert_eq!(again, canonical, "canonical form of {uri:?} is not stable");
        }
    }
});
