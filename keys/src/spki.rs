//! DER SubjectPublicKeyInfo: the one reader, classifier and builder.
//!
//! Owns: the minimal DER walk keycore needs ([`read_tlv`]), the
//! classification of an SPKI into a [`KeyKind`] ([`classify_spki`], used by
//! every backend, the load generator and the stand-ins), the few DER shapes
//! keycore writes (SPKI for RSA, EC and Ed25519 from a token's or a cloud
//! service's raw fields; `SEQUENCE { r, s }` from a raw ECDSA `r‖s`).
//! Must not: talk to a token or a service; everything here is pure and
//! unit-tested. It is not a general ASN.1 parser.

use crate::kind::KeyKind;

/// DER OID body of rsaEncryption (1.2.840.113549.1.1.1).
pub(crate) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// DER OID body of id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER OID body of prime256v1.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID body of secp384r1.
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER OID body of secp521r1.
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
/// DER OID body of id-Ed25519 (1.3.101.112).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// A public key that can't be read or isn't one keycore serves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpkiError {
    /// Not the DER shape expected.
    #[error("malformed SubjectPublicKeyInfo: {0}")]
    Malformed(&'static str),
    /// The key is not RSA (for the legacy digest).
    #[error("not an RSA key")]
    NotRsa,
    /// An algorithm keycore does not serve (dotted OID).
    #[error("public key algorithm {0} is not served")]
    Algorithm(String),
    /// An EC curve keycore does not serve.
    #[error("EC curve is not P-256, P-384 or P-521")]
    Curve,
    /// A raw public-key field (modulus, point, parameters) of the wrong shape.
    #[error("{0}")]
    Field(&'static str),
}

/// Read one DER TLV from the front of `b`: (tag, value, rest). Lengths of
/// up to four bytes; `None` if the input is short or the length malformed.
pub fn read_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l, b) = b.split_first()?;
    let (len, b) = if l < 0x80 {
        (l as usize, b)
    } else {
        let n = (l & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize);
        (len, &b[n..])
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// Append a DER TLV.
fn tlv(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let n = value.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

/// Append an unsigned big-endian integer as a DER INTEGER (minimal form).
fn der_uint(be: &[u8], out: &mut Vec<u8>) {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let v = &be[start..];
    let mut body = Vec::with_capacity(v.len() + 1);
    if v.is_empty() || v[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(v);
    tlv(0x02, &body, out);
}

/// The parts of an SPKI: the AlgorithmIdentifier's contents (OID and
/// parameters) and the subjectPublicKey bits (without the unused-bits byte).
pub(crate) fn spki_parts(spki_der: &[u8]) -> Result<(&[u8], &[u8]), SpkiError> {
    let m = SpkiError::Malformed;
    let (t, seq, _) = read_tlv(spki_der).ok_or(m("bad outer length"))?;
    if t != 0x30 {
        return Err(m("outer is not a SEQUENCE"));
    }
    let (t, alg, rest) = read_tlv(seq).ok_or(m("bad algorithm length"))?;
    if t != 0x30 {
        return Err(m("algorithm is not a SEQUENCE"));
    }
    let (t, bits, _) = read_tlv(rest).ok_or(m("bad subjectPublicKey length"))?;
    if t != 0x03 {
        return Err(m("subjectPublicKey is not a BIT STRING"));
    }
    match bits.split_first() {
        Some((0, key)) => Ok((alg, key)),
        _ => Err(m("subjectPublicKey has unused bits")),
    }
}

/// The subjectPublicKey contents of an SPKI: the DER RSAPublicKey, the
/// uncompressed EC point or the raw Ed25519 key (the form aws-lc-rs
/// verification takes, and what the SKI hashes).
pub fn spki_key_bits(spki_der: &[u8]) -> Result<&[u8], SpkiError> {
    spki_parts(spki_der).map(|(_, key)| key)
}

/// The modulus of an RSAPublicKey (big-endian, possibly with a leading zero).
pub(crate) fn rsa_modulus(rsa_public_key: &[u8]) -> Result<&[u8], SpkiError> {
    let (t, seq, _) =
        read_tlv(rsa_public_key).ok_or(SpkiError::Malformed("bad RSAPublicKey length"))?;
    if t != 0x30 {
        return Err(SpkiError::Malformed("RSAPublicKey is not a SEQUENCE"));
    }
    match read_tlv(seq) {
        Some((0x02, n, _)) => Ok(n),
        _ => Err(SpkiError::Malformed("modulus is not an INTEGER")),
    }
}

/// Dotted form of an OID body, for messages.
fn dotted(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut v: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() && i < oid.len() {
                let first = (v / 40).min(2);
                parts.push(first);
                parts.push(v - first * 40);
            } else {
                parts.push(v);
            }
            v = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The kind of key a DER SubjectPublicKeyInfo holds: RSA (any size, counted
/// from the modulus), ECDSA on P-256/P-384/P-521 (the point must have the
/// curve's uncompressed length) or Ed25519. Anything else is an error naming
/// what it is.
pub fn classify_spki(spki_der: &[u8]) -> Result<KeyKind, SpkiError> {
    let (alg, key) = spki_parts(spki_der)?;
    let (oid, params) = match read_tlv(alg) {
        Some((0x06, oid, params)) => (oid, params),
        _ => return Err(SpkiError::Malformed("algorithm has no OID")),
    };
    if oid == OID_RSA {
        let n = rsa_modulus(key)?;
        let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
        if n.is_empty() {
            return Err(SpkiError::Field("RSA public key with an empty modulus"));
        }
        Ok(KeyKind::Rsa {
            bits: n.len() * 8 - n[0].leading_zeros() as usize,
        })
    } else if oid == OID_EC {
        let (kind, coord) = match read_tlv(params) {
            Some((0x06, c, _)) if c == OID_P256 => (KeyKind::EcdsaP256, 32),
            Some((0x06, c, _)) if c == OID_P384 => (KeyKind::EcdsaP384, 48),
            Some((0x06, c, _)) if c == OID_P521 => (KeyKind::EcdsaP521, 66),
            _ => return Err(SpkiError::Curve),
        };
        if key.len() != 2 * coord + 1 || key[0] != 0x04 {
            return Err(SpkiError::Field(
                "EC public key is not an uncompressed point of its curve",
            ));
        }
        Ok(kind)
    } else if oid == OID_ED25519 {
        if key.len() != 32 {
            return Err(SpkiError::Field("Ed25519 public key is not 32 bytes"));
        }
        Ok(KeyKind::Ed25519)
    } else {
        Err(SpkiError::Algorithm(dotted(oid)))
    }
}

fn spki(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(key);
    let mut body = Vec::with_capacity(alg.len() + bits.len() + 8);
    tlv(0x30, alg, &mut body);
    tlv(0x03, &bits, &mut body);
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv(0x30, &body, &mut out);
    out
}

/// SPKI of an RSA key from its modulus and public exponent (big-endian, as
/// `CKA_MODULUS` / a JWK's `n` give them); also its size in bits.
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Result<(Vec<u8>, usize), SpkiError> {
    let start = modulus
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus.len());
    let m = &modulus[start..];
    if m.is_empty() || exponent.iter().all(|&b| b == 0) {
        return Err(SpkiError::Field(
            "RSA key with an empty modulus or exponent",
        ));
    }
    let bits = m.len() * 8 - m[0].leading_zeros() as usize;
    let mut rsa = Vec::with_capacity(m.len() + exponent.len() + 12);
    let mut ints = Vec::new();
    der_uint(m, &mut ints);
    der_uint(exponent, &mut ints);
    tlv(0x30, &ints, &mut rsa);
    let mut alg = Vec::new();
    tlv(0x06, OID_RSA, &mut alg);
    tlv(0x05, &[], &mut alg);
    Ok((spki(&alg, &rsa), bits))
}

/// The point from `CKA_EC_POINT`: the spec says DER OCTET STRING, some tokens
/// return the raw point. `raw_len` is the expected raw length.
fn unwrap_point(point: &[u8], raw_len: usize) -> Option<&[u8]> {
    if point.len() == raw_len {
        return Some(point);
    }
    match read_tlv(point) {
        Some((0x04, v, [])) if v.len() == raw_len => Some(v),
        _ => None,
    }
}

/// SPKI and kind of an EC key from its curve parameters (a DER named-curve
/// OID, as `CKA_EC_PARAMS`) and point (`CKA_EC_POINT`: raw or wrapped in an
/// OCTET STRING). Only the named curves P-256, P-384 and P-521.
pub fn ec_spki(params: &[u8], point: &[u8]) -> Result<(Vec<u8>, KeyKind), SpkiError> {
    let oid = match read_tlv(params) {
        Some((0x06, oid, [])) => oid,
        _ => return Err(SpkiError::Field("CKA_EC_PARAMS is not a named-curve OID")),
    };
    let (kind, coord) = if oid == OID_P256 {
        (KeyKind::EcdsaP256, 32)
    } else if oid == OID_P384 {
        (KeyKind::EcdsaP384, 48)
    } else if oid == OID_P521 {
        (KeyKind::EcdsaP521, 66)
    } else {
        return Err(SpkiError::Curve);
    };
    let p = unwrap_point(point, 2 * coord + 1)
        .filter(|p| p[0] == 0x04)
        .ok_or(SpkiError::Field(
            "CKA_EC_POINT is not an uncompressed point of the key's curve",
        ))?;
    let mut alg = Vec::new();
    tlv(0x06, OID_EC, &mut alg);
    tlv(0x06, oid, &mut alg);
    Ok((spki(&alg, p), kind))
}

/// SPKI of an Ed25519 key (`CKK_EC_EDWARDS`). `CKA_EC_PARAMS` may be the OID
/// or the PrintableString `edwards25519` (PKCS#11 3.0 allows both).
pub fn ed25519_spki(params: &[u8], point: &[u8]) -> Result<Vec<u8>, SpkiError> {
    let ok = match read_tlv(params) {
        Some((0x06, oid, [])) => oid == OID_ED25519,
        Some((0x13, name, [])) => name == b"edwards25519",
        _ => false,
    };
    if !ok {
        return Err(SpkiError::Field(
            "CKA_EC_PARAMS of the EdDSA key is not Ed25519",
        ));
    }
    let p = unwrap_point(point, 32).ok_or(SpkiError::Field(
        "CKA_EC_POINT is not a 32-byte Ed25519 key",
    ))?;
    let mut alg = Vec::new();
    tlv(0x06, OID_ED25519, &mut alg);
    Ok(spki(&alg, p))
}

/// Kind and normalised SPKI from a DER SubjectPublicKeyInfo a token gives
/// (`CKA_PUBLIC_KEY_INFO`, PKCS#11 v2.40), rebuilt through the builders
/// above so a key read this way has byte for byte the SPKI (and SKI) it
/// would have when read from its public key object.
pub fn spki_from_info(der: &[u8]) -> Result<(Vec<u8>, KeyKind), SpkiError> {
    const BAD: SpkiError =
        SpkiError::Field("CKA_PUBLIC_KEY_INFO is not a DER SubjectPublicKeyInfo");
    let Some((0x30, body, [])) = read_tlv(der) else {
        return Err(BAD);
    };
    let Some((0x30, alg, rest)) = read_tlv(body) else {
        return Err(BAD);
    };
    let Some((0x03, bits, [])) = read_tlv(rest) else {
        return Err(BAD);
    };
    let key = match bits.split_first() {
        Some((0, k)) => k,
        _ => return Err(BAD),
    };
    let Some((0x06, oid, params)) = read_tlv(alg) else {
        return Err(BAD);
    };
    if oid == OID_EC {
        let mut point = Vec::with_capacity(key.len() + 2);
        tlv(0x04, key, &mut point);
        ec_spki(params, &point)
    } else if oid == OID_ED25519 {
        let mut p = Vec::new();
        tlv(0x06, OID_ED25519, &mut p);
        Ok((ed25519_spki(&p, key)?, KeyKind::Ed25519))
    } else if oid == OID_RSA {
        let Some((0x30, ints, [])) = read_tlv(key) else {
            return Err(BAD);
        };
        let Some((0x02, n, rest)) = read_tlv(ints) else {
            return Err(BAD);
        };
        let Some((0x02, e, [])) = read_tlv(rest) else {
            return Err(BAD);
        };
        let (spki, bits) = rsa_spki(n, e)?;
        Ok((spki, KeyKind::Rsa { bits }))
    } else {
        Err(SpkiError::Field(
            "CKA_PUBLIC_KEY_INFO: not an RSA, EC or Ed25519 key",
        ))
    }
}

/// DER `SEQUENCE { r INTEGER, s INTEGER }` from a raw `r‖s` (equal halves,
/// as PKCS#11 and JOSE give it). `None` if the length is odd or zero.
pub fn ecdsa_der_from_raw(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut ints = Vec::with_capacity(raw.len() + 6);
    der_uint(r, &mut ints);
    der_uint(s, &mut ints);
    tlv(0x30, &ints, out);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    #[test]
    fn rsa_spki_matches_aws_lc() {
        // aws-lc-rs gives the DER RSAPublicKey; our SPKI must wrap exactly it.
        let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pk = kp.public_key();
        let rsa_der = pk.as_ref();
        // Pull n and e back out of RSAPublicKey.
        let (_, seq, _) = read_tlv(rsa_der).unwrap();
        let (_, n, rest) = read_tlv(seq).unwrap();
        let (_, e, _) = read_tlv(rest).unwrap();
        let (spki_der, bits) = rsa_spki(n, e).unwrap();
        assert_eq!(bits, 2048);
        let ski = crate::ski::ski_from_spki(&spki_der).unwrap();
        assert_eq!(ski, crate::ski::ski_from_key_bits(rsa_der));
        // Leading zeros in the token's modulus do not change the key.
        let mut padded = vec![0, 0];
        padded.extend_from_slice(n);
        assert_eq!(rsa_spki(&padded, e).unwrap().0, spki_der);
        assert!(rsa_spki(&[], e).is_err());
    }

    #[test]
    fn ec_spki_from_octet_string_and_raw_point() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let mut params = Vec::new();
        tlv(0x06, OID_P256, &mut params);
        let mut wrapped = Vec::new();
        tlv(0x04, &point, &mut wrapped);
        let (a, kind) = ec_spki(&params, &wrapped).unwrap();
        let (b, _) = ec_spki(&params, &point).unwrap();
        assert_eq!(kind, KeyKind::EcdsaP256);
        assert_eq!(a, b);
        assert_eq!(
            crate::ski::ski_from_spki(&a).unwrap(),
            crate::ski::ski_from_key_bits(&point)
        );
        assert!(ec_spki(&params, &point[..10]).is_err());
        let mut other = Vec::new();
        tlv(0x06, &[0x2b, 0x65, 0x6e], &mut other);
        assert!(ec_spki(&other, &point).is_err());
    }

    #[test]
    fn public_key_info_round_trips_every_kind() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let mut params = Vec::new();
        tlv(0x06, OID_P256, &mut params);
        let (ec, _) = ec_spki(&params, kp.public_key().as_ref()).unwrap();
        assert_eq!(
            spki_from_info(&ec).unwrap(),
            (ec.clone(), KeyKind::EcdsaP256)
        );
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let (_, seq, _) = read_tlv(rsa.public_key().as_ref()).unwrap();
        let (_, n, rest) = read_tlv(seq).unwrap();
        let (_, e, _) = read_tlv(rest).unwrap();
        let (r, bits) = rsa_spki(n, e).unwrap();
        assert_eq!(
            spki_from_info(&r).unwrap(),
            (r.clone(), KeyKind::Rsa { bits })
        );
        let mut oid = Vec::new();
        tlv(0x06, OID_ED25519, &mut oid);
        let ed = ed25519_spki(&oid, &[9u8; 32]).unwrap();
        assert_eq!(spki_from_info(&ed).unwrap(), (ed.clone(), KeyKind::Ed25519));
        assert!(spki_from_info(&ec[..ec.len() - 1]).is_err());
        assert!(spki_from_info(&[]).is_err());
    }

    #[test]
    fn ed25519_params_forms() {
        let key = [7u8; 32];
        let mut oid = Vec::new();
        tlv(0x06, OID_ED25519, &mut oid);
        let mut name = Vec::new();
        tlv(0x13, b"edwards25519", &mut name);
        let mut wrapped = Vec::new();
        tlv(0x04, &key, &mut wrapped);
        let a = ed25519_spki(&oid, &wrapped).unwrap();
        assert_eq!(a, ed25519_spki(&name, &key).unwrap());
        assert_eq!(a.len(), 44);
        assert!(ed25519_spki(&oid, &[1, 2]).is_err());
    }

    #[test]
    fn ecdsa_der_minimal_integers() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[32] = 0x00;
        raw[33] = 0x01; // s has leading zeros to strip
        let mut out = Vec::new();
        ecdsa_der_from_raw(&raw, &mut out).unwrap();
        let (t, seq, rest) = read_tlv(&out).unwrap();
        assert_eq!((t, rest.len()), (0x30, 0));
        let (_, r, rest) = read_tlv(seq).unwrap();
        let (_, s, _) = read_tlv(rest).unwrap();
        assert_eq!(r.len(), 33);
        assert_eq!(r[0], 0);
        assert_eq!(s.len(), 31);
        assert!(ecdsa_der_from_raw(&[1, 2, 3], &mut out).is_none());
    }

    #[test]
    fn classify_every_served_kind_and_refuse_others() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let mut params = Vec::new();
        tlv(0x06, OID_P256, &mut params);
        let (ec, _) = ec_spki(&params, &point).unwrap();
        assert_eq!(classify_spki(&ec), Ok(KeyKind::EcdsaP256));
        assert_eq!(spki_key_bits(&ec).unwrap(), &point[..]);
        let mut p521 = Vec::new();
        tlv(0x06, OID_P521, &mut p521);
        let mut big = vec![0x04];
        big.extend([9u8; 132]);
        let (ec521, _) = ec_spki(&p521, &big).unwrap();
        assert_eq!(classify_spki(&ec521), Ok(KeyKind::EcdsaP521));
        let ed = ed25519_spki(&[0x06, 0x03, 0x2b, 0x65, 0x70], &[7u8; 32]).unwrap();
        assert_eq!(classify_spki(&ed), Ok(KeyKind::Ed25519));
        let (rsa, _) = rsa_spki(&[0x7f; 384], &[1, 0, 1]).unwrap();
        assert_eq!(classify_spki(&rsa), Ok(KeyKind::Rsa { bits: 3071 }));
        // X25519 (1.3.101.110) is an algorithm keycore does not serve.
        let mut alg = Vec::new();
        tlv(0x06, &[0x2b, 0x65, 0x6e], &mut alg);
        assert_eq!(
            classify_spki(&spki(&alg, &[1; 32])),
            Err(SpkiError::Algorithm("1.3.101.110".into()))
        );
        assert!(classify_spki(&[0x30, 0x00]).is_err());
        assert!(classify_spki(&ec[..ec.len() - 1]).is_err());
    }

    #[test]
    fn long_lengths_encode() {
        let mut out = Vec::new();
        tlv(0x04, &[0u8; 300], &mut out);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(read_tlv(&out).unwrap().1.len(), 300);
    }
}
