//! Key identifiers: the SKI the edge sends (tag 0x04) and the legacy
//! certificate digest (tag 0x01).
//!
//! SKI = SHA-1 over the contents of the `subjectPublicKey` BIT STRING of the
//! key's SubjectPublicKeyInfo (RFC 5280 section 4.2.1.2, method 1). It is
//! always computed from the key, never read from a certificate extension. The
//! DER walk that finds that BIT STRING (and, for RSA, the modulus) is
//! `spki.rs`'s. These moved here from `keycore-protocol`, so the codec needs
//! no crypto library.

use crate::spki::{read_tlv, rsa_modulus, spki_parts, SpkiError, OID_RSA};
use aws_lc_rs::digest;
use keycore_protocol::{Ski, CERT_DIGEST_LEN, SKI_LEN};

/// The SKI of a DER SubjectPublicKeyInfo (any algorithm).
pub fn ski_from_spki(spki_der: &[u8]) -> Result<Ski, SpkiError> {
    let (_, key) = spki_parts(spki_der)?;
    Ok(ski_from_key_bits(key))
}

/// The SKI from the subjectPublicKey contents directly: the DER RSAPublicKey,
/// the uncompressed EC point, or the raw Ed25519 key.
pub fn ski_from_key_bits(key: &[u8]) -> Ski {
    let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut out = [0u8; SKI_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// The legacy digest (tag 0x01) of an RSA key given as a DER SPKI.
pub fn legacy_digest_from_spki(spki_der: &[u8]) -> Result<[u8; CERT_DIGEST_LEN], SpkiError> {
    let (alg, key) = spki_parts(spki_der)?;
    match read_tlv(alg) {
        Some((0x06, oid, _)) if oid == OID_RSA => {}
        Some((0x06, _, _)) => return Err(SpkiError::NotRsa),
        _ => return Err(SpkiError::Malformed("algorithm has no OID")),
    }
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    Ok(legacy_digest_from_modulus(rsa_modulus(key)?))
}

/// SHA-256 of the upper-case hex of the RSA modulus, written without leading
/// zeros (the way the reference formats a big integer with `%X`).
///
/// The hex is streamed into the hash in small chunks, so any modulus length
/// works without a heap buffer (an earlier fixed 4096-digit buffer silently
/// hashed only the first 16384 bits of a longer modulus).
pub fn legacy_digest_from_modulus(modulus_be: &[u8]) -> [u8; CERT_DIGEST_LEN] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    /// Bytes of modulus converted per hash update (the hex is twice that).
    const CHUNK: usize = 128;
    let start = modulus_be
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus_be.len());
    let mut ctx = digest::Context::new(&digest::SHA256);
    match modulus_be[start..].split_first() {
        // A zero modulus prints as "0" (never a real key, but defined).
        None => ctx.update(b"0"),
        Some((&first, rest)) => {
            // The first byte may have a zero high nibble, which `%X` drops.
            if first >> 4 == 0 {
                ctx.update(&[HEX[first as usize]]);
            } else {
                ctx.update(&[HEX[(first >> 4) as usize], HEX[(first & 0xf) as usize]]);
            }
            let mut hex = [0u8; 2 * CHUNK];
            for chunk in rest.chunks(CHUNK) {
                for (i, &b) in chunk.iter().enumerate() {
                    hex[2 * i] = HEX[(b >> 4) as usize];
                    hex[2 * i + 1] = HEX[(b & 0xf) as usize];
                }
                ctx.update(&hex[..2 * chunk.len()]);
            }
        }
    }
    let d = ctx.finish();
    let mut out = [0u8; CERT_DIGEST_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_digest_drops_leading_zero_nibble() {
        let a = legacy_digest_from_modulus(&[0x00, 0x0a, 0xbc]);
        let d = digest::digest(&digest::SHA256, b"ABC");
        assert_eq!(&a[..], d.as_ref());
    }

    #[test]
    fn legacy_digest_of_long_and_zero_moduli() {
        // Longer than the old 2048-byte stack buffer, with a leading zero
        // byte and an odd first byte: every digit must be hashed.
        let mut m = vec![0x00, 0x05];
        m.extend((0..2100u32).map(|i| (i * 7) as u8));
        let text: String = m[1..].iter().map(|b| format!("{b:02X}")).collect();
        let want = digest::digest(&digest::SHA256, text.trim_start_matches('0').as_bytes());
        assert_eq!(&legacy_digest_from_modulus(&m)[..], want.as_ref());

        let zero = digest::digest(&digest::SHA256, b"0");
        assert_eq!(&legacy_digest_from_modulus(&[0, 0])[..], zero.as_ref());
        assert_eq!(&legacy_digest_from_modulus(&[])[..], zero.as_ref());
    }

    #[test]
    fn malformed_spki_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x81],
            &[0x30, 0x02, 0x30, 0x00],
            &[0x04, 0x00],
        ] {
            assert!(ski_from_spki(bad).is_err());
        }
    }
}
