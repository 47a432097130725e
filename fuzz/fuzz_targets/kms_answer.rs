//! Fuzz target: what a cloud KMS or token endpoint may answer, through every
//! parser of the KMS backend that reads an HTTP answer
//! (`keycore_kms::fuzzing::answer`): Google's asymmetricSign answer and its
//! integrity fields, Google and Azure error explanations, AWS error types,
//! the token-endpoint answer (`access_token`, `expires_in` / `expires_on`),
//! `Retry-After`, the Azure JWK to SPKI conversion and the body snippet in
//! messages.
//!
//! Input layout: byte 0 picks the HTTP status, byte 1 the header set, the
//! rest is the body. Asserts: nothing panics, and every message built from an
//! answer stays bounded (a hostile service cannot make a log line of
//! megabytes).
#![no_main]

use keycore_kms::fuzzing::answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    answer(data[0], data[1], &data[2..]);
});
