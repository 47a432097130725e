//! Entry points for the fuzz targets (`fuzz/fuzz_targets/kms_uri.rs`,
//! `kms_answer.rs`). Compiled only with the `fuzzing` feature, which only the
//! fuzz crate turns on (and in this crate's unit tests, which run each entry
//! point once), so a normal build's public surface is unchanged.
//!
//! Owns: nothing but the glue from bytes to this crate's private parsers.
//! Must not: do I/O or keep state between calls.

use crate::http::Reply;
use crate::uri::KeyUri;
use crate::{auth, aws, azure, gcp, verify};
use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::StatusCode;
use keycore_keys::KeyKind;
use keycore_protocol::{Hash, OpClass};

/// Longest message any answer parser may build from an answer: the body
/// snippet is cut at 300 bytes; the rest is fixed text and short fields.
const MAX_MESSAGE: usize = 4096;

/// Parse a key URI; on success its canonical text (what logs and metric
/// labels show).
pub fn parse_key_uri(uri: &str) -> Result<String, super::uri::UriError> {
    KeyUri::parse(uri).map(|k| k.to_string())
}

/// Run every answer parser on one answer: status from `status` (one of the
/// codes the services send), headers picked by `headers` (bit 0: a
/// `Retry-After` taken from the body's first line; bit 1: an
/// `x-amzn-errortype`), and `body`. Panics if a message grows unbounded.
pub fn answer(status: u8, headers: u8, body: &[u8]) {
    const CODES: [u16; 10] = [200, 400, 401, 403, 404, 410, 429, 500, 503, 302];
    let status = StatusCode::from_u16(CODES[status as usize % CODES.len()]).unwrap();
    let mut map = HeaderMap::new();
    let first_line = body.split(|&b| b == b'\n').next().unwrap_or_default();
    if headers & 1 != 0 {
        if let Ok(v) = HeaderValue::from_bytes(first_line) {
            map.insert(RETRY_AFTER, v);
        }
    }
    if headers & 2 != 0 {
        if let Ok(v) = HeaderValue::from_bytes(first_line) {
            map.insert("x-amzn-errortype", v);
        }
    }
    let r = Reply {
        status,
        headers: map,
        body: Bytes::copy_from_slice(body),
    };
    let bounded = |what: &str, s: &str| {
        assert!(s.len() <= MAX_MESSAGE, "{what}: {} bytes", s.len());
    };

    if let Some(d) = r.retry_after() {
        assert!(d.as_secs() <= 86_400, "Retry-After not capped: {d:?}");
    }
    bounded("snippet", &r.snippet());
    bounded("aws error type", &aws::error_type(&r));
    if let Some(s) = gcp::explained(&r) {
        bounded("gcp explained", &s);
    }
    let name = "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1";
    if let crate::http::Attempt::Done(sig) =
        gcp::check_sign_answer(&r, name, "verifiedDigestCrc32c")
    {
        assert!(sig.len() <= body.len(), "signature longer than the answer");
    }
    if let Ok(KeyUri::Azure(key)) =
        KeyUri::parse("https://v.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef")
    {
        bounded("azure forbidden", &azure::forbidden(&key, &r));
    }
    match auth::parse_token_reply(&r) {
        Ok((token, secs)) => {
            assert!(!token.is_empty() && secs >= 1);
        }
        Err(e) => bounded("token reply", &e.to_string()),
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        // Azure: a key's JWK, as GET /keys/<name>/<version> answers it.
        if let Ok((spki, kind)) = azure::jwk_to_spki(&v["key"]) {
            assert_eq!(
                keycore_keys::classify_spki(&spki).ok(),
                Some(kind),
                "JWK SPKI disagrees"
            );
        }
    }
    // AWS GetPublicKey / Google getPublicKey answers carry an SPKI; the
    // body stands in for it here, and for a returned signature.
    if let Ok(kind) = keycore_keys::classify_spki(body) {
        if let Some(public) = verify::public_bits(body) {
            let op = match kind {
                KeyKind::Rsa { .. } => OpClass::RsaPkcs1(Hash::Sha256),
                KeyKind::Ed25519 => OpClass::Ed25519,
                _ => OpClass::Ecdsa(Hash::Sha256),
            };
            let _ = verify::check(kind, &public, op, &[7; 32], body);
        }
    }
    let _ = verify::check(
        KeyKind::EcdsaP256,
        body,
        OpClass::Ecdsa(Hash::Sha256),
        &[7; 32],
        body,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry points the fuzz targets call work on the seeds' shapes (so
    /// a change that breaks them fails here, not only in the fuzz build).
    #[test]
    fn entry_points_run_on_seed_shapes() {
        let uri = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(parse_key_uri(uri).as_deref(), Ok(uri));
        assert!(parse_key_uri("ftp://x").is_err());
        answer(0, 0, br#"{"access_token":"t","expires_in":"60"}"#);
        answer(
            3,
            0,
            br#"{"error":{"code":403,"status":"PERMISSION_DENIED"}}"#,
        );
        answer(6, 3, b"120\n{\"__type\":\"ThrottlingException\"}");
    }

    /// Crash the fuzzer found (CI, December 2026): a 403 whose Google error
    /// message is 5 KB made a 5 KB explanation. Kept as a seed too.
    #[test]
    fn long_service_messages_are_cut() {
        let seed = include_bytes!("../../fuzz/corpus-seed/kms_answer/regress-gcp-long-message");
        answer(seed[0], seed[1], &seed[2..]);
        let long = "x".repeat(20_000);
        for (status, body) in [
            (
                3,
                format!(r#"{{"error":{{"code":403,"message":"{long}","status":"{long}"}}}}"#),
            ),
            (
                1,
                format!(r#"{{"error":{{"status":"FAILED_PRECONDITION","message":"{long}"}}}}"#),
            ),
            (
                3,
                format!(
                    r#"{{"error":{{"code":"{long}","message":"{long}","innererror":{{"code":"{long}"}}}}}}"#
                ),
            ),
            (1, format!(r#"{{"__type":"{long}"}}"#)),
        ] {
            answer(status, 2, body.as_bytes());
        }
    }
}
