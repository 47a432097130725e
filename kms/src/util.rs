//! Small pure helpers the providers share: base64 flavours, form encoding,
//! UTC calendar arithmetic (SigV4 dates, RFC 3339 expiry times), SPKI
//! inspection, ECDSA digest fitting and the PKCS#1 v1.5 blocks.
//!
//! Must not: do I/O or read the clock (callers pass the time in), so all of
//! it is unit-tested deterministically.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keycore_keys::KeyKind;
use keycore_protocol::{Hash, OpClass};

/// Standard base64 with padding (Google and AWS JSON bytes).
pub fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// Decode standard base64.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).ok()
}

/// base64url without padding (JOSE: Azure values, JWT parts).
pub fn b64url(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Decode base64url, tolerating padding.
pub fn unb64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Percent-encode for `application/x-www-form-urlencoded` and URI query
/// values (RFC 3986 unreserved characters kept, as SigV4 also requires).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k1=v1&k2=v2`, each percent-encoded.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// SigV4 timestamp `YYYYMMDDTHHMMSSZ` of Unix seconds: the RFC 3339 text
/// of keycore-config's one date formatter without its separators (whole
/// seconds never carry a fraction there).
pub fn amz_date(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    keycore_config::format_rfc3339(t).replace(['-', ':'], "")
}

/// Unix seconds of an RFC 3339 time such as `2026-11-29T06:12:00Z`
/// (fractions dropped; a numeric offset is applied): the workspace's one
/// RFC 3339 parser (keycore-config's), so credential expiry and
/// `current_time` read times the same way (no leap second 60, `T`
/// separator). `None` for anything else or a time before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    keycore_config::parse_rfc3339(s)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Why a cloud key, or one operation on it, cannot be served: the key's
/// algorithm or the service has no way to do what the edge asked. Shared by
/// the three providers' `plan` functions (and Google's algorithm check at
/// load); each variant names the service, algorithm or hash involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The key's kind cannot do the operation at all on this service.
    #[error("a {kind:?} key in {service} cannot do {op:?}")]
    Unsupported {
        /// "Key Vault", "AWS KMS".
        service: &'static str,
        /// The key.
        kind: KeyKind,
        /// What was asked.
        op: OpClass,
    },
    /// The service has no algorithm for this hash and padding.
    #[error("{service} has no algorithm for {op:?}")]
    NoAlgorithm {
        /// The service.
        service: &'static str,
        /// What was asked.
        op: OpClass,
    },
    /// A key version bound to one algorithm asked for another.
    #[error("key version algorithm {alg} cannot do {op:?}")]
    WrongAlgorithm {
        /// The key version's algorithm.
        alg: String,
        /// What was asked.
        op: OpClass,
    },
    /// A key version bound to one hash asked for another.
    #[error("key version signs {scheme} with {want:?} only; asked for {asked:?}")]
    WrongHash {
        /// "PKCS#1 v1.5", "RSA-PSS".
        scheme: &'static str,
        /// The key version's hash.
        want: Hash,
        /// The request's hash.
        asked: Hash,
    },
    /// The service has no digest field for this hash.
    #[error("no digest field for {0:?}")]
    NoDigestField(Hash),
    /// An ECDSA request with an empty digest.
    #[error("empty ECDSA digest")]
    EmptyDigest,
    /// A message outside the service's size limits.
    #[error("Ed25519 message of {len} bytes ({service} signs 1 to {max})")]
    MessageSize {
        /// The service.
        service: &'static str,
        /// The message length.
        len: usize,
        /// The service's limit.
        max: usize,
    },
    /// RSA decryption: the service strips the padding the edge needs.
    #[error("{service} decrypts RSA only with OAEP; the raw PKCS#1 block the edge needs is not available")]
    NoRawDecrypt {
        /// The service.
        service: &'static str,
    },
    /// A decryption key version (Cloud KMS decrypts with OAEP only).
    #[error("algorithm {0}: Cloud KMS decrypts only with OAEP; the edge's RSA decrypt needs the raw PKCS#1 block, so decryption keys are not served")]
    DecryptKey(String),
    /// A key version whose algorithm keycore does not serve.
    #[error("algorithm {0} is not a signing algorithm keycore serves")]
    NotSigning(String),
    /// The key does not offer the algorithm the operation needs.
    #[error("the key does not offer {alg} (it offers {offered})")]
    NotOffered {
        /// The algorithm needed.
        alg: &'static str,
        /// The key's algorithms, comma-separated.
        offered: String,
    },
}

/// The digest an ECDSA service wants for this curve (32 / 48 / 64 bytes),
/// made from whatever digest the edge sent, with the same value ECDSA itself
/// would use (FIPS 186-4 6.4: the leftmost min(N, outlen) bits of the hash as
/// an integer). A longer digest is cut to its leftmost bytes (the curve
/// order's bit length equals 8x the wanted length for P-256 and P-384; no
/// protocol digest exceeds 64 bytes for P-521); a shorter one is left-padded
/// with zeros, which keeps its integer value. The signature is therefore
/// exactly the one a local ECDSA over the original digest would be.
pub fn fit_ecdsa_digest(kind: KeyKind, digest: &[u8]) -> Option<Vec<u8>> {
    let want = match kind {
        KeyKind::EcdsaP256 => 32,
        KeyKind::EcdsaP384 => 48,
        KeyKind::EcdsaP521 => 64,
        _ => return None,
    };
    if digest.is_empty() {
        return None;
    }
    if digest.len() >= want {
        Some(digest[..want].to_vec())
    } else {
        let mut v = vec![0u8; want - digest.len()];
        v.extend_from_slice(digest);
        Some(v)
    }
}

/// Rebuild the PKCS#1 v1.5 encryption block `00 02 PS 00 M` (RFC 8017
/// 7.2.1) of length `k` around a plaintext a service returned unpadded, with
/// PS made of nonzero bytes from `fill`. See `azure.rs` for why this is what
/// the edge gets for an RSA decrypt.
pub fn pkcs1_type2_block(k: usize, msg: &[u8], mut fill: impl FnMut() -> u8) -> Option<Vec<u8>> {
    if msg.len() + 11 > k {
        return None;
    }
    let mut out = Vec::with_capacity(k);
    out.push(0x00);
    out.push(0x02);
    for _ in 0..k - 3 - msg.len() {
        let mut b = fill();
        while b == 0 {
            b = fill();
        }
        out.push(b);
    }
    out.push(0x00);
    out.extend_from_slice(msg);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        // 2015-08-30T12:36:00Z is the date of AWS's SigV4 documentation example.
        assert_eq!(amz_date(1440938160), "20150830T123600Z");
        assert_eq!(parse_rfc3339("2015-08-30T12:36:00Z"), Some(1440938160));
        assert_eq!(
            parse_rfc3339("2015-08-30T14:36:00.123+02:00"),
            Some(1440938160)
        );
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951782400));
        assert_eq!(amz_date(951782400), "20000229T000000Z");
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn ecdsa_digest_fitting_keeps_the_integer() {
        let d48: Vec<u8> = (1..=48).collect();
        assert_eq!(
            fit_ecdsa_digest(KeyKind::EcdsaP256, &d48).unwrap(),
            d48[..32]
        );
        let d20 = [0xab; 20];
        let f = fit_ecdsa_digest(KeyKind::EcdsaP384, &d20).unwrap();
        assert_eq!(f.len(), 48);
        assert!(f[..28].iter().all(|&b| b == 0));
        assert_eq!(&f[28..], &d20);
        assert!(fit_ecdsa_digest(KeyKind::Rsa { bits: 2048 }, &d20).is_none());
        assert!(fit_ecdsa_digest(KeyKind::EcdsaP256, &[]).is_none());
    }

    #[test]
    fn type2_block_shape() {
        let mut n = 0u8;
        let b = pkcs1_type2_block(64, b"secret", || {
            n = n.wrapping_add(1);
            n
        })
        .unwrap();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[..2], &[0, 2]);
        assert!(b[2..64 - 7].iter().all(|&x| x != 0));
        assert_eq!(b[64 - 7], 0);
        assert_eq!(&b[64 - 6..], b"secret");
        assert!(pkcs1_type2_block(16, &[1; 6], || 1).is_none());
    }

    #[test]
    fn encodings() {
        assert_eq!(pct("a b/c=~"), "a%20b%2Fc%3D~");
        assert_eq!(form(&[("a", "1 2"), ("b", "x&y")]), "a=1%202&b=x%26y");
        assert_eq!(unb64url(&b64url(&[0xfb, 0xff])).unwrap(), vec![0xfb, 0xff]);
        assert_eq!(unb64url("-_8="), Some(vec![0xfb, 0xff]));
        assert_eq!(unb64(&b64(b"xyz")).unwrap(), b"xyz");
    }
}
